// GgmlBlocks: a weight stored in one of GGML's block quantization formats (the types of a GGUF
// file: Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K ... Q6_K), kept as the file's bytes. Block layouts and
// per-block math: kernels/common/ggml_quants.h (ggml's ggml-common.h / ggml-quants.c); a GGUF
// loader points `blocks` straight into the mmap'd file (no copy).
//
// Legend: K = in, N = out, QK = weights per block (32, or 256 for the K-quants), B = bytes per
// block; each output row n is K / QK consecutive blocks (the ggml row layout), row_bytes =
// K / QK * B. Bits per weight = 8 B / QK: Q4_0 4.5, Q4_1 5, Q5_0 5.5, Q5_1 6, Q8_0 8.5, Q2_K
// 2.625, Q3_K 3.4375, Q4_K 4.5, Q5_K 5.5, Q6_K 6.5625.
// Kernels: kernels/cpu/ggml.h (CPU), kernels/cuda/kernels.cu (CUDA).
#pragma once
#include "engine/formats/format.h"

namespace minfer {

struct GgmlBlocks {
  uint32_t type = 0;  // ggml_type value (engine/gguf.h GgmlType): one of ggml_blocks_types()
  Tensor blocks;      // U8 [N, row_bytes], contiguous, in the layout `interleave` names
  // Row layout of `blocks`. 1: the ggml row layout (row n = its K / QK blocks in order, as in the
  // file). R > 1 (the CPU backend's repacked layout, kernels/cpu/ggml.h ggml_repack_for_cpu): the
  // rows in groups of R (N a multiple of R), each group stored block index first, so block b of
  // row n is at byte ((n - n % R) nb + b R + n % R) B, nb = K / QK blocks per row of B bytes.
  // A group's R rows are then one contiguous stream. Same bytes, same bits per weight; only the
  // order differs, and save() writes the ggml row layout.
  int32_t interleave = 1;
};

// Address of block b of row n (nb blocks of bs bytes per row) in either layout.
inline const uint8_t* ggml_block_ptr(const GgmlBlocks& r, int64_t nb, int64_t bs, int64_t n,
                                     int64_t b) {
  const int64_t R = r.interleave;
  return r.blocks.data<uint8_t>() + ((n - n % R) * nb + b * R + n % R) * bs;
}
// Row n's row_bytes bytes in the ggml row layout: a pointer into `blocks` (interleave 1) or
// gathered into tmp[row_bytes] (interleaved).
const uint8_t* ggml_blocks_row(const GgmlBlocks& r, int64_t K, int64_t n, uint8_t* tmp);
// The blocks in the ggml row layout: r.blocks itself (interleave 1) or a de-interleaved copy.
Tensor ggml_blocks_row_major(const GgmlBlocks& r, int64_t K);
// r (row layout, N = r.blocks.dim(0) a multiple of R) as a new interleaved host copy.
// Throws if r is already interleaved or N % R != 0.
GgmlBlocks ggml_blocks_interleave(const GgmlBlocks& r, int64_t K, int32_t R);

// The GGML types a GgmlBlocks may hold (block types with a dequantizer), in ggml_type order.
const std::vector<uint32_t>& ggml_blocks_types();
// Bytes of one row of K weights of `type` (K a multiple of the type's block size).
int64_t ggml_row_bytes(uint32_t type, int64_t K);

template <>
struct FormatTraits<GgmlBlocks> {
  static constexpr const char* repr = "ggml";
  // type one of ggml_blocks_types(), K a multiple of its block size, blocks contiguous U8
  // [N, row_bytes], interleave 1 or a divisor > 1 of N. Block contents are not scanned (a NaN scale
  // dequantizes to NaN as in ggml).
  static void check(const GgmlBlocks& r, int64_t in, int64_t out, const std::string& name);
  static size_t bytes(const GgmlBlocks& r) { return r.blocks.nbytes(); }
  // ggml's dequantize_row_* (bit-exact with gguf-py's numpy dequantization).
  static void dequantize(const GgmlBlocks& r, int64_t in, int64_t out, const std::string& name,
                         float* w);
  static std::string format(const GgmlBlocks& r, int64_t in);  // "q4_1", "q6_k", ...
  // The blocks as one U8 tensor `<name>` [N, row_bytes] in the ggml row layout (an interleaved
  // weight is de-interleaved); meta "ggml_type": "Q4_1".
  static void save(const GgmlBlocks& r, const std::string& name, TensorSink& sink, json& meta);
  static GgmlBlocks load(const TensorSource& src, const std::string& name, const json& meta,
                         int64_t in, int64_t out);
  static std::vector<const Linear*> children(const GgmlBlocks&) { return {}; }
};

// Dequantizes rows ids[0..n) of a [N, K] GgmlBlocks table into y (row stride ldy floats):
// an embedding lookup that touches only the rows it needs. Ids are checked by the caller.
void ggml_blocks_rows(const GgmlBlocks& r, int64_t K, const int32_t* ids, int64_t n, float* y,
                      int64_t ldy);

}  // namespace minfer
