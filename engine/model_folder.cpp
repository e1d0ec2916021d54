#include "engine/model_folder.h"

#include <fmt/ranges.h>
#include <stdlib.h>

#include <cmath>
#include <fstream>

#include "engine/error.h"
#include "engine/half.h"
#include "tokenizer/tokenizer.h"

namespace minfer {

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

json token_or_null(const Tokenizer& tok, int64_t id) {
  if (id < 0 || id >= tok.vocab_size()) return nullptr;
  return tok.id_to_token(int32_t(id));
}

json id_or_null(int64_t id) {
  return id < 0 ? json(nullptr) : json(id);
}

}  // namespace

StagingDir::StagingDir(const std::string& out_dir, bool force) {
  MINFER_CHECK(!out_dir.empty(), "empty output path");
  out_ = fs::path(out_dir);
  if (out_.filename().empty()) out_ = out_.parent_path();  // "dir/" -> "dir"
  const bool exists = fs::exists(fs::symlink_status(out_));
  MINFER_CHECK(!exists || force, "{}: output already exists (pass --force to replace it)",
               out_.string());
  if (exists && fs::is_directory(out_) && !fs::is_empty(out_))
    MINFER_CHECK(fs::exists(out_ / "config.json"),
                 "{}: refusing to replace a non-empty folder that is not a model folder (no "
                 "config.json)",
                 out_.string());
  // Next to the destination, so the final rename stays on one file system.
  if (!out_.parent_path().empty()) fs::create_directories(out_.parent_path());
  std::string tmpl = out_.string() + ".tmp-XXXXXX";
  MINFER_CHECK(mkdtemp(tmpl.data()) != nullptr, "{}: cannot create a temporary folder", tmpl);
  tmp_ = fs::path(tmpl);
}

StagingDir::~StagingDir() {
  if (committed_ || tmp_.empty()) return;
  std::error_code ec;
  fs::remove_all(tmp_, ec);
}

void StagingDir::commit() {
  if (fs::exists(fs::symlink_status(out_))) fs::remove_all(out_);
  fs::rename(tmp_, out_);
  committed_ = true;
}

void write_json_file(const fs::path& path, const json& j) {
  std::ofstream f(path, std::ios::binary);
  MINFER_CHECK(f.good(), "{}: cannot create file", path.string());
  f << j.dump(2) << "\n";
  f.close();
  MINFER_CHECK(f.good(), "{}: write failed", path.string());
}

std::string torch_dtype_name(DType d) {
  return d == DType::F32 ? "float32" : d == DType::F16 ? "float16" : "bfloat16";
}

namespace {

// config.json's "rope_scaling" for cfg (null for default RoPE), with the keys
// transformers' modeling_rope_utils reads for each type.
json rope_scaling_json(const ModelConfig& cfg) {
  const RopeScaling& rs = cfg.rope_scaling;
  if (!rs.freq_factors.empty())
    throw NotImplemented(
        "config.json for RoPE frequency factors (a GGUF rope_freqs.weight tensor): transformers "
        "has no field for per-dimension factors");
  switch (rs.type) {
    case RopeType::Default:
      return nullptr;
    case RopeType::Linear:
      return {{"rope_type", "linear"}, {"factor", rs.factor}};
    case RopeType::Llama3:
      return {{"rope_type", "llama3"},
              {"factor", rs.factor},
              {"low_freq_factor", rs.low_freq_factor},
              {"high_freq_factor", rs.high_freq_factor},
              {"original_max_position_embeddings", rs.original_max_pos}};
    case RopeType::Yarn: {
      json j = {{"rope_type", "yarn"},
                {"factor", rs.factor},
                {"original_max_position_embeddings", rs.original_max_pos},
                {"beta_fast", rs.beta_fast},
                {"beta_slow", rs.beta_slow},
                {"truncate", rs.truncate}};
      if (rs.attention_factor != 0) j["attention_factor"] = rs.attention_factor;
      if (rs.mscale != 0) j["mscale"] = rs.mscale;
      if (rs.mscale_all_dim != 0) j["mscale_all_dim"] = rs.mscale_all_dim;
      return j;
    }
  }
  return nullptr;
}

}  // namespace

