#include "kernels/cpu/sparse.h"

#include <cblas.h>
#include <fmt/ranges.h>
#include <omp.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <vector>

#include "engine/error.h"
#include "engine/half.h"
#include "engine/thread_pool.h"
#include "kernels/common/quant_math.h"
#include "kernels/cpu/sparse_group.h"
#include "kernels/cpu/sparse_values.h"

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VBMI2__)
#include <immintrin.h>
#define MINFER_SPARSE_AVX512 1
#define MINFER_SPARSE_INLINE inline __attribute__((always_inline))
#if defined(__AVX512VNNI__)
#define MINFER_SPARSE_VNNI 1
#endif
#endif
// The AVX2 + FMA decode kernels are compiled on every x86-64 build (function target attributes,
// whatever -march says) and chosen at run time (cpuid) where the AVX-512 ones are not built.
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define MINFER_SPARSE_AVX2 1
#define MINFER_AVX2_FN __attribute__((target("avx2,fma,popcnt")))
#endif

namespace minfer {

namespace {

using Vals = sparse_detail::SparseValues;

Vals vals_of(const SparseBitmask& w) {
  return sparse_detail::sparse_values_of(*w.values);
}

// Row n of W as f32 [K] (dst fully written), the scalar definition.
void dequant_row_ref(const uint8_t* mrow, const Vals& v, int64_t n, int64_t K, float* dst) {
  int64_t j = 0;
  for (int64_t k = 0; k < K; ++k) dst[k] = (mrow[k >> 3] >> (k & 7)) & 1 ? v.at(n, j++) : 0.f;
}

void decode_ref_rows(const SparseBitmask& w, const Vals& v, const float* x, int64_t T, int64_t ldx,
                     float* y, int64_t ldy, int64_t K, int64_t n0, int64_t n1) {
  const int64_t kb = w.bitmask.dim(1);
  const uint8_t* m = w.bitmask.data<uint8_t>();
  // int8 values: the SIMD kernel rounds each row of x to 16-bit codes, and a row with an inf or
  // NaN has no finite step: all its outputs are NaN (as W8A8). The reference does the same, also
  // where the non-finite input meets only pruned weights.
  std::vector<char> bad(size_t(T), 0);
  if (v.kind == Vals::I8)
    for (int64_t t = 0; t < T; ++t)
      for (int64_t k = 0; k < K; ++k)
        if (!std::isfinite(x[t * ldx + k])) bad[size_t(t)] = 1;
  for (int64_t n = n0; n < n1; ++n) {
    const uint8_t* mrow = m + n * kb;
    for (int64_t t = 0; t < T; ++t) {
      if (bad[size_t(t)]) {
        y[t * ldy + n] = std::numeric_limits<float>::quiet_NaN();
        continue;
      }
      float s = 0.f;
      int64_t j = 0;
      for (int64_t k = 0; k < K; ++k)
        if ((mrow[k >> 3] >> (k & 7)) & 1) s += v.at(n, j++) * x[t * ldx + k];
      y[t * ldy + n] = s;
    }
  }
}

#ifdef MINFER_SPARSE_AVX512
// `nbytes` (2 or 8) mask bytes of a row starting at byte b; bytes past the row read as 0. A
// fixed-size load inside the row, a byte loop only at its end.
inline uint64_t mask_bits(const uint8_t* mrow, int64_t b, int64_t kb, int64_t nbytes) {
  if (b + nbytes <= kb) {
    if (nbytes == 2) {
      uint16_t u;
      std::memcpy(&u, mrow + b, 2);
      return u;
    }
    uint64_t u;
    std::memcpy(&u, mrow + b, 8);
    return u;
  }
  uint64_t u = 0;
  for (int64_t i = 0; b + i < kb; ++i) u |= uint64_t(mrow[b + i]) << (8 * i);
  return u;
}

// T <= 4 rows of x against rows [n0, n1): f32 values, 16 inputs per step.
template <int TT>
void decode_f32(const SparseBitmask& w, const Vals& v, const float* x, int64_t ldx, float* y,
                int64_t ldy, int64_t K, int64_t n0, int64_t n1) {
  const int64_t kb = w.bitmask.dim(1);
  const uint8_t* m = w.bitmask.data<uint8_t>();
  for (int64_t n = n0; n < n1; ++n) {
    const uint8_t* mrow = m + n * kb;
    const float* vp = static_cast<const float*>(v.p) + n * v.ld;
    __m512 acc[TT];
    for (int t = 0; t < TT; ++t) acc[t] = _mm512_setzero_ps();
    for (int64_t k = 0; k < K; k += 16) {
      const auto mk = __mmask16(mask_bits(mrow, k >> 3, kb, 2));
      if (!mk) continue;
      const __m512 wv = _mm512_maskz_expandloadu_ps(mk, vp);
      vp += std::popcount(unsigned(mk));
      for (int t = 0; t < TT; ++t)
        acc[t] = _mm512_fmadd_ps(wv, _mm512_maskz_loadu_ps(mk, x + t * ldx + k), acc[t]);
    }
    for (int t = 0; t < TT; ++t) y[t * ldy + n] = _mm512_reduce_add_ps(acc[t]);
  }
}

// int8 values (code u, weight s * (u - 128)), 64 inputs per step: the kept codes are loaded
// contiguously, flipped to signed (u - 128), expanded into their lanes, widened to f32.
template <int TT>
void decode_i8(const SparseBitmask& w, const Vals& v, const float* x, int64_t ldx, float* y,
               int64_t ldy, int64_t K, int64_t n0, int64_t n1) {
  const int64_t kb = w.bitmask.dim(1);
  const uint8_t* m = w.bitmask.data<uint8_t>();
  const __m512i flip = _mm512_set1_epi8(char(0x80));
  for (int64_t n = n0; n < n1; ++n) {
    const uint8_t* mrow = m + n * kb;
    const uint8_t* cp = static_cast<const uint8_t*>(v.p) + n * v.ld;
    __m512 acc[TT];
    for (int t = 0; t < TT; ++t) acc[t] = _mm512_setzero_ps();
    for (int64_t k = 0; k < K; k += 64) {
      const uint64_t mk = mask_bits(mrow, k >> 3, kb, 8);
      if (!mk) continue;
      const int pc = std::popcount(mk);
      const __mmask64 lm = pc == 64 ? ~__mmask64(0) : (__mmask64(1) << pc) - 1;
      const __m512i c = _mm512_xor_si512(_mm512_maskz_loadu_epi8(lm, cp), flip);
      const __m512i e = _mm512_maskz_expand_epi8(__mmask64(mk), c);
      cp += pc;
      const __m128i parts[4] = {_mm512_extracti32x4_epi32(e, 0), _mm512_extracti32x4_epi32(e, 1),
                                _mm512_extracti32x4_epi32(e, 2), _mm512_extracti32x4_epi32(e, 3)};
      for (int q = 0; q < 4; ++q) {
        const auto mq = __mmask16(mk >> (16 * q));
        if (!mq) continue;
        const __m512 wq = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(parts[q]));
        for (int t = 0; t < TT; ++t)
          acc[t] = _mm512_fmadd_ps(wq, _mm512_maskz_loadu_ps(mq, x + t * ldx + k + 16 * q), acc[t]);
      }
    }
    const float s = v.scale(n);
    for (int t = 0; t < TT; ++t) y[t * ldy + n] = s * _mm512_reduce_add_ps(acc[t]);
  }
}

#ifdef MINFER_SPARSE_VNNI
// int8 values against x quantized to 16 bits per token row (the A16 path). Row t of x -> integer
// codes q = round(x / d), d = max|x| / 32639 (|q| <= 32639), split into two signed bytes
// q = 256 h + l (h = (q + 128) >> 8 in [-127, 127], l in [-128, 127]), each plane zero padded to
// a multiple of 64 inputs. Per 64 inputs of a weight row the kept codes u (w = u - 128) are
// expanded into their lanes with 128 (w = 0) in the pruned ones (one vpexpandb) and vpdpbusd
// sums u * h and u * l. With Σh, Σl over the padded row:
//   Σ_k w_k q_k = 256 (Σ u h - 128 Σh) + (Σ u l - 128 Σl),
// an exact integer, so the result is float(that) * (s_n d_t): the only rounding besides that last
// product is x's own, |x - d q| <= d / 2 = max|x| / 65278 per element (int8 activations cost
// SmolLM2 +1.1 % perplexity, kernels/cpu/quant.h; these are 256x finer). Two vpdpbusd per 64
// weights instead of a widening, a convert and four FMAs: the kernel stays under the memory time
// of the 0.5 + 0.125 bytes per weight it reads at 50 %. The two sums are combined per lane as
// 256 Σ u h + Σ u l in int32 and leave for int64 every kBlock64 chunks (one reduction per row and
// block, not two); rows go one after another (one stream through the masks, one through the
// codes: interleaving 4 rows' streams measured slower on the 576x1536 shape), and for K <= 2048
// the sums of 4 consecutive rows leave their vectors in one transposing reduction
// (reduce4_epi64, widened to int64 first: 16 int32 lanes of a row's sum can overflow int32) instead
// of four. The codes are prefetched kPrefetch bytes ahead.

struct XQ16 {
  const int8_t* h = nullptr;  // [T, Kp] high bytes
  const int8_t* l = nullptr;  // [T, Kp] low bytes
  int64_t Kp = 0;
  float d[4] = {0, 0, 0, 0};
  int64_t sh[4] = {0, 0, 0, 0}, sl[4] = {0, 0, 0, 0};
};

// Quantizes T <= 4 rows of x into buf. A row holding an inf or NaN gets d = NaN (and zero codes),
// so all its outputs are NaN, as W8A8 does (kernels/cpu/quant_act.h).
void quantize_x16(const float* x, int64_t T, int64_t ldx, int64_t K, std::vector<int8_t>& buf,
                  XQ16& out) {
  const int64_t Kp = (K + 63) / 64 * 64;
  if (buf.size() < size_t(2 * T * Kp)) buf.resize(size_t(2 * T * Kp));
  out.h = buf.data();
  out.l = buf.data() + T * Kp;
  out.Kp = Kp;
  for (int64_t t = 0; t < T; ++t) {
    const float* xr = x + t * ldx;
    const float d = sparse_detail::act16_scale_avx512(xr, K);
    const bool finite = !std::isnan(d);
    out.d[t] = d;
    const __m512 inv = _mm512_set1_ps(finite && d > 0.f ? 1.f / d : 0.f);
    const __m512i lim = _mm512_set1_epi32(32639), c128 = _mm512_set1_epi32(128);
    __m512i sh = _mm512_setzero_si512(), sl = _mm512_setzero_si512();
    int8_t* hp = buf.data() + t * Kp;
    int8_t* lp = buf.data() + (T + t) * Kp;
    for (int64_t k = 0; k < Kp; k += 16) {
      const __mmask16 lm = K - k >= 16 ? __mmask16(0xffff)
                           : K > k     ? __mmask16((1u << (K - k)) - 1)
                                       : __mmask16(0);
      __m512i q = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_maskz_loadu_ps(lm, xr + k), inv));
      q = _mm512_max_epi32(_mm512_min_epi32(q, lim), _mm512_sub_epi32(_mm512_setzero_si512(), lim));
      const __m512i h = _mm512_srai_epi32(_mm512_add_epi32(q, c128), 8);
      const __m512i l = _mm512_sub_epi32(q, _mm512_slli_epi32(h, 8));
      sh = _mm512_add_epi32(sh, h);
      sl = _mm512_add_epi32(sl, l);
      _mm_storeu_si128(reinterpret_cast<__m128i*>(hp + k), _mm512_cvtepi32_epi8(h));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(lp + k), _mm512_cvtepi32_epi8(l));
    }
    out.sh[t] = _mm512_reduce_add_epi32(sh);  // |Σ| <= 127 Kp, |Σl| <= 128 Kp: int32 for Kp < 2^24
    out.sl[t] = _mm512_reduce_add_epi32(sl);
  }
}

