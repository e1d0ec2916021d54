// Quantized linear kernels for AVX2 + FMA (x86-64-v3) machines without AVX-512. Compiled to
// nothing elsewhere. Same arithmetic as quant_avx512.cpp with 8 weights per vector: f32
// activations times weights dequantized in registers (int8: vpmovzxbd, - 128, vcvtdq2ps, scale
// once per group; int4 / NF4 / ternary: 16-entry table lookup by two 8-entry permutes and a
// blend on index bit 3; int3: the 24 bits of 8 codes read as one word, broadcast, shifted by 3j
// per lane (vpsrlvd) and looked up in the 8-entry table s * (j - 4) by one permute; binary: a lane
// mask selects +s or -s). The q8 path (int8 / int4 / NF4 against 8-bit activations, quant_impl.h
// simd_decode_rows_q8) and its activation quantizer are at the end.
// Legend: T rows of x, K = in features, N = out features, Kp = K padded to 64, G = weight group,
// RW weight rows x R x rows per kernel call.
#include "kernels/cpu/quant_impl.h"

#if defined(MINFER_Q_AVX2)

#include <immintrin.h>

#include <algorithm>
#include <cstring>

namespace minfer::qcpu {

const char* const kSimdIsa = "avx2";

namespace {

inline float hsum256(__m256 f) {
  __m128 v = _mm_add_ps(_mm256_castps256_ps128(f), _mm256_extractf128_ps(f, 1));
  v = _mm_add_ps(v, _mm_movehl_ps(v, v));
  v = _mm_add_ss(v, _mm_movehdup_ps(v));
  return _mm_cvtss_f32(v);
}

inline __m256i zext8(const uint8_t* p) {
  return _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i*)p));
}

// The q8 kernels over a group of 4 interleaved rows stream one contiguous run of codes (the 4 rows'
// chunk c, then c + 1, then the next group): each step asks for the cs bytes it will read
// kPrefetchAhead bytes later. The hardware prefetcher alone left the kernels waiting on DRAM:
// SmolLM2 int8 decode 1.15x with it (8 alternated pairs, all above 1), int4 g128 1.06-1.08x;
// 1 KB and 4 KB ahead measured the same as 2 KB (docs/performance.md). A prefetch past the end of
// the matrix does not fault.
constexpr int64_t kPrefetchAhead = 2048;
inline void prefetch_group_step(const uint8_t* p, int64_t cs) {
  for (int64_t o = 0; o < cs; o += 64)
    _mm_prefetch(reinterpret_cast<const char*>(p + kPrefetchAhead + o), _MM_HINT_T0);
}

// Table entries 0..15 as two halves; lookup by index bits 0..3.
struct Table16 {
  __m256 lo, hi;
  __m256 look(__m256i idx) const {
    return _mm256_blendv_ps(_mm256_permutevar8x32_ps(lo, idx), _mm256_permutevar8x32_ps(hi, idx),
                            _mm256_castsi256_ps(_mm256_slli_epi32(idx, 28)));
  }
};

// Per-span dequantization state of one weight row (see quant_avx512.cpp's RowDq).
template <QScheme S>
struct RowDq {
  Table16 t;
  __m256 pos, neg;
  float s;
  void set(const QArgs& a, int64_t n, int64_t g) {
    s = a.scale(n, g);
    const __m256 sv = _mm256_set1_ps(s);
    if constexpr (S == QScheme::Int4) {
      const __m256 z = _mm256_set1_ps(float(a.zero(n, g)));
      t.lo = _mm256_mul_ps(_mm256_sub_ps(_mm256_setr_ps(0, 1, 2, 3, 4, 5, 6, 7), z), sv);
      t.hi = _mm256_mul_ps(_mm256_sub_ps(_mm256_setr_ps(8, 9, 10, 11, 12, 13, 14, 15), z), sv);
    } else if constexpr (S == QScheme::NF4) {
      float v[16];
      for (int i = 0; i < 16; ++i) v[i] = qm::nf4_value(i);
      t.lo = _mm256_mul_ps(_mm256_loadu_ps(v), sv);
      t.hi = _mm256_mul_ps(_mm256_loadu_ps(v + 8), sv);
    } else if constexpr (S == QScheme::Int3) {
      // permutevar8x32 reads index bits 0..2, the whole code: entry j = s * (j - 4).
      t.lo = _mm256_mul_ps(_mm256_setr_ps(-4, -3, -2, -1, 0, 1, 2, 3), sv);
    } else if constexpr (S == QScheme::Ternary) {
      // permutevar8x32 reads index bits 0..2: entry j = s * ((j & 3) - 1).
      t.lo = _mm256_mul_ps(_mm256_setr_ps(-1, 0, 1, 2, -1, 0, 1, 2), sv);
    } else if constexpr (S == QScheme::Binary) {
      pos = sv;
      neg = _mm256_sub_ps(_mm256_setzero_ps(), sv);
    }
  }
};

