// Dense float linear on the CPU. Legend: T rows of x, K = in features, N = out features.
#pragma once
#include <cstdint>
#include <vector>

#include "engine/tensor.h"

namespace minfer {

// y[T, N] (row stride ldy) = x[T, K] (row stride ldx) · Wᵀ, W F32/F16/BF16 stored [N, K], or
// [K, N] when `transposed`. F32 goes to OpenBLAS, except few rows against [N, K] (decode), which
// use our streaming gemv. F16/BF16 never materialise the whole
// matrix in f32: few rows (decode) use a fused convert-and-dot kernel; many rows (prefill)
// convert one tile of W at a time into `scratch` and run sgemm on it.
void dense_linear(const Tensor& w, bool transposed, const float* x, int64_t T, int64_t ldx,
                  float* y, int64_t ldy, int64_t K, int64_t N, std::vector<float>& scratch);

// One member of dense_linear_group: y[T, N] (row stride ldy) = x · wᵀ.
struct DenseGroupItem {
  const Tensor* w;
  bool transposed;
  float* y;
  int64_t ldy;
  int64_t N;
};
// An op group (q·k·v) of float matrices at decode, T <= 4 rows of x [T, K]: every member's rows
// in one pool dispatch, each row by the same streaming gemv as dense_linear (so the same bits as
// one dense_linear per member). Returns false, computing nothing, where a member would not take
// that gemv (T > 4, transposed storage) or its K differs.
bool dense_linear_group(const DenseGroupItem* items, int n, const float* x, int64_t T, int64_t ldx,
                        int64_t K);
// The LLaMA MLP's gate·up + SiLU·mul at decode in one pool dispatch: u[T, N] = x · upᵀ,
// y[T, N] = silu(x · gateᵀ) · u (kernels/cpu/act.h silu_mul), the bits of dense_linear,
// dense_linear, swiglu. Returns false, computing nothing, under the conditions of
// dense_linear_group or where gate or up is not [N, K].
bool dense_linear_swiglu(const Tensor& gate, const Tensor& up, const float* x, int64_t T,
                         int64_t ldx, float* y, int64_t ldy, float* u, int64_t ldu, int64_t K,
                         int64_t N);

// Scalar reference: y[t, n] = Σ_k x[t, k] w[n, k], accumulated in double. Test oracle.
void dense_linear_ref(const Tensor& w, bool transposed, const float* x, int64_t T, float* y,
                      int64_t K, int64_t N);

}  // namespace minfer
