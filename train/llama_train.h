// A LLaMA-family model (HF LlamaForCausalLM: pre-norm RMSNorm blocks, RoPE, grouped-query
// attention, SwiGLU MLP, optionally tied embeddings) with a backward pass, in f32, computed by a
// TrainOps (kernels/train_ops.h: the CPU, or CUDA with buffers in managed memory).
// forward(ids) keeps every activation backward reads, per layer (llm.c's ActivationTensors);
// backward(dlogits) accumulates ∂loss/∂θ into params().grads().
//
// Legend: B sequences, T positions, N = B*T rows, C width, H heads, Hkv kv heads, D head dim,
// F ffn width, V vocab, L layers.
#pragma once
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "engine/config.h"
#include "kernels/train_ops.h"
#include "models/model.h"
#include "train/lowrank_train.h"
#include "train/params.h"
#include "train/projections.h"
#include "train/prune_schedule.h"
#include "train/student.h"

namespace minfer::train {

class TrainLlama final : public Student {
 public:
  // Lays out the parameters of cfg (zeros). Throws "not implemented: ..." for what this model
  // does not train yet: o_proj / MLP biases (Qwen2's q/k/v biases train), per-layer widths of a
  // structurally pruned model, architectures other than llama, QAT together with LoRA, QAT or LoRA
  // on a device other than the CPU; throws for a LoRA rank outside [1, min(in, out)] of a target.
  // `ops` computes every training op and owns the buffers' memory (null: the CPU, cpu_train_ops()).
  explicit TrainLlama(const ModelConfig& cfg, const TrainMods& mods = {},
                      std::shared_ptr<TrainOps> ops = nullptr);

  // The ops this model computes with. Before the host reads or writes parameters, gradients or
  // logits of a device run, forward() and backward() have synchronized (they return finished).
  TrainOps& ops() { return *ops_; }

  const ModelConfig& config() const override { return cfg_; }
  ParamStore& params() override { return params_; }
  const ParamStore& params() const override { return params_; }
  // Weights trained as low-rank factors (a low-rank student; empty otherwise).
  FactoredLinears& factors() { return factors_; }

  // Fills the weights with N(0, std²) (norm weights 1), deterministically from seed.
  void init_random(uint64_t seed, float std = 0.02f);
  // Copies the weights from `src` (f32/f16/bf16; HF names), shapes checked.
  void load(const WeightSource& src);
  // Copies weights from a built model in any format (Linears are dequantized through the format
  // table): student layer i takes layer layer_map[i] of `m` (empty: the same index). Embedding,
  // final norm and head come as they are. Throws naming a missing tensor or a shape mismatch.
  void load_from_model(Model& m, const std::vector<int64_t>& layer_map = {});

  // Gradient checkpointing per layer (Chen et al. 2016, "Training Deep Nets with Sublinear Memory
  // Cost"): keep only each layer's input, recompute the layer's activations in backward. Same
  // gradients bit for bit; activation memory ~ one layer instead of L. Set before forward.
  void set_checkpointing(bool on) override;
  bool checkpointing() const { return ckpt_; }
  // Bytes of the activation buffers the last forward allocated (residual streams, kept layer
  // activations, logits, backward scratch).
  size_t activation_bytes() const override;

  // Runs B sequences of T tokens (ids [B*T]); returns logits [B*T, V] (valid until the next
  // forward). Buffers are (re)allocated when B*T grows.
  const float* forward(const int32_t* ids, int64_t B, int64_t T) override;
  // Accumulates the gradients of a scalar loss whose gradient w.r.t. the logits of the last
  // forward is dlogits [B*T, V].
  void backward(const float* dlogits) override;

  // The trainable parameters: HF names, f32 (a tied head is not written). Without LoRA the
  // whole model; with LoRA only the adapters (what checkpoints hold).
  std::vector<std::pair<std::string, Tensor>> named_weights() const override;
  // config.json (LlamaForCausalLM, or the qwen2 / phi3 class the config came as).
  nlohmann::json config_json() const override;