// Per block of kBlock64 chunks a lane holds 256 Σ u h + Σ u l in int32: |u h| <= 255 * 127,
// |u l| <= 255 * 128 and 4 products per chunk give |lane| <= 32 * 4 * (256 * 32385 + 32640)
// < 2^31.
constexpr int64_t kBlock64 = 32;
// Bytes ahead of the packed codes that the kernel prefetches (8 chunks at 50 %).
constexpr int64_t kPrefetch = 512;

// The lane sums of v[0..3] (int32 lanes) as int64 (r[i] = Σ lanes of v[i]): each vector's lanes are
// widened before they are added, since 16 lanes of up to 2^31 overflow int32.
inline void reduce4_epi64(const __m512i (&v)[4], int64_t (&r)[4]) {
  __m512i w[4];
  for (int i = 0; i < 4; ++i)
    w[i] = _mm512_add_epi64(_mm512_cvtepi32_epi64(_mm512_castsi512_si256(v[i])),
                            _mm512_cvtepi32_epi64(_mm512_extracti64x4_epi64(v[i], 1)));
  // Per 128-bit lane j: a = {w0 pair sum, w1 pair sum}, b = {w2, w3}.
  const __m512i a =
      _mm512_add_epi64(_mm512_unpacklo_epi64(w[0], w[1]), _mm512_unpackhi_epi64(w[0], w[1]));
  const __m512i b =
      _mm512_add_epi64(_mm512_unpacklo_epi64(w[2], w[3]), _mm512_unpackhi_epi64(w[2], w[3]));
  // c = {a0 + a1, a2 + a3, b0 + b1, b2 + b3} (128-bit lanes L0..L3, each {row 2i, row 2i + 1}
  // partial sums), then L0 + L1 = {r0, r1} and L2 + L3 = {r2, r3}.
  const __m512i c = _mm512_add_epi64(_mm512_shuffle_i64x2(a, b, _MM_SHUFFLE(2, 0, 2, 0)),
                                     _mm512_shuffle_i64x2(a, b, _MM_SHUFFLE(3, 1, 3, 1)));
  const __m512i d = _mm512_add_epi64(_mm512_shuffle_i64x2(c, c, _MM_SHUFFLE(2, 0, 2, 0)),
                                     _mm512_shuffle_i64x2(c, c, _MM_SHUFFLE(3, 1, 3, 1)));
  alignas(32) int64_t t[4];
  _mm256_store_si256(reinterpret_cast<__m256i*>(t), _mm512_castsi512_si256(d));
  for (int i = 0; i < 4; ++i) r[i] = t[i];
}