namespace {

// The fields every decoder config.json we write shares (transformers' LlamaConfig and the
// classes that keep its names: Qwen2Config, Phi3Config, GemmaConfig, Gemma2Config).
json decoder_config_json(const ModelConfig& cfg, const std::string& torch_dtype, const char* arch,
                         const char* model_type, const char* hidden_act, json rope_scaling) {
  return {{"architectures", {arch}},
          {"model_type", model_type},
          {"hidden_size", cfg.hidden},
          {"intermediate_size", cfg.ffn},
          {"num_hidden_layers", cfg.n_layers},
          {"num_attention_heads", cfg.n_heads},
          {"num_key_value_heads", cfg.n_kv_heads},
          {"head_dim", cfg.head_dim},
          {"max_position_embeddings", cfg.max_pos},
          {"rms_norm_eps", cfg.norm_eps},
          {"rope_theta", cfg.rope_theta},
          {"rope_scaling", std::move(rope_scaling)},
          {"tie_word_embeddings", cfg.tie_embeddings},
          {"vocab_size", cfg.vocab_size},
          {"bos_token_id", id_or_null(cfg.bos_id)},
          {"eos_token_id", id_or_null(cfg.eos_id)},
          {"pad_token_id", id_or_null(cfg.pad_id)},
          {"hidden_act", hidden_act},
          {"attention_dropout", 0.0},
          {"initializer_range", 0.02},
          {"use_cache", true},
          {"torch_dtype", torch_dtype}};
}

// config.json of GemmaForCausalLM / Gemma2ForCausalLM (transformers' GemmaConfig, Gemma2Config):
// the (1 + w) norms, the sqrt(C) embedding scale and GeGLU come with the class; Gemma-2 adds
// query_pre_attn_scalar (our attn_scale = its ^-1/2; 0 = 1/sqrt(head_dim)), the two soft-caps
// (null when 0), sliding_window and layer_types.
json gemma_config_json(const ModelConfig& cfg, const std::string& torch_dtype) {
  const bool g2 = cfg.model_type == "gemma2";
  MINFER_CHECK(cfg.norm_unit_offset && cfg.embed_scale && cfg.sandwich_norms == g2 &&
                   cfg.act == Act::GeluTanh && !cfg.attn_bias && !cfg.mlp_bias,
               "config.json for a {} model: settings no Gemma / Gemma-2 class has ((1 + w) "
               "norms {}, embedding scale {}, sandwich norms {}, gelu-tanh {}, biases {})",
               cfg.model_type, cfg.norm_unit_offset, cfg.embed_scale, cfg.sandwich_norms,
               cfg.act == Act::GeluTanh, cfg.attn_bias || cfg.mlp_bias);
  MINFER_CHECK(cfg.tie_embeddings,
               "config.json for a {} model with an untied lm_head: "
               "Gemma's classes always tie it",
               cfg.model_type);
  MINFER_CHECK(g2 || (cfg.attn_softcap == 0 && cfg.final_softcap == 0 && cfg.attn_scale == 0 &&
                      cfg.layer_sliding.empty()),
               "config.json for a gemma model with Gemma-2 settings (soft-capping, query scale, "
               "sliding window): GemmaConfig has none");
  json j =
      decoder_config_json(cfg, torch_dtype, g2 ? "Gemma2ForCausalLM" : "GemmaForCausalLM",
                          g2 ? "gemma2" : "gemma", "gelu_pytorch_tanh", rope_scaling_json(cfg));
  j["hidden_activation"] = "gelu_pytorch_tanh";
  j["attention_bias"] = false;
  if (!g2) return j;
  // query_pre_attn_scalar: an integer in every released Gemma-2 (head_dim, or C / H for 27B).
  const double qs =
      cfg.attn_scale > 0 ? 1.0 / (double(cfg.attn_scale) * cfg.attn_scale) : double(cfg.head_dim);
  const double qr = std::round(qs);
  j["query_pre_attn_scalar"] = std::fabs(qs - qr) <= 1e-4 * qr ? json(int64_t(qr)) : json(qs);
  auto cap = [](float v) { return v > 0 ? json(v) : json(nullptr); };
  j["attn_logit_softcapping"] = cap(cfg.attn_softcap);
  j["final_logit_softcapping"] = cap(cfg.final_softcap);
  j["sliding_window"] = cfg.layer_sliding.empty() ? json(nullptr) : json(cfg.sliding_window);
  json types = json::array();
  for (int64_t l = 0; l < cfg.n_layers; ++l)
    types.push_back(cfg.window_at(l) > 0 ? "sliding_attention" : "full_attention");
  j["layer_types"] = types;
  return j;
}

}  // namespace

