// GPT-2 forward with kept activations and its backward; mirrors models/gpt2.cpp op for op.
#include "train/gpt2_train.h"

#include <algorithm>
#include <map>

#include "engine/error.h"
#include "engine/linear.h"
#include "engine/model_folder.h"
#include "models/model.h"
#include "train/ops.h"

namespace minfer::train {

TrainGpt2::TrainGpt2(const ModelConfig& c, const TrainMods& mods)
    : cfg_(c), proj_(mods, Arch::GPT2, params_, frozen_) {
  MINFER_CHECK(c.arch == Arch::GPT2, "TrainGpt2 needs a gpt2 config, got {}", arch_name(c.arch));
  if (!c.tie_embeddings) throw NotImplemented("training gpt2 with an untied lm_head");
  if (!c.layer_heads.empty() || !c.layer_ffn.empty() || !c.pruned_heads.empty())
    throw NotImplemented("training a structurally pruned gpt2 (pruned heads, per-layer widths)");
  const int64_t C = c.hidden, F = c.ffn;
  // Everything but the projections goes to the base store (frozen with LoRA); each Conv1D
  // projection [I, O] is laid out by proj_.
  ParamStore& base = proj_.base_store();
  base.add("transformer.wte.weight", {c.vocab_size, C}, true);
  base.add("transformer.wpe.weight", {c.max_pos, C}, true);
  for (int64_t l = 0; l < c.n_layers; ++l) {
    const std::string p = lp(l);
    base.add(p + "ln_1.weight", {C}, false);
    base.add(p + "ln_1.bias", {C}, false);
    proj_.add(p + "attn.c_attn.weight", 3 * C, C, /*conv1d=*/true);
    base.add(p + "attn.c_attn.bias", {3 * C}, false);
    proj_.add(p + "attn.c_proj.weight", C, C, true);
    base.add(p + "attn.c_proj.bias", {C}, false);
    base.add(p + "ln_2.weight", {C}, false);
    base.add(p + "ln_2.bias", {C}, false);
    proj_.add(p + "mlp.c_fc.weight", F, C, true);
    base.add(p + "mlp.c_fc.bias", {F}, false);
    proj_.add(p + "mlp.c_proj.weight", C, F, true);
    base.add(p + "mlp.c_proj.bias", {C}, false);
  }
  base.add("transformer.ln_f.weight", {C}, false);
  base.add("transformer.ln_f.bias", {C}, false);
  if (proj_.lora()) frozen_.allocate(/*grads=*/false);
  params_.allocate();
}

void TrainGpt2::init_random(uint64_t seed, float std) {
  MINFER_CHECK(!proj_.lora(),
               "LoRA over a randomly initialised base: the student needs weights (init, "
               "init:layers=..., or a folder with model.safetensors)");
  init_params_random(params_, seed, std);
  proj_.after_load();
}

void TrainGpt2::load_from_model(Model& m, const std::vector<int64_t>& layer_map) {
  const ModelConfig& mc = m.config();
  MINFER_CHECK(mc.arch == Arch::GPT2, "gpt2 student init from a {} model: the teacher must be gpt2",
               arch_name(mc.arch));
  MINFER_CHECK(layer_map.empty() || int64_t(layer_map.size()) == cfg_.n_layers,
               "student has {} layers, the layer map {}", cfg_.n_layers, layer_map.size());
  // Every weight of the source by HF name; GPT2Model saves bare names, GPT2LMHeadModel
  // "transformer.*": both map to the student's "transformer.*".
  std::map<std::string, Tensor> by_name;
  std::map<std::string, const Linear*> lin;
  auto norm_name = [](const std::string& n) {
    return n.rfind("transformer.", 0) == 0 || n.rfind("lm_head", 0) == 0 ? n : "transformer." + n;
  };
  for (const Model::NamedTensor& t : m.tensors()) by_name[norm_name(t.name)] = *t.t;
  for (Linear* l : m.linears())  // the block Conv1Ds (not the head, which is wte)
    if (norm_name(l->name).rfind("transformer.h.", 0) == 0) lin[norm_name(l->name)] = l;
  auto source_name = [&](const std::string& name) {
    return source_block_name(name, "transformer.h.", layer_map, mc.n_layers);
  };
  auto fill = [&](const ParamTensor& p, float* w) {
    const std::string s = source_name(p.name);
    auto li = lin.find(s);
    if (li != lin.end()) {  // a Conv1D weight: dequantized [out, in], stored [in, out]
      const Tensor d = dequantize_weight(*li->second);
      const int64_t O = d.dim(0), I = d.dim(1);
      MINFER_CHECK(p.shape.size() == 2 && p.shape[0] == I && p.shape[1] == O,
                   "source model: '{}' is [{}, {}] (out, in), the student needs [{}, {}] (in, out)",
                   s, O, I, p.shape[0], p.shape.size() == 2 ? p.shape[1] : 0);
      const float* src = d.data<float>();
      for (int64_t o = 0; o < O; ++o)
        for (int64_t i = 0; i < I; ++i) w[i * O + o] = src[o * I + i];
      return;
    }
    copy_bias_or_tensor(p, w, s, lin, by_name);
  };
  // A LoRA target keeps the source's Linear [out, in] in its format.
  auto base = [&](const std::string& name) -> Linear {
    return source_linear(lin, source_name(name), name);
  };
  proj_.load(fill, base);
}

void TrainGpt2::proj_fwd(const std::string& mod, float* out, const float* inp, int64_t N, int64_t I,
                         int64_t O) {
  const std::string w = mod + ".weight", b = mod + ".bias";
  if (!proj_.handles(w)) {
    conv1d_forward(out, inp, W(w), W(b), N, I, O);
    return;
  }
  proj_.forward(w, out, inp, N);
  bias_forward(out, W(b), N, O);
}

void TrainGpt2::proj_bwd(const std::string& mod, float* dinp, const float* dout, const float* inp,
                         int64_t N, int64_t I, int64_t O) {
  const std::string w = mod + ".weight", b = mod + ".bias";
  if (!proj_.handles(w)) {
    conv1d_backward(dinp, G(w), G(b), dout, inp, W(w), N, I, O);
    return;
  }
  proj_.backward(w, dinp, dout, inp, N);
  bias_backward(G(b), dout, N, O);
}

nlohmann::json TrainGpt2::config_json() const {
  return gpt2_config_json(cfg_, "float32");
}

void TrainGpt2::set_checkpointing(bool on) {
  ckpt_ = on;
  B_ = T_ = 0;  // re-lay the buffers on the next forward
}

size_t TrainGpt2::activation_bytes() const {
  size_t n = ids_.size() * sizeof(int32_t);
  auto add = [&](const std::vector<float>& v) { n += v.size() * sizeof(float); };
  for (const auto& r : resid_) add(r);
  for (const LayerActs& a : acts_)
    for (const auto* v : {&a.ln1, &a.ln1_mean, &a.ln1_rstd, &a.q, &a.k, &a.v, &a.probs, &a.atty,
                          &a.res_mid, &a.ln2, &a.ln2_mean, &a.ln2_rstd, &a.fc, &a.act})
      add(*v);
  for (const auto* v : {&lnf_, &lnf_mean_, &lnf_rstd_, &logits_, &qkv_, &dres_, &dln_, &dqkv_, &dq_,
                        &dk_, &dv_, &datt_, &dfc_, &dact_})
    add(*v);
  return n;
}

void TrainGpt2::ensure_buffers(int64_t B, int64_t T) {
  const size_t n_acts = ckpt_ ? 1 : size_t(cfg_.n_layers);
  if (B == B_ && T == T_ && acts_.size() == n_acts) return;
  B_ = B;
  T_ = T;
  const int64_t N = B * T, C = cfg_.hidden, F = cfg_.ffn, H = cfg_.n_heads, V = cfg_.vocab_size;
  auto sz = [](std::vector<float>& v, int64_t n) { v.assign(size_t(n), 0.f); };
  ids_.assign(size_t(N), 0);
  resid_.resize(size_t(cfg_.n_layers + 1));
  for (auto& r : resid_) sz(r, N * C);
  acts_.assign(n_acts, LayerActs{});
  for (LayerActs& a : acts_) {
    sz(a.ln1, N * C), sz(a.ln1_mean, N), sz(a.ln1_rstd, N), sz(a.q, N * C), sz(a.k, N * C);
    sz(a.v, N * C), sz(a.probs, B * H * T * T), sz(a.atty, N * C), sz(a.res_mid, N * C);
    sz(a.ln2, N * C), sz(a.ln2_mean, N), sz(a.ln2_rstd, N), sz(a.fc, N * F), sz(a.act, N * F);
  }
  sz(lnf_, N * C), sz(lnf_mean_, N), sz(lnf_rstd_, N), sz(logits_, N * V);
  sz(qkv_, N * 3 * C), sz(dres_, N * C), sz(dln_, N * C), sz(dqkv_, N * 3 * C);
  sz(dq_, N * C), sz(dk_, N * C), sz(dv_, N * C), sz(datt_, N * C), sz(dfc_, N * F);
  sz(dact_, N * F);
}

void TrainGpt2::layer_forward(int64_t l, LayerActs& a, const float* x, float* out) {
  const ModelConfig& c = cfg_;
  const int64_t B = B_, T = T_, N = B * T, C = c.hidden, F = c.ffn, H = c.n_heads, D = C / H;
  const bool tanh_gelu = c.act == Act::GeluTanh;
  const std::string p = lp(l);
  layernorm_forward(a.ln1.data(), a.ln1_mean.data(), a.ln1_rstd.data(), x, W(p + "ln_1.weight"),
                    W(p + "ln_1.bias"), N, C, c.norm_eps);
  proj_fwd(p + "attn.c_attn", qkv_.data(), a.ln1.data(), N, C, 3 * C);
  for (int64_t n = 0; n < N; ++n) {
    const float* r = qkv_.data() + n * 3 * C;
    std::copy(r, r + C, a.q.begin() + n * C);
    std::copy(r + C, r + 2 * C, a.k.begin() + n * C);
    std::copy(r + 2 * C, r + 3 * C, a.v.begin() + n * C);
  }
  attention_forward(a.atty.data(), a.probs.data(), a.q.data(), a.k.data(), a.v.data(), B, T, H, H,
                    D);
  proj_fwd(p + "attn.c_proj", a.res_mid.data(), a.atty.data(), N, C, C);
  residual_forward(a.res_mid.data(), a.res_mid.data(), x, N * C);
  layernorm_forward(a.ln2.data(), a.ln2_mean.data(), a.ln2_rstd.data(), a.res_mid.data(),
                    W(p + "ln_2.weight"), W(p + "ln_2.bias"), N, C, c.norm_eps);
  proj_fwd(p + "mlp.c_fc", a.fc.data(), a.ln2.data(), N, C, F);
  gelu_forward(a.act.data(), a.fc.data(), N * F, tanh_gelu);
  proj_fwd(p + "mlp.c_proj", out, a.act.data(), N, F, C);
  residual_forward(out, out, a.res_mid.data(), N * C);
}

const float* TrainGpt2::forward(const int32_t* ids, int64_t B, int64_t T) {
  const ModelConfig& c = cfg_;
  MINFER_CHECK(B > 0 && T > 0 && T <= c.max_pos,
               "forward: batch {} x {} tokens (gpt2 has {} learned positions)", B, T, c.max_pos);
  ensure_buffers(B, T);
  const int64_t N = B * T, C = c.hidden, V = c.vocab_size;
  std::copy(ids, ids + N, ids_.begin());
  proj_.refresh();
  float* x0 = resid_[0].data();
  embedding_forward(x0, ids, W("transformer.wte.weight"), N, C, V);
  const float* wpe = W("transformer.wpe.weight");
  for (int64_t n = 0; n < N; ++n)
    for (int64_t i = 0; i < C; ++i) x0[n * C + i] += wpe[(n % T) * C + i];
  for (int64_t l = 0; l < c.n_layers; ++l)
    layer_forward(l, acts_[ckpt_ ? 0 : size_t(l)], resid_[size_t(l)].data(),
                  resid_[size_t(l + 1)].data());
  layernorm_forward(lnf_.data(), lnf_mean_.data(), lnf_rstd_.data(), resid_.back().data(),
                    W("transformer.ln_f.weight"), W("transformer.ln_f.bias"), N, C, c.norm_eps);
  linear_forward(logits_.data(), lnf_.data(), W("transformer.wte.weight"), nullptr, N, C, V);
  return logits_.data();
}

void TrainGpt2::layer_backward(int64_t l, LayerActs& a, const float* x) {
  const ModelConfig& c = cfg_;
  const int64_t B = B_, T = T_, N = B * T, C = c.hidden, F = c.ffn, H = c.n_heads, D = C / H;
  const bool tanh_gelu = c.act == Act::GeluTanh;
  auto zero = [](std::vector<float>& v) { std::fill(v.begin(), v.end(), 0.f); };
  const std::string p = lp(l);
  // MLP: out = res_mid + c_proj(gelu(c_fc(ln2)))
  zero(dact_);
  proj_bwd(p + "mlp.c_proj", dact_.data(), dres_.data(), a.act.data(), N, F, C);
  zero(dfc_);
  gelu_backward(dfc_.data(), dact_.data(), a.fc.data(), N * F, tanh_gelu);
  zero(dln_);
  proj_bwd(p + "mlp.c_fc", dln_.data(), dfc_.data(), a.ln2.data(), N, C, F);
  layernorm_backward(dres_.data(), G(p + "ln_2.weight"), G(p + "ln_2.bias"), dln_.data(),
                     a.res_mid.data(), W(p + "ln_2.weight"), a.ln2_mean.data(), a.ln2_rstd.data(),
                     N, C);
  // Attention: res_mid = x + c_proj(attention(split(c_attn(ln1))))
  zero(datt_);
  proj_bwd(p + "attn.c_proj", datt_.data(), dres_.data(), a.atty.data(), N, C, C);
  zero(dq_), zero(dk_), zero(dv_);
  attention_backward(dq_.data(), dk_.data(), dv_.data(), datt_.data(), a.q.data(), a.k.data(),
                     a.v.data(), a.probs.data(), B, T, H, H, D);
  for (int64_t n = 0; n < N; ++n) {
    float* r = dqkv_.data() + n * 3 * C;
    std::copy(dq_.begin() + n * C, dq_.begin() + (n + 1) * C, r);
    std::copy(dk_.begin() + n * C, dk_.begin() + (n + 1) * C, r + C);
    std::copy(dv_.begin() + n * C, dv_.begin() + (n + 1) * C, r + 2 * C);
  }
  zero(dln_);
  proj_bwd(p + "attn.c_attn", dln_.data(), dqkv_.data(), a.ln1.data(), N, C, 3 * C);
  layernorm_backward(dres_.data(), G(p + "ln_1.weight"), G(p + "ln_1.bias"), dln_.data(), x,
                     W(p + "ln_1.weight"), a.ln1_mean.data(), a.ln1_rstd.data(), N, C);
}

void TrainGpt2::backward(const float* dlogits) {
  MINFER_CHECK(B_ > 0, "backward before forward");
  const ModelConfig& c = cfg_;
  const int64_t T = T_, N = B_ * T, C = c.hidden, V = c.vocab_size;
  auto zero = [](std::vector<float>& v) { std::fill(v.begin(), v.end(), 0.f); };

  zero(dln_);
  linear_backward(dln_.data(), G("transformer.wte.weight"), nullptr, dlogits, lnf_.data(),
                  W("transformer.wte.weight"), N, C, V);
  zero(dres_);
  layernorm_backward(dres_.data(), G("transformer.ln_f.weight"), G("transformer.ln_f.bias"),
                     dln_.data(), resid_.back().data(), W("transformer.ln_f.weight"),
                     lnf_mean_.data(), lnf_rstd_.data(), N, C);
  for (int64_t l = c.n_layers - 1; l >= 0; --l) {
    const float* x = resid_[size_t(l)].data();
    if (ckpt_)  // recompute this block's activations from its kept input
      layer_forward(l, acts_[0], x, resid_[size_t(l + 1)].data());
    layer_backward(l, acts_[ckpt_ ? 0 : size_t(l)], x);
  }
  embedding_backward(G("transformer.wte.weight"), dres_.data(), ids_.data(), N, C);
  float* dwpe = G("transformer.wpe.weight");
  if (!dwpe) return;  // frozen (LoRA)
  for (int64_t n = 0; n < N; ++n)
    for (int64_t i = 0; i < C; ++i) dwpe[(n % T) * C + i] += dres_[size_t(n * C + i)];
}

}  // namespace minfer::train
