#include "kernels/cpu/sparse24.h"

#include <cblas.h>
#include <fmt/ranges.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <vector>

#include "engine/error.h"
#include "engine/formats/sparse24_convert.h"
#include "engine/half.h"
#include "engine/thread_pool.h"
#include "kernels/common/quant_math.h"
#include "kernels/cpu/env_switch.h"
#include "kernels/cpu/sparse_group.h"
#include "kernels/cpu/sparse_values.h"

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VBMI__) && \
    defined(__AVX512VNNI__)
#include <immintrin.h>
#define MINFER_S24_AVX512 1
#endif
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define MINFER_S24_AVX2 1
#define MINFER_AVX2_FN __attribute__((target("avx2,fma")))
#endif

namespace minfer {

namespace {

using Vals = sparse_detail::SparseValues;

Vals vals_of(const Sparse24& w) {
  return sparse_detail::sparse_values_of(*w.values);
}

// Input of kept value j of a row whose index bytes are `ib`.
inline int64_t input_of(const uint8_t* ib, int64_t j) {
  return 4 * (j >> 1) + ((ib[j >> 2] >> (2 * (j & 3))) & 3);
}

void decode_ref_rows(const Sparse24& w, const Vals& v, const float* x, int64_t T, int64_t ldx,
                     float* y, int64_t ldy, int64_t K, int64_t n0, int64_t n1) {
  const int64_t kb = w.idx.dim(1), kv = K / 2;
  const uint8_t* p = w.idx.data<uint8_t>();
  std::vector<char> bad(size_t(T), 0);
  if (v.kind == Vals::I8)
    for (int64_t t = 0; t < T; ++t)
      for (int64_t k = 0; k < K; ++k)
        if (!std::isfinite(x[t * ldx + k])) bad[size_t(t)] = 1;
  for (int64_t n = n0; n < n1; ++n) {
    const uint8_t* ib = p + n * kb;
    for (int64_t t = 0; t < T; ++t) {
      if (bad[size_t(t)]) {
        y[t * ldy + n] = std::numeric_limits<float>::quiet_NaN();
        continue;
      }
      float s = 0.f;
      for (int64_t j = 0; j < kv; ++j) s += v.at(n, j) * x[t * ldx + input_of(ib, j)];
      y[t * ldy + n] = s;
    }
  }
}

// A row of int8 values (index bytes ib, codes u) as f32 [K] (dst fully written).
void dequant_row_i8(const uint8_t* ib, const uint8_t* cp, float s, int64_t K, float* dst) {
  std::fill(dst, dst + K, 0.f);
  for (int64_t j = 0; j < K / 2; ++j) dst[input_of(ib, j)] = qm::dequant_uz(cp[j], 128, s);
}

// Stored position i of a row's 16 codes in a SparseRun block holds kept value kRunOrder[i] of the
// step (the lane order in which the AVX2 kernel's unpack leaves the gathered x).
constexpr int kRunOrder[16] = {0, 1, 2, 3, 8, 9, 10, 11, 4, 5, 6, 7, 12, 13, 14, 15};

// Row n of a SparseRun back in the `idx` / values layout: index bytes ib[ceil(K / 8)], codes
// u[K / 2].
void run_row(const Sparse24& w, int64_t n, int64_t K, uint8_t* ib, uint8_t* u) {
  const int64_t kb = (K + 7) / 8, kv = K / 2, steps = (K + 31) / 32;
  const uint8_t* blk = w.run.bytes.data<uint8_t>() + (n / 4) * steps * SparseRun::kBlock;
  const int64_t r = n % 4;
  for (int64_t st = 0; st < steps; ++st) {
    const uint8_t* b = blk + st * SparseRun::kBlock;
    for (int64_t i = 0; i < 4; ++i)
      if (4 * st + i < kb) ib[4 * st + i] = b[4 * r + i];
    for (int64_t i = 0; i < 16; ++i) {
      const int64_t j = 16 * st + kRunOrder[i];
      if (j < kv) u[j] = b[16 + 16 * r + i] ^ 0x80;
    }
  }
}

// Row n of W as f32 [K] (dst fully written).
void dequant_row(const uint8_t* ib, const Vals& v, int64_t n, int64_t K, float* dst) {
  std::fill(dst, dst + K, 0.f);
  const int64_t kv = K / 2;
  if (v.kind == Vals::F32) {
    const float* vp = static_cast<const float*>(v.p) + n * v.ld;
    for (int64_t j = 0; j < kv; ++j) dst[input_of(ib, j)] = vp[j];
  } else if (v.kind == Vals::I8) {
    const uint8_t* cp = static_cast<const uint8_t*>(v.p) + n * v.ld;
    dequant_row_i8(ib, cp, v.scale(n), K, dst);
  } else {
    for (int64_t j = 0; j < kv; ++j) dst[input_of(ib, j)] = v.at(n, j);
  }
}

#ifdef MINFER_S24_AVX2
// x rounded to 16-bit codes per token row: d = max|x| / 32639, q = round-to-nearest-even(x / d)
// clamped to ±32639 (the SparseBitmask kernels' rounding, kernels/cpu/sparse.h); a row with an
// inf or NaN gets d = NaN and zero codes. Kp = K padded to `pad`, zero codes there.
struct XQ {
  std::vector<int16_t> q;  // [T, Kp]
  int64_t Kp = 0;
  float d[4] = {0, 0, 0, 0};
};

void quantize_x16(const float* x, int64_t T, int64_t ldx, int64_t K, int64_t pad, XQ& out) {
  const int64_t Kp = (K + pad - 1) / pad * pad;
  if (out.q.size() < size_t(T * Kp)) out.q.resize(size_t(T * Kp));
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
    int16_t* qr = out.q.data() + t * Kp;
    for (int64_t k = 0; k < Kp; ++k) {
      const float q = k < K && finite ? std::nearbyint(xr[k] * inv) : 0.f;
      qr[k] = int16_t(std::clamp(q, -32639.f, 32639.f));
    }
  }
}

// `n` (<= 16) bytes of a row from byte b on; bytes past the row's kb read as 0.
inline void row_bytes(const uint8_t* row, int64_t b, int64_t kb, int64_t n, uint8_t* dst) {
  const int64_t have = std::clamp<int64_t>(kb - b, 0, n);
  std::memcpy(dst, row + b, size_t(have));
  std::memset(dst + have, 0, size_t(n - have));
}

#endif

#ifdef MINFER_S24_AVX512
// int8 values: x rounded as quantize_x16 does (the same step, the same round-to-nearest-even,
// the same clamp: _mm512_cvtps_epi32 under the default rounding mode is nearbyint), kept as the
// unsigned bytes of q + 32768 = 256 H + L, planes [T, Kp] each, Kp a multiple of 128 (padding:
// q = 0). A row with an inf or NaN gets d = NaN.
struct XP {
  std::vector<uint8_t> h, l;
  int64_t Kp = 0;
  float d[4] = {0, 0, 0, 0};
};

void quantize_planes(const float* x, int64_t T, int64_t ldx, int64_t K, XP& xp) {
  const int64_t Kp = (K + 127) / 128 * 128;
  if (xp.h.size() < size_t(T * Kp)) {
    xp.h.resize(size_t(T * Kp));
    xp.l.resize(size_t(T * Kp));
  }
  xp.Kp = Kp;
  for (int64_t t = 0; t < T; ++t) {
    const float* xr = x + t * ldx;
    const float d = sparse_detail::act16_scale_avx512(xr, K);
    const bool finite = !std::isnan(d);
    xp.d[t] = d;
    const __m512 inv = _mm512_set1_ps(finite && d > 0.f ? 1.f / d : 0.f);
    const __m512i lim = _mm512_set1_epi32(32639), off = _mm512_set1_epi32(32768);
    uint8_t* hp = xp.h.data() + t * Kp;
    uint8_t* lp = xp.l.data() + t * Kp;
    for (int64_t k = 0; k < Kp; k += 16) {
      const __mmask16 lm = K - k >= 16 ? __mmask16(0xffff)
                           : K > k     ? __mmask16((1u << (K - k)) - 1)
                                       : __mmask16(0);
      __m512i q = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_maskz_loadu_ps(lm, xr + k), inv));
      q = _mm512_max_epi32(_mm512_min_epi32(q, lim), _mm512_sub_epi32(_mm512_setzero_si512(), lim));
      const __m512i u = _mm512_add_epi32(q, off);
      _mm_storeu_si128(reinterpret_cast<__m128i*>(hp + k),
                       _mm512_cvtepi32_epi8(_mm512_srli_epi32(u, 8)));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(lp + k), _mm512_cvtepi32_epi8(u));
    }
  }
}

