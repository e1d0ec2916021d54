// Quantized linear kernels for AVX-512 (built where the target has AVX512F + BW + VNNI, the gate
// quant_act_avx512.cpp shares; e.g. Zen 4, Ice Lake and later). Compiled to nothing elsewhere.
// Legend: T rows of x, K = in features, N = out features, Kp = K padded to 64, G = weight group, RW
// weight rows x R x rows per kernel call.
//
// Weight-only: x stays f32 and every weight is dequantized in registers, 16 at a time, from
// bytes read once (W is never dequantized as a whole in decode).
//   int8:     vpmovzxbd (16 codes u -> int32), - 128, vcvtdq2ps, FMA with x; the products of a
//             group accumulate unscaled and its scale multiplies once per group.
//   int4/NF4: vpmovzxbd of 16 bytes gives 32 nibbles in 16 lanes; _mm512_permutexvar_ps looks up
//             the low nibble (it reads index bits 0..3 only) and, after a shift by 4, the high one
//             in a 16-entry table of the dequantized values s * (u - z) (int4) or s * nf4[u],
//             rebuilt once per group and row.
//   int3:     the 24 bytes of a 64-weight chunk as two 16-byte loads broadcast to the four
//             128-bit lanes; vpshufb moves the one or two bytes holding code j into dword j and
//             vpsrlvd shifts it down by 3j mod 8; the lookup is int4's with the table
//             s * ((j & 7) - 4) (index bit 3 is the next code's low bit and is ignored).
//   ternary:  the same lookup with the table s * ((j & 3) - 1) on the byte shifted by 0/2/4/6.
//   binary:   16 mask bits select +s or -s (vblendmps).
// Several independent accumulators per output keep the FMA latency hidden.
#include "kernels/cpu/quant_impl.h"

#if defined(MINFER_Q_AVX512)

#include <algorithm>
#include <cstring>

// GCC 12 flags the intentionally undefined pass-through register inside AVX-512 intrinsics
// (-Wuninitialized on `__Y = __Y`) once they are inlined into templates.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#include <immintrin.h>
#pragma GCC diagnostic pop

namespace minfer::qcpu {

const char* const kSimdIsa = "avx512";

namespace {

#define MINFER_INLINE inline __attribute__((always_inline))
#define MINFER_INLINE_LAMBDA __attribute__((always_inline))

// Horizontal sum by lane shuffles (GCC 12's _mm512_reduce_* trip the warning above).
MINFER_INLINE float hsum512(__m512 v) {
  v = _mm512_add_ps(v, _mm512_shuffle_f32x4(v, v, _MM_SHUFFLE(1, 0, 3, 2)));
  v = _mm512_add_ps(v, _mm512_shuffle_f32x4(v, v, _MM_SHUFFLE(2, 3, 0, 1)));
  __m128 x = _mm512_castps512_ps128(v);
  x = _mm_add_ps(x, _mm_movehl_ps(x, x));
  return _mm_cvtss_f32(_mm_add_ss(x, _mm_movehdup_ps(x)));
}
// The four horizontal sums of a, b, c, d.
MINFER_INLINE __m128 hsum4(__m512 a, __m512 b, __m512 c, __m512 d) {
  const __m512 ab =
      _mm512_add_ps(_mm512_shuffle_f32x4(a, b, 0x44), _mm512_shuffle_f32x4(a, b, 0xee));
  const __m512 cd =
      _mm512_add_ps(_mm512_shuffle_f32x4(c, d, 0x44), _mm512_shuffle_f32x4(c, d, 0xee));
  __m512 v = _mm512_add_ps(_mm512_shuffle_f32x4(ab, cd, 0x88), _mm512_shuffle_f32x4(ab, cd, 0xdd));
  v = _mm512_add_ps(v, _mm512_shuffle_ps(v, v, 0x4e));
  v = _mm512_add_ps(v, _mm512_shuffle_ps(v, v, 0xb1));
  return _mm512_castps512_ps128(
      _mm512_permutexvar_ps(_mm512_setr_epi32(0, 4, 8, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0), v));
}

template <int RW, int R>
MINFER_INLINE void store_tile(__m512 (&f)[RW][R], float* y, int64_t ldy, int64_t n0, int64_t t0) {
  for (int r = 0; r < R; ++r) {
    float* yr = y + (t0 + r) * ldy + n0;
    if constexpr (RW == 4)
      _mm_storeu_ps(yr, hsum4(f[0][r], f[1][r], f[2][r], f[3][r]));
    else
      for (int i = 0; i < RW; ++i) yr[i] = hsum512(f[i][r]);
  }
}

MINFER_INLINE __mmask16 tail_mask(int64_t valid) {
  return valid >= 16 ? __mmask16(0xffff) : valid <= 0 ? __mmask16(0) : __mmask16((1u << valid) - 1);
}

MINFER_INLINE __m512i zext16(const uint8_t* p) {
  return _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i*)p));
}

