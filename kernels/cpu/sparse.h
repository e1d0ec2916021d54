// SparseBitmask linear on the CPU (format: engine/formats/sparse.h).
// Legend: T rows of x, K = in features, N = out features, Kb = ceil(K / 8) mask bytes per row,
// Kv = values per row of the packed child.
//
//   T <= 4 (decode, memory bound): one pass over the mask and the packed values in storage order,
//     so the bytes read are the mask plus the kept values. AVX-512 (F, BW, VBMI2):
//     - f32 values: per 16 inputs the kept values are expanded into their lanes (vexpandps) and
//       multiplied with x loaded under the same mask;
//     - int8 values (+ VNNI): x is rounded to 16-bit codes per token row (step max|x| / 32639,
//       |error| <= half a step per element; a row with an inf or NaN gives NaN outputs, as W8A8),
//       held as two signed byte planes; per 64 inputs the kept codes are expanded into their lanes
//       with w = 0 in the pruned ones (one vpexpandb) and two vpdpbusd accumulate exact integer
//       sums; y = float(sum) * (row scale * x step). Two vector instructions per 64 weights keep
//       the kernel under the memory time of the 0.625 bytes per weight it reads at 50 %.
//     f16 / bf16 values and other ISAs take the scalar path.
//   T > 4 (prefill, compute bound): 64 rows at a time dequantized into an f32 tile, then sgemm;
//     tiles spread over the threads. The matrix is never dequantized as a whole.
#pragma once
#include <cstdint>

#include "engine/linear.h"

namespace minfer {

// y[T, N] (row stride ldy) = x[T, K] (row stride ldx) · dequant(W)ᵀ, without bias.
void sparse_linear(const SparseBitmask& w, const float* x, int64_t T, int64_t ldx, float* y,
                   int64_t ldy, int64_t K, int64_t N);

// Scalar reference and test oracle: each kept value dequantized as dequantize_weight does, an f32
// dot product with x in index order.
void sparse_linear_ref(const SparseBitmask& w, const float* x, int64_t T, int64_t ldx, float* y,
                       int64_t ldy, int64_t K, int64_t N);

// Which decode path sparse_linear takes in this build for the value format: "avx512" or "scalar".
const char* sparse_linear_isa(const SparseBitmask& w);

}  // namespace minfer
