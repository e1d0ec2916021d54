// The packed values of a sparse Linear (SparseBitmask, Sparse24) as the CPU kernels read them:
// the child Linear `values` is Dense f32 / f16 / bf16 [N, ld] or Quantized int8 with zero point
// 128 (a scale per row, or one per tensor). Shared by kernels/cpu/sparse.cpp and sparse24.cpp.
#pragma once
#include <cmath>
#include <cstdint>
#include <variant>

#include "engine/half.h"
#include "engine/linear.h"
#include "kernels/common/quant_math.h"

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace minfer::sparse_detail {

struct SparseValues {
  enum Kind { F32, F16, BF16, I8 } kind = F32;
  const void* p = nullptr;
  int64_t ld = 0;                 // elements (f32/f16/bf16) or code bytes (int8) per row
  const float* scales = nullptr;  // int8: [N] per row, or [1] per tensor
  bool per_tensor = false;

  float scale(int64_t n) const { return per_tensor ? scales[0] : scales[n]; }
  // Value j of row n, exactly as dequantize_weight gives it.
  float at(int64_t n, int64_t j) const {
    switch (kind) {
      case F32:
        return static_cast<const float*>(p)[n * ld + j];
      case F16:
        return f16_to_f32(static_cast<const uint16_t*>(p)[n * ld + j]);
      case BF16:
        return bf16_to_f32(static_cast<const uint16_t*>(p)[n * ld + j]);
      case I8:
        return qm::dequant_uz(static_cast<const uint8_t*>(p)[n * ld + j], 128, scale(n));
    }
    return 0.f;
  }
};

// `values`: the sparse Linear's child (Dense f32/f16/bf16 or int8 Quantized, as the formats'
// loaders check).
inline SparseValues sparse_values_of(const Linear& values) {
  SparseValues a;
  if (const Dense* d = std::get_if<Dense>(&values.repr)) {
    a.kind = d->w.dtype() == DType::F32   ? SparseValues::F32
             : d->w.dtype() == DType::F16 ? SparseValues::F16
                                          : SparseValues::BF16;
    a.p = d->w.raw();
    a.ld = values.in;
  } else {
    const Quantized& q = std::get<Quantized>(values.repr);
    a.kind = SparseValues::I8;
    a.p = q.codes.raw();
    a.ld = q.codes.dim(1);
    a.scales = q.scales.data<float>();
    a.per_tensor = q.per_tensor;
  }
  return a;
}

#if defined(__AVX512F__)
// The scale of one activation row x[0, K) for the 16-bit split the int8-value decode kernels
// use: d = max|x| / 32639 (code range ±32639), NaN when x holds a NaN or an inf.
inline float act16_scale_avx512(const float* x, int64_t K) {
  __m512 mx = _mm512_setzero_ps();
  __mmask16 nan = 0;
  for (int64_t k = 0; k < K; k += 16) {
    const __mmask16 lm = K - k >= 16 ? __mmask16(0xffff) : __mmask16((1u << (K - k)) - 1);
    const __m512 a = _mm512_maskz_loadu_ps(lm, x + k);
    nan |= _mm512_cmp_ps_mask(a, a, _CMP_UNORD_Q);
    mx = _mm512_max_ps(mx, _mm512_abs_ps(a));
  }
  const float amax = _mm512_reduce_max_ps(mx);
  return !nan && std::isfinite(amax) ? amax / 32639.f : NAN;
}
#endif

}  // namespace minfer::sparse_detail