// The per-span dequantization state of one weight row: the 16-entry table of dequantized values
// (int4, NF4, ternary), +s / -s (binary) or the scale (int8, applied when the span is flushed).
template <QScheme S>
struct RowDq {
  __m512 t, neg;
  float s;
  MINFER_INLINE void set(const QArgs& a, int64_t n, int64_t g) {
    s = a.scale(n, g);
    const __m512 sv = _mm512_set1_ps(s);
    const __m512 iota = _mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    if constexpr (S == QScheme::Int4) {
      t = _mm512_mul_ps(_mm512_sub_ps(iota, _mm512_set1_ps(float(a.zero(n, g)))), sv);
    } else if constexpr (S == QScheme::NF4) {
      t = _mm512_mul_ps(
          _mm512_setr_ps(qm::nf4_value(0), qm::nf4_value(1), qm::nf4_value(2), qm::nf4_value(3),
                         qm::nf4_value(4), qm::nf4_value(5), qm::nf4_value(6), qm::nf4_value(7),
                         qm::nf4_value(8), qm::nf4_value(9), qm::nf4_value(10), qm::nf4_value(11),
                         qm::nf4_value(12), qm::nf4_value(13), qm::nf4_value(14),
                         qm::nf4_value(15)),
          sv);
    } else if constexpr (S == QScheme::Int3) {
      // u = bits 0..2 of the index (bit 3 belongs to the next code): entry j = s * ((j & 7) - 4).
      t = _mm512_mul_ps(_mm512_setr_ps(-4, -3, -2, -1, 0, 1, 2, 3, -4, -3, -2, -1, 0, 1, 2, 3), sv);
    } else if constexpr (S == QScheme::Ternary) {
      // u = bits 0..1 of the index; the permute sees 4 bits, so entry j = s * ((j & 3) - 1).
      t = _mm512_mul_ps(_mm512_setr_ps(-1, 0, 1, 2, -1, 0, 1, 2, -1, 0, 1, 2, -1, 0, 1, 2), sv);
    } else if constexpr (S == QScheme::Binary) {
      t = sv;
      neg = _mm512_sub_ps(_mm512_setzero_ps(), sv);
    }
  }
};

// int3: vpshufb controls that put into dword j (j = 0..15, 4 per 128-bit lane) the byte of a
// 16-byte load holding bit 3j of a 16-code run starting at byte `off` of the load, and the next
// byte when the code straddles into it (else zero). Runs: codes 0..15 of a chunk start at byte 0
// of its first 16 bytes, 16..31 at byte 6, 32..47 at byte 4 of bytes 8..23, 48..63 at byte 10.
struct Q3Ctl {
  alignas(64) int8_t b[4][64];
};
constexpr Q3Ctl make_q3_ctl() {
  Q3Ctl c{};
  const int offs[4] = {0, 6, 4, 10};
  for (int r = 0; r < 4; ++r)
    for (int j = 0; j < 16; ++j) {
      const int byte = offs[r] + (3 * j) / 8, sh = (3 * j) % 8;
      int8_t* d = c.b[r] + 4 * j;
      d[0] = int8_t(byte);
      d[1] = sh > 5 ? int8_t(byte + 1) : int8_t(-128);
      d[2] = d[3] = int8_t(-128);
    }
  return c;
}
constexpr Q3Ctl kQ3Ctl = make_q3_ctl();

