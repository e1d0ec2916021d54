// Quantized linear kernels for AVX-512 with VNNI (AVX512F + BW + VNNI; e.g. Zen 4, Ice Lake and
// later). Compiled to nothing on other targets. Legend: T rows of x, K = in features,
// N = out features, Kp = K padded to 64, QA = activation block, RW weight rows x R x rows per call.
//
// Integer formats: per 64-weight chunk one unpack to 64 code bytes u (shift + mask, or a mask
// move for binary) and one _mm512_dpbusd_epi32(acc, u, x codes) per x row. dpbusd multiplies
// unsigned by signed bytes, which is why every format stores u = q + z with z >= 0 and the zero
// point comes back out through the per-lane activation sums (quant_impl.h, ActQ::nls). Per
// activation block: one int32 -> f32 conversion and one FMA by s_w * d_x.
// NF4: the 16 table values times the block absmax sit in one register and
// _mm512_permutexvar_ps looks up 16 weights at a time for f32 activations.
#include "kernels/cpu/quant_impl.h"

#if defined(MINFER_Q_AVX512)

#include <cblas.h>

#include <algorithm>
#include <cstring>

// GCC 12 flags the intentionally undefined pass-through register inside AVX-512 intrinsics
// (-Wuninitialized on `__Y = __Y`) once they are inlined into templates.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#include <immintrin.h>
#pragma GCC diagnostic pop

namespace minfer::qcpu {

const char* const kSimdIsa = "avx512-vnni";

namespace {

#define MINFER_INLINE inline __attribute__((always_inline))

// Horizontal sum / max by lane shuffles (GCC 12's _mm512_reduce_* trip the warning above).
MINFER_INLINE __m128 fold512(__m512 v, bool max) {
  auto op = [max](__m512 a, __m512 b) { return max ? _mm512_max_ps(a, b) : _mm512_add_ps(a, b); };
  v = op(v, _mm512_shuffle_f32x4(v, v, _MM_SHUFFLE(1, 0, 3, 2)));
  v = op(v, _mm512_shuffle_f32x4(v, v, _MM_SHUFFLE(2, 3, 0, 1)));
  return _mm512_castps512_ps128(v);
}
MINFER_INLINE float hsum512(__m512 v) {
  __m128 x = fold512(v, false);
  x = _mm_add_ps(x, _mm_movehl_ps(x, x));
  return _mm_cvtss_f32(_mm_add_ss(x, _mm_movehdup_ps(x)));
}
MINFER_INLINE float hmax512(__m512 v) {
  __m128 x = fold512(v, true);
  x = _mm_max_ps(x, _mm_movehl_ps(x, x));
  return _mm_cvtss_f32(_mm_max_ss(x, _mm_movehdup_ps(x)));
}
MINFER_INLINE int32_t hsum512i(__m512i v) {
  v = _mm512_add_epi32(v, _mm512_shuffle_i32x4(v, v, _MM_SHUFFLE(1, 0, 3, 2)));
  v = _mm512_add_epi32(v, _mm512_shuffle_i32x4(v, v, _MM_SHUFFLE(2, 3, 0, 1)));
  __m128i x = _mm512_castsi512_si128(v);
  x = _mm_add_epi32(x, _mm_shuffle_epi32(x, _MM_SHUFFLE(1, 0, 3, 2)));
  x = _mm_add_epi32(x, _mm_shuffle_epi32(x, _MM_SHUFFLE(2, 3, 0, 1)));
  return _mm_cvtsi128_si32(x);
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

// ---- Integer formats
// -----------------------------------------------------------------------------

// 64 codes u of one chunk, in weight order, as bytes.
template <QScheme S>
MINFER_INLINE __m512i unpack64(const uint8_t* p) {
  if constexpr (S == QScheme::Int8) {
    return _mm512_loadu_si512(p);
  } else if constexpr (S == QScheme::Int4) {
    // The 32 bytes in both halves; the upper half shifted right by 4 gives the high nibbles.
    const __m512i b = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i*)p));
    return _mm512_and_si512(_mm512_srlv_epi64(b, _mm512_set_epi64(4, 4, 4, 4, 0, 0, 0, 0)),
                            _mm512_set1_epi8(0x0f));
  } else if constexpr (S == QScheme::Ternary) {
    // The 16 bytes in all four 128-bit lanes; lane i shifted by 2i gives weights 16i..16i+15.
    const __m512i b = _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i*)p));
    return _mm512_and_si512(_mm512_srlv_epi64(b, _mm512_set_epi64(6, 6, 4, 4, 2, 2, 0, 0)),
                            _mm512_set1_epi8(3));
  } else {  // Binary: the 64 bits are a byte mask; u = 2 where set.
    uint64_t m;
    std::memcpy(&m, p, 8);
    return _mm512_maskz_mov_epi8(_cvtu64_mask64(m), _mm512_set1_epi8(2));
  }
}

