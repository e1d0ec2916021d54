// Linear: how one weight matrix is stored and multiplied. Models hold every projection as a
// Linear and call Backend::linear(y, x, W); the backend dispatches on W's representation in one
// place. Compression transforms map Linear -> Linear (later issues add Quantized,
// Int8WithOutliers, Sparse, LowRank and Codebook representations to `LinearRepr`).
#pragma once
#include <memory>
#include <string>
#include <variant>

#include "engine/tensor.h"

namespace minfer {

// Plain float matrix: F32, F16 or BF16.
//   transposed == false: w is [out, in] (torch nn.Linear layout)
//   transposed == true:  w is [in, out] (GPT-2 Conv1D layout), read without copying
struct Dense {
  Tensor w;
  bool transposed = false;
};

// Weight-only quantization schemes (issue: quantization). Encoders: engine/quantize.h; packing,
// code values and the dequantization rule: kernels/common/quant_math.h; kernels:
// kernels/cpu/quant.h.
enum class QScheme : uint8_t {
  Int8,     // absmax, scale = max|w| / 127 per tensor, per output row or per group
  Int4,     // group-wise, symmetric (absmax, codes -7..7) or asymmetric (min/max, zero point)
  NF4,      // NormalFloat-4 code book (QLoRA), absmax per block, optional double-quant scales
  Binary,   // sign(w) * mean|w| per row, 8 codes per byte
  Ternary,  // BitNet b1.58 absmean: round(w / mean|w|) clipped to {-1, 0, 1}, 4 codes per byte
};

// Legend: Kp = in rounded up to 64, groups = ceil(in / group) scales per row.
struct Quantized {
  QScheme scheme = QScheme::Int8;
  int64_t group = 0;        // weights sharing one scale along a row (== in: one scale per row)
  bool per_tensor = false;  // one scale for the whole matrix, scales is [1] (Int8, Ternary)
  bool asymmetric = false;  // Int4 with integer zero points
  // U8 [out, Kp * bits / 8] packed codes, row by row; the padding codes dequantize to 0.
  Tensor codes;
  Tensor scales;  // F32 [out, groups] or [1] when per_tensor (absent when double-quantized)
  Tensor zeros;   // U8 [out, groups] integer zero points 0..15 (asymmetric Int4)
  // NF4 double quantization (QLoRA): the out * groups block scales, minus their mean
  // scale_offset, stored as int8 codes in blocks of 256 with one f32 scale per block.
  Tensor scale_codes;   // I8 [out * groups]
  Tensor scale_scales;  // F32 [ceil(out * groups / 256)]
  float scale_offset = 0.f;
};

// LLM.int8() (Dettmers et al., 2022, arXiv:2208.07339): W is int8 absmax per output row
// (`w`: Quantized, scheme Int8, group == in). At run time the input features whose |x| >=
// threshold in any row of the batch are outliers: those columns of X times the matching columns
// of W are computed in f32 (from the f16 copy in `outlier_w` when the feature is listed in
// `outlier_cols`, else from W's int8 column dequantized, as bitsandbytes does for int8-only
// weights); the other columns: X row-wise absmax int8, int8 x int8 -> int32, scaled by the outer
// product of the row and the output scales, plus the outlier part.
struct Int8WithOutliers {
  Quantized w;            // Int8, per output row
  float threshold = 6.f;  // the paper's default
  Tensor outlier_cols;    // I32 [n] ascending input features kept in f16 (from calibration)
  Tensor outlier_w;       // F16 [out, n] those columns of the original W
};

// W8A8: int8 weights (absmax per output row) times int8 activations, integer GEMM with int32
// accumulation. Activation scale: dynamic = absmax per token row at run time; static = one
// per-tensor scale (max|x| / 127 over a calibration pass), x clamped to ±127 codes.
enum class ActScale : uint8_t { Dynamic, Static };
struct W8A8 {
  Quantized w;  // Int8, per output row
  ActScale act = ActScale::Dynamic;
  float act_scale = 0.f;  // Static: x ≈ act_scale * code
};

using LinearRepr = std::variant<Dense, Quantized, Int8WithOutliers, W8A8>;

struct Linear {
  std::string name;  // HF tensor name of the weight, for messages and per-layer overrides
  int64_t in = 0;    // input features
  int64_t out = 0;   // output features
  LinearRepr repr;
  Tensor bias;  // [out] f32 (optional)
  // Backend-owned copy on a device (uploaded once; compressed formats stay compressed).
  std::shared_ptr<void> device_copy;

  // Bytes the weights occupy (codes, scales, ...), not counting the bias.
  size_t weight_bytes() const;
};

// Builds a Dense Linear from a weight tensor, checking its shape against (out, in).
Linear make_dense(const std::string& name, Tensor w, int64_t in, int64_t out,
                  bool transposed = false, Tensor bias = {});

}  // namespace minfer
