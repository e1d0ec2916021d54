// BERT encoder (all-MiniLM-L6-v2, bert-base): word + absolute position + token type embeddings,
// post-norm LayerNorm blocks, bidirectional attention with a padding mask, GELU (erf) MLP.
#include "models/model.h"

namespace minfer {

namespace {

struct BertLayer {
  Linear wq, wk, wv;          // [C, C] each
  Linear wo;                  // [C, C]
  Tensor ln_att_w, ln_att_b;  // [C]
  Linear fc;                  // [F, C]
  Linear proj;                // [C, F]
  Tensor ln_out_w, ln_out_b;  // [C]
};

class Bert final : public Model {
 public:
  Bert(const ModelConfig& c, const WeightSource& src, Backend& be) : Model(c, be) {
    const int64_t C = c.hidden;
    // BertModel saves bare names; BertFor* heads save "bert.*".
    p_ = src.has("bert.embeddings.word_embeddings.weight") ? "bert." : "";
    const std::string& p = p_;
    word_ = be.upload(src.tensor(p + "embeddings.word_embeddings.weight", {c.vocab_size, C}));
    pos_ = be.upload(src.tensor(p + "embeddings.position_embeddings.weight", {c.max_pos, C}));
    type_ = be.upload(src.tensor(p + "embeddings.token_type_embeddings.weight", {c.type_vocab, C}));
    emb_ln_w_ = be.upload(src.vec(p + "embeddings.LayerNorm.weight", C));
    emb_ln_b_ = be.upload(src.vec(p + "embeddings.LayerNorm.bias", C));
    for (int64_t l = 0; l < c.n_layers; ++l) {
      const std::string q = p + "encoder.layer." + std::to_string(l) + ".";
      BertLayer L;
      const int64_t A = c.heads_at(l) * c.head_dim, F = c.ffn_at(l);  // C and F unless pruned
      L.wq = src.linear(q + "attention.self.query", C, A, true);
      L.wk = src.linear(q + "attention.self.key", C, A, true);
      L.wv = src.linear(q + "attention.self.value", C, A, true);
      L.wo = src.linear(q + "attention.output.dense", A, C, true);
      L.ln_att_w = be.upload(src.vec(q + "attention.output.LayerNorm.weight", C));
      L.ln_att_b = be.upload(src.vec(q + "attention.output.LayerNorm.bias", C));
      L.fc = src.linear(q + "intermediate.dense", C, F, true);
      L.proj = src.linear(q + "output.dense", F, C, true);
      L.ln_out_w = be.upload(src.vec(q + "output.LayerNorm.weight", C));
      L.ln_out_b = be.upload(src.vec(q + "output.LayerNorm.bias", C));
      layers_.push_back(std::move(L));
    }
    for (Linear* w : linears()) be.upload(*w);
  }

  Tensor encode(RunState& s, const int32_t* ids, int64_t B, int64_t T, const int32_t* mask,
                const int32_t* type_ids) override {
    const ModelConfig& c = cfg_;
    Backend& be = *be_;
    const int64_t N = B * T;
    MINFER_CHECK(B > 0 && T > 0 && N <= s.max_tokens, "encode: {} x {} tokens, state holds {}", B,
                 T, s.max_tokens);
    MINFER_CHECK(T <= c.max_pos, "encode: sequence of {} tokens exceeds the model's {} positions",
                 T, c.max_pos);
    Tensor x = s.x.slice(0, 0, N), xn = s.xn.slice(0, 0, N), proj = s.proj.slice(0, 0, N);

    be.embedding(x, word_, ids, N);
    for (int64_t i = 0; i < N; ++i) s.ids[size_t(i)] = int32_t(i % T);
    be.embedding(x, pos_, s.ids.data(), N, true);
    for (int64_t i = 0; i < N; ++i) s.ids[size_t(i)] = type_ids ? type_ids[i] : 0;
    be.embedding(x, type_, s.ids.data(), N, true);
    be.layernorm(x, x, emb_ln_w_, emb_ln_b_, c.norm_eps);
    for (int64_t l = 0; l < c.n_layers; ++l) {
      BertLayer& L = layers_[size_t(l)];
      // Per-layer widths: A = H_l * D, F_l (C and F unless pruned).
      const int64_t H = c.heads_at(l), A = H * c.head_dim;
      Tensor qkv = leading_view(s.qkv, N, 3 * A);
      Tensor q = qkv.slice(1, 0, A), k = qkv.slice(1, A, A), v = qkv.slice(1, 2 * A, A);
      Tensor att = leading_view(s.att, N, A), ff = leading_view(s.ff_a, N, c.ffn_at(l));
      AttentionArgs aa{H, H, c.head_dim, B, 0, false, mask, 0.f};
      be.linear(q, x, L.wq);
      be.linear(k, x, L.wk);
      be.linear(v, x, L.wv);
      be.attention(att, q, k, v, aa);
      be.linear(proj, att, L.wo);
      be.add(x, x, proj);
      be.layernorm(x, x, L.ln_att_w, L.ln_att_b, c.norm_eps);
      be.linear(ff, x, L.fc);
      be.gelu(ff, ff, c.act == Act::GeluTanh);
      be.linear(proj, ff, L.proj);
      be.add(x, x, proj);
      be.layernorm(x, x, L.ln_out_w, L.ln_out_b, c.norm_eps);
    }
    return x;
  }

  std::vector<Linear*> linears() override {
    std::vector<Linear*> v;
    for (auto& L : layers_)
      for (Linear* w : {&L.wq, &L.wk, &L.wv, &L.wo, &L.fc, &L.proj}) v.push_back(w);
    return v;
  }

  std::vector<NamedTensor> tensors() override {
    const std::string e = p_ + "embeddings.";
    std::vector<NamedTensor> v{{e + "word_embeddings.weight", &word_, true},
                               {e + "position_embeddings.weight", &pos_, true},
                               {e + "token_type_embeddings.weight", &type_, true},
                               {e + "LayerNorm.weight", &emb_ln_w_},
                               {e + "LayerNorm.bias", &emb_ln_b_}};
    for (size_t l = 0; l < layers_.size(); ++l) {
      const std::string q = p_ + "encoder.layer." + std::to_string(l) + ".";
      BertLayer& L = layers_[l];
      v.push_back({q + "attention.output.LayerNorm.weight", &L.ln_att_w});
      v.push_back({q + "attention.output.LayerNorm.bias", &L.ln_att_b});
      v.push_back({q + "output.LayerNorm.weight", &L.ln_out_w});
      v.push_back({q + "output.LayerNorm.bias", &L.ln_out_b});
    }
    return v;
  }

 private:
  std::string p_;  // "bert." (BertFor* heads) or "" (BertModel)
  Tensor word_;    // [V, C]
  Tensor pos_;     // [max_pos, C]
  Tensor type_;    // [type_vocab, C]
  Tensor emb_ln_w_, emb_ln_b_;
  std::vector<BertLayer> layers_;
};

}  // namespace

std::unique_ptr<Model> make_bert(const ModelConfig& cfg, const WeightSource& src, Backend& be) {
  return std::make_unique<Bert>(cfg, src, be);
}

}  // namespace minfer
