#include "engine/formats/ggml_blocks.h"

#include <algorithm>
#include <cctype>
#include <cstring>
#include <vector>

#include "engine/error.h"
#include "engine/formats/meta.h"
#include "engine/gguf.h"
#include "kernels/common/ggml_quants.h"

namespace minfer {

const std::vector<uint32_t>& ggml_blocks_types() {
  static const std::vector<uint32_t> t = {uint32_t(GgmlType::Q4_0), uint32_t(GgmlType::Q4_1),
                                          uint32_t(GgmlType::Q5_0), uint32_t(GgmlType::Q5_1),
                                          uint32_t(GgmlType::Q8_0), uint32_t(GgmlType::Q2_K),
                                          uint32_t(GgmlType::Q3_K), uint32_t(GgmlType::Q4_K),
                                          uint32_t(GgmlType::Q5_K), uint32_t(GgmlType::Q6_K)};
  return t;
}

int64_t ggml_row_bytes(uint32_t type, int64_t K) {
  const int64_t qk = int64_t(ggml_block_size(type));
  return qk ? K / qk * int64_t(ggml_type_size(type)) : 0;
}

namespace {
static_assert(uint32_t(ggml::BlockType::Q4_0) == uint32_t(GgmlType::Q4_0) &&
                  uint32_t(ggml::BlockType::Q4_1) == uint32_t(GgmlType::Q4_1) &&
                  uint32_t(ggml::BlockType::Q5_0) == uint32_t(GgmlType::Q5_0) &&
                  uint32_t(ggml::BlockType::Q5_1) == uint32_t(GgmlType::Q5_1) &&
                  uint32_t(ggml::BlockType::Q8_0) == uint32_t(GgmlType::Q8_0) &&
                  uint32_t(ggml::BlockType::Q2_K) == uint32_t(GgmlType::Q2_K) &&
                  uint32_t(ggml::BlockType::Q3_K) == uint32_t(GgmlType::Q3_K) &&
                  uint32_t(ggml::BlockType::Q4_K) == uint32_t(GgmlType::Q4_K) &&
                  uint32_t(ggml::BlockType::Q5_K) == uint32_t(GgmlType::Q5_K) &&
                  uint32_t(ggml::BlockType::Q6_K) == uint32_t(GgmlType::Q6_K),
              "ggml::BlockType and GgmlType disagree");
bool is_block_type(uint32_t t) {
  const auto& v = ggml_blocks_types();
  return std::find(v.begin(), v.end(), t) != v.end();
}
}  // namespace

void FormatTraits<GgmlBlocks>::check(const GgmlBlocks& r, int64_t in, int64_t out,
                                     const std::string& name) {
  MINFER_CHECK(is_block_type(r.type),
               "ggml '{}': type {} is not a GGML block type minfer runs (Q4_0, Q4_1, Q5_0, Q5_1, "
               "Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K)",
               name, ggml_type_name(r.type));
  const int64_t qk = int64_t(ggml_block_size(r.type));
  MINFER_CHECK(in % qk == 0, "ggml '{}': {} input features is not a multiple of the {} block of {}",
               name, in, ggml_type_name(r.type), qk);
  const int64_t rb = ggml_row_bytes(r.type, in);
  MINFER_CHECK(r.blocks.defined() && r.blocks.dtype() == DType::U8 && r.blocks.ndim() == 2 &&
                   r.blocks.dim(0) == out && r.blocks.dim(1) == rb && r.blocks.is_contiguous(),
               "ggml '{}': {} blocks must be contiguous U8 [{}, {}], found {} {}", name,
               ggml_type_name(r.type), out, rb,
               r.blocks.defined() ? dtype_name(r.blocks.dtype()) : "undefined",
               r.blocks.defined() ? r.blocks.shape_str() : "");
  MINFER_CHECK(r.interleave >= 1 && out % r.interleave == 0,
               "ggml '{}': rows interleaved by {} (must be >= 1 and divide the {} rows)", name,
               r.interleave, out);
}

const uint8_t* ggml_blocks_row(const GgmlBlocks& r, int64_t K, int64_t n, uint8_t* tmp) {
  const int64_t rb = r.blocks.dim(1);
  if (r.interleave == 1) return r.blocks.data<uint8_t>() + n * rb;
  const int64_t bs = int64_t(ggml_type_size(r.type)), nb = K / int64_t(ggml_block_size(r.type));
  for (int64_t b = 0; b < nb; ++b)
    std::memcpy(tmp + b * bs, ggml_block_ptr(r, nb, bs, n, b), size_t(bs));
  return tmp;
}

Tensor ggml_blocks_row_major(const GgmlBlocks& r, int64_t K) {
  if (r.interleave == 1) return r.blocks;
  const int64_t N = r.blocks.dim(0), rb = r.blocks.dim(1);
  Tensor c = Tensor::empty(DType::U8, {N, rb});
  uint8_t* d = c.data<uint8_t>();
  for (int64_t n = 0; n < N; ++n) {
    const uint8_t* row = ggml_blocks_row(r, K, n, d + n * rb);
    if (row != d + n * rb) std::memcpy(d + n * rb, row, size_t(rb));
  }
  return c;
}

GgmlBlocks ggml_blocks_interleave(const GgmlBlocks& r, int64_t K, int32_t R) {
  const int64_t N = r.blocks.dim(0), rb = r.blocks.dim(1);
  MINFER_CHECK(r.interleave == 1 && R >= 1 && N % R == 0,
               "ggml_blocks_interleave: {} rows (interleaved by {}) cannot be interleaved by {}", N,
               r.interleave, R);
  const int64_t bs = int64_t(ggml_type_size(r.type)), nb = K / int64_t(ggml_block_size(r.type));
  GgmlBlocks o;
  o.type = r.type;
  o.interleave = R;
  o.blocks = Tensor::empty(DType::U8, {N, rb});
  const uint8_t* s = r.blocks.data<uint8_t>();
  uint8_t* d = o.blocks.data<uint8_t>();
  for (int64_t n = 0; n < N; ++n)
    for (int64_t b = 0; b < nb; ++b)
      std::memcpy(d + ((n - n % R) * nb + b * R + n % R) * bs, s + n * rb + b * bs, size_t(bs));
  return o;
}

void FormatTraits<GgmlBlocks>::dequantize(const GgmlBlocks& r, int64_t in, int64_t out,
                                          const std::string& name, float* w) {
  check(r, in, out, name);
  const int64_t rb = r.blocks.dim(1);
#pragma omp parallel for schedule(static) if (in * out >= (int64_t(1) << 16))
  for (int64_t n = 0; n < out; ++n) {
    thread_local std::vector<uint8_t> tmp;
    tmp.resize(size_t(rb));
    dequantize_row(r.type, ggml_blocks_row(r, in, n, tmp.data()), w + n * in, in);
  }
}

std::string FormatTraits<GgmlBlocks>::format(const GgmlBlocks& r, int64_t) {
  std::string s = ggml_type_name(r.type);
  for (char& c : s) c = char(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

void FormatTraits<GgmlBlocks>::save(const GgmlBlocks& r, const std::string& name, TensorSink& sink,
                                    json& meta) {
  const int64_t K =
      r.blocks.dim(1) / int64_t(ggml_type_size(r.type)) * int64_t(ggml_block_size(r.type));
  sink.put(name, ggml_blocks_row_major(r, K));
  meta["ggml_type"] = ggml_type_name(r.type);
}

GgmlBlocks FormatTraits<GgmlBlocks>::load(const TensorSource& src, const std::string& name,
                                          const json& meta, int64_t in, int64_t out) {
  const std::string tn = meta_field<std::string>(meta, "ggml_type", name);
  GgmlBlocks r;
  bool found = false;
  for (uint32_t t : ggml_blocks_types())
    if (ggml_type_name(t) == tn) {
      r.type = t;
      found = true;
    }
  MINFER_CHECK(found, "ggml '{}': ggml_type '{}' is not a block type minfer runs", name, tn);
  r.blocks = src.get(name);
  const int64_t rb = ggml_row_bytes(r.type, in);
  if (r.blocks.dtype() == DType::U8 && r.blocks.ndim() == 1 && r.blocks.numel() == out * rb)
    r.blocks = r.blocks.view({out, rb});
  check(r, in, out, name);
  return r;
}

void ggml_blocks_rows(const GgmlBlocks& r, int64_t K, const int32_t* ids, int64_t n, float* y,
                      int64_t ldy) {
  std::vector<uint8_t> tmp(size_t(r.blocks.dim(1)));
  for (int64_t t = 0; t < n; ++t)
    dequantize_row(r.type, ggml_blocks_row(r, K, int64_t(ids[t]), tmp.data()), y + t * ldy, K);
}

}  // namespace minfer
