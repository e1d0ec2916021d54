// SparseCsr: a pruned weight in compressed sparse row form with 16-bit column indices (CSR:
// Saad, "Iterative Methods for Sparse Linear Systems", 2nd ed., §3.4; scipy.sparse.csr_matrix's
// indptr / indices / data). Row n's kept weights are W[n, col[n, j]] = values[n, j] for
// j < row_ptr[n + 1] - row_ptr[n]. The packed values are a child Linear, as in SparseBitmask, so
// they can be f32, fp16, bf16 or int8 (weight-only, per row or per tensor): "magnitude-90+int8"
// stored as CSR holds int8 values.
//
// Legend: K = in (<= 65536: the columns are 16-bit), N = out, Kv = the longest row's count of kept
// weights. `col` and the values child are [N, Kv], each row's entries first and the rest padding
// (column 0, value 0): with the default per-row pruning every row keeps the same count and there
// is no padding (ELLPACK's layout, Kincaid et al. 1989, where the rows differ).
// Bytes per weight at sparsity p with b-bit values: (1 - p) (2 + b / 8) (+ 8 / K for row_ptr),
// e.g. 90 % and f32: 0.6 (dense 4), 90 % and int8: 0.3 (dense 1); SparseBitmask's
// 1 / 8 + (1 - p) b / 8 is smaller below 93.75 % sparsity. The CPU decode kernels do work per kept
// weight (a gather of x at the columns), where the bitmask kernels do work per 16 or 64 inputs,
// so CSR is the faster sparse format at high sparsity (docs/pruning.md, bench/bench_sparse.cpp).
//
// On disk CSR is the bitmask format's layout (engine/formats/sparse.h: compressed-tensors'
// sparse-bitmask, or sparse-24-bitmask for 2:4 float values), with "repr": "sparse-csr": the same
// kept weights, so vLLM-style loaders read the folder, files written by the Python package load
// as either format, and a weight converted to CSR at load (kernels/cpu/sparse_csr.h
// sparse_csr_upload) saves back byte for byte. compressed-tensors has no CSR format. Load rebuilds
// the columns from the mask (2 bytes per kept weight, the mask's file pages released); the values
// stay a view of the file where every row keeps the same count.
#pragma once
#include "engine/formats/format.h"
#include "engine/formats/sparse.h"

namespace minfer {

struct SparseCsr {
  // Largest K the 16-bit column indices address.
  static constexpr int64_t kMaxIn = int64_t(1) << 16;
  int64_t in = 0;  // K
  // I64 [N + 1]: row_ptr[0] = 0, non-decreasing; row n keeps row_ptr[n + 1] - row_ptr[n] <= Kv
  // weights.
  Tensor row_ptr;
  // U16 [N, Kv]: row n's kept inputs, strictly increasing, < K; padding entries 0.
  Tensor col;
  // (in = Kv, out = N): row n's kept values in input order, then zeros up to Kv. Dense
  // F32/F16/BF16 or Quantized Int8 (per row or per tensor); no bias.
  Box<Linear> values;
};

template <>
struct FormatTraits<SparseCsr> {
  static constexpr const char* repr = "sparse-csr";
  // Shapes and dtypes, K <= 65536, the value format, row_ptr (starts at 0, non-decreasing, every
  // count <= Kv), each row's columns strictly increasing and < K, padding columns 0 (O(N * Kv)).
  static void check(const SparseCsr& r, int64_t in, int64_t out, const std::string& name);
  static size_t bytes(const SparseCsr& r);
  static void dequantize(const SparseCsr& r, int64_t in, int64_t out, const std::string& name,
                         float* w);
  // "csr<pct>" (pruned share, rounded) then "+<value format>", e.g. "csr90+int8".
  static std::string format(const SparseCsr& r, int64_t in);
  // FormatTraits<SparseBitmask>::save of the same weight (sparse_bitmask_from_csr).
  static void save(const SparseCsr& r, const std::string& name, TensorSink& sink, json& meta);
  // FormatTraits<SparseBitmask>::load, then sparse_csr_from_bitmask. Errors: in > 65536, and the
  // bitmask format's.
  static SparseCsr load(const TensorSource& src, const std::string& name, const json& meta,
                        int64_t in, int64_t out);
  static std::vector<const Linear*> children(const SparseCsr& r) { return {r.values.get()}; }
};

// A SparseCsr from f32 W [out, in] (row-major): the kept weights are W != 0, the values child is
// Dense F32 [out, Kv]; quantize the child afterwards for other value formats. Errors name `name`:
// in > 65536.
SparseCsr sparse_csr_from_dense(const float* w, int64_t in, int64_t out, const std::string& name);
// The same weight as SparseCsr: the columns built from a checked SparseBitmask's mask, the values
// child shared (the bitmask's [N, Kv] packed values are CSR's). Errors name `name`: in > 65536,
// and the bitmask's own check.
SparseCsr sparse_csr_from_bitmask(const SparseBitmask& b, int64_t in, int64_t out,
                                  const std::string& name);
// The inverse (values shared): what save writes.
SparseBitmask sparse_bitmask_from_csr(const SparseCsr& r, int64_t out);
// Fraction of weights that are not kept in a SparseCsr of shape (in, out).
double sparse_csr_sparsity(const SparseCsr& r, int64_t in, int64_t out);

}  // namespace minfer
