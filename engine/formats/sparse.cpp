#include "engine/formats/sparse.h"

#include <bit>
#include <cmath>
#include <cstring>

#include "engine/error.h"
#include "engine/formats/meta.h"
#include "engine/linear.h"

namespace minfer {

namespace {

int64_t mask_bytes(int64_t in) {
  return (in + 7) / 8;
}

int64_t row_count(const uint8_t* row, int64_t kb) {
  int64_t c = 0;
  for (int64_t i = 0; i < kb; ++i) c += std::popcount(unsigned(row[i]));
  return c;
}

std::string module_prefix(const std::string& name) {
  return sparse_module_name(name);
}

bool value_format_ok(const Linear& v) {
  return sparse_values_ok(v);
}

}  // namespace

std::string sparse_module_name(const std::string& name) {
  static constexpr std::string_view w = ".weight";
  return name.size() > w.size() && name.ends_with(w) ? name.substr(0, name.size() - w.size())
                                                     : name;
}

bool sparse_values_ok(const Linear& v) {
  if (const Dense* d = std::get_if<Dense>(&v.repr)) return !d->transposed;
  if (const Quantized* q = std::get_if<Quantized>(&v.repr))
    return q->scheme == QScheme::Int8 && (q->per_tensor || q->group == v.in) && !q->asymmetric &&
           q->interleave == 1;
  return false;
}

void FormatTraits<SparseBitmask>::check(const SparseBitmask& r, int64_t in, int64_t out,
                                        const std::string& name) {
  MINFER_CHECK(r.in == in, "sparse '{}': shape says {} input features, the weight has {}", name,
               r.in, in);
  const int64_t kb = mask_bytes(in);
  MINFER_CHECK(r.bitmask.defined() && r.bitmask.dtype() == DType::U8 && r.bitmask.ndim() == 2 &&
                   r.bitmask.dim(0) == out && r.bitmask.dim(1) == kb && r.bitmask.is_contiguous(),
               "sparse '{}': bitmask must be contiguous U8 [{}, {}], found {} {}", name, out, kb,
               r.bitmask.defined() ? dtype_name(r.bitmask.dtype()) : "undefined",
               r.bitmask.defined() ? r.bitmask.shape_str() : "");
  MINFER_CHECK(r.row_offsets.defined() && r.row_offsets.dtype() == DType::I64 &&
                   r.row_offsets.numel() == out && r.row_offsets.is_contiguous(),
               "sparse '{}': row_offsets must be contiguous I64 [{}], found {} {}", name, out,
               r.row_offsets.defined() ? dtype_name(r.row_offsets.dtype()) : "undefined",
               r.row_offsets.defined() ? r.row_offsets.shape_str() : "");
  MINFER_CHECK(r.values, "sparse '{}': the values child is missing", name);
  const Linear& v = *r.values;
  MINFER_CHECK(v.out == out && v.in >= 1 && v.in <= in,
               "sparse '{}': values must be [{}, Kv] with 1 <= Kv <= {}, found [{}, {}]", name, out,
               in, v.out, v.in);
  MINFER_CHECK(!v.bias.defined(), "sparse '{}': the values carry no bias", name);
  MINFER_CHECK(value_format_ok(v),
               "sparse '{}': values must be f32, fp16, bf16 or int8 (per row or per tensor), "
               "found {}",
               name, linear_format(v));
  check_linear(v);
  const uint8_t* m = r.bitmask.data<uint8_t>();
  const int64_t* off = r.row_offsets.data<int64_t>();
  const uint8_t pad = in % 8 ? uint8_t(0xff << (in % 8)) : 0;
  int64_t acc = 0;
  for (int64_t n = 0; n < out; ++n) {
    const uint8_t* row = m + n * kb;
    MINFER_CHECK((row[kb - 1] & pad) == 0, "sparse '{}': row {} sets mask bits past column {}",
                 name, n, in);
    const int64_t c = row_count(row, kb);
    MINFER_CHECK(c <= v.in, "sparse '{}': row {} keeps {} weights, the values hold {} per row",
                 name, n, c, v.in);
    MINFER_CHECK(off[n] == acc,
                 "sparse '{}': row_offsets[{}] is {}, expected {} (the kept counts before it)",
                 name, n, off[n], acc);
    acc += c;
  }
}

size_t FormatTraits<SparseBitmask>::bytes(const SparseBitmask& r) {
  return r.bitmask.nbytes() + r.row_offsets.nbytes() + (r.values ? r.values->weight_bytes() : 0);
}

void FormatTraits<SparseBitmask>::dequantize(const SparseBitmask& r, int64_t in, int64_t out,
                                             const std::string& name, float* w) {
  check(r, in, out, name);
  const Tensor v = dequantize_weight(*r.values);
  const float* pv = v.data<float>();
  const int64_t kb = mask_bytes(in), kv = r.values->in;
  const uint8_t* m = r.bitmask.data<uint8_t>();
  for (int64_t n = 0; n < out; ++n) {
    int64_t j = 0;
    for (int64_t k = 0; k < in; ++k)
      w[n * in + k] = (m[n * kb + k / 8] >> (k % 8)) & 1 ? pv[n * kv + j++] : 0.f;
  }
}

double sparse_sparsity(const SparseBitmask& r, int64_t in, int64_t out) {
  const int64_t kb = mask_bytes(in);
  const int64_t kept = row_count(r.bitmask.data<uint8_t>(), kb * out);
  return 1.0 - double(kept) / double(in * out);
}

std::string FormatTraits<SparseBitmask>::format(const SparseBitmask& r, int64_t in) {
  const int64_t out = r.bitmask.defined() ? r.bitmask.dim(0) : 0;
  const long pct = out ? std::lround(100 * sparse_sparsity(r, in, out)) : 0;
  return "sparse" + std::to_string(pct) + "+" + (r.values ? linear_format(*r.values) : "?");
}

bool sparse_is_2of4(const SparseBitmask& r) {
  const int64_t out = r.bitmask.dim(0), kb = r.bitmask.dim(1);
  if (r.in % 4 != 0 || r.values->in != r.in / 2) return false;
  const uint8_t* m = r.bitmask.data<uint8_t>();
  for (int64_t i = 0; i < out * kb; ++i)
    if (std::popcount(unsigned(m[i] & 0xf)) != 2 ||
        (i % kb * 8 + 4 < r.in && std::popcount(unsigned(m[i] >> 4)) != 2))
      return false;
  return true;
}

void FormatTraits<SparseBitmask>::save(const SparseBitmask& r, const std::string& weight_name,
                                       TensorSink& sink, json& meta) {
  const std::string name = module_prefix(weight_name);
  const int64_t out = r.bitmask.dim(0);
  const Linear& v = *r.values;
  const Dense* dv = std::get_if<Dense>(&v.repr);
  if (dv && sparse_is_2of4(r)) {
    // compressed-tensors' Sparse24BitMaskTensor.dict: shape I64 [2, 1], compressed [N, K / 2]
    // (the values as stored, no copy), bitmask; no row_offsets.
    Tensor shape = Tensor::empty(DType::I64, {2, 1});
    shape.data<int64_t>()[0] = out;
    shape.data<int64_t>()[1] = r.in;
    sink.put(name + ".shape", shape);
    sink.put(name + ".compressed", dv->w);
    sink.put(name + ".bitmask", r.bitmask);
    meta["layout"] = "sparse-24-bitmask";
    meta["values_dtype"] = float_format_name(dv->w.dtype());
    return;
  }
  Tensor shape = Tensor::empty(DType::I64, {2});
  shape.data<int64_t>()[0] = out;
  shape.data<int64_t>()[1] = r.in;
  sink.put(name + ".shape", shape);
  sink.put(name + ".bitmask", r.bitmask);
  sink.put(name + ".row_offsets", r.row_offsets);
  meta["kv"] = v.in;
  if (const Dense* d = std::get_if<Dense>(&v.repr)) {
    // compressed-tensors: the kept values, row after row, without padding.
    const int64_t kb = r.bitmask.dim(1);
    const uint8_t* m = r.bitmask.data<uint8_t>();
    int64_t total = 0;
    bool uniform = true;
    for (int64_t n = 0; n < out; ++n) {
      const int64_t c = row_count(m + n * kb, kb);
      uniform = uniform && c == v.in;
      total += c;
    }
    if (uniform) {
      sink.put(name + ".compressed", d->w.view({out * v.in}));
    } else {
      const size_t es = dtype_size(d->w.dtype());
      Tensor c = Tensor::empty(d->w.dtype(), {std::max<int64_t>(total, 1)});
      const auto* src = static_cast<const uint8_t*>(d->w.raw());
      auto* dst = static_cast<uint8_t*>(c.raw());
      for (int64_t n = 0; n < out; ++n) {
        const int64_t cnt = row_count(m + n * kb, kb);
        std::memcpy(dst, src + size_t(n * v.in) * es, size_t(cnt) * es);
        dst += size_t(cnt) * es;
      }
      sink.put(name + ".compressed", total ? c : c.slice(0, 0, 0));
    }
    meta["values_dtype"] = float_format_name(d->w.dtype());
  } else {
    meta["values"] = save_linear(v, name + ".values", sink);
  }
}

SparseBitmask FormatTraits<SparseBitmask>::load(const TensorSource& src,
                                                const std::string& weight_name, const json& meta,
                                                int64_t in, int64_t out) {
  // compressed-tensors' names (`<module>.shape`); folders written before this change used the
  // weight's name (`<module>.weight.shape`) and are read too.
  const std::string name =
      !src.has(module_prefix(weight_name) + ".shape") && src.has(weight_name + ".shape")
          ? weight_name
          : module_prefix(weight_name);
  SparseBitmask r;
  r.in = in;
  const Tensor shape = src.get(name + ".shape");
  MINFER_CHECK(shape.dtype() == DType::I64 && shape.numel() == 2 &&
                   shape.data<int64_t>()[0] == out && shape.data<int64_t>()[1] == in,
               "sparse '{}': shape tensor must be I64 {{{}, {}}}", name, out, in);
  r.bitmask = src.get(name + ".bitmask");
  const int64_t kb = mask_bytes(in);
  MINFER_CHECK(r.bitmask.dtype() == DType::U8 && r.bitmask.numel() == out * kb,
               "sparse '{}': bitmask must be U8 [{}, {}], found {} {}", name, out, kb,
               dtype_name(r.bitmask.dtype()), r.bitmask.shape_str());
  if (!src.has(name + ".row_offsets")) {
    // compressed-tensors' sparse-24-bitmask: compressed [N, K / 2], every row keeps K / 2, two
    // of every 4 inputs. A view of the file.
    MINFER_CHECK(in % 4 == 0,
                 "sparse '{}': a sparse-24-bitmask weight needs in % 4 == 0, found in = {}", name,
                 in);
    const Tensor c = src.get(name + ".compressed");
    MINFER_CHECK(c.dtype() == DType::F32 || c.dtype() == DType::F16 || c.dtype() == DType::BF16,
                 "sparse '{}': compressed values must be F32, F16 or BF16, found {}", name,
                 dtype_name(c.dtype()));
    MINFER_CHECK(c.numel() == out * (in / 2),
                 "sparse '{}': sparse-24-bitmask compressed must be [{}, {}], found {}", name, out,
                 in / 2, c.shape_str());
    if (r.bitmask.ndim() != 2) r.bitmask = r.bitmask.view({out, kb});
    const uint8_t* m = r.bitmask.data<uint8_t>();
    for (int64_t n = 0; n < out; ++n)
      for (int64_t g = 0; g < in / 4; ++g) {
        const unsigned bits = (m[n * kb + g / 2] >> (4 * (g % 2))) & 0xf;
        MINFER_CHECK(std::popcount(bits) == 2,
                     "sparse '{}': sparse-24-bitmask row {} inputs {}..{} keep {} of 4, expected 2",
                     name, n, 4 * g, 4 * g + 3, std::popcount(bits));
      }
    r.row_offsets = Tensor::empty(DType::I64, {out});
    for (int64_t n = 0; n < out; ++n) r.row_offsets.data<int64_t>()[n] = n * (in / 2);
    r.values = Box<Linear>(
        make_linear(name + ".values", in / 2, out, Dense{c.view({out, in / 2}), false}));
    check(r, in, out, name);
    return r;
  }
  r.row_offsets = src.get(name + ".row_offsets");
  // Values per row: ours record it; a compressed-tensors checkpoint does not (the longest row).
  int64_t kv = 1;
  if (meta.is_object() && meta.contains("kv")) {
    kv = meta_field<int64_t>(meta, "kv", name);
  } else {
    for (int64_t n = 0; n < out; ++n)
      kv = std::max(kv, row_count(r.bitmask.data<uint8_t>() + n * kb, kb));
  }
  MINFER_CHECK(kv >= 1 && kv <= in, "sparse '{}': kv must be in [1, {}], found {}", name, in, kv);
  MINFER_CHECK(r.row_offsets.dtype() == DType::I64 && r.row_offsets.numel() == out,
               "sparse '{}': row_offsets must be I64 [{}], found {} {}", name, out,
               dtype_name(r.row_offsets.dtype()), r.row_offsets.shape_str());
  if (meta.contains("values")) {
    r.values = Box<Linear>(load_linear(src, name + ".values", meta["values"], kv, out));
  } else {
    const Tensor c = src.get(name + ".compressed");
    const DType dt =
        meta.is_object() && meta.contains("values_dtype")
            ? float_format_dtype(meta_field<std::string>(meta, "values_dtype", name), name)
            : c.dtype();
    MINFER_CHECK(dt == DType::F32 || dt == DType::F16 || dt == DType::BF16,
                 "sparse '{}': compressed values must be F32, F16 or BF16, found {}", name,
                 dtype_name(dt));
    MINFER_CHECK(c.dtype() == dt && c.ndim() == 1,
                 "sparse '{}': compressed must be 1-D {}, found {} {}", name, dtype_name(dt),
                 dtype_name(c.dtype()), c.shape_str());
    Tensor vals;
    if (c.numel() == out * kv) {  // every row keeps kv values: a view of the file, no copy
      vals = c.view({out, kv});
    } else {
      const int64_t* off = r.row_offsets.data<int64_t>();
      const size_t es = dtype_size(dt);
      vals = Tensor::empty(dt, {out, kv});
      std::memset(vals.raw(), 0, vals.nbytes());
      for (int64_t n = 0; n < out; ++n) {
        const int64_t end = n + 1 < out ? off[n + 1] : c.numel();
        MINFER_CHECK(off[n] >= 0 && off[n] <= end && end <= c.numel() && end - off[n] <= kv,
                     "sparse '{}': row_offsets[{}] = {} does not fit {} values of {} per row", name,
                     n, off[n], c.numel(), kv);
        std::memcpy(static_cast<uint8_t*>(vals.raw()) + size_t(n * kv) * es,
                    static_cast<const uint8_t*>(c.raw()) + size_t(off[n]) * es,
                    size_t(end - off[n]) * es);
      }
    }
    r.values = Box<Linear>(make_linear(name + ".values", kv, out, Dense{vals, false}));
  }
  if (r.bitmask.ndim() != 2) r.bitmask = r.bitmask.view({out, kb});
  check(r, in, out, name);
  return r;
}

SparseBitmask sparse_bitmask_from_dense(const float* w, int64_t in, int64_t out,
                                        const std::string& name) {
  const int64_t kb = mask_bytes(in);
  SparseBitmask r;
  r.in = in;
  r.bitmask = Tensor::empty(DType::U8, {out, kb});
  r.row_offsets = Tensor::empty(DType::I64, {out});
  uint8_t* m = r.bitmask.data<uint8_t>();
  std::memset(m, 0, size_t(out * kb));
  int64_t kv = 1, acc = 0;
  for (int64_t n = 0; n < out; ++n) {
    int64_t c = 0;
    for (int64_t k = 0; k < in; ++k)
      if (w[n * in + k] != 0.f) {
        m[n * kb + k / 8] |= uint8_t(1u << (k % 8));
        ++c;
      }
    r.row_offsets.data<int64_t>()[n] = acc;
    acc += c;
    kv = std::max(kv, c);
  }
  Tensor v = Tensor::empty(DType::F32, {out, kv});
  float* pv = v.data<float>();
  std::fill(pv, pv + out * kv, 0.f);
  for (int64_t n = 0; n < out; ++n) {
    int64_t j = 0;
    for (int64_t k = 0; k < in; ++k)
      if (w[n * in + k] != 0.f) pv[n * kv + j++] = w[n * in + k];
  }
  r.values = Box<Linear>(make_linear(name + ".values", kv, out, Dense{v, false}));
  return r;
}

}  // namespace minfer
