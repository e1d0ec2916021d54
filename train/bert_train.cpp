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

TrainBert::TrainBert(const ModelConfig& c) : cfg_(c) {
  MINFER_CHECK(c.arch == Arch::Bert, "TrainBert needs a bert config, got {}", arch_name(c.arch));
  if (!c.layer_heads.empty() || !c.layer_ffn.empty() || !c.pruned_heads.empty())
    throw NotImplemented("training a structurally pruned bert (pruned heads, per-layer widths)");
  const int64_t C = c.hidden, F = c.ffn;
  params_.add("embeddings.word_embeddings.weight", {c.vocab_size, C}, true);
  params_.add("embeddings.position_embeddings.weight", {c.max_pos, C}, true);
  params_.add("embeddings.token_type_embeddings.weight", {std::max<int64_t>(c.type_vocab, 1), C},
              true);
  params_.add("embeddings.LayerNorm.weight", {C}, false);
  params_.add("embeddings.LayerNorm.bias", {C}, false);
  for (int64_t l = 0; l < c.n_layers; ++l) {
    const std::string p = lp(l);
    for (const char* n : {"query", "key", "value"}) {
      params_.add(p + "attention.self." + n + ".weight", {C, C}, true);
      params_.add(p + "attention.self." + n + ".bias", {C}, false);
    }
    params_.add(p + "attention.output.dense.weight", {C, C}, true);
    params_.add(p + "attention.output.dense.bias", {C}, false);
    params_.add(p + "attention.output.LayerNorm.weight", {C}, false);
    params_.add(p + "attention.output.LayerNorm.bias", {C}, false);
    params_.add(p + "intermediate.dense.weight", {F, C}, true);
    params_.add(p + "intermediate.dense.bias", {F}, false);
    params_.add(p + "output.dense.weight", {C, F}, true);
    params_.add(p + "output.dense.bias", {C}, false);
    params_.add(p + "output.LayerNorm.weight", {C}, false);
    params_.add(p + "output.LayerNorm.bias", {C}, false);
  }
  params_.allocate();
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
  params_.walk([&](const ParamTensor& p, float* w, float*, float*, float*) {
    const std::string s = source_name(p.name);
    auto li = lin.find(s);
    if (li != lin.end()) {
      copy_param(p, w, dequantize_weight(*li->second), "source model");
      return;
    }
    copy_bias_or_tensor(p, w, s, lin, by_name);
  });
}

nlohmann::json TrainBert::config_json() const {
  return bert_config_json(cfg_, "float32");
}

void TrainBert::set_checkpointing(bool on) {
  if (on) throw NotImplemented("gradient checkpointing for a bert student");
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
  if (B == B_ && T == T_) return;
  B_ = B;
  T_ = T;
  const int64_t N = B * T, C = cfg_.hidden, F = cfg_.ffn, H = cfg_.n_heads;
  auto sz = [](std::vector<float>& v, int64_t n) { v.assign(size_t(n), 0.f); };
  ids_.assign(size_t(N), 0), types_.assign(size_t(N), 0), mask_.assign(size_t(N), 1);
  sz(emb_, N * C), sz(emb_mean_, N), sz(emb_rstd_, N);
  resid_.resize(size_t(cfg_.n_layers + 1));
  for (auto& r : resid_) sz(r, N * C);
  acts_.assign(size_t(cfg_.n_layers), LayerActs{});
  for (LayerActs& a : acts_) {
    sz(a.q, N * C), sz(a.k, N * C), sz(a.v, N * C), sz(a.probs, B * H * T * T);
    sz(a.atty, N * C), sz(a.r1, N * C), sz(a.h1, N * C), sz(a.m1, N), sz(a.s1, N);
    sz(a.f, N * F), sz(a.g, N * F), sz(a.r2, N * C), sz(a.m2, N), sz(a.s2, N);
  }
  for (auto* v : {&dres_, &dr2_, &dh1_, &dr1_, &datt_, &dq_, &dk_, &dv_, &demb_}) sz(*v, N * C);
  sz(dg_, N * F), sz(df_, N * F);
}

