// Int8WithOutliers: LLM.int8() (Dettmers et al., 2022, arXiv:2208.07339). W is int8 absmax per
// output row (`w`: Quantized, scheme Int8, group == in). At run time the input features whose
// |x| >= threshold in any row of the batch are outliers: those columns of X times the matching
// columns of W are computed in f32 (from the f16 copy in `outlier_w` when the feature is listed
// in `outlier_cols`, else from W's int8 column dequantized, as bitsandbytes does for int8-only
// weights); the other columns: X row-wise absmax int8, int8 x int8 -> int32, scaled by the outer
// product of the row and the output scales, plus the outlier part. Encoder:
// compress/quantize.h; kernels: kernels/cpu/quant_act.h, kernels/cuda/kernels.cu.
// Bits per weight: 8 + 32/K + n (16 + 32/out) / K for n listed outlier features.
#pragma once
#include "engine/formats/quantized.h"

namespace minfer {

struct Int8WithOutliers {
  Quantized w;            // Int8, per output row
  float threshold = 6.f;  // the paper's default (section 3.2)
  Tensor outlier_cols;    // I32 [n] ascending input features kept in f16 (from calibration)
  Tensor outlier_w;       // F16 [out, n] those columns of the original W
};

template <>
struct FormatTraits<Int8WithOutliers> {
  static constexpr const char* repr = "llm-int8";
  // The int8 weight (scheme Int8, one scale per output row), threshold finite and > 0,
  // outlier_cols I32 [n] ascending in range (scanned), outlier_w F16 [out, n].
  static void check(const Int8WithOutliers& r, int64_t in, int64_t out, const std::string& name);
  static size_t bytes(const Int8WithOutliers& r) {
    return FormatTraits<Quantized>::bytes(r.w) + r.outlier_cols.nbytes() + r.outlier_w.nbytes();
  }
  // The weight as the kernels use it: int8 codes dequantized, listed columns from outlier_w.
  static void dequantize(const Int8WithOutliers& r, int64_t in, int64_t out,
                         const std::string& name, float* w);
  static std::string format(const Int8WithOutliers&, int64_t) { return "llm-int8"; }
  static void save(const Int8WithOutliers& r, const std::string& name, TensorSink& sink,
                   json& meta);
  static Int8WithOutliers load(const TensorSource& src, const std::string& name, const json& meta,
                               int64_t in, int64_t out);
  static std::vector<const Linear*> children(const Int8WithOutliers&) { return {}; }
};

// The int8 weight of LLM.int8() and W8A8: scheme Int8, one scale per output row; then
// FormatTraits<Quantized>::check. `what` names the format in the message.
void check_int8_rows(const Quantized& q, int64_t in, int64_t out, const std::string& name,
                     const char* what);

}  // namespace minfer
