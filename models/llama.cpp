// LLaMA family (SmolLM2, TinyLlama, Qwen2 biases, Phi-3 fused projections, Gemma, Gemma-2):
// pre-norm RMSNorm blocks, rotary positions (scaled as the config says, engine/rope.h),
// grouped-query attention, gated MLP (SwiGLU; GeGLU for Gemma), optional tied embeddings.
// Gemma (transformers modeling_gemma.py): RMSNorm x (1 + w), embeddings x sqrt(C). Gemma-2
// (modeling_gemma2.py, Gemma Team 2024, "Gemma 2: Improving Open Language Models at a Practical
// Size"): norms also after attention and around the FFN, attention and final logit soft-capping
// cap tanh(x / cap), query_pre_attn_scalar, sliding-window attention on alternate layers.
#include <cmath>

#include "models/model.h"

namespace minfer {

namespace {

struct LlamaLayer {
  Tensor attn_norm;       // [C]
  Linear wq;              // [H*D, C]
  Linear wk;              // [Hkv*D, C]
  Linear wv;              // [Hkv*D, C]
  Linear wo;              // [C, H*D]
  Tensor ffn_norm;        // [C] (Gemma-2: pre_feedforward_layernorm)
  Tensor post_attn_norm;  // [C] Gemma-2 only: on the attention output
  Tensor post_ffn_norm;   // [C] Gemma-2 only: on the FFN output
  Linear gate;            // [F, C]
  Linear up;              // [F, C]
  Linear down;            // [C, F]
};

// A fused projection `<prefix>.weight` [Σ outs, in] (+ bias) split by rows: part(i, name) is the
// Linear of rows [Σ_{j<i} outs_j, + outs_i) named `<name>.weight`, a view of the fused tensor.
auto split_rows(const WeightSource& src, const std::string& prefix, int64_t in,
                std::vector<int64_t> outs, bool bias) {
  int64_t total = 0;
  for (int64_t o : outs) total += o;
  Tensor w = src.tensor(prefix + ".weight", {total, in});
  Tensor b = bias ? src.vec(prefix + ".bias", total) : Tensor();
  return [w, b, outs, in](size_t i, const std::string& name) {
    int64_t off = 0;
    for (size_t j = 0; j < i; ++j) off += outs[j];
    const int64_t n = outs[i];
    return make_dense(name + ".weight", w.slice(0, off, n), in, n, false,
                      b.defined() ? b.slice(0, off, n) : Tensor());
  };
}

class Llama final : public Model {
 public:
  Llama(const ModelConfig& c, const WeightSource& src, Backend& be)
      : Model(c, be), rope_(rope_table(c.rope_theta, c.head_dim, c.rope_scaling)) {
    const int64_t C = c.hidden;
    // A norm weight on the backend; Gemma's (1 + w) is added once here, while tensors() keeps
    // the weight as HF stores it (so a saved model reads back the same).
    auto norm = [&](const std::string& name) {
      Tensor w = src.vec(name, C);
      if (!c.norm_unit_offset) return be.upload(w);
      raw_norms_.push_back({name, w});
      Tensor wf = w.to_f32(), eff = Tensor::empty(DType::F32, {C});
      for (int64_t i = 0; i < C; ++i) eff.data<float>()[i] = 1.f + wf.data<float>()[i];
      return be.upload(eff);
    };
    // The table stays in its stored format (a GGUF's Q8_0 token_embd: only looked-up rows are
    // dequantized); a float table is uploaded as a tensor.
    tok_emb_ = src.table("model.embed_tokens.weight", c.vocab_size, C);
    if (Dense* d = std::get_if<Dense>(&tok_emb_.repr))
      d->w = be.upload(d->w);
    else
      be.upload(tok_emb_);  // before a tied head copies it: the device copy is then shared
    for (int64_t l = 0; l < c.n_layers; ++l) {
      const std::string p = "model.layers." + std::to_string(l) + ".";
      const int64_t qd = c.heads_at(l) * c.head_dim, kvd = c.kv_heads_at(l) * c.head_dim,
                    F = c.ffn_at(l);
      LlamaLayer L;
      L.attn_norm = norm(p + "input_layernorm.weight");
      if (!src.has(p + "self_attn.q_proj.weight") && src.has(p + "self_attn.qkv_proj.weight")) {
        // Phi-3's fused q|k|v [(H + 2 Hkv) D, C]: split into row views (no copy), so the forward
        // and every compression method see three projections, saved under their own names.
        auto part = split_rows(src, p + "self_attn.qkv_proj", C, {qd, kvd, kvd}, c.attn_bias);
        L.wq = part(0, p + "self_attn.q_proj"), L.wk = part(1, p + "self_attn.k_proj");
        L.wv = part(2, p + "self_attn.v_proj");
      } else {
        L.wq = src.linear(p + "self_attn.q_proj", C, qd, c.attn_bias);
        L.wk = src.linear(p + "self_attn.k_proj", C, kvd, c.attn_bias);
        L.wv = src.linear(p + "self_attn.v_proj", C, kvd, c.attn_bias);
      }
      L.wo = src.linear(p + "self_attn.o_proj", qd, C,
                        c.attn_bias && src.has(p + "self_attn.o_proj.bias"));
      if (c.sandwich_norms) {
        L.post_attn_norm = norm(p + "post_attention_layernorm.weight");
        L.ffn_norm = norm(p + "pre_feedforward_layernorm.weight");
        L.post_ffn_norm = norm(p + "post_feedforward_layernorm.weight");
      } else {
        L.ffn_norm = norm(p + "post_attention_layernorm.weight");
      }
      if (!src.has(p + "mlp.gate_proj.weight") && src.has(p + "mlp.gate_up_proj.weight")) {
        // Phi-3's fused gate|up [2F, C] (HF: gate, up = gate_up_proj(x).chunk(2, dim=-1)).
        auto part = split_rows(src, p + "mlp.gate_up_proj", C, {F, F}, c.mlp_bias);
        L.gate = part(0, p + "mlp.gate_proj"), L.up = part(1, p + "mlp.up_proj");
      } else {
        L.gate = src.linear(p + "mlp.gate_proj", C, F, c.mlp_bias);
        L.up = src.linear(p + "mlp.up_proj", C, F, c.mlp_bias);
      }
      L.down = src.linear(p + "mlp.down_proj", F, C, c.mlp_bias);
      layers_.push_back(std::move(L));
    }
    final_norm_ = norm("model.norm.weight");
    if (c.tie_embeddings && !src.has("lm_head.weight"))
      lm_head_ = tok_emb_;
    else
      lm_head_ = src.linear("lm_head", C, c.vocab_size, false);
    for (Linear* w : linears()) be.upload(*w);
  }