// The lane sum of v (int32 lanes) as int64.
inline int64_t reduce_epi64(__m512i v) {
  return _mm512_reduce_add_epi64(
      _mm512_add_epi64(_mm512_cvtepi32_epi64(_mm512_castsi512_si256(v)),
                       _mm512_cvtepi32_epi64(_mm512_extracti64x4_epi64(v, 1))));
}

// Chunks [c0, c1) (c1 - c0 <= kBlock64) of one weight row against T <= 4 token rows: per lane
// 256 * Σ u h + Σ u l (int32, no overflow within a block), returned in acc[t].
template <int TT>
MINFER_SPARSE_INLINE void row_block_i8_a16(const uint8_t* mrow, int64_t kb, const uint8_t*& cp,
                                           const XQ16& xq, int64_t c0, int64_t c1,
                                           __m512i (&acc)[TT]) {
  const __m512i fill = _mm512_set1_epi8(char(0x80));
  const int64_t full = kb / 8;  // chunks whose 8 mask bytes are all in the row
  __m512i ah[TT], al[TT];
  for (int t = 0; t < TT; ++t) ah[t] = al[t] = _mm512_setzero_si512();
  for (int64_t c = c0; c < c1; ++c) {
    uint64_t mk;
    if (c < full)
      std::memcpy(&mk, mrow + 8 * c, 8);
    else
      mk = mask_bits(mrow, 8 * c, kb, 8);
    _mm_prefetch(reinterpret_cast<const char*>(cp + kPrefetch), _MM_HINT_T0);
    const int pc = std::popcount(mk);
    const __m512i codes = _mm512_maskz_loadu_epi8(_bzhi_u64(~0ull, unsigned(pc)), cp);
    cp += pc;
    const __m512i e = _mm512_mask_expand_epi8(fill, __mmask64(mk), codes);
    for (int t = 0; t < TT; ++t) {
      ah[t] = _mm512_dpbusd_epi32(ah[t], e, _mm512_loadu_si512(xq.h + t * xq.Kp + 64 * c));
      al[t] = _mm512_dpbusd_epi32(al[t], e, _mm512_loadu_si512(xq.l + t * xq.Kp + 64 * c));
    }
  }
  for (int t = 0; t < TT; ++t) acc[t] = _mm512_add_epi32(_mm512_slli_epi32(ah[t], 8), al[t]);
}

