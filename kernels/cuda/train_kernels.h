// CUDA kernels of the training ops' backward passes (train/ops.h has the CPU reference of each,
// with the same arguments and the same accumulate-into-the-gradient (+=) contract), as host
// functions that launch them on a stream (train_kernels.cu). Contiguous row-major f32 device
// arrays; legend as train/ops.h: N rows, C width, V vocabulary, n elements.
// The GEMMs of linear_backward (dX += dY·W, dW += dYᵀ·X) are cuBLAS sgemm calls, as the
// forward's; attention and RoPE backward have no kernel yet (docs/training.md).
#pragma once
#include <cstdint>

#include "kernels/cuda/cuda_compat.h"

namespace minfer::MINFER_CUDA_NS {

// dtable[ids[n]] += dout[n]: one thread per column, rows in order (no atomics: the same sums in
// the same order as the CPU op, run to run identical).
void launch_embedding_backward(float* dtable, const float* dout, const int32_t* ids, int64_t N,
                               int64_t C, cudaStream_t s);
// dx += rstd·(w∘dout) − x·rstd³·mean(x∘w∘dout) (a block per row); dw += Σ_rows dout∘x·rstd (a
// thread per column).
void launch_rmsnorm_backward(float* dx, float* dw, const float* dout, const float* x,
                             const float* w, const float* rstd, int64_t N, int64_t C,
                             cudaStream_t s);
// dgate += dout·up·σ(g)(1 + g(1 − σ(g))); dup += dout·silu(g).
void launch_swiglu_backward(float* dgate, float* dup, const float* dout, const float* gate,
                            const float* up, int64_t n, cudaStream_t s);
// dx += gelu'(x)·dout, erf form or GPT-2's tanh approximation.
void launch_gelu_backward(float* dx, const float* dout, const float* x, int64_t n, bool tanh_approx,
                          cudaStream_t s);
// da += dout and db += dout (the residual add's backward; either may be null).
void launch_residual_backward(float* da, float* db, const float* dout, int64_t n, cudaStream_t s);
// dlogits += scale·(softmax(logits) − onehot(target)) for rows with targets[n] >= 0 (a block
// per row).
void launch_cross_entropy_backward(float* dlogits, const float* logits, const int32_t* targets,
                                   int64_t N, int64_t V, float scale, cudaStream_t s);
// dstudent += scale·∂/∂student of the row's KL at temperature τ: forward KL(p‖q): (q − p)/τ;
// reverse KL(q‖p): q∘(log q − log p − KL)/τ (a block per row).
void launch_kl_backward(float* dstudent, const float* student, const float* teacher, int64_t N,
                        int64_t V, float tau, bool reverse, float scale, cudaStream_t s);

}  // namespace minfer::MINFER_CUDA_NS
