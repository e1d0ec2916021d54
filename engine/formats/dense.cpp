#include "engine/formats/dense.h"

#include "engine/error.h"
#include "engine/formats/meta.h"
#include "engine/half.h"

namespace minfer {

const char* float_format_name(DType dt) {
  switch (dt) {
    case DType::F32:
      return "f32";
    case DType::F16:
      return "fp16";
    case DType::BF16:
      return "bf16";
    default:
      MINFER_FAIL("dtype {} is not a float weight format (f32, fp16, bf16)", dtype_name(dt));
  }
}

DType float_format_dtype(const std::string& name, const std::string& what) {
  if (name == "f32") return DType::F32;
  if (name == "fp16") return DType::F16;
  if (name == "bf16") return DType::BF16;
  MINFER_FAIL("{}: '{}' is not a float format (expected f32, fp16 or bf16)", what, name);
}

void FormatTraits<Dense>::check(const Dense& r, int64_t in, int64_t out, const std::string& name) {
  const int64_t rows = r.transposed ? in : out, cols = r.transposed ? out : in;
  MINFER_CHECK(r.w.defined() && r.w.ndim() == 2 && r.w.dim(0) == rows && r.w.dim(1) == cols,
               "tensor '{}': expected shape [{}, {}], found {}", name, rows, cols,
               r.w.defined() ? r.w.shape_str() : "undefined");
  MINFER_CHECK(r.w.is_contiguous(), "tensor '{}': weight must be contiguous", name);
  MINFER_CHECK(r.w.dtype() == DType::F32 || r.w.dtype() == DType::F16 || r.w.dtype() == DType::BF16,
               "tensor '{}': dense weights must be F32, F16 or BF16, found {}", name,
               dtype_name(r.w.dtype()));
}

void FormatTraits<Dense>::dequantize(const Dense& r, int64_t in, int64_t out,
                                     const std::string& name, float* w) {
  check(r, in, out, name);
  const Tensor f = r.w.to_f32();
  const float* s = f.data<float>();
  if (!r.transposed) {
    std::copy(s, s + in * out, w);
    return;
  }
  for (int64_t i = 0; i < in; ++i)
    for (int64_t j = 0; j < out; ++j) w[j * in + i] = s[i * out + j];
}

std::string FormatTraits<Dense>::format(const Dense& r, int64_t) {
  return float_format_name(r.w.dtype());
}

void FormatTraits<Dense>::save(const Dense& r, const std::string& name, TensorSink& sink,
                               json& meta) {
  sink.put(name, r.w);
  meta["transposed"] = r.transposed;
}

Dense FormatTraits<Dense>::load(const TensorSource& src, const std::string& name, const json& meta,
                                int64_t in, int64_t out) {
  Dense d;
  d.transposed = meta.is_object() && meta.contains("transposed")
                     ? meta_field<bool>(meta, "transposed", name)
                     : false;
  d.w = src.get(name);
  check(d, in, out, name);
  return d;
}

}  // namespace minfer
