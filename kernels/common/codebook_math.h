// Codebook (weight sharing) index packing, written once for host and device code: the encoder
// (compress/codebook.cpp), the reference dequantize (engine/formats/codebook.cpp), the CPU kernels
// (kernels/cpu/codebook.cpp) and the CUDA kernel (kernels/cuda/kernels.cu) all read indices
// through these functions.
//
// Legend: K = in features, Kp = K rounded up to 64, b = index bits (2..8), G = group (weights
// along a row that share one table of 2^b centroids).
//
// Layout: each row of the [out, Kp * b / 8] U8 index tensor is one little-endian bit stream,
// LSB first: index k occupies bits [k b, k b + b) of the row. So 8 consecutive indices are
// exactly b bytes (b = 2, 4, 8 give the natural crumb / nibble / byte packings, low half first),
// and a kernel streams any width by loading b bytes per 8 weights (or 2 b bytes per 16) and
// shifting. The K..Kp-1 padding indices are 0.
#pragma once
#include <cstdint>

#include "kernels/common/hd.h"

namespace minfer::cb {

constexpr int kMinBits = 2, kMaxBits = 8;
constexpr int kChunk = 64;          // index rows are padded to a multiple of 64 weights
constexpr int kGroupMultiple = 16;  // a group other than the whole row is a multiple of 16

MINFER_HD constexpr int64_t padded_k(int64_t K) {
  return (K + kChunk - 1) / kChunk * kChunk;
}
// Bytes of one packed index row.
MINFER_HD constexpr int64_t row_bytes(int64_t K, int bits) {
  return padded_k(K) * bits / 8;
}

// Index k of a packed row (bits in 2..8: an index spans at most two bytes).
MINFER_HD inline unsigned index_at(const uint8_t* row, int64_t k, int bits) {
  const int64_t bit = k * bits;
  const int64_t byte = bit >> 3;
  const int sh = int(bit & 7);
  unsigned v = unsigned(row[byte]) >> sh;
  if (sh + bits > 8) v |= unsigned(row[byte + 1]) << (8 - sh);
  return v & ((1u << bits) - 1u);
}

// Writes index v (< 2^bits) at position k of a row whose bytes start zeroed.
inline void set_index(uint8_t* row, int64_t k, int bits, unsigned v) {
  const int64_t bit = k * bits;
  const int64_t byte = bit >> 3;
  const int sh = int(bit & 7);
  row[byte] = uint8_t(row[byte] | (v << sh));
  if (sh + bits > 8) row[byte + 1] = uint8_t(row[byte + 1] | (v >> (8 - sh)));
}

}  // namespace minfer::cb
