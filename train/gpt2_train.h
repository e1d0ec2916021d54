// GPT-2 (HF GPT2LMHeadModel: learned absolute positions, pre-norm LayerNorm blocks, fused QKV,
// GELU MLP, Conv1D weights stored [in, out], tied head) with a backward pass, f32 on the CPU.
// Same contract as TrainLlama (train/llama_train.h): forward keeps what backward reads per layer;
// backward accumulates into params().grads().
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

class TrainGpt2 final : public Student {
 public:
  // Lays out the parameters of cfg (names "transformer.*" as GPT2LMHeadModel saves them). The
  // four Conv1D projections of a block train as mods says (train/projections.h: QAT, or LoRA
  // over a frozen base: targets qkv = attn.c_attn, o = attn.c_proj, up = mlp.c_fc,
  // down = mlp.c_proj). Throws "not implemented" for an untied head and for pruned heads /
  // per-layer widths.
  explicit TrainGpt2(const ModelConfig& cfg, const TrainMods& mods = {});

  const ModelConfig& config() const override { return cfg_; }
  ParamStore& params() override { return params_; }
  const ParamStore& params() const override { return params_; }
  // N(0, std²) for every matrix, LayerNorm weights 1, biases 0 (deterministic from seed).
  // Throws with LoRA (the base needs weights).
  void init_random(uint64_t seed, float std = 0.02f);
  void load(const WeightSource& src) { proj_.load(src); }
  // Copies the weights of a built gpt2 model in any format (Linears dequantized through the
  // format table and stored back as Conv1D [in, out]): student layer i takes layer layer_map[i]
  // of `m` (empty: the same index). Throws for a model that is not gpt2, a missing tensor or a
  // shape mismatch.
  void load_from_model(Model& m, const std::vector<int64_t>& layer_map = {});

  // B sequences of T <= P tokens (positions 0..T-1 in each); logits [B*T, V].
  const float* forward(const int32_t* ids, int64_t B, int64_t T) override;
  void backward(const float* dlogits) override;
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
    std::vector<float> ln1, ln1_mean, ln1_rstd;  // [N, C], [N], [N]
    std::vector<float> q, k, v;                  // [N, C] x3 (split from c_attn's [N, 3C])
    std::vector<float> probs;                    // [B, H, T, T]
    std::vector<float> atty;                     // [N, C]
    std::vector<float> res_mid;                  // [N, C]
    std::vector<float> ln2, ln2_mean, ln2_rstd;  // [N, C], [N], [N]
    std::vector<float> fc, act;                  // [N, F] before / after GELU
  };
  void ensure_buffers(int64_t B, int64_t T);
  // One block: x [N, C] -> out [N, C], keeping what backward reads in a.
  void layer_forward(int64_t l, LayerActs& a, const float* x, float* out);
  // Adds the block's parameter gradients and turns dres_ (∂/∂out) into ∂/∂x.
  void layer_backward(int64_t l, LayerActs& a, const float* x);
  std::string lp(int64_t l) const { return "transformer.h." + std::to_string(l) + "."; }
  float* W(const std::string& name) { return proj_.W(name); }
  float* G(const std::string& name) { return proj_.G(name); }
  // Conv1D `mod` ("<block>attn.c_attn"): out[N, O] = inp[N, I] · W + b, through proj_ when it
  // handles the weight; backward accumulates dinp and the (trainable) gradients.
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
  std::vector<int32_t> ids_;               // [N]
  std::vector<std::vector<float>> resid_;  // [L+1] x [N, C]
  std::vector<LayerActs> acts_;            // [L]
  std::vector<float> lnf_, lnf_mean_, lnf_rstd_, logits_;
  std::vector<float> qkv_, dres_, dln_, dqkv_, dq_, dk_, dv_, datt_, dfc_, dact_;  // scratch
};

}  // namespace minfer::train
