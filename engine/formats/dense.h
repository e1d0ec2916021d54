// Dense: a plain float weight matrix, F32, F16 or BF16 (16 / 16 / 32 bits per weight).
#pragma once
#include "engine/formats/format.h"

namespace minfer {

// transposed == false: w is [out, in] (torch nn.Linear layout)
// transposed == true:  w is [in, out] (GPT-2 Conv1D layout), read without copying
struct Dense {
  Tensor w;
  bool transposed = false;
};

template <>
struct FormatTraits<Dense> {
  static constexpr const char* repr = "dense";
  static void check(const Dense& r, int64_t in, int64_t out, const std::string& name);
  static size_t bytes(const Dense& r) { return r.w.nbytes(); }
  static void dequantize(const Dense& r, int64_t in, int64_t out, const std::string& name,
                         float* w);
  static std::string format(const Dense& r, int64_t in);  // "f32" | "fp16" | "bf16"
  static void save(const Dense& r, const std::string& name, TensorSink& sink, json& meta);
  static Dense load(const TensorSource& src, const std::string& name, const json& meta, int64_t in,
                    int64_t out);
  static std::vector<const Linear*> children(const Dense&) { return {}; }
};

// The float format names, one spelling each: F32 "f32", F16 "fp16", BF16 "bf16".
const char* float_format_name(DType dt);
// "f32" / "fp16" / "bf16" -> the dtype; throws for anything else (naming `what`).
DType float_format_dtype(const std::string& name, const std::string& what);

}  // namespace minfer