// Per 128-input chunk a lane's 256 Σ w H + Σ w L - 32768 Σ w is its 4 products Σ w q, |.| <=
// 4 * 128 * 32639 < 2^24: the three int32 accumulators are combined (mod 2^32, exact while the
// true sum fits) and reduced in int64 every 64 chunks (8192 inputs, |lane| < 2^30).
constexpr int64_t kBlock = 64;

template <int TT>
void decode_i8_avx512(const Sparse24& w, const Vals& v, const XP& xp, float* y, int64_t ldy,
                      int64_t K, int64_t n0, int64_t n1) {
  const int64_t kb = w.idx.dim(1), chunks = (K + 127) / 128, kv = K / 2;
  const int64_t full = std::min(kb / 16, kv / 64);  // chunks whose bytes all lie in the row
  const uint8_t* p = w.idx.data<uint8_t>();
  const uint8_t* codes0 = static_cast<const uint8_t*>(v.p);
  const int64_t ld = v.ld;
  // Byte j of qword q selects bits 2 (j % 8).. of index word q; kept value j's group base is
  // 4 (j / 2).
  alignas(64) uint8_t shift[64], base[64];
  for (int j = 0; j < 64; ++j) {
    shift[j] = uint8_t(2 * (j % 8));
    base[j] = uint8_t(4 * (j / 2));
  }
  const __m512i vshift = _mm512_load_si512(shift), vbase = _mm512_load_si512(base);
  const __m512i three = _mm512_set1_epi8(3), flip = _mm512_set1_epi8(char(0x80)),
                ones = _mm512_set1_epi8(1);
  const uint8_t* hp[TT];
  const uint8_t* lp[TT];
  for (int t = 0; t < TT; ++t) {
    hp[t] = xp.h.data() + t * xp.Kp;
    lp[t] = xp.l.data() + t * xp.Kp;
  }
  for (int64_t n = n0; n < n1; ++n) {
    const uint8_t* ib = p + n * kb;
    const uint8_t* cp = codes0 + n * ld;
    int64_t S[TT];
    for (int t = 0; t < TT; ++t) S[t] = 0;
    for (int64_t c0 = 0; c0 < chunks; c0 += kBlock) {
      __m512i ah[TT], al[TT], aw = _mm512_setzero_si512();
      for (int t = 0; t < TT; ++t) ah[t] = al[t] = _mm512_setzero_si512();
      const int64_t c1 = std::min(chunks, c0 + kBlock);
      for (int64_t c = c0; c < c1; ++c) {
        __m128i ix;
        __m512i codes;
        if (c < full) {
          ix = _mm_loadu_si128(reinterpret_cast<const __m128i*>(ib + 16 * c));
          codes = _mm512_loadu_si512(cp + 64 * c);
        } else {  // the row's last, partial chunk: missing index bytes 0, codes 128 (w = 0)
          ix = _mm_maskz_loadu_epi8(__mmask16(_bzhi_u32(0xffffu, unsigned(kb - 16 * c))),
                                    ib + 16 * c);
          codes =
              _mm512_mask_loadu_epi8(flip, _bzhi_u64(~0ull, unsigned(kv - 64 * c)), cp + 64 * c);
        }
        const __m512i pos = _mm512_ternarylogic_epi32(
            _mm512_multishift_epi64_epi8(vshift, _mm512_cvtepu16_epi64(ix)), three, vbase, 0xEA);
        const __m512i wv = _mm512_xor_si512(codes, flip);
        aw = _mm512_dpbusd_epi32(aw, ones, wv);
        for (int t = 0; t < TT; ++t) {
          const uint8_t* h = hp[t] + 128 * c;
          const uint8_t* l = lp[t] + 128 * c;
          ah[t] = _mm512_dpbusd_epi32(
              ah[t],
              _mm512_permutex2var_epi8(_mm512_loadu_si512(h), pos, _mm512_loadu_si512(h + 64)), wv);
          al[t] = _mm512_dpbusd_epi32(
              al[t],
              _mm512_permutex2var_epi8(_mm512_loadu_si512(l), pos, _mm512_loadu_si512(l + 64)), wv);
        }
      }
      const __m512i w15 = _mm512_slli_epi32(aw, 15);
      for (int t = 0; t < TT; ++t) {
        const __m512i q =
            _mm512_sub_epi32(_mm512_add_epi32(_mm512_slli_epi32(ah[t], 8), al[t]), w15);
        S[t] += _mm512_reduce_add_epi64(
            _mm512_add_epi64(_mm512_cvtepi32_epi64(_mm512_castsi512_si256(q)),
                             _mm512_cvtepi32_epi64(_mm512_extracti64x4_epi64(q, 1))));
      }
    }
    const float s = v.scale(n);
    for (int t = 0; t < TT; ++t) y[t * ldy + n] = float(S[t]) * (s * xp.d[t]);
  }
}