json llama_config_json(const ModelConfig& cfg, const std::string& torch_dtype) {
  // qwen2 (q/k/v biases, no o bias) and phi3 (fused qkv_proj / gate_up_proj) keep their own
  // model_type; gemma / gemma2 are written as their own classes; everything else as llama.
  const bool qwen2 = cfg.model_type == "qwen2" && cfg.attn_bias;
  const bool phi3 = cfg.model_type == "phi3" && !cfg.attn_bias;
  if (cfg.model_type == "gemma" || cfg.model_type == "gemma2")
    return gemma_config_json(cfg, torch_dtype);
  if (cfg.norm_unit_offset || cfg.sandwich_norms || cfg.embed_scale)
    throw NotImplemented(
        fmt::format("config.json for a {} model (Gemma norms and settings)", cfg.model_type));
  const json rope = rope_scaling_json(cfg);
  MINFER_CHECK(!phi3 || rope.is_null(),
               "config.json for a phi3 model with '{}' RoPE scaling: Phi3Config reads only "
               "default and longrope",
               rope_type_name(cfg.rope_scaling.type));
  json j = decoder_config_json(cfg, torch_dtype,
                               qwen2  ? "Qwen2ForCausalLM"
                               : phi3 ? "Phi3ForCausalLM"
                                      : "LlamaForCausalLM",
                               qwen2  ? "qwen2"
                               : phi3 ? "phi3"
                                      : "llama",
                               "silu", rope);
  if (qwen2) {
    j["use_sliding_window"] = false;
  } else if (phi3) {
    j["original_max_position_embeddings"] = cfg.max_pos;
    j["sliding_window"] = nullptr;  // the window, if any, is already max_position_embeddings
  } else {
    j["attention_bias"] = cfg.attn_bias;
    j["mlp_bias"] = false;
    j["pretraining_tp"] = 1;
  }
  return j;
}

namespace {
void refuse_per_layer(const ModelConfig& cfg) {
  if (!cfg.layer_heads.empty() || !cfg.layer_ffn.empty() || !cfg.pruned_heads.empty())
    throw NotImplemented(
        fmt::format("config.json for a structurally pruned {} (per-layer widths, pruned heads)",
                    arch_name(cfg.arch)));
}
}  // namespace

json gpt2_config_json(const ModelConfig& cfg, const std::string& torch_dtype) {
  MINFER_CHECK(cfg.arch == Arch::GPT2, "gpt2 config.json for a {} model", arch_name(cfg.arch));
  refuse_per_layer(cfg);
  if (!cfg.tie_embeddings) throw NotImplemented("config.json for a gpt2 with an untied lm_head");
  return json{{"architectures", {"GPT2LMHeadModel"}},
              {"model_type", "gpt2"},
              {"vocab_size", cfg.vocab_size},
              {"n_embd", cfg.hidden},
              {"n_layer", cfg.n_layers},
              {"n_head", cfg.n_heads},
              {"n_inner", cfg.ffn == 4 * cfg.hidden ? json(nullptr) : json(cfg.ffn)},
              {"n_positions", cfg.max_pos},
              {"activation_function", cfg.act == Act::GeluTanh ? "gelu_new" : "gelu"},
              {"layer_norm_epsilon", cfg.norm_eps},
              {"tie_word_embeddings", true},
              {"bos_token_id", id_or_null(cfg.bos_id)},
              {"eos_token_id", id_or_null(cfg.eos_id)},
              {"attn_pdrop", 0.1},
              {"embd_pdrop", 0.1},
              {"resid_pdrop", 0.1},
              {"initializer_range", 0.02},
              {"scale_attn_weights", true},
              {"scale_attn_by_inverse_layer_idx", false},
              {"reorder_and_upcast_attn", false},
              {"use_cache", true},
              {"torch_dtype", torch_dtype}};
}