// 16 int3 weights: run r of kQ3Ctl applied to the broadcast bytes, shifted, looked up in d.t.
MINFER_INLINE __m512 q3x16(__m512i bytes, int r, __m512 t) {
  const __m512i sh = _mm512_setr_epi32(0, 3, 6, 1, 4, 7, 2, 5, 0, 3, 6, 1, 4, 7, 2, 5);
  const __m512i ctl = _mm512_load_si512(kQ3Ctl.b[r]);
  return _mm512_permutexvar_ps(_mm512_srlv_epi32(_mm512_shuffle_epi8(bytes, ctl), sh), t);
}
MINFER_INLINE __m512i bcast16(const uint8_t* p) {
  return _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i*)p));
}

// 16 int8 codes as f32 u - 128: stored as u (SGN false) or as u - 128 (SGN true, the interleaved
// layout) and sign-extended.
template <bool SGN>
MINFER_INLINE __m512 q8x16(const uint8_t* p) {
  if constexpr (SGN)
    return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i*)p)));
  else
    return _mm512_cvtepi32_ps(_mm512_sub_epi32(zext16(p), _mm512_set1_epi32(128)));
}

// The 64 dequantized weights (unscaled q = u - 128 for int8) of the 64-weight chunk whose codes
// start at p (8 * bits bytes), 16 per vector in weight order. SGN: int8 codes stored as u - 128.
template <QScheme S, bool SGN>
MINFER_INLINE void chunk64(const uint8_t* c, const RowDq<S>& d, __m512 (&w)[4]) {
  if constexpr (S == QScheme::Int8) {
    for (int j = 0; j < 4; ++j) w[j] = q8x16<SGN>(c + 16 * j);
  } else if constexpr (S == QScheme::Int4 || S == QScheme::NF4) {
    const __m512i b0 = zext16(c), b1 = zext16(c + 16);
    w[0] = _mm512_permutexvar_ps(b0, d.t);  // index bits 0..3: the low nibble
    w[1] = _mm512_permutexvar_ps(b1, d.t);
    w[2] = _mm512_permutexvar_ps(_mm512_srli_epi32(b0, 4), d.t);
    w[3] = _mm512_permutexvar_ps(_mm512_srli_epi32(b1, 4), d.t);
  } else if constexpr (S == QScheme::Int3) {
    const __m512i lo = bcast16(c), hi = bcast16(c + 8);
    w[0] = q3x16(lo, 0, d.t);
    w[1] = q3x16(lo, 1, d.t);
    w[2] = q3x16(hi, 2, d.t);
    w[3] = q3x16(hi, 3, d.t);
  } else if constexpr (S == QScheme::Ternary) {
    const __m512i b = zext16(c);
    w[0] = _mm512_permutexvar_ps(b, d.t);
    w[1] = _mm512_permutexvar_ps(_mm512_srli_epi32(b, 2), d.t);
    w[2] = _mm512_permutexvar_ps(_mm512_srli_epi32(b, 4), d.t);
    w[3] = _mm512_permutexvar_ps(_mm512_srli_epi32(b, 6), d.t);
  } else {
    uint64_t m;
    std::memcpy(&m, c, 8);
    for (int j = 0; j < 4; ++j) w[j] = _mm512_mask_blend_ps(__mmask16(m >> (16 * j)), d.neg, d.t);
  }
}

// The 32 weights k..k+31 (k % 32 == 0) of the chunk whose codes start at c: half a chunk, where a
// group boundary splits one (groups that are an odd multiple of 32; int8, 4-bit and 3-bit formats
// only).
template <QScheme S, bool SGN>
MINFER_INLINE void half32(const uint8_t* c, int64_t k, const RowDq<S>& d, __m512 (&w)[4]) {
  if constexpr (S == QScheme::Int8) {
    for (int j = 0; j < 2; ++j) w[j] = q8x16<SGN>(c + (k & 32) + 16 * j);
  } else if constexpr (S == QScheme::Int4 || S == QScheme::NF4) {
    __m512i b0 = zext16(c), b1 = zext16(c + 16);
    if (k & 32) b0 = _mm512_srli_epi32(b0, 4), b1 = _mm512_srli_epi32(b1, 4);
    w[0] = _mm512_permutexvar_ps(b0, d.t);
    w[1] = _mm512_permutexvar_ps(b1, d.t);
  } else if constexpr (S == QScheme::Int3) {
    if (k & 32) {
      const __m512i hi = bcast16(c + 8);
      w[0] = q3x16(hi, 2, d.t);
      w[1] = q3x16(hi, 3, d.t);
    } else {
      const __m512i lo = bcast16(c);
      w[0] = q3x16(lo, 0, d.t);
      w[1] = q3x16(lo, 1, d.t);
    }
  }
}

