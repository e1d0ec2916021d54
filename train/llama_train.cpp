// LLaMA forward with a kept activation per op, and its backward (the reverse list of the same
// ops). Mirrors models/llama.cpp op for op, in f32 on host arrays.
#include "train/llama_train.h"

#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <map>
#include <random>

#include "engine/linear.h"
#include "engine/model_folder.h"
#include "engine/weights.h"
#include "kernels/train_ops.h"
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

TrainLlama::TrainLlama(const ModelConfig& c0, const TrainMods& mods, std::shared_ptr<TrainOps> ops)
    : cfg_(uniform_widths(c0)),
      ops_(ops ? std::move(ops) : cpu_train_ops()),
      mem_(ops_->memory()),
      params_(mem_),
      frozen_(mem_),
      proj_(mods, c0.arch, params_, frozen_),
      ids_(mem_),
      lnf_(mem_),
      lnf_rstd_(mem_),
      logits_(mem_),
      rope_cs_(mem_),
      dlogits_(mem_),
      dres_(mem_),
      dln_(mem_),
      dq_(mem_),
      dk_(mem_),
      dv_(mem_),
      datt_(mem_),
      dgate_(mem_),
      dup_(mem_),
      dswi_(mem_) {
  const ModelConfig& c = cfg_;
  if (c.arch != Arch::Llama)
    throw NotImplemented(
        fmt::format("training a {} model (only llama-family students so far)", arch_name(c.arch)));
  // Qwen2's q/k/v biases train; LLaMA's attention_bias (an o_proj bias too) and MLP biases not.
  const bool qkv_bias = c.attn_bias && c.model_type == "qwen2";
  if ((c.attn_bias && !qkv_bias) || c.mlp_bias)
    throw NotImplemented(
        "training llama models with o_proj or MLP biases (Qwen2-style q/k/v biases train)");
  if (qkv_bias && !ops_->host())
    throw NotImplemented(
        fmt::format("q/k/v biases (qwen2) on the {} training device", ops_->name()));
  if (c.act != Act::Silu || c.norm_unit_offset || c.embed_scale || c.sandwich_norms ||
      c.attn_softcap > 0 || c.final_softcap > 0 || c.attn_scale > 0 ||
      std::find(c.layer_sliding.begin(), c.layer_sliding.end(), true) != c.layer_sliding.end())
    throw NotImplemented(fmt::format("training a {} model (Gemma-style settings)", c.model_type));
  if (!c.layer_heads.empty() || !c.layer_kv_heads.empty() || !c.layer_ffn.empty())
    throw NotImplemented(
        "training a structurally pruned model with different widths per layer (uniform cuts "
        "such as ffn-<pct> train)");
  MINFER_CHECK(c.n_heads > 0 && c.n_kv_heads > 0 && c.n_heads % c.n_kv_heads == 0,
               "student config: {} heads is not a multiple of {} kv heads", c.n_heads,
               c.n_kv_heads);
  const bool lora = proj_.lora();
  if (!ops_->host() && (lora || proj_.qat()))
    throw NotImplemented(fmt::format("{} on the {} training device (QAT and LoRA train on the CPU)",
                                     lora ? "LoRA" : "QAT", ops_->name()));
  const int64_t C = c.hidden, V = c.vocab_size, F = c.ffn, qd = c.n_heads * c.head_dim,
                kvd = c.n_kv_heads * c.head_dim;
  // The base layout: into params_ (plain, QAT) or frozen_ (LoRA; the projections' layout is
  // proj_'s: targeted ones train only their adapters).
  ParamStore& base = proj_.base_store();
  auto lin = [&](const std::string& name, int64_t O, int64_t I) { proj_.add(name, O, I); };
  base.add("model.embed_tokens.weight", {V, C}, true);
  for (int64_t l = 0; l < c.n_layers; ++l) {
    const std::string p = lp(l);
    base.add(p + "input_layernorm.weight", {C}, false);
    lin(p + "self_attn.q_proj.weight", qd, C);
    lin(p + "self_attn.k_proj.weight", kvd, C);
    lin(p + "self_attn.v_proj.weight", kvd, C);
    if (qkv_bias) {
      base.add(p + "self_attn.q_proj.bias", {qd}, false);
      base.add(p + "self_attn.k_proj.bias", {kvd}, false);
      base.add(p + "self_attn.v_proj.bias", {kvd}, false);
    }
    lin(p + "self_attn.o_proj.weight", C, qd);
    base.add(p + "post_attention_layernorm.weight", {C}, false);
    lin(p + "mlp.gate_proj.weight", F, C);
    lin(p + "mlp.up_proj.weight", F, C);
    lin(p + "mlp.down_proj.weight", C, F);
  }
  base.add("model.norm.weight", {C}, false);
  if (!c.tie_embeddings) base.add("lm_head.weight", {V, C}, true);
  if (lora) frozen_.allocate(/*grads=*/false);
  params_.allocate();
}

