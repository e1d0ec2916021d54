#include "kernels/cpu/codebook.h"

#include <cblas.h>
#include <omp.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "engine/half.h"
#include "engine/thread_pool.h"
#include "kernels/common/codebook_math.h"

#if defined(__AVX512F__) && defined(__AVX512BW__)
#include <immintrin.h>
#define MINFER_CODEBOOK_AVX512 1
#elif defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#include <immintrin.h>
#define MINFER_CODEBOOK_AVX2 1
#endif

namespace minfer {

namespace {

// The packed weight as kernels read it.
struct View {
  int bits = 4;
  int64_t group = 0, rb = 0, ng = 0, nc = 0;  // group, index bytes per row, tables per row, C
  const uint8_t* idx = nullptr;               // [N, rb]
  const uint16_t* cen = nullptr;              // [N, ng, nc] f16

  const uint8_t* row(int64_t n) const { return idx + n * rb; }
  const uint16_t* table(int64_t n, int64_t g) const { return cen + (n * ng + g) * nc; }
};

View view_of(const Codebook& w) {
  View v;
  v.bits = w.bits;
  v.group = w.group;
  v.rb = w.indices.dim(1);
  v.ng = w.centroids.dim(1);
  v.nc = w.centroids.dim(2);
  v.idx = w.indices.data<uint8_t>();
  v.cen = w.centroids.data<uint16_t>();
  return v;
}

void decode_ref_rows(const View& v, const float* x, int64_t T, int64_t ldx, float* y, int64_t ldy,
                     int64_t K, int64_t n0, int64_t n1) {
  for (int64_t n = n0; n < n1; ++n) {
    const uint8_t* r = v.row(n);
    for (int64_t t = 0; t < T; ++t) {
      float s = 0.f;
      for (int64_t k = 0; k < K; ++k)
        s += f16_to_f32(v.table(n, k / v.group)[cb::index_at(r, k, v.bits)]) * x[t * ldx + k];
      y[t * ldy + n] = s;
    }
  }
}

void dequant_row_ref(const View& v, int64_t n, int64_t K, float* dst) {
  const uint8_t* r = v.row(n);
  for (int64_t k = 0; k < K; ++k)
    dst[k] = f16_to_f32(v.table(n, k / v.group)[cb::index_at(r, k, v.bits)]);
}

#ifdef MINFER_CODEBOOK_AVX512
// Per bit width, the constants that unpack 16 indices (2 b bytes, broadcast to every 128-bit
// lane) into 16 int32 lanes: vpshufb control taking bytes o, o + 1 (o = i b / 8) into lane i's low
// half, and the right shift (i b) % 8.
struct Unpack {
  __m512i shuf, shift, mask;
  __mmask16 bytes;  // load mask for the 2 b bytes
};

Unpack make_unpack(int bits) {
  alignas(64) int8_t shuf[64];
  alignas(64) int32_t shift[16];
  for (int i = 0; i < 16; ++i) {
    const int bit = i * bits, o = bit >> 3;
    // Lane i sits in 128-bit lane i / 4; vpshufb indexes within that lane, which holds a copy of
    // all 16 bytes.
    shuf[4 * i + 0] = int8_t(o);
    shuf[4 * i + 1] = int8_t(o + 1 < 16 ? o + 1 : 0x80);
    shuf[4 * i + 2] = int8_t(0x80);
    shuf[4 * i + 3] = int8_t(0x80);
    shift[i] = bit & 7;
  }
  Unpack u;
  u.shuf = _mm512_load_si512(shuf);
  u.shift = _mm512_load_si512(shift);
  u.mask = _mm512_set1_epi32((1 << bits) - 1);
  u.bytes = __mmask16((1u << (2 * bits)) - 1u);  // 2 b <= 16 bytes
  return u;
}

// Indices k .. k + 15 of a row (k a multiple of 16) as int32 lanes.
inline __m512i unpack16(const uint8_t* row, int64_t k, int bits, const Unpack& u) {
  const __m128i raw = _mm_maskz_loadu_epi8(u.bytes, row + (k / 16) * 2 * bits);
  const __m512i b = _mm512_shuffle_epi8(_mm512_broadcast_i32x4(raw), u.shuf);
  return _mm512_and_si512(_mm512_srlv_epi32(b, u.shift), u.mask);
}

// One group's table in f32: registers for C <= 32, memory for the gather.
struct Table {
  __m512 lo, hi;
  alignas(64) float mem[256];
};

inline void load_table(const uint16_t* t, int64_t nc, Table& tb) {
  if (nc <= 32) {
    const __mmask16 m0 = nc >= 16 ? __mmask16(0xffff) : __mmask16((1u << nc) - 1u);
    tb.lo = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m0, t));
    tb.hi = nc > 16 ? _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(t + 16)))
                    : _mm512_setzero_ps();
    return;
  }
  for (int64_t c = 0; c < nc; c += 16)
    _mm512_store_ps(tb.mem + c,
                    _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(t + c))));
}