// acc[i][r] += codes of row i, chunk at k  ·  x codes of row r, chunk at k.
template <QScheme S, int RW, int R>
MINFER_INLINE void dot_chunk(__m512i (&acc)[RW][R], const uint8_t* const (&wr)[RW],
                             const int8_t* const (&xq)[R], uint64_t k) {
  constexpr uint64_t bits = uint64_t(code_bits(S));
  __m512i xv[R];
  for (int r = 0; r < R; ++r) xv[r] = _mm512_loadu_si512(xq[r] + k);
  for (int i = 0; i < RW; ++i) {
    const __m512i w = unpack64<S>(wr[i] + k * bits / 8);
    for (int r = 0; r < R; ++r) acc[i][r] = _mm512_dpbusd_epi32(acc[i][r], w, xv[r]);
  }
}

// One unit = one activation block (QA = 64 / 128) or one 64-chunk holding two 32-blocks, whose
// int32 sums are lanes 0..7 and 8..15 (QA = 32). ROWSCALE: one weight scale per row (per-row or
// per-tensor formats, QA = 128): f accumulates acc * d_x and the row scale multiplies the sum.
// Decode is limited by how many cache lines are in flight, i.e. by instructions per weight byte,
// so the per-unit work is kept minimal: the zero point arrives pre-multiplied in nls.
template <QScheme S, bool ASYM, int QA, bool ROWSCALE>
struct IntTile {
  template <int RW, int R>
  struct K {
    static void run(int64_t n0, int64_t t0, const UArgs& u, float* y, int64_t ldy) {
      constexpr uint64_t unit = QA < 64 ? 64 : QA;
      const ActQ& a = *u.a;
      const uint8_t* wr[RW];
      const float* sr[RW];
      const uint8_t* zr[RW];
      for (int i = 0; i < RW; ++i) {
        wr[i] = u.codes + (n0 + i) * u.rb;
        sr[i] = u.scales + (n0 + i) * u.groups;
        zr[i] = ASYM ? u.zeros + (n0 + i) * u.groups : nullptr;
      }
      const int8_t* xq[R];
      const float* xd[R];
      const int32_t* nl[R];
      const float* dv[R];
      for (int r = 0; r < R; ++r) {
        xq[r] = a.q.data() + (t0 + r) * a.Kp;
        xd[r] = a.d.data() + (t0 + r) * a.nb;
        nl[r] = a.nls.data() + (t0 + r) * a.units * 16;
        dv[r] = QA == 32 ? a.dv.data() + (t0 + r) * a.units * 16 : nullptr;
      }
      __m512 f[RW][R];
      for (int i = 0; i < RW; ++i)
        for (int r = 0; r < R; ++r) f[i][r] = _mm512_setzero_ps();
      const uint64_t Kp = uint64_t(a.Kp);
      for (int64_t b = 0; b < a.units; ++b) {
        const uint64_t k0 = uint64_t(b) * unit;
        const int64_t g0 = ROWSCALE ? 0 : u.gidx[QA == 32 ? 2 * b : b];
        const int64_t g1 = QA == 32 ? u.gidx[2 * b + 1] : g0;
        // acc = -z * lane sums of the x codes.
        __m512i acc[RW][R];
        if constexpr (ASYM) {
          __m512i zv[RW];
          for (int i = 0; i < RW; ++i)
            zv[i] = QA == 32 ? _mm512_mask_blend_epi32(0xff00, _mm512_set1_epi32(zr[i][g0]),
                                                       _mm512_set1_epi32(zr[i][g1]))
                             : _mm512_set1_epi32(zr[i][g0]);
          for (int r = 0; r < R; ++r) {
            const __m512i l = _mm512_loadu_si512(nl[r] + b * 16);
            for (int i = 0; i < RW; ++i) acc[i][r] = _mm512_mullo_epi32(l, zv[i]);
          }
        } else {
          for (int r = 0; r < R; ++r) {
            const __m512i l = _mm512_loadu_si512(nl[r] + b * 16);
            for (int i = 0; i < RW; ++i) acc[i][r] = l;
          }
        }
        dot_chunk<S, RW, R>(acc, wr, xq, k0);
        if constexpr (QA == 128)
          if (k0 + 64 < Kp) dot_chunk<S, RW, R>(acc, wr, xq, k0 + 64);
        // f += acc * s_w * d_x  (ROWSCALE: f += acc * d_x).
        if constexpr (QA == 32) {
          __m512 sw[RW];
          for (int i = 0; i < RW; ++i)
            sw[i] =
                _mm512_mask_blend_ps(0xff00, _mm512_set1_ps(sr[i][g0]), _mm512_set1_ps(sr[i][g1]));
          for (int r = 0; r < R; ++r) {
            const __m512 d = _mm512_loadu_ps(dv[r] + b * 16);
            for (int i = 0; i < RW; ++i)
              f[i][r] =
                  _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc[i][r]), _mm512_mul_ps(sw[i], d), f[i][r]);
          }
        } else if constexpr (ROWSCALE) {
          for (int r = 0; r < R; ++r) {
            const __m512 d = _mm512_set1_ps(xd[r][b]);
            for (int i = 0; i < RW; ++i)
              f[i][r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc[i][r]), d, f[i][r]);
          }
        } else {
          __m512 sw[RW];
          for (int i = 0; i < RW; ++i) sw[i] = _mm512_set1_ps(sr[i][g0]);
          for (int r = 0; r < R; ++r) {
            const __m512 d = _mm512_set1_ps(xd[r][b]);
            for (int i = 0; i < RW; ++i)
              f[i][r] =
                  _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc[i][r]), _mm512_mul_ps(sw[i], d), f[i][r]);
          }
        }
      }
      if constexpr (ROWSCALE)
        for (int i = 0; i < RW; ++i)
          for (int r = 0; r < R; ++r) f[i][r] = _mm512_mul_ps(f[i][r], _mm512_set1_ps(sr[i][0]));
      store_tile<RW, R>(f, y, ldy, n0, t0);
    }
  };
};

