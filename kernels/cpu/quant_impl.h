// Internals shared by the quantized linear kernels: kernels/cpu/quant.cpp (dispatch, activation
// quantization, scalar reference) and its SIMD siblings quant_avx512.cpp / quant_avx2.cpp, of
// which the build's target ISA compiles exactly one (or none: the scalar path then runs).
// Legend: T rows of x, K = in features, N = out features, Kp = K padded to 64, QA = activation
// block, nb = ceil(Kp / QA), RW = weight rows and R = x rows one kernel call computes.
#pragma once
#include <algorithm>
#include <cstdint>
#include <vector>

#include "engine/linear.h"
#include "kernels/common/quant_math.h"

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VNNI__)
#define MINFER_Q_AVX512 1
#elif defined(__AVX2__) && defined(__FMA__)
#define MINFER_Q_AVX2 1
#endif

namespace minfer::qcpu {

// Quantized activations of one call: [T, Kp] codes, [T, nb] block scales and code sums.
// SIMD kernels also use `nls`: per x row, per unit of `unit` weights, the negated code sums of
// each int32 lane of the kernel's dot product (lane i of a chunk covers bytes 4i..4i+3). A weight
// zero point z is removed lane by lane (acc = -z * lane sum, then += u * q), so every lane holds
// a true partial dot product: putting all of -z Σ q into one lane instead makes lanes up to 128x
// larger than the result, and their f32 sum loses digits to cancellation.
struct ActQ {
  int64_t Kp = 0, QA = 0, nb = 0;
  std::vector<int8_t> q;   // [T, Kp]
  std::vector<float> d;    // [T, nb]
  std::vector<int32_t> s;  // [T, nb]
  int64_t unit = 0, units = 0, lanes = 0;
  int zshift = 0;            // nls holds -(lane sums) << zshift (z = 1 << zshift), 0 for asym
  std::vector<int32_t> nls;  // [T, units, lanes]
  std::vector<float> dv;     // AVX-512, QA = 32: [T, Kp / 64, 16] = d(2c) x8, d(2c+1) x8
};

// Everything an integer-format kernel reads about the weight matrix.
struct UArgs {
  const uint8_t* codes = nullptr;  // [N, rb]
  int64_t rb = 0;
  const float* scales = nullptr;   // [N, groups] or [1] (per tensor)
  int64_t groups = 0;              // scales per row (0 when per tensor)
  const uint8_t* zeros = nullptr;  // [N, groups] (asymmetric int4) or null
  const int32_t* gidx = nullptr;   // [nb] weight group of each activation block
  const ActQ* a = nullptr;
};

// NF4 weight matrix: codes, block absmax (direct or double-quantized).
struct NArgs {
  const uint8_t* codes = nullptr;  // [N, rb]
  int64_t rb = 0, G = 0, groups = 0, K = 0, Kp = 0;
  const float* scales = nullptr;  // [N, groups]
  const int8_t* sc = nullptr;     // double quant: [N * groups] codes
  const float* ss = nullptr;      // double quant: [ceil(N * groups / 256)] scales
  float offset = 0;
  float scale(int64_t n, int64_t g) const {
    const int64_t i = n * groups + g;
    return sc ? qm::dq_block_scale(sc[i], ss[i / qm::kDqBlock], offset) : scales[i];
  }
};

// Zero point of the stored code u (asymmetric int4 reads its table instead).
constexpr int zero_code(QScheme s) {
  return s == QScheme::Int8 ? 128 : s == QScheme::Int4 ? 8 : 1;
}
constexpr int code_bits(QScheme s) {
  return s == QScheme::Int8 ? 8 : s == QScheme::Int4 ? 4 : s == QScheme::Ternary ? 2 : 1;
}

// Worth waking the thread pool: ~64K weights (a few microseconds of work) or more. Below that one
// thread is faster than the fork/join.
inline bool worth_threads(int64_t rows, int64_t Kp) {
  return rows * Kp >= (int64_t(1) << 16);
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

// The whole product. T <= 4: one pass over W, split by rows across threads. T > 4: W in tiles of
// kTile rows, each read from memory once and kept in cache while every group of 4 x rows
// passes over it.
template <template <int, int> class Kern, class... A>
void run_all(int64_t N, int64_t T, int64_t Kp, const A&... args) {
  const bool par = worth_threads(N, Kp);
  if (T <= 4) {
    const int64_t groups = qm::ceil_div(N, 4);
#pragma omp parallel for schedule(static) if (par)
    for (int64_t g = 0; g < groups; ++g)
      run_block<Kern>(g * 4, std::min(N, g * 4 + 4), 0, T, true, args...);
    return;
  }
  constexpr int64_t kTile = 16;
  const int64_t tiles = qm::ceil_div(N, kTile);
#pragma omp parallel for schedule(dynamic, 1) if (par)
  for (int64_t i = 0; i < tiles; ++i) {
    const int64_t n1 = std::min(N, (i + 1) * kTile);
    for (int64_t t0 = 0; t0 < T; t0 += 4)
      run_block<Kern>(i * kTile, n1, t0, std::min<int64_t>(4, T - t0), t0 == 0, args...);
  }
}

// ---- Implemented by the one SIMD file of this build.
#if defined(MINFER_Q_AVX512) || defined(MINFER_Q_AVX2)
extern const char* const kSimdIsa;
void simd_quantize_activations(const float* x, int64_t T, int64_t ldx, int64_t K, int QA, int8_t* q,
                               float* d, int32_t* s);
// Fills a.unit / units / lanes / nls (and dv where used) from a.q and a.d: the negated lane sums
// times 2^zshift, i.e. -z * lane sums ready to use for a format with the fixed zero point
// z = 2^zshift (asymmetric int4 passes 0 and multiplies by its zero points).
void simd_lane_sums(ActQ& a, int64_t T, int zshift);
void simd_int_linear(QScheme scheme, bool asym, const UArgs& u, int64_t N, int64_t T, float* y,
                     int64_t ldy);
void simd_nf4_linear(const NArgs& w, const float* x, int64_t T, int64_t ldx, float* y, int64_t ldy,
                     int64_t N);
#endif

}  // namespace minfer::qcpu
