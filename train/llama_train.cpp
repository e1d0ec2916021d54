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
      mods_(mods),
      ops_(ops ? std::move(ops) : cpu_train_ops()),
      mem_(ops_->memory()),
      params_(mem_),
      frozen_(mem_),
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
  const bool lora = mods.lora.rank != 0;
  if (lora && mods.qat)
    throw NotImplemented("QAT together with LoRA (use one of --qat, --lora-rank)");
  if (!ops_->host() && (lora || mods.qat))
    throw NotImplemented(fmt::format("{} on the {} training device (QAT and LoRA train on the CPU)",
                                     lora ? "LoRA" : "QAT", ops_->name()));
  MINFER_CHECK(mods.lora.rank >= 0, "--lora-rank {} must be >= 1", mods.lora.rank);
  if (lora) {
    MINFER_CHECK(std::isfinite(mods.lora.alpha) && mods.lora.alpha > 0.f,
                 "--lora-alpha {} must be > 0", mods.lora.alpha);
    for (const std::string& t : mods.lora.targets) lora_module(t);  // checks the names
  }
  const int64_t C = c.hidden, V = c.vocab_size, F = c.ffn, qd = c.n_heads * c.head_dim,
                kvd = c.n_kv_heads * c.head_dim;
  // The base layout: into params_ (plain, QAT) or frozen_ (LoRA; targeted projections are kept
  // as Linears in base_ instead and only their adapters are parameters).
  ParamStore& base = lora ? frozen_ : params_;
  auto lin = [&](const std::string& name, int64_t O, int64_t I) {
    if (lora && is_lora_target(name)) {
      const int64_t r = mods.lora.rank;
      MINFER_CHECK(r <= std::min(I, O),
                   "--lora-rank {} exceeds min(in, out) = {} of '{}' [{}, {}]: a rank-r update "
                   "of this matrix needs r <= {}",
                   r, std::min(I, O), name, O, I, std::min(I, O));
      const std::string mod = name.substr(0, name.size() - std::strlen(".weight"));
      params_.add(mod + ".lora_A.weight", {r, I}, true);
      params_.add(mod + ".lora_B.weight", {O, r}, true);
      return;
    }
    base.add(name, {O, I}, true);
    if (mods.qat) {
      const QatLayout lay = qat_layout(*mods.qat, O, I, name);
      if (mods.qat->lsq)
        params_.add(
            name + "_scale",
            lay.per_tensor ? std::vector<int64_t>{1} : std::vector<int64_t>{lay.rows, lay.groups},
            false);
      QatState& q = qat_[name];
      q.lay = lay, q.O = O, q.I = I;
    }
  };
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

bool TrainLlama::is_lora_target(const std::string& name) const {
  if (mods_.lora.rank == 0) return false;
  for (const std::string& t : mods_.lora.targets) {
    std::string m(1, '.');  // built by appends: GCC 12 warns (-Wrestrict) on "." + string&&
    m += lora_module(t);
    m += ".weight";
    if (name.size() > m.size() && name.compare(name.size() - m.size(), m.size(), m) == 0 &&
        name.rfind("model.layers.", 0) == 0)
      return true;
  }
  return false;
}

std::vector<std::string> TrainLlama::block_linears() const {
  std::vector<std::string> out;
  for (int64_t l = 0; l < cfg_.n_layers; ++l)
    for (const char* m : {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                          "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"})
      out.push_back(lp(l) + m + ".weight");
  return out;
}

float* TrainLlama::W(const std::string& name) {
  return params_.has(name) ? params_.w(name) : frozen_.w(name);
}
const float* TrainLlama::W(const std::string& name) const {
  const ParamStore& s = params_.has(name) ? params_ : frozen_;
  return s.weights().data() + s.find(name).offset;
}
float* TrainLlama::G(const std::string& name) {
  return params_.has(name) ? params_.g(name) : nullptr;
}

void TrainLlama::init_random(uint64_t seed, float std) {
  MINFER_CHECK(mods_.lora.rank == 0,
               "LoRA over a randomly initialised base: the student needs weights (init, "
               "init:layers=..., or a folder with model.safetensors)");
  init_params_random(params_, seed, std);
  after_load();
}