template <QScheme S, bool ASYM>
void int_linear(const UArgs& u, bool rowscale, int64_t N, int64_t T, float* y, int64_t ldy) {
  const int64_t Kp = u.a->Kp;
  switch (u.a->QA) {
    case 32:
      run_all<IntTile<S, ASYM, 32, false>::template K>(N, T, Kp, u, y, ldy);
      break;
    case 64:
      run_all<IntTile<S, ASYM, 64, false>::template K>(N, T, Kp, u, y, ldy);
      break;
    default:
      if (rowscale)
        run_all<IntTile<S, ASYM, 128, true>::template K>(N, T, Kp, u, y, ldy);
      else
        run_all<IntTile<S, ASYM, 128, false>::template K>(N, T, Kp, u, y, ldy);
      break;
  }
}

// ---- NF4
// -----------------------------------------------------------------------------------------

MINFER_INLINE __m512 nf4_table() {
  alignas(64) float tv[16];
  for (int i = 0; i < 16; ++i) tv[i] = qm::nf4_value(i);
  return _mm512_load_ps(tv);
}

struct Nf4Tile {
  template <int RW, int R>
  struct K {
    static void run(int64_t n0, int64_t t0, const NArgs& w, const float* x, int64_t ldx, float* y,
                    int64_t ldy) {
      const __m512 table = nf4_table();
      const uint8_t* wr[RW];
      for (int i = 0; i < RW; ++i) wr[i] = w.codes + (n0 + i) * w.rb;
      const float* xr[R];
      for (int r = 0; r < R; ++r) xr[r] = x + (t0 + r) * ldx;
      __m512 f[RW][R];
      for (int i = 0; i < RW; ++i)
        for (int r = 0; r < R; ++r) f[i][r] = _mm512_setzero_ps();
      for (int64_t g = 0; g < w.groups; ++g) {
        __m512 tb[RW];
        for (int i = 0; i < RW; ++i)
          tb[i] = _mm512_mul_ps(table, _mm512_set1_ps(w.scale(n0 + i, g)));
        const int64_t k1 = g == w.groups - 1 ? w.Kp : (g + 1) * w.G;
        for (int64_t k = g * w.G; k < k1; k += 64) {
          const bool full = k + 64 <= w.K;
          for (int h = 0; h < 2; ++h) {
            // Bytes 16h..16h+15 of the chunk: weights k+16h.. (low nibbles), k+32+16h.. (high).
            const int64_t kl = k + 16 * h, kh = k + 32 + 16 * h;
            __m512 xl[R], xh[R];
            if (full) {
              for (int r = 0; r < R; ++r) {
                xl[r] = _mm512_loadu_ps(xr[r] + kl);
                xh[r] = _mm512_loadu_ps(xr[r] + kh);
              }
            } else {  // never read x past K
              const __mmask16 ml = tail_mask(w.K - kl), mh = tail_mask(w.K - kh);
              for (int r = 0; r < R; ++r) {
                xl[r] = _mm512_maskz_loadu_ps(ml, xr[r] + kl);
                xh[r] = _mm512_maskz_loadu_ps(mh, xr[r] + kh);
              }
            }
            for (int i = 0; i < RW; ++i) {
              const __m512i idx =
                  _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i*)(wr[i] + k / 2 + 16 * h)));
              const __m512 wl = _mm512_permutexvar_ps(idx, tb[i]);  // low 4 bits index
              const __m512 wh = _mm512_permutexvar_ps(_mm512_srli_epi32(idx, 4), tb[i]);
              for (int r = 0; r < R; ++r) {
                f[i][r] = _mm512_fmadd_ps(wl, xl[r], f[i][r]);
                f[i][r] = _mm512_fmadd_ps(wh, xh[r], f[i][r]);
              }
            }
          }
        }
      }
      store_tile<RW, R>(f, y, ldy, n0, t0);
    }
  };
};