template <int BITS>
inline __m512 lookup(__m512i i, const Table& tb) {
  if constexpr (BITS <= 4) return _mm512_permutexvar_ps(i, tb.lo);
  if constexpr (BITS == 5) return _mm512_permutex2var_ps(tb.lo, i, tb.hi);
  return _mm512_i32gather_ps(i, tb.mem, 4);
}

template <int BITS, int TT>
void decode_rows_simd(const View& v, const float* x, int64_t ldx, float* y, int64_t ldy, int64_t K,
                      int64_t n0, int64_t n1) {
  const Unpack u = make_unpack(BITS);
  Table tb;
  for (int64_t n = n0; n < n1; ++n) {
    const uint8_t* r = v.row(n);
    __m512 acc[TT];
    for (int t = 0; t < TT; ++t) acc[t] = _mm512_setzero_ps();
    for (int64_t g = 0; g < v.ng; ++g) {
      load_table(v.table(n, g), v.nc, tb);
      const int64_t k1 = std::min(K, (g + 1) * v.group);
      for (int64_t k = g * v.group; k < k1; k += 16) {
        const __m512 wv = lookup<BITS>(unpack16(r, k, BITS, u), tb);
        if (k + 16 <= k1) {
          for (int t = 0; t < TT; ++t)
            acc[t] = _mm512_fmadd_ps(wv, _mm512_loadu_ps(x + t * ldx + k), acc[t]);
        } else {
          const auto m = __mmask16((1u << (k1 - k)) - 1u);
          for (int t = 0; t < TT; ++t)
            acc[t] = _mm512_fmadd_ps(wv, _mm512_maskz_loadu_ps(m, x + t * ldx + k), acc[t]);
        }
      }
    }
    for (int t = 0; t < TT; ++t) y[t * ldy + n] = _mm512_reduce_add_ps(acc[t]);
  }
}

template <int BITS>
void dequant_row_simd(const View& v, int64_t n, int64_t K, float* dst) {
  const Unpack u = make_unpack(BITS);
  Table tb;
  const uint8_t* r = v.row(n);
  for (int64_t g = 0; g < v.ng; ++g) {
    load_table(v.table(n, g), v.nc, tb);
    const int64_t k1 = std::min(K, (g + 1) * v.group);
    for (int64_t k = g * v.group; k < k1; k += 16) {
      const __m512 wv = lookup<BITS>(unpack16(r, k, BITS, u), tb);
      const auto m = k + 16 <= k1 ? __mmask16(0xffff) : __mmask16((1u << (k1 - k)) - 1u);
      _mm512_mask_storeu_ps(dst + k, m, wv);
    }
  }
}
#endif

