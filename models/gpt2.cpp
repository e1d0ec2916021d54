// GPT-2: learned absolute positions, pre-norm LayerNorm blocks, fused QKV, GELU (tanh) MLP,
// Conv1D weights stored [in, out] (read transposed, without copying), tied LM head.
#include "models/model.h"

namespace minfer {

namespace {

struct Gpt2Layer {
  Tensor ln1_w, ln1_b;  // [C]
  Linear c_attn;        // [C -> 3C] q | k | v
  Linear c_proj;        // [C -> C]
  Tensor ln2_w, ln2_b;  // [C]
  Linear fc;            // [C -> F]
  Linear proj;          // [F -> C]
};

class Gpt2 final : public Model {
 public:
  Gpt2(const ModelConfig& c, const WeightSource& src, Backend& be) : Model(c, be) {
    const int64_t C = c.hidden;
    // GPT2LMHeadModel saves "transformer.*"; GPT2Model saves bare names.
    p_ = src.has("transformer.wte.weight") ? "transformer." : "";
    const std::string& p = p_;
    wte_ = be.upload(src.tensor(p + "wte.weight", {c.vocab_size, C}));
    wpe_ = be.upload(src.tensor(p + "wpe.weight", {c.max_pos, C}));
    for (int64_t l = 0; l < c.n_layers; ++l) {
      const std::string q = p + "h." + std::to_string(l) + ".";
      const int64_t A = c.heads_at(l) * c.head_dim, F = c.ffn_at(l);  // C and 4C unless pruned
      Gpt2Layer L;
      L.ln1_w = be.upload(src.vec(q + "ln_1.weight", C));
      L.ln1_b = be.upload(src.vec(q + "ln_1.bias", C));
      L.c_attn = src.linear(q + "attn.c_attn", C, 3 * A, true, /*transposed=*/true);
      L.c_proj = src.linear(q + "attn.c_proj", A, C, true, true);
      L.ln2_w = be.upload(src.vec(q + "ln_2.weight", C));
      L.ln2_b = be.upload(src.vec(q + "ln_2.bias", C));
      L.fc = src.linear(q + "mlp.c_fc", C, F, true, true);
      L.proj = src.linear(q + "mlp.c_proj", F, C, true, true);
      layers_.push_back(std::move(L));
    }
    lnf_w_ = be.upload(src.vec(p + "ln_f.weight", C));
    lnf_b_ = be.upload(src.vec(p + "ln_f.bias", C));
    if (src.has("lm_head.weight"))
      lm_head_ = src.linear("lm_head", C, c.vocab_size, false);
    else
      lm_head_ = make_dense(p + "wte.weight", wte_, C, c.vocab_size);
    for (Linear* w : linears()) be.upload(*w);
  }