// Rows n0..n0+nr of the NF4 matrix as f32 [nr, K] (for the prefill path).
void nf4_dequant_rows(const NArgs& w, int64_t n0, int64_t nr, float* dst) {
  const __m512 table = nf4_table();
#pragma omp parallel for if (nr * w.K >= (1 << 15))
  for (int64_t i = 0; i < nr; ++i) {
    const uint8_t* row = w.codes + (n0 + i) * w.rb;
    float* o = dst + i * w.K;
    for (int64_t g = 0; g < w.groups; ++g) {
      const __m512 tb = _mm512_mul_ps(table, _mm512_set1_ps(w.scale(n0 + i, g)));
      const int64_t k1 = std::min(w.K, (g + 1) * w.G);
      for (int64_t k = g * w.G; k < k1; k += 64)
        for (int h = 0; h < 2; ++h) {
          const __m512i idx =
              _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i*)(row + k / 2 + 16 * h)));
          const int64_t kl = k + 16 * h, kh = k + 32 + 16 * h;
          _mm512_mask_storeu_ps(o + kl, tail_mask(w.K - kl), _mm512_permutexvar_ps(idx, tb));
          _mm512_mask_storeu_ps(o + kh, tail_mask(w.K - kh),
                                _mm512_permutexvar_ps(_mm512_srli_epi32(idx, 4), tb));
        }
    }
  }
}

// ---- Activations
// ---------------------------------------------------------------------------------

// One block: absmax, then x * (127 / absmax) rounded half-even by cvtps_epi32. Blocks needing
// special handling (zero, tiny, inf / NaN) go to the scalar quantizer, which is the definition.
void quantize_block(const float* x, int64_t n, int64_t len, int8_t* q, float* d, int32_t* s) {
  __m512 vmax = _mm512_setzero_ps();
  __mmask16 bad = 0;
  for (int64_t i = 0; i < len; i += 16) {
    const __m512 v = _mm512_maskz_loadu_ps(tail_mask(n - i), x + i);
    bad |= _mm512_fpclass_ps_mask(v, 0x99);  // QNaN | SNaN | +inf | -inf
    vmax = _mm512_max_ps(vmax, _mm512_abs_ps(v));
  }
  const float amax = hmax512(vmax);
  if (bad || !(amax >= qm::kActTiny)) {
    qm::quantize_act_block(x, int(n), int(len), q, d, s);
    return;
  }
  const __m512 id = _mm512_set1_ps(127.f / amax);
  const __m512i lo = _mm512_set1_epi32(-127), hi = _mm512_set1_epi32(127);
  __m512i sum = _mm512_setzero_si512();
  for (int64_t i = 0; i < len; i += 16) {
    const __m512 v = _mm512_maskz_loadu_ps(tail_mask(n - i), x + i);
    __m512i c = _mm512_cvtps_epi32(_mm512_mul_ps(v, id));
    c = _mm512_min_epi32(_mm512_max_epi32(c, lo), hi);
    sum = _mm512_add_epi32(sum, c);
    _mm_storeu_si128((__m128i*)(q + i), _mm512_cvtepi32_epi8(c));
  }
  *d = amax / 127.f;
  *s = hsum512i(sum);
}

}  // namespace