#ifdef MINFER_CODEBOOK_AVX2
// AVX2 (+ FMA, F16C): the AVX-512 scheme on 8 lanes. Per 16 weights the 2 b index bytes are
// loaded once and copied to both 128-bit lanes; two vpshufb controls take bytes o, o + 1
// (o = i b / 8) of indices 0..7 and 8..15 into the low half of each 32-bit lane, then one shift
// and mask serve both halves, since (i + 8) b and i b agree mod 8.
struct Unpack {
  __m256i shuf_lo, shuf_hi, shift, mask;
};

Unpack make_unpack(int bits) {
  alignas(32) int8_t shuf[2][32];
  alignas(32) int32_t shift[8];
  for (int h = 0; h < 2; ++h)
    for (int i = 0; i < 8; ++i) {
      const int bit = (8 * h + i) * bits, o = bit >> 3;
      // Lane i sits in 128-bit lane i / 4; vpshufb indexes within it, and it holds all 16 bytes.
      shuf[h][4 * i + 0] = int8_t(o);
      shuf[h][4 * i + 1] = int8_t(o + 1 < 16 ? o + 1 : 0x80);
      shuf[h][4 * i + 2] = int8_t(0x80);
      shuf[h][4 * i + 3] = int8_t(0x80);
      if (h == 0) shift[i] = bit & 7;
    }
  Unpack u;
  u.shuf_lo = _mm256_load_si256(reinterpret_cast<const __m256i*>(shuf[0]));
  u.shuf_hi = _mm256_load_si256(reinterpret_cast<const __m256i*>(shuf[1]));
  u.shift = _mm256_load_si256(reinterpret_cast<const __m256i*>(shift));
  u.mask = _mm256_set1_epi32((1 << bits) - 1);
  return u;
}

// Indices k .. k + 15 of a row (k a multiple of 16) as two vectors of 8 int32 lanes. The 16-byte
// load stays inside the row (rb bytes) or falls back to a copy of the 2 b bytes it needs.
template <int BITS>
inline void unpack16(const uint8_t* row, int64_t rb, int64_t k, const Unpack& u, __m256i& lo,
                     __m256i& hi) {
  const int64_t off = (k / 16) * 2 * BITS;
  __m128i raw;
  if (BITS == 8 || off + 16 <= rb) {
    raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(row + off));
  } else {
    alignas(16) uint8_t tmp[16] = {};
    std::memcpy(tmp, row + off, 2 * BITS);
    raw = _mm_load_si128(reinterpret_cast<const __m128i*>(tmp));
  }
  const __m256i b = _mm256_broadcastsi128_si256(raw);
  lo = _mm256_and_si256(_mm256_srlv_epi32(_mm256_shuffle_epi8(b, u.shuf_lo), u.shift), u.mask);
  hi = _mm256_and_si256(_mm256_srlv_epi32(_mm256_shuffle_epi8(b, u.shuf_hi), u.shift), u.mask);
}

// One group's table: for b = 4 the f16 centroids' low and high bytes (vpshufb tables), else f32
// in four registers of 8 for C <= 32, in memory for the gather.
struct Table {
  __m256 r[4];
  __m128i lo8, hi8;
  alignas(32) float mem[256];
};

template <int BITS>
inline void load_table(const uint16_t* t, Table& tb) {
  constexpr int C = 1 << BITS;
  if constexpr (C == 16) {
    const __m128i even = _mm_setr_epi8(0, 2, 4, 6, 8, 10, 12, 14, -1, -1, -1, -1, -1, -1, -1, -1);
    const __m128i odd = _mm_setr_epi8(1, 3, 5, 7, 9, 11, 13, 15, -1, -1, -1, -1, -1, -1, -1, -1);
    const __m128i a = _mm_loadu_si128(reinterpret_cast<const __m128i*>(t));
    const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(t + 8));
    tb.lo8 = _mm_unpacklo_epi64(_mm_shuffle_epi8(a, even), _mm_shuffle_epi8(b, even));
    tb.hi8 = _mm_unpacklo_epi64(_mm_shuffle_epi8(a, odd), _mm_shuffle_epi8(b, odd));
  } else if constexpr (C == 4) {
    tb.r[0] = _mm256_cvtph_ps(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(t)));
  } else if constexpr (C <= 32) {
    for (int j = 0; j < C / 8; ++j)
      tb.r[j] = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(t + 8 * j)));
  } else {
    for (int c = 0; c < C; c += 8)
      _mm256_store_ps(tb.mem + c,
                      _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(t + c))));
  }
}