// One tile: weight rows n0..n0+RW against x rows t0..t0+R, reading a.xp, with NA independent
// accumulators per output (enough chains to cover the FMA latency). Each row reads its own chunk
// pointers (row_base + chunk * chunk_stride), so any layout works; SGN: int8 codes stored as
// u - 128 (the interleaved layout).
template <QScheme S, bool SGN>
struct Fused {
  template <int RW, int R, int NA>
  static void tile(int64_t n0, int64_t t0, const QArgs& a, float* y, int64_t ldy) {
    const uint8_t* wr[RW];
    for (int i = 0; i < RW; ++i) wr[i] = a.row_base(n0 + i);
    const int64_t cs = a.chunk_stride();
    const float* xr[R];
    for (int r = 0; r < R; ++r) xr[r] = a.xp + (t0 + r) * a.Kp;
    __m512 f[RW][R], acc[RW][R][NA];
    for (int i = 0; i < RW; ++i)
      for (int r = 0; r < R; ++r) {
        f[i][r] = _mm512_setzero_ps();
        for (int j = 0; j < NA; ++j) acc[i][r][j] = _mm512_setzero_ps();
      }
    RowDq<S> dq[RW];
    for (int64_t si = 0; si < a.nspans; ++si) {
      const Span sp = a.spans[si];
      for (int i = 0; i < RW; ++i) dq[i].set(a, n0 + i, sp.g);
      // The vectors of a chunk go to different accumulators.
      auto fma = [&](const __m512(&w)[RW][4], int64_t k, int nv) MINFER_INLINE_LAMBDA {
        for (int j = 0; j < nv; ++j) {
          __m512 xv[R];
          for (int r = 0; r < R; ++r) xv[r] = _mm512_loadu_ps(xr[r] + k + 16 * j);
          for (int i = 0; i < RW; ++i)
            for (int r = 0; r < R; ++r)
              acc[i][r][j % NA] = _mm512_fmadd_ps(w[i][j], xv[r], acc[i][r][j % NA]);
        }
      };
      __m512 w[RW][4];
      int64_t k = sp.k0;
      if constexpr (S == QScheme::Int8 || S == QScheme::Int4 || S == QScheme::NF4 ||
                    S == QScheme::Int3) {
        if (k & 32) {
          for (int i = 0; i < RW; ++i) half32<S, SGN>(wr[i] + (k >> 6) * cs, k, dq[i], w[i]);
          fma(w, k, 2);
          k += 32;
        }
      }
      for (; k + 64 <= sp.k1; k += 64) {
        for (int i = 0; i < RW; ++i) chunk64<S, SGN>(wr[i] + (k >> 6) * cs, dq[i], w[i]);
        fma(w, k, 4);
      }
      if constexpr (S == QScheme::Int8 || S == QScheme::Int4 || S == QScheme::NF4 ||
                    S == QScheme::Int3) {
        if (k < sp.k1) {
          for (int i = 0; i < RW; ++i) half32<S, SGN>(wr[i] + (k >> 6) * cs, k, dq[i], w[i]);
          fma(w, k, 2);
        }
      }
      if constexpr (S == QScheme::Int8) {  // the group's scale, once
        for (int i = 0; i < RW; ++i) {
          const __m512 s = _mm512_set1_ps(dq[i].s);
          for (int r = 0; r < R; ++r) {
            __m512 v = acc[i][r][0];
            for (int j = 1; j < NA; ++j) v = _mm512_add_ps(v, acc[i][r][j]);
            f[i][r] = _mm512_fmadd_ps(v, s, f[i][r]);
            for (int j = 0; j < NA; ++j) acc[i][r][j] = _mm512_setzero_ps();
          }
        }
      }
    }
    if constexpr (S != QScheme::Int8)
      for (int i = 0; i < RW; ++i)
        for (int r = 0; r < R; ++r) {
          f[i][r] = acc[i][r][0];
          for (int j = 1; j < NA; ++j) f[i][r] = _mm512_add_ps(f[i][r], acc[i][r][j]);
        }
    store_tile<RW, R>(f, y, ldy, n0, t0);
  }