// 8 dequantized weights (unscaled q = u - 128 for int8) at weight k (k % 8 == 0) of the row whose
// first 64-weight chunk is at r, its chunks cs bytes apart (QArgs::row_base / chunk_stride: the row
// layout or rows interleaved by 4; SGN: int8 codes stored as u - 128, the interleaved layout).
template <QScheme S, bool SGN>
inline __m256 weights8(const uint8_t* r, int64_t cs, int64_t k, const RowDq<S>& d) {
  const uint8_t* c = r + (k >> 6) * cs;  // weight k's chunk
  const int64_t j = k & 63;              // its place there
  if constexpr (S == QScheme::Int8) {
    if constexpr (SGN)
      return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i*)(c + j))));
    return _mm256_cvtepi32_ps(_mm256_sub_epi32(zext8(c + j), _mm256_set1_epi32(128)));
  } else if constexpr (S == QScheme::Int4 || S == QScheme::NF4) {
    const __m256i b = zext8(c + (j & 31));
    return d.t.look(j & 32 ? _mm256_srli_epi32(b, 4) : b);
  } else if constexpr (S == QScheme::Int3) {
    // Codes j..j+7 are the 24 bits at byte 3j/8 of the chunk (quant_math.h ChunkQ3); a 4-byte
    // read stays inside the 24-byte chunk except for its last 8 codes, read from one byte earlier.
    const uint8_t* p = c + j / 8 * 3;
    uint32_t v;
    if (j != 56) {
      std::memcpy(&v, p, 4);
    } else {
      std::memcpy(&v, p - 1, 4);
      v >>= 8;
    }
    const __m256i sh = _mm256_setr_epi32(0, 3, 6, 9, 12, 15, 18, 21);
    return _mm256_permutevar8x32_ps(d.t.lo, _mm256_srlv_epi32(_mm256_set1_epi32(int(v)), sh));
  } else if constexpr (S == QScheme::Ternary) {
    const __m256i b = zext8(c + (j & 15));
    return _mm256_permutevar8x32_ps(d.t.lo,
                                    _mm256_srlv_epi32(b, _mm256_set1_epi32(int(2 * (j >> 4)))));
  } else {
    const __m256i bit = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
    const __m256i m = _mm256_and_si256(_mm256_set1_epi32(c[j / 8]), bit);
    return _mm256_blendv_ps(d.neg, d.pos, _mm256_castsi256_ps(_mm256_cmpeq_epi32(m, bit)));
  }
}

template <QScheme S, bool SGN>
struct Fused {
  template <int RW, int R>
  struct K {
    static constexpr int NA = RW * R >= 4 ? 1 : RW * R == 1 ? 4 : 2;
    static void run(int64_t n0, int64_t t0, const QArgs& a, float* y, int64_t ldy) {
      const uint8_t* wr[RW];
      for (int i = 0; i < RW; ++i) wr[i] = a.row_base(n0 + i);
      const int64_t cs = a.chunk_stride();
      const float* xr[R];
      for (int r = 0; r < R; ++r) xr[r] = a.xp + (t0 + r) * a.Kp;
      __m256 f[RW][R], acc[RW][R][NA];
      for (int i = 0; i < RW; ++i)
        for (int r = 0; r < R; ++r) {
          f[i][r] = _mm256_setzero_ps();
          for (int j = 0; j < NA; ++j) acc[i][r][j] = _mm256_setzero_ps();
        }
      RowDq<S> dq[RW];
      for (int64_t si = 0; si < a.nspans; ++si) {
        const Span sp = a.spans[si];
        for (int i = 0; i < RW; ++i) dq[i].set(a, n0 + i, sp.g);
        auto step = [&](int64_t k, int j) {
          __m256 xv[R];
          for (int r = 0; r < R; ++r) xv[r] = _mm256_loadu_ps(xr[r] + k);
          for (int i = 0; i < RW; ++i) {
            const __m256 w = weights8<S, SGN>(wr[i], cs, k, dq[i]);
            for (int r = 0; r < R; ++r) acc[i][r][j] = _mm256_fmadd_ps(w, xv[r], acc[i][r][j]);
          }
        };
        int64_t k = sp.k0;
        for (; k + 32 <= sp.k1; k += 32)
          for (int j = 0; j < 4; ++j) step(k + 8 * j, j % NA);
        if constexpr (S == QScheme::Int8) {
          for (int i = 0; i < RW; ++i) {
            const __m256 s = _mm256_set1_ps(dq[i].s);
            for (int r = 0; r < R; ++r) {
              __m256 v = acc[i][r][0];
              for (int j = 1; j < NA; ++j) v = _mm256_add_ps(v, acc[i][r][j]);
              f[i][r] = _mm256_fmadd_ps(v, s, f[i][r]);
              for (int j = 0; j < NA; ++j) acc[i][r][j] = _mm256_setzero_ps();
            }
          }
        }
      }
      for (int i = 0; i < RW; ++i)
        for (int r = 0; r < R; ++r) {
          __m256 v = f[i][r];
          if constexpr (S != QScheme::Int8)
            for (int j = 0; j < NA; ++j) v = _mm256_add_ps(v, acc[i][r][j]);
          y[(t0 + r) * ldy + n0 + i] = hsum256(v);
        }
    }
  };
};

// Decode: contiguous blocks of rows (kDecodeChunk weights or more) claimed by the pool's threads,
// one weight row at a time, so that each thread's reads stream through memory in order
// (interleaving rows costs DRAM bandwidth: on the shared 2-core Zen 4 box, 2 or 4 rows per call
// ran the int8 LM head at ~7 GB/s against ~15 for one); one thread below 64K weights.
template <QScheme S, bool SGN, int R>
void decode_rows(const QArgs& a, int64_t n0, int64_t n1, float* y, int64_t ldy) {
  for (int64_t n = n0; n < n1; ++n) Fused<S, SGN>::template K<1, R>::run(n, 0, a, y, ldy);
}
template <QScheme S, bool SGN, int R>
void decode(const QArgs& a, float* y, int64_t ldy, int64_t N) {
  parallel_rows(N, a.Kp,
                [&](int64_t n0, int64_t n1) { decode_rows<S, SGN, R>(a, n0, n1, y, ldy); });
}
template <QScheme S, bool SGN>
void decode_rows_t(const QArgs& a, int64_t T, int64_t n0, int64_t n1, float* y, int64_t ldy) {
  switch (T) {
    case 1:
      return decode_rows<S, SGN, 1>(a, n0, n1, y, ldy);
    case 2:
      return decode_rows<S, SGN, 2>(a, n0, n1, y, ldy);
    case 3:
      return decode_rows<S, SGN, 3>(a, n0, n1, y, ldy);
    default:
      return decode_rows<S, SGN, 4>(a, n0, n1, y, ldy);
  }
}