// f32 values, 32 inputs (16 kept) per step.
template <int TT>
void decode_f32_avx512(const Sparse24& w, const Vals& v, const float* x, int64_t ldx, float* y,
                       int64_t ldy, int64_t K, int64_t n0, int64_t n1) {
  const int64_t kb = w.idx.dim(1), kv = K / 2;
  const uint8_t* p = w.idx.data<uint8_t>();
  const __m512i sh = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  const __m512i base = _mm512_setr_epi32(0, 0, 4, 4, 8, 8, 12, 12, 16, 16, 20, 20, 24, 24, 28, 28);
  const __m512i three = _mm512_set1_epi32(3);
  for (int64_t n = n0; n < n1; ++n) {
    const uint8_t* ib = p + n * kb;
    const float* vp = static_cast<const float*>(v.p) + n * v.ld;
    __m512 acc[TT];
    for (int t = 0; t < TT; ++t) acc[t] = _mm512_setzero_ps();
    for (int64_t k = 0; k < K; k += 32) {
      uint32_t bits = 0;
      const int64_t b = k / 8;
      if (b + 4 <= kb)
        std::memcpy(&bits, ib + b, 4);
      else
        for (int64_t i = 0; b + i < kb; ++i) bits |= uint32_t(ib[b + i]) << (8 * i);
      const __m512i pos = _mm512_ternarylogic_epi32(
          _mm512_srlv_epi32(_mm512_set1_epi32(int(bits)), sh), three, base, 0xEA);
      const int64_t left = K - k;
      const __mmask16 m0 = left >= 16 ? __mmask16(0xffff) : __mmask16((1u << left) - 1);
      const __mmask16 m1 = left >= 32  ? __mmask16(0xffff)
                           : left > 16 ? __mmask16((1u << (left - 16)) - 1)
                                       : __mmask16(0);
      const __mmask16 mv = left >= 32 ? __mmask16(0xffff) : __mmask16((1u << (left / 2)) - 1);
      const __m512 wv = _mm512_maskz_loadu_ps(mv, vp + k / 2);
      for (int t = 0; t < TT; ++t) {
        const float* xr = x + t * ldx + k;
        const __m512 g = _mm512_permutex2var_ps(_mm512_maskz_loadu_ps(m0, xr), pos,
                                                _mm512_maskz_loadu_ps(m1, xr + 16));
        acc[t] = _mm512_fmadd_ps(wv, g, acc[t]);
      }
    }
    for (int t = 0; t < TT; ++t) y[t * ldy + n] = _mm512_reduce_add_ps(acc[t]);
  }
  (void)kv;
}
#endif

