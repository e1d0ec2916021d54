#include "engine/formats/quantized.h"

#include <fmt/format.h>

#include <cstring>

#include "engine/error.h"
#include "engine/formats/meta.h"
#include "engine/half.h"
#include "kernels/common/quant_math.h"

namespace minfer {

const char* qscheme_name(QScheme s) {
  return qscheme_info(s).name;
}

int qscheme_bits(QScheme s) {
  return qscheme_info(s).bits;
}

QScheme qscheme_from_name(const std::string& name, const std::string& where) {
  for (QScheme s : kQSchemes)
    if (name == qscheme_name(s)) return s;
  MINFER_FAIL("{}: unknown quantization scheme '{}'", where, name);
}

void FormatTraits<Quantized>::check(const Quantized& q, int64_t in, int64_t out,
                                    const std::string& name) {
  MINFER_CHECK(in > 0 && out > 0, "quantized '{}': empty shape [{}, {}]", name, out, in);
  const QSchemeInfo info = qscheme_info(q.scheme);
  MINFER_CHECK(info.bits > 0, "quantized '{}': invalid scheme value {}", name, int(q.scheme));
  const char* s = info.name;
  MINFER_CHECK(q.group >= 1 && q.group <= in,
               "quantized '{}' ({}): group must be in [1, in = {}], found {}", name, s, in,
               q.group);
  if (q.group < in)
    MINFER_CHECK(info.group_multiple > 0 && q.group % info.group_multiple == 0,
                 "quantized '{}' ({}): {}", name, s,
                 info.group_multiple > 0
                     ? fmt::format("group {} < in {} must be a multiple of {}", q.group, in,
                                   info.group_multiple)
                     : fmt::format("expected one scale per row (group = in = {}), found group {}",
                                   in, q.group));
  MINFER_CHECK(!q.per_tensor || info.per_tensor,
               "quantized '{}' ({}): per_tensor is only defined for int8 and ternary", name, s);
  MINFER_CHECK(!q.asymmetric || info.asymmetric,
               "quantized '{}' ({}): asymmetric is only defined for int4", name, s);
  const int64_t rb = qm::row_bytes(in, qscheme_bits(q.scheme));
  const int64_t groups = qm::ceil_div(in, q.group);
  MINFER_CHECK(q.codes.defined() && q.codes.dtype() == DType::U8 && q.codes.ndim() == 2 &&
                   q.codes.dim(0) == out && q.codes.dim(1) == rb && q.codes.is_contiguous(),
               "quantized '{}' ({}): codes must be contiguous U8 [{}, {}], found {} {}", name, s,
               out, rb, q.codes.defined() ? dtype_name(q.codes.dtype()) : "undefined",
               q.codes.defined() ? q.codes.shape_str() : "");
  const bool dq = q.scale_codes.defined();
  if (dq) {
    MINFER_CHECK(info.double_quant && !q.scales.defined(),
                 "quantized '{}' ({}): double-quantized scales are only defined for nf4 and "
                 "replace `scales`",
                 name, s);
    const int64_t n = out * groups;
    MINFER_CHECK(q.scale_codes.dtype() == DType::I8 && q.scale_codes.numel() == n &&
                     q.scale_codes.is_contiguous(),
                 "quantized '{}': scale_codes must be I8 with {} values, found {} {}", name, n,
                 dtype_name(q.scale_codes.dtype()), q.scale_codes.shape_str());
    MINFER_CHECK(q.scale_scales.defined() && q.scale_scales.dtype() == DType::F32 &&
                     q.scale_scales.numel() == qm::ceil_div(n, qm::kDqBlock) &&
                     q.scale_scales.is_contiguous(),
                 "quantized '{}': scale_scales must be F32 with {} values, found {}", name,
                 qm::ceil_div(n, qm::kDqBlock),
                 q.scale_scales.defined() ? q.scale_scales.shape_str() : "undefined");
  } else {
    const int64_t n = q.per_tensor ? 1 : out * groups;
    MINFER_CHECK(q.scales.defined() && q.scales.dtype() == DType::F32 && q.scales.numel() == n &&
                     q.scales.is_contiguous(),
                 "quantized '{}' ({}): scales must be F32 with {} values ({}), found {} {}", name,
                 s, n, q.per_tensor ? "per tensor" : "[out, groups]",
                 q.scales.defined() ? dtype_name(q.scales.dtype()) : "undefined",
                 q.scales.defined() ? q.scales.shape_str() : "");
  }
  MINFER_CHECK(!q.f16_scales || (!dq && !q.per_tensor),
               "quantized '{}' ({}): fp16 scales are defined for per-group / per-row scales only",
               name, s);
  if (q.asymmetric)
    MINFER_CHECK(q.zeros.defined() && q.zeros.dtype() == DType::U8 &&
                     q.zeros.numel() == out * groups && q.zeros.is_contiguous(),
                 "quantized '{}' (int4 asymmetric): zeros must be U8 [{}, {}], found {}", name, out,
                 groups, q.zeros.defined() ? q.zeros.shape_str() : "undefined");
  else
    MINFER_CHECK(!q.zeros.defined(), "quantized '{}' ({}): zeros given for a symmetric format",
                 name, s);
  MINFER_CHECK(q.interleave >= 1 && out % q.interleave == 0,
               "quantized '{}' ({}): rows interleaved by {} (must be >= 1 and divide the {} rows)",
               name, s, q.interleave, out);
}

namespace {
// Bytes of one 64-weight chunk of a row, and the offset of row n's chunk c in the layout
// interleaved by R (nch chunks per row).
int64_t chunk_bytes(QScheme s) {
  return 8 * int64_t(qscheme_bits(s));
}
int64_t interleaved_offset(int64_t n, int64_t c, int64_t R, int64_t nch, int64_t cb) {
  return ((n - n % R) * nch + c * R + n % R) * cb;
}
}  // namespace

const uint8_t* quantized_codes_row(const Quantized& q, int64_t n, uint8_t* tmp) {
  const int64_t rb = q.codes.dim(1);
  const uint8_t* c = q.codes.data<uint8_t>();
  if (q.interleave == 1) return c + n * rb;
  const int64_t cb = chunk_bytes(q.scheme), nch = rb / cb;
  for (int64_t k = 0; k < nch; ++k)
    std::memcpy(tmp + k * cb, c + interleaved_offset(n, k, q.interleave, nch, cb), size_t(cb));
  if (q.scheme == QScheme::Int8)
    for (int64_t i = 0; i < rb; ++i) tmp[i] ^= 0x80;
  return tmp;
}

Quantized quantized_row_major(const Quantized& q) {
  if (q.interleave == 1) return q;
  Quantized o = q;
  o.interleave = 1;
  const int64_t N = q.codes.dim(0), rb = q.codes.dim(1);
  o.codes = Tensor::empty(DType::U8, {N, rb});
  uint8_t* d = o.codes.data<uint8_t>();
  for (int64_t n = 0; n < N; ++n) {
    const uint8_t* row = quantized_codes_row(q, n, d + n * rb);
    if (row != d + n * rb) std::memcpy(d + n * rb, row, size_t(rb));
  }
  return o;
}

Quantized quantized_interleave(const Quantized& q, int32_t R) {
  const int64_t N = q.codes.dim(0), rb = q.codes.dim(1);
  MINFER_CHECK(q.interleave == 1 && R >= 1 && N % R == 0,
               "quantized_interleave: {} rows (interleaved by {}) cannot be interleaved by {}", N,
               q.interleave, R);
  const int64_t cb = chunk_bytes(q.scheme), nch = rb / cb;
  MINFER_CHECK(nch * cb == rb, "quantized_interleave: row of {} bytes is not whole {}-byte chunks",
               rb, cb);
  Quantized o = q;
  o.interleave = R;
  o.codes = Tensor::empty(DType::U8, {N, rb});
  const uint8_t* s = q.codes.data<uint8_t>();
  uint8_t* d = o.codes.data<uint8_t>();
  const uint8_t flip = q.scheme == QScheme::Int8 ? 0x80 : 0;
  for (int64_t n = 0; n < N; ++n)
    for (int64_t k = 0; k < nch; ++k) {
      uint8_t* dst = d + interleaved_offset(n, k, R, nch, cb);
      const uint8_t* src = s + n * rb + k * cb;
      for (int64_t i = 0; i < cb; ++i) dst[i] = uint8_t(src[i] ^ flip);
    }
  return o;
}

void FormatTraits<Quantized>::dequantize(const Quantized& q, int64_t in, int64_t out,
                                         const std::string& name, float* W) {
  check(q, in, out, name);
  if (q.interleave != 1) return dequantize(quantized_row_major(q), in, out, name, W);
  const int64_t N = out, K = in, G = q.group, groups = qm::ceil_div(K, G);
  const int64_t rb = q.codes.dim(1);
  const uint8_t* codes = q.codes.data<uint8_t>();
  const float* scales = q.scales.defined() ? q.scales.data<float>() : nullptr;
  const uint8_t* zeros = q.zeros.defined() ? q.zeros.data<uint8_t>() : nullptr;
  const int8_t* sc = q.scale_codes.defined() ? q.scale_codes.data<int8_t>() : nullptr;
  const float* ss = sc ? q.scale_scales.data<float>() : nullptr;
#pragma omp parallel for if (N * K >= (1 << 16))
  for (int64_t n = 0; n < N; ++n) {
    const uint8_t* row = codes + n * rb;
    for (int64_t k = 0; k < K; ++k) {
      const int64_t g = k / G, i = n * groups + g;
      const float s = q.per_tensor ? scales[0]
                      : sc         ? qm::dq_block_scale(sc[i], ss[i / qm::kDqBlock], q.scale_offset)
                                   : scales[i];
      float v = 0;
      switch (q.scheme) {
        case QScheme::Int8:
          v = qm::dequant_uz(row[k], 128, s);
          break;
        case QScheme::Int4:
          v = qm::dequant_uz(qm::get_q4(row, k), zeros ? zeros[i] : 8, s);
          break;
        case QScheme::Int3:
          v = qm::dequant_uz(qm::get_q3(row, k), 4, s);
          break;
        case QScheme::NF4:
          v = s * qm::nf4_value(qm::get_q4(row, k));
          break;
        case QScheme::Binary:
          v = qm::dequant_uz(2 * qm::get_q1(row, k), 1, s);
          break;
        case QScheme::Ternary:
          v = qm::dequant_uz(qm::get_q2(row, k), 1, s);
          break;
      }
      W[n * K + k] = v;
    }
  }
}

size_t FormatTraits<Quantized>::bytes(const Quantized& q) {
  // fp16 scales: 2 bytes each as stored (F32 in memory for the kernels).
  return q.codes.nbytes() + q.scales.nbytes() / (q.f16_scales ? 2 : 1) + q.zeros.nbytes() +
         q.scale_codes.nbytes() + q.scale_scales.nbytes() +
         (q.scale_codes.defined() ? sizeof(float) : 0);
}

std::string FormatTraits<Quantized>::format(const Quantized& q, int64_t in) {
  std::string s = qscheme_name(q.scheme);
  if (q.scheme == QScheme::Int8 && q.per_tensor) return s + "-tensor";
  if (q.scheme == QScheme::Ternary) return q.per_tensor ? s : s + "-row";
  if (q.scheme == QScheme::Int4 || q.scheme == QScheme::Int3 || q.scheme == QScheme::NF4 ||
      q.group < in)
    s += fmt::format("-g{}", q.group);
  if (q.asymmetric) s += "-asym";
  if (q.scale_codes.defined()) s += "-dq";
  if (q.f16_scales) s += "-f16s";
  return s;
}

namespace {

// int3 in the file: compressed-tensors' `pack-quantized` layout for num_bits = 3
// (compressed_tensors/compressors/pack_quantized/helpers.py, pack_to_int32 with packed_dim = 1):
// I32 [out, ceil(in * 3 / 32)], row r holding the codes q + 4 of weight row r as one LSB-first
// bit stream (weight k at bits 3k .. 3k+2 of the little-endian words, 32 weights in 3 words), the
// bits past 3 * in zero. In memory (kernels/common/quant_math.h) the same stream runs to Kp (in
// rounded up to 64) with padding code 4, so for in % 64 == 0 the two are the same bytes and the
// file is used in place; other widths are repacked row by row. Little-endian hosts only (as
// safetensors).
constexpr const char* kInt3Packing = "pack-quantized";

int64_t int3_words(int64_t in) {
  return qm::ceil_div(in * 3, 32);
}

Tensor int3_to_file(const Quantized& q, int64_t in) {
  const int64_t out = q.codes.dim(0), rb = q.codes.dim(1), words = int3_words(in);
  if (qm::padded_k(in) == in)
    return Tensor(q.codes.storage(), q.codes.offset(), DType::I32, {out, words});
  Tensor t = Tensor::empty(DType::I32, {out, words});  // zero filled
  const uint8_t* src = q.codes.data<uint8_t>();
  uint8_t* dst = t.data<uint8_t>();
  for (int64_t n = 0; n < out; ++n)
    for (int64_t k = 0; k < in; ++k)
      qm::set_q3(dst + n * words * 4, k, qm::get_q3(src + n * rb, k));
  return t;
}

Tensor int3_from_file(const Tensor& t, int64_t in, int64_t out, const std::string& name) {
  const int64_t words = int3_words(in), rb = qm::row_bytes(in, 3);
  MINFER_CHECK(t.dtype() == DType::I32 && t.ndim() == 2 && t.dim(0) == out && t.dim(1) == words &&
                   t.is_contiguous(),
               "quantized '{}' (int3): '{}.codes' must be I32 [{}, {}] (compressed-tensors "
               "pack-quantized, 3 bits: 32 codes in 3 words), found {} {}",
               name, name, out, words, dtype_name(t.dtype()), t.shape_str());
  if (qm::padded_k(in) == in) return Tensor(t.storage(), t.offset(), DType::U8, {out, rb});
  Tensor c = Tensor::empty(DType::U8, {out, rb});
  const uint8_t* src = t.data<uint8_t>();
  uint8_t* dst = c.data<uint8_t>();
  for (int64_t n = 0; n < out; ++n)
    for (int64_t k = 0; k < rb * 8 / 3; ++k)
      qm::set_q3(dst + n * rb, k, k < in ? qm::get_q3(src + n * words * 4, k) : 4);
  return c;
}

}  // namespace

void FormatTraits<Quantized>::save(const Quantized& q, const std::string& name, TensorSink& sink,
                                   json& meta) {
  if (q.interleave != 1) return save(quantized_row_major(q), name, sink, meta);
  if (q.scheme == QScheme::Int3) {
    MINFER_CHECK(meta.contains("in") && meta["in"].is_number_integer(),
                 "quantized '{}' (int3): save needs the input width in the entry", name);
    sink.put(name + ".codes", int3_to_file(q, meta["in"].get<int64_t>()));
    meta["packing"] = kInt3Packing;
  } else {
    sink.put(name + ".codes", q.codes);
  }
  if (q.f16_scales) {
    Tensor h = Tensor::empty(DType::F16, q.scales.shape(), q.scales.ndim());
    f32_to_f16_n(q.scales.data<float>(), h.data<uint16_t>(), size_t(q.scales.numel()));
    sink.put(name + ".scales", h);
  } else {
    sink.put(name + ".scales", q.scales);
  }
  sink.put(name + ".zeros", q.zeros);
  sink.put(name + ".scale_codes", q.scale_codes);
  sink.put(name + ".scale_scales", q.scale_scales);
  meta["scheme"] = qscheme_name(q.scheme);
  meta["group"] = q.group;
  meta["per_tensor"] = q.per_tensor;
  meta["asymmetric"] = q.asymmetric;
  if (q.scale_codes.defined()) meta["scale_offset"] = q.scale_offset;
}

Quantized FormatTraits<Quantized>::load(const TensorSource& src, const std::string& name,
                                        const json& meta, int64_t in, int64_t out) {
  Quantized q;
  q.scheme = qscheme_from_name(meta_field<std::string>(meta, "scheme", name), name);
  q.group = meta_field<int64_t>(meta, "group", name);
  q.per_tensor = meta_field<bool>(meta, "per_tensor", name);
  q.asymmetric = meta_field<bool>(meta, "asymmetric", name);
  MINFER_CHECK(src.has(name + ".codes"), "'{}': missing tensor '{}.codes'", name, name);
  q.codes = src.get(name + ".codes");
  if (q.scheme == QScheme::Int3) {
    const std::string packing = meta_field<std::string>(meta, "packing", name);
    MINFER_CHECK(packing == kInt3Packing,
                 "quantized '{}' (int3): unknown code packing '{}' (expected '{}')", name, packing,
                 kInt3Packing);
    q.codes = int3_from_file(q.codes, in, out, name);
  }
  q.scales = src.maybe(name + ".scales");
  if (q.scales.defined() && q.scales.dtype() == DType::F16) {  // -f16s: F32 in memory
    MINFER_CHECK(q.scales.is_contiguous(), "quantized '{}': '{}.scales' is not contiguous", name,
                 name);
    q.scales = q.scales.to_f32();
    q.f16_scales = true;
  }
  q.zeros = src.maybe(name + ".zeros");
  q.scale_codes = src.maybe(name + ".scale_codes");
  q.scale_scales = src.maybe(name + ".scale_scales");
  if (q.scale_codes.defined()) q.scale_offset = meta_field<float>(meta, "scale_offset", name);
  check(q, in, out, name);
  return q;
}

}  // namespace minfer