const float* TrainBert::forward(const int32_t* ids, int64_t B, int64_t T, const int32_t* mask,
                                const int32_t* type_ids) {
  const ModelConfig& c = cfg_;
  MINFER_CHECK(B > 0 && T > 0 && T <= c.max_pos,
               "forward: batch {} x {} tokens (bert has {} learned positions)", B, T, c.max_pos);
  ensure_buffers(B, T);
  const int64_t N = B * T, C = c.hidden, F = c.ffn, H = c.n_heads, D = C / H,
                TV = std::max<int64_t>(c.type_vocab, 1);
  const bool tanh_gelu = c.act == Act::GeluTanh;
  ParamStore& P = params_;
  std::copy(ids, ids + N, ids_.begin());
  has_mask_ = mask != nullptr;
  if (mask) std::copy(mask, mask + N, mask_.begin());
  if (type_ids)
    std::copy(type_ids, type_ids + N, types_.begin());
  else
    std::fill(types_.begin(), types_.end(), 0);
  embedding_forward(emb_.data(), ids, P.w("embeddings.word_embeddings.weight"), N, C, c.vocab_size);
  const float* pos = P.w("embeddings.position_embeddings.weight");
  const float* typ = P.w("embeddings.token_type_embeddings.weight");
  for (int64_t n = 0; n < N; ++n) {
    MINFER_CHECK(types_[size_t(n)] >= 0 && types_[size_t(n)] < TV,
                 "token type {} at row {} outside [0, {})", types_[size_t(n)], n, TV);
    for (int64_t i = 0; i < C; ++i)
      emb_[size_t(n * C + i)] += pos[(n % T) * C + i] + typ[types_[size_t(n)] * C + i];
  }
  layernorm_forward(resid_[0].data(), emb_mean_.data(), emb_rstd_.data(), emb_.data(),
                    P.w("embeddings.LayerNorm.weight"), P.w("embeddings.LayerNorm.bias"), N, C,
                    c.norm_eps);
  for (int64_t l = 0; l < c.n_layers; ++l) {
    const std::string p = lp(l), s = p + "attention.self.";
    LayerActs& a = acts_[size_t(l)];
    const float* x = resid_[size_t(l)].data();
    linear_forward(a.q.data(), x, P.w(s + "query.weight"), P.w(s + "query.bias"), N, C, C);
    linear_forward(a.k.data(), x, P.w(s + "key.weight"), P.w(s + "key.bias"), N, C, C);
    linear_forward(a.v.data(), x, P.w(s + "value.weight"), P.w(s + "value.bias"), N, C, C);
    attention_forward(a.atty.data(), a.probs.data(), a.q.data(), a.k.data(), a.v.data(), B, T, H, H,
                      D, false, has_mask_ ? mask_.data() : nullptr);
    linear_forward(a.r1.data(), a.atty.data(), P.w(p + "attention.output.dense.weight"),
                   P.w(p + "attention.output.dense.bias"), N, C, C);
    residual_forward(a.r1.data(), a.r1.data(), x, N * C);
    layernorm_forward(a.h1.data(), a.m1.data(), a.s1.data(), a.r1.data(),
                      P.w(p + "attention.output.LayerNorm.weight"),
                      P.w(p + "attention.output.LayerNorm.bias"), N, C, c.norm_eps);
    linear_forward(a.f.data(), a.h1.data(), P.w(p + "intermediate.dense.weight"),
                   P.w(p + "intermediate.dense.bias"), N, C, F);
    gelu_forward(a.g.data(), a.f.data(), N * F, tanh_gelu);
    linear_forward(a.r2.data(), a.g.data(), P.w(p + "output.dense.weight"),
                   P.w(p + "output.dense.bias"), N, F, C);
    residual_forward(a.r2.data(), a.r2.data(), a.h1.data(), N * C);
    layernorm_forward(resid_[size_t(l + 1)].data(), a.m2.data(), a.s2.data(), a.r2.data(),
                      P.w(p + "output.LayerNorm.weight"), P.w(p + "output.LayerNorm.bias"), N, C,
                      c.norm_eps);
  }
  return resid_.back().data();
}