  Tensor forward(RunState& s, const int32_t* ids, int64_t T, bool all_logits) override {
    const ModelConfig& c = cfg_;
    Backend& be = *be_;
    MINFER_CHECK(T > 0 && T <= s.max_tokens, "forward: {} tokens, state holds at most {}", T,
                 s.max_tokens);
    MINFER_CHECK(s.n_past + T <= std::min(s.max_ctx, c.max_pos),
                 "forward: context full ({} + {} > {} positions)", s.n_past, T,
                 std::min(s.max_ctx, c.max_pos));
    const int64_t pos0 = s.n_past, S = pos0 + T;
    Tensor x = s.x.slice(0, 0, T), xn = s.xn.slice(0, 0, T), proj = s.proj.slice(0, 0, T);
    for (int64_t t = 0; t < T; ++t) s.ids[size_t(t)] = int32_t(pos0 + t);

    const int64_t l_end = s.layer_end < 0 ? c.n_layers : s.layer_end;
    MINFER_CHECK(s.layer_begin >= 0 && s.layer_begin <= l_end && l_end <= c.n_layers,
                 "forward: blocks [{}, {}) asked, the model has {}", s.layer_begin, s.layer_end,
                 c.n_layers);
    if (s.layer_begin == 0) {
      be.embedding(x, wte_, ids, T);
      be.embedding(x, wpe_, s.ids.data(), T, /*accumulate=*/true);
    }
    for (int64_t l = s.layer_begin; l < l_end; ++l) {
      Gpt2Layer& L = layers_[size_t(l)];
      // Per-layer widths: A = H_l * D attention width, F_l (C and 4C unless pruned).
      const int64_t H = c.heads_at(l), A = H * c.head_dim;
      Tensor qkv = leading_view(s.qkv, T, 3 * A);
      Tensor q = qkv.slice(1, 0, A), k = qkv.slice(1, A, A), v = qkv.slice(1, 2 * A, A);
      Tensor att = leading_view(s.att, T, A), ff = leading_view(s.ff_a, T, c.ffn_at(l));
      AttentionArgs aa{H, H, c.head_dim, 1, pos0, true, nullptr, 0.f};
      Tensor kc = s.k_cache[size_t(l)], vc = s.v_cache[size_t(l)];
      Tensor k_new = kv_positions(kc, pos0, T), v_new = kv_positions(vc, pos0, T);
      be.layernorm(xn, x, L.ln1_w, L.ln1_b, c.norm_eps);
      be.linear(qkv, xn, L.c_attn);
      be.copy(k_new, k);
      be.copy(v_new, v);
      be.attention(att, q, kv_positions(kc, 0, S), kv_positions(vc, 0, S), aa);
      be.linear(proj, att, L.c_proj);
      be.add(x, x, proj);
      be.layernorm(xn, x, L.ln2_w, L.ln2_b, c.norm_eps);
      be.linear(ff, xn, L.fc);
      be.gelu(ff, ff, c.act == Act::GeluTanh);
      be.linear(proj, ff, L.proj);
      be.add(x, x, proj);
    }
    s.n_past = S;
    if (l_end < c.n_layers) return Tensor();  // a partial run: the residual stream stays in x
    const int64_t first = all_logits ? 0 : T - 1, n = T - first;
    MINFER_CHECK(n <= s.logits.dim(0), "forward: {} rows of logits asked, the state holds {}", n,
                 s.logits.dim(0));
    Tensor xl = x.slice(0, first, n), xnl = xn.slice(0, 0, n), logits = s.logits.slice(0, 0, n);
    be.layernorm(xnl, xl, lnf_w_, lnf_b_, c.norm_eps);
    be.linear(logits, xnl, lm_head_);
    return logits;
  }

  std::vector<Linear*> linears() override {
    std::vector<Linear*> v;
    for (auto& L : layers_)
      for (Linear* w : {&L.c_attn, &L.c_proj, &L.fc, &L.proj}) v.push_back(w);
    v.push_back(&lm_head_);
    return v;
  }

  std::vector<NamedTensor> tensors() override {
    std::vector<NamedTensor> v{{p_ + "wte.weight", &wte_, true}, {p_ + "wpe.weight", &wpe_, true}};
    for (size_t l = 0; l < layers_.size(); ++l) {
      const std::string q = p_ + "h." + std::to_string(l) + ".";
      Gpt2Layer& L = layers_[l];
      v.push_back({q + "ln_1.weight", &L.ln1_w});
      v.push_back({q + "ln_1.bias", &L.ln1_b});
      v.push_back({q + "ln_2.weight", &L.ln2_w});
      v.push_back({q + "ln_2.bias", &L.ln2_b});
    }
    v.push_back({p_ + "ln_f.weight", &lnf_w_});
    v.push_back({p_ + "ln_f.bias", &lnf_b_});
    return v;
  }

 private:
  std::string p_;  // "transformer." (GPT2LMHeadModel) or "" (GPT2Model)
  Tensor wte_;     // [V, C]
  Tensor wpe_;     // [max_pos, C]
  std::vector<Gpt2Layer> layers_;
  Tensor lnf_w_, lnf_b_;  // [C]
  Linear lm_head_;        // [V, C], tied to wte_
};

}  // namespace

std::unique_ptr<Model> make_gpt2(const ModelConfig& cfg, const WeightSource& src, Backend& be) {
  return std::make_unique<Gpt2>(cfg, src, be);
}

}  // namespace minfer