// b != 4 (weights16 looks 4-bit indices up by vpshufb instead). vpermps picks from 8 entries by the
// index's low 3 bits; for b = 5, bits 3 and 4 choose among four permutes with vblendvps (which
// reads a lane's sign bit, hence the shifts to bit 31). b >= 6: a
// vgatherdps from the f32 table in L1 (on Zen 3 as fast as 8 scalar loads, 3-5 % ahead in decode:
// bench_codebook --cpu-time).
template <int BITS>
inline __m256 lookup(__m256i i, const Table& tb) {
  static_assert(BITS != 4, "4-bit indices go through weights16's vpshufb lookup");
  if constexpr (BITS <= 3) {
    return _mm256_permutevar8x32_ps(tb.r[0], i);
  } else if constexpr (BITS == 5) {
    const __m256 b3 = _mm256_castsi256_ps(_mm256_slli_epi32(i, 28));
    const __m256 a = _mm256_blendv_ps(_mm256_permutevar8x32_ps(tb.r[0], i),
                                      _mm256_permutevar8x32_ps(tb.r[1], i), b3);
    const __m256 c = _mm256_blendv_ps(_mm256_permutevar8x32_ps(tb.r[2], i),
                                      _mm256_permutevar8x32_ps(tb.r[3], i), b3);
    return _mm256_blendv_ps(a, c, _mm256_castsi256_ps(_mm256_slli_epi32(i, 27)));
  } else {
    return _mm256_i32gather_ps(tb.mem, i, 4);
  }
}

// Weights k .. k + 15 of a row (k a multiple of 16) in f32, as two vectors of 8. b = 4: the 8
// index bytes split into nibbles (low first), and vpshufb looks the 16 indices up in the f16
// table's low and high bytes at once; the bytes interleave back to f16 and vcvtph2ps widens them.
// Other widths: unpack16 + lookup.
template <int BITS>
inline void weights16(const uint8_t* row, int64_t rb, int64_t k, const Unpack& u, const Table& tb,
                      __m256& w0, __m256& w1) {
  if constexpr (BITS == 4) {
    const __m128i raw = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(row + k / 2));
    const __m128i m = _mm_set1_epi8(0x0f);
    const __m128i idx =
        _mm_unpacklo_epi8(_mm_and_si128(raw, m), _mm_and_si128(_mm_srli_epi16(raw, 4), m));
    const __m128i l = _mm_shuffle_epi8(tb.lo8, idx), h = _mm_shuffle_epi8(tb.hi8, idx);
    w0 = _mm256_cvtph_ps(_mm_unpacklo_epi8(l, h));
    w1 = _mm256_cvtph_ps(_mm_unpackhi_epi8(l, h));
  } else {
    __m256i i0, i1;
    unpack16<BITS>(row, rb, k, u, i0, i1);
    w0 = lookup<BITS>(i0, tb);
    w1 = lookup<BITS>(i1, tb);
  }
}

// Lane masks for the first rem (0..15) of 16 weights, as the two halves.
inline void tail_masks(int64_t rem, __m256i& m0, __m256i& m1) {
  const __m256i iota = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  m0 = _mm256_cmpgt_epi32(_mm256_set1_epi32(int(rem)), iota);
  m1 = _mm256_cmpgt_epi32(_mm256_set1_epi32(int(rem - 8)), iota);
}

inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