  Tensor forward(RunState& s, const int32_t* ids, int64_t T, bool all_logits) override {
    const ModelConfig& c = cfg_;
    Backend& be = *be_;
    MINFER_CHECK(T > 0 && T <= s.max_tokens, "forward: {} tokens, state holds at most {}", T,
                 s.max_tokens);
    MINFER_CHECK(s.n_past + T <= s.max_ctx, "forward: context full ({} + {} > {} positions)",
                 s.n_past, T, s.max_ctx);
    const int64_t pos0 = s.n_past, S = pos0 + T;
    Tensor x = s.x.slice(0, 0, T), xn = s.xn.slice(0, 0, T), proj = s.proj.slice(0, 0, T);

    const int64_t l_end = s.layer_end < 0 ? c.n_layers : s.layer_end;
    MINFER_CHECK(s.layer_begin >= 0 && s.layer_begin <= l_end && l_end <= c.n_layers,
                 "forward: blocks [{}, {}) asked, the model has {}", s.layer_begin, s.layer_end,
                 c.n_layers);
    if (s.layer_begin == 0) {
      be.embedding_table(x, tok_emb_, ids, T);
      // Gemma: x sqrt(C), the normalizer rounded to f32 as HF's torch.tensor(C**0.5, dtype).
      if (c.embed_scale) be.scale(x, x, float(std::sqrt(double(c.hidden))));
    }
    for (int64_t l = s.layer_begin; l < l_end; ++l) {
      LlamaLayer& L = layers_[size_t(l)];
      // Per-layer widths (a structurally pruned model's layers may differ).
      const int64_t H = c.heads_at(l), Hkv = c.kv_heads_at(l), F = c.ffn_at(l);
      const int64_t qd = H * c.head_dim, kvd = Hkv * c.head_dim;
      Tensor qkv = leading_view(s.qkv, T, qd + 2 * kvd);
      Tensor q = qkv.slice(1, 0, qd), k = qkv.slice(1, qd, kvd), v = qkv.slice(1, qd + kvd, kvd);
      Tensor att = leading_view(s.att, T, qd);
      Tensor ga = leading_view(s.ff_a, T, F), up = leading_view(s.ff_b, T, F);
      AttentionArgs aa{H, Hkv, c.head_dim, 1, pos0, true, nullptr, c.attn_scale};
      aa.softcap = c.attn_softcap;
      aa.window = c.window_at(l);
      Tensor kc = s.k_cache[size_t(l)], vc = s.v_cache[size_t(l)];
      Tensor k_new = kv_positions(kc, pos0, T), v_new = kv_positions(vc, pos0, T);
      be.rmsnorm(xn, x, L.attn_norm, c.norm_eps);
      {
        Tensor* ys[3] = {&q, &k, &v};
        const Linear* ws[3] = {&L.wq, &L.wk, &L.wv};
        be.linear_group(ys, ws, 3, xn);  // one dispatch where the backend can (q·k·v)
      }
      be.rope_kv(q, k, v, k_new, v_new, pos0, H, Hkv, rope_);  // RoPE, rotated k into the cache
      be.attention(att, q, kv_positions(kc, 0, S), kv_positions(vc, 0, S), aa);
      be.linear(proj, att, L.wo);
      if (c.sandwich_norms) be.rmsnorm(proj, proj, L.post_attn_norm, c.norm_eps);
      be.add(x, x, proj);
      be.rmsnorm(xn, x, L.ffn_norm, c.norm_eps);
      if (c.act == Act::Silu) {
        be.linear_swiglu(ga, up, xn, L.gate, L.up);  // gate·up and SiLU·mul, fused where it can
      } else {                                       // GeGLU (Gemma: gelu_pytorch_tanh)
        Tensor* ys[2] = {&ga, &up};
        const Linear* ws[2] = {&L.gate, &L.up};
        be.linear_group(ys, ws, 2, xn);  // gate·up
        be.gelu(ga, ga, c.act == Act::GeluTanh);
        be.mul(ga, ga, up);
      }
      be.linear(proj, ga, L.down);
      if (c.sandwich_norms) be.rmsnorm(proj, proj, L.post_ffn_norm, c.norm_eps);
      be.add(x, x, proj);
    }
    s.n_past = S;
    if (l_end < c.n_layers) return Tensor();  // a partial run: the residual stream stays in x
    const int64_t first = all_logits ? 0 : T - 1, n = T - first;
    MINFER_CHECK(n <= s.logits.dim(0), "forward: {} rows of logits asked, the state holds {}", n,
                 s.logits.dim(0));
    Tensor xl = x.slice(0, first, n), xnl = xn.slice(0, 0, n), logits = s.logits.slice(0, 0, n);
    be.rmsnorm(xnl, xl, final_norm_, c.norm_eps);
    be.linear(logits, xnl, lm_head_);
    if (c.final_softcap > 0) be.softcap(logits, logits, c.final_softcap);
    return logits;
  }