// Rows [n0, n1) against T <= 4 token rows quantized in xq.
template <int TT>
void decode_i8_a16(const SparseBitmask& w, const Vals& v, const XQ16& xq, float* y, int64_t ldy,
                   int64_t K, int64_t n0, int64_t n1) {
  const int64_t kb = w.bitmask.dim(1);
  const uint8_t* m = w.bitmask.data<uint8_t>();
  const int64_t chunks = (K + 63) / 64;
  const uint8_t* codes = static_cast<const uint8_t*>(v.p);
  auto finish = [&](int64_t n, int t, int64_t S) {
    S -= 128 * (256 * xq.sh[t] + xq.sl[t]);
    y[t * ldy + n] = float(S) * (v.scale(n) * xq.d[t]);
  };
  int64_t n = n0;
  if (chunks <= kBlock64) {
    // Rows one after another (one stream through the mask and one through the codes), their
    // sums reduced 4 rows at a time.
    for (; n + 4 <= n1; n += 4) {
      __m512i acc[4][TT];
      for (int i = 0; i < 4; ++i) {
        const uint8_t* cp = codes + (n + i) * v.ld;
        row_block_i8_a16<TT>(m + (n + i) * kb, kb, cp, xq, 0, chunks, acc[i]);
      }
      for (int t = 0; t < TT; ++t) {
        const __m512i s4[4] = {acc[0][t], acc[1][t], acc[2][t], acc[3][t]};
        int64_t r[4];
        reduce4_epi64(s4, r);
        for (int i = 0; i < 4; ++i) finish(n + i, t, r[i]);
      }
    }
  }
  for (; n < n1; ++n) {
    const uint8_t* cp = codes + n * v.ld;
    int64_t S[TT] = {};
    for (int64_t c0 = 0; c0 < chunks; c0 += kBlock64) {
      __m512i acc[TT];
      row_block_i8_a16<TT>(m + n * kb, kb, cp, xq, c0, std::min(chunks, c0 + kBlock64), acc);
      for (int t = 0; t < TT; ++t) S[t] += reduce_epi64(acc[t]);
    }
    for (int t = 0; t < TT; ++t) finish(n, t, S[t]);
  }
}

#endif

template <int TT>
void decode_simd(const SparseBitmask& w, const Vals& v, const float* x, int64_t ldx, float* y,
                 int64_t ldy, int64_t K, int64_t n0, int64_t n1) {
  if (v.kind == Vals::F32)
    decode_f32<TT>(w, v, x, ldx, y, ldy, K, n0, n1);
  else
    decode_i8<TT>(w, v, x, ldx, y, ldy, K, n0, n1);
}
#endif

#ifdef MINFER_SPARSE_AVX2
// x rounded to 16-bit codes per token row, as quantize_x16 does (the same step d = max|x| / 32639,
// the same round-to-nearest-even of x * (1 / d), the same clamp), kept as one int16 plane [T, Kp]
// (Kp = K padded to 16, zero filled). A row with an inf or NaN gets d = NaN and zero codes.
struct XQ16s {
  const int16_t* q = nullptr;
  int64_t Kp = 0;
  float d[4] = {0, 0, 0, 0};
};

void quantize_x16_scalar(const float* x, int64_t T, int64_t ldx, int64_t K,
                         std::vector<int16_t>& buf, XQ16s& out) {
  const int64_t Kp = (K + 15) / 16 * 16;
  if (buf.size() < size_t(T * Kp)) buf.resize(size_t(T * Kp));
  out.q = buf.data();
  out.Kp = Kp;
  for (int64_t t = 0; t < T; ++t) {
    const float* xr = x + t * ldx;
    float amax = 0.f;
    bool finite = true;
    for (int64_t k = 0; k < K; ++k) {
      finite = finite && std::isfinite(xr[k]);
      amax = std::max(amax, std::fabs(xr[k]));
    }
    const float d = finite ? amax / 32639.f : NAN;
    out.d[t] = d;
    const float inv = finite && d > 0.f ? 1.f / d : 0.f;
    int16_t* qr = buf.data() + t * Kp;
    for (int64_t k = 0; k < Kp; ++k) {
      const float q = k < K && finite ? std::nearbyint(xr[k] * inv) : 0.f;
      qr[k] = int16_t(std::clamp(q, -32639.f, 32639.f));
    }
  }
}