json bert_config_json(const ModelConfig& cfg, const std::string& torch_dtype) {
  MINFER_CHECK(cfg.arch == Arch::Bert, "bert config.json for a {} model", arch_name(cfg.arch));
  refuse_per_layer(cfg);
  return json{{"architectures", {"BertModel"}},
              {"model_type", "bert"},
              {"vocab_size", cfg.vocab_size},
              {"hidden_size", cfg.hidden},
              {"num_hidden_layers", cfg.n_layers},
              {"num_attention_heads", cfg.n_heads},
              {"intermediate_size", cfg.ffn},
              {"max_position_embeddings", cfg.max_pos},
              {"type_vocab_size", cfg.type_vocab},
              {"hidden_act", cfg.act == Act::GeluTanh ? "gelu_new" : "gelu"},
              {"layer_norm_eps", cfg.norm_eps},
              {"pad_token_id", id_or_null(cfg.pad_id)},
              {"position_embedding_type", "absolute"},
              {"is_decoder", false},
              {"attention_probs_dropout_prob", 0.1},
              {"hidden_dropout_prob", 0.1},
              {"initializer_range", 0.02},
              {"use_cache", true},
              {"torch_dtype", torch_dtype}};
}

void write_tokenizer_files(const fs::path& dir, const Tokenizer& tok, const ModelConfig& cfg,
                           bool add_bos, bool add_eos) {
  json gen = {{"bos_token_id", id_or_null(cfg.bos_id)},
              {"eos_token_id", id_or_null(cfg.eos_id)},
              {"pad_token_id", id_or_null(cfg.pad_id)}};
  write_json_file(dir / "generation_config.json", gen);

  {
    std::ofstream tj(dir / "tokenizer.json", std::ios::binary);
    MINFER_CHECK(tj.good(), "{}: cannot create file", (dir / "tokenizer.json").string());
    tj << tok.to_hf_json();
    tj.close();
    MINFER_CHECK(tj.good(), "{}: write failed", (dir / "tokenizer.json").string());
  }
  json tc = {{"tokenizer_class", "PreTrainedTokenizerFast"},
             {"bos_token", token_or_null(tok, cfg.bos_id)},
             {"eos_token", token_or_null(tok, cfg.eos_id)},
             {"pad_token", token_or_null(tok, cfg.pad_id)},
             {"add_bos_token", add_bos},
             {"add_eos_token", add_eos},
             {"clean_up_tokenization_spaces", false},
             {"model_max_length", cfg.max_pos}};
  if (!tok.chat_template().empty()) tc["chat_template"] = tok.chat_template();
  write_json_file(dir / "tokenizer_config.json", tc);
}

std::string element_index(const Tensor& t, int64_t flat) {
  std::vector<int64_t> idx(size_t(t.ndim()));
  for (int64_t d = t.ndim() - 1; d >= 0; --d) {
    idx[size_t(d)] = flat % t.dim(d);
    flat /= t.dim(d);
  }
  return fmt::format("[{}]", fmt::join(idx, ", "));
}

Tensor cast_to(const Tensor& src, DType dtype, const std::string& name) {
  MINFER_CHECK(dtype == DType::F32 || dtype == DType::F16 || dtype == DType::BF16,
               "tensor '{}': cannot cast to {} (F32, F16 or BF16)", name, dtype_name(dtype));
  if (src.dtype() == dtype) return src.clone();
  Tensor f = src.dtype() == DType::F32 && src.is_contiguous() ? src : src.to_f32();
  if (dtype == DType::F32) return f.storage() == src.storage() ? f.clone() : f;
  Tensor out = Tensor::empty(dtype, f.shape(), f.ndim());
  const size_t n = size_t(f.numel());
  const float* x = f.data<float>();
  uint16_t* h = out.data<uint16_t>();
  if (dtype == DType::F16)
    f32_to_f16_n(x, h, n);
  else
    f32_to_bf16_n(x, h, n);
  const size_t bad = dtype == DType::F16 ? first_nonfinite_f16(h, n) : first_nonfinite_bf16(h, n);
  if (bad < n) {
    const float v = x[bad];
    MINFER_CHECK(std::isfinite(v), "tensor '{}': element {} is {}, expected a finite value", name,
                 element_index(f, int64_t(bad)), v);
    MINFER_FAIL(
        "tensor '{}': element {} = {} is outside the {} range (|x| <= {}): it would become inf. "
        "Store this tensor as bf16 (the f32 exponent range) or f32",
        name, element_index(f, int64_t(bad)), v, dtype == DType::F16 ? "float16" : "bfloat16",
        dtype == DType::F16 ? "65504" : "3.3895e38");
  }
  return out;
}

}  // namespace minfer
