#include "engine/formats/sparse_csr.h"

#include <algorithm>
#include <bit>
#include <cmath>

#include "engine/error.h"
#include "engine/formats/meta.h"
#include "engine/linear.h"

namespace minfer {

namespace {

// A tensor's dtype and shape for messages ("undefined" when it is not there).
std::string describe(const Tensor& t) {
  return t.defined() ? std::string(dtype_name(t.dtype())) + " " + t.shape_str() : "undefined";
}

}  // namespace

void FormatTraits<SparseCsr>::check(const SparseCsr& r, int64_t in, int64_t out,
                                    const std::string& name) {
  MINFER_CHECK(r.in == in, "sparse-csr '{}': shape says {} input features, the weight has {}", name,
               r.in, in);
  MINFER_CHECK(in >= 1 && in <= SparseCsr::kMaxIn,
               "sparse-csr '{}': 16-bit column indices need 1 <= in <= {}, found in = {}", name,
               SparseCsr::kMaxIn, in);
  MINFER_CHECK(r.values, "sparse-csr '{}': the values child is missing", name);
  const Linear& v = *r.values;
  const int64_t kv = v.in;
  MINFER_CHECK(v.out == out && kv >= 1 && kv <= in,
               "sparse-csr '{}': values must be [{}, Kv] with 1 <= Kv <= {}, found [{}, {}]", name,
               out, in, v.out, kv);
  MINFER_CHECK(!v.bias.defined(), "sparse-csr '{}': the values carry no bias", name);
  MINFER_CHECK(sparse_values_ok(v),
               "sparse-csr '{}': values must be f32, fp16, bf16 or int8 (per row or per tensor), "
               "found {}",
               name, linear_format(v));
  check_linear(v);
  MINFER_CHECK(r.row_ptr.defined() && r.row_ptr.dtype() == DType::I64 && r.row_ptr.ndim() == 1 &&
                   r.row_ptr.numel() == out + 1 && r.row_ptr.is_contiguous(),
               "sparse-csr '{}': row_ptr must be contiguous I64 [{}], found {}", name, out + 1,
               describe(r.row_ptr));
  MINFER_CHECK(r.col.defined() && r.col.dtype() == DType::U16 && r.col.ndim() == 2 &&
                   r.col.dim(0) == out && r.col.dim(1) == kv && r.col.is_contiguous(),
               "sparse-csr '{}': col must be contiguous U16 [{}, {}], found {}", name, out, kv,
               describe(r.col));
  const int64_t* rp = r.row_ptr.data<int64_t>();
  const uint16_t* col = r.col.data<uint16_t>();
  MINFER_CHECK(rp[0] == 0, "sparse-csr '{}': row_ptr[0] is {}, expected 0", name, rp[0]);
  for (int64_t n = 0; n < out; ++n) {
    const int64_t c = rp[n + 1] - rp[n];
    MINFER_CHECK(c >= 0 && c <= kv,
                 "sparse-csr '{}': row {} keeps row_ptr[{}] - row_ptr[{}] = {} weights, expected "
                 "0..{} (the values per row)",
                 name, n, n + 1, n, c, kv);
    const uint16_t* cr = col + n * kv;
    for (int64_t j = 0; j < c; ++j) {
      MINFER_CHECK(cr[j] < in, "sparse-csr '{}': row {} entry {} has column {}, expected < {}",
                   name, n, j, cr[j], in);
      MINFER_CHECK(j == 0 || cr[j] > cr[j - 1],
                   "sparse-csr '{}': row {} columns must increase, found {} after {} at entry {}",
                   name, n, cr[j], cr[j - 1], j);
    }
    for (int64_t j = c; j < kv; ++j)
      MINFER_CHECK(cr[j] == 0, "sparse-csr '{}': row {} padding entry {} has column {}, expected 0",
                   name, n, j, cr[j]);
  }
}

size_t FormatTraits<SparseCsr>::bytes(const SparseCsr& r) {
  return r.row_ptr.nbytes() + r.col.nbytes() + (r.values ? r.values->weight_bytes() : 0);
}

void FormatTraits<SparseCsr>::dequantize(const SparseCsr& r, int64_t in, int64_t out,
                                         const std::string& name, float* w) {
  check(r, in, out, name);
  const Tensor v = dequantize_weight(*r.values);
  const float* pv = v.data<float>();
  const int64_t kv = r.values->in;
  const int64_t* rp = r.row_ptr.data<int64_t>();
  const uint16_t* col = r.col.data<uint16_t>();
  std::fill(w, w + in * out, 0.f);
  for (int64_t n = 0; n < out; ++n)
    for (int64_t j = 0; j < rp[n + 1] - rp[n]; ++j) w[n * in + col[n * kv + j]] = pv[n * kv + j];
}

double sparse_csr_sparsity(const SparseCsr& r, int64_t in, int64_t out) {
  return 1.0 - double(r.row_ptr.data<int64_t>()[out]) / double(in * out);
}

std::string FormatTraits<SparseCsr>::format(const SparseCsr& r, int64_t in) {
  const int64_t out = r.row_ptr.defined() ? r.row_ptr.numel() - 1 : 0;
  const long pct = out > 0 ? std::lround(100 * sparse_csr_sparsity(r, in, out)) : 0;
  return "csr" + std::to_string(pct) + "+" + (r.values ? linear_format(*r.values) : "?");
}

void FormatTraits<SparseCsr>::save(const SparseCsr& r, const std::string& weight_name,
                                   TensorSink& sink, json& meta) {
  // On disk the weight is the bitmask format's (compressed-tensors sparse-bitmask, or
  // sparse-24-bitmask for 2:4 float values): the same kept weights, the values shared.
  const int64_t out = r.row_ptr.numel() - 1;
  FormatTraits<SparseBitmask>::save(sparse_bitmask_from_csr(r, out), weight_name, sink, meta);
}

SparseCsr FormatTraits<SparseCsr>::load(const TensorSource& src, const std::string& weight_name,
                                        const json& meta, int64_t in, int64_t out) {
  MINFER_CHECK(in <= SparseCsr::kMaxIn,
               "sparse-csr '{}': 16-bit column indices need in <= {}, found in = {}", weight_name,
               SparseCsr::kMaxIn, in);
  const SparseBitmask b = FormatTraits<SparseBitmask>::load(src, weight_name, meta, in, out);
  SparseCsr r = sparse_csr_from_bitmask(b, in, out, weight_name);
  release_mapped_pages(b.bitmask);  // the columns replace the mask in memory
  return r;
}

SparseCsr sparse_csr_from_bitmask(const SparseBitmask& b, int64_t in, int64_t out,
                                  const std::string& name) {
  FormatTraits<SparseBitmask>::check(b, in, out, name);  // every row's count <= Kv
  MINFER_CHECK(in >= 1 && in <= SparseCsr::kMaxIn,
               "sparse-csr '{}': 16-bit column indices need 1 <= in <= {}, found in = {}", name,
               SparseCsr::kMaxIn, in);
  const int64_t kv = b.values->in, kb = b.bitmask.dim(1);
  SparseCsr r;
  r.in = in;
  r.row_ptr = Tensor::empty(DType::I64, {out + 1});
  r.col = Tensor::empty(DType::U16, {out, kv});
  int64_t* rp = r.row_ptr.data<int64_t>();
  uint16_t* col = r.col.data<uint16_t>();
  const uint8_t* m = b.bitmask.data<uint8_t>();
  rp[0] = 0;
  for (int64_t n = 0; n < out; ++n) {
    uint16_t* cr = col + n * kv;
    int64_t j = 0;
    for (int64_t i = 0; i < kb; ++i)
      for (unsigned bits = m[n * kb + i]; bits; bits &= bits - 1)
        cr[j++] = uint16_t(8 * i + std::countr_zero(bits));
    std::fill(cr + j, cr + kv, uint16_t(0));
    rp[n + 1] = rp[n] + j;
  }
  r.values = b.values;
  FormatTraits<SparseCsr>::check(r, in, out, name);
  return r;
}

SparseBitmask sparse_bitmask_from_csr(const SparseCsr& r, int64_t out) {
  const int64_t kb = (r.in + 7) / 8, kv = r.values->in;
  SparseBitmask b;
  b.in = r.in;
  b.bitmask = Tensor::empty(DType::U8, {out, kb});
  b.row_offsets = Tensor::empty(DType::I64, {out});
  uint8_t* m = b.bitmask.data<uint8_t>();
  std::fill(m, m + out * kb, uint8_t(0));
  const int64_t* rp = r.row_ptr.data<int64_t>();
  const uint16_t* col = r.col.data<uint16_t>();
  for (int64_t n = 0; n < out; ++n) {
    b.row_offsets.data<int64_t>()[n] = rp[n];
    for (int64_t j = 0; j < rp[n + 1] - rp[n]; ++j) {
      const int64_t k = col[n * kv + j];
      m[n * kb + k / 8] |= uint8_t(1u << (k % 8));
    }
  }
  b.values = r.values;
  return b;
}

SparseCsr sparse_csr_from_dense(const float* w, int64_t in, int64_t out, const std::string& name) {
  MINFER_CHECK(in >= 1 && in <= SparseCsr::kMaxIn,
               "sparse-csr '{}': 16-bit column indices need 1 <= in <= {}, found in = {}", name,
               SparseCsr::kMaxIn, in);
  SparseCsr r;
  r.in = in;
  r.row_ptr = Tensor::empty(DType::I64, {out + 1});
  int64_t* rp = r.row_ptr.data<int64_t>();
  rp[0] = 0;
  int64_t kv = 1;
  for (int64_t n = 0; n < out; ++n) {
    int64_t c = 0;
    for (int64_t k = 0; k < in; ++k) c += w[n * in + k] != 0.f;
    rp[n + 1] = rp[n] + c;
    kv = std::max(kv, c);
  }
  r.col = Tensor::empty(DType::U16, {out, kv});
  Tensor v = Tensor::empty(DType::F32, {out, kv});
  uint16_t* col = r.col.data<uint16_t>();
  float* pv = v.data<float>();
  std::fill(col, col + out * kv, uint16_t(0));
  std::fill(pv, pv + out * kv, 0.f);
  for (int64_t n = 0; n < out; ++n) {
    int64_t j = 0;
    for (int64_t k = 0; k < in; ++k)
      if (w[n * in + k] != 0.f) {
        col[n * kv + j] = uint16_t(k);
        pv[n * kv + j++] = w[n * in + k];
      }
  }
  r.values = Box<Linear>(make_linear(name + ".values", kv, out, Dense{v, false}));
  return r;
}

}  // namespace minfer