  std::vector<Linear*> linears() override {
    std::vector<Linear*> v;
    for (auto& L : layers_)
      for (Linear* w : {&L.wq, &L.wk, &L.wv, &L.wo, &L.gate, &L.up, &L.down}) v.push_back(w);
    v.push_back(&lm_head_);
    return v;
  }

  std::vector<Linear*> tables() override {
    if (std::holds_alternative<Dense>(tok_emb_.repr)) return {};
    return {&tok_emb_};
  }

  std::vector<NamedTensor> tensors() override {
    // A table kept in a block format is no float tensor: it is counted (and saved) through the
    // tied head, or not at all when untied (compression dequantizes GGUF tables at load).
    std::vector<NamedTensor> v;
    if (Dense* d = std::get_if<Dense>(&tok_emb_.repr))
      v.push_back({"model.embed_tokens.weight", &d->w, true});
    if (!raw_norms_.empty()) {  // Gemma: the weights as HF stores them, w of (1 + w)
      for (auto& [name, t] : raw_norms_) v.push_back({name, &t});
      return v;
    }
    for (size_t l = 0; l < layers_.size(); ++l) {
      const std::string p = "model.layers." + std::to_string(l) + ".";
      v.push_back({p + "input_layernorm.weight", &layers_[l].attn_norm});
      v.push_back({p + "post_attention_layernorm.weight", &layers_[l].ffn_norm});
    }
    v.push_back({"model.norm.weight", &final_norm_});
    return v;
  }

 private:
  Linear tok_emb_;  // [V, C] table (in = C, out = V)
  std::vector<LlamaLayer> layers_;
  Tensor final_norm_;  // [C]
  Linear lm_head_;     // [V, C] (shares tok_emb_ when tied)
  RopeTable rope_;     // [D/2] inverse frequencies (+ attention scaling), from the config
  // Gemma: every norm weight w by HF name (the backend holds 1 + w); empty otherwise.
  std::vector<std::pair<std::string, Tensor>> raw_norms_;
};

}  // namespace

std::unique_ptr<Model> make_llama(const ModelConfig& cfg, const WeightSource& src, Backend& be) {
  return std::make_unique<Llama>(cfg, src, be);
}

}  // namespace minfer
