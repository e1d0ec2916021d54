// The packed values of a sparse Linear (SparseBitmask, Sparse24) as the CPU kernels read them:
// the child Linear `values` is Dense f32 / f16 / bf16 [N, ld] or Quantized int8 with zero point
// 128 (a scale per row, or one per tensor). Shared by kernels/cpu/sparse.cpp and sparse24.cpp.
#pragma once
#include <cstdint>
#include <variant>

#include "engine/half.h"
#include "engine/linear.h"
#include "kernels/common/quant_math.h"

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

}  // namespace minfer::sparse_detail
