// Quantized linear kernels for AVX2 + FMA (x86-64-v3) machines without AVX-512 VNNI. Compiled
// to nothing elsewhere. Same arithmetic as quant_avx512.cpp with 256-bit vectors: integer
// formats use _mm256_maddubs_epi16 (u8 x s8 -> s16 pairs, no saturation for codes <= 15) then
// _mm256_madd_epi16; int8, whose codes reach 255, multiplies |q| by sign(q) * x instead (at most
// 2 * 128 * 127 per pair) and needs no zero point. NF4 does its 16-entry lookup with two 8-entry
// permutes and a blend. One weight row per kernel call.
// Legend: T rows of x, K = in features, N = out features, Kp = K padded to 64, QA = activation
// block, R = x rows per call.
#include "kernels/cpu/quant_impl.h"

#if defined(MINFER_Q_AVX2)

#include <immintrin.h>

#include <algorithm>
#include <cstring>

namespace minfer::qcpu {

const char* const kSimdIsa = "avx2";

namespace {

inline __m256i ones16() {
  return _mm256_set1_epi16(1);
}

// 32 codes (weights 32h..32h+31 of a 64-weight chunk) as bytes. Int8 returns the signed weight
// q = u - 128 instead (maddubs needs |u| small, so int8 uses the abs/sign trick, zero point 0).
template <QScheme S>
inline __m256i unpack32(const uint8_t* p, int h) {
  if constexpr (S == QScheme::Int8) {
    return _mm256_xor_si256(_mm256_loadu_si256((const __m256i*)(p + 32 * h)),
                            _mm256_set1_epi8(char(0x80)));
  } else if constexpr (S == QScheme::Int4) {
    const __m256i b = _mm256_loadu_si256((const __m256i*)p);
    return _mm256_and_si256(h ? _mm256_srli_epi16(b, 4) : b, _mm256_set1_epi8(0x0f));
  } else if constexpr (S == QScheme::Ternary) {
    const __m256i b = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i*)p));
    const __m256i sh = h ? _mm256_set_epi64x(6, 6, 4, 4) : _mm256_set_epi64x(2, 2, 0, 0);
    return _mm256_and_si256(_mm256_srlv_epi64(b, sh), _mm256_set1_epi8(3));
  } else {  // Binary: byte j <- bit j of the 32-bit word, u = 2 where set
    uint32_t m;
    std::memcpy(&m, p + 4 * h, 4);
    const __m256i v =
        _mm256_shuffle_epi8(_mm256_set1_epi32(int(m)),
                            _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2,
                                             2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3));
    const __m256i bit = _mm256_set1_epi64x(int64_t(0x8040201008040201ull));
    return _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(v, bit), bit), _mm256_set1_epi8(2));
  }
}

// int32 partial sums (8 lanes) of 32 code x activation products.
template <QScheme S>
inline __m256i dot32(__m256i w, __m256i xq) {
  __m256i p;
  if constexpr (S == QScheme::Int8)
    p = _mm256_maddubs_epi16(_mm256_abs_epi8(w), _mm256_sign_epi8(xq, w));
  else
    p = _mm256_maddubs_epi16(w, xq);  // u <= 15: no int16 saturation
  return _mm256_madd_epi16(p, ones16());
}