void TrainBert::backward(const float* dhidden) {
  MINFER_CHECK(B_ > 0, "backward before forward");
  const ModelConfig& c = cfg_;
  const int64_t B = B_, T = T_, N = B * T, C = c.hidden, F = c.ffn, H = c.n_heads, D = C / H;
  const bool tanh_gelu = c.act == Act::GeluTanh;
  ParamStore& P = params_;
  auto zero = [](std::vector<float>& v) { std::fill(v.begin(), v.end(), 0.f); };
  std::copy(dhidden, dhidden + N * C, dres_.begin());
  for (int64_t l = c.n_layers - 1; l >= 0; --l) {
    const std::string p = lp(l), s = p + "attention.self.";
    LayerActs& a = acts_[size_t(l)];
    const float* x = resid_[size_t(l)].data();
    // out = LN(r2), r2 = h1 + output.dense(gelu(intermediate.dense(h1)))
    zero(dr2_);
    layernorm_backward(dr2_.data(), P.g(p + "output.LayerNorm.weight"),
                       P.g(p + "output.LayerNorm.bias"), dres_.data(), a.r2.data(),
                       P.w(p + "output.LayerNorm.weight"), a.m2.data(), a.s2.data(), N, C);
    zero(dg_);
    linear_backward(dg_.data(), P.g(p + "output.dense.weight"), P.g(p + "output.dense.bias"),
                    dr2_.data(), a.g.data(), P.w(p + "output.dense.weight"), N, F, C);
    zero(df_);
    gelu_backward(df_.data(), dg_.data(), a.f.data(), N * F, tanh_gelu);
    dh1_ = dr2_;
    linear_backward(dh1_.data(), P.g(p + "intermediate.dense.weight"),
                    P.g(p + "intermediate.dense.bias"), df_.data(), a.h1.data(),
                    P.w(p + "intermediate.dense.weight"), N, C, F);
    // h1 = LN(r1), r1 = x + attention.output.dense(attention(q(x), k(x), v(x)))
    zero(dr1_);
    layernorm_backward(dr1_.data(), P.g(p + "attention.output.LayerNorm.weight"),
                       P.g(p + "attention.output.LayerNorm.bias"), dh1_.data(), a.r1.data(),
                       P.w(p + "attention.output.LayerNorm.weight"), a.m1.data(), a.s1.data(), N,
                       C);
    zero(datt_);
    linear_backward(datt_.data(), P.g(p + "attention.output.dense.weight"),
                    P.g(p + "attention.output.dense.bias"), dr1_.data(), a.atty.data(),
                    P.w(p + "attention.output.dense.weight"), N, C, C);
    zero(dq_), zero(dk_), zero(dv_);
    attention_backward(dq_.data(), dk_.data(), dv_.data(), datt_.data(), a.q.data(), a.k.data(),
                       a.v.data(), a.probs.data(), B, T, H, H, D, false);
    dres_ = dr1_;
    linear_backward(dres_.data(), P.g(s + "query.weight"), P.g(s + "query.bias"), dq_.data(), x,
                    P.w(s + "query.weight"), N, C, C);
    linear_backward(dres_.data(), P.g(s + "key.weight"), P.g(s + "key.bias"), dk_.data(), x,
                    P.w(s + "key.weight"), N, C, C);
    linear_backward(dres_.data(), P.g(s + "value.weight"), P.g(s + "value.bias"), dv_.data(), x,
                    P.w(s + "value.weight"), N, C, C);
  }
  zero(demb_);
  layernorm_backward(demb_.data(), P.g("embeddings.LayerNorm.weight"),
                     P.g("embeddings.LayerNorm.bias"), dres_.data(), emb_.data(),
                     P.w("embeddings.LayerNorm.weight"), emb_mean_.data(), emb_rstd_.data(), N, C);
  embedding_backward(P.g("embeddings.word_embeddings.weight"), demb_.data(), ids_.data(), N, C);
  embedding_backward(P.g("embeddings.token_type_embeddings.weight"), demb_.data(), types_.data(), N,
                     C);
  float* dpos = P.g("embeddings.position_embeddings.weight");
  for (int64_t n = 0; n < N; ++n)
    for (int64_t i = 0; i < C; ++i) dpos[(n % T) * C + i] += demb_[size_t(n * C + i)];
}

}  // namespace minfer::train