template <QScheme S, bool SGN>
void fused(const QArgs& a, int64_t T, float* y, int64_t ldy, int64_t N) {
  switch (T) {
    case 1:
      return decode<S, SGN, 1>(a, y, ldy, N);
    case 2:
      return decode<S, SGN, 2>(a, y, ldy, N);
    case 3:
      return decode<S, SGN, 3>(a, y, ldy, N);
    case 4:
      return decode<S, SGN, 4>(a, y, ldy, N);
    default:
      run_all<Fused<S, SGN>::template K>(N, T, a.Kp, a, y, ldy);
  }
}

template <QScheme S, bool SGN>
void dequant_rows(const QArgs& a, int64_t n0, int64_t nr, float* dst) {
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  const int64_t cs = a.chunk_stride();
  for (int64_t i = 0; i < nr; ++i) {
    const uint8_t* c = a.row_base(n0 + i);
    float* o = dst + i * a.K;
    RowDq<S> dq;
    for (int64_t si = 0; si < a.nspans; ++si) {
      const Span sp = a.spans[si];
      dq.set(a, n0 + i, sp.g);
      const __m256 s = _mm256_set1_ps(dq.s);
      for (int64_t k = sp.k0; k < std::min(sp.k1, a.K); k += 8) {
        __m256 w = weights8<S, SGN>(c, cs, k, dq);
        if constexpr (S == QScheme::Int8) w = _mm256_mul_ps(w, s);  // = s * (u - 128), exactly
        if (k + 8 <= a.K)
          _mm256_storeu_ps(o + k, w);
        else
          _mm256_maskstore_ps(o + k, _mm256_cmpgt_epi32(_mm256_set1_epi32(int(a.K - k)), lane), w);
      }
    }
  }
}

// ---- The q8 path: int8 / int4 / NF4 weights against 8-bit activations (QArgs::xq).

// The 32 signed weights w of each half of the 64-weight chunk at c (half 0: weights 0..31, half 1:
// 32..63): int8 u - 128 (stored so already where SGN: interleaved rows), int4 u - z0 for half 0
// and u - z1 for half 1 (the 32 low nibbles, then the 32 high ones: qm::ChunkQ4).
template <QScheme S, bool SGN>
inline void q8_weights(const uint8_t* c, __m256i z0, __m256i z1, __m256i& w0, __m256i& w1) {
  if constexpr (S == QScheme::Int8) {
    const __m256i flip = _mm256_set1_epi8(char(SGN ? 0 : 0x80));
    w0 = _mm256_xor_si256(_mm256_loadu_si256((const __m256i*)c), flip);
    w1 = _mm256_xor_si256(_mm256_loadu_si256((const __m256i*)(c + 32)), flip);
  } else {
    const __m256i m = _mm256_set1_epi8(0x0F);
    const __m256i b = _mm256_loadu_si256((const __m256i*)c);
    w0 = _mm256_sub_epi8(_mm256_and_si256(b, m), z0);
    w1 = _mm256_sub_epi8(_mm256_and_si256(_mm256_srli_epi16(b, 4), m), z1);
  }
}

// The vpshufb tables of the NF4 levels' two parts (qm::nf4_level = 128 · hi + lo), in both
// 128-bit lanes (constants: the calls fold at compile time).
#define MINFER_NF4_TABLE(F)                                                                   \
  _mm256_broadcastsi128_si256(_mm_setr_epi8(char(F(0)), char(F(1)), char(F(2)), char(F(3)),   \
                                            char(F(4)), char(F(5)), char(F(6)), char(F(7)),   \
                                            char(F(8)), char(F(9)), char(F(10)), char(F(11)), \
                                            char(F(12)), char(F(13)), char(F(14)), char(F(15))))
struct Nf4Tables {
  __m256i lo = MINFER_NF4_TABLE(qm::nf4_level_lo), hi = MINFER_NF4_TABLE(qm::nf4_level_hi);
};
#undef MINFER_NF4_TABLE

// Σ w q of each 4 consecutive weights as 8 int32 lanes, exact: vpmaddubsw of |w| (unsigned) with
// q carrying w's sign (pairs: |2 · 128 · 127| < 2^15, no saturation), then vpmaddwd by 1.
inline __m256i q8_dot32(__m256i aw, __m256i w, __m256i q) {
  return _mm256_madd_epi16(_mm256_maddubs_epi16(aw, _mm256_sign_epi8(q, w)), _mm256_set1_epi16(1));
}

// Σ level · q of each 4 consecutive NF4 weights (int32 lanes, exact): level = 128 · hi + lo with
// lo in 0..127 (vpmaddubsw's unsigned operand as it is) and |hi| <= 64 (its sign moved onto q).
inline __m256i nf4_dot32(__m256i lo, __m256i ahi, __m256i hi, __m256i q) {
  const __m256i plo = _mm256_madd_epi16(_mm256_maddubs_epi16(lo, q), _mm256_set1_epi16(1));
  const __m256i phi =
      _mm256_madd_epi16(_mm256_maddubs_epi16(ahi, _mm256_sign_epi8(q, hi)), _mm256_set1_epi16(128));
  return _mm256_add_epi32(plo, phi);
}