#ifdef MINFER_S24_AVX2
// Per index byte (2 groups, 8 inputs, 4 kept): pshufb control bytes that move the 4 kept int16
// codes of those 8 inputs to the lane's low 8 bytes.
struct GatherLut {
  uint64_t e[256];
  constexpr GatherLut() : e{} {
    for (int b = 0; b < 256; ++b) {
      uint64_t v = 0;
      for (int j = 0; j < 4; ++j) {
        const int pos = 4 * (j / 2) + ((b >> (2 * j)) & 3);
        v |= uint64_t(2 * pos) << (16 * j);
        v |= uint64_t(2 * pos + 1) << (16 * j + 8);
      }
      e[b] = v;
    }
  }
};
constexpr GatherLut kGather;

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

// f32 values, 16 inputs (8 kept) per step: lanes 0-3 gather from inputs 0-7, lanes 4-7 from 8-15.
template <int TT>
MINFER_AVX2_FN void decode_f32_avx2(const Sparse24& w, const Vals& v, const float* x, int64_t ldx,
                                    float* y, int64_t ldy, int64_t K, int64_t n0, int64_t n1) {
  const int64_t kb = w.idx.dim(1);
  const uint8_t* p = w.idx.data<uint8_t>();
  const __m256i sh = _mm256_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14);
  const __m256i base = _mm256_setr_epi32(0, 0, 4, 4, 0, 0, 4, 4);
  const __m256i three = _mm256_set1_epi32(3);
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  for (int64_t n = n0; n < n1; ++n) {
    const uint8_t* ib = p + n * kb;
    const float* vp = static_cast<const float*>(v.p) + n * v.ld;
    __m256 acc[TT];
    for (int t = 0; t < TT; ++t) acc[t] = _mm256_setzero_ps();
    for (int64_t k = 0; k < K; k += 16) {
      const int64_t b = k / 8;
      const unsigned bits = unsigned(ib[b]) | (b + 1 < kb ? unsigned(ib[b + 1]) << 8 : 0u);
      const __m256i pos = _mm256_add_epi32(
          _mm256_and_si256(_mm256_srlv_epi32(_mm256_set1_epi32(int(bits)), sh), three), base);
      const int64_t left = K - k;
      __m256 wv;
      __m256i m0, m1;
      if (left >= 16) {
        wv = _mm256_loadu_ps(vp + k / 2);
        m0 = m1 = _mm256_set1_epi32(-1);
      } else {
        wv = _mm256_maskload_ps(vp + k / 2,
                                _mm256_cmpgt_epi32(_mm256_set1_epi32(int(left / 2)), lane));
        m0 = _mm256_cmpgt_epi32(_mm256_set1_epi32(int(left)), lane);
        m1 = _mm256_cmpgt_epi32(_mm256_set1_epi32(int(left - 8)), lane);
      }
      for (int t = 0; t < TT; ++t) {
        const float* xr = x + t * ldx + k;
        const __m256 ga = _mm256_permutevar8x32_ps(_mm256_maskload_ps(xr, m0), pos);
        const __m256 gb = _mm256_permutevar8x32_ps(_mm256_maskload_ps(xr + 8, m1), pos);
        acc[t] = _mm256_fmadd_ps(wv, _mm256_blend_ps(ga, gb, 0xF0), acc[t]);
      }
    }
    for (int t = 0; t < TT; ++t) y[t * ldy + n] = hsum256(acc[t]);
  }
}