  // The accumulator count of a tile of RW x R outputs.
  static constexpr int na(int rw, int r) { return rw * r >= 4 ? 1 : rw * r == 1 ? 4 : 2; }

  template <int RW, int R>
  struct K {
    static void run(int64_t n0, int64_t t0, const QArgs& a, float* y, int64_t ldy) {
      tile<RW, R, na(RW, R)>(n0, t0, a, y, ldy);
    }
  };

  // One token, the 4 rows of an interleaved group (a.il == 4, n0 % 4 == 0): one contiguous run of
  // codes, each x vector loaded once for the 4 rows. Every row keeps the one-row kernel's 4
  // accumulators, additions and horizontal sum (hsum4 adds in hsum512's order), so the outputs
  // are bit-identical to K<1, 1> on the same rows.
  static void run_x4(int64_t n0, const QArgs& a, float* y) {
    const uint8_t* g = a.row_base(n0);
    const int64_t cb = a.rb / (a.Kp / 64), cs = a.chunk_stride();
    const float* xr = a.xp;
    __m512 f[4], acc[4][4];
    for (int i = 0; i < 4; ++i) {
      f[i] = _mm512_setzero_ps();
      for (int j = 0; j < 4; ++j) acc[i][j] = _mm512_setzero_ps();
    }
    RowDq<S> dq[4];
    for (int64_t si = 0; si < a.nspans; ++si) {
      const Span sp = a.spans[si];
      for (int i = 0; i < 4; ++i) dq[i].set(a, n0 + i, sp.g);
      int64_t k = sp.k0;
      // Half chunks (a group boundary inside a chunk): rows one after the other, as K<1, 1>.
      auto half = [&](int64_t kk) MINFER_INLINE_LAMBDA {
        const __m512 x0 = _mm512_loadu_ps(xr + kk), x1 = _mm512_loadu_ps(xr + kk + 16);
        for (int i = 0; i < 4; ++i) {
          __m512 w[4];
          half32<S, SGN>(g + (kk >> 6) * cs + i * cb, kk, dq[i], w);
          acc[i][0] = _mm512_fmadd_ps(w[0], x0, acc[i][0]);
          acc[i][1] = _mm512_fmadd_ps(w[1], x1, acc[i][1]);
        }
      };
      if constexpr (S == QScheme::Int8 || S == QScheme::Int4 || S == QScheme::NF4 ||
                    S == QScheme::Int3) {
        if (k & 32) {
          half(k);
          k += 32;
        }
      }
      for (; k + 64 <= sp.k1; k += 64) {
        const uint8_t* c = g + (k >> 6) * cs;
        __m512 xv[4];
        for (int j = 0; j < 4; ++j) xv[j] = _mm512_loadu_ps(xr + k + 16 * j);
        for (int i = 0; i < 4; ++i) {
          __m512 w[4];
          chunk64<S, SGN>(c + i * cb, dq[i], w);
          for (int j = 0; j < 4; ++j) acc[i][j] = _mm512_fmadd_ps(w[j], xv[j], acc[i][j]);
        }
      }
      if constexpr (S == QScheme::Int8 || S == QScheme::Int4 || S == QScheme::NF4 ||
                    S == QScheme::Int3) {
        if (k < sp.k1) half(k);
      }
      if constexpr (S == QScheme::Int8) {
        for (int i = 0; i < 4; ++i) {
          __m512 v = acc[i][0];
          for (int j = 1; j < 4; ++j) v = _mm512_add_ps(v, acc[i][j]);
          f[i] = _mm512_fmadd_ps(v, _mm512_set1_ps(dq[i].s), f[i]);
          for (int j = 0; j < 4; ++j) acc[i][j] = _mm512_setzero_ps();
        }
      }
    }
    if constexpr (S != QScheme::Int8)
      for (int i = 0; i < 4; ++i) {
        f[i] = acc[i][0];
        for (int j = 1; j < 4; ++j) f[i] = _mm512_add_ps(f[i], acc[i][j]);
      }
    _mm_storeu_ps(y + n0, hsum4(f[0], f[1], f[2], f[3]));
  }
};