// One 64-weight chunk as the integer dot products read it: int8 / int4: w (signed) and |w|; NF4:
// the level parts hi (as w), |hi| and lo. z0 / z1: the int4 zero points of its two halves.
template <QScheme S, bool SGN>
struct Q8Chunk {
  __m256i w0, w1, a0, a1, l0, l1;
  Q8Chunk(const uint8_t* c, __m256i z0, __m256i z1, const Nf4Tables& tb) {
    l0 = l1 = _mm256_setzero_si256();
    if constexpr (S == QScheme::NF4) {
      const __m256i m = _mm256_set1_epi8(0x0F);
      const __m256i b = _mm256_loadu_si256((const __m256i*)c);
      const __m256i u0 = _mm256_and_si256(b, m);
      const __m256i u1 = _mm256_and_si256(_mm256_srli_epi16(b, 4), m);
      l0 = _mm256_shuffle_epi8(tb.lo, u0);
      l1 = _mm256_shuffle_epi8(tb.lo, u1);
      w0 = _mm256_shuffle_epi8(tb.hi, u0);
      w1 = _mm256_shuffle_epi8(tb.hi, u1);
    } else {
      q8_weights<S, SGN>(c, z0, z1, w0, w1);
    }
    a0 = _mm256_abs_epi8(w0);
    a1 = _mm256_abs_epi8(w1);
  }
  // p0 / p1: Σ w q of each 4 consecutive weights of half 0 / 1 against the 64 codes at q.
  void dot(const int8_t* q, __m256i& p0, __m256i& p1) const {
    const __m256i q0 = _mm256_loadu_si256((const __m256i*)q);
    const __m256i q1 = _mm256_loadu_si256((const __m256i*)(q + 32));
    if constexpr (S == QScheme::NF4) {
      p0 = nf4_dot32(l0, a0, w0, q0);
      p1 = nf4_dot32(l1, a1, w1, q1);
    } else {
      p0 = q8_dot32(a0, w0, q0);
      p1 = q8_dot32(a1, w1, q1);
    }
  }
};

// One weight row n against tokens 0..R of a.xq (any row layout: a.row_base / chunk_stride), spans
// on whole chunks (a.chunk_spans): int8 (int4 and NF4 take q8_row_u below).
template <QScheme S, bool SGN, int RW, int R>
void q8_row(int64_t n0, const QArgs& a, const Nf4Tables& tb, float* y, int64_t ldy) {
  const uint8_t* wr[RW];
  for (int i = 0; i < RW; ++i) wr[i] = a.row_base(n0 + i);
  const int64_t cs = a.chunk_stride(), nc = a.Kp / 64;
  __m256 f[RW][R];
  for (int i = 0; i < RW; ++i)
    for (int r = 0; r < R; ++r) f[i][r] = _mm256_setzero_ps();
  for (int64_t si = 0; si < a.nspans; ++si) {
    const Span sp = a.spans[si];
    __m256i z[RW];
    for (int i = 0; i < RW; ++i)
      z[i] = _mm256_set1_epi8(char(S == QScheme::Int4 ? a.zero(n0 + i, sp.g) : 0));
    __m256 acc[RW][R][2];
    for (int i = 0; i < RW; ++i)
      for (int r = 0; r < R; ++r) acc[i][r][0] = acc[i][r][1] = _mm256_setzero_ps();
    for (int64_t k = sp.k0; k < sp.k1; k += 64) {
      const int64_t c = k >> 6;
      if constexpr (RW == 4) prefetch_group_step(wr[0] + c * cs, cs);
      for (int i = 0; i < RW; ++i) {
        const Q8Chunk<S, SGN> w(wr[i] + c * cs, z[i], z[i], tb);
        for (int r = 0; r < R; ++r) {
          const float* d = a.xd + (r * nc + c) * 16;  // lanes 0..7: block 0's scale, 8..15: 1's
          __m256i p0, p1;
          w.dot(a.xq + r * a.Kp + k, p0, p1);
          acc[i][r][0] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p0), _mm256_loadu_ps(d), acc[i][r][0]);
          acc[i][r][1] =
              _mm256_fmadd_ps(_mm256_cvtepi32_ps(p1), _mm256_loadu_ps(d + 8), acc[i][r][1]);
        }
      }
    }
    for (int i = 0; i < RW; ++i) {
      const __m256 s = _mm256_set1_ps(a.scale(n0 + i, sp.g));
      for (int r = 0; r < R; ++r)
        f[i][r] = _mm256_fmadd_ps(_mm256_add_ps(acc[i][r][0], acc[i][r][1]), s, f[i][r]);
    }
  }
  for (int i = 0; i < RW; ++i)
    for (int r = 0; r < R; ++r) y[r * ldy + n0 + i] = hsum256(f[i][r]) * a.q8_out_factor();
}

