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
#include "engine/model_folder.h"
#include "engine/safetensors.h"
#include "tokenizer/tokenizer.h"

namespace minfer {

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

// Every tensor LlamaForCausalLM (Qwen2ForCausalLM; Phi3ForCausalLM with its fused qkv_proj and
// gate_up_proj; GemmaForCausalLM; Gemma2ForCausalLM with its pre/post-feedforward norms) has,
// with its row-major shape; llama_config_json picks the same class. Gemma's norm weights are
// w as HF stores them (GgufSource takes the 1 that convert_hf_to_gguf.py adds back off).
std::vector<std::pair<std::string, std::vector<int64_t>>> hf_llama_tensors(const ModelConfig& c) {
  const int64_t C = c.hidden, D = c.head_dim, F = c.ffn;
  const bool phi3 = c.model_type == "phi3" && !c.attn_bias;
  const int64_t qd = c.n_heads * D, kvd = c.n_kv_heads * D;
  std::vector<std::pair<std::string, std::vector<int64_t>>> t;
  t.push_back({"model.embed_tokens.weight", {c.vocab_size, C}});
  for (int64_t l = 0; l < c.n_layers; ++l) {
    const std::string p = fmt::format("model.layers.{}.", l);
    t.push_back({p + "input_layernorm.weight", {C}});
    if (phi3) {
      t.push_back({p + "self_attn.qkv_proj.weight", {qd + 2 * kvd, C}});
    } else {
      t.push_back({p + "self_attn.q_proj.weight", {qd, C}});
      if (c.attn_bias) t.push_back({p + "self_attn.q_proj.bias", {qd}});
      t.push_back({p + "self_attn.k_proj.weight", {kvd, C}});
      if (c.attn_bias) t.push_back({p + "self_attn.k_proj.bias", {kvd}});
      t.push_back({p + "self_attn.v_proj.weight", {kvd, C}});
      if (c.attn_bias) t.push_back({p + "self_attn.v_proj.bias", {kvd}});
    }
    t.push_back({p + "self_attn.o_proj.weight", {C, qd}});
    t.push_back({p + "post_attention_layernorm.weight", {C}});
    if (c.sandwich_norms) {  // Gemma-2: the norms before and after the MLP
      t.push_back({p + "pre_feedforward_layernorm.weight", {C}});
      t.push_back({p + "post_feedforward_layernorm.weight", {C}});
    }
    if (phi3) {
      t.push_back({p + "mlp.gate_up_proj.weight", {2 * F, C}});
    } else {
      t.push_back({p + "mlp.gate_proj.weight", {F, C}});
      t.push_back({p + "mlp.up_proj.weight", {F, C}});
    }
    t.push_back({p + "mlp.down_proj.weight", {C, F}});
  }
  t.push_back({"model.norm.weight", {C}});
  if (!c.tie_embeddings) t.push_back({"lm_head.weight", {c.vocab_size, C}});
  return t;
}

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
  StagingDir tmp(out_dir, opt.force);  // checks the destination first

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
  const json config = llama_config_json(cfg, torch_dtype_name(opt.dtype));  // may refuse
  GgufSource src(f, cfg);
  const auto names = hf_llama_tensors(cfg);
  for (const auto& [name, shape] : names)
    MINFER_CHECK(src.has(name), "{}: missing tensor for '{}'", f->path(), name);

  // Weights, one at a time into the output dtype (dequantized f32 copies are dropped at once).
  std::vector<std::pair<std::string, Tensor>> tensors;
  tensors.reserve(names.size());
  for (const auto& [name, shape] : names) {
    Tensor t;
    if (shape.size() == 1)
      t = src.tensor(name, {shape[0]});
    else
      t = src.tensor(name, {shape[0], shape[1]});
    tensors.emplace_back(name, cast_to(t, opt.dtype, name));
  }
  save_safetensors((tmp.path() / "model.safetensors").string(), tensors, {{"format", "pt"}});
  tensors.clear();

  write_json_file(tmp.path() / "config.json", config);

  write_tokenizer_files(
      tmp.path(), *tok, cfg,
      f->has("tokenizer.ggml.add_bos_token") && f->get_bool("tokenizer.ggml.add_bos_token"),
      f->has("tokenizer.ggml.add_eos_token") && f->get_bool("tokenizer.ggml.add_eos_token"));

  tmp.commit();
}

}  // namespace minfer
