// BERT encoder (HF BertModel: word + position + token-type embeddings, post-norm LayerNorm blocks,
// bidirectional attention with a padding mask, GELU MLP) with a backward pass, f32 on the CPU.
// The output is the last hidden state; backward takes its gradient. No pooler, no MLM head yet.
//
// Legend: B sequences, T positions, N = B*T rows, C width, H heads, D = C/H, F ffn width,
// V vocab, P positions, L layers.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "engine/config.h"
#include "train/params.h"
#include "train/student.h"

namespace minfer {
class WeightSource;
class Model;
}  // namespace minfer

namespace minfer::train {

class TrainBert final : public Student {
 public:
  // Parameter names as BertModel saves them ("embeddings.*", "encoder.layer.<l>.*"). The six
  // projections of a block train as mods says (train/projections.h: QAT, or LoRA over a frozen
  // base: targets q, k, v = attention.self.{query,key,value}, o = attention.output.dense,
  // up = intermediate.dense, down = output.dense).
  explicit TrainBert(const ModelConfig& cfg, const TrainMods& mods = {});

  const ModelConfig& config() const override { return cfg_; }
  ParamStore& params() override { return params_; }
  const ParamStore& params() const override { return params_; }
  void load(const WeightSource& src) { proj_.load(src); }
  // N(0, std²) for every matrix, LayerNorm weights 1, biases 0 (deterministic from seed).
  // Throws with LoRA (the base needs weights).
  void init_random(uint64_t seed, float std = 0.02f);
  // Copies the weights of a built bert model in any format (Linears dequantized through the
  // format table; "bert.*" names of BertFor* heads map to BertModel's): student layer i takes
  // layer layer_map[i] of `m` (empty: the same index). Throws for a model that is not bert, a
  // missing tensor or a shape mismatch.
  void load_from_model(Model& m, const std::vector<int64_t>& layer_map = {});

  // B sequences of T tokens (ids [B*T]); mask [B*T] (1 = token, 0 = padding; null = none);
  // type_ids [B*T] (null = zeros). Returns the last hidden states [B*T, C].
  const float* forward(const int32_t* ids, int64_t B, int64_t T, const int32_t* mask,
                       const int32_t* type_ids);
  // No padding, token types 0.
  const float* forward(const int32_t* ids, int64_t B, int64_t T) override {
    return forward(ids, B, T, nullptr, nullptr);
  }
  // Accumulates the gradients for ∂loss/∂hidden = dhidden [B*T, C].
  void backward(const float* dhidden) override;
  std::vector<std::pair<std::string, Tensor>> named_weights() const override {
    return named_params(params_);
  }
  nlohmann::json config_json() const override;
  // Per-layer checkpointing as TrainLlama's: one layer's activations kept, recomputed in backward.
  void set_checkpointing(bool on) override;
  size_t activation_bytes() const override;
  const Projections& projections() const override { return proj_; }

 private:
  struct LayerActs {
    std::vector<float> q, k, v, probs, atty;  // [N, C] x3, [B, H, T, T], [N, C]
    std::vector<float> r1, h1, m1, s1;        // attention residual, its LayerNorm, mean, rstd
    std::vector<float> f, g;                  // [N, F] before / after GELU
    std::vector<float> r2, m2, s2;            // MLP residual, mean, rstd (the output is resid_)
  };
  void ensure_buffers(int64_t B, int64_t T);
  // One block: x [N, C] -> out [N, C], keeping what backward reads in a.
  void layer_forward(int64_t l, LayerActs& a, const float* x, float* out);
  // Adds the block's parameter gradients and turns dres_ (∂/∂out) into ∂/∂x.
  void layer_backward(int64_t l, LayerActs& a, const float* x);
  std::string lp(int64_t l) const { return "encoder.layer." + std::to_string(l) + "."; }
  float* W(const std::string& name) { return proj_.W(name); }
  float* G(const std::string& name) { return proj_.G(name); }
  // Linear `mod` ("<block>attention.self.query"): out[N, O] = inp[N, I] · Wᵀ + b, through proj_
  // when it handles the weight; backward accumulates dinp and the (trainable) gradients.
  void proj_fwd(const std::string& mod, float* out, const float* inp, int64_t N, int64_t I,
                int64_t O);
  void proj_bwd(const std::string& mod, float* dinp, const float* dout, const float* inp, int64_t N,
                int64_t I, int64_t O);

  ModelConfig cfg_;
  ParamStore params_;
  ParamStore frozen_;  // LoRA: the frozen base
  Projections proj_;   // after the two stores it refers to
  bool ckpt_ = false;
  int64_t B_ = 0, T_ = 0;
  std::vector<int32_t> ids_, types_, mask_;  // [N]
  bool has_mask_ = false;
  std::vector<float> emb_, emb_mean_, emb_rstd_;  // [N, C] summed embeddings, LayerNorm stats
  std::vector<std::vector<float>> resid_;         // [L+1] x [N, C]: layer inputs, output
  std::vector<LayerActs> acts_;                   // [L] (1 with checkpointing)
  std::vector<float> dres_, dr2_, dg_, df_, dh1_, dr1_, datt_, dq_, dk_, dv_, demb_;  // scratch
};

}  // namespace minfer::train