// int4 and NF4 with groups on whole 64-weight chunks (g64, g128, per row or tensor; NF4 b64,
// b128, double-quantized scales), the same sums as q8_row in the same f32 order (so bit for bit its
// outputs) with less work per chunk:
// - the unsigned codes go into vpmaddubsw as they are and the zero point leaves in int16, per pair
//   of weights: Σ (u - z) q = Σ u q - Σ z q, the second a vpmaddubsw of z with q (|Σ u q|, |Σ z q|
//   <= 2 · 15 · 127 per pair: no saturation, exact), instead of the sign trick's vpsubb, vpabsb and
//   vpsignb; NF4 levels (qm::nf4_level = 128 · hi + lo) enter as 128 · ((hi + 64) - 64) + lo, hi +
//   64 in 0..128 unsigned (pairs <= 2 · 128 · 127). The int32 lanes are q8_row's: the exact Σ of 4
//   consecutive weights;
// - one flat loop over the row's chunks, a group's sums folded into the row's (times s) when its
//   last chunk is done, instead of a loop per span.
// Tried: two accumulators for the whole row with each half times d_block · s_group (q8_row_g32's
// order): ~8 % faster for NF4 b64 (which folds after every chunk here), no faster for int4 g128,
// and another f32 order, so greedy outputs and q8 perplexity move (docs/performance.md, "int4 g128
// and NF4 on the AVX2 q8 path: one pass per row").
template <QScheme S, bool ASYM, int RW, int R>
void q8_row_u(int64_t n0, const QArgs& a, float* y, int64_t ldy) {
  static_assert(S == QScheme::Int4 || S == QScheme::NF4);
  const uint8_t* c[RW];
  for (int i = 0; i < RW; ++i) c[i] = a.row_base(n0 + i);
  const int64_t cs = a.chunk_stride(), nc = a.Kp / 64, ng = a.groups;
  const int64_t cpg = std::max<int64_t>(1, a.G / 64);  // chunks per group (groups > 1: G % 64 == 0)
  const bool plain = a.scales && !a.per_tensor;        // else a.scale(): per tensor, double quant
  const float* s = plain ? a.scales + n0 * ng : nullptr;
  const uint8_t* z = ASYM ? a.zeros + n0 * ng : nullptr;
  const __m256i m = _mm256_set1_epi8(0x0F), one = _mm256_set1_epi16(1);
  const __m256i h128 = _mm256_set1_epi16(128);
  const Nf4Tables tb;
  const __m256i thi = _mm256_add_epi8(tb.hi, _mm256_set1_epi8(64));
  const __m256i zsym = _mm256_set1_epi8(S == QScheme::NF4 ? 64 : 8);
  __m256 acc[RW][R][2], f[RW][R];
  for (int i = 0; i < RW; ++i)
    for (int r = 0; r < R; ++r) acc[i][r][0] = acc[i][r][1] = f[i][r] = _mm256_setzero_ps();
  int64_t g = 0, j = 0;  // the group of chunk ci, and ci's place in it
  for (int64_t ci = 0; ci < nc; ++ci) {
    // Σ z q per pair of the symmetric zero point: the same for every row, once per token.
    __m256i zq[R][2];
    if constexpr (!ASYM)
      for (int r = 0; r < R; ++r) {
        const int8_t* q = a.xq + r * a.Kp + 64 * ci;
        zq[r][0] = _mm256_maddubs_epi16(zsym, _mm256_loadu_si256((const __m256i*)q));
        zq[r][1] = _mm256_maddubs_epi16(zsym, _mm256_loadu_si256((const __m256i*)(q + 32)));
      }
    if constexpr (RW == 4) prefetch_group_step(c[0] + ci * cs, cs);
    for (int i = 0; i < RW; ++i) {
      const __m256i b = _mm256_loadu_si256((const __m256i*)(c[i] + ci * cs));
      const __m256i u0 = _mm256_and_si256(b, m), u1 = _mm256_and_si256(_mm256_srli_epi16(b, 4), m);
      __m256i l0, l1, h0, h1;
      if constexpr (S == QScheme::NF4) {
        l0 = _mm256_shuffle_epi8(tb.lo, u0);
        l1 = _mm256_shuffle_epi8(tb.lo, u1);
        h0 = _mm256_shuffle_epi8(thi, u0);
        h1 = _mm256_shuffle_epi8(thi, u1);
      }
      for (int r = 0; r < R; ++r) {
        const int8_t* q = a.xq + r * a.Kp + 64 * ci;
        const float* d = a.xd + (r * nc + ci) * 16;  // lanes 0..7: block 0's scale, 8..15: 1's
        const __m256i q0 = _mm256_loadu_si256((const __m256i*)q);
        const __m256i q1 = _mm256_loadu_si256((const __m256i*)(q + 32));
        __m256i z0, z1;
        if constexpr (ASYM) {
          const __m256i zv = _mm256_set1_epi8(char(z[i * ng + g]));
          z0 = _mm256_maddubs_epi16(zv, q0), z1 = _mm256_maddubs_epi16(zv, q1);
        } else {
          z0 = zq[r][0], z1 = zq[r][1];
        }
        __m256i p0, p1;
        if constexpr (S == QScheme::NF4) {
          p0 = _mm256_add_epi32(
              _mm256_madd_epi16(_mm256_maddubs_epi16(l0, q0), one),
              _mm256_madd_epi16(_mm256_sub_epi16(_mm256_maddubs_epi16(h0, q0), z0), h128));
          p1 = _mm256_add_epi32(
              _mm256_madd_epi16(_mm256_maddubs_epi16(l1, q1), one),
              _mm256_madd_epi16(_mm256_sub_epi16(_mm256_maddubs_epi16(h1, q1), z1), h128));
        } else {
          p0 = _mm256_madd_epi16(_mm256_sub_epi16(_mm256_maddubs_epi16(u0, q0), z0), one);
          p1 = _mm256_madd_epi16(_mm256_sub_epi16(_mm256_maddubs_epi16(u1, q1), z1), one);
        }
        acc[i][r][0] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p0), _mm256_loadu_ps(d), acc[i][r][0]);
        acc[i][r][1] =
            _mm256_fmadd_ps(_mm256_cvtepi32_ps(p1), _mm256_loadu_ps(d + 8), acc[i][r][1]);
      }
    }
    if (++j == cpg && g + 1 < ng) {  // group g done (the last one, with the padding, below)
      for (int i = 0; i < RW; ++i) {
        const __m256 sv = _mm256_set1_ps(plain ? s[i * ng + g] : a.scale(n0 + i, g));
        for (int r = 0; r < R; ++r) {
          f[i][r] = _mm256_fmadd_ps(_mm256_add_ps(acc[i][r][0], acc[i][r][1]), sv, f[i][r]);
          acc[i][r][0] = acc[i][r][1] = _mm256_setzero_ps();
        }
      }
      j = 0, ++g;
    }
  }
  for (int i = 0; i < RW; ++i) {
    const __m256 sl = _mm256_set1_ps(plain ? s[i * ng + g] : a.scale(n0 + i, g));
    for (int r = 0; r < R; ++r)
      y[r * ldy + n0 + i] =
          hsum256(_mm256_fmadd_ps(_mm256_add_ps(acc[i][r][0], acc[i][r][1]), sl, f[i][r])) *
          a.q8_out_factor();
  }
}