// Per mask byte b, 8 byte lanes: lane i holds the rank of bit i among b's set bits (the index of
// its value in the packed run) when bit i is set, 0x80 when not. pshufb reads 0x80 as "write 0";
// vpermd reads the low 3 bits only (the lane is then cleared by the mask).
struct ExpandLut {
  uint64_t e[256];
  constexpr ExpandLut() : e{} {
    for (int b = 0; b < 256; ++b) {
      uint64_t v = 0;
      int r = 0;
      for (int i = 0; i < 8; ++i) v |= uint64_t((b >> i) & 1 ? r++ : 0x80) << (8 * i);
      e[b] = v;
    }
  }
};
constexpr ExpandLut kExpand;
alignas(32) constexpr int32_t kFirstLanes[16] = {-1, -1, -1, -1, -1, -1, -1, -1,
                                                 0,  0,  0,  0,  0,  0,  0,  0};

// The 8 lanes of mask byte b as all-ones / zero int32 lanes.
MINFER_AVX2_FN inline __m256i lanes_of(unsigned b) {
  const __m256i bit = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
  return _mm256_cmpeq_epi32(_mm256_and_si256(_mm256_set1_epi32(int(b)), bit), bit);
}

MINFER_AVX2_FN inline float hsum256(__m256 f) {
  __m128 v = _mm_add_ps(_mm256_castps256_ps128(f), _mm256_extractf128_ps(f, 1));
  v = _mm_add_ps(v, _mm_movehl_ps(v, v));
  v = _mm_add_ss(v, _mm_movehdup_ps(v));
  return _mm_cvtss_f32(v);
}

MINFER_AVX2_FN inline int64_t hsum256_epi32(__m256i v) {
  alignas(32) int32_t a[8];
  _mm256_store_si256(reinterpret_cast<__m256i*>(a), v);
  int64_t s = 0;
  for (int i = 0; i < 8; ++i) s += a[i];
  return s;
}

// f32 values, 8 inputs per mask byte: the byte's kept values (a masked load of the next popcount
// values, never past them) permuted into their lanes (vpermd by the expand table), the other
// lanes cleared; x loaded under the same lane mask, so a pruned input is never read (an inf or
// NaN there does not reach y, as in the reference).
template <int TT>
MINFER_AVX2_FN void decode_f32_avx2(const SparseBitmask& w, const Vals& v, const float* x,
                                    int64_t ldx, float* y, int64_t ldy, int64_t K, int64_t n0,
                                    int64_t n1) {
  const int64_t kb = w.bitmask.dim(1);
  const uint8_t* m = w.bitmask.data<uint8_t>();
  for (int64_t n = n0; n < n1; ++n) {
    const uint8_t* mrow = m + n * kb;
    const float* vp = static_cast<const float*>(v.p) + n * v.ld;
    __m256 acc[TT];
    for (int t = 0; t < TT; ++t) acc[t] = _mm256_setzero_ps();
    for (int64_t k = 0; k < K; k += 8) {
      const unsigned b = mrow[k >> 3];
      if (!b) continue;
      const int pc = std::popcount(b);
      const __m256 packed = _mm256_maskload_ps(
          vp, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(kFirstLanes + 8 - pc)));
      vp += pc;
      const __m256i ctrl = _mm256_cvtepu8_epi32(_mm_cvtsi64_si128(int64_t(kExpand.e[b])));
      const __m256i keep = lanes_of(b);
      const __m256 wv =
          _mm256_and_ps(_mm256_permutevar8x32_ps(packed, ctrl), _mm256_castsi256_ps(keep));
      for (int t = 0; t < TT; ++t)
        acc[t] = _mm256_fmadd_ps(wv, _mm256_maskload_ps(x + t * ldx + k, keep), acc[t]);
    }
    for (int t = 0; t < TT; ++t) y[t * ldy + n] = hsum256(acc[t]);
  }
}

