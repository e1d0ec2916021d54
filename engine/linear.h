// Linear: how one weight matrix is stored and multiplied. Models hold every projection as a
// Linear and call Backend::linear(y, x, W); backends, compression, save/load and the tests reach
// the representation through the one table below (LinearRepr) and each format's FormatTraits
// (engine/formats/format.h). Adding a format: docs/architecture.md, "Adding a weight format".
#pragma once
#include <memory>
#include <string>
#include <variant>

#include "engine/formats/codebook.h"
#include "engine/formats/dense.h"
#include "engine/formats/ggml_blocks.h"
#include "engine/formats/llm_int8.h"
#include "engine/formats/low_rank.h"
#include "engine/formats/quantized.h"
#include "engine/formats/sparse.h"
#include "engine/formats/sparse24.h"
#include "engine/formats/sparse_csr.h"
#include "engine/formats/w8a8.h"
#include "engine/tensor.h"

namespace minfer {

// The format table: every weight format, one alternative each. Every std::visit over it uses
// `overloaded` with one overload per alternative (or a generic lambda that calls
// FormatTraits<R>), so adding an alternative breaks the build at every site that must handle it.
using LinearRepr = std::variant<Dense, Quantized, Int8WithOutliers, W8A8, LowRank, SparseBitmask,
                                Sparse24, SparseCsr, GgmlBlocks, Codebook>;

template <typename... F>
struct overloaded : F... {
  using F::operator()...;
};
template <typename... F>
overloaded(F...) -> overloaded<F...>;

struct Linear {
  std::string name;  // HF tensor name of the weight, for messages and per-layer overrides
  int64_t in = 0;    // input features
  int64_t out = 0;   // output features
  LinearRepr repr;
  Tensor bias;  // [out] f32 (optional)
  // Backend-owned copy on a device (uploaded once; compressed formats stay compressed).
  std::shared_ptr<void> device_copy;

  // Bytes the weights occupy (codes, scales, child Linears, ...), not counting the bias.
  size_t weight_bytes() const;
};

// Calls f(std::type_identity<R>{}) for every format R of the table, in table order.
template <typename F>
void for_each_format(F&& f) {
  [&]<size_t... I>(std::index_sequence<I...>) {
    (f(std::type_identity<std::variant_alternative_t<I, LinearRepr>>{}), ...);
  }
  (std::make_index_sequence<std::variant_size_v<LinearRepr>>{});
}

// The "repr" tags of every registered format ("dense", "quantized", ...), in table order.
std::vector<std::string> registered_reprs();

// Builds a Dense Linear from a weight tensor, checking its shape against (out, in).
Linear make_dense(const std::string& name, Tensor w, int64_t in, int64_t out,
                  bool transposed = false, Tensor bias = {});
// A Linear named `name` of shape (in, out) holding `repr` (checked) and `bias` ([out] F32 or
// undefined).
Linear make_linear(const std::string& name, int64_t in, int64_t out, LinearRepr repr,
                   Tensor bias = {});

// The format's invariants and the bias ([out] F32); throws naming the tensor.
void check_linear(const Linear& l);
// The repr tag of l's format ("dense", "quantized", "llm-int8", "w8a8", "lowrank").
const char* linear_repr(const Linear& l);
// Canonical format name ("f32", "fp16", "int4-g128", "nf4-g64-dq", "w8a8-static", ...).
std::string linear_format(const Linear& l);
// f32 [out, in] weights: the reference every kernel of the format is tested against.
Tensor dequantize_weight(const Linear& l);
// Stored weight bytes * 8 / (in * out): codes (with row padding), scales, zero points, ...
double bits_per_weight(const Linear& l);
// Writes l's tensors under `name` (and `<name>.<field>`) into sink and returns its metadata:
// {"repr", "format", "in", "out", ...the format's own fields}. The bias is not written.
json save_linear(const Linear& l, const std::string& name, TensorSink& sink);
// The inverse of save_linear: the format named by meta["repr"], checked against (in, out).
Linear load_linear(const TensorSource& src, const std::string& name, const json& meta, int64_t in,
                   int64_t out);

}  // namespace minfer