// The same for spans that split chunks (!a.chunk_spans: groups of an odd number of 32s, g32 the
// common one): each half of a chunk is one block of 32 inside one group g (the span walk below
// finds it), so its lanes are scaled by d_block · s[n, g] and its int4 codes shifted by z[n, g]
// before the integer product, chunk by chunk (llama.cpp's Q4_1 · Q8_1 scales each block of 32 the
// same way, d_w · d_x per block).
template <QScheme S, bool SGN, int R>
void q8_row_blocks(int64_t n, const QArgs& a, const Nf4Tables& tb, float* y, int64_t ldy) {
  const uint8_t* wr = a.row_base(n);
  const int64_t cs = a.chunk_stride(), nc = a.Kp / 64;
  __m256 acc[R][2];
  for (int r = 0; r < R; ++r) acc[r][0] = acc[r][1] = _mm256_setzero_ps();
  int64_t si = 0;  // the span of the half being read
  for (int64_t c = 0; c < nc; ++c) {
    while (a.spans[si].k1 <= 64 * c) ++si;
    const int64_t g0 = a.spans[si].g;
    while (a.spans[si].k1 <= 64 * c + 32) ++si;
    const int64_t g1 = a.spans[si].g;
    const bool i4 = S == QScheme::Int4;
    const Q8Chunk<S, SGN> w(wr + c * cs, _mm256_set1_epi8(char(i4 ? a.zero(n, g0) : 0)),
                            _mm256_set1_epi8(char(i4 ? a.zero(n, g1) : 0)), tb);
    const __m256 s0 = _mm256_set1_ps(a.scale(n, g0)), s1 = _mm256_set1_ps(a.scale(n, g1));
    for (int r = 0; r < R; ++r) {
      const float* d = a.xd + (r * nc + c) * 16;  // lanes 0..7: block 0's scale, 8..15: block 1's
      __m256i p0, p1;
      w.dot(a.xq + r * a.Kp + 64 * c, p0, p1);
      acc[r][0] =
          _mm256_fmadd_ps(_mm256_cvtepi32_ps(p0), _mm256_mul_ps(_mm256_loadu_ps(d), s0), acc[r][0]);
      acc[r][1] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p1), _mm256_mul_ps(_mm256_loadu_ps(d + 8), s1),
                                  acc[r][1]);
    }
  }
  for (int r = 0; r < R; ++r)
    y[r * ldy + n] = hsum256(_mm256_add_ps(acc[r][0], acc[r][1])) * a.q8_out_factor();
}

// int4 with groups of 32 and plain scales (int4-g32, int4-g32-asym: the layout of llama.cpp's
// Q4_0 / Q4_1): each half chunk is one group, its scale and zero point read by index (no span
// walk), w = u - z in int8 and the exact Σ w q per 4 weights by vpmaddubsw of |w| with q carrying
// w's sign, times d_block · s_group in f32. The zero point is removed in the integers, per block:
// removing it as one f32 term per row (Q4_1 · Q8_1's m · s split, Σ d s Σuq - Σ z s d Σq) measured
// 2x faster but cancels where SmolLM2's activations are huge (the down projection's first token:
// outputs off by 1e-4 absolute), +0.71 % WikiText-2 perplexity against +0.30 % this way.
template <int R>
void q8_row_g32(int64_t n, const QArgs& a, float* y, int64_t ldy) {
  const uint8_t* wr = a.row_base(n);
  const int64_t cs = a.chunk_stride(), nc = a.Kp / 64, ng = a.groups;
  const float* s = a.scales + n * ng;
  const uint8_t* z = a.zeros ? a.zeros + n * ng : nullptr;
  const __m256i m = _mm256_set1_epi8(0x0F), eight = _mm256_set1_epi8(8);
  __m256 acc[R][2];
  for (int r = 0; r < R; ++r) acc[r][0] = acc[r][1] = _mm256_setzero_ps();
  for (int64_t c = 0; c < nc; ++c) {
    // Half 0 is group 2c (< ng always); half 1 past the last group is padding (q = 0).
    const int64_t g1 = std::min(2 * c + 1, ng - 1);
    const __m256 s0 = _mm256_set1_ps(s[2 * c]), s1 = _mm256_set1_ps(s[g1]);
    const __m256i z0 = z ? _mm256_set1_epi8(char(z[2 * c])) : eight;
    const __m256i z1 = z ? _mm256_set1_epi8(char(z[g1])) : eight;
    const __m256i b = _mm256_loadu_si256((const __m256i*)(wr + c * cs));
    const __m256i w0 = _mm256_sub_epi8(_mm256_and_si256(b, m), z0);
    const __m256i w1 = _mm256_sub_epi8(_mm256_and_si256(_mm256_srli_epi16(b, 4), m), z1);
    const __m256i a0 = _mm256_abs_epi8(w0), a1 = _mm256_abs_epi8(w1);
    for (int r = 0; r < R; ++r) {
      const int8_t* q = a.xq + r * a.Kp + 64 * c;
      const float* d = a.xd + (r * nc + c) * 16;
      const __m256i p0 = q8_dot32(a0, w0, _mm256_loadu_si256((const __m256i*)q));
      const __m256i p1 = q8_dot32(a1, w1, _mm256_loadu_si256((const __m256i*)(q + 32)));
      acc[r][0] =
          _mm256_fmadd_ps(_mm256_cvtepi32_ps(p0), _mm256_mul_ps(_mm256_loadu_ps(d), s0), acc[r][0]);
      acc[r][1] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p1), _mm256_mul_ps(_mm256_loadu_ps(d + 8), s1),
                                  acc[r][1]);
    }
  }
  for (int r = 0; r < R; ++r) y[r * ldy + n] = hsum256(_mm256_add_ps(acc[r][0], acc[r][1]));
}