void TrainLlama::load(const WeightSource& src) {
  if (mods_.lora.rank == 0) {
    params_.walk([&](const ParamTensor& t, float* w, float*, float*, float*) {
      if (qat_.count(t.name.substr(0, t.name.size() - 6))) return;  // LSQ scales: after_load()
      MINFER_CHECK(src.has(t.name), "{}: missing tensor '{}'", src.describe(), t.name);
      Tensor v = t.shape.size() == 1 ? src.tensor(t.name, {t.shape[0]})
                                     : src.tensor(t.name, {t.shape[0], t.shape[1]});
      copy_param(t, w, v, src.describe());
    });
    after_load();
    return;
  }
  load_params(frozen_, src);
  for (const std::string& name : block_linears()) {
    if (!is_lora_target(name)) continue;
    MINFER_CHECK(src.has(name), "{}: missing tensor '{}'", src.describe(), name);
    const ParamTensor& a = params_.find(name.substr(0, name.size() - 7) + ".lora_A.weight");
    const ParamTensor& b = params_.find(name.substr(0, name.size() - 7) + ".lora_B.weight");
    const int64_t I = a.shape[1], O = b.shape[0];
    ParamTensor t{name, {O, I}, 0, size_t(O * I), true};
    Tensor w = Tensor::empty(DType::F32, {O, I});
    copy_param(t, w.data<float>(), src.tensor(name, {O, I}), src.describe());
    base_[name] = make_dense(name, w, I, O);
  }
  after_load();
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
  auto fill = [&](const ParamTensor& p, float* w, float*, float*, float*) {
    const std::string s = source_name(p.name);
    auto li = lin.find(s);
    if (li != lin.end() && li->second->in > 0) {
      copy_param(p, w, dequantize_weight(*li->second), "source model");
      return;
    }
    copy_bias_or_tensor(p, w, s, lin, by_name);
  };
  if (mods_.lora.rank == 0) {
    params_.walk([&](const ParamTensor& p, float* w, float* g, float* m, float* v) {
      if (!qat_.count(p.name.substr(0, p.name.size() - 6)))  // LSQ scales: after_load()
        fill(p, w, g, m, v);
    });
    after_load();
    return;
  }
  frozen_.walk(fill);
  // The targeted projections keep the source's Linear as it is (NF4 stays NF4: QLoRA).
  for (const std::string& name : block_linears()) {
    if (!is_lora_target(name)) continue;
    auto li = lin.find(source_name(name));
    MINFER_CHECK(li != lin.end(), "source model has no linear '{}' (for student '{}')",
                 source_name(name), name);
    Linear l = *li->second;
    l.name = name;
    l.device_copy.reset();
    MINFER_CHECK(!l.bias.defined(), "LoRA base '{}' has a bias (not implemented)", name);
    base_[name] = std::move(l);
  }
  after_load();
}

void TrainLlama::after_load() {
  if (mods_.qat && mods_.qat->lsq)
    for (auto& [name, q] : qat_)
      qat_init_scales(params_.w(name + "_scale"), W(name), q.O, q.I, q.lay);
  if (mods_.lora.rank > 0) {
    // A: Kaiming-uniform, bound 1/sqrt(in) (PEFT: kaiming_uniform_(a=sqrt(5))); B: 0.
    std::mt19937_64 rng(mods_.seed * 0x9E3779B97F4A7C15ull + 0x10A);
    params_.walk([&](const ParamTensor& p, float* w, float*, float*, float*) {
      const bool is_a = p.name.find(".lora_A.") != std::string::npos;
      const double bound = 1.0 / std::sqrt(double(p.shape[1]));
      for (size_t i = 0; i < p.numel; ++i)
        w[i] = is_a ? float((double(rng() >> 11) * 0x1.0p-53 * 2.0 - 1.0) * bound) : 0.f;
    });
  }
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

void TrainLlama::refresh_qat() {
  for (auto& [name, q] : qat_) {
    q.wq.resize(size_t(q.O * q.I));
    const float* w = W(name);
    const float* s;
    if (mods_.qat->lsq) {
      s = params_.w(name + "_scale");
    } else {
      q.stat.resize(size_t(q.lay.count()));
      qat_init_scales(q.stat.data(), w, q.O, q.I, q.lay);
      s = q.stat.data();
    }
    qat_fake_quant(q.wq.data(), w, s, q.O, q.I, q.lay);
  }
}

Tensor TrainLlama::base_f32(const std::string& name) const {
  return dequantize_weight(base_.at(name));
}

void TrainLlama::add_bias(const std::string& name, float* out, int64_t N, int64_t O) {
  const float* b = W(name);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t o = 0; o < O; ++o) out[n * O + o] += b[o];
}

void TrainLlama::bias_bwd(const std::string& name, const float* dout, int64_t N, int64_t O) {
  float* g = G(name);
  if (!g) return;  // frozen (LoRA)
  for (int64_t n = 0; n < N; ++n)
    for (int64_t o = 0; o < O; ++o) g[o] += dout[n * O + o];
}

void TrainLlama::lin_fwd(const std::string& name, float* out, const float* inp, int64_t N,
                         int64_t I, int64_t O) {
  if (!qat_.empty()) {
    linear_forward(out, inp, qat_.at(name).wq.data(), nullptr, N, I, O);
    return;
  }
  if (!is_lora_target(name)) {
    ops_->linear_forward(out, inp, W(name), N, I, O);
    return;
  }
  const Tensor w0 = base_f32(name);  // QLoRA: dequantized for this product only
  linear_forward(out, inp, w0.data<float>(), nullptr, N, I, O);
  const std::string mod = name.substr(0, name.size() - 7);
  const int64_t r = mods_.lora.rank;
  lh_.resize(size_t(N * r));
  lora_forward(out, lh_.data(), inp, W(mod + ".lora_A.weight"), W(mod + ".lora_B.weight"),
               mods_.lora.scaling(), N, I, O, r);
}