// int8 values, x as int16 codes [T, Kp] (Kp a multiple of 32), 32 inputs (16 kept) per step.
// Per step a lane gains <= 2 * 128 * 32639 < 2^23: flushed to int64 every 128 steps.
template <int TT>
MINFER_AVX2_FN void decode_i8_avx2(const Sparse24& w, const Vals& v, const XQ& xq, float* y,
                                   int64_t ldy, int64_t K, int64_t n0, int64_t n1) {
  const int64_t kb = w.idx.dim(1), kv = K / 2, steps = (K + 31) / 32;
  const uint8_t* p = w.idx.data<uint8_t>();
  const __m128i flip = _mm_set1_epi8(char(0x80));
  for (int64_t n = n0; n < n1; ++n) {
    const uint8_t* ib = p + n * kb;
    const uint8_t* cp = static_cast<const uint8_t*>(v.p) + n * v.ld;
    int64_t S[TT];
    for (int t = 0; t < TT; ++t) S[t] = 0;
    for (int64_t s0 = 0; s0 < steps; s0 += 128) {
      __m256i acc[TT];
      for (int t = 0; t < TT; ++t) acc[t] = _mm256_setzero_si256();
      const int64_t s1 = std::min(steps, s0 + 128);
      for (int64_t st = s0; st < s1; ++st) {
        alignas(16) uint8_t ix[4];
        __m128i c;
        if (4 * st + 4 <= kb && 16 * st + 16 <= kv) {
          std::memcpy(ix, ib + 4 * st, 4);
          c = _mm_loadu_si128(reinterpret_cast<const __m128i*>(cp + 16 * st));
        } else {  // the row's last, partial step: missing codes read as 128 (w = 0)
          row_bytes(ib, 4 * st, kb, 4, ix);
          alignas(16) uint8_t tmp[16];
          std::memset(tmp, 0x80, 16);
          std::memcpy(tmp, cp + 16 * st, size_t(kv - 16 * st));
          c = _mm_load_si128(reinterpret_cast<const __m128i*>(tmp));
        }
        const __m256i ca =
            _mm256_set_epi64x(0, int64_t(kGather.e[ix[1]]), 0, int64_t(kGather.e[ix[0]]));
        const __m256i cb =
            _mm256_set_epi64x(0, int64_t(kGather.e[ix[3]]), 0, int64_t(kGather.e[ix[2]]));
        // Kept values 0-3 | 4-7 | 8-11 | 12-15 widened, reordered to lanes {0-3, 8-11 | 4-7,
        // 12-15}, the order unpacklo leaves the gathered x in.
        const __m256i w16 =
            _mm256_permute4x64_epi64(_mm256_cvtepi8_epi16(_mm_xor_si128(c, flip)), 0xD8);
        for (int t = 0; t < TT; ++t) {
          const int16_t* xr = xq.q.data() + t * xq.Kp + 32 * st;
          const __m256i ga =
              _mm256_shuffle_epi8(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(xr)), ca);
          const __m256i gb = _mm256_shuffle_epi8(
              _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xr + 16)), cb);
          acc[t] = _mm256_add_epi32(acc[t], _mm256_madd_epi16(w16, _mm256_unpacklo_epi64(ga, gb)));
        }
      }
      for (int t = 0; t < TT; ++t) S[t] += hsum256_epi32(acc[t]);
    }
    const float s = v.scale(n);
    for (int t = 0; t < TT; ++t) y[t * ldy + n] = float(S[t]) * (s * xq.d[t]);
  }
}

// The same integers from the run layout (SparseRun, engine/formats/sparse24.h): 4 rows per pass,
// one 80-byte block per 32 inputs (the 4 rows' index bytes, then their codes already signed and
// in the gathered lane order), each x vector loaded once for the 4 rows. Rows of [n0, n1) outside
// a whole group of 4 take the one-row loop over the same blocks. Per step a lane gains
// <= 2 * 128 * 32639 < 2^23: flushed to int64 every 128 steps, as decode_i8_avx2.
template <int TT, int RR>
MINFER_AVX2_FN inline void run_rows_avx2(const uint8_t* blk, int64_t steps, int r0, const XQ& xq,
                                         int64_t S[RR][TT]) {
  for (int r = 0; r < RR; ++r)
    for (int t = 0; t < TT; ++t) S[r][t] = 0;
  for (int64_t s0 = 0; s0 < steps; s0 += 128) {
    __m256i acc[RR][TT];
    for (int r = 0; r < RR; ++r)
      for (int t = 0; t < TT; ++t) acc[r][t] = _mm256_setzero_si256();
    const int64_t s1 = std::min(steps, s0 + 128);
    for (int64_t st = s0; st < s1; ++st) {
      const uint8_t* b = blk + st * SparseRun::kBlock;
      for (int r = 0; r < RR; ++r) {
        const uint8_t* ix = b + 4 * (r0 + r);
        const __m256i ca =
            _mm256_set_epi64x(0, int64_t(kGather.e[ix[1]]), 0, int64_t(kGather.e[ix[0]]));
        const __m256i cb =
            _mm256_set_epi64x(0, int64_t(kGather.e[ix[3]]), 0, int64_t(kGather.e[ix[2]]));
        const __m256i w16 = _mm256_cvtepi8_epi16(
            _mm_loadu_si128(reinterpret_cast<const __m128i*>(b + 16 + 16 * (r0 + r))));
        for (int t = 0; t < TT; ++t) {
          const int16_t* xr = xq.q.data() + t * xq.Kp + 32 * st;
          const __m256i ga =
              _mm256_shuffle_epi8(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(xr)), ca);
          const __m256i gb = _mm256_shuffle_epi8(
              _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xr + 16)), cb);
          acc[r][t] =
              _mm256_add_epi32(acc[r][t], _mm256_madd_epi16(w16, _mm256_unpacklo_epi64(ga, gb)));
        }
      }
    }
    for (int r = 0; r < RR; ++r)
      for (int t = 0; t < TT; ++t) S[r][t] += hsum256_epi32(acc[r][t]);
  }
}

