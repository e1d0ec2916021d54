// The interface the distillation loop, checkpoints and the output writer see of a trainable model:
// TrainLlama (train/llama_train.h), TrainGpt2 (train/gpt2_train.h) and TrainBert
// (train/bert_train.h) implement it. QAT and LoRA of the block projections are the same for the
// three (train/projections.h: projections()); what only one architecture trains (low-rank
// factors, the prune schedule, devices: LLaMA) stays on that class.
//
// Legend: B sequences, T positions, N = B*T rows, V vocab, C width.
#pragma once
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

#include "engine/config.h"
#include "engine/tensor.h"
#include "train/params.h"
#include "train/projections.h"

namespace minfer::train {

class Student {
 public:
  virtual ~Student() = default;
  virtual const ModelConfig& config() const = 0;
  virtual ParamStore& params() = 0;
  virtual const ParamStore& params() const = 0;
  // Causal LMs: B sequences of T tokens (ids [B*T]) -> logits [B*T, V]. The encoder (TrainBert):
  // the last hidden states [B*T, C], no padding. Valid until the next forward.
  virtual const float* forward(const int32_t* ids, int64_t B, int64_t T) = 0;
  // Accumulates ∂loss/∂θ into params().grads() from the gradient w.r.t. forward()'s output.
  virtual void backward(const float* dout) = 0;
  // The trainable weights under their Hugging Face names, f32 (a tied head is not written).
  virtual std::vector<std::pair<std::string, Tensor>> named_weights() const = 0;
  // config.json of the model folder the weights are saved in (torch_dtype float32).
  virtual nlohmann::json config_json() const = 0;
  // Per-layer gradient checkpointing (Chen et al. 2016): recompute each layer's activations in
  // backward from its kept input. Same gradients bit for bit. Throws NotImplemented where the
  // architecture does not have it.
  virtual void set_checkpointing(bool on) = 0;
  // Bytes of the activation buffers the last forward allocated.
  virtual size_t activation_bytes() const = 0;
  // Trainable parameter count (what the optimizer keeps state for).
  virtual size_t trainable_params() const { return params().numel(); }
  // The block projections (QAT / LoRA state, the export of either).
  virtual const Projections& projections() const = 0;
};

}  // namespace minfer::train
