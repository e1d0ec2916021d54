// Codebook: weight sharing by k-means (Han et al. 2016, "Deep Compression"; SqueezeLLM, Kim et
// al. 2023, arXiv 2306.07629): every group of G weights along a row (by default the whole row)
// shares a table of 2^b centroids, and each weight is stored as a b-bit index into its group's
// table. w[n, k] = centroids[n, k / G, index(n, k)]. Encoder: compress/codebook.h. CPU kernels:
// kernels/cpu/codebook.h; CUDA: kernels/cuda/kernels.cu. Index packing:
// kernels/common/codebook_math.h (one LSB-first bit stream per row, padded to 64 weights).
//
// Centroids are stored in f16: 2^b * 16 / G bits per weight instead of 2^b * 32 / G, which at
// 4 bits and per-row tables halves the table's share (SmolLM2-135M, K = 576: 0.44 instead of
// 0.89 bits/weight); the encoder assigns every weight to the nearest f16-rounded centroid, so
// the rounding costs nothing in the assignment and f16 keeps 11 significant bits, far below the
// spacing of 2^b <= 256 clusters.
//
// Legend: K = in, N = out, Kp = K rounded up to 64, b = bits (2..8), G = group, Ng = ceil(K / G).
// Bits per weight: b * Kp / K + 2^b * 16 / G, e.g. kmeans4 per row at K = 576: 4 + 0.44 = 4.44;
// K = 1536: 4.17; kmeans4-g128: 4.125; kmeans3 per row at K = 576: 3.22; kmeans8 at K = 576: 15.1.
#pragma once
#include "engine/formats/format.h"

namespace minfer {

struct Codebook {
  int bits = 4;       // b: index bits, 2..8 (2^b centroids per table)
  int64_t group = 0;  // G: weights along a row sharing one table (== in: one table per row;
                      // otherwise a multiple of 16)
  Tensor indices;     // U8 [N, Kp * b / 8]: per row an LSB-first bit stream of Kp indices
  Tensor centroids;   // F16 [N, Ng, 2^b]: row n's table for weights [g G, (g + 1) G)
};

template <>
struct FormatTraits<Codebook> {
  static constexpr const char* repr = "codebook";
  // Bits in 2..8, group, tensor dtypes and shapes; O(1) (indices and centroids are not scanned:
  // every b-bit index is valid by construction, and non-finite centroids are the encoder's
  // concern, as for Quantized scales).
  static void check(const Codebook& c, int64_t in, int64_t out, const std::string& name);
  static size_t bytes(const Codebook& c);
  static void dequantize(const Codebook& c, int64_t in, int64_t out, const std::string& name,
                         float* w);
  // "kmeans<b>" (one table per row) or "kmeans<b>-g<G>": the method name that makes it.
  static std::string format(const Codebook& c, int64_t in);
  // `<name>.indices` (U8) and `<name>.centroids` (F16); meta "bits" and "group".
  static void save(const Codebook& c, const std::string& name, TensorSink& sink, json& meta);
  static Codebook load(const TensorSource& src, const std::string& name, const json& meta,
                       int64_t in, int64_t out);
  static std::vector<const Linear*> children(const Codebook&) { return {}; }
};

}  // namespace minfer
