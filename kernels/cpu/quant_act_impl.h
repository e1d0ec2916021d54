// Internals shared by kernels/cpu/quant_act.cpp (checks, dispatch, scalar reference) and its SIMD
// siblings quant_act_avx512.cpp (AVX-512 VNNI) and quant_act_avx2.cpp (AVX2), of which the build's
// target ISA compiles exactly one (or none: the scalar reference then runs).
// Legend: T rows of x, Kp = K padded to 64, N = out features.
#pragma once
#include <cstdint>

#include "kernels/cpu/quant_impl.h"

namespace minfer::qcpu {

// Where the integer core writes: exact int32 sums (c), or f32 y = float(sum) * (d[t] * sw[n]).
struct I8Out {
  int32_t* c = nullptr;  // [T, ldc] int32 output, or null for the f32 epilogue
  int64_t ldc = 0;
  float* y = nullptr;  // [T, ldy]
  int64_t ldy = 0;
  const float* d = nullptr;   // [T] token scales
  const float* sw = nullptr;  // [N] weight row scales
};

// One output of the integer core: the exact sum to c, or y = float(v) * (d[t] * sw[n]).
inline void emit(const I8Out& o, int64_t t, int64_t n, int32_t v) {
  if (o.c)
    o.c[t * o.ldc + n] = v;
  else
    o.y[t * o.ldy + n] = float(v) * (o.d[t] * o.sw[n]);
}

#if defined(MINFER_Q_AVX512) || defined(MINFER_Q_AVX2)
#define MINFER_QACT_SIMD 1
// The ISA of the SIMD file this build compiles: "avx512-vnni" or "avx2".
extern const char* const kActIsa;
// q [T, Kp] codes, d [T], s [T]: identical to qm::quantize_act_block / quantize_act_static over
// the whole row (block = Kp). scale == 0: dynamic.
void simd_quantize_act_rows(const float* x, int64_t T, int64_t ldx, int64_t K, float scale,
                            int8_t* q, float* d, int32_t* s);
// Σ_k xq[t, k] (codes[n, k] - 128) for all t < T, n < N; sx[t] = Σ_k xq[t, k] (the VNNI kernels
// remove the zero point with it; the AVX2 ones sum Σ q x directly and ignore it). il > 1: the codes
// are Quantized int8 rows interleaved by il (Quantized::interleave: 64-byte chunks, stored as
// u - 128), read by the prefill GEMM only (T >= 8).
void simd_matmul_i8(const int8_t* xq, const int32_t* sx, int64_t T, int64_t Kp,
                    const uint8_t* codes, int64_t rb, int64_t N, const I8Out& out, int64_t il = 1);
#endif

}  // namespace minfer::qcpu
