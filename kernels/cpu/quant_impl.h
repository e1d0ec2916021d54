// Internals shared by the quantized linear kernels: kernels/cpu/quant.cpp (dispatch, scalar
// reference, the prefill path) and its SIMD siblings quant_avx512.cpp / quant_avx2.cpp, of which
// the build's target ISA compiles exactly one (or none: the scalar path then runs). The row
// tiling at the bottom (run_all) is also used by kernels/cpu/quant_act*.cpp.
// Legend: T rows of x, K = in features, N = out features, Kp = K padded to 64, G = weight group,
// RW = weight rows and R = x rows one kernel call computes.
#pragma once
#include <algorithm>
#include <cstdint>
#include <vector>

#include "engine/linear.h"
#include "engine/thread_pool.h"
#include "kernels/common/quant_math.h"

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VNNI__)
#define MINFER_Q_AVX512 1
#elif defined(__AVX2__) && defined(__FMA__)
#define MINFER_Q_AVX2 1
#endif

namespace minfer::qcpu {

// A run of weights [k0, k1) of every row that shares one scale (and zero point): k0 and k1 are
// multiples of 32 (groups are multiples of 32, or one group per row), k1 <= Kp. The last span
// also covers the row padding K..Kp, whose codes dequantize to 0 (binary: to +-s, met by x = 0).
struct Span {
  int64_t k0, k1, g;
};

// Everything a kernel reads about one call: the weight matrix and the prepared activations.
struct QArgs {
  QScheme scheme = QScheme::Int8;
  const uint8_t* codes = nullptr;  // [N, rb]
  int64_t rb = 0, K = 0, Kp = 0, G = 0, groups = 0;
  bool per_tensor = false;
  const float* scales = nullptr;   // [N, groups] or [1] (per tensor); null when double-quantized
  const uint8_t* zeros = nullptr;  // [N, groups] (asymmetric int4) or null
  const int8_t* sc = nullptr;      // NF4 double quant: [N * groups] codes
  const float* ss = nullptr;       // NF4 double quant: [ceil(N * groups / 256)] scales
  float offset = 0;
  const Span* spans = nullptr;  // [nspans] in order, covering [0, Kp)
  int64_t nspans = 0;
  // Every span starts and ends on a 64-weight chunk (one scale per row or tensor, or groups a
  // multiple of 64); false for groups of an odd number of 32s (32, 96, ...), where the two halves
  // of a chunk may belong to different groups.
  bool chunk_spans = true;
  const float* xp = nullptr;  // [T, Kp] x copied, zero padded past K (decode kernels only)
  // Rows interleaved by il (Quantized::interleave): chunk c (64 weights, cb = 8 * bits bytes) of
  // row n at codes + (n - n % il) * rb + (c * il + n % il) * cb; int8 codes then hold u - 128.
  int64_t il = 1;
  // 8-bit activations (the q8 path, kernels/cpu/quant.h quantized_linear_q8; null: f32 from xp):
  // x per block of 32 as qm::quantize_act_block, xq [T, Kp] codes, xd [T, Kp / 64, 16] the block
  // scales laid out as the kernel multiplies the int32 lanes of a 64-weight chunk (lanes 0..7 the
  // scale of its first block of 32, lanes 8..15 of its second), xs [T, Kp / 4] the negated sums of
  // each 4 consecutive codes (one int32 lane of vpdpbusd: -z xs removes the weight zero point).
  const int8_t* xq = nullptr;
  const float* xd = nullptr;
  const int32_t* xs = nullptr;

  // Chunk 0 of row n, and the distance from one chunk of a row to its next.
  const uint8_t* row_base(int64_t n) const {
    return il == 1 ? codes + n * rb : codes + (n - n % il) * rb + (n % il) * (rb / (Kp / 64));
  }
  int64_t chunk_stride() const { return il * (rb / (Kp / 64)); }

