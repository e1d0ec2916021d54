// Quantized linear on the CPU, weight-only: x stays f32 and W is dequantized on the fly.
// Legend: T rows of x, K = in features, N = out features, Kp = K rounded up to 64.
//
// Every format (int8, int4 sym/asym, NF4, binary, ternary) multiplies f32 activations by the
// weights dequantized in registers, exactly the values dequantize_weight gives; only the order of
// the f32 additions (and, for int8, the group scale applied once per group instead of per weight)
// differ from "dequantize, then f32 matmul". Activations are never quantized: per-block int8
// activations (llama.cpp's q8_0 partner type) cost SmolLM2-135M +1.1% WikiText-2 perplexity on
// int8 weights, against 0.0% for f32 activations (its activations have outlier features).
//   T <= 4 (decode): one pass over W in storage order, each weight byte read once; one thread
//     below 64K weights, else every thread on a contiguous block of rows.
//   4 < T < 16: tiles of 16 rows kept in cache while every group of 4 x rows passes over them.
//   T >= 16 (prefill): W dequantized one L2-sized tile of rows at a time into f32, then sgemm;
//     tiles spread over the threads.
// The matrix is never dequantized as a whole.
// Files: quant.cpp (dispatch, scalar path, prefill), quant_avx512.cpp, quant_avx2.cpp,
// quant_impl.h.
#pragma once
#include <cstdint>

#include "engine/linear.h"

namespace minfer {

// y[T, N] (row stride ldy) = x[T, K] (row stride ldx) · dequant(W)ᵀ. SIMD where compiled for it
// (AVX-512, else AVX2), otherwise the scalar path below. OpenMP over output rows.
void quantized_linear(const Quantized& w, const float* x, int64_t T, int64_t ldx, float* y,
                      int64_t ldy, int64_t K, int64_t N);

// Portable scalar path and test oracle: each row of W dequantized with the qm:: functions (the
// values dequantize_weight gives), then an f32 dot product with x in index order.
void quantized_linear_ref(const Quantized& w, const float* x, int64_t T, int64_t ldx, float* y,
                          int64_t ldy, int64_t K, int64_t N);

// Which path quantized_linear takes in this build: "avx512", "avx2" or "scalar".
const char* quantized_linear_isa();

}  // namespace minfer