void TrainLlama::init_random(uint64_t seed, float std) {
  MINFER_CHECK(!proj_.lora(),
               "LoRA over a randomly initialised base: the student needs weights (init, "
               "init:layers=..., or a folder with model.safetensors)");
  init_params_random(params_, seed, std);
  proj_.after_load();
}

void TrainLlama::load(const WeightSource& src) {
  proj_.load(src);
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
    return source_block_name(name, "model.layers.", layer_map, mc.n_layers);
  };
  MINFER_CHECK(layer_map.empty() || int64_t(layer_map.size()) == cfg_.n_layers,
               "student has {} layers, the layer map {}", cfg_.n_layers, layer_map.size());
  auto fill = [&](const ParamTensor& p, float* w) {
    const std::string s = source_name(p.name);
    auto li = lin.find(s);
    if (li != lin.end() && li->second->in > 0) {
      copy_param(p, w, dequantize_weight(*li->second), "source model");
      return;
    }
    copy_bias_or_tensor(p, w, s, lin, by_name);
  };
  // LoRA targets keep the source's Linear as it is (NF4 stays NF4: QLoRA).
  auto base = [&](const std::string& name) -> Linear {
    return source_linear(lin, source_name(name), name);
  };
  proj_.load(fill, base);
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
  auto sz = [](FloatVec& v, int64_t n) { v.assign(size_t(n), 0.f); };
  ids_.assign(size_t(N), 0);
  resid_.clear();
  for (int64_t l = 0; l <= cfg_.n_layers; ++l) resid_.emplace_back(mem_);
  for (auto& r : resid_) sz(r, N * C);
  acts_.clear();
  for (size_t l = 0; l < n_acts; ++l) acts_.emplace_back(mem_);
  for (LayerActs& a : acts_) {
    sz(a.ln1, N * C), sz(a.ln1_rstd, N), sz(a.q, N * qd), sz(a.k, N * kvd), sz(a.v, N * kvd);
    sz(a.probs, B * H * T * T), sz(a.atty, N * qd), sz(a.res_mid, N * C);
    sz(a.ln2, N * C), sz(a.ln2_rstd, N), sz(a.gate, N * F), sz(a.up, N * F), sz(a.swi, N * F);
  }
  sz(lnf_, N * C), sz(lnf_rstd_, N), sz(logits_, N * V);
  sz(dres_, N * C), sz(dln_, N * C), sz(dq_, N * qd), sz(dk_, N * kvd), sz(dv_, N * kvd);
  sz(datt_, N * qd), sz(dgate_, N * F), sz(dup_, N * F), sz(dswi_, N * F);
  if (!ops_->host()) sz(dlogits_, N * V);
  const std::vector<float> cs = rope_cos_sin(T, cfg_.head_dim, cfg_.rope_theta);
  rope_cs_.assign(cs.begin(), cs.end());
}