  const TrainMods& mods() const { return proj_.mods(); }
  // Every weight of the model in f32, HF names (a tied head is not written): the base weights
  // dequantized, the LoRA update α/r·B·A added when merge_lora. Without LoRA: named_weights().
  std::vector<std::pair<std::string, Tensor>> full_weights(bool merge_lora) const {
    return proj_.full_weights(merge_lora);
  }
  // With QAT: the block projections as real Quantized Linears (qat_export), whose dequantized
  // weights are the forward's fake-quantized ones. Empty without QAT.
  std::vector<Linear> qat_linears() const { return proj_.qat_linears(); }
  // With LoRA: the adapters under PEFT's names ("base_model.model.<module>.lora_A.weight").
  std::vector<std::pair<std::string, Tensor>> lora_adapters() const {
    return proj_.lora_adapters();
  }
  // Weight names of every block projection (q, k, v, o, gate, up, down of each layer).
  const std::vector<std::string>& block_linears() const { return proj_.names(); }
  const Projections& projections() const override { return proj_; }
  // Adds, for every block projection, Σ over the last forward's rows of each input column's x²
  // (Wanda's ‖x_j‖₂², train/prune_schedule.h) to acc. Reads the kept activations: throws
  // NotImplemented with gradient checkpointing (only one layer's are kept).
  void add_input_sq(InputSqSums& acc) const;
  // Trainable parameter count (what the optimizer keeps state for).
  size_t trainable_params() const override { return params_.numel(); }

 private:
  struct LayerActs {  // in ops_'s memory
    explicit LayerActs(std::pmr::memory_resource* m)
        : ln1(m),
          ln1_rstd(m),
          q(m),
          k(m),
          v(m),
          probs(m),
          atty(m),
          res_mid(m),
          ln2(m),
          ln2_rstd(m),
          gate(m),
          up(m),
          swi(m) {}
    FloatVec ln1, ln1_rstd;  // [N, C], [N]   attention RMSNorm output, 1/rms
    FloatVec q, k, v;        // [N, H*D], [N, Hkv*D] x2 (q, k after RoPE)
    FloatVec probs;          // [B, H, T, T] attention weights
    FloatVec atty;           // [N, H*D] attention output (before o_proj)
    FloatVec res_mid;        // [N, C] residual after attention
    FloatVec ln2, ln2_rstd;  // [N, C], [N]
    FloatVec gate, up, swi;  // [N, F] x3
  };
  void ensure_buffers(int64_t B, int64_t T);
  // One block: x [N, C] -> out [N, C], keeping what backward reads in a.
  void layer_forward(int64_t l, LayerActs& a, const float* x, float* out);
  // Adds the block's parameter gradients and turns dres_ (∂/∂out) into ∂/∂x.
  void layer_backward(int64_t l, LayerActs& a, const float* x);
  std::string lp(int64_t l) const { return "model.layers." + std::to_string(l) + "."; }
  const float* head_w() const;  // [V, C]
  // A weight by name from the trainable or the frozen store; its gradient (null when frozen).
  float* W(const std::string& name) { return proj_.W(name); }
  const float* W(const std::string& name) const { return proj_.W(name); }
  float* G(const std::string& name) { return proj_.G(name); }
  // One block projection (weight `name`, [O, I]) forward / backward, through QAT or LoRA.
  void lin_fwd(const std::string& name, float* out, const float* inp, int64_t N, int64_t I,
               int64_t O);
  void lin_bwd(const std::string& name, float* dinp, const float* dout, const float* inp, int64_t N,
               int64_t I, int64_t O);
  // qwen2: out [N, O] += bias `name` per row; its gradient += Σ rows of dout (none when frozen).
  void add_bias(const std::string& name, float* out, int64_t N, int64_t O);
  void bias_bwd(const std::string& name, const float* dout, int64_t N, int64_t O);
  ModelConfig cfg_;
  std::shared_ptr<TrainOps> ops_;  // before the stores: they allocate from its memory
  std::pmr::memory_resource* mem_;
  ParamStore params_;
  FactoredLinears factors_;
  ParamStore frozen_;  // LoRA: the frozen base (no gradient in use)
  Projections proj_;   // the block projections' QAT / LoRA (after the two stores it refers to)
  bool ckpt_ = false;
  int64_t B_ = 0, T_ = 0, cap_ = 0;
  // Activations and backward scratch, in ops_'s memory.
  IntVec ids_;                   // [N]
  std::vector<FloatVec> resid_;  // [L+1] x [N, C]: input of layer l, final stream
  std::vector<LayerActs> acts_;  // [L]
  FloatVec lnf_, lnf_rstd_;      // [N, C], [N]
  FloatVec logits_;              // [N, V]
  FloatVec rope_cs_;             // [T, D/2, 2] RoPE cos/sin
  FloatVec dlogits_;             // [N, V] the loss gradient, copied in (device ops)
  FloatVec dres_, dln_, dq_, dk_, dv_, datt_, dgate_, dup_, dswi_;  // backward scratch
};

}  // namespace minfer::train