template <int TT>
MINFER_AVX2_FN void decode_i8_avx2_run(const Sparse24& w, const Vals& v, const XQ& xq, float* y,
                                       int64_t ldy, int64_t K, int64_t n0, int64_t n1) {
  const int64_t steps = (K + 31) / 32, gb = steps * SparseRun::kBlock;
  const uint8_t* run = w.run.bytes.data<uint8_t>();
  for (int64_t n = n0; n < n1;) {
    const uint8_t* blk = run + (n / 4) * gb;
    if (n % 4 == 0 && n + 4 <= n1) {
      int64_t S[4][TT];
      run_rows_avx2<TT, 4>(blk, steps, 0, xq, S);
      for (int r = 0; r < 4; ++r) {
        const float s = v.scale(n + r);
        for (int t = 0; t < TT; ++t) y[t * ldy + n + r] = float(S[r][t]) * (s * xq.d[t]);
      }
      n += 4;
    } else {
      int64_t S[1][TT];
      run_rows_avx2<TT, 1>(blk, steps, int(n % 4), xq, S);
      const float s = v.scale(n);
      for (int t = 0; t < TT; ++t) y[t * ldy + n] = float(S[0][t]) * (s * xq.d[t]);
      ++n;
    }
  }
}

bool cpu_has_avx2() {
  static const bool ok = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return ok;
}
#endif

using sparse_detail::Isa;
using sparse_detail::isa_name;

Isa isa_of(const std::string& isa) {
  return sparse_detail::isa_named(isa, sparse24_decode_isas(), "sparse-24");
}

Isa best_isa() {
  static const Isa forced = sparse_detail::forced_isa(sparse24_decode_isas(), "sparse-24", Isa(-1));
  if (forced != Isa(-1)) return forced;
#if defined(MINFER_S24_AVX512)
  return Isa::Avx512;
#elif defined(MINFER_S24_AVX2)
  return cpu_has_avx2() ? Isa::Avx2 : Isa::Scalar;
#else
  return Isa::Scalar;
#endif
}

Isa effective_isa(Isa isa, const Vals& v) {
  return v.kind == Vals::F32 || v.kind == Vals::I8 ? isa : Isa::Scalar;
}

template <typename F>
void by_tokens(int64_t T, F&& f) {
  switch (T) {
    case 1:
      return f(std::integral_constant<int, 1>{});
    case 2:
      return f(std::integral_constant<int, 2>{});
    case 3:
      return f(std::integral_constant<int, 3>{});
    default:
      return f(std::integral_constant<int, 4>{});
  }
}

// x prepared once for the decode path (one call or an op group): the rows of x and, for int8
// values, their 16-bit codes in the layout of the kernel set that reads them.
struct Prep {
  const float* x = nullptr;
  int64_t T = 0, ldx = 0;
#ifdef MINFER_S24_AVX512
  const XP* xp = nullptr;
#endif
#ifdef MINFER_S24_AVX2
  const XQ* xq = nullptr;
#endif
};

// Fills p for T <= 4 rows of x; `i8` is the kernel set that reads int8 values in this call
// (Scalar: none does). The code buffers are the calling thread's, grown once and reused.
void prepare(Isa i8, const float* x, int64_t T, int64_t ldx, int64_t K, Prep& p) {
  p.x = x;
  p.T = T;
  p.ldx = ldx;
#ifdef MINFER_S24_AVX512
  static thread_local XP xp_buf;
  if (i8 == Isa::Avx512) {
    quantize_planes(x, T, ldx, K, xp_buf);
    p.xp = &xp_buf;
  }
#endif
#ifdef MINFER_S24_AVX2
  static thread_local XQ xq_buf;
  if (i8 == Isa::Avx2) {
    quantize_x16(x, T, ldx, K, 32, xq_buf);
    p.xq = &xq_buf;
  }
#endif
  (void)i8;
  (void)K;
}

// The kernel set that reads v's int8 codes against prepared x when `isa` runs (Scalar: none).
Isa i8_reader(Isa isa, const Vals& v) {
  isa = effective_isa(isa, v);
  return v.kind == Vals::I8 ? isa : Isa::Scalar;
}

