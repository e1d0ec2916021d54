#include "engine/convert.h"

#include <fmt/format.h>
#include <stdlib.h>

#include <algorithm>
#include <cctype>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <utility>
#include <vector>

#include "engine/gguf_source.h"
#include "engine/half.h"
#include "engine/safetensors.h"
#include "tokenizer/tokenizer.h"

namespace minfer {

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

// Every tensor LlamaForCausalLM has, with its row-major shape.
std::vector<std::pair<std::string, std::vector<int64_t>>> hf_llama_tensors(const ModelConfig& c) {
  const int64_t C = c.hidden, D = c.head_dim, F = c.ffn;
  const int64_t qd = c.n_heads * D, kvd = c.n_kv_heads * D;
  std::vector<std::pair<std::string, std::vector<int64_t>>> t;
  t.push_back({"model.embed_tokens.weight", {c.vocab_size, C}});
  for (int64_t l = 0; l < c.n_layers; ++l) {
    const std::string p = fmt::format("model.layers.{}.", l);
    t.push_back({p + "input_layernorm.weight", {C}});
    t.push_back({p + "self_attn.q_proj.weight", {qd, C}});
    if (c.attn_bias) t.push_back({p + "self_attn.q_proj.bias", {qd}});
    t.push_back({p + "self_attn.k_proj.weight", {kvd, C}});
    if (c.attn_bias) t.push_back({p + "self_attn.k_proj.bias", {kvd}});
    t.push_back({p + "self_attn.v_proj.weight", {kvd, C}});
    if (c.attn_bias) t.push_back({p + "self_attn.v_proj.bias", {kvd}});
    t.push_back({p + "self_attn.o_proj.weight", {C, qd}});
    t.push_back({p + "post_attention_layernorm.weight", {C}});
    t.push_back({p + "mlp.gate_proj.weight", {F, C}});
    t.push_back({p + "mlp.up_proj.weight", {F, C}});
    t.push_back({p + "mlp.down_proj.weight", {C, F}});
  }
  t.push_back({"model.norm.weight", {C}});
  if (!c.tie_embeddings) t.push_back({"lm_head.weight", {c.vocab_size, C}});
  return t;
}

// Copy of `src` (F32/F16/BF16) in `dtype`.
Tensor cast_to(const Tensor& src, DType dtype) {
  if (src.dtype() == dtype) return src.clone();
  Tensor f = src.dtype() == DType::F32 && src.is_contiguous() ? src : src.to_f32();
  if (dtype == DType::F32) return f.storage() == src.storage() ? f.clone() : f;
  Tensor out = Tensor::empty(dtype, f.shape(), f.ndim());
  if (dtype == DType::F16)
    f32_to_f16_n(f.data<float>(), out.data<uint16_t>(), size_t(f.numel()));
  else
    f32_to_bf16_n(f.data<float>(), out.data<uint16_t>(), size_t(f.numel()));
  return out;
}

std::string torch_dtype_name(DType d) {
  return d == DType::F32 ? "float32" : d == DType::F16 ? "float16" : "bfloat16";
}

void write_json(const fs::path& path, const json& j) {
  std::ofstream f(path, std::ios::binary);
  MINFER_CHECK(f.good(), "{}: cannot create file", path.string());
  f << j.dump(2) << "\n";
  f.close();
  MINFER_CHECK(f.good(), "{}: write failed", path.string());
}

json token_or_null(const Tokenizer& tok, int64_t id) {
  if (id < 0 || id >= tok.vocab_size()) return nullptr;
  return tok.id_to_token(int32_t(id));
}

json id_or_null(int64_t id) {
  return id < 0 ? json(nullptr) : json(id);
}

// Removes a temporary folder unless released (nothing half-written stays behind on error).
struct TmpDir {
  fs::path path;
  bool keep = false;
  ~TmpDir() {
    if (keep || path.empty()) return;
    std::error_code ec;
    fs::remove_all(path, ec);
  }
};

}  // namespace

DType parse_export_dtype(const std::string& s) {
  std::string l = s;
  std::transform(l.begin(), l.end(), l.begin(), [](unsigned char c) { return std::tolower(c); });
  if (l == "f32" || l == "float32") return DType::F32;
  if (l == "f16" || l == "float16") return DType::F16;
  if (l == "bf16" || l == "bfloat16") return DType::BF16;
  MINFER_FAIL("unknown export dtype '{}' (expected f32, f16 or bf16)", s);
}

