// BERT forward with kept activations and its backward; mirrors models/bert.cpp op for op.
#include "train/bert_train.h"

#include <algorithm>
#include <map>

#include "engine/error.h"
#include "engine/linear.h"
#include "engine/model_folder.h"
#include "models/model.h"
#include "train/ops.h"

namespace minfer::train {

TrainBert::TrainBert(const ModelConfig& c, const TrainMods& mods)
    : cfg_(c), proj_(mods, Arch::Bert, params_, frozen_) {
  MINFER_CHECK(c.arch == Arch::Bert, "TrainBert needs a bert config, got {}", arch_name(c.arch));
  if (!c.layer_heads.empty() || !c.layer_ffn.empty() || !c.pruned_heads.empty())
    throw NotImplemented("training a structurally pruned bert (pruned heads, per-layer widths)");
  const int64_t C = c.hidden, F = c.ffn;
  // Everything but the projections goes to the base store (frozen with LoRA); each projection
  // [O, I] is laid out by proj_.
  ParamStore& base = proj_.base_store();
  base.add("embeddings.word_embeddings.weight", {c.vocab_size, C}, true);
  base.add("embeddings.position_embeddings.weight", {c.max_pos, C}, true);
  base.add("embeddings.token_type_embeddings.weight", {std::max<int64_t>(c.type_vocab, 1), C},
           true);
  base.add("embeddings.LayerNorm.weight", {C}, false);
  base.add("embeddings.LayerNorm.bias", {C}, false);
  for (int64_t l = 0; l < c.n_layers; ++l) {
    const std::string p = lp(l);
    for (const char* n : {"query", "key", "value"}) {
      proj_.add(p + "attention.self." + n + ".weight", C, C);
      base.add(p + "attention.self." + n + ".bias", {C}, false);
    }
    proj_.add(p + "attention.output.dense.weight", C, C);
    base.add(p + "attention.output.dense.bias", {C}, false);
    base.add(p + "attention.output.LayerNorm.weight", {C}, false);
    base.add(p + "attention.output.LayerNorm.bias", {C}, false);
    proj_.add(p + "intermediate.dense.weight", F, C);
    base.add(p + "intermediate.dense.bias", {F}, false);
    proj_.add(p + "output.dense.weight", C, F);
    base.add(p + "output.dense.bias", {C}, false);
    base.add(p + "output.LayerNorm.weight", {C}, false);
    base.add(p + "output.LayerNorm.bias", {C}, false);
  }
  if (proj_.lora()) frozen_.allocate(/*grads=*/false);
  params_.allocate();
}

void TrainBert::init_random(uint64_t seed, float std) {
  MINFER_CHECK(!proj_.lora(),
               "LoRA over a randomly initialised base: the student needs weights (init, "
               "init:layers=..., or a folder with model.safetensors)");
  init_params_random(params_, seed, std);
  proj_.after_load();
}

void TrainBert::proj_fwd(const std::string& mod, float* out, const float* inp, int64_t N, int64_t I,
                         int64_t O) {
  const std::string w = mod + ".weight", b = mod + ".bias";
  if (!proj_.handles(w)) {
    linear_forward(out, inp, W(w), W(b), N, I, O);
    return;
  }
  proj_.forward(w, out, inp, N);
  bias_forward(out, W(b), N, O);
}

void TrainBert::proj_bwd(const std::string& mod, float* dinp, const float* dout, const float* inp,
                         int64_t N, int64_t I, int64_t O) {
  const std::string w = mod + ".weight", b = mod + ".bias";
  if (!proj_.handles(w)) {
    linear_backward(dinp, G(w), G(b), dout, inp, W(w), N, I, O);
    return;
  }
  proj_.backward(w, dinp, dout, inp, N);
  bias_backward(G(b), dout, N, O);
}

void TrainBert::load_from_model(Model& m, const std::vector<int64_t>& layer_map) {
  const ModelConfig& mc = m.config();
  MINFER_CHECK(mc.arch == Arch::Bert, "bert student init from a {} model: the teacher must be bert",
               arch_name(mc.arch));
  MINFER_CHECK(layer_map.empty() || int64_t(layer_map.size()) == cfg_.n_layers,
               "student has {} layers, the layer map {}", cfg_.n_layers, layer_map.size());
  auto norm_name = [](const std::string& n) { return n.rfind("bert.", 0) == 0 ? n.substr(5) : n; };
  std::map<std::string, Tensor> by_name;
  std::map<std::string, const Linear*> lin;
  for (const Model::NamedTensor& t : m.tensors()) by_name[norm_name(t.name)] = *t.t;
  for (Linear* l : m.linears()) lin[norm_name(l->name)] = l;
  auto source_name = [&](const std::string& name) {
    return source_block_name(name, "encoder.layer.", layer_map, mc.n_layers);
  };
  auto fill = [&](const ParamTensor& p, float* w) {
    const std::string s = source_name(p.name);
    auto li = lin.find(s);
    if (li != lin.end()) {
      copy_param(p, w, dequantize_weight(*li->second), "source model");
      return;
    }
    copy_bias_or_tensor(p, w, s, lin, by_name);
  };
  // A LoRA target keeps the source's Linear in its format.
  auto base = [&](const std::string& name) -> Linear {
    return source_linear(lin, source_name(name), name);
  };
  proj_.load(fill, base);
}

nlohmann::json TrainBert::config_json() const {
  return bert_config_json(cfg_, "float32");
}

void TrainBert::set_checkpointing(bool on) {
  ckpt_ = on;
  B_ = T_ = 0;  // re-lay the buffers on the next forward
}

size_t TrainBert::activation_bytes() const {
  size_t n = (ids_.size() + types_.size() + mask_.size()) * sizeof(int32_t);
  auto add = [&](const std::vector<float>& v) { n += v.size() * sizeof(float); };
  for (const auto& r : resid_) add(r);
  for (const LayerActs& a : acts_)
    for (const auto* v : {&a.q, &a.k, &a.v, &a.probs, &a.atty, &a.r1, &a.h1, &a.m1, &a.s1, &a.f,
                          &a.g, &a.r2, &a.m2, &a.s2})
      add(*v);
  for (const auto* v : {&emb_, &emb_mean_, &emb_rstd_, &dres_, &dr2_, &dg_, &df_, &dh1_, &dr1_,
                        &datt_, &dq_, &dk_, &dv_, &demb_})
    add(*v);
  return n;
}

void TrainBert::ensure_buffers(int64_t B, int64_t T) {
  const size_t n_acts = ckpt_ ? 1 : size_t(cfg_.n_layers);
  if (B == B_ && T == T_ && acts_.size() == n_acts) return;
  B_ = B;
  T_ = T;
  const int64_t N = B * T, C = cfg_.hidden, F = cfg_.ffn, H = cfg_.n_heads;
  auto sz = [](std::vector<float>& v, int64_t n) { v.assign(size_t(n), 0.f); };
  ids_.assign(size_t(N), 0), types_.assign(size_t(N), 0), mask_.assign(size_t(N), 1);
  sz(emb_, N * C), sz(emb_mean_, N), sz(emb_rstd_, N);
  resid_.resize(size_t(cfg_.n_layers + 1));
  for (auto& r : resid_) sz(r, N * C);
  acts_.assign(n_acts, LayerActs{});
  for (LayerActs& a : acts_) {
    sz(a.q, N * C), sz(a.k, N * C), sz(a.v, N * C), sz(a.probs, B * H * T * T);
    sz(a.atty, N * C), sz(a.r1, N * C), sz(a.h1, N * C), sz(a.m1, N), sz(a.s1, N);
    sz(a.f, N * F), sz(a.g, N * F), sz(a.r2, N * C), sz(a.m2, N), sz(a.s2, N);
  }
  for (auto* v : {&dres_, &dr2_, &dh1_, &dr1_, &datt_, &dq_, &dk_, &dv_, &demb_}) sz(*v, N * C);
  sz(dg_, N * F), sz(df_, N * F);
}

void TrainBert::layer_forward(int64_t l, LayerActs& a, const float* x, float* out) {
  const ModelConfig& c = cfg_;
  const int64_t B = B_, T = T_, N = B * T, C = c.hidden, F = c.ffn, H = c.n_heads, D = C / H;
  const bool tanh_gelu = c.act == Act::GeluTanh;
  const std::string p = lp(l), s = p + "attention.self.";
  proj_fwd(s + "query", a.q.data(), x, N, C, C);
  proj_fwd(s + "key", a.k.data(), x, N, C, C);
  proj_fwd(s + "value", a.v.data(), x, N, C, C);
  attention_forward(a.atty.data(), a.probs.data(), a.q.data(), a.k.data(), a.v.data(), B, T, H, H,
                    D, false, has_mask_ ? mask_.data() : nullptr);
  proj_fwd(p + "attention.output.dense", a.r1.data(), a.atty.data(), N, C, C);
  residual_forward(a.r1.data(), a.r1.data(), x, N * C);
  layernorm_forward(a.h1.data(), a.m1.data(), a.s1.data(), a.r1.data(),
                    W(p + "attention.output.LayerNorm.weight"),
                    W(p + "attention.output.LayerNorm.bias"), N, C, c.norm_eps);
  proj_fwd(p + "intermediate.dense", a.f.data(), a.h1.data(), N, C, F);
  gelu_forward(a.g.data(), a.f.data(), N * F, tanh_gelu);
  proj_fwd(p + "output.dense", a.r2.data(), a.g.data(), N, F, C);
  residual_forward(a.r2.data(), a.r2.data(), a.h1.data(), N * C);
  layernorm_forward(out, a.m2.data(), a.s2.data(), a.r2.data(), W(p + "output.LayerNorm.weight"),
                    W(p + "output.LayerNorm.bias"), N, C, c.norm_eps);
}

const float* TrainBert::forward(const int32_t* ids, int64_t B, int64_t T, const int32_t* mask,
                                const int32_t* type_ids) {
  const ModelConfig& c = cfg_;
  MINFER_CHECK(B > 0 && T > 0 && T <= c.max_pos,
               "forward: batch {} x {} tokens (bert has {} learned positions)", B, T, c.max_pos);
  ensure_buffers(B, T);
  const int64_t N = B * T, C = c.hidden, TV = std::max<int64_t>(c.type_vocab, 1);
  std::copy(ids, ids + N, ids_.begin());
  proj_.refresh();
  has_mask_ = mask != nullptr;
  if (mask) std::copy(mask, mask + N, mask_.begin());
  if (type_ids)
    std::copy(type_ids, type_ids + N, types_.begin());
  else
    std::fill(types_.begin(), types_.end(), 0);
  embedding_forward(emb_.data(), ids, W("embeddings.word_embeddings.weight"), N, C, c.vocab_size);
  const float* pos = W("embeddings.position_embeddings.weight");
  const float* typ = W("embeddings.token_type_embeddings.weight");
  for (int64_t n = 0; n < N; ++n) {
    MINFER_CHECK(types_[size_t(n)] >= 0 && types_[size_t(n)] < TV,
                 "token type {} at row {} outside [0, {})", types_[size_t(n)], n, TV);
    for (int64_t i = 0; i < C; ++i)
      emb_[size_t(n * C + i)] += pos[(n % T) * C + i] + typ[types_[size_t(n)] * C + i];
  }
  layernorm_forward(resid_[0].data(), emb_mean_.data(), emb_rstd_.data(), emb_.data(),
                    W("embeddings.LayerNorm.weight"), W("embeddings.LayerNorm.bias"), N, C,
                    c.norm_eps);
  for (int64_t l = 0; l < c.n_layers; ++l)
    layer_forward(l, acts_[ckpt_ ? 0 : size_t(l)], resid_[size_t(l)].data(),
                  resid_[size_t(l + 1)].data());
  return resid_.back().data();
}

void TrainBert::layer_backward(int64_t l, LayerActs& a, const float* x) {
  const ModelConfig& c = cfg_;
  const int64_t B = B_, T = T_, N = B * T, C = c.hidden, F = c.ffn, H = c.n_heads, D = C / H;
  const bool tanh_gelu = c.act == Act::GeluTanh;
  auto zero = [](std::vector<float>& v) { std::fill(v.begin(), v.end(), 0.f); };
  const std::string p = lp(l), s = p + "attention.self.";
  // out = LN(r2), r2 = h1 + output.dense(gelu(intermediate.dense(h1)))
  zero(dr2_);
  layernorm_backward(dr2_.data(), G(p + "output.LayerNorm.weight"), G(p + "output.LayerNorm.bias"),
                     dres_.data(), a.r2.data(), W(p + "output.LayerNorm.weight"), a.m2.data(),
                     a.s2.data(), N, C);
  zero(dg_);
  proj_bwd(p + "output.dense", dg_.data(), dr2_.data(), a.g.data(), N, F, C);
  zero(df_);
  gelu_backward(df_.data(), dg_.data(), a.f.data(), N * F, tanh_gelu);
  dh1_ = dr2_;
  proj_bwd(p + "intermediate.dense", dh1_.data(), df_.data(), a.h1.data(), N, C, F);
  // h1 = LN(r1), r1 = x + attention.output.dense(attention(q(x), k(x), v(x)))
  zero(dr1_);
  layernorm_backward(dr1_.data(), G(p + "attention.output.LayerNorm.weight"),
                     G(p + "attention.output.LayerNorm.bias"), dh1_.data(), a.r1.data(),
                     W(p + "attention.output.LayerNorm.weight"), a.m1.data(), a.s1.data(), N, C);
  zero(datt_);
  proj_bwd(p + "attention.output.dense", datt_.data(), dr1_.data(), a.atty.data(), N, C, C);
  zero(dq_), zero(dk_), zero(dv_);
  attention_backward(dq_.data(), dk_.data(), dv_.data(), datt_.data(), a.q.data(), a.k.data(),
                     a.v.data(), a.probs.data(), B, T, H, H, D, false);
  dres_ = dr1_;
  proj_bwd(s + "query", dres_.data(), dq_.data(), x, N, C, C);
  proj_bwd(s + "key", dres_.data(), dk_.data(), x, N, C, C);
  proj_bwd(s + "value", dres_.data(), dv_.data(), x, N, C, C);
}

void TrainBert::backward(const float* dhidden) {
  MINFER_CHECK(B_ > 0, "backward before forward");
  const ModelConfig& c = cfg_;
  const int64_t T = T_, N = B_ * T, C = c.hidden;
  auto zero = [](std::vector<float>& v) { std::fill(v.begin(), v.end(), 0.f); };
  std::copy(dhidden, dhidden + N * C, dres_.begin());
  for (int64_t l = c.n_layers - 1; l >= 0; --l) {
    const float* x = resid_[size_t(l)].data();
    if (ckpt_)  // recompute this block's activations from its kept input
      layer_forward(l, acts_[0], x, resid_[size_t(l + 1)].data());
    layer_backward(l, acts_[ckpt_ ? 0 : size_t(l)], x);
  }
  zero(demb_);
  layernorm_backward(demb_.data(), G("embeddings.LayerNorm.weight"), G("embeddings.LayerNorm.bias"),
                     dres_.data(), emb_.data(), W("embeddings.LayerNorm.weight"), emb_mean_.data(),
                     emb_rstd_.data(), N, C);
  embedding_backward(G("embeddings.word_embeddings.weight"), demb_.data(), ids_.data(), N, C);
  embedding_backward(G("embeddings.token_type_embeddings.weight"), demb_.data(), types_.data(), N,
                     C);
  float* dpos = G("embeddings.position_embeddings.weight");
  if (!dpos) return;  // frozen (LoRA)
  for (int64_t n = 0; n < N; ++n)
    for (int64_t i = 0; i < C; ++i) dpos[(n % T) * C + i] += demb_[size_t(n * C + i)];
}

}  // namespace minfer::train