template <int TT>
void rows_t(const Sparse24& w, const Vals& v, Isa isa, const Prep& p, float* y, int64_t ldy,
            int64_t K, int64_t n0, int64_t n1) {
#ifdef MINFER_S24_AVX512
  if (isa == Isa::Avx512) {
    if (v.kind == Vals::I8) return decode_i8_avx512<TT>(w, v, *p.xp, y, ldy, K, n0, n1);
    return decode_f32_avx512<TT>(w, v, p.x, p.ldx, y, ldy, K, n0, n1);
  }
#endif
#ifdef MINFER_S24_AVX2
  if (isa == Isa::Avx2) {
    if (v.kind == Vals::I8) {
      if (w.run.defined()) return decode_i8_avx2_run<TT>(w, v, *p.xq, y, ldy, K, n0, n1);
      return decode_i8_avx2<TT>(w, v, *p.xq, y, ldy, K, n0, n1);
    }
    return decode_f32_avx2<TT>(w, v, p.x, p.ldx, y, ldy, K, n0, n1);
  }
#endif
  decode_ref_rows(w, v, p.x, TT, p.ldx, y, ldy, K, n0, n1);
}

// Rows [n0, n1) of W against prepared x with the kernel set `isa` (effective for v): each row's
// arithmetic does not depend on the range, so any split gives the same y.
void rows(const Sparse24& w, const Vals& v, Isa isa, const Prep& p, float* y, int64_t ldy,
          int64_t K, int64_t n0, int64_t n1) {
  by_tokens(p.T, [&](auto tt) { rows_t<decltype(tt)::value>(w, v, isa, p, y, ldy, K, n0, n1); });
}

void decode(const Sparse24& w, const Vals& v, Isa isa, const float* x, int64_t T, int64_t ldx,
            float* y, int64_t ldy, int64_t K, int64_t N) {
  isa = effective_isa(isa, v);
  Prep p;
  prepare(i8_reader(isa, v), x, T, ldx, K, p);
  parallel_for(N, K, sparse_detail::kDecodeMinWork,
               [&](int64_t n0, int64_t n1) { rows(w, v, isa, p, y, ldy, K, n0, n1); });
}

// The pieces the shared op-group drivers need (sparse_detail::decode_group, decode_swiglu in
// kernels/cpu/sparse_group.h); each forwards to this file's function of the same name.
struct Fmt {
  using W = Sparse24;
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
    (void)N;  // a Sparse24 row knows its own length
    ::minfer::rows(w, v, isa, p, y, ldy, K, n0, n1);
  }
};

}  // namespace

std::vector<std::string> sparse24_decode_isas() {
  std::vector<std::string> r;
#ifdef MINFER_S24_AVX512
  r.push_back("avx512");
#endif
#ifdef MINFER_S24_AVX2
  if (cpu_has_avx2()) r.push_back("avx2");
#endif
  r.push_back("scalar");
  return r;
}

bool sparse24_decode_wins(const Linear& values) {
#ifdef MINFER_S24_AVX512
  const Vals v = sparse_detail::sparse_values_of(values);
  return v.kind == Vals::F32 || v.kind == Vals::I8;
#elif defined(MINFER_S24_AVX2)
  // int8 values in the run layout: 2.5-3.3x the bitmask's AVX2 kernel (docs/pruning.md).
  return cpu_has_avx2() && sparse_detail::sparse_values_of(values).kind == Vals::I8;
#else
  (void)values;
  return false;
#endif
}

bool sparse24_upload(Linear& w) {
  static const bool enabled = env_switch("MINFER_SPARSE24_AT_LOAD", "1", {"0", "1"}) == "1";
  const SparseBitmask* s = std::get_if<SparseBitmask>(&w.repr);
  if (!enabled || !s || !sparse24_decode_wins(*s->values)) return false;
  const bool exact = sparse_is_2of4(*s);
  if (!exact && !sparse_is_at_most_2of4(*s)) return false;
  const Tensor mask = s->bitmask;
  // Re-packed values replace the old ones in memory too.
  Tensor old_values;
  if (!exact) {
    if (const Dense* d = std::get_if<Dense>(&s->values->repr)) old_values = d->w;
    if (const Quantized* q = std::get_if<Quantized>(&s->values->repr)) old_values = q->codes;
  }
  Sparse24 r =
      exact ? sparse24_from_bitmask(*s, w.name) : sparse24_from_bitmask_repacked(*s, w.name);
  w.repr = std::move(r);
  release_mapped_pages(mask);  // the index bytes replace the mask in memory
  if (old_values.defined()) release_mapped_pages(old_values);
  return true;
}