void simd_quantize_activations(const float* x, int64_t T, int64_t ldx, int64_t K, int QA, int8_t* q,
                               float* d, int32_t* s) {
  const int64_t Kp = qm::padded_k(K), nb = qm::ceil_div(Kp, QA);
#pragma omp parallel for if (T * K >= (1 << 16))
  for (int64_t t = 0; t < T; ++t)
    for (int64_t b = 0; b < nb; ++b) {
      const int64_t k0 = b * QA, len = std::min<int64_t>(QA, Kp - k0);
      quantize_block(x + t * ldx + k0, std::clamp<int64_t>(K - k0, 0, len), len, q + t * Kp + k0,
                     d + t * nb + b, s + t * nb + b);
    }
}

void simd_lane_sums(ActQ& a, int64_t T, int zshift) {
  a.zshift = zshift;
  a.unit = std::max<int64_t>(a.QA, 64);
  a.units = qm::ceil_div(a.Kp, a.unit);
  a.lanes = 16;
  a.nls.resize(size_t(T * a.units * 16));
  if (a.QA == 32) a.dv.resize(size_t(T * a.units * 16));
  const __m512i ones = _mm512_set1_epi8(1);
#pragma omp parallel for if (T * a.Kp >= (1 << 16))
  for (int64_t t = 0; t < T; ++t)
    for (int64_t u = 0; u < a.units; ++u) {
      __m512i acc = _mm512_setzero_si512();
      for (int64_t k = u * a.unit; k < std::min(a.Kp, (u + 1) * a.unit); k += 64)
        acc = _mm512_dpbusd_epi32(acc, ones, _mm512_loadu_si512(a.q.data() + t * a.Kp + k));
      _mm512_storeu_si512(a.nls.data() + (t * a.units + u) * 16,
                          _mm512_slli_epi32(_mm512_sub_epi32(_mm512_setzero_si512(), acc), zshift));
      if (a.QA == 32) {
        const float* d = a.d.data() + t * a.nb + 2 * u;
        _mm512_storeu_ps(a.dv.data() + (t * a.units + u) * 16,
                         _mm512_mask_blend_ps(0xff00, _mm512_set1_ps(d[0]), _mm512_set1_ps(d[1])));
      }
    }
}

void simd_int_linear(QScheme scheme, bool asym, const UArgs& u, int64_t N, int64_t T, float* y,
                     int64_t ldy) {
  const bool rs = u.groups <= 1;  // one scale per row (or per tensor)
  switch (scheme) {
    case QScheme::Int8:
      int_linear<QScheme::Int8, false>(u, rs, N, T, y, ldy);
      break;
    case QScheme::Int4:
      if (asym)
        int_linear<QScheme::Int4, true>(u, rs, N, T, y, ldy);
      else
        int_linear<QScheme::Int4, false>(u, rs, N, T, y, ldy);
      break;
    case QScheme::Ternary:
      int_linear<QScheme::Ternary, false>(u, rs, N, T, y, ldy);
      break;
    case QScheme::Binary:
      int_linear<QScheme::Binary, false>(u, rs, N, T, y, ldy);
      break;
    case QScheme::NF4:
      break;
  }
}

// NF4 prefill (T >= kNf4GemmRows): rows of W dequantized a tile at a time (512 KB of f32, L2
// sized) and multiplied by sgemm: the lookups then cost once per tile instead of once per group
// of x rows (measured 1 thread, 512 x 576 x 1536: ~88 GFLOP/s this way, ~50 fused).
constexpr int64_t kNf4GemmRows = 16;

void simd_nf4_linear(const NArgs& w, const float* x, int64_t T, int64_t ldx, float* y, int64_t ldy,
                     int64_t N) {
  if (T < kNf4GemmRows) {
    run_all<Nf4Tile::K>(N, T, w.Kp, w, x, ldx, y, ldy);
    return;
  }
  thread_local std::vector<float> tile;
  const int64_t rows = std::min(N, std::max<int64_t>(16, (int64_t(1) << 17) / w.K));
  tile.resize(size_t(rows * w.K));
  for (int64_t n0 = 0; n0 < N; n0 += rows) {
    const int64_t nr = std::min(rows, N - n0);
    nf4_dequant_rows(w, n0, nr, tile.data());
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, int(T), int(nr), int(w.K), 1.f, x,
                int(ldx), tile.data(), int(w.K), 0.f, y + n0, int(ldy));
  }
}

}  // namespace minfer::qcpu

#endif  // MINFER_Q_AVX512
