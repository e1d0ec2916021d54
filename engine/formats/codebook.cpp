#include "engine/formats/codebook.h"

#include "engine/error.h"
#include "engine/formats/meta.h"
#include "engine/half.h"
#include "kernels/common/codebook_math.h"

namespace minfer {

void FormatTraits<Codebook>::check(const Codebook& c, int64_t in, int64_t out,
                                   const std::string& name) {
  MINFER_CHECK(c.bits >= cb::kMinBits && c.bits <= cb::kMaxBits,
               "codebook '{}': bits must be in {}..{}, found {}", name, cb::kMinBits, cb::kMaxBits,
               c.bits);
  MINFER_CHECK(c.group == in || (c.group > 0 && c.group < in && c.group % cb::kGroupMultiple == 0),
               "codebook '{}': group must be the row length {} or a multiple of {} below it, "
               "found {}",
               name, in, cb::kGroupMultiple, c.group);
  const int64_t rb = cb::row_bytes(in, c.bits);
  MINFER_CHECK(c.indices.defined() && c.indices.dtype() == DType::U8 && c.indices.ndim() == 2 &&
                   c.indices.dim(0) == out && c.indices.dim(1) == rb && c.indices.is_contiguous(),
               "codebook '{}': indices must be contiguous U8 [{}, {}], found {} {}", name, out, rb,
               c.indices.defined() ? dtype_name(c.indices.dtype()) : "undefined",
               c.indices.defined() ? c.indices.shape_str() : "");
  const int64_t ng = (in + c.group - 1) / c.group, k = int64_t(1) << c.bits;
  MINFER_CHECK(c.centroids.defined() && c.centroids.dtype() == DType::F16 &&
                   c.centroids.ndim() == 3 && c.centroids.dim(0) == out &&
                   c.centroids.dim(1) == ng && c.centroids.dim(2) == k &&
                   c.centroids.is_contiguous(),
               "codebook '{}': centroids must be contiguous F16 [{}, {}, {}], found {} {}", name,
               out, ng, k, c.centroids.defined() ? dtype_name(c.centroids.dtype()) : "undefined",
               c.centroids.defined() ? c.centroids.shape_str() : "");
}

size_t FormatTraits<Codebook>::bytes(const Codebook& c) {
  return c.indices.nbytes() + c.centroids.nbytes();
}

void FormatTraits<Codebook>::dequantize(const Codebook& c, int64_t in, int64_t out,
                                        const std::string& name, float* w) {
  check(c, in, out, name);
  const int64_t rb = c.indices.dim(1), ng = c.centroids.dim(1), kc = c.centroids.dim(2);
  const uint8_t* idx = c.indices.data<uint8_t>();
  const uint16_t* cen = c.centroids.data<uint16_t>();
  for (int64_t n = 0; n < out; ++n)
    for (int64_t k = 0; k < in; ++k) {
      const unsigned i = cb::index_at(idx + n * rb, k, c.bits);
      w[n * in + k] = f16_to_f32(cen[(n * ng + k / c.group) * kc + i]);
    }
}

std::string FormatTraits<Codebook>::format(const Codebook& c, int64_t in) {
  std::string s = "kmeans" + std::to_string(c.bits);
  if (c.group != in) s += "-g" + std::to_string(c.group);
  return s;
}

void FormatTraits<Codebook>::save(const Codebook& c, const std::string& name, TensorSink& sink,
                                  json& meta) {
  sink.put(name + ".indices", c.indices);
  sink.put(name + ".centroids", c.centroids);
  meta["bits"] = c.bits;
  meta["group"] = c.group;
}

Codebook FormatTraits<Codebook>::load(const TensorSource& src, const std::string& name,
                                      const json& meta, int64_t in, int64_t out) {
  Codebook c;
  c.bits = meta_field<int>(meta, "bits", name);
  c.group = meta_field<int64_t>(meta, "group", name);
  c.indices = src.get(name + ".indices");
  c.centroids = src.get(name + ".centroids");
  check(c, in, out, name);
  return c;
}

}  // namespace minfer
