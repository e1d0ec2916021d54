// Quantized linear on the CPU. Legend: T rows of x, K = in features, N = out features,
// Kp = K rounded up to 64, QA = activation block (qm::act_block), nb = ceil(Kp / QA).
//
// int8 / int4 / binary / ternary: each x row is quantized on the fly to int8 per block of QA
// (qm::quantize_act_block); a weight row then costs one integer dot product per block
// (AVX-512 VNNI dpbusd, or AVX2 maddubs) and one f32 multiply-add by s_w * d_x. NF4 looks its
// 16 values up (scaled by the block absmax) and multiplies f32 activations; for T >= 16 it
// dequantizes W one cache-sized tile of rows at a time and calls sgemm.
// The matrix is never dequantized as a whole; each weight byte is read from memory once per call
// (T <= 4: one pass, weight rows in storage order) or once per tile of 16 rows that stays in cache
// while every group of 4 x rows passes over it (T > 4). OpenMP over rows (tiles) from 64K
// weights up; smaller matrices run on the calling thread.
// Files: quant.cpp (dispatch, scalar path), quant_avx512.cpp, quant_avx2.cpp, quant_impl.h.
#pragma once
#include <cstdint>

#include "engine/linear.h"

namespace minfer {

// y[T, N] (row stride ldy) = x[T, K] (row stride ldx) · dequant(W)ᵀ. SIMD where compiled for it
// (AVX-512 VNNI, else AVX2), otherwise the scalar path below. OpenMP over output rows.
void quantized_linear(const Quantized& w, const float* x, int64_t T, int64_t ldx, float* y,
                      int64_t ldy, int64_t K, int64_t N);

// Portable scalar path: the same arithmetic as the SIMD kernels (same activation codes, same
// integer block dot products) one element at a time; they differ only in the order of f32
// additions. Test oracle for quantized_linear and the fallback without SIMD.
void quantized_linear_ref(const Quantized& w, const float* x, int64_t T, int64_t ldx, float* y,
                          int64_t ldy, int64_t K, int64_t N);

// The activation quantizer the integer kernels use: q [T, Kp] (zero padded), d and s [T, nb].
// SIMD where compiled for it; the result is identical to qm::quantize_act_block per block.
void quantize_activations(const float* x, int64_t T, int64_t ldx, int64_t K, int QA, int8_t* q,
                          float* d, int32_t* s);

// Which path quantized_linear takes in this build: "avx512-vnni", "avx2" or "scalar".
const char* quantized_linear_isa();

}  // namespace minfer