// Interleaved rows a q8 kernel takes at once for R tokens: its 2 · rows · R accumulators and the
// codes of the rows in flight must fit AVX2's 16 ymm registers.
constexpr int group_rows_for(int R) {
  return R == 1 ? 4 : R == 2 ? 2 : 1;
}

// Rows n0..n1. Rows interleaved by 4 (the CPU backend's repacked layout): a group's rows together,
// 4 for one token, 2 for two (the register budget), one for 3-4, so that one contiguous run of
// codes streams per group and the rows' accumulator chains overlap (one row's FMA chain alone is
// bound by its latency); each row keeps its own accumulators, so it gives the same bits whichever
// tile holds it. The row layout: one row at a time (several rows at once there are several
// streams through DRAM, measured slower: docs/performance.md).
template <QScheme S, bool SGN, template <QScheme, bool, int, int> class Row, int R>
void q8_rows_rt(const QArgs& a, int64_t n0, int64_t n1, float* y, int64_t ldy) {
  const Nf4Tables tb;
  constexpr int RWmax = Row<S, SGN, 1, R>::kMaxRows;
  int64_t n = n0;
  if (a.il == 4) {
    for (; n < n1 && n % 4 != 0; ++n) Row<S, SGN, 1, R>::run(n, a, tb, y, ldy);
    if constexpr (RWmax >= 4)
      for (; n + 4 <= n1; n += 4) Row<S, SGN, 4, R>::run(n, a, tb, y, ldy);
    if constexpr (RWmax >= 2)
      for (; n + 2 <= n1; n += 2) Row<S, SGN, 2, R>::run(n, a, tb, y, ldy);
  }
  for (; n < n1; ++n) Row<S, SGN, 1, R>::run(n, a, tb, y, ldy);
}
template <QScheme S, bool SGN, template <QScheme, bool, int, int> class Row>
void q8_rows_r(const QArgs& a, int64_t T, int64_t n0, int64_t n1, float* y, int64_t ldy) {
  switch (T) {
    case 1:
      return q8_rows_rt<S, SGN, Row, 1>(a, n0, n1, y, ldy);
    case 2:
      return q8_rows_rt<S, SGN, Row, 2>(a, n0, n1, y, ldy);
    case 3:
      return q8_rows_rt<S, SGN, Row, 3>(a, n0, n1, y, ldy);
    default:
      return q8_rows_rt<S, SGN, Row, 4>(a, n0, n1, y, ldy);
  }
}
template <QScheme S, bool SGN, int RW, int R>
struct ChunkRow {
  static constexpr int kMaxRows = group_rows_for(R);
  static void run(int64_t n, const QArgs& a, const Nf4Tables& tb, float* y, int64_t ldy) {
    q8_row<S, SGN, RW, R>(n, a, tb, y, ldy);
  }
};
template <QScheme S, bool SGN, int RW, int R>
struct BlockRow {
  static constexpr int kMaxRows = 1;
  static void run(int64_t n, const QArgs& a, const Nf4Tables& tb, float* y, int64_t ldy) {
    q8_row_blocks<S, SGN, R>(n, a, tb, y, ldy);
  }
};
// One row at a time: the CPU backend keeps g32 weights in the row layout on AVX2 (repacked, they
// decoded slower, docs/performance.md); an interleaved one is read through row_base.
template <QScheme S, bool SGN, int RW, int R>
struct G32Row {
  static constexpr int kMaxRows = 1;
  static void run(int64_t n, const QArgs& a, const Nf4Tables&, float* y, int64_t ldy) {
    q8_row_g32<R>(n, a, y, ldy);
  }
};
template <QScheme S, bool ASYM, int RW, int R>
struct URow {
  static constexpr int kMaxRows = group_rows_for(R);
  static void run(int64_t n, const QArgs& a, const Nf4Tables&, float* y, int64_t ldy) {
    q8_row_u<S, ASYM, RW, R>(n, a, y, ldy);
  }
};
template <QScheme S, bool SGN>
void q8_rows_t(const QArgs& a, int64_t T, int64_t n0, int64_t n1, float* y, int64_t ldy) {
  if constexpr (S != QScheme::Int8) {
    if (S == QScheme::Int4 && a.G == 32 && a.groups > 1 && a.scales && !a.per_tensor)
      return q8_rows_r<S, SGN, G32Row>(a, T, n0, n1, y, ldy);
    if (a.chunk_spans && a.zeros)  // asymmetric int4 (NF4 has no zero points)
      return q8_rows_r<S, S == QScheme::Int4, URow>(a, T, n0, n1, y, ldy);
    if (a.chunk_spans) return q8_rows_r<S, false, URow>(a, T, n0, n1, y, ldy);
  }
  if (a.chunk_spans)
    q8_rows_r<S, SGN, ChunkRow>(a, T, n0, n1, y, ldy);
  else
    q8_rows_r<S, SGN, BlockRow>(a, T, n0, n1, y, ldy);
}

