#include "engine/gguf_source.h"

#include <fmt/ranges.h>

namespace minfer {

ModelConfig config_from_gguf(const GgufFile& f) {
  const std::string arch = f.get_str_or("general.architecture", "");
  MINFER_CHECK(arch == "llama", "{}: unknown architecture '{}' (supported in GGUF: llama)",
               f.path(), arch);
  const std::string p = arch + ".";
  ModelConfig c;
  c.arch = Arch::Llama;
  c.model_type = "llama";
  c.hidden = f.get_int(p + "embedding_length");
  c.n_layers = f.get_int(p + "block_count");
  c.n_heads = f.get_int(p + "attention.head_count");
  c.n_kv_heads = f.get_int_or(p + "attention.head_count_kv", c.n_heads);
  c.ffn = f.get_int(p + "feed_forward_length");
  c.max_pos = f.get_int_or(p + "context_length", 2048);
  c.norm = Norm::RmsNorm;
  c.act = Act::Silu;
  c.norm_eps = float(f.get_float_or(p + "attention.layer_norm_rms_epsilon", 1e-5));
  c.rope_theta = float(f.get_float_or(p + "rope.freq_base", 10000.0));
  MINFER_CHECK(c.n_heads > 0 && c.n_kv_heads > 0 && c.n_heads % c.n_kv_heads == 0 &&
                   c.hidden % c.n_heads == 0,
               "{}: inconsistent head counts {} / {} for width {}", f.path(), c.n_heads,
               c.n_kv_heads, c.hidden);
  c.head_dim = f.get_int_or(p + "attention.key_length", c.hidden / c.n_heads);
  // Keys that change the math and that llama.cpp reads: refused rather than ignored.
  MINFER_CHECK(f.get_int_or(p + "rope.dimension_count", c.head_dim) == c.head_dim,
               "{}: {}rope.dimension_count = {} rotates part of each head (head_dim {}); partial "
               "RoPE is not supported",
               f.path(), p, f.get_int_or(p + "rope.dimension_count", 0), c.head_dim);
  MINFER_CHECK(f.get_int_or(p + "attention.value_length", c.head_dim) == c.head_dim,
               "{}: {}attention.value_length differs from key_length {}: not supported", f.path(),
               p, c.head_dim);
  {
    const std::string rs = f.get_str_or(p + "rope.scaling.type", "none");
    const double factor = f.get_float_or(p + "rope.scaling.factor", 1.0);
    if (rs != "none" || factor != 1.0)
      throw NotImplemented(fmt::format("{}: RoPE scaling ({}rope.scaling.type = '{}', factor {})",
                                       f.path(), p, rs, factor));
    if (f.find("rope_freqs.weight") != nullptr)
      throw NotImplemented(
          fmt::format("{}: RoPE frequency factors (tensor rope_freqs.weight, Llama-3.1-style "
                      "rope scaling)",
                      f.path()));
  }
  MINFER_CHECK(f.get_int_or(p + "expert_count", 0) == 0,
               "{}: {}expert_count = {}: mixture-of-experts models are not supported", f.path(), p,
               f.get_int_or(p + "expert_count", 0));
  const GgufTensorInfo& emb = f.info("token_embd.weight");
  MINFER_CHECK(emb.ne.size() == 2, "{}: token_embd.weight must be 2-D", f.path());
  c.vocab_size = emb.ne[1];
  c.tie_embeddings = f.find("output.weight") == nullptr;
  c.attn_bias = f.find("blk.0.attn_q.bias") != nullptr;
  c.bos_id = f.get_int_or("tokenizer.ggml.bos_token_id", -1);
  c.eos_id = f.get_int_or("tokenizer.ggml.eos_token_id", -1);
  c.pad_id = f.get_int_or("tokenizer.ggml.padding_token_id", -1);
  validate_config(c, f.path());
  return c;
}

GgufSource::GgufSource(std::shared_ptr<GgufFile> f, const ModelConfig& cfg)
    : file_(std::move(f)), cfg_(cfg) {
  for (const GgufTensorInfo& t : file_->tensors()) {
    // Tensors llama does not use (e.g. Llama-3's rope_freqs) have no HF name: skip them.
    try {
      by_hf_[gguf_to_hf_name(t.name)] = &t;
    } catch (const Error&) {
    }
  }
}

Tensor GgufSource::tensor(const std::string& name, std::initializer_list<int64_t> shape) const {
  auto it = by_hf_.find(name);
  MINFER_CHECK(it != by_hf_.end(), "{}: missing tensor '{}'", file_->path(), name);
  const GgufTensorInfo& t = *it->second;
  // GGUF lists dimensions innermost first; row-major shape is the reverse.
  std::vector<int64_t> rm(t.ne.rbegin(), t.ne.rend());
  std::vector<int64_t> want(shape);
  MINFER_CHECK(rm == want,
               "{}: tensor '{}' ({}): expected shape {} (from the GGUF metadata), "
               "found {}",
               file_->path(), t.name, name, fmt::format("[{}]", fmt::join(want, ", ")),
               fmt::format("[{}]", fmt::join(rm, ", ")));
  const bool q = name.find("self_attn.q_proj.weight") != std::string::npos;
  const bool k = name.find("self_attn.k_proj.weight") != std::string::npos;
  const bool plain = t.type == uint32_t(GgmlType::F32) || t.type == uint32_t(GgmlType::F16) ||
                     t.type == uint32_t(GgmlType::BF16);
  if (plain && !q && !k) return file_->view(t);
  Tensor w = plain ? file_->view(t).to_f32() : file_->dequantize(t);
  if (q || k) {
    MINFER_CHECK(w.ndim() == 2, "{}: '{}' must be 2-D", file_->path(), t.name);
    unpermute_qk_rows(w.data<float>(), w.dim(0), w.dim(1), q ? cfg_.n_heads : cfg_.n_kv_heads);
  }
  return w;
}

}  // namespace minfer