  float scale(int64_t n, int64_t g) const {
    if (per_tensor) return scales[0];
    const int64_t i = n * groups + g;
    return sc ? qm::dq_block_scale(sc[i], ss[i / qm::kDqBlock], offset) : scales[i];
  }
  int zero(int64_t n, int64_t g) const;
  // The factor the q8 path multiplies each output by, once: NF4 codes enter its integer sums as
  // qm::nf4_level (kNF4LevelScale · the NF4 value), so 2^-13 there (exact); 1 elsewhere.
  float q8_out_factor() const {
    return scheme == QScheme::NF4 ? 1.f / float(qm::kNF4LevelScale) : 1.f;
  }
};

// Zero point of the stored code u (asymmetric int4 reads `zeros` instead; NF4 has none).
constexpr int zero_code(QScheme s) {
  return s == QScheme::Int8 ? 128 : s == QScheme::Int4 ? 8 : s == QScheme::Int3 ? 4 : 1;
}
inline int QArgs::zero(int64_t n, int64_t g) const {
  return zeros ? zeros[n * groups + g] : zero_code(scheme);
}
constexpr int code_bits(QScheme s) {
  return s == QScheme::Int8      ? 8
         : s == QScheme::Int4    ? 4
         : s == QScheme::Int3    ? 3
         : s == QScheme::Ternary ? 2
                                 : 1;
}

// Weights per chunk of a decode loop on the thread pool: ~32K weights (a few microseconds of
// work) or more, so a matrix under 64K weights runs on one thread (waking a second costs more).
constexpr int64_t kDecodeChunk = int64_t(1) << 15;

// In the SIMD files' entry points (a QArgs named a in scope): return F<scheme, SGN>(args...) for
// a's scheme, SGN = int8 codes stored signed (u - 128: rows interleaved, QArgs::il != 1).
#define MINFER_Q_DISPATCH(F, ...)                              \
  switch (a.scheme) {                                          \
    case QScheme::Int8:                                        \
      return a.il != 1 ? F<QScheme::Int8, true>(__VA_ARGS__)   \
                       : F<QScheme::Int8, false>(__VA_ARGS__); \
    case QScheme::Int4:                                        \
      return F<QScheme::Int4, false>(__VA_ARGS__);             \
    case QScheme::Int3:                                        \
      return F<QScheme::Int3, false>(__VA_ARGS__);             \
    case QScheme::NF4:                                         \
      return F<QScheme::NF4, false>(__VA_ARGS__);              \
    case QScheme::Ternary:                                     \
      return F<QScheme::Ternary, false>(__VA_ARGS__);          \
    case QScheme::Binary:                                      \
      return F<QScheme::Binary, false>(__VA_ARGS__);           \
  }

// A decode loop over rows [0, N) on the thread pool, each row costing work_per_row: fn(n0, n1)
// on blocks of whole groups of 4 rows, so that a thread's rows start on a group of the
// interleaved layout (Quantized::interleave 4) and its kernels stream whole groups (a block
// starting inside a group would read that group's first rows one at a time). Rows give the same
// bits however they are split.
template <class F>
void parallel_rows(int64_t N, int64_t work_per_row, F&& fn) {
  parallel_for(qm::ceil_div(N, 4), 4 * work_per_row, kDecodeChunk,
               [&](int64_t g0, int64_t g1) { fn(4 * g0, std::min(N, 4 * g1)); });
}

// ---- Row tiling shared by the SIMD files. Kern<RW, R>::run(n0, t0, args...) computes
// y[t0 .. t0+R) x [n0 .. n0+RW).

template <template <int, int> class Kern, int RW, int R, class... A>
inline void run_rows(int64_t n0, int64_t n1, int64_t t0, const A&... args) {
  int64_t n = n0;
  for (; n + RW <= n1; n += RW) Kern<RW, R>::run(n, t0, args...);
  for (; n < n1; ++n) Kern<1, R>::run(n, t0, args...);
}

// Rows n0..n1 against x rows t0..t0+R, R <= 4. Cold weights (decode, or the first pass over a
// tile): one weight row at a time, so they stream through memory strictly in order; decode is
// bound by the cache lines in flight, and interleaving 4 rows of ~600 bytes halves the DRAM
// bandwidth the prefetchers sustain (measured on Zen 4). Cached weights (later passes over a
// prefill tile): 4 or 2 weight rows share each x load (register budget: RW * R accumulators
// twice, plus operands).
template <template <int, int> class Kern, class... A>
inline void run_block(int64_t n0, int64_t n1, int64_t t0, int64_t R, bool cold, const A&... args) {
  switch (R) {
    case 1:
      if (cold)
        run_rows<Kern, 1, 1>(n0, n1, t0, args...);
      else
        run_rows<Kern, 4, 1>(n0, n1, t0, args...);
      break;
    case 2:
      if (cold)
        run_rows<Kern, 1, 2>(n0, n1, t0, args...);
      else
        run_rows<Kern, 4, 2>(n0, n1, t0, args...);
      break;
    case 3:
      if (cold)
        run_rows<Kern, 1, 3>(n0, n1, t0, args...);
      else
        run_rows<Kern, 2, 3>(n0, n1, t0, args...);
      break;
    default:
      if (cold)
        run_rows<Kern, 1, 4>(n0, n1, t0, args...);
      else
        run_rows<Kern, 2, 4>(n0, n1, t0, args...);
      break;
  }
}

// The whole product (T <= 15 rows of x: decode and short prompts, on the thread pool). T <= 4: one
// pass over W in contiguous blocks of 4-row groups. T > 4: W in tiles of kTile rows, each read
// from memory once and kept in cache while every group of 4 x rows passes over it.
template <template <int, int> class Kern, class... A>
void run_all(int64_t N, int64_t T, int64_t Kp, const A&... args) {
  if (T <= 4) {
    const int64_t groups = qm::ceil_div(N, 4);
    parallel_for(groups, 4 * Kp, kDecodeChunk, [&](int64_t g0, int64_t g1) {
      for (int64_t g = g0; g < g1; ++g)
        run_block<Kern>(g * 4, std::min(N, g * 4 + 4), 0, T, true, args...);
    });
    return;
  }
  constexpr int64_t kTile = 16;
  const int64_t tiles = qm::ceil_div(N, kTile);
  parallel_for(tiles, kTile * Kp * T, kDecodeChunk, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t n1 = std::min(N, (i + 1) * kTile);
      for (int64_t t0 = 0; t0 < T; t0 += 4)
        run_block<Kern>(i * kTile, n1, t0, std::min<int64_t>(4, T - t0), t0 == 0, args...);
    }
  });
}