// One weight row n against x rows t0..t0+R.
template <QScheme S, int R>
void rows_int(const UArgs& u, int64_t n, int64_t t0, float* y, int64_t ldy) {
  constexpr int bits = code_bits(S);
  const ActQ& a = *u.a;
  const uint8_t* wr = u.codes + n * u.rb;
  const float* sr = u.scales + n * u.groups;
  const uint8_t* zr = u.zeros ? u.zeros + n * u.groups : nullptr;
  __m256 f[R];
  for (int r = 0; r < R; ++r) f[r] = _mm256_setzero_ps();
  for (int64_t b = 0; b < a.nb; ++b) {
    const int64_t g = u.gidx[b];
    const float sw = sr[g];
    // -z * lane sums (unit == block); int8 dots signed weights directly (z = 0).
    const int z = S == QScheme::Int8 ? 0 : zr ? zr[g] : zero_code(S);
    __m256i acc[R];
    for (int r = 0; r < R; ++r)
      acc[r] = _mm256_mullo_epi32(
          _mm256_loadu_si256((const __m256i*)(a.nls.data() + ((t0 + r) * a.units + b) * 8)),
          _mm256_set1_epi32(z));
    const int64_t k1 = std::min(a.Kp, (b + 1) * a.QA);
    for (int64_t k = b * a.QA; k < k1; k += 32) {
      const __m256i w = unpack32<S>(wr + (k & ~int64_t(63)) * bits / 8, int(k & 32) >> 5);
      for (int r = 0; r < R; ++r)
        acc[r] = _mm256_add_epi32(
            acc[r],
            dot32<S>(w, _mm256_loadu_si256((const __m256i*)(a.q.data() + (t0 + r) * a.Kp + k))));
    }
    for (int r = 0; r < R; ++r)
      f[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(acc[r]),
                             _mm256_set1_ps(sw * a.d[size_t((t0 + r) * a.nb + b)]), f[r]);
  }
  for (int r = 0; r < R; ++r) {
    __m128 v = _mm_add_ps(_mm256_castps256_ps128(f[r]), _mm256_extractf128_ps(f[r], 1));
    v = _mm_add_ps(v, _mm_movehl_ps(v, v));
    v = _mm_add_ss(v, _mm_movehdup_ps(v));
    y[(t0 + r) * ldy + n] = _mm_cvtss_f32(v);
  }
}

}  // namespace

// Negated lane sums per activation block, 8 lanes (lane i: bytes 4i..4i+3 of each 32 codes).
void simd_lane_sums(ActQ& a, int64_t T, int zshift) {
  a.zshift = 0;  // the AVX2 kernel multiplies by z itself
  a.unit = a.QA;
  a.units = a.nb;
  a.lanes = 8;
  a.nls.resize(size_t(T * a.units * 8));
  for (int64_t t = 0; t < T; ++t)
    for (int64_t u = 0; u < a.units; ++u) {
      __m256i acc = _mm256_setzero_si256();
      for (int64_t k = u * a.unit; k < std::min(a.Kp, (u + 1) * a.unit); k += 32)
        acc = _mm256_add_epi32(
            acc,
            _mm256_madd_epi16(_mm256_maddubs_epi16(
                                  _mm256_set1_epi8(1),
                                  _mm256_loadu_si256((const __m256i*)(a.q.data() + t * a.Kp + k))),
                              ones16()));
      _mm256_storeu_si256((__m256i*)(a.nls.data() + (t * a.units + u) * 8),
                          _mm256_sub_epi32(_mm256_setzero_si256(), acc));
    }
}

namespace {

inline float hsum256(__m256 f) {
  __m128 v = _mm_add_ps(_mm256_castps256_ps128(f), _mm256_extractf128_ps(f, 1));
  v = _mm_add_ps(v, _mm_movehl_ps(v, v));
  v = _mm_add_ss(v, _mm_movehdup_ps(v));
  return _mm_cvtss_f32(v);
}

inline __m256 load8_tail(const float* p, int64_t valid) {
  if (valid >= 8) return _mm256_loadu_ps(p);
  if (valid <= 0) return _mm256_setzero_ps();
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  return _mm256_maskload_ps(p, _mm256_cmpgt_epi32(_mm256_set1_epi32(int(valid)), lane));
}

// NF4 with AVX2: two 8-entry permutes and a blend on index bit 3 make the 16-entry lookup.
template <int R>
void rows_nf4(const NArgs& w, const float* x, int64_t ldx, int64_t n, int64_t t0, float* y,
              int64_t ldy) {
  float tv[16];
  for (int i = 0; i < 16; ++i) tv[i] = qm::nf4_value(i);
  const __m256 tlo0 = _mm256_loadu_ps(tv), thi0 = _mm256_loadu_ps(tv + 8);
  const uint8_t* wr = w.codes + n * w.rb;
  __m256 f[R];
  for (int r = 0; r < R; ++r) f[r] = _mm256_setzero_ps();
  for (int64_t g = 0; g < w.groups; ++g) {
    const __m256 s = _mm256_set1_ps(w.scale(n, g));
    const __m256 tlo = _mm256_mul_ps(tlo0, s), thi = _mm256_mul_ps(thi0, s);
    const int64_t k1 = g == w.groups - 1 ? w.Kp : (g + 1) * w.G;
    for (int64_t k = g * w.G; k < k1; k += 64) {
      const uint8_t* p = wr + k / 2;
      for (int e = 0; e < 4; ++e) {
        const __m256i idx = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i*)(p + 8 * e)));
        const __m256i idh = _mm256_srli_epi32(idx, 4);
        const __m256 wl =
            _mm256_blendv_ps(_mm256_permutevar8x32_ps(tlo, idx), _mm256_permutevar8x32_ps(thi, idx),
                             _mm256_castsi256_ps(_mm256_slli_epi32(idx, 28)));
        const __m256 wh =
            _mm256_blendv_ps(_mm256_permutevar8x32_ps(tlo, idh), _mm256_permutevar8x32_ps(thi, idh),
                             _mm256_castsi256_ps(_mm256_slli_epi32(idh, 28)));
        const int64_t kl = k + 8 * e, kh = k + 32 + 8 * e;
        for (int r = 0; r < R; ++r) {
          const float* xr = x + (t0 + r) * ldx;
          f[r] = _mm256_fmadd_ps(wl, load8_tail(xr + kl, w.K - kl), f[r]);
          f[r] = _mm256_fmadd_ps(wh, load8_tail(xr + kh, w.K - kh), f[r]);
        }
      }
    }
  }
  for (int r = 0; r < R; ++r) y[(t0 + r) * ldy + n] = hsum256(f[r]);
}

