#include "engine/formats/sparse24.h"

#include <bit>
#include <cstring>
#include <nlohmann/json.hpp>
#include <vector>

#include "engine/error.h"
#include "engine/formats/sparse24_convert.h"
#include "engine/linear.h"
#include "kernels/common/quant_math.h"

namespace minfer {

namespace {

int64_t index_bytes(int64_t in) {
  return (in + 7) / 8;
}

// The nibble of the group whose kept positions are the set bits of `bits` (exactly 2 of 4).
uint8_t code_of(unsigned bits) {
  const int i0 = std::countr_zero(bits), i1 = 31 - std::countl_zero(bits);
  return uint8_t(i0 | (i1 << 2));
}

// The group's kept positions as a 4-bit mask (code i0 | i1 << 2).
unsigned bits_of(unsigned code) {
  return (1u << (code & 3)) | (1u << (code >> 2));
}

// The index bytes [out, Kb] of a 2:4 bitmask [out, Kb] (compressed-tensors' packbits, LSB
// first): each nibble's two set bits become the group's code. A nibble that does not keep exactly
// 2 of 4 is an error naming the tensor, row and inputs.
Tensor indices_of_bitmask(const uint8_t* m, int64_t in, int64_t out, const std::string& name) {
  const int64_t kb = index_bytes(in), groups = in / 4;
  Tensor idx = Tensor::empty(DType::U8, {out, kb});
  uint8_t* p = idx.data<uint8_t>();
  for (int64_t n = 0; n < out; ++n)
    for (int64_t b = 0; b < kb; ++b) {
      uint8_t byte = 0;
      for (int h = 0; h < 2 && 2 * b + h < groups; ++h) {
        const unsigned bits = (m[n * kb + b] >> (4 * h)) & 0xf;
        MINFER_CHECK(std::popcount(bits) == 2,
                     "sparse-24 '{}': bitmask row {} inputs {}..{} keep {} of 4, expected 2", name,
                     n, 4 * (2 * b + h), 4 * (2 * b + h) + 3, std::popcount(bits));
        byte = uint8_t(byte | (code_of(bits) << (4 * h)));
      }
      p[n * kb + b] = byte;
    }
  return idx;
}

}  // namespace

Sparse24 sparse24_from_bitmask(const SparseBitmask& r, const std::string& name) {
  const int64_t out = r.bitmask.dim(0);
  MINFER_CHECK(r.in % 4 == 0 && r.in > 0 && r.values && r.values->in == r.in / 2,
               "sparse-24 '{}': a 2:4 weight needs in % 4 == 0 and in / 2 values per row, found "
               "in = {}, {} values per row",
               name, r.in, r.values ? r.values->in : 0);
  Sparse24 s;
  s.in = r.in;
  s.idx = indices_of_bitmask(r.bitmask.data<uint8_t>(), r.in, out, name);
  s.values = r.values;  // the same tensors: no copy of the values
  FormatTraits<Sparse24>::check(s, r.in, out, name);
  return s;
}

bool sparse_is_at_most_2of4(const SparseBitmask& r) {
  const int64_t out = r.bitmask.dim(0), kb = r.bitmask.dim(1);
  if (r.in % 4 != 0 || r.in <= 0 || !r.values || r.values->in > r.in / 2) return false;
  const uint8_t* m = r.bitmask.data<uint8_t>();
  for (int64_t i = 0; i < out * kb; ++i)
    if (std::popcount(unsigned(m[i] & 0xf)) > 2 || std::popcount(unsigned(m[i] >> 4)) > 2)
      return false;
  return true;
}

Sparse24 sparse24_from_bitmask_repacked(const SparseBitmask& r, const std::string& name) {
  const int64_t out = r.bitmask.dim(0), kb = r.bitmask.dim(1), groups = r.in / 4;
  MINFER_CHECK(r.in % 4 == 0 && r.in > 0 && r.values && r.values->in <= r.in / 2,
               "sparse-24 '{}': a 2:4 weight needs in % 4 == 0 and at most in / 2 values per row, "
               "found in = {}, {} values per row",
               name, r.in, r.values ? r.values->in : 0);
  const int64_t kv = r.in / 2, old_kv = r.values->in;
  const Linear& v = *r.values;
  const uint8_t* m = r.bitmask.data<uint8_t>();
  Sparse24 s;
  s.in = r.in;
  s.idx = Tensor::empty(DType::U8, {out, kb});
  uint8_t* p = s.idx.data<uint8_t>();
  std::memset(p, 0, size_t(out * kb));
  // src[n * kv + j]: the index of new value j of row n among the row's old values, -1 for a free
  // slot (value 0).
  std::vector<int64_t> src(size_t(out * kv));
  for (int64_t n = 0; n < out; ++n) {
    int64_t j = 0;  // old value index
    for (int64_t g = 0; g < groups; ++g) {
      const unsigned kept = (m[n * kb + g / 2] >> (4 * (g % 2))) & 0xf;
      MINFER_CHECK(std::popcount(kept) <= 2,
                   "sparse-24 '{}': bitmask row {} inputs {}..{} keep {} of 4, expected at most 2",
                   name, n, 4 * g, 4 * g + 3, std::popcount(kept));
      unsigned bits = kept;
      for (int i = 0; i < 4 && std::popcount(bits) < 2; ++i) bits |= 1u << i;  // free slots
      const uint8_t c = code_of(bits);
      p[n * kb + g / 2] = uint8_t(p[n * kb + g / 2] | (c << (4 * (g % 2))));
      for (int h = 0; h < 2; ++h) {
        const int pos = h ? c >> 2 : c & 3;
        src[size_t(n * kv + 2 * g + h)] = (kept >> pos) & 1 ? j++ : -1;
      }
    }
    MINFER_CHECK(j <= old_kv, "sparse-24 '{}': bitmask row {} keeps {} values, the values hold {}",
                 name, n, j, old_kv);
  }
  if (const Dense* d = std::get_if<Dense>(&v.repr)) {
    MINFER_CHECK(!d->transposed, "sparse-24 '{}': transposed values are not a sparse child", name);
    const size_t es = dtype_size(d->w.dtype());
    Tensor w = Tensor::empty(d->w.dtype(), {out, kv});
    const auto* from = static_cast<const uint8_t*>(d->w.raw());
    auto* to = static_cast<uint8_t*>(w.raw());
    std::memset(to, 0, size_t(out * kv) * es);  // +0 in f32, f16 and bf16
    for (int64_t n = 0; n < out; ++n)
      for (int64_t j = 0; j < kv; ++j)
        if (const int64_t o = src[size_t(n * kv + j)]; o >= 0)
          std::memcpy(to + size_t(n * kv + j) * es, from + size_t(n * old_kv + o) * es, es);
    s.values = Box<Linear>(make_linear(v.name, kv, out, Dense{w, false}));
  } else {
    const Quantized* q = std::get_if<Quantized>(&v.repr);
    MINFER_CHECK(q && q->scheme == QScheme::Int8 && (q->per_tensor || q->group == old_kv),
                 "sparse-24 '{}': values must be f32, fp16, bf16 or int8 (per row or per tensor), "
                 "found {}",
                 name, linear_format(v));
    Quantized nq = quantized_row_major(*q);  // the scales shared
    const Tensor old_codes = nq.codes;
    const int64_t rb_old = old_codes.dim(1), rb = qm::row_bytes(kv, 8);
    nq.codes = Tensor::empty(DType::U8, {out, rb});
    uint8_t* to = nq.codes.data<uint8_t>();
    const uint8_t* from = old_codes.data<uint8_t>();
    std::memset(to, 128, size_t(out * rb));  // code 128: weight 0 exactly (and the padding)
    for (int64_t n = 0; n < out; ++n)
      for (int64_t j = 0; j < kv; ++j)
        if (const int64_t o = src[size_t(n * kv + j)]; o >= 0)
          to[n * rb + j] = from[n * rb_old + o];
    nq.group = kv;  // one scale per row (or the tensor's one)
    s.values = Box<Linear>(make_linear(v.name, kv, out, std::move(nq)));
  }
  FormatTraits<Sparse24>::check(s, r.in, out, name);
  return s;
}

void FormatTraits<Sparse24>::check(const Sparse24& r, int64_t in, int64_t out,
                                   const std::string& name) {
  MINFER_CHECK(r.in == in, "sparse-24 '{}': shape says {} input features, the weight has {}", name,
               r.in, in);
  MINFER_CHECK(in % 4 == 0 && in > 0,
               "sparse-24 '{}': a 2:4 weight needs in % 4 == 0, found in = {}", name, in);
  const int64_t kb = index_bytes(in);
  MINFER_CHECK(r.idx.defined() && r.idx.dtype() == DType::U8 && r.idx.ndim() == 2 &&
                   r.idx.dim(0) == out && r.idx.dim(1) == kb && r.idx.is_contiguous(),
               "sparse-24 '{}': indices must be contiguous U8 [{}, {}], found {} {}", name, out, kb,
               r.idx.defined() ? dtype_name(r.idx.dtype()) : "undefined",
               r.idx.defined() ? r.idx.shape_str() : "");
  MINFER_CHECK(r.values, "sparse-24 '{}': the values child is missing", name);
  const Linear& v = *r.values;
  MINFER_CHECK(v.out == out && v.in == in / 2,
               "sparse-24 '{}': values must be [{}, {}], found [{}, {}]", name, out, in / 2, v.out,
               v.in);
  MINFER_CHECK(!v.bias.defined(), "sparse-24 '{}': the values carry no bias", name);
  MINFER_CHECK(sparse_values_ok(v),
               "sparse-24 '{}': values must be f32, fp16, bf16 or int8 (per row or per tensor), "
               "found {}",
               name, linear_format(v));
  check_linear(v);
  const uint8_t* p = r.idx.data<uint8_t>();
  const int64_t groups = in / 4;
  for (int64_t n = 0; n < out; ++n)
    for (int64_t b = 0; b < kb; ++b) {
      const unsigned byte = p[n * kb + b];
      for (int h = 0; h < 2; ++h) {
        const unsigned c = (byte >> (4 * h)) & 0xf;
        if (2 * b + h >= groups) {
          MINFER_CHECK(c == 0, "sparse-24 '{}': row {} has a nonzero padding index nibble", name,
                       n);
          continue;
        }
        MINFER_CHECK((c & 3) < (c >> 2),
                     "sparse-24 '{}': row {} inputs {}..{}: index code {:#x} does not name two "
                     "positions in increasing order",
                     name, n, 4 * (2 * b + h), 4 * (2 * b + h) + 3, c);
      }
    }
}

size_t FormatTraits<Sparse24>::bytes(const Sparse24& r) {
  return r.idx.nbytes() + (r.values ? r.values->weight_bytes() : 0);
}

void FormatTraits<Sparse24>::dequantize(const Sparse24& r, int64_t in, int64_t out,
                                        const std::string& name, float* w) {
  check(r, in, out, name);
  const Tensor v = dequantize_weight(*r.values);
  const float* pv = v.data<float>();
  const int64_t kb = index_bytes(in), kv = in / 2;
  const uint8_t* p = r.idx.data<uint8_t>();
  std::memset(w, 0, sizeof(float) * size_t(in * out));
  for (int64_t n = 0; n < out; ++n)
    for (int64_t g = 0; g < in / 4; ++g) {
      const unsigned c = (p[n * kb + g / 2] >> (4 * (g % 2))) & 0xf;
      w[n * in + 4 * g + (c & 3)] = pv[n * kv + 2 * g];
      w[n * in + 4 * g + (c >> 2)] = pv[n * kv + 2 * g + 1];
    }
}

std::string FormatTraits<Sparse24>::format(const Sparse24& r, int64_t) {
  return std::string("sparse24+") + (r.values ? linear_format(*r.values) : "?");
}

void FormatTraits<Sparse24>::save(const Sparse24& r, const std::string& weight_name,
                                  TensorSink& sink, json& meta) {
  const std::string name = sparse_module_name(weight_name);
  const int64_t out = r.idx.dim(0), kb = r.idx.dim(1);
  Tensor shape = Tensor::empty(DType::I64, {2, 1});
  shape.data<int64_t>()[0] = out;
  shape.data<int64_t>()[1] = r.in;
  sink.put(name + ".shape", shape);
  // The bitmask of the kept positions: each index nibble becomes its 4 mask bits.
  Tensor bm = Tensor::empty(DType::U8, {out, kb});
  const uint8_t* p = r.idx.data<uint8_t>();
  uint8_t* m = bm.data<uint8_t>();
  const int64_t groups = r.in / 4;
  for (int64_t n = 0; n < out; ++n)
    for (int64_t b = 0; b < kb; ++b) {
      const unsigned byte = p[n * kb + b];
      unsigned bits = bits_of(byte & 0xf);
      if (2 * b + 1 < groups) bits |= bits_of(byte >> 4) << 4;
      m[n * kb + b] = uint8_t(bits);
    }
  sink.put(name + ".bitmask", bm);
  meta["layout"] = "sparse-24-bitmask";
  if (const Dense* d = std::get_if<Dense>(&r.values->repr)) {
    sink.put(name + ".compressed", d->w);
    meta["values_dtype"] = float_format_name(d->w.dtype());
  } else {
    meta["values"] = save_linear(*r.values, name + ".values", sink);
  }
}

Sparse24 FormatTraits<Sparse24>::load(const TensorSource& src, const std::string& weight_name,
                                      const json& meta, int64_t in, int64_t out) {
  const std::string name = sparse_module_name(weight_name);
  MINFER_CHECK(in % 4 == 0 && in > 0,
               "sparse-24 '{}': a 2:4 weight needs in % 4 == 0, found in = {}", name, in);
  const Tensor shape = src.get(name + ".shape");
  MINFER_CHECK(shape.dtype() == DType::I64 && shape.numel() == 2 &&
                   shape.data<int64_t>()[0] == out && shape.data<int64_t>()[1] == in,
               "sparse-24 '{}': shape tensor must be I64 {{{}, {}}}", name, out, in);
  const int64_t kb = index_bytes(in);
  const Tensor bm = src.get(name + ".bitmask");
  MINFER_CHECK(bm.dtype() == DType::U8 && bm.numel() == out * kb,
               "sparse-24 '{}': bitmask must be U8 [{}, {}], found {} {}", name, out, kb,
               dtype_name(bm.dtype()), bm.shape_str());
  Sparse24 r;
  r.in = in;
  r.idx = indices_of_bitmask(bm.data<uint8_t>(), in, out, name);
  if (meta.is_object() && meta.contains("values")) {
    r.values = Box<Linear>(load_linear(src, name + ".values", meta["values"], in / 2, out));
  } else {
    const Tensor c = src.get(name + ".compressed");
    MINFER_CHECK(c.dtype() == DType::F32 || c.dtype() == DType::F16 || c.dtype() == DType::BF16,
                 "sparse-24 '{}': compressed values must be F32, F16 or BF16, found {}", name,
                 dtype_name(c.dtype()));
    MINFER_CHECK(c.numel() == out * (in / 2) && c.is_contiguous(),
                 "sparse-24 '{}': compressed must be [{}, {}], found {}", name, out, in / 2,
                 c.shape_str());
    r.values = Box<Linear>(
        make_linear(name + ".values", in / 2, out, Dense{c.view({out, in / 2}), false}));
  }
  check(r, in, out, name);
  return r;
}

bool is_2of4(const float* w, int64_t in, int64_t out) {
  if (in % 4 != 0 || in == 0) return false;
  for (int64_t i = 0; i < in * out; i += 4)
    if ((w[i] != 0.f) + (w[i + 1] != 0.f) + (w[i + 2] != 0.f) + (w[i + 3] != 0.f) > 2) return false;
  return true;
}

Sparse24 sparse24_from_dense(const float* w, int64_t in, int64_t out, const std::string& name) {
  MINFER_CHECK(in % 4 == 0 && in > 0,
               "tensor '{}': a 2:4 weight needs the row length to be a multiple of 4, found {}",
               name, in);
  const int64_t kb = index_bytes(in), kv = in / 2;
  Sparse24 r;
  r.in = in;
  r.idx = Tensor::empty(DType::U8, {out, kb});
  uint8_t* p = r.idx.data<uint8_t>();
  std::memset(p, 0, size_t(out * kb));
  Tensor v = Tensor::empty(DType::F32, {out, kv});
  float* pv = v.data<float>();
  for (int64_t n = 0; n < out; ++n)
    for (int64_t g = 0; g < in / 4; ++g) {
      const float* q = w + n * in + 4 * g;
      unsigned bits = 0;
      for (int i = 0; i < 4; ++i)
        if (q[i] != 0.f) bits |= 1u << i;
      MINFER_CHECK(std::popcount(bits) <= 2,
                   "tensor '{}': row {} inputs {}..{} hold {} nonzero weights; a 2:4 weight keeps "
                   "at most 2 of every 4",
                   name, n, 4 * g, 4 * g + 3, std::popcount(bits));
      for (int i = 0; i < 4 && std::popcount(bits) < 2; ++i) bits |= 1u << i;  // free slots
      const uint8_t c = code_of(bits);
      p[n * kb + g / 2] = uint8_t(p[n * kb + g / 2] | (c << (4 * (g % 2))));
      pv[n * kv + 2 * g] = q[c & 3];
      pv[n * kv + 2 * g + 1] = q[c >> 2];
    }
  r.values = Box<Linear>(make_linear(name + ".values", kv, out, Dense{v, false}));
  return r;
}

}  // namespace minfer
