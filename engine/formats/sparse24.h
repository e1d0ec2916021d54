// Sparse24: a 2:4 semi-structured pruned weight as packed values plus 2-bit indices, the layout
// of NVIDIA's sparse tensor cores (Mishra et al. 2021, "Accelerating Sparse Deep Neural Networks",
// arXiv:2104.08378, §3: per group of 4 consecutive inputs, 2 kept values and two 2-bit
// positions as metadata; cuSPARSELt's compressed matrix uses the same nibble per group). The
// packed values are a child Linear (f32, fp16, bf16, or int8 per row / per tensor), as in
// SparseBitmask, so "wanda-2:4+int8" stores int8 values.
//
// Legend: K = in (a multiple of 4), N = out, G = K / 4 groups per row, Kb = ceil(K / 8) index
// bytes per row. Byte b of row n holds group 2b in its low nibble and group 2b + 1 in its high
// nibble; a group's nibble is i0 | i1 << 2 with i0 < i1 the positions (0..3) of its two kept
// inputs, whose values are values[n, 2g] and values[n, 2g + 1]. A group with fewer than two
// nonzero weights keeps zeros in the free slots (as compressed-tensors' Sparse24BitMaskTensor,
// whose top-2 per group always names two positions). Bits per weight with b-bit values:
// 1 + b / 2 (the same index bits as SparseBitmask's mask): 17 for f32, 5 for int8 (+ row scales).
//
// Saved in compressed-tensors' "sparse-24-bitmask" layout (vLLM reads it): `<m>.shape` I64 [2, 1]
// = {N, K}, `<m>.bitmask` U8 [N, Kb] (the kept positions, LSB first), `<m>.compressed` [N, K / 2]
// for float values, or the int8 child under `<m>.values`; the indices are rebuilt from the
// bitmask at load. The kernels never expand a mask: they gather x at the indexed positions.
#pragma once
#include "engine/formats/format.h"
#include "engine/formats/sparse.h"

namespace minfer {

// Sparse24 rows with int8 values in one stream per group of 4 rows, built in memory at upload by
// the CPU backend (never saved). Group g = rows 4g .. 4g + 3, step s = inputs 32s .. 32s + 31 (16
// kept values a row), one 80-byte block per (g, s) in order g-major: the 4 rows' 4 index bytes of
// the step (row 4g first, bytes as in `idx`), then the 4 rows' 16 codes each as signed bytes
// w = u - 128 (u ^ 0x80), a row's 16 in the order kept 0-3, 8-11, 4-7, 12-15 (the lane order of
// the AVX2 kernel's gathered x). Bytes past a row's end (K % 32 != 0) are 0. No padding of the
// values to 64 codes: (K / 32 rounded up) * 20 bytes a row.
struct SparseRun {
  static constexpr int64_t kRows = 4, kStep = 32, kBlock = 80;
  Tensor bytes;  // U8 [N / 4, ceil(K / 32) * 80]
  bool defined() const { return bytes.defined(); }
};

struct Sparse24 {
  int64_t in = 0;  // K
  // U8 [N, Kb]: two 4-bit group codes per byte (above); padding nibble (K % 8 == 4) zero.
  Tensor idx;
  // (in = K / 2, out = N): the kept values in input order. Dense F32/F16/BF16 or Quantized Int8
  // (per row or per tensor, symmetric); no bias.
  Box<Linear> values;
  // The CPU backend's decode layout of int8 values (kernels/cpu/sparse24.h
  // sparse24_repack_for_cpu), undefined until it is built; `idx` and `values` stay the reference
  // (save, dequantize, CUDA).
  SparseRun run;
};

template <>
struct FormatTraits<Sparse24> {
  static constexpr const char* repr = "sparse-24";
  // Shapes, dtypes, the value format, every group code has i0 < i1, padding nibbles zero.
  static void check(const Sparse24& r, int64_t in, int64_t out, const std::string& name);
  static size_t bytes(const Sparse24& r);
  static void dequantize(const Sparse24& r, int64_t in, int64_t out, const std::string& name,
                         float* w);
  // "sparse24+<value format>", e.g. "sparse24+int8".
  static std::string format(const Sparse24& r, int64_t in);
  // compressed-tensors' sparse-24-bitmask tensors (above); meta {"layout": "sparse-24-bitmask"}
  // and "values_dtype" (float values) or "values" (the int8 child's metadata).
  static void save(const Sparse24& r, const std::string& name, TensorSink& sink, json& meta);
  // The inverse: the bitmask must keep exactly 2 of every 4 inputs (an error names the tensor,
  // row and inputs otherwise); float values are a view of the file.
  static Sparse24 load(const TensorSource& src, const std::string& name, const json& meta,
                       int64_t in, int64_t out);
  static std::vector<const Linear*> children(const Sparse24& r) { return {r.values.get()}; }
};

// A Sparse24 from f32 W [out, in] (row-major) with at most 2 nonzeros in every group of 4
// inputs: the nonzeros are kept in input order, a group with fewer fills its free slots with the
// lowest free positions (value 0). Values child: Dense F32 [out, in / 2]; quantize it afterwards
// for other value formats. Errors name `name`: in % 4 != 0, or the first group (row, inputs) that
// holds more than 2 nonzero weights.
Sparse24 sparse24_from_dense(const float* w, int64_t in, int64_t out, const std::string& name);
// The same 2:4 weight as a SparseBitmask `r` (every group of 4 inputs keeps exactly 2, as
// sparse_is_2of4 checks; e.g. a compressed-tensors sparse-24-bitmask tensor loaded as
// "sparse-bitmask") as Sparse24: the index bytes built from the bitmask, the values child shared
// (its tensors, file views included, are not copied). Errors name `name`: in % 4 != 0, values per
// row other than in / 2, or the first group (row, inputs) that does not keep exactly 2.
Sparse24 sparse24_from_bitmask(const SparseBitmask& r, const std::string& name);
// True when W [out, in] can be stored as Sparse24: in % 4 == 0 and at most 2 nonzeros per group.
bool is_2of4(const float* w, int64_t in, int64_t out);

}  // namespace minfer
