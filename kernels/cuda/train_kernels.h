// CUDA kernels of the training ops, forward (keeping what backward reads) and backward
// (train/ops.h has the CPU reference of each, with the same arguments and the same
// accumulate-into-the-gradient (+=) contract), as host functions that launch them on a stream
// (train_kernels.cu). Contiguous row-major f32 device arrays; legend as train/ops.h: N rows,
// B sequences, T positions, C width, V vocabulary, H / Hkv query / kv heads, D head dim, n
// elements. The GEMMs of the linear layers (Y = X·Wᵀ, dX += dY·W, dW += dYᵀ·X) are cuBLAS sgemm
// calls (kernels/cuda/train_ops_cuda.cpp).
#pragma once
#include <cstdint>

#include "kernels/common/adamw_math.h"
#include "kernels/cuda/cuda_compat.h"

namespace minfer::MINFER_CUDA_NS {

// dtable[ids[n]] += dout[n]: one thread per column, rows in order (no atomics: the same sums in
// the same order as the CPU op, run to run identical).
// out[n] = table[ids[n]] (ids checked by the caller).
void launch_embedding_forward(float* out, const int32_t* ids, const float* table, int64_t N,
                              int64_t C, cudaStream_t s);
// out = x·rstd·w, rstd[n] = 1/sqrt(mean(x²) + eps) saved (a block per row).
void launch_rmsnorm_forward(float* out, float* rstd, const float* x, const float* w, int64_t N,
                            int64_t C, float eps, cudaStream_t s);
// RoPE in place on x [B*T, nh*D], HF rotate_half pairs (i, i + D/2), position n mod T; cs
// [T, D/2, 2] cos/sin (train/ops.h rope_cos_sin); sign +1 forward, −1 backward (the transpose).
void launch_rope(float* x, const float* cs, int64_t B, int64_t T, int64_t nh, int64_t D, float sign,
                 cudaStream_t s);
// Causal attention with grouped-query heads: probs [B, H, T, T] = softmax(q kᵀ/√D) (masked
// entries 0), out [B*T, H*D] = probs·v (a block per query row).
void launch_attention_forward(float* out, float* probs, const float* q, const float* k,
                              const float* v, int64_t B, int64_t T, int64_t H, int64_t Hkv,
                              int64_t D, cudaStream_t s);
// dq, dk, dv += the gradients through softmax: dS = P∘(dP − rowsum(P∘dP))/√D written to ds
// [B, H, T, T] (scratch) with dq += dS·K by a block per query row, then dk += dSᵀ·Q and
// dv += Pᵀ·dO by a block per key row of each kv head, summing its query heads in order (no
// atomics).
void launch_attention_backward(float* dq, float* dk, float* dv, float* ds, const float* dout,
                               const float* q, const float* k, const float* v, const float* probs,
                               int64_t B, int64_t T, int64_t H, int64_t Hkv, int64_t D,
                               cudaStream_t s);
// out = silu(gate)·up.
void launch_swiglu_forward(float* out, const float* gate, const float* up, int64_t n,
                           cudaStream_t s);
// out = a + b.
void launch_residual_forward(float* out, const float* a, const float* b, int64_t n, cudaStream_t s);
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
// loss[r] = log Σ exp(row) − row[targets[r]] for rows with a target, 0 for the others (a block
// per row).
void launch_cross_entropy_forward(float* loss, const float* logits, const int32_t* targets,
                                  int64_t N, int64_t V, cudaStream_t s);
// loss[r] = the row's KL at temperature τ: forward Σ p(log p − log q), reverse Σ q(log q − log p),
// p = softmax(teacher/τ), q = softmax(student/τ) (a block per row).
void launch_kl_forward(float* loss, const float* student, const float* teacher, int64_t N,
                       int64_t V, float tau, bool reverse, cudaStream_t s);
// dlogits += scale·(softmax(logits) − onehot(target)) for rows with targets[n] >= 0 (a block
// per row).
void launch_cross_entropy_backward(float* dlogits, const float* logits, const int32_t* targets,
                                   int64_t N, int64_t V, float scale, cudaStream_t s);
// dstudent += scale·∂/∂student of the row's KL at temperature τ: forward KL(p‖q): (q − p)/τ;
// reverse KL(q‖p): q∘(log q − log p − KL)/τ (a block per row).
void launch_kl_backward(float* dstudent, const float* student, const float* teacher, int64_t N,
                        int64_t V, float tau, bool reverse, float scale, cudaStream_t s);

// The optimizer (train/optim.h through the CUDA TrainOps).
// The number of partial sums launch_sum_squares writes (its grid).
constexpr int kSumSquaresBlocks = 64;
// partial[b] = Σ x[i]² in double over the grid-stride share of block b (a tree in shared memory),
// for b < kSumSquaresBlocks; the caller adds the partials in order.
void launch_sum_squares(double* partial, const float* x, int64_t n, cudaStream_t s);
// x *= scale.
void launch_scale(float* x, float scale, int64_t n, cudaStream_t s);
// adamw_update (kernels/common/adamw_math.h) on every element.
void launch_adamw(float* w, float* m, float* v, const float* g, int64_t n, const AdamWCoef& c,
                  cudaStream_t s);

}  // namespace minfer::MINFER_CUDA_NS
