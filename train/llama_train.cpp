// LLaMA forward with a kept activation per op, and its backward (the reverse list of the same
// ops). Mirrors models/llama.cpp op for op, in f32 on host arrays.
#include "train/llama_train.h"

#include <algorithm>
#include <cstring>
#include <functional>
#include <map>
#include <random>

#include "engine/linear.h"
#include "engine/weights.h"
#include "train/ops.h"

namespace minfer::train {

namespace {
// A structurally pruned config whose per-layer widths are all equal (ffn-<pct> and heads-<pct>
// cut the same number in every layer) is an ordinary config with smaller widths.
ModelConfig uniform_widths(ModelConfig c) {
  auto uniform = [](std::vector<int64_t>& v, int64_t& into) {
    if (v.empty() || std::adjacent_find(v.begin(), v.end(), std::not_equal_to<>()) != v.end())
      return;
    into = v[0];
    v.clear();
  };
  uniform(c.layer_ffn, c.ffn);
  uniform(c.layer_heads, c.n_heads);
  uniform(c.layer_kv_heads, c.n_kv_heads);
  return c;
}
}  // namespace

TrainLlama::TrainLlama(const ModelConfig& c0) : cfg_(uniform_widths(c0)) {
  const ModelConfig& c = cfg_;
  if (c.arch != Arch::Llama)
    throw NotImplemented(
        fmt::format("training a {} model (only llama-family students so far)", arch_name(c.arch)));
  if (c.attn_bias || c.mlp_bias) throw NotImplemented("training llama models with biases");
  if (c.act != Act::Silu || c.norm_unit_offset || c.embed_scale || c.sandwich_norms ||
      c.attn_softcap > 0 || c.final_softcap > 0 || c.attn_scale > 0 || !c.layer_sliding.empty())
    throw NotImplemented(fmt::format("training a {} model (Gemma-style settings)", c.model_type));
  if (!c.layer_heads.empty() || !c.layer_kv_heads.empty() || !c.layer_ffn.empty())
    throw NotImplemented(
        "training a structurally pruned model with different widths per layer (uniform cuts "
        "such as ffn-<pct> train)");
  MINFER_CHECK(c.n_heads > 0 && c.n_kv_heads > 0 && c.n_heads % c.n_kv_heads == 0,
               "student config: {} heads is not a multiple of {} kv heads", c.n_heads,
               c.n_kv_heads);
  const int64_t C = c.hidden, V = c.vocab_size, F = c.ffn, qd = c.n_heads * c.head_dim,
                kvd = c.n_kv_heads * c.head_dim;
  params_.add("model.embed_tokens.weight", {V, C}, true);
  for (int64_t l = 0; l < c.n_layers; ++l) {
    const std::string p = lp(l);
    params_.add(p + "input_layernorm.weight", {C}, false);
    params_.add(p + "self_attn.q_proj.weight", {qd, C}, true);
    params_.add(p + "self_attn.k_proj.weight", {kvd, C}, true);
    params_.add(p + "self_attn.v_proj.weight", {kvd, C}, true);
    params_.add(p + "self_attn.o_proj.weight", {C, qd}, true);
    params_.add(p + "post_attention_layernorm.weight", {C}, false);
    params_.add(p + "mlp.gate_proj.weight", {F, C}, true);
    params_.add(p + "mlp.up_proj.weight", {F, C}, true);
    params_.add(p + "mlp.down_proj.weight", {C, F}, true);
  }
  params_.add("model.norm.weight", {C}, false);
  if (!c.tie_embeddings) params_.add("lm_head.weight", {V, C}, true);
  params_.allocate();
}

void TrainLlama::init_random(uint64_t seed, float std) {
  init_params_random(params_, seed, std);
}

void TrainLlama::load(const WeightSource& src) {
  load_params(params_, src);
}

void TrainLlama::load_from_model(Model& m, const std::vector<int64_t>& layer_map) {
  const ModelConfig& mc = m.config();
  MINFER_CHECK(mc.arch == Arch::Llama, "student init from a {} model: only llama-family teachers",
               arch_name(mc.arch));
  if (mc.norm_unit_offset || mc.sandwich_norms)
    throw NotImplemented(
        fmt::format("student init from a {} teacher (Gemma norms)", mc.model_type));
  // Every weight of the source model, by HF name (Linears dequantized through the format table).
  std::map<std::string, Tensor> by_name;
  for (const Model::NamedTensor& t : m.tensors()) by_name[t.name] = *t.t;
  std::map<std::string, const Linear*> lin;
  for (Linear* l : m.linears()) lin[l->name] = l;
  for (Linear* l : m.tables()) lin[l->name] = l;  // a GGUF table run in its block format
  auto source_name = [&](const std::string& name) {
    if (layer_map.empty() || name.rfind("model.layers.", 0) != 0) return name;
    const size_t a = std::strlen("model.layers."), b = name.find('.', a);
    const int64_t l = std::stoll(name.substr(a, b - a));
    MINFER_CHECK(layer_map[size_t(l)] >= 0 && layer_map[size_t(l)] < mc.n_layers,
                 "student layer {} maps to source layer {}, the source has {} layers", l,
                 layer_map[size_t(l)], mc.n_layers);
    return "model.layers." + std::to_string(layer_map[size_t(l)]) + name.substr(b);
  };
  MINFER_CHECK(layer_map.empty() || int64_t(layer_map.size()) == cfg_.n_layers,
               "student has {} layers, the layer map {}", cfg_.n_layers, layer_map.size());
  params_.walk([&](const ParamTensor& p, float* w, float*, float*, float*) {
    const std::string s = source_name(p.name);
    auto li = lin.find(s);
    if (li != lin.end() && li->second->in > 0) {
      copy_param(p, w, dequantize_weight(*li->second), "source model");
      return;
    }
    auto ti = by_name.find(s);
    MINFER_CHECK(ti != by_name.end(), "source model has no tensor '{}' (for student '{}')", s,
                 p.name);
    MINFER_CHECK(ti->second.dtype() == DType::F32 || ti->second.dtype() == DType::F16 ||
                     ti->second.dtype() == DType::BF16,
                 "source tensor '{}' is {}, expected f32/f16/bf16", s,
                 dtype_name(ti->second.dtype()));
    copy_param(p, w, ti->second, "source model");
  });
}

void TrainLlama::ensure_buffers(int64_t B, int64_t T) {
  const int64_t N = B * T, C = cfg_.hidden, V = cfg_.vocab_size, F = cfg_.ffn, H = cfg_.n_heads,
                qd = H * cfg_.head_dim, kvd = cfg_.n_kv_heads * cfg_.head_dim;
  const size_t n_acts = ckpt_ ? 1 : size_t(cfg_.n_layers);
  const bool same = B == B_ && T == T_ && acts_.size() == n_acts;
  B_ = B;
  T_ = T;
  if (same && cap_ >= N) return;
  cap_ = N;
  auto sz = [](std::vector<float>& v, int64_t n) { v.assign(size_t(n), 0.f); };
  ids_.assign(size_t(N), 0);
  resid_.resize(size_t(cfg_.n_layers + 1));
  for (auto& r : resid_) sz(r, N * C);
  acts_.assign(n_acts, LayerActs{});
  for (LayerActs& a : acts_) {
    sz(a.ln1, N * C), sz(a.ln1_rstd, N), sz(a.q, N * qd), sz(a.k, N * kvd), sz(a.v, N * kvd);
    sz(a.probs, B * H * T * T), sz(a.atty, N * qd), sz(a.res_mid, N * C);
    sz(a.ln2, N * C), sz(a.ln2_rstd, N), sz(a.gate, N * F), sz(a.up, N * F), sz(a.swi, N * F);
  }
  sz(lnf_, N * C), sz(lnf_rstd_, N), sz(logits_, N * V);
  sz(dres_, N * C), sz(dln_, N * C), sz(dq_, N * qd), sz(dk_, N * kvd), sz(dv_, N * kvd);
  sz(datt_, N * qd), sz(dgate_, N * F), sz(dup_, N * F), sz(dswi_, N * F);
}

const float* TrainLlama::head_w() const {
  return params_.weights().data() +
         params_.find(cfg_.tie_embeddings ? "model.embed_tokens.weight" : "lm_head.weight").offset;
}

void TrainLlama::layer_forward(int64_t l, LayerActs& a, const float* x, float* out) {
  const ModelConfig& c = cfg_;
  const int64_t B = B_, T = T_, N = B * T, C = c.hidden, F = c.ffn, H = c.n_heads,
                Hkv = c.n_kv_heads, D = c.head_dim, qd = H * D, kvd = Hkv * D;
  ParamStore& P = params_;
  const std::string p = lp(l);
  rmsnorm_forward(a.ln1.data(), a.ln1_rstd.data(), x, P.w(p + "input_layernorm.weight"), N, C,
                  c.norm_eps);
  linear_forward(a.q.data(), a.ln1.data(), P.w(p + "self_attn.q_proj.weight"), nullptr, N, C, qd);
  linear_forward(a.k.data(), a.ln1.data(), P.w(p + "self_attn.k_proj.weight"), nullptr, N, C, kvd);
  linear_forward(a.v.data(), a.ln1.data(), P.w(p + "self_attn.v_proj.weight"), nullptr, N, C, kvd);
  rope_forward(a.q.data(), B, T, H, D, c.rope_theta);
  rope_forward(a.k.data(), B, T, Hkv, D, c.rope_theta);
  attention_forward(a.atty.data(), a.probs.data(), a.q.data(), a.k.data(), a.v.data(), B, T, H, Hkv,
                    D);
  linear_forward(a.res_mid.data(), a.atty.data(), P.w(p + "self_attn.o_proj.weight"), nullptr, N,
                 qd, C);
  residual_forward(a.res_mid.data(), a.res_mid.data(), x, N * C);
  rmsnorm_forward(a.ln2.data(), a.ln2_rstd.data(), a.res_mid.data(),
                  P.w(p + "post_attention_layernorm.weight"), N, C, c.norm_eps);
  linear_forward(a.gate.data(), a.ln2.data(), P.w(p + "mlp.gate_proj.weight"), nullptr, N, C, F);
  linear_forward(a.up.data(), a.ln2.data(), P.w(p + "mlp.up_proj.weight"), nullptr, N, C, F);
  swiglu_forward(a.swi.data(), a.gate.data(), a.up.data(), N * F);
  linear_forward(out, a.swi.data(), P.w(p + "mlp.down_proj.weight"), nullptr, N, F, C);
  residual_forward(out, out, a.res_mid.data(), N * C);
}

const float* TrainLlama::forward(const int32_t* ids, int64_t B, int64_t T) {
  MINFER_CHECK(B > 0 && T > 0, "forward: batch {} x {} tokens", B, T);
  ensure_buffers(B, T);
  const ModelConfig& c = cfg_;
  const int64_t N = B * T, C = c.hidden, V = c.vocab_size;
  ParamStore& P = params_;
  std::copy(ids, ids + N, ids_.begin());
  embedding_forward(resid_[0].data(), ids, P.w("model.embed_tokens.weight"), N, C, V);
  for (int64_t l = 0; l < c.n_layers; ++l)
    layer_forward(l, acts_[ckpt_ ? 0 : size_t(l)], resid_[size_t(l)].data(),
                  resid_[size_t(l + 1)].data());
  rmsnorm_forward(lnf_.data(), lnf_rstd_.data(), resid_.back().data(), P.w("model.norm.weight"), N,
                  C, c.norm_eps);
  linear_forward(logits_.data(), lnf_.data(), head_w(), nullptr, N, C, V);
  return logits_.data();
}

void TrainLlama::layer_backward(int64_t l, LayerActs& a, const float* x) {
  const ModelConfig& c = cfg_;
  const int64_t B = B_, T = T_, N = B * T, C = c.hidden, F = c.ffn, H = c.n_heads,
                Hkv = c.n_kv_heads, D = c.head_dim, qd = H * D, kvd = Hkv * D;
  ParamStore& P = params_;
  auto zero = [](std::vector<float>& v) { std::fill(v.begin(), v.end(), 0.f); };
  const std::string p = lp(l);
  // MLP: out = res_mid + down(swiglu(gate(ln2), up(ln2)))
  zero(dswi_);
  linear_backward(dswi_.data(), P.g(p + "mlp.down_proj.weight"), nullptr, dres_.data(),
                  a.swi.data(), P.w(p + "mlp.down_proj.weight"), N, F, C);
  zero(dgate_), zero(dup_);
  swiglu_backward(dgate_.data(), dup_.data(), dswi_.data(), a.gate.data(), a.up.data(), N * F);
  zero(dln_);
  linear_backward(dln_.data(), P.g(p + "mlp.gate_proj.weight"), nullptr, dgate_.data(),
                  a.ln2.data(), P.w(p + "mlp.gate_proj.weight"), N, C, F);
  linear_backward(dln_.data(), P.g(p + "mlp.up_proj.weight"), nullptr, dup_.data(), a.ln2.data(),
                  P.w(p + "mlp.up_proj.weight"), N, C, F);
  rmsnorm_backward(dres_.data(), P.g(p + "post_attention_layernorm.weight"), dln_.data(),
                   a.res_mid.data(), P.w(p + "post_attention_layernorm.weight"), a.ln2_rstd.data(),
                   N, C);
  // Attention: res_mid = x + o(attention(rope(q(ln1)), rope(k(ln1)), v(ln1)))
  zero(datt_);
  linear_backward(datt_.data(), P.g(p + "self_attn.o_proj.weight"), nullptr, dres_.data(),
                  a.atty.data(), P.w(p + "self_attn.o_proj.weight"), N, qd, C);
  zero(dq_), zero(dk_), zero(dv_);
  attention_backward(dq_.data(), dk_.data(), dv_.data(), datt_.data(), a.q.data(), a.k.data(),
                     a.v.data(), a.probs.data(), B, T, H, Hkv, D);
  rope_backward(dq_.data(), B, T, H, D, c.rope_theta);
  rope_backward(dk_.data(), B, T, Hkv, D, c.rope_theta);
  zero(dln_);
  linear_backward(dln_.data(), P.g(p + "self_attn.q_proj.weight"), nullptr, dq_.data(),
                  a.ln1.data(), P.w(p + "self_attn.q_proj.weight"), N, C, qd);
  linear_backward(dln_.data(), P.g(p + "self_attn.k_proj.weight"), nullptr, dk_.data(),
                  a.ln1.data(), P.w(p + "self_attn.k_proj.weight"), N, C, kvd);
  linear_backward(dln_.data(), P.g(p + "self_attn.v_proj.weight"), nullptr, dv_.data(),
                  a.ln1.data(), P.w(p + "self_attn.v_proj.weight"), N, C, kvd);
  rmsnorm_backward(dres_.data(), P.g(p + "input_layernorm.weight"), dln_.data(), x,
                   P.w(p + "input_layernorm.weight"), a.ln1_rstd.data(), N, C);
}

void TrainLlama::backward(const float* dlogits) {
  MINFER_CHECK(B_ > 0, "backward before forward");
  const ModelConfig& c = cfg_;
  const int64_t N = B_ * T_, C = c.hidden, V = c.vocab_size;
  ParamStore& P = params_;
  auto zero = [](std::vector<float>& v) { std::fill(v.begin(), v.end(), 0.f); };
  const std::string head = c.tie_embeddings ? "model.embed_tokens.weight" : "lm_head.weight";

  zero(dln_);
  linear_backward(dln_.data(), P.g(head), nullptr, dlogits, lnf_.data(), head_w(), N, C, V);
  // dres_ holds ∂loss/∂(residual stream) and is carried down through the layers: each residual
  // add passes it on unchanged, each norm adds its branch's part.
  zero(dres_);
  rmsnorm_backward(dres_.data(), P.g("model.norm.weight"), dln_.data(), resid_.back().data(),
                   P.w("model.norm.weight"), lnf_rstd_.data(), N, C);
  for (int64_t l = c.n_layers - 1; l >= 0; --l) {
    const float* x = resid_[size_t(l)].data();
    if (ckpt_)  // recompute this block's activations from its kept input
      layer_forward(l, acts_[0], x, resid_[size_t(l + 1)].data());
    layer_backward(l, acts_[ckpt_ ? 0 : size_t(l)], x);
  }
  embedding_backward(P.g("model.embed_tokens.weight"), dres_.data(), ids_.data(), N, C);
}

void TrainLlama::set_checkpointing(bool on) {
  ckpt_ = on;
  cap_ = 0;  // re-lay the buffers on the next forward
}

size_t TrainLlama::activation_bytes() const {
  size_t n = ids_.size() * sizeof(int32_t);
  auto add = [&](const std::vector<float>& v) { n += v.size() * sizeof(float); };
  for (const auto& r : resid_) add(r);
  for (const LayerActs& a : acts_)
    for (const auto* v : {&a.ln1, &a.ln1_rstd, &a.q, &a.k, &a.v, &a.probs, &a.atty, &a.res_mid,
                          &a.ln2, &a.ln2_rstd, &a.gate, &a.up, &a.swi})
      add(*v);
  for (const auto* v : {&lnf_, &lnf_rstd_, &logits_, &dres_, &dln_, &dq_, &dk_, &dv_, &datt_,
                        &dgate_, &dup_, &dswi_})
    add(*v);
  return n;
}

std::vector<std::pair<std::string, Tensor>> TrainLlama::named_weights() const {
  return named_params(params_);
}

}  // namespace minfer::train
