// SparseBitmask: a pruned weight as a bitmask of the kept positions plus the kept values packed
// row by row, the layout of compressed-tensors' "sparse-bitmask" format (vLLM / llm-compressor:
// bitmask = numpy.packbits(W != 0, axis=-1, bitorder="little"), row_offsets = exclusive cumsum of
// the row counts, compressed = W[W != 0]). The packed values are a child Linear, so they can be
// f32, fp16, bf16 or int8 (weight-only, per row or per tensor): "wanda-50+int8" stores int8
// values under an f32-free mask.
//
// Legend: K = in, N = out, Kb = ceil(K / 8) mask bytes per row, Kv = the longest row's count of
// kept weights (the values child is [N, Kv]; shorter rows end with zeros).
// Bits per weight at sparsity p with b-bit values: 1 + (1 - p) b (+ 64 / K for the row offsets),
// e.g. 50 % and f32: 17.1; 50 % and int8: 5.1 (+ the int8 row scales).
#pragma once
#include "engine/formats/format.h"

namespace minfer {

struct SparseBitmask {
  int64_t in = 0;  // K, written as compressed-tensors' `<name>.shape` {N, K}; check() compares
  // U8 [N, Kb]: bit (k % 8) of byte k / 8 of row n is set when W[n, k] is kept (LSB first).
  Tensor bitmask;
  // I64 [N]: index of row n's first kept value in the row-major list of all kept values
  // (compressed-tensors' row_offsets; row n holds popcount(bitmask row n) values).
  Tensor row_offsets;
  // (in = Kv, out = N): row n's kept values in input order, then zeros up to Kv. Dense
  // F32/F16/BF16 or Quantized Int8 (per row or per tensor); no bias.
  Box<Linear> values;
};

template <>
struct FormatTraits<SparseBitmask> {
  static constexpr const char* repr = "sparse-bitmask";
  // Shapes and dtypes, the value format, the mask's padding bits clear, every row's popcount <= Kv
  // and row_offsets the exclusive cumsum of the popcounts (O(N * Kb)).
  static void check(const SparseBitmask& r, int64_t in, int64_t out, const std::string& name);
  static size_t bytes(const SparseBitmask& r);
  static void dequantize(const SparseBitmask& r, int64_t in, int64_t out, const std::string& name,
                         float* w);
  // "sparse<pct>" (kept share, rounded) then "+<value format>", e.g. "sparse50+int8".
  static std::string format(const SparseBitmask& r, int64_t in);
  // Tensor names follow compressed-tensors (BaseSparseCompressor.compress): the module's name,
  // `<m>` = `name` without a trailing ".weight" (`model.layers.0.mlp.down_proj`).
  // 2:4 with dense values (sparse_is_2of4): compressed-tensors' sparse-24-bitmask layout, below.
  // Other dense values: compressed-tensors layout `<m>.compressed` (1-D, the values' dtype),
  // `<m>.bitmask`, `<m>.shape` (I64 [2] = {N, K}), `<m>.row_offsets`. Quantized values:
  // the same mask tensors plus the child under `<m>.values` (meta "values").
  static void save(const SparseBitmask& r, const std::string& name, TensorSink& sink, json& meta);
  // Zero-copy when every row keeps the same count (row pruning, N:M): `compressed` is viewed as
  // [N, Kv]; otherwise the values are repacked with zero padding. Reads a compressed-tensors
  // checkpoint's four tensors as they are (meta {"repr": "sparse-bitmask"} is enough: Kv and the
  // value dtype come from the tensors). Also reads the names of folders written before they
  // followed compressed-tensors (`<name>.compressed`, `<name>` ending in ".weight").
  static SparseBitmask load(const TensorSource& src, const std::string& name, const json& meta,
                            int64_t in, int64_t out);
  static std::vector<const Linear*> children(const SparseBitmask& r) { return {r.values.get()}; }
};

// A SparseBitmask from f32 W [out, in] (row-major): the mask is W != 0 and the values child is
// Dense F32 [out, Kv]; quantize the child afterwards for other value formats.
SparseBitmask sparse_bitmask_from_dense(const float* w, int64_t in, int64_t out,
                                        const std::string& name);
// True when every group of 4 inputs of every row keeps exactly 2 (K % 4 == 0, values [N, K / 2]):
// such a weight with float values is saved in compressed-tensors' "sparse-24-bitmask" layout
// (Sparse24BitMaskTensor: `<name>.shape` I64 [2, 1], `<name>.compressed` [N, K / 2],
// `<name>.bitmask`; no row_offsets), and load reads that layout back as a view of the file.
bool sparse_is_2of4(const SparseBitmask& r);
// compressed-tensors names a sparse weight's tensors after its module, not the weight:
// BaseSparseCompressor.compress strips ".weight" (`model.layers.0.mlp.down_proj.weight` is stored
// as `model.layers.0.mlp.down_proj.compressed`, `.bitmask`, `.shape`, `.row_offsets`).
std::string sparse_module_name(const std::string& weight_name);
// True for the packed-value formats the sparse formats hold: Dense F32/F16/BF16 (not transposed)
// or Quantized Int8, symmetric, per row or per tensor.
bool sparse_values_ok(const Linear& values);
// Fraction of weights that are zero (not kept) in a SparseBitmask of shape (in, out).
double sparse_sparsity(const SparseBitmask& r, int64_t in, int64_t out);

}  // namespace minfer
