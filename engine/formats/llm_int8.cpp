#include "engine/formats/llm_int8.h"

#include <cmath>

#include "engine/error.h"
#include "engine/formats/meta.h"
#include "engine/half.h"

namespace minfer {

void check_int8_rows(const Quantized& q, int64_t in, int64_t out, const std::string& name,
                     const char* what) {
  MINFER_CHECK(q.scheme == QScheme::Int8 && !q.per_tensor && q.group == in,
               "{} '{}': weight must be int8 with one scale per output row (group = in = {}), "
               "found {}{} group {}",
               what, name, in, qscheme_name(q.scheme), q.per_tensor ? " per tensor" : "", q.group);
  MINFER_CHECK(q.interleave == 1,
               "{} '{}': int8 codes must be in the row layout, found rows "
               "interleaved by {}",
               what, name, q.interleave);
  FormatTraits<Quantized>::check(q, in, out, name);
}

void FormatTraits<Int8WithOutliers>::check(const Int8WithOutliers& w, int64_t in, int64_t out,
                                           const std::string& name) {
  check_int8_rows(w.w, in, out, name, "llm-int8");
  MINFER_CHECK(std::isfinite(w.threshold) && w.threshold > 0.f,
               "llm-int8 '{}': threshold must be finite and > 0, found {}", name, w.threshold);
  const int64_t n = w.outlier_cols.defined() ? w.outlier_cols.numel() : 0;
  MINFER_CHECK(
      !w.outlier_cols.defined() || (w.outlier_cols.dtype() == DType::I32 &&
                                    w.outlier_cols.ndim() == 1 && w.outlier_cols.is_contiguous()),
      "llm-int8 '{}': outlier_cols must be contiguous I32 [n], found {} {}", name,
      dtype_name(w.outlier_cols.dtype()), w.outlier_cols.shape_str());
  if (n > 0) {
    MINFER_CHECK(w.outlier_w.defined() && w.outlier_w.dtype() == DType::F16 &&
                     w.outlier_w.ndim() == 2 && w.outlier_w.dim(0) == out &&
                     w.outlier_w.dim(1) == n && w.outlier_w.is_contiguous(),
                 "llm-int8 '{}': outlier_w must be contiguous F16 [{}, {}], found {} {}", name, out,
                 n, w.outlier_w.defined() ? dtype_name(w.outlier_w.dtype()) : "undefined",
                 w.outlier_w.defined() ? w.outlier_w.shape_str() : "");
    const int32_t* c = w.outlier_cols.data<int32_t>();
    for (int64_t j = 0; j < n; ++j)
      MINFER_CHECK(c[j] >= 0 && c[j] < in && (j == 0 || c[j] > c[j - 1]),
                   "llm-int8 '{}': outlier_cols must be ascending features in [0, {}), found {} "
                   "at position {}",
                   name, in, c[j], j);
  }
}

void FormatTraits<Int8WithOutliers>::dequantize(const Int8WithOutliers& o, int64_t in, int64_t out,
                                                const std::string& name, float* W) {
  check(o, in, out, name);
  FormatTraits<Quantized>::dequantize(o.w, in, out, name, W);
  const int64_t n = o.outlier_cols.defined() ? o.outlier_cols.numel() : 0;
  const int32_t* cols = n > 0 ? o.outlier_cols.data<int32_t>() : nullptr;
  const uint16_t* ow = n > 0 ? o.outlier_w.data<uint16_t>() : nullptr;
  for (int64_t r = 0; r < out; ++r)
    for (int64_t j = 0; j < n; ++j) W[r * in + cols[j]] = f16_to_f32(ow[r * n + j]);
}

void FormatTraits<Int8WithOutliers>::save(const Int8WithOutliers& r, const std::string& name,
                                          TensorSink& sink, json& meta) {
  FormatTraits<Quantized>::save(r.w, name, sink, meta);
  sink.put(name + ".outlier_cols", r.outlier_cols);
  sink.put(name + ".outlier_w", r.outlier_w);
  meta["threshold"] = r.threshold;
}

Int8WithOutliers FormatTraits<Int8WithOutliers>::load(const TensorSource& src,
                                                      const std::string& name, const json& meta,
                                                      int64_t in, int64_t out) {
  Int8WithOutliers o;
  o.w = FormatTraits<Quantized>::load(src, name, meta, in, out);
  o.threshold = meta_field<float>(meta, "threshold", name);
  o.outlier_cols = src.maybe(name + ".outlier_cols");
  o.outlier_w = src.maybe(name + ".outlier_w");
  check(o, in, out, name);
  return o;
}

}  // namespace minfer