const float* TrainLlama::head_w() const {
  return W(cfg_.tie_embeddings ? "model.embed_tokens.weight" : "lm_head.weight");
}

void TrainLlama::add_bias(const std::string& name, float* out, int64_t N, int64_t O) {
  bias_forward(out, W(name), N, O);
}

void TrainLlama::bias_bwd(const std::string& name, const float* dout, int64_t N, int64_t O) {
  bias_backward(G(name), dout, N, O);  // nothing when frozen (LoRA)
}

void TrainLlama::lin_fwd(const std::string& name, float* out, const float* inp, int64_t N,
                         int64_t I, int64_t O) {
  if (proj_.handles(name))
    proj_.forward(name, out, inp, N);
  else
    ops_->linear_forward(out, inp, W(name), N, I, O);
}

void TrainLlama::lin_bwd(const std::string& name, float* dinp, const float* dout, const float* inp,
                         int64_t N, int64_t I, int64_t O) {
  if (proj_.handles(name))
    proj_.backward(name, dinp, dout, inp, N);
  else
    ops_->linear_backward(dinp, G(name), dout, inp, W(name), N, I, O);
}

void TrainLlama::layer_forward(int64_t l, LayerActs& a, const float* x, float* out) {
  const ModelConfig& c = cfg_;
  const int64_t B = B_, T = T_, N = B * T, C = c.hidden, F = c.ffn, H = c.n_heads,
                Hkv = c.n_kv_heads, D = c.head_dim, qd = H * D, kvd = Hkv * D;
  const std::string p = lp(l);
  ops_->rmsnorm_forward(a.ln1.data(), a.ln1_rstd.data(), x, W(p + "input_layernorm.weight"), N, C,
                        c.norm_eps);
  lin_fwd(p + "self_attn.q_proj.weight", a.q.data(), a.ln1.data(), N, C, qd);
  lin_fwd(p + "self_attn.k_proj.weight", a.k.data(), a.ln1.data(), N, C, kvd);
  lin_fwd(p + "self_attn.v_proj.weight", a.v.data(), a.ln1.data(), N, C, kvd);
  if (c.attn_bias) {  // qwen2: q/k/v biases, before RoPE
    add_bias(p + "self_attn.q_proj.bias", a.q.data(), N, qd);
    add_bias(p + "self_attn.k_proj.bias", a.k.data(), N, kvd);
    add_bias(p + "self_attn.v_proj.bias", a.v.data(), N, kvd);
  }
  ops_->rope(a.q.data(), rope_cs_.data(), B, T, H, D, 1.f);
  ops_->rope(a.k.data(), rope_cs_.data(), B, T, Hkv, D, 1.f);
  ops_->attention_forward(a.atty.data(), a.probs.data(), a.q.data(), a.k.data(), a.v.data(), B, T,
                          H, Hkv, D);
  lin_fwd(p + "self_attn.o_proj.weight", a.res_mid.data(), a.atty.data(), N, qd, C);
  ops_->residual_forward(a.res_mid.data(), a.res_mid.data(), x, N * C);
  ops_->rmsnorm_forward(a.ln2.data(), a.ln2_rstd.data(), a.res_mid.data(),
                        W(p + "post_attention_layernorm.weight"), N, C, c.norm_eps);
  lin_fwd(p + "mlp.gate_proj.weight", a.gate.data(), a.ln2.data(), N, C, F);
  lin_fwd(p + "mlp.up_proj.weight", a.up.data(), a.ln2.data(), N, C, F);
  ops_->swiglu_forward(a.swi.data(), a.gate.data(), a.up.data(), N * F);
  lin_fwd(p + "mlp.down_proj.weight", out, a.swi.data(), N, F, C);
  ops_->residual_forward(out, out, a.res_mid.data(), N * C);
}

