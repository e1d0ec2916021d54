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
  Tensor blocks;      // U8 [N, row_bytes], contiguous: row n = its K / QK blocks in order
};

// The GGML types a GgmlBlocks may hold (block types with a dequantizer), in ggml_type order.
const std::vector<uint32_t>& ggml_blocks_types();
// Bytes of one row of K weights of `type` (K a multiple of the type's block size).
int64_t ggml_row_bytes(uint32_t type, int64_t K);

template <>
struct FormatTraits<GgmlBlocks> {
  static constexpr const char* repr = "ggml";
  // type one of ggml_blocks_types(), K a multiple of its block size, blocks contiguous U8
  // [N, row_bytes]. Block contents are not scanned (a NaN scale dequantizes to NaN as in ggml).
  static void check(const GgmlBlocks& r, int64_t in, int64_t out, const std::string& name);
  static size_t bytes(const GgmlBlocks& r) { return r.blocks.nbytes(); }
  // ggml's dequantize_row_* (bit-exact with gguf-py's numpy dequantization).
  static void dequantize(const GgmlBlocks& r, int64_t in, int64_t out, const std::string& name,
                         float* w);
  static std::string format(const GgmlBlocks& r, int64_t in);  // "q4_1", "q6_k", ...
  // The blocks as one U8 tensor `<name>` [N, row_bytes]; meta "ggml_type": "Q4_1".
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