// Decode: contiguous blocks of rows (kDecodeChunk weights or more) claimed by the pool's threads,
// one weight row at a time, so that each thread's reads stream through memory in order
// (interleaving rows of the row layout costs DRAM bandwidth: on the shared 2-core Zen 4 box, 2 or 4
// rows per call ran the int8 LM head at ~7 GB/s against ~15 for one); one thread below 64K
// weights. Rows interleaved by 4 (one token): whole groups through run_x4, which streams the
// group's single contiguous run; the rows of a partial group one by one.
template <QScheme S, bool SGN, int R>
void decode_rows(const QArgs& a, int64_t n0, int64_t n1, float* y, int64_t ldy) {
  int64_t n = n0;
  if (R == 1 && a.il == 4) {
    for (; n < n1 && n % 4 != 0; ++n) Fused<S, SGN>::template K<1, R>::run(n, 0, a, y, ldy);
    for (; n + 4 <= n1; n += 4) Fused<S, SGN>::run_x4(n, a, y);
  }
  for (; n < n1; ++n) Fused<S, SGN>::template K<1, R>::run(n, 0, a, y, ldy);
}
template <QScheme S, bool SGN, int R>
void decode(const QArgs& a, float* y, int64_t ldy, int64_t N) {
  parallel_for(N, a.Kp, kDecodeChunk,
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
  const int64_t cs = a.chunk_stride();
  for (int64_t i = 0; i < nr; ++i) {
    const uint8_t* c = a.row_base(n0 + i);
    float* o = dst + i * a.K;
    RowDq<S> dq;
    for (int64_t si = 0; si < a.nspans; ++si) {
      const Span sp = a.spans[si];
      dq.set(a, n0 + i, sp.g);
      const __m512 s = _mm512_set1_ps(dq.s);
      auto put = [&](__m512(&w)[4], int64_t k, int nv) MINFER_INLINE_LAMBDA {
        for (int j = 0; j < nv; ++j) {
          if constexpr (S == QScheme::Int8) w[j] = _mm512_mul_ps(w[j], s);  // s * (u - 128)
          _mm512_mask_storeu_ps(o + k + 16 * j, tail_mask(a.K - k - 16 * j), w[j]);
        }
      };
      __m512 w[4];
      int64_t k = sp.k0;
      const int64_t k1 = std::min(sp.k1, qm::padded_k(a.K));
      if constexpr (S == QScheme::Int8 || S == QScheme::Int4 || S == QScheme::NF4 ||
                    S == QScheme::Int3) {
        if (k & 32) {
          half32<S, SGN>(c + (k >> 6) * cs, k, dq, w);
          put(w, k, 2);
          k += 32;
        }
      }
      for (; k + 64 <= k1 && k < a.K; k += 64) {
        chunk64<S, SGN>(c + (k >> 6) * cs, dq, w);
        put(w, k, 4);
      }
      if constexpr (S == QScheme::Int8 || S == QScheme::Int4 || S == QScheme::NF4 ||
                    S == QScheme::Int3) {
        if (k < k1 && k < a.K) {
          half32<S, SGN>(c + (k >> 6) * cs, k, dq, w);
          put(w, k, 2);
        }
      }
    }
  }
}

// ---- The q8 path: int8 / int4 weights against 8-bit activations (QArgs::xq).

// The 64 unsigned codes u of the chunk at c in weight order: int8 u (stored as u - 128 where SGN:
// flip the sign bit back), int4 the 32 low nibbles then the 32 high ones (qm::ChunkQ4).
template <QScheme S, bool SGN>
MINFER_INLINE __m512i codes_u64(const uint8_t* c) {
  if constexpr (S == QScheme::Int8) {
    const __m512i v = _mm512_loadu_si512(c);
    return SGN ? _mm512_xor_si512(v, _mm512_set1_epi8(char(0x80))) : v;
  } else {
    const __m256i b = _mm256_loadu_si256((const __m256i*)c);
    const __m512i v = _mm512_inserti64x4(_mm512_castsi256_si512(b), _mm256_srli_epi16(b, 4), 1);
    return _mm512_and_si512(v, _mm512_set1_epi8(0x0F));
  }
}

// Weight rows n0..n0+RW against tokens 0..R of a.xq. Each row's arithmetic does not depend on RW
// (its own accumulators, the same operations in the same order; store_tile's hsum4 adds as
// hsum512), so a row gives the same bits whichever tile computes it.
template <QScheme S, bool SGN>
struct Q8Rows {
  template <int RW, int R>
  static void run(int64_t n0, const QArgs& a, float* y, int64_t ldy) {
    const uint8_t* wr[RW];
    for (int i = 0; i < RW; ++i) wr[i] = a.row_base(n0 + i);
    const int64_t cs = a.chunk_stride(), nc = a.Kp / 64;
    __m512 f[RW][R], acc[RW][R];
    for (int i = 0; i < RW; ++i)
      for (int r = 0; r < R; ++r) f[i][r] = acc[i][r] = _mm512_setzero_ps();
    for (int64_t si = 0; si < a.nspans; ++si) {
      const Span sp = a.spans[si];
      __m512i zv[RW];
      for (int i = 0; i < RW; ++i) zv[i] = _mm512_set1_epi32(a.zero(n0 + i, sp.g));
      for (int64_t k = sp.k0; k < sp.k1; k += 64) {
        const int64_t c = k >> 6;
        __m512i u[RW];
        for (int i = 0; i < RW; ++i) u[i] = codes_u64<S, SGN>(wr[i] + c * cs);
        for (int r = 0; r < R; ++r) {
          const __m512i q = _mm512_loadu_si512(a.xq + r * a.Kp + k);
          const __m512i ns = _mm512_loadu_si512(a.xs + r * (a.Kp / 4) + k / 4);
          const __m512 d = _mm512_loadu_ps(a.xd + (r * nc + c) * 16);
          // -z Σq per lane: a shift where z is the scheme's power of two, else a multiply.
          __m512i base[RW];
          if (a.zeros) {
            for (int i = 0; i < RW; ++i) base[i] = _mm512_mullo_epi32(ns, zv[i]);
          } else {
            const __m512i b = _mm512_slli_epi32(ns, S == QScheme::Int8 ? 7 : 3);
            for (int i = 0; i < RW; ++i) base[i] = b;
          }
          for (int i = 0; i < RW; ++i)
            acc[i][r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_dpbusd_epi32(base[i], u[i], q)),
                                        d, acc[i][r]);
        }
      }
      for (int i = 0; i < RW; ++i) {
        const __m512 s = _mm512_set1_ps(a.scale(n0 + i, sp.g));
        for (int r = 0; r < R; ++r) {
          f[i][r] = _mm512_fmadd_ps(acc[i][r], s, f[i][r]);
          acc[i][r] = _mm512_setzero_ps();
        }
      }
    }
    store_tile<RW, R>(f, y, ldy, n0, 0);
  }
};