// int8 values against x rounded to 16-bit codes (XQ16s), 16 inputs per step: the kept codes
// (flipped to signed w = u - 128) are placed into their byte lanes by one pshufb whose control is
// the two mask bytes' expand entries (the second offset by the first byte's popcount), pruned
// lanes 0; widened to int16, vpmaddwd with the x codes adds exact int32 pairs. Per 16-input step
// a lane gains <= 2 * 128 * 32639 < 2^23, so the int32 lanes are flushed to int64 every 256 steps.
// y = float(Σ w q) * (row scale * d): the same integers and the same last product as the
// AVX-512 VNNI kernel, so both give the same y.
template <int TT>
MINFER_AVX2_FN void decode_i8_avx2(const SparseBitmask& w, const Vals& v, const XQ16s& xq, float* y,
                                   int64_t ldy, int64_t K, int64_t N, int64_t n0, int64_t n1) {
  const int64_t kb = w.bitmask.dim(1);
  const uint8_t* m = w.bitmask.data<uint8_t>();
  const uint8_t* codes = static_cast<const uint8_t*>(v.p);
  const uint8_t* end = codes + N * v.ld;  // one past the last code
  const __m128i flip = _mm_set1_epi8(char(0x80));
  const int64_t steps = (K + 15) / 16;
  for (int64_t n = n0; n < n1; ++n) {
    const uint8_t* mrow = m + n * kb;
    const uint8_t* cp = codes + n * v.ld;
    int64_t S[TT];
    for (int t = 0; t < TT; ++t) S[t] = 0;
    for (int64_t s0 = 0; s0 < steps; s0 += 256) {
      __m256i acc[TT];
      for (int t = 0; t < TT; ++t) acc[t] = _mm256_setzero_si256();
      const int64_t s1 = std::min(steps, s0 + 256);
      for (int64_t st = s0; st < s1; ++st) {
        const unsigned b0 = mrow[2 * st];
        const unsigned b1 = 2 * st + 1 < kb ? mrow[2 * st + 1] : 0u;
        if (!(b0 | b1)) continue;
        const int p0 = std::popcount(b0), pc = p0 + std::popcount(b1);
        __m128i c;
        if (cp + 16 <= end) {
          c = _mm_loadu_si128(reinterpret_cast<const __m128i*>(cp));
        } else {
          alignas(16) uint8_t tmp[16] = {};
          std::memcpy(tmp, cp, size_t(pc));
          c = _mm_load_si128(reinterpret_cast<const __m128i*>(tmp));
        }
        cp += pc;
        const __m128i ctrl = _mm_set_epi64x(
            int64_t(kExpand.e[b1] + uint64_t(p0) * 0x0101010101010101ull), int64_t(kExpand.e[b0]));
        const __m256i w16 = _mm256_cvtepi8_epi16(_mm_shuffle_epi8(_mm_xor_si128(c, flip), ctrl));
        for (int t = 0; t < TT; ++t)
          acc[t] = _mm256_add_epi32(
              acc[t], _mm256_madd_epi16(w16, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(
                                                 xq.q + t * xq.Kp + 16 * st))));
      }
      for (int t = 0; t < TT; ++t) S[t] += hsum256_epi32(acc[t]);
    }
    const float s = v.scale(n);
    for (int t = 0; t < TT; ++t) y[t * ldy + n] = float(S[t]) * (s * xq.d[t]);
  }
}

template <int TT>
void decode_avx2(const SparseBitmask& w, const Vals& v, const float* x, int64_t ldx,
                 const XQ16s& xq, float* y, int64_t ldy, int64_t K, int64_t N, int64_t n0,
                 int64_t n1) {
  if (v.kind == Vals::F32)
    decode_f32_avx2<TT>(w, v, x, ldx, y, ldy, K, n0, n1);
  else
    decode_i8_avx2<TT>(w, v, xq, y, ldy, K, N, n0, n1);
}

bool cpu_has_avx2() {
  static const bool ok = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                         __builtin_cpu_supports("popcnt");
  return ok;
}
#endif

#ifdef MINFER_SPARSE_AVX512
// Row n of W as f32 [K] with the kept values expanded into place, 16 inputs per step.
void dequant_row_simd(const uint8_t* mrow, int64_t kb, const Vals& v, int64_t n, int64_t K,
                      float* dst) {
  if (v.kind == Vals::F32) {
    const float* vp = static_cast<const float*>(v.p) + n * v.ld;
    for (int64_t k = 0; k < K; k += 16) {
      const auto mk = __mmask16(mask_bits(mrow, k >> 3, kb, 2));
      const __mmask16 store = K - k >= 16 ? __mmask16(0xffff) : __mmask16((1u << (K - k)) - 1);
      _mm512_mask_storeu_ps(dst + k, store, _mm512_maskz_expandloadu_ps(mk, vp));
      vp += std::popcount(unsigned(mk));
    }
    return;
  }
  const uint8_t* cp = static_cast<const uint8_t*>(v.p) + n * v.ld;
  const __m512 s = _mm512_set1_ps(v.scale(n));
  const __m512i flip = _mm512_set1_epi32(128);
  for (int64_t k = 0; k < K; k += 16) {
    const auto mk = __mmask16(mask_bits(mrow, k >> 3, kb, 2));
    const __mmask16 store = K - k >= 16 ? __mmask16(0xffff) : __mmask16((1u << (K - k)) - 1);
    // Codes widened to int32, expanded into place; (u - 128) * s, 0 where not kept.
    const int pc = std::popcount(unsigned(mk));
    const __m512i u = _mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(__mmask16((1u << pc) - 1), cp));
    const __m512i e = _mm512_maskz_expand_epi32(mk, _mm512_sub_epi32(u, flip));
    _mm512_mask_storeu_ps(dst + k, store, _mm512_mul_ps(_mm512_cvtepi32_ps(e), s));
    cp += pc;
  }
}
#endif

void dequant_row(const uint8_t* mrow, int64_t kb, const Vals& v, int64_t n, int64_t K, float* dst) {
#ifdef MINFER_SPARSE_AVX512
  if (v.kind == Vals::F32 || v.kind == Vals::I8) return dequant_row_simd(mrow, kb, v, n, K, dst);
#endif
  (void)kb;
  dequant_row_ref(mrow, v, n, K, dst);
}

bool simd_ok(const Vals& v) {
#ifdef MINFER_SPARSE_AVX512
  return v.kind == Vals::F32 || v.kind == Vals::I8;
#else
  (void)v;
  return false;
#endif
}