bool sparse24_repack_for_cpu(Sparse24& w) {
  static const bool enabled = env_switch("MINFER_SPARSE_REPACK", "1", {"0", "1"}) == "1";
  if (!enabled || w.run.defined()) return false;
  const Vals v = vals_of(w);
  const int64_t N = w.idx.dim(0), K = w.in;
  if (v.kind != Vals::I8 || N % 4 != 0 || !sparse24_run_reader()) return false;
  const int64_t kb = w.idx.dim(1), kv = K / 2, steps = (K + 31) / 32;
  Tensor run = Tensor::empty(DType::U8, {N / 4, steps * SparseRun::kBlock});
  uint8_t* out = run.data<uint8_t>();
  const uint8_t* idx = w.idx.data<uint8_t>();
  const uint8_t* codes = static_cast<const uint8_t*>(v.p);
  parallel_for(N / 4, K, sparse_detail::kDecodeMinWork, [&](int64_t g0, int64_t g1) {
    for (int64_t g = g0; g < g1; ++g)
      for (int64_t r = 0; r < 4; ++r) {
        const uint8_t* ib = idx + (4 * g + r) * kb;
        const uint8_t* cp = codes + (4 * g + r) * v.ld;
        for (int64_t st = 0; st < steps; ++st) {
          uint8_t* b = out + (g * steps + st) * SparseRun::kBlock;
          for (int64_t i = 0; i < 4; ++i) b[4 * r + i] = 4 * st + i < kb ? ib[4 * st + i] : 0;
          for (int64_t i = 0; i < 16; ++i) {
            const int64_t j = 16 * st + kRunOrder[i];
            b[16 + 16 * r + i] = j < kv ? uint8_t(cp[j] ^ 0x80) : 0;
          }
        }
      }
  });
  w.run.bytes = run;
  // The run replaces the index bytes and codes in memory (every CPU reader of int8 values takes
  // the run); save, dequantize_weight and the scalar reference fault the file's pages back in.
  release_mapped_pages(w.idx);
  release_mapped_pages(std::get<Quantized>(w.values->repr).codes);
  return true;
}

bool sparse24_run_reader() {
#ifdef MINFER_S24_AVX2
  return best_isa() == Isa::Avx2;
#else
  return false;
#endif
}

const char* sparse24_linear_isa(const Sparse24& w) {
  return isa_name(effective_isa(best_isa(), vals_of(w)));
}

void sparse24_linear_decode_isa(const Sparse24& w, const std::string& isa, const float* x,
                                int64_t T, int64_t ldx, float* y, int64_t ldy, int64_t K,
                                int64_t N) {
  const Isa i = isa_of(isa);
  MINFER_CHECK(T >= 1 && T <= 4 && ldx >= K && ldy >= N,
               "sparse24_linear_decode_isa: T must be 1..4 (found {}), ldx >= K, ldy >= N", T);
  decode(w, vals_of(w), i, x, T, ldx, y, ldy, K, N);
}

void sparse24_linear_ref(const Sparse24& w, const float* x, int64_t T, int64_t ldx, float* y,
                         int64_t ldy, int64_t K, int64_t N) {
  decode_ref_rows(w, vals_of(w), x, T, ldx, y, ldy, K, 0, N);
}

void sparse24_linear(const Sparse24& w, const float* x, int64_t T, int64_t ldx, float* y,
                     int64_t ldy, int64_t K, int64_t N) {
  MINFER_CHECK(T >= 0 && ldx >= K && ldy >= N,
               "sparse24_linear: bad strides (T {}, ldx {} < K {} or ldy {} < N {})", T, ldx, K,
               ldy, N);
  if (T == 0) return;
  const Vals v = vals_of(w);
  if (T <= 4) return decode(w, v, best_isa(), x, T, ldx, y, ldy, K, N);
  const int nt = omp_get_max_threads();
  constexpr int64_t R = 64;
  const int64_t tiles = (N + R - 1) / R, kb = w.idx.dim(1);
  const uint8_t* p = w.idx.data<uint8_t>();
#pragma omp parallel for schedule(dynamic, 1) if (tiles > 1 && nt > 1)
  for (int64_t i = 0; i < tiles; ++i) {
    static thread_local std::vector<float> buf;
    if (buf.size() < size_t(R * K)) buf.resize(size_t(R * K));
    float* tile = buf.data();
    const int64_t n0 = i * R, rows = std::min(R, N - n0);
    if (w.run.defined()) {  // the run layout replaced idx and the codes in memory: read it
      static thread_local std::vector<uint8_t> ib, u;
      ib.resize(size_t(kb));
      u.resize(size_t(K / 2));
      for (int64_t r = 0; r < rows; ++r) {
        run_row(w, n0 + r, K, ib.data(), u.data());
        dequant_row_i8(ib.data(), u.data(), v.scale(n0 + r), K, tile + r * K);
      }
    } else {
      for (int64_t r = 0; r < rows; ++r) dequant_row(p + (n0 + r) * kb, v, n0 + r, K, tile + r * K);
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, int(T), int(rows), int(K), 1.f, x,
                int(ldx), tile, int(K), 0.f, y + n0, int(ldy));
  }
}

}  // namespace minfer

namespace minfer {

void sparse24_linear_group(const Sparse24GroupItem* items, int n, const float* x, int64_t T,
                           int64_t ldx, int64_t K) {
  sparse_detail::linear_group<Fmt>(items, n, x, T, ldx, K, "sparse24_linear_group",
                                   sparse24_linear);
}

void sparse24_linear_swiglu(const Sparse24& gate, const Sparse24& up, const float* x, int64_t T,
                            int64_t ldx, float* y, int64_t ldy, float* u, int64_t ldu, int64_t K,
                            int64_t F) {
  sparse_detail::linear_swiglu<Fmt>(gate, up, x, T, ldx, y, ldy, u, ldu, K, F,
                                    "sparse24_linear_swiglu", sparse24_linear);
}

}  // namespace minfer
