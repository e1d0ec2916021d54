// Activation-quantized linears on the CPU: W8A8 and LLM.int8() (structs: engine/formats/w8a8.h,
// engine/formats/llm_int8.h). Legend: T rows of x (tokens), K = in features, N = out features, Kp =
// K rounded up to 64, m = outlier features of an LLM.int8() call.
//
// Both formats reduce to one integer core, matmul_i8_i8_i32: int8 activation codes (one scale per
// token row) times the int8 weight codes (stored as u = q + 128, one scale per output row), exact
// int32 sums, y[t, n] = float(Σ_k xq[t, k] q[n, k]) * (d[t] * s[n]).
//   W8A8      x row -> int8: dynamic d = max|x| / 127 (qm::quantize_act_block over the whole row),
//             or static d = act_scale, code = clamp(round(x / d), ±127) (qm::quantize_act_static).
//   LLM.int8  outliers O = outlier_cols ∪ {k : |x[t, k]| >= threshold for some t of the call};
//             the int8 part quantizes x with the O columns set to 0, then
//             y += X[:, O] · W_O[:, O]ᵀ in f32, W_O from outlier_w (listed) or the int8 column
//             dequantized (found at run time), as in bitsandbytes' int8 matmul.
// A row with an inf or NaN outside the outlier columns gets d = NaN: its outputs are NaN.
// Fast path (AVX-512 VNNI): T >= 8: the weight is repacked once per call into 64-row panels
// (4 bytes of 16 rows per 512-bit word, the vpdpbusd operand layout) and 6 tokens x 64 rows of
// int32 sums stay in registers while K streams; each x load is a 4-byte broadcast folded into
// vpdpbusd. T < 8 (decode): one pass over the row-major codes, each weight byte read once.
// Fast path (AVX2, no VNNI: Zen 2 / 3, Haswell .. Alder Lake): T >= 8: codes widened to int16
// (x once per call, the weight per 64-row work item) and 6 tokens x 16 rows of int32 sums in
// registers from vpmaddwd; T < 8: the row-major codes through vpmaddubsw (|q| times x carrying
// q's sign, so that no int16 pair saturates) and vpmaddwd by 1. Both give the scalar sums exactly.
// Elsewhere (aarch64, x86 without AVX2) the scalar reference runs.
// Files: quant_act.cpp (checks, dispatch, scalar reference), quant_act_avx512.cpp,
// quant_act_avx2.cpp (the build's target ISA compiles one of the two).
#pragma once
#include <cstdint>

#include "engine/linear.h"

namespace minfer {

// y[T, N] (row stride ldy) = x[T, K] (row stride ldx) · Wᵀ, as described above.
void w8a8_linear(const W8A8& w, const float* x, int64_t T, int64_t ldx, float* y, int64_t ldy,
                 int64_t K, int64_t N);
void llm_int8_linear(const Int8WithOutliers& w, const float* x, int64_t T, int64_t ldx, float* y,
                     int64_t ldy, int64_t K, int64_t N);

// Scalar references: the same activation codes and integer sums, one element at a time; the
// outlier part of LLM.int8() is summed in ascending feature order. Test oracles and the fallback.
void w8a8_linear_ref(const W8A8& w, const float* x, int64_t T, int64_t ldx, float* y, int64_t ldy,
                     int64_t K, int64_t N);
void llm_int8_linear_ref(const Int8WithOutliers& w, const float* x, int64_t T, int64_t ldx,
                         float* y, int64_t ldy, int64_t K, int64_t N);

// The integer core: c[t, n] (row stride ldc) = Σ_{k < Kp} xq[t, k] (codes[n, k] - 128), exact
// (xq [T, Kp] codes in -127..127, codes [N, rb >= Kp] u8 as Quantized Int8 stores them, Kp a
// multiple of 64 and <= 2^17 so that no sum leaves int32). Exposed for exact tests.
void matmul_i8_i8_i32(const int8_t* xq, int64_t T, int64_t Kp, const uint8_t* codes, int64_t rb,
                      int64_t N, int32_t* c, int64_t ldc);
void matmul_i8_i8_i32_ref(const int8_t* xq, int64_t T, int64_t Kp, const uint8_t* codes, int64_t rb,
                          int64_t N, int32_t* c, int64_t ldc);

// Per-token activation quantizers (q [T, Kp] zero padded, d [T], s [T] = Σ codes of the row).
// scale == 0: dynamic absmax, else static. Identical results on every path.
void quantize_act_rows(const float* x, int64_t T, int64_t ldx, int64_t K, float scale, int8_t* q,
                       float* d, int32_t* s);

// Which path w8a8_linear / llm_int8_linear take in this build: "avx512-vnni", "avx2" or "scalar".
const char* act_linear_isa();

}  // namespace minfer
