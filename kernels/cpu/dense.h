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

// Scalar reference: y[t, n] = Σ_k x[t, k] w[n, k], accumulated in double. Test oracle.
void dense_linear_ref(const Tensor& w, bool transposed, const float* x, int64_t T, float* y,
                      int64_t K, int64_t N);

}  // namespace minfer