void TrainLlama::lin_bwd(const std::string& name, float* dinp, const float* dout, const float* inp,
                         int64_t N, int64_t I, int64_t O) {
  if (!qat_.empty()) {
    QatState& q = qat_.at(name);
    dwq_.assign(size_t(O * I), 0.f);
    linear_backward(dinp, dwq_.data(), nullptr, dout, inp, q.wq.data(), N, I, O);
    const bool lsq = mods_.qat->lsq;
    const float* s = lsq ? params_.w(name + "_scale") : q.stat.data();
    qat_fake_quant_backward(G(name), lsq ? params_.g(name + "_scale") : nullptr, dwq_.data(),
                            W(name), s, O, I, q.lay);
    return;
  }
  if (!is_lora_target(name)) {
    ops_->linear_backward(dinp, G(name), dout, inp, W(name), N, I, O);
    return;
  }
  // The frozen base passes the activation gradient through its (dequantized) weight only.
  const Tensor w0 = base_f32(name);
  linear_backward(dinp, nullptr, nullptr, dout, inp, w0.data<float>(), N, I, O);
  const std::string mod = name.substr(0, name.size() - 7);
  const int64_t r = mods_.lora.rank;
  lh_.resize(size_t(N * r));
  ldh_.resize(size_t(N * r));
  lora_backward(dinp, G(mod + ".lora_A.weight"), G(mod + ".lora_B.weight"), lh_.data(), ldh_.data(),
                dout, inp, W(mod + ".lora_A.weight"), W(mod + ".lora_B.weight"),
                mods_.lora.scaling(), N, I, O, r);
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
  if (!qat_.empty()) refresh_qat();
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

  if (!ops_->host()) {  // the loss gradient comes from host memory
    std::copy(dlogits, dlogits + N * V, dlogits_.begin());
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

std::vector<std::pair<std::string, Tensor>> TrainLlama::full_weights(bool merge_lora) const {
  if (mods_.lora.rank == 0) return named_params(params_);
  std::vector<std::pair<std::string, Tensor>> out;
  std::map<std::string, Tensor> frozen;
  for (auto& [n, t] : named_params(frozen_)) frozen[n] = t;
  auto add = [&](const std::string& n) {
    if (frozen.count(n)) {
      out.emplace_back(n, frozen[n]);
      return;
    }
    // A targeted projection: the base in f32 (+ α/r · B · A).
    Tensor w0 = base_f32(n);
    Tensor w = Tensor::empty(DType::F32, {w0.shape()[0], w0.shape()[1]});
    std::memcpy(w.data<float>(), w0.data<float>(), size_t(w0.numel()) * sizeof(float));
    if (merge_lora) {
      const std::string mod = n.substr(0, n.size() - 7);
      const ParamTensor& a = params_.find(mod + ".lora_A.weight");
      const int64_t r = a.shape[0], I = a.shape[1], O = w.shape()[0];
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, int(O), int(I), int(r),
                  mods_.lora.scaling(), W(mod + ".lora_B.weight"), int(r),
                  W(mod + ".lora_A.weight"), int(I), 1.f, w.data<float>(), int(I));
    }
    out.emplace_back(n, w);
  };
  add("model.embed_tokens.weight");
  for (int64_t l = 0; l < cfg_.n_layers; ++l) {
    const std::string p = lp(l);
    add(p + "input_layernorm.weight");
    for (const char* m :
         {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj"})
      add(p + m + ".weight");
    add(p + "post_attention_layernorm.weight");
    for (const char* m : {"mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"}) add(p + m + ".weight");
  }
  add("model.norm.weight");
  if (!cfg_.tie_embeddings) add("lm_head.weight");
  return out;
}

std::vector<Linear> TrainLlama::qat_linears() const {
  std::vector<Linear> out;
  for (const std::string& name : block_linears()) {
    auto it = qat_.find(name);
    if (it == qat_.end()) continue;
    const QatState& q = it->second;
    std::vector<float> stat;
    const float* s;
    if (mods_.qat->lsq) {
      s = W(name + "_scale");
    } else {
      stat.resize(size_t(q.lay.count()));
      qat_init_scales(stat.data(), W(name), q.O, q.I, q.lay);
      s = stat.data();
    }
    out.push_back(qat_export(name, W(name), s, q.O, q.I, *mods_.qat));
  }
  return out;
}

std::vector<std::pair<std::string, Tensor>> TrainLlama::lora_adapters() const {
  std::vector<std::pair<std::string, Tensor>> out;
  for (auto& [n, t] : named_params(params_))
    if (n.find(".lora_") != std::string::npos) out.emplace_back("base_model.model." + n, t);
  return out;
}

}  // namespace minfer::train