// Rows n0..n1: whole groups of an interleaved layout 4 rows at a time (one contiguous run; 2 at a
// time for 3 or 4 tokens, the register budget), every other row alone (a streaming row).
template <QScheme S, bool SGN, int R>
void q8_rows(const QArgs& a, int64_t n0, int64_t n1, float* y, int64_t ldy) {
  using K = Q8Rows<S, SGN>;
  constexpr int RW = R <= 2 ? 4 : 2;
  int64_t n = n0;
  if (a.il == 4) {
    for (; n < n1 && n % 4 != 0; ++n) K::template run<1, R>(n, a, y, ldy);
    for (; n + RW <= n1; n += RW) K::template run<RW, R>(n, a, y, ldy);
  }
  for (; n < n1; ++n) K::template run<1, R>(n, a, y, ldy);
}
template <QScheme S, bool SGN>
void q8_rows_t(const QArgs& a, int64_t T, int64_t n0, int64_t n1, float* y, int64_t ldy) {
  switch (T) {
    case 1:
      return q8_rows<S, SGN, 1>(a, n0, n1, y, ldy);
    case 2:
      return q8_rows<S, SGN, 2>(a, n0, n1, y, ldy);
    case 3:
      return q8_rows<S, SGN, 3>(a, n0, n1, y, ldy);
    default:
      return q8_rows<S, SGN, 4>(a, n0, n1, y, ldy);
  }
}