template <int BITS, int TT>
void decode_rows_simd(const View& v, const float* x, int64_t ldx, float* y, int64_t ldy, int64_t K,
                      int64_t n0, int64_t n1) {
  const Unpack u = make_unpack(BITS);
  Table tb;
  for (int64_t n = n0; n < n1; ++n) {
    const uint8_t* r = v.row(n);
    // Two accumulators per row of x (the two halves of 16 weights) halve the FMA chain.
    __m256 acc0[TT], acc1[TT];
    for (int t = 0; t < TT; ++t) acc0[t] = acc1[t] = _mm256_setzero_ps();
    for (int64_t g = 0; g < v.ng; ++g) {
      load_table<BITS>(v.table(n, g), tb);
      const int64_t k1 = std::min(K, (g + 1) * v.group);
      for (int64_t k = g * v.group; k < k1; k += 16) {
        __m256 w0, w1;
        weights16<BITS>(r, v.rb, k, u, tb, w0, w1);
        if (k + 16 <= k1) {
          for (int t = 0; t < TT; ++t) {
            acc0[t] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(x + t * ldx + k), acc0[t]);
            acc1[t] = _mm256_fmadd_ps(w1, _mm256_loadu_ps(x + t * ldx + k + 8), acc1[t]);
          }
        } else {
          __m256i m0, m1;
          tail_masks(k1 - k, m0, m1);
          for (int t = 0; t < TT; ++t) {
            acc0[t] = _mm256_fmadd_ps(w0, _mm256_maskload_ps(x + t * ldx + k, m0), acc0[t]);
            acc1[t] = _mm256_fmadd_ps(w1, _mm256_maskload_ps(x + t * ldx + k + 8, m1), acc1[t]);
          }
        }
      }
    }
    for (int t = 0; t < TT; ++t) y[t * ldy + n] = hsum(_mm256_add_ps(acc0[t], acc1[t]));
  }
}

template <int BITS>
void dequant_row_simd(const View& v, int64_t n, int64_t K, float* dst) {
  const Unpack u = make_unpack(BITS);
  Table tb;
  const uint8_t* r = v.row(n);
  for (int64_t g = 0; g < v.ng; ++g) {
    load_table<BITS>(v.table(n, g), tb);
    const int64_t k1 = std::min(K, (g + 1) * v.group);
    for (int64_t k = g * v.group; k < k1; k += 16) {
      __m256 w0, w1;
      weights16<BITS>(r, v.rb, k, u, tb, w0, w1);
      if (k + 16 <= k1) {
        _mm256_storeu_ps(dst + k, w0);
        _mm256_storeu_ps(dst + k + 8, w1);
      } else {
        __m256i m0, m1;
        tail_masks(k1 - k, m0, m1);
        _mm256_maskstore_ps(dst + k, m0, w0);
        _mm256_maskstore_ps(dst + k + 8, m1, w1);
      }
    }
  }
}
#endif

#if defined(MINFER_CODEBOOK_AVX512) || defined(MINFER_CODEBOOK_AVX2)
#define MINFER_CODEBOOK_SIMD 1
template <int BITS>
void decode_bits(const View& v, const float* x, int64_t T, int64_t ldx, float* y, int64_t ldy,
                 int64_t K, int64_t n0, int64_t n1) {
  switch (T) {
    case 1:
      return decode_rows_simd<BITS, 1>(v, x, ldx, y, ldy, K, n0, n1);
    case 2:
      return decode_rows_simd<BITS, 2>(v, x, ldx, y, ldy, K, n0, n1);
    case 3:
      return decode_rows_simd<BITS, 3>(v, x, ldx, y, ldy, K, n0, n1);
    default:
      return decode_rows_simd<BITS, 4>(v, x, ldx, y, ldy, K, n0, n1);
  }
}
#endif

