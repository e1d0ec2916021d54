// TrainOps: the seam between the trainer (train/llama_train.h) and the device it computes on (in
// kernels/ beside the inference Backend, so that the CUDA implementation may include it).
// Every op the LLaMA training forward and backward run goes through it, on buffers allocated
// from memory(): the CPU implementation calls train/ops.h on host arrays; the CUDA one
// (kernels/cuda/train_ops_cuda.cpp) runs cuBLAS sgemm for the linear GEMMs and the kernels of
// kernels/cuda/train_kernels.h for the rest, including the loss (train/loss.h), global-norm
// clipping and AdamW (train/optim.h calls sum_squares, scale and adamw), on CUDA managed memory
// (cudaMallocManaged), so that what runs on the host between steps (the teacher's logits,
// pruning masks, checkpoints) reads and writes the same buffers after synchronize().
//
// Arguments, shapes and the accumulate (+=) contract of every op are those of its train/ops.h
// namesake (legend there). Attention is causal without a key mask (the LLaMA student).
#pragma once
#include <cstdint>
#include <memory>
#include <memory_resource>
#include <string>
#include <vector>

#include "kernels/common/adamw_math.h"

namespace minfer::train {

// f32 / int32 buffers in a TrainOps' memory (std::pmr: the allocator is fixed at construction,
// so a buffer keeps its memory across assign / resize).
using FloatVec = std::pmr::vector<float>;
using IntVec = std::pmr::vector<int32_t>;

class TrainOps {
 public:
  virtual ~TrainOps() = default;
  virtual std::string name() const = 0;  // "cpu", "cuda"
  // Where model buffers (parameters, gradients, optimizer moments, activations) live.
  virtual std::pmr::memory_resource* memory() = 0;
  // True when the buffers are plain host memory (no synchronize needed before host access).
  virtual bool host() const = 0;
  // Waits for every op issued so far; the host may then read and write the buffers.
  virtual void synchronize() {}

  virtual void zero(float* p, int64_t n) = 0;
  virtual void linear_forward(float* out, const float* inp, const float* W, int64_t N, int64_t I,
                              int64_t O) = 0;
  // dinp (null: skipped) and dW (null: frozen) accumulate.
  virtual void linear_backward(float* dinp, float* dW, const float* dout, const float* inp,
                               const float* W, int64_t N, int64_t I, int64_t O) = 0;
  // ids: N host-readable ids in this ops' memory; throws naming the row for an id outside [0, V).
  virtual void embedding_forward(float* out, const int32_t* ids, const float* table, int64_t N,
                                 int64_t C, int64_t V) = 0;
  virtual void embedding_backward(float* dtable, const float* dout, const int32_t* ids, int64_t N,
                                  int64_t C) = 0;
  virtual void rmsnorm_forward(float* out, float* rstd, const float* x, const float* w, int64_t N,
                               int64_t C, float eps) = 0;
  virtual void rmsnorm_backward(float* dx, float* dw, const float* dout, const float* x,
                                const float* w, const float* rstd, int64_t N, int64_t C) = 0;
  // rope_apply of train/ops.h: cs [T, D/2, 2] from rope_cos_sin, in this ops' memory.
  virtual void rope(float* x, const float* cs, int64_t B, int64_t T, int64_t nh, int64_t D,
                    float sign) = 0;
  virtual void attention_forward(float* out, float* probs, const float* q, const float* k,
                                 const float* v, int64_t B, int64_t T, int64_t H, int64_t Hkv,
                                 int64_t D) = 0;
  virtual void attention_backward(float* dq, float* dk, float* dv, const float* dout,
                                  const float* q, const float* k, const float* v,
                                  const float* probs, int64_t B, int64_t T, int64_t H, int64_t Hkv,
                                  int64_t D) = 0;
  virtual void swiglu_forward(float* out, const float* gate, const float* up, int64_t n) = 0;
  virtual void swiglu_backward(float* dgate, float* dup, const float* dout, const float* gate,
                               const float* up, int64_t n) = 0;
  virtual void residual_forward(float* out, const float* a, const float* b, int64_t n) = 0;

  // The optimizer's element-wise work (train/optim.h). Σ x² over n values, in double; returns
  // after the sum is complete (the CPU sums in index order; CUDA sums per block in double, then
  // the blocks in order on the host: run-to-run identical, within double rounding of the CPU).
  virtual double sum_squares(const float* x, int64_t n) = 0;
  // x *= s (gradient clipping).
  virtual void scale(float* x, float s, int64_t n) = 0;
  // One AdamW update of n weights with their gradients and moments (adamw_update).
  virtual void adamw(float* w, float* m, float* v, const float* g, int64_t n,
                     const AdamWCoef& c) = 0;

  // The loss on the logits (train/loss.h through distill_loss). The forwards return the sum over
  // rows in double after it is complete (CUDA: one value per row from a block per row, added in
  // order on the host); targets and logits in this ops' memory (targets host-readable; a target
  // >= V is an error naming the row). Backwards accumulate as their train/ops.h namesakes.
  virtual double cross_entropy_forward(const float* logits, const int32_t* targets, int64_t N,
                                       int64_t V) = 0;
  virtual void cross_entropy_backward(float* dlogits, const float* logits, const int32_t* targets,
                                      int64_t N, int64_t V, float scale) = 0;
  virtual double kl_forward(const float* student, const float* teacher, int64_t N, int64_t V,
                            float tau, bool reverse) = 0;
  virtual void kl_backward(float* dstudent, const float* student, const float* teacher, int64_t N,
                           int64_t V, float tau, bool reverse, float scale) = 0;
  // dst = src (n floats; either may be host or this ops' memory).
  virtual void copy(float* dst, const float* src, int64_t n) = 0;
};

// The CPU ops (train/ops.h, OpenBLAS), one shared instance.
std::shared_ptr<TrainOps> cpu_train_ops();
// "cpu" or "cuda" (device index `device`). Throws a clear error for "cuda" in a binary built
// without CUDA (make CUDA=1) or without a device, and for any other name.
std::shared_ptr<TrainOps> make_train_ops(const std::string& name, int device = 0);

}  // namespace minfer::train