// One row of x (K values, then zeros to Kp) quantized per block of 32 as qm::quantize_act_block
// (d = max|x| / 127, q = round-half-even(x · (127 / max|x|)) by vcvtps2dq in the default rounding
// mode, bit for bit; blocks with an inf, NaN, all zeros or max|x| < qm::kActTiny go to that
// function itself), in QArgs' layout: q [Kp], dv [Kp / 64, 16], ns [Kp / 4] (-Σ of each 4 codes).
void q8_quantize_row(const float* x, int64_t K, int64_t Kp, int8_t* q, float* dv, int32_t* ns) {
  const __m256 lo = _mm256_set1_ps(-127.f), hi = _mm256_set1_ps(127.f);
  const __m256 fmax = _mm256_set1_ps(3.4028234663852886e38f);
  const __m256 absm = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  for (int64_t b = 0; b < Kp / 32; ++b) {
    const int64_t k0 = b * 32, n = std::clamp<int64_t>(K - k0, 0, 32);
    __m256 v[4];
    for (int i = 0; i < 4; ++i)
      v[i] = n >= 32
                 ? _mm256_loadu_ps(x + k0 + 8 * i)
                 : _mm256_maskload_ps(x + k0 + 8 * i,
                                      _mm256_cmpgt_epi32(_mm256_set1_epi32(int(n - 8 * i)), lane));
    __m256 m = _mm256_setzero_ps();
    int finite = 0xff;
    for (int i = 0; i < 4; ++i) {
      const __m256 av = _mm256_and_ps(v[i], absm);
      finite &= _mm256_movemask_ps(_mm256_cmp_ps(av, fmax, _CMP_LE_OQ));  // false for NaN
      m = _mm256_max_ps(m, av);
    }
    __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
    m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
    const float amax = _mm_cvtss_f32(_mm_max_ss(m4, _mm_movehdup_ps(m4)));
    float d;
    if (finite != 0xff || !(amax >= qm::kActTiny)) {
      int32_t sum;
      qm::quantize_act_block(x + k0, int(n), 32, q + k0, &d, &sum);
    } else {
      const __m256 id = _mm256_set1_ps(127.f / amax);
      __m256i c[4];
      for (int i = 0; i < 4; ++i)
        c[i] = _mm256_cvtps_epi32(_mm256_min_ps(_mm256_max_ps(_mm256_mul_ps(v[i], id), lo), hi));
      // packs work per 128-bit lane: the bytes come out as 4-byte groups in the order
      // 0 2 4 6 1 3 5 7 of the 8 groups; one permute puts them back.
      const __m256i p =
          _mm256_packs_epi16(_mm256_packs_epi32(c[0], c[1]), _mm256_packs_epi32(c[2], c[3]));
      _mm256_storeu_si256((__m256i*)(q + k0), _mm256_permutevar8x32_epi32(
                                                  p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7)));
      d = amax / 127.f;
    }
    _mm256_storeu_ps(dv + (b / 2) * 16 + (b % 2) * 8, _mm256_set1_ps(d));
    const __m256i sum = q8_dot32(_mm256_set1_epi8(1), _mm256_set1_epi8(1),
                                 _mm256_loadu_si256((const __m256i*)(q + k0)));
    _mm256_storeu_si256((__m256i*)(ns + k0 / 4), _mm256_sub_epi32(_mm256_setzero_si256(), sum));
  }
}

}  // namespace

void simd_quantize_q8(const float* x, int64_t T, int64_t ldx, int64_t K, int8_t* q, float* dv,
                      int32_t* ns) {
  const int64_t Kp = qm::padded_k(K);
  for (int64_t t = 0; t < T; ++t)
    q8_quantize_row(x + t * ldx, K, Kp, q + t * Kp, dv + t * (Kp / 64) * 16, ns + t * (Kp / 4));
}

void simd_decode_rows_q8(const QArgs& a, int64_t T, int64_t n0, int64_t n1, float* y, int64_t ldy) {
  MINFER_DCHECK(T >= 1 && T <= 4 && a.xq, "simd_decode_rows_q8: T {} outside 1..4", T);
  switch (a.scheme) {
    case QScheme::Int8:
      return a.il != 1 ? q8_rows_t<QScheme::Int8, true>(a, T, n0, n1, y, ldy)
                       : q8_rows_t<QScheme::Int8, false>(a, T, n0, n1, y, ldy);
    case QScheme::Int4:
      return q8_rows_t<QScheme::Int4, false>(a, T, n0, n1, y, ldy);
    case QScheme::NF4:
      return q8_rows_t<QScheme::NF4, false>(a, T, n0, n1, y, ldy);
    default:
      MINFER_FAIL("simd_decode_rows_q8: no q8 path for {}", int(a.scheme));
  }
}

void simd_linear_fused(const QArgs& a, int64_t T, float* y, int64_t ldy, int64_t N) {
  MINFER_Q_DISPATCH(fused, a, T, y, ldy, N)
}

void simd_decode_rows(const QArgs& a, int64_t T, int64_t n0, int64_t n1, float* y, int64_t ldy) {
  MINFER_DCHECK(T >= 1 && T <= 4, "simd_decode_rows: T {} outside 1..4", T);
  MINFER_Q_DISPATCH(decode_rows_t, a, T, n0, n1, y, ldy)
}

void simd_dequant_rows(const QArgs& a, int64_t n0, int64_t nr, float* dst) {
  MINFER_Q_DISPATCH(dequant_rows, a, n0, nr, dst)
}

}  // namespace minfer::qcpu

#endif  // MINFER_Q_AVX2