// Groups start on 16-weight boundaries (a group is the whole row or a multiple of 16), which the
// SIMD paths rely on.
void decode_rows(const View& v, const float* x, int64_t T, int64_t ldx, float* y, int64_t ldy,
                 int64_t K, int64_t n0, int64_t n1) {
#ifdef MINFER_CODEBOOK_SIMD
  switch (v.bits) {
    case 2:
      return decode_bits<2>(v, x, T, ldx, y, ldy, K, n0, n1);
    case 3:
      return decode_bits<3>(v, x, T, ldx, y, ldy, K, n0, n1);
    case 4:
      return decode_bits<4>(v, x, T, ldx, y, ldy, K, n0, n1);
    case 5:
      return decode_bits<5>(v, x, T, ldx, y, ldy, K, n0, n1);
    case 6:
      return decode_bits<6>(v, x, T, ldx, y, ldy, K, n0, n1);
    case 7:
      return decode_bits<7>(v, x, T, ldx, y, ldy, K, n0, n1);
    case 8:
      return decode_bits<8>(v, x, T, ldx, y, ldy, K, n0, n1);
    default:
      break;
  }
#endif
  decode_ref_rows(v, x, T, ldx, y, ldy, K, n0, n1);
}

void dequant_row(const View& v, int64_t n, int64_t K, float* dst) {
#ifdef MINFER_CODEBOOK_SIMD
  switch (v.bits) {
    case 2:
      return dequant_row_simd<2>(v, n, K, dst);
    case 3:
      return dequant_row_simd<3>(v, n, K, dst);
    case 4:
      return dequant_row_simd<4>(v, n, K, dst);
    case 5:
      return dequant_row_simd<5>(v, n, K, dst);
    case 6:
      return dequant_row_simd<6>(v, n, K, dst);
    case 7:
      return dequant_row_simd<7>(v, n, K, dst);
    case 8:
      return dequant_row_simd<8>(v, n, K, dst);
    default:
      break;
  }
#endif
  dequant_row_ref(v, n, K, dst);
}

}  // namespace

const char* codebook_linear_isa() {
#ifdef MINFER_CODEBOOK_AVX512
  return "avx512";
#elif defined(MINFER_CODEBOOK_AVX2)
  return "avx2";
#else
  return "scalar";
#endif
}

void codebook_linear_ref(const Codebook& w, const float* x, int64_t T, int64_t ldx, float* y,
                         int64_t ldy, int64_t K, int64_t N) {
  decode_ref_rows(view_of(w), x, T, ldx, y, ldy, K, 0, N);
}

void codebook_linear(const Codebook& w, const float* x, int64_t T, int64_t ldx, float* y,
                     int64_t ldy, int64_t K, int64_t N) {
  MINFER_CHECK(T >= 0 && ldx >= K && ldy >= N,
               "codebook_linear: bad strides (T {}, ldx {} < K {} or ldy {} < N {})", T, ldx, K,
               ldy, N);
  if (T == 0) return;
  const View v = view_of(w);
  if (T <= 4) {
    // Contiguous blocks of rows on the thread pool; one thread below 32K index bytes.
    parallel_for(N, v.rb, int64_t(1) << 15,
                 [&](int64_t n0, int64_t n1) { decode_rows(v, x, T, ldx, y, ldy, K, n0, n1); });
    return;
  }
  constexpr int64_t R = 64;
  const int64_t tiles = (N + R - 1) / R;
  const int nt = omp_get_max_threads();
#pragma omp parallel for schedule(dynamic, 1) if (tiles > 1 && nt > 1)
  for (int64_t i = 0; i < tiles; ++i) {
    // Each thread's tile buffer, grown once and reused (no allocation per call once warm).
    static thread_local std::vector<float> buf;
    if (buf.size() < size_t(R * K)) buf.resize(size_t(R * K));
    float* tile = buf.data();
    const int64_t n0 = i * R, rows = std::min(R, N - n0);
    for (int64_t r = 0; r < rows; ++r) dequant_row(v, n0 + r, K, tile + r * K);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, int(T), int(rows), int(K), 1.f, x,
                int(ldx), tile, int(K), 0.f, y + n0, int(ldy));
  }
}

}  // namespace minfer
