#include "engine/linear.h"

namespace minfer {

namespace {
size_t quantized_bytes(const Quantized& q) {
  return q.codes.nbytes() + q.scales.nbytes() + q.zeros.nbytes() + q.scale_codes.nbytes() +
         q.scale_scales.nbytes() + (q.scale_codes.defined() ? sizeof(float) : 0);
}
}  // namespace

size_t Linear::weight_bytes() const {
  return std::visit(
      [](const auto& r) -> size_t {
        using R = std::decay_t<decltype(r)>;
        if constexpr (std::is_same_v<R, Dense>)
          return r.w.nbytes();
        else if constexpr (std::is_same_v<R, Quantized>)
          return quantized_bytes(r);
        else if constexpr (std::is_same_v<R, Int8WithOutliers>)
          return quantized_bytes(r.w) + r.outlier_cols.nbytes() + r.outlier_w.nbytes();
        else
          return quantized_bytes(r.w);
      },
      repr);
}

Linear make_dense(const std::string& name, Tensor w, int64_t in, int64_t out, bool transposed,
                  Tensor bias) {
  const int64_t rows = transposed ? in : out, cols = transposed ? out : in;
  MINFER_CHECK(w.ndim() == 2 && w.dim(0) == rows && w.dim(1) == cols,
               "tensor '{}': expected shape [{}, {}], found {}", name, rows, cols, w.shape_str());
  MINFER_CHECK(w.is_contiguous(), "tensor '{}': weight must be contiguous", name);
  MINFER_CHECK(w.dtype() == DType::F32 || w.dtype() == DType::F16 || w.dtype() == DType::BF16,
               "tensor '{}': dense weights must be F32, F16 or BF16, found {}", name,
               dtype_name(w.dtype()));
  if (bias.defined()) {
    MINFER_CHECK(bias.numel() == out, "tensor '{}' bias: expected {} values, found {}", name, out,
                 bias.numel());
    if (bias.dtype() != DType::F32) bias = bias.to_f32();
  }
  Linear l;
  l.name = name;
  l.in = in;
  l.out = out;
  l.repr = Dense{std::move(w), transposed};
  l.bias = std::move(bias);
  return l;
}

}  // namespace minfer