const float* TrainLlama::forward(const int32_t* ids, int64_t B, int64_t T) {
  MINFER_CHECK(B > 0 && T > 0, "forward: batch {} x {} tokens", B, T);
  ensure_buffers(B, T);
  const ModelConfig& c = cfg_;
  const int64_t N = B * T, C = c.hidden, V = c.vocab_size;
  std::copy(ids, ids + N, ids_.begin());
  proj_.refresh();
  ops_->embedding_forward(resid_[0].data(), ids_.data(), W("model.embed_tokens.weight"), N, C, V);
  for (int64_t l = 0; l < c.n_layers; ++l)
    layer_forward(l, acts_[ckpt_ ? 0 : size_t(l)], resid_[size_t(l)].data(),
                  resid_[size_t(l + 1)].data());
  ops_->rmsnorm_forward(lnf_.data(), lnf_rstd_.data(), resid_.back().data(), W("model.norm.weight"),
                        N, C, c.norm_eps);
  ops_->linear_forward(logits_.data(), lnf_.data(), head_w(), N, C, V);
  ops_->synchronize();
  return logits_.data();
}

void TrainLlama::layer_backward(int64_t l, LayerActs& a, const float* x) {
  const ModelConfig& c = cfg_;
  const int64_t B = B_, T = T_, N = B * T, C = c.hidden, F = c.ffn, H = c.n_heads,
                Hkv = c.n_kv_heads, D = c.head_dim, qd = H * D, kvd = Hkv * D;
  auto zero = [this](FloatVec& v) { ops_->zero(v.data(), int64_t(v.size())); };
  const std::string p = lp(l);
  // MLP: out = res_mid + down(swiglu(gate(ln2), up(ln2)))
  zero(dswi_);
  lin_bwd(p + "mlp.down_proj.weight", dswi_.data(), dres_.data(), a.swi.data(), N, F, C);
  zero(dgate_), zero(dup_);
  ops_->swiglu_backward(dgate_.data(), dup_.data(), dswi_.data(), a.gate.data(), a.up.data(),
                        N * F);
  zero(dln_);
  lin_bwd(p + "mlp.gate_proj.weight", dln_.data(), dgate_.data(), a.ln2.data(), N, C, F);
  lin_bwd(p + "mlp.up_proj.weight", dln_.data(), dup_.data(), a.ln2.data(), N, C, F);
  ops_->rmsnorm_backward(dres_.data(), G(p + "post_attention_layernorm.weight"), dln_.data(),
                         a.res_mid.data(), W(p + "post_attention_layernorm.weight"),
                         a.ln2_rstd.data(), N, C);
  // Attention: res_mid = x + o(attention(rope(q(ln1)), rope(k(ln1)), v(ln1)))
  zero(datt_);
  lin_bwd(p + "self_attn.o_proj.weight", datt_.data(), dres_.data(), a.atty.data(), N, qd, C);
  zero(dq_), zero(dk_), zero(dv_);
  ops_->attention_backward(dq_.data(), dk_.data(), dv_.data(), datt_.data(), a.q.data(), a.k.data(),
                           a.v.data(), a.probs.data(), B, T, H, Hkv, D);
  ops_->rope(dq_.data(), rope_cs_.data(), B, T, H, D, -1.f);
  ops_->rope(dk_.data(), rope_cs_.data(), B, T, Hkv, D, -1.f);
  if (c.attn_bias) {
    bias_bwd(p + "self_attn.q_proj.bias", dq_.data(), N, qd);
    bias_bwd(p + "self_attn.k_proj.bias", dk_.data(), N, kvd);
    bias_bwd(p + "self_attn.v_proj.bias", dv_.data(), N, kvd);
  }
  zero(dln_);
  lin_bwd(p + "self_attn.q_proj.weight", dln_.data(), dq_.data(), a.ln1.data(), N, C, qd);
  lin_bwd(p + "self_attn.k_proj.weight", dln_.data(), dk_.data(), a.ln1.data(), N, C, kvd);
  lin_bwd(p + "self_attn.v_proj.weight", dln_.data(), dv_.data(), a.ln1.data(), N, C, kvd);
  ops_->rmsnorm_backward(dres_.data(), G(p + "input_layernorm.weight"), dln_.data(), x,
                         W(p + "input_layernorm.weight"), a.ln1_rstd.data(), N, C);
}

