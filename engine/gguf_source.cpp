#include "engine/gguf_source.h"

#include <fmt/ranges.h>

#include <algorithm>
#include <cstring>

#include "engine/rope.h"

namespace minfer {

namespace {

// RoPE scaling from `<arch>.rope.scaling.*` and a `rope_freqs.weight` tensor, as llama.cpp reads
// them (llama-model.cpp load_hparams) and as convert_hf_to_gguf.py writes them from config.json:
//   linear: scaling.type "linear", scaling.factor
//   yarn:   scaling.type "yarn", scaling.factor, scaling.original_context_length,
//           scaling.yarn_beta_fast / yarn_beta_slow (defaults 32 / 1)
//   llama3: no scaling type; a rope_freqs.weight tensor [D/2] of per-dimension divisors
// Keys that would change the math in a way we do not reproduce are refused by name.
void read_rope_scaling(const GgufFile& f, const std::string& p, ModelConfig& c) {
  const std::string type = f.get_str_or(p + "rope.scaling.type", "none");
  RopeScaling& rs = c.rope_scaling;
  const double factor = f.get_float_or(p + "rope.scaling.factor", 1.0);
  if (type == "none") {
    MINFER_CHECK(factor == 1.0 || factor == 0.0,
                 "{}: {}rope.scaling.factor = {} with rope.scaling.type 'none'", f.path(), p,
                 factor);
  } else if (type == "linear") {
    rs.type = RopeType::Linear;
    rs.factor = factor;
  } else if (type == "yarn") {
    rs.type = RopeType::Yarn;
    rs.factor = factor;
    rs.original_max_pos = f.get_int_or(p + "rope.scaling.original_context_length", c.max_pos);
    rs.beta_fast = f.get_float_or(p + "rope.scaling.yarn_beta_fast", 32.0);
    rs.beta_slow = f.get_float_or(p + "rope.scaling.yarn_beta_slow", 1.0);
    // llama.cpp multiplies its own 0.1 ln(s) + 1 by yarn_attn_factor, transformers replaces it
    // with attention_factor; a file that sets one is ambiguous, so only the neutral values pass.
    for (auto [key, neutral] :
         {std::pair<const char*, double>{"rope.scaling.yarn_attn_factor", 1.0},
          {"rope.scaling.yarn_ext_factor", 1.0},
          {"rope.scaling.yarn_log_multiplier", 0.0}}) {
      const double v = f.get_float_or(p + key, neutral);
      if (v != neutral)
        throw NotImplemented(fmt::format("{}: {}{} = {} (yarn with a non-default {})", f.path(), p,
                                         key, v, key + 13));
    }
  } else {
    throw NotImplemented(fmt::format(
        "{}: RoPE scaling {}rope.scaling.type = '{}' (supported: none, linear, yarn, and "
        "Llama-3.1 frequency factors in rope_freqs.weight)",
        f.path(), p, type));
  }
  const double attn = f.get_float_or(p + "rope.scaling.attn_factor", 1.0);
  if (attn != 1.0)
    throw NotImplemented(fmt::format(
        "{}: {}rope.scaling.attn_factor = {} (a RoPE attention factor)", f.path(), p, attn));
  MINFER_CHECK(!f.has(p + "rope.scaling.alpha"),
               "{}: {}rope.scaling.alpha (NTK-alpha RoPE) is not supported", f.path(), p);
  for (const char* t : {"rope_factors_long.weight", "rope_factors_short.weight"})
    if (f.find(t) != nullptr)
      throw NotImplemented(
          fmt::format("{}: tensor {} (LongRoPE, Phi-3 128k-style scaling)", f.path(), t));
  if (const GgufTensorInfo* ff = f.find("rope_freqs.weight")) {
    MINFER_CHECK(ff->ne.size() == 1 && ff->ne[0] * 2 == c.head_dim,
                 "{}: rope_freqs.weight must hold head_dim / 2 = {} values, found shape [{}]",
                 f.path(), c.head_dim / 2, fmt::join(ff->ne, ", "));
    const bool plain = ff->type == uint32_t(GgmlType::F32) || ff->type == uint32_t(GgmlType::F16) ||
                       ff->type == uint32_t(GgmlType::BF16);
    Tensor t = plain ? f.view(*ff).to_f32() : f.dequantize(*ff);
    rs.freq_factors.assign(t.data<float>(), t.data<float>() + t.numel());
  }
}

// Gemma / Gemma-2 as llama.cpp reads them (src/models/gemma.cpp, gemma2.cpp): GeGLU with gelu
// tanh, embeddings x sqrt(C), norm weights stored as 1 + w (convert_hf_to_gguf.py GemmaModel.
// modify_tensors; GgufSource gives them back as w). Gemma-2: attn_logit_softcapping (default 50),
// final_logit_softcapping (default 30), sliding_window (default 4096) on the layers
// attention.sliding_window_pattern marks (default 2: even layers), and a query scale of
// 1/sqrt(head_dim), 1/sqrt(C / H) for the 46-layer 27B, as llama.cpp fixes it (the converter
// does not write query_pre_attn_scalar).
void read_gemma(const GgufFile& f, const std::string& p, const std::string& arch, ModelConfig& c) {
  c.act = Act::GeluTanh;
  c.norm_unit_offset = true;
  c.embed_scale = true;
  if (arch != "gemma2") return;
  c.sandwich_norms = true;
  c.attn_softcap = float(f.get_float_or(p + "attn_logit_softcapping", 50.0));
  c.final_softcap = float(f.get_float_or(p + "final_logit_softcapping", 30.0));
  MINFER_CHECK(std::isfinite(c.attn_softcap) && c.attn_softcap >= 0 &&
                   std::isfinite(c.final_softcap) && c.final_softcap >= 0,
               "{}: soft-capping values must be finite and >= 0, found {} / {}", f.path(),
               c.attn_softcap, c.final_softcap);
  c.sliding_window = f.get_int_or(p + "attention.sliding_window", 4096);
  MINFER_CHECK(c.sliding_window > 0, "{}: {}attention.sliding_window must be > 0, found {}",
               f.path(), p, c.sliding_window);
  const int64_t pattern = f.get_int_or(p + "attention.sliding_window_pattern", 2);
  MINFER_CHECK(pattern >= 0, "{}: {}attention.sliding_window_pattern must be >= 0, found {}",
               f.path(), p, pattern);
  c.layer_sliding.assign(size_t(std::max<int64_t>(c.n_layers, 0)), false);
  for (size_t l = 0; l < c.layer_sliding.size(); ++l)
    c.layer_sliding[l] = pattern == 0 || int64_t(l) % pattern < pattern - 1;
  c.attn_scale = c.n_layers == 46 ? 1.f / std::sqrt(float(c.hidden / c.n_heads))
                                  : 1.f / std::sqrt(float(c.head_dim));
}

}  // namespace

bool gguf_permutes_qk(const std::string& arch) {
  return arch == "llama";
}

ModelConfig config_from_gguf(const GgufFile& f) {
  const std::string arch = f.get_str_or("general.architecture", "");
  MINFER_CHECK(
      arch == "llama" || arch == "qwen2" || arch == "phi3" || arch == "gemma" || arch == "gemma2",
      "{}: unknown architecture '{}' (supported in GGUF: llama, qwen2, phi3, gemma, "
      "gemma2)",
      f.path(), arch);
  const std::string p = arch + ".";
  ModelConfig c;
  c.arch = Arch::Llama;
  c.model_type = arch;
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
  read_rope_scaling(f, p, c);
  MINFER_CHECK(f.get_int_or(p + "expert_count", 0) == 0,
               "{}: {}expert_count = {}: mixture-of-experts models are not supported", f.path(), p,
               f.get_int_or(p + "expert_count", 0));
  // Sliding-window attention (phi3 writes it; Mistral-style): within the window it is full
  // attention, so the window becomes the position limit, as for config.json.
  if (arch == "gemma" || arch == "gemma2") {
    read_gemma(f, p, arch, c);
  } else if (const int64_t w = f.get_int_or(p + "attention.sliding_window", 0); w > 0) {
    c.max_pos = std::min(c.max_pos, w);
  }
  const GgufTensorInfo& emb = f.info("token_embd.weight");
  MINFER_CHECK(emb.ne.size() == 2, "{}: token_embd.weight must be 2-D", f.path());
  c.vocab_size = emb.ne[1];
  c.tie_embeddings = f.find("output.weight") == nullptr;
  c.attn_bias = f.find("blk.0.attn_q.bias") != nullptr || f.find("blk.0.attn_qkv.bias") != nullptr;
  c.bos_id = f.get_int_or("tokenizer.ggml.bos_token_id", -1);
  c.eos_id = f.get_int_or("tokenizer.ggml.eos_token_id", -1);
  c.pad_id = f.get_int_or("tokenizer.ggml.padding_token_id", -1);
  validate_config(c, f.path());
  rope_table(c.rope_theta, c.head_dim, c.rope_scaling, f.path());  // checks the values
  return c;
}

GgufSource::GgufSource(std::shared_ptr<GgufFile> f, const ModelConfig& cfg, GgufWeights mode)
    : file_(std::move(f)), cfg_(cfg), mode_(mode) {
  const std::string arch = file_->get_str_or("general.architecture", "llama");
  permuted_qk_ = gguf_permutes_qk(arch);
  // phi3 stores the fused gate|up projection [2F, C] as ffn_up (convert_hf_to_gguf maps
  // mlp.gate_up_proj to ffn_up) and has no ffn_gate.
  const bool fused_up = arch == "phi3" && file_->find("blk.0.ffn_gate.weight") == nullptr;
  norm_unit_offset_ = cfg.norm_unit_offset;
  for (const GgufTensorInfo& t : file_->tensors()) {
    // Tensors with no HF name (rope_freqs, read into the config) are skipped.
    try {
      std::string hf;
      if (arch == "gemma2") {
        // Gemma-2's four norms per layer: attn_norm, post_attention_norm, ffn_norm (before the
        // FFN) and post_ffw_norm (llama.cpp's tensor names for them).
        for (auto [g, h] : {std::pair<const char*, const char*>{".post_attention_norm.",
                                                                ".post_attention_layernorm."},
                            {".ffn_norm.", ".pre_feedforward_layernorm."},
                            {".post_ffw_norm.", ".post_feedforward_layernorm."}}) {
          const size_t at = t.name.find(g);
          if (t.name.rfind("blk.", 0) == 0 && at != std::string::npos) {
            const std::string layer = t.name.substr(4, at - 4);
            MINFER_CHECK(!layer.empty() && layer.size() <= 9 &&
                             layer.find_first_not_of("0123456789") == std::string::npos,
                         "{}: tensor '{}': bad layer index", file_->path(), t.name);
            hf = fmt::format("model.layers.{}{}{}", std::stoll(layer), h,
                             t.name.substr(at + std::string(g).size()));
          }
        }
      }
      if (hf.empty()) hf = gguf_to_hf_name(t.name);
      const size_t at = hf.find("mlp.up_proj.");
      if (fused_up && at != std::string::npos) hf.replace(at, 11, "mlp.gate_up_proj");
      by_hf_[hf] = &t;
    } catch (const Error&) {
    }
  }
}

const GgufTensorInfo& GgufSource::checked(const std::string& name,
                                          std::vector<int64_t> want) const {
  auto it = by_hf_.find(name);
  MINFER_CHECK(it != by_hf_.end(), "{}: missing tensor '{}'", file_->path(), name);
  const GgufTensorInfo& t = *it->second;
  // GGUF lists dimensions innermost first; row-major shape is the reverse.
  std::vector<int64_t> rm(t.ne.rbegin(), t.ne.rend());
  MINFER_CHECK(rm == want,
               "{}: tensor '{}' ({}): expected shape {} (from the GGUF metadata), "
               "found {}",
               file_->path(), t.name, name, fmt::format("[{}]", fmt::join(want, ", ")),
               fmt::format("[{}]", fmt::join(rm, ", ")));
  return t;
}

namespace {
// Whether `name` is a Q or K projection (*q: which) — rows the converter permuted for llama.
bool is_qk(const std::string& name, bool* q) {
  *q = name.find("self_attn.q_proj.weight") != std::string::npos;
  return *q || name.find("self_attn.k_proj.weight") != std::string::npos;
}
bool block_type(uint32_t t) {
  const auto& v = ggml_blocks_types();
  return std::find(v.begin(), v.end(), t) != v.end();
}
}  // namespace

Tensor GgufSource::tensor(const std::string& name, std::initializer_list<int64_t> shape) const {
  const GgufTensorInfo& t = checked(name, std::vector<int64_t>(shape));
  bool q = false;
  const bool qk = permuted_qk_ && is_qk(name, &q);
  const bool plain = t.type == uint32_t(GgmlType::F32) || t.type == uint32_t(GgmlType::F16) ||
                     t.type == uint32_t(GgmlType::BF16);
  const bool norm = norm_unit_offset_ && name.size() > 11 &&
                    name.compare(name.size() - 11, 11, "norm.weight") == 0;
  if (plain && !qk && !norm) return file_->view(t);
  if (!plain) ++dequantized_[ggml_type_name(t.type)];
  Tensor w = plain ? file_->view(t).to_f32() : file_->dequantize(t);
  if (norm) {
    // Gemma: the file holds 1 + w (convert_hf_to_gguf.py adds 1); HF's w is what models read.
    if (plain) w = w.clone();  // to_f32 of an F32 view may share the (read-only) mapping
    float* p = w.data<float>();
    for (int64_t i = 0; i < w.numel(); ++i) p[i] -= 1.f;
    return w;
  }
  if (qk) {
    MINFER_CHECK(w.ndim() == 2, "{}: '{}' must be 2-D", file_->path(), t.name);
    unpermute_qk_rows(w.data<float>(), w.dim(0), w.dim(1), q ? cfg_.n_heads : cfg_.n_kv_heads);
  }
  return w;
}

bool GgufSource::native_blocks(const std::string& name, int64_t rows, int64_t cols,
                               GgmlBlocks* out) const {
  if (mode_ != GgufWeights::Native || !has(name)) return false;
  const GgufTensorInfo& t = checked(name, {rows, cols});
  if (!block_type(t.type)) return false;
  Tensor b = file_->bytes_view(t);
  const int64_t rb = ggml_row_bytes(t.type, cols);
  MINFER_CHECK(b.dim(0) == rows && b.dim(1) == rb,
               "{}: tensor '{}': {} x {} bytes, expected {} rows of {} bytes ({} x {})",
               file_->path(), t.name, b.dim(0), b.dim(1), rows, rb, ggml_type_name(t.type), cols);
  bool q = false;
  if (permuted_qk_ && is_qk(name, &q)) {
    // unpermute_qk_rows on whole rows of blocks: HF row h*D + i*D/2 + j is GGUF row
    // h*D + 2j + i. A host copy (the Q and K projections only).
    const int64_t nh = q ? cfg_.n_heads : cfg_.n_kv_heads;
    MINFER_CHECK(rows % (2 * nh) == 0, "{}: '{}': {} rows do not split into {} heads",
                 file_->path(), t.name, rows, nh);
    const int64_t D = rows / nh, half = D / 2;
    Tensor c = Tensor::empty(DType::U8, {rows, rb});
    const uint8_t* src = b.data<uint8_t>();
    uint8_t* dst = c.data<uint8_t>();
    for (int64_t h = 0; h < nh; ++h)
      for (int64_t i = 0; i < 2; ++i)
        for (int64_t j = 0; j < half; ++j)
          std::memcpy(dst + (h * D + i * half + j) * rb, src + (h * D + 2 * j + i) * rb,
                      size_t(rb));
    b = c;
  }
  out->type = t.type;
  out->blocks = b;
  ++native_[ggml_type_name(t.type)];
  return true;
}

Linear GgufSource::linear(const std::string& prefix, int64_t in, int64_t out, bool bias,
                          bool transposed) const {
  GgmlBlocks g;
  const std::string wn = prefix + ".weight";
  if (transposed || !native_blocks(wn, out, in, &g))
    return WeightSource::linear(prefix, in, out, bias, transposed);
  return make_linear(wn, in, out, std::move(g), bias ? vec(prefix + ".bias", out) : Tensor());
}

Linear GgufSource::table(const std::string& name, int64_t rows, int64_t cols) const {
  GgmlBlocks g;
  if (!native_blocks(name, rows, cols, &g)) return WeightSource::table(name, rows, cols);
  return make_linear(name, cols, rows, std::move(g));
}

std::string GgufSource::summary() const {
  std::string s;
  for (const auto& [ty, n] : native_)
    s += fmt::format("{}{} x {} (native)", s.empty() ? "" : ", ", n, ty);
  for (const auto& [ty, n] : dequantized_)
    s += fmt::format("{}{} x {} (dequantized to f32 at load)", s.empty() ? "" : ", ", n, ty);
  return "weights: " + (s.empty() ? std::string("float tensors only") : s);
}

}  // namespace minfer