using sparse_detail::Isa;
using sparse_detail::isa_name;

// The best decode kernel set this build holds and this CPU runs, or the one MINFER_SPARSE_ISA
// names (avx512 | avx2 | scalar; for timing one kernel set against another).
Isa best_isa() {
  static const Isa forced = sparse_detail::forced_isa(sparse_decode_isas(), "sparse", Isa(-1));
  if (forced != Isa(-1)) return forced;
#if defined(MINFER_SPARSE_AVX512)
  return Isa::Avx512;  // built for the machine (-march): its CPU has AVX-512
#elif defined(MINFER_SPARSE_AVX2)
  return cpu_has_avx2() ? Isa::Avx2 : Isa::Scalar;
#else
  return Isa::Scalar;
#endif
}

// The kernel set that runs value format v when `isa` is asked: formats without a kernel there
// (f16 / bf16 values) take the scalar reference.
Isa effective_isa(Isa isa, const Vals& v) {
  if (isa == Isa::Avx512) return simd_ok(v) ? Isa::Avx512 : Isa::Scalar;
  if (isa == Isa::Avx2) return v.kind == Vals::F32 || v.kind == Vals::I8 ? Isa::Avx2 : Isa::Scalar;
  return Isa::Scalar;
}

// x prepared once for the decode path (one call or an op group): the rows of x and, for int8
// values, their 16-bit codes in the layout of the kernel set that reads them.
struct Prep {
  const float* x = nullptr;
  int64_t T = 0, ldx = 0;
#ifdef MINFER_SPARSE_VNNI
  XQ16 xq;  // AVX-512 VNNI
#endif
#ifdef MINFER_SPARSE_AVX2
  XQ16s xqs;  // AVX2
#endif
};

// Fills p for T <= 4 rows of x; `i8` is the kernel set that reads int8 values in this call
// (Scalar: none does). The code buffers are the calling thread's, grown once and reused.
void prepare(Isa i8, const float* x, int64_t T, int64_t ldx, int64_t K, Prep& p) {
  p.x = x;
  p.T = T;
  p.ldx = ldx;
#ifdef MINFER_SPARSE_VNNI
  static thread_local std::vector<int8_t> xbuf;
  if (i8 == Isa::Avx512) quantize_x16(x, T, ldx, K, xbuf, p.xq);
#endif
#ifdef MINFER_SPARSE_AVX2
  static thread_local std::vector<int16_t> qbuf;
  if (i8 == Isa::Avx2) quantize_x16_scalar(x, T, ldx, K, qbuf, p.xqs);
#endif
  (void)i8;
  (void)K;
}

// The kernel set that reads v's int8 codes against prepared x when `isa` runs (Scalar: none).
Isa i8_reader(Isa isa, const Vals& v) {
  isa = effective_isa(isa, v);
  if (v.kind != Vals::I8) return Isa::Scalar;
#if defined(MINFER_SPARSE_AVX512) && !defined(MINFER_SPARSE_VNNI)
  if (isa == Isa::Avx512) return Isa::Scalar;  // decode_i8 reads f32 x
#endif
  return isa;
}

template <int TT>
void rows_t(const SparseBitmask& w, const Vals& v, Isa isa, const Prep& p, float* y, int64_t ldy,
            int64_t K, int64_t N, int64_t n0, int64_t n1) {
#ifdef MINFER_SPARSE_AVX512
  if (isa == Isa::Avx512) {
#ifdef MINFER_SPARSE_VNNI
    if (v.kind == Vals::I8) return decode_i8_a16<TT>(w, v, p.xq, y, ldy, K, n0, n1);
#endif
    return decode_simd<TT>(w, v, p.x, p.ldx, y, ldy, K, n0, n1);
  }
#endif
#ifdef MINFER_SPARSE_AVX2
  if (isa == Isa::Avx2) return decode_avx2<TT>(w, v, p.x, p.ldx, p.xqs, y, ldy, K, N, n0, n1);
#endif
  (void)N;
  decode_ref_rows(w, v, p.x, TT, p.ldx, y, ldy, K, n0, n1);
}

// Rows [n0, n1) of W against prepared x with the kernel set `isa` (effective for v): each row's
// arithmetic does not depend on the range, so any split gives the same y.
void rows(const SparseBitmask& w, const Vals& v, Isa isa, const Prep& p, float* y, int64_t ldy,
          int64_t K, int64_t N, int64_t n0, int64_t n1) {
  switch (p.T) {
    case 1:
      return rows_t<1>(w, v, isa, p, y, ldy, K, N, n0, n1);
    case 2:
      return rows_t<2>(w, v, isa, p, y, ldy, K, N, n0, n1);
    case 3:
      return rows_t<3>(w, v, isa, p, y, ldy, K, N, n0, n1);
    default:
      return rows_t<4>(w, v, isa, p, y, ldy, K, N, n0, n1);
  }
}

// T <= 4 rows of x, every output row, with the kernel set `isa` (built and supported).
void decode(const SparseBitmask& w, const Vals& v, Isa isa, const float* x, int64_t T, int64_t ldx,
            float* y, int64_t ldy, int64_t K, int64_t N) {
  isa = effective_isa(isa, v);
  Prep p;
  prepare(i8_reader(isa, v), x, T, ldx, K, p);
  // Contiguous blocks of rows on the thread pool; one thread below 64K weights.
  parallel_for(N, K, sparse_detail::kDecodeMinWork,
               [&](int64_t n0, int64_t n1) { rows(w, v, isa, p, y, ldy, K, N, n0, n1); });
}