void TrainLlama::backward(const float* dlogits) {
  MINFER_CHECK(B_ > 0, "backward before forward");
  const ModelConfig& c = cfg_;
  const int64_t N = B_ * T_, C = c.hidden, V = c.vocab_size;
  auto zero = [this](FloatVec& v) { ops_->zero(v.data(), int64_t(v.size())); };
  const std::string head = c.tie_embeddings ? "model.embed_tokens.weight" : "lm_head.weight";

  if (!ops_->host()) {  // the loss gradient may be in host memory (a device copy otherwise)
    ops_->copy(dlogits_.data(), dlogits, N * V);
    dlogits = dlogits_.data();
  }
  zero(dln_);
  ops_->linear_backward(dln_.data(), G(head), dlogits, lnf_.data(), head_w(), N, C, V);
  // dres_ holds ∂loss/∂(residual stream) and is carried down through the layers: each residual
  // add passes it on unchanged, each norm adds its branch's part.
  zero(dres_);
  ops_->rmsnorm_backward(dres_.data(), G("model.norm.weight"), dln_.data(), resid_.back().data(),
                         W("model.norm.weight"), lnf_rstd_.data(), N, C);
  for (int64_t l = c.n_layers - 1; l >= 0; --l) {
    const float* x = resid_[size_t(l)].data();
    if (ckpt_)  // recompute this block's activations from its kept input
      layer_forward(l, acts_[0], x, resid_[size_t(l + 1)].data());
    layer_backward(l, acts_[ckpt_ ? 0 : size_t(l)], x);
  }
  ops_->embedding_backward(G("model.embed_tokens.weight"), dres_.data(), ids_.data(), N, C);
  ops_->synchronize();
}

void TrainLlama::add_input_sq(InputSqSums& acc) const {
  if (ckpt_)
    throw NotImplemented(
        "Wanda statistics with gradient checkpointing (only one layer's activations are kept; "
        "use --prune-schedule magnitude or drop --grad-checkpoint)");
  MINFER_CHECK(B_ > 0, "input statistics before a forward");
  const int64_t N = B_ * T_, C = cfg_.hidden, F = cfg_.ffn, qd = cfg_.n_heads * cfg_.head_dim;
  auto add = [&](const std::string& name, const FloatVec& x, int64_t I) {
    std::vector<double>& s = acc[name];
    if (s.empty()) s.assign(size_t(I), 0.0);
    for (int64_t n = 0; n < N; ++n)
      for (int64_t j = 0; j < I; ++j)
        s[size_t(j)] += double(x[size_t(n * I + j)]) * x[size_t(n * I + j)];
  };
  for (int64_t l = 0; l < cfg_.n_layers; ++l) {
    const LayerActs& a = acts_[size_t(l)];
    const std::string p = lp(l);
    for (const char* m : {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"})
      add(p + m + ".weight", a.ln1, C);
    add(p + "self_attn.o_proj.weight", a.atty, qd);
    for (const char* m : {"mlp.gate_proj", "mlp.up_proj"}) add(p + m + ".weight", a.ln2, C);
    add(p + "mlp.down_proj.weight", a.swi, F);
  }
}

nlohmann::json TrainLlama::config_json() const {
  return llama_config_json(cfg_, "float32");
}

void TrainLlama::set_checkpointing(bool on) {
  ckpt_ = on;
  cap_ = 0;  // re-lay the buffers on the next forward
}

size_t TrainLlama::activation_bytes() const {
  size_t n = ids_.size() * sizeof(int32_t);
  auto add = [&](const FloatVec& v) { n += v.size() * sizeof(float); };
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