void export_hf_folder(const std::string& gguf_path, const std::string& out_dir,
                      const ConvertOptions& opt) {
  MINFER_CHECK(opt.dtype == DType::F32 || opt.dtype == DType::F16 || opt.dtype == DType::BF16,
               "export dtype must be F32, F16 or BF16, got {}", dtype_name(opt.dtype));
  MINFER_CHECK(!out_dir.empty(), "convert: empty output path");
  fs::path out = fs::path(out_dir);
  if (out.filename().empty()) out = out.parent_path();  // "dir/" -> "dir"
  const bool exists = fs::exists(fs::symlink_status(out));
  MINFER_CHECK(!exists || opt.force, "{}: output already exists (pass --force to replace it)",
               out.string());
  if (exists && fs::is_directory(out) && !fs::is_empty(out))
    MINFER_CHECK(fs::exists(out / "config.json"),
                 "{}: refusing to replace a non-empty folder that is not a model folder (no "
                 "config.json)",
                 out.string());

  // Everything that can fail on bad input is checked before anything is written.
  auto f = GgufFile::open(gguf_path);
  const ModelConfig cfg = config_from_gguf(*f);
  MINFER_CHECK(f->has("tokenizer.ggml.model"),
               "{}: no tokenizer in the GGUF metadata (tokenizer.ggml.model missing)", f->path());
  std::unique_ptr<Tokenizer> tok = Tokenizer::from_gguf(*f);
  for (const GgufTensorInfo& t : f->tensors()) {
    const bool plain = t.type == uint32_t(GgmlType::F32) || t.type == uint32_t(GgmlType::F16) ||
                       t.type == uint32_t(GgmlType::BF16);
    MINFER_CHECK(plain || ggml_can_dequantize(t.type),
                 "{}: tensor '{}' has type {} ({}), which minfer cannot dequantize", f->path(),
                 t.name, ggml_type_name(t.type), t.type);
  }
  GgufSource src(f, cfg);
  const auto names = hf_llama_tensors(cfg);
  for (const auto& [name, shape] : names)
    MINFER_CHECK(src.has(name), "{}: missing tensor for '{}'", f->path(), name);

  // Temporary folder next to the destination, so the final rename stays on one file system.
  if (!out.parent_path().empty()) fs::create_directories(out.parent_path());
  std::string tmpl = out.string() + ".tmp-XXXXXX";
  MINFER_CHECK(mkdtemp(tmpl.data()) != nullptr, "{}: cannot create a temporary folder", tmpl);
  TmpDir tmp{fs::path(tmpl)};

  // Weights, one at a time into the output dtype (dequantized f32 copies are dropped at once).
  std::vector<std::pair<std::string, Tensor>> tensors;
  tensors.reserve(names.size());
  for (const auto& [name, shape] : names) {
    Tensor t;
    if (shape.size() == 1)
      t = src.tensor(name, {shape[0]});
    else
      t = src.tensor(name, {shape[0], shape[1]});
    tensors.emplace_back(name, cast_to(t, opt.dtype));
  }
  save_safetensors((tmp.path / "model.safetensors").string(), tensors, {{"format", "pt"}});
  tensors.clear();

  const std::string dt = torch_dtype_name(opt.dtype);
  json config = {{"architectures", {"LlamaForCausalLM"}},
                 {"model_type", "llama"},
                 {"hidden_size", cfg.hidden},
                 {"intermediate_size", cfg.ffn},
                 {"num_hidden_layers", cfg.n_layers},
                 {"num_attention_heads", cfg.n_heads},
                 {"num_key_value_heads", cfg.n_kv_heads},
                 {"head_dim", cfg.head_dim},
                 {"max_position_embeddings", cfg.max_pos},
                 {"rms_norm_eps", cfg.norm_eps},
                 {"rope_theta", cfg.rope_theta},
                 {"rope_scaling", nullptr},
                 {"tie_word_embeddings", cfg.tie_embeddings},
                 {"vocab_size", cfg.vocab_size},
                 {"bos_token_id", id_or_null(cfg.bos_id)},
                 {"eos_token_id", id_or_null(cfg.eos_id)},
                 {"pad_token_id", id_or_null(cfg.pad_id)},
                 {"hidden_act", "silu"},
                 {"attention_bias", cfg.attn_bias},
                 {"mlp_bias", false},
                 {"attention_dropout", 0.0},
                 {"initializer_range", 0.02},
                 {"pretraining_tp", 1},
                 {"use_cache", true},
                 {"torch_dtype", dt}};
  write_json(tmp.path / "config.json", config);

  json gen = {{"bos_token_id", id_or_null(cfg.bos_id)},
              {"eos_token_id", id_or_null(cfg.eos_id)},
              {"pad_token_id", id_or_null(cfg.pad_id)}};
  write_json(tmp.path / "generation_config.json", gen);

  {
    std::ofstream tj(tmp.path / "tokenizer.json", std::ios::binary);
    MINFER_CHECK(tj.good(), "{}: cannot create file", (tmp.path / "tokenizer.json").string());
    tj << tok->to_hf_json();
    tj.close();
    MINFER_CHECK(tj.good(), "{}: write failed", (tmp.path / "tokenizer.json").string());
  }
  json tc = {{"tokenizer_class", "PreTrainedTokenizerFast"},
             {"bos_token", token_or_null(*tok, cfg.bos_id)},
             {"eos_token", token_or_null(*tok, cfg.eos_id)},
             {"pad_token", token_or_null(*tok, cfg.pad_id)},
             {"add_bos_token", f->has("tokenizer.ggml.add_bos_token") &&
                                   f->get_bool("tokenizer.ggml.add_bos_token")},
             {"add_eos_token", f->has("tokenizer.ggml.add_eos_token") &&
                                   f->get_bool("tokenizer.ggml.add_eos_token")},
             {"clean_up_tokenization_spaces", false},
             {"model_max_length", cfg.max_pos}};
  if (!tok->chat_template().empty()) tc["chat_template"] = tok->chat_template();
  write_json(tmp.path / "tokenizer_config.json", tc);

  if (exists) fs::remove_all(out);
  fs::rename(tmp.path, out);
  tmp.keep = true;
}

}  // namespace minfer