// ---- Implemented by the one SIMD file of this build.
#if defined(MINFER_Q_AVX512) || defined(MINFER_Q_AVX2)
extern const char* const kSimdIsa;
// y[T, N] for T <= 15 from a.xp (T <= 4: one pass over W; more: tiles of W kept in cache).
void simd_linear_fused(const QArgs& a, int64_t T, float* y, int64_t ldy, int64_t N);
// Decode rows n0..n1 of y[T, N] for T in 1..4 from a.xp, single-threaded: exactly what
// simd_linear_fused computes for those rows (op groups cut one pool loop over several matrices).
void simd_decode_rows(const QArgs& a, int64_t T, int64_t n0, int64_t n1, float* y, int64_t ldy);
// Rows n0..n0+nr of W as f32 [nr, K] (row stride K), single-threaded.
void simd_dequant_rows(const QArgs& a, int64_t n0, int64_t nr, float* dst);
#endif
#if defined(MINFER_Q_AVX512) || defined(MINFER_Q_AVX2)
// The q8 path (int8 / int4 weights, and NF4 on AVX2; a.xq, a.xd, a.xs set): rows n0..n1 of
// y[T, N] for T in 1..4, single-threaded. Each int32 lane holds an exact integer sum Σ w q over 4
// weights of one block of 32 (w = u - z, or the NF4 level qm::nf4_level(u)); the lanes times the
// block scales accumulate in f32, times the weight scale at the end of each span, the sum times
// QArgs::q8_out_factor. AVX-512 VNNI: one vpdpbusd per chunk and token of the unsigned codes with
// the activation codes, started from -z Σq (a.xs); spans on 64-weight chunks only
// (a.chunk_spans) and no NF4 (for the others the reference runs, MINFER_QUANT_ACT=q8 only). AVX2:
// vpmaddubsw of |w| with q carrying w's sign, then vpmaddwd by 1 (llama.cpp's Q4_0 · Q8_0 trick;
// no int16 sum saturates: |w| <= 128, |q| <= 127); NF4 as 128 · hi + lo, two such products. AVX2
// with groups of an odd number of 32s (!a.chunk_spans: g32, g96): each half of a chunk is one
// block of 32 in one group, its lanes times d_block · s_group (and its own zero point), as
// llama.cpp's Q4_1 · Q8_1 dot product scales each block of 32.
void simd_decode_rows_q8(const QArgs& a, int64_t T, int64_t n0, int64_t n1, float* y, int64_t ldy);
// x [T, K] to the q8 path's activations (QArgs::xq / xd / xs layouts): the codes and scales of
// qm::quantize_act_block per block of 32, bit for bit.
void simd_quantize_q8(const float* x, int64_t T, int64_t ldx, int64_t K, int8_t* q, float* dv,
                      int32_t* ns);
#endif

}  // namespace minfer::qcpu