template <QScheme S>
struct IntRows {
  template <int RW, int R>
  struct K {
    static void run(int64_t n0, int64_t t0, const UArgs& u, float* y, int64_t ldy) {
      for (int i = 0; i < RW; ++i) rows_int<S, R>(u, n0 + i, t0, y, ldy);
    }
  };
};

struct Nf4Rows {
  template <int RW, int R>
  struct K {
    static void run(int64_t n0, int64_t t0, const NArgs& w, const float* x, int64_t ldx, float* y,
                    int64_t ldy) {
      for (int i = 0; i < RW; ++i) rows_nf4<R>(w, x, ldx, n0 + i, t0, y, ldy);
    }
  };
};

}  // namespace

void simd_quantize_activations(const float* x, int64_t T, int64_t ldx, int64_t K, int QA, int8_t* q,
                               float* d, int32_t* s) {
  const int64_t Kp = qm::padded_k(K), nb = qm::ceil_div(Kp, QA);
#pragma omp parallel for if (T * K >= (1 << 16))
  for (int64_t t = 0; t < T; ++t)
    for (int64_t b = 0; b < nb; ++b) {
      const int64_t k0 = b * QA, len = std::min<int64_t>(QA, Kp - k0);
      qm::quantize_act_block(x + t * ldx + k0, int(std::clamp<int64_t>(K - k0, 0, len)), int(len),
                             q + t * Kp + k0, d + t * nb + b, s + t * nb + b);
    }
}

void simd_int_linear(QScheme scheme, bool asym, const UArgs& u, int64_t N, int64_t T, float* y,
                     int64_t ldy) {
  const int64_t Kp = u.a->Kp;
  switch (scheme) {
    case QScheme::Int8:
      run_all<IntRows<QScheme::Int8>::K>(N, T, Kp, u, y, ldy);
      break;
    case QScheme::Int4:
      run_all<IntRows<QScheme::Int4>::K>(N, T, Kp, u, y, ldy);
      break;
    case QScheme::Ternary:
      run_all<IntRows<QScheme::Ternary>::K>(N, T, Kp, u, y, ldy);
      break;
    case QScheme::Binary:
      run_all<IntRows<QScheme::Binary>::K>(N, T, Kp, u, y, ldy);
      break;
    case QScheme::NF4:
      break;
  }
}

void simd_nf4_linear(const NArgs& w, const float* x, int64_t T, int64_t ldx, float* y, int64_t ldy,
                     int64_t N) {
  run_all<Nf4Rows::K>(N, T, w.Kp, w, x, ldx, y, ldy);
}

}  // namespace minfer::qcpu

#endif  // MINFER_Q_AVX2