// One row of x (K values, then zeros to Kp) quantized per block of 32 as qm::quantize_act_block
// (d = max|x| / 127, q = round-half-even(x · (127 / max|x|)), bit for bit; blocks with an inf,
// NaN, all zeros or max|x| < qm::kActTiny go to that function itself), in QArgs' layout: q [Kp],
// dv [Kp / 64, 16] (each chunk's two scales spread over 8 lanes each), ns [Kp / 4] (-Σ of each 4
// codes).
void q8_quantize_row(const float* x, int64_t K, int64_t Kp, int8_t* q, float* dv, int32_t* ns) {
  const __m512 lo = _mm512_set1_ps(-127.f), hi = _mm512_set1_ps(127.f);
  for (int64_t b = 0; b < Kp / 32; ++b) {
    const int64_t k0 = b * 32, n = std::clamp<int64_t>(K - k0, 0, 32);
    const __m512 v0 = _mm512_maskz_loadu_ps(tail_mask(n), x + k0);
    const __m512 v1 = _mm512_maskz_loadu_ps(tail_mask(n - 16), x + k0 + 16);
    const __mmask16 bad = _mm512_fpclass_ps_mask(v0, 0x99) | _mm512_fpclass_ps_mask(v1, 0x99);
    __m512 m = _mm512_max_ps(_mm512_abs_ps(v0), _mm512_abs_ps(v1));
    m = _mm512_max_ps(m, _mm512_shuffle_f32x4(m, m, _MM_SHUFFLE(1, 0, 3, 2)));
    m = _mm512_max_ps(m, _mm512_shuffle_f32x4(m, m, _MM_SHUFFLE(2, 3, 0, 1)));
    __m128 m4 = _mm512_castps512_ps128(m);
    m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
    const float amax = _mm_cvtss_f32(_mm_max_ss(m4, _mm_movehdup_ps(m4)));
    float d;
    if (bad || !(amax >= qm::kActTiny)) {
      int32_t sum;
      qm::quantize_act_block(x + k0, int(n), 32, q + k0, &d, &sum);
    } else {
      const __m512 id = _mm512_set1_ps(127.f / amax);
      const __m512i c0 =
          _mm512_cvtps_epi32(_mm512_min_ps(_mm512_max_ps(_mm512_mul_ps(v0, id), lo), hi));
      const __m512i c1 =
          _mm512_cvtps_epi32(_mm512_min_ps(_mm512_max_ps(_mm512_mul_ps(v1, id), lo), hi));
      _mm_storeu_si128((__m128i*)(q + k0), _mm512_cvtepi32_epi8(c0));
      _mm_storeu_si128((__m128i*)(q + k0 + 16), _mm512_cvtepi32_epi8(c1));
      d = amax / 127.f;
    }
    _mm256_storeu_ps(dv + (b / 2) * 16 + (b % 2) * 8, _mm256_set1_ps(d));
  }
  // -Σ of each 4 codes: vpdpbusd of the codes with bytes of 1.
  for (int64_t k = 0; k < Kp; k += 64) {
    const __m512i sum =
        _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_set1_epi8(1), _mm512_loadu_si512(q + k));
    _mm512_storeu_si512(ns + k / 4, _mm512_sub_epi32(_mm512_setzero_si512(), sum));
  }
}

}  // namespace

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
    default:
      MINFER_FAIL("simd_decode_rows_q8: no q8 path for {}", int(a.scheme));
  }
}

}  // namespace minfer::qcpu

#endif  // MINFER_Q_AVX512