Isa isa_of(const std::string& isa) {
  return sparse_detail::isa_named(isa, sparse_decode_isas(), "sparse");
}

// The pieces the shared op-group drivers need (sparse_detail::decode_group, decode_swiglu in
// kernels/cpu/sparse_group.h); each forwards to this file's function of the same name.
struct Fmt {
  using W = SparseBitmask;
  using Vals = ::minfer::Vals;
  using Isa = ::minfer::Isa;
  using Prep = ::minfer::Prep;
  static Isa best_isa() { return ::minfer::best_isa(); }
  static Vals vals_of(const W& w) { return ::minfer::vals_of(w); }
  static Isa effective_isa(Isa isa, const Vals& v) { return ::minfer::effective_isa(isa, v); }
  static Isa i8_reader(Isa isa, const Vals& v) { return ::minfer::i8_reader(isa, v); }
  static void prepare(Isa i8, const float* x, int64_t T, int64_t ldx, int64_t K, Prep& p) {
    ::minfer::prepare(i8, x, T, ldx, K, p);
  }
  static void rows(const W& w, const Vals& v, Isa isa, const Prep& p, float* y, int64_t ldy,
                   int64_t K, int64_t N, int64_t n0, int64_t n1) {
    ::minfer::rows(w, v, isa, p, y, ldy, K, N, n0, n1);
  }
};

}  // namespace

const char* sparse_linear_isa(const SparseBitmask& w) {
  return isa_name(effective_isa(best_isa(), vals_of(w)));
}

std::vector<std::string> sparse_decode_isas() {
  std::vector<std::string> r;
#ifdef MINFER_SPARSE_AVX512
  r.push_back("avx512");
#endif
#ifdef MINFER_SPARSE_AVX2
  if (cpu_has_avx2()) r.push_back("avx2");
#endif
  r.push_back("scalar");
  return r;
}

void sparse_linear_decode_isa(const SparseBitmask& w, const std::string& isa, const float* x,
                              int64_t T, int64_t ldx, float* y, int64_t ldy, int64_t K, int64_t N) {
  const Isa i = isa_of(isa);
  MINFER_CHECK(T >= 1 && T <= 4 && ldx >= K && ldy >= N,
               "sparse_linear_decode_isa: T must be 1..4 (found {}), ldx >= K, ldy >= N", T);
  decode(w, vals_of(w), i, x, T, ldx, y, ldy, K, N);
}

void sparse_linear_ref(const SparseBitmask& w, const float* x, int64_t T, int64_t ldx, float* y,
                       int64_t ldy, int64_t K, int64_t N) {
  decode_ref_rows(w, vals_of(w), x, T, ldx, y, ldy, K, 0, N);
}

void sparse_linear(const SparseBitmask& w, const float* x, int64_t T, int64_t ldx, float* y,
                   int64_t ldy, int64_t K, int64_t N) {
  MINFER_CHECK(T >= 0 && ldx >= K && ldy >= N,
               "sparse_linear: bad strides (T {}, ldx {} < K {} or ldy {} < N {})", T, ldx, K, ldy,
               N);
  if (T == 0) return;
  const Vals v = vals_of(w);
  const int nt = omp_get_max_threads();
  if (T <= 4) return decode(w, v, best_isa(), x, T, ldx, y, ldy, K, N);
  constexpr int64_t R = 64;
  const int64_t tiles = (N + R - 1) / R;
  const int64_t kb = w.bitmask.dim(1);
  const uint8_t* m = w.bitmask.data<uint8_t>();
#pragma omp parallel for schedule(dynamic, 1) if (tiles > 1 && nt > 1)
  for (int64_t i = 0; i < tiles; ++i) {
    // Each thread's tile buffer, grown once and reused (no allocation per call once warm).
    static thread_local std::vector<float> buf;
    if (buf.size() < size_t(R * K)) buf.resize(size_t(R * K));
    float* tile = buf.data();
    const int64_t n0 = i * R, rows = std::min(R, N - n0);
    for (int64_t r = 0; r < rows; ++r)
      dequant_row(m + (n0 + r) * kb, kb, v, n0 + r, K, tile + r * K);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, int(T), int(rows), int(K), 1.f, x,
                int(ldx), tile, int(K), 0.f, y + n0, int(ldy));
  }
}

}  // namespace minfer

namespace minfer {

void sparse_linear_group(const SparseGroupItem* items, int n, const float* x, int64_t T,
                         int64_t ldx, int64_t K) {
  sparse_detail::linear_group<Fmt>(items, n, x, T, ldx, K, "sparse_linear_group", sparse_linear);
}

void sparse_linear_swiglu(const SparseBitmask& gate, const SparseBitmask& up, const float* x,
                          int64_t T, int64_t ldx, float* y, int64_t ldy, float* u, int64_t ldu,
                          int64_t K, int64_t F) {
  sparse_detail::linear_swiglu<Fmt>(gate, up, x, T, ldx, y, ldy, u, ldu, K, F,
                                    "sparse_linear_swiglu", sparse_linear);
}

}  // namespace minfer
