// GGML block-format q8 kernels for AVX2 + FMA + F16C (x86-64-v3) machines without AVX-512 VNNI.
// Compiled to nothing elsewhere. Same arithmetic as the VNNI kernels of kernels/cpu/ggml.cpp
// (legend and error bound: kernels/cpu/ggml.h): the activations quantized per block (QAct), integer
// block dot products, a per-block f32 epilogue with FMA. AVX2 has no vpdpbusd, so a block of 32
// bytes is
//   vpmaddubsw (u8 x s8 -> 16 int16 pair sums) + vpmaddwd by ones (-> 8 int32)
// which is exact only while every int16 pair sum stays in range (vpmaddubsw saturates): with
// activation codes |q| <= 127 the unsigned codes of Q4_1 / Q5_1 (<= 31) and of the K-quants
// (<= 63) give |pair| <= 2 · 63 · 127 = 16002; the signed codes of Q4_0 / Q5_0 / Q8_0 (w = u -
// offset, -128 <= w <= 127) go through the sign trick (|w| as u8, q with w's sign), |pair| <= 2 ·
// 128 · 127 = 32512. So every integer block sum equals the scalar reference's (ggml.cpp,
// ggml_linear_q8_ref), and the results differ from it only in f32 combination order.
// K-quants: per chunk of 32 codes (two groups of 16) vpmaddubsw, then vpmaddwd by the two groups'
// int16 scales; the offset and min terms Σ_g sc[g] s_g and Σ_g m[g] s_g are one vpmaddwd each of
// the 16 group sums of x; the super-block's f32 epilogue is the reference's expression.
// Legend: nt tokens (rows of x, <= kGgmlGemmMinT), rows [n0, n1) of W, nb blocks per row.
#include "kernels/cpu/ggml_impl.h"

#if defined(MINFER_GGML_AVX2)

#include <immintrin.h>

#include <cstring>

#include "kernels/common/ggml_quants.h"
#include "kernels/cpu/ggml.h"

namespace minfer::ggml_cpu {

namespace {

#define MINFER_INLINE inline __attribute__((always_inline))

using ggml::BlockType;
constexpr int kQ = 32;  // weights per block of the 32-weight types and of their x blocks

template <BlockType TY>
constexpr int64_t kBytes = TY == BlockType::Q4_0   ? int64_t(sizeof(ggml::BlockQ4_0))
                           : TY == BlockType::Q4_1 ? int64_t(sizeof(ggml::BlockQ4_1))
                           : TY == BlockType::Q5_0 ? int64_t(sizeof(ggml::BlockQ5_0))
                           : TY == BlockType::Q5_1 ? int64_t(sizeof(ggml::BlockQ5_1))
                           : TY == BlockType::Q8_0 ? int64_t(sizeof(ggml::BlockQ8_0))
                           : TY == BlockType::Q2_K ? int64_t(sizeof(ggml::BlockQ2_K))
                           : TY == BlockType::Q3_K ? int64_t(sizeof(ggml::BlockQ3_K))
                           : TY == BlockType::Q4_K ? int64_t(sizeof(ggml::BlockQ4_K))
                           : TY == BlockType::Q5_K ? int64_t(sizeof(ggml::BlockQ5_K))
                                                   : int64_t(sizeof(ggml::BlockQ6_K));

MINFER_INLINE uint16_t rd16(const uint8_t* p) {
  uint16_t v;
  std::memcpy(&v, p, 2);
  return v;
}
MINFER_INLINE uint32_t rd32(const uint8_t* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
}
MINFER_INLINE __m256i load256(const void* p) {
  return _mm256_loadu_si256(static_cast<const __m256i*>(p));
}
MINFER_INLINE float hsum_ps(__m256 v) {
  __m128 x = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  x = _mm_add_ps(x, _mm_movehl_ps(x, x));
  x = _mm_add_ss(x, _mm_movehdup_ps(x));
  return _mm_cvtss_f32(x);
}
MINFER_INLINE int32_t hsum_epi32(__m256i v) {
  __m128i x = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  x = _mm_add_epi32(x, _mm_unpackhi_epi64(x, x));
  x = _mm_add_epi32(x, _mm_shuffle_epi32(x, 1));
  return _mm_cvtsi128_si32(x);
}

// Σ a_j b_j over each 4 bytes (u8 a, s8 b) into 8 int32 lanes; exact while every pair
// a_j b_j + a_{j+1} b_{j+1} fits int16 (see the top of the file).
MINFER_INLINE __m256i dot_u8s8(__m256i a, __m256i b) {
  return _mm256_madd_epi16(_mm256_maddubs_epi16(a, b), _mm256_set1_epi16(1));
}
// The same for s8 w (-128 .. 127) and s8 q (-127 .. 127): |w| as u8 (vpsignb leaves -128 as the
// byte 0x80 = 128), q carrying w's sign (vpsignb; 0 where w = 0); Σ |w| sign(w) q = Σ w q.
MINFER_INLINE __m256i dot_s8s8(__m256i w, __m256i q) {
  return dot_u8s8(_mm256_sign_epi8(w, w), _mm256_sign_epi8(q, w));
}

// Byte j = 0xff where bit j of v is set (Q5's fifth bits): byte j of the broadcast word picked by
// vpshufb (byte j / 8), masked by its bit 1 << (j % 8).
MINFER_INLINE __m256i bits_to_bytes(uint32_t v) {
  const __m256i idx = _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2,
                                       2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3);
  const __m256i bit = _mm256_set1_epi64x(int64_t(0x8040201008040201ull));
  const __m256i b = _mm256_and_si256(_mm256_shuffle_epi8(_mm256_set1_epi32(int(v)), idx), bit);
  return _mm256_cmpeq_epi8(b, bit);
}

// ---- The 32-weight types -------------------------------------------------------------------

template <BlockType TY>
constexpr bool kHasMin = TY == BlockType::Q4_1 || TY == BlockType::Q5_1;

// One block's 32 codes in weight order, and its scale dw and min mw: unsigned u for Q4_1 / Q5_1
// (weight = dw u + mw), signed w = u - offset for Q4_0 (8), Q5_0 (16), Q8_0 (the stored int8).
template <BlockType TY>
MINFER_INLINE __m256i block_codes(const uint8_t* p, float* dw, float* mw) {
  if constexpr (kHasMin<TY>) {  // d and m side by side: one conversion
    const __m128 dm = _mm_cvtph_ps(_mm_cvtsi32_si128(int(rd32(p))));
    *dw = _mm_cvtss_f32(dm);
    *mw = _mm_cvtss_f32(_mm_movehdup_ps(dm));
  } else {
    *dw = _cvtsh_ss(rd16(p));
  }
  if constexpr (TY == BlockType::Q8_0) {
    return load256(p + 2);
  } else {
    constexpr int64_t h = kHasMin<TY> ? 4 : 2;  // first byte after d (and m)
    constexpr bool five = TY == BlockType::Q5_0 || TY == BlockType::Q5_1;
    // Nibble pair byte j: weight j low, weight j + 16 high. The 16 bytes in both halves, the high
    // half shifted right by 4 (per dword: each byte's high nibble lands in its low 4 bits, the
    // bits shifted in from the next byte are masked off).
    const __m256i v = _mm256_broadcastsi128_si256(
        _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + h + (five ? 4 : 0))));
    __m256i u = _mm256_and_si256(_mm256_srlv_epi32(v, _mm256_setr_epi32(0, 0, 0, 0, 4, 4, 4, 4)),
                                 _mm256_set1_epi8(15));
    if constexpr (five)
      u = _mm256_or_si256(u, _mm256_and_si256(bits_to_bytes(rd32(p + h)), _mm256_set1_epi8(16)));
    if constexpr (TY == BlockType::Q4_0) u = _mm256_sub_epi8(u, _mm256_set1_epi8(8));
    if constexpr (TY == BlockType::Q5_0) u = _mm256_sub_epi8(u, _mm256_set1_epi8(16));
    return u;
  }
}

// y[t, n] = Σ_b dx[t, b] dw[n, b] Σ_j w_j q_j (+ mw[n, b] m[t, b] for Q4_1 / Q5_1).
template <BlockType TY>
MINFER_INLINE void q8_rows_impl(const uint8_t* wb, int64_t rb, const int8_t* aq, const float* ad,
                                const float* am, int64_t nt, int64_t K, int64_t n0, int64_t n1,
                                float* y, int64_t ldy) {
  const int64_t nb = K / kQ;
  for (int64_t n = n0; n < n1; ++n) {
    const uint8_t* row = wb + n * rb;
    __m256 acc[kGgmlGemmMinT];
    float corr[kGgmlGemmMinT];
    for (int64_t t = 0; t < nt; ++t) {
      acc[t] = _mm256_setzero_ps();
      corr[t] = 0.f;
    }
    for (int64_t b = 0; b < nb; ++b) {
      float dw, mw = 0.f;
      const __m256i w = block_codes<TY>(row + b * kBytes<TY>, &dw, &mw);
      for (int64_t t = 0; t < nt; ++t) {
        const __m256i q = load256(aq + t * K + b * kQ);
        const __m256i p = kHasMin<TY> ? dot_u8s8(w, q) : dot_s8s8(w, q);
        acc[t] =
            _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_set1_ps(dw * ad[t * nb + b]), acc[t]);
        if constexpr (kHasMin<TY>) corr[t] += mw * am[t * nb + b];
      }
    }
    for (int64_t t = 0; t < nt; ++t) y[t * ldy + n] = hsum_ps(acc[t]) + corr[t];
  }
}

// The same bytes 8 rows further on, into L1 (prefetch never faults, so past the last row is
// harmless). Decode streams the weights once from DRAM; without it a one-thread 576 -> 1536
// Q4_1 gemv over 240 matrices (132 MB) ran at ~7 GB/s, with it at ~12-13 GB/s.
MINFER_INLINE void prefetch_ahead(const uint8_t* p, int64_t rb) {
  _mm_prefetch(reinterpret_cast<const char*>(p + 8 * rb), _MM_HINT_T0);
}

// One token (decode): R rows at a time, each activation block loaded once for the R rows, whose
// accumulators are R independent chains (so the FMA latency is not the bound). Every row's sums
// are taken in the same order whatever R, so a row's result does not depend on its neighbours.
template <BlockType TY, int R>
MINFER_INLINE void q8_rows_1(const uint8_t* wb, int64_t rb, const int8_t* aq, const float* ad,
                             const float* am, int64_t K, int64_t n, float* y) {
  const int64_t nb = K / kQ;
  const uint8_t* row = wb + n * rb;
  __m256 acc[R];
  float corr[R];
  for (int r = 0; r < R; ++r) {
    acc[r] = _mm256_setzero_ps();
    corr[r] = 0.f;
  }
  if constexpr (kHasMin<TY>) {
    // Q4_1 / Q5_1: the R rows' (d, m) fp16 pairs in one vcvtph2ps, times (dx, m_x) in one
    // vmulps: lane 2r = d_r dx (broadcast by vpermps), lane 2r + 1 = m_r m_x, summed per lane.
    __m256 mins = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; ++b) {
      const __m256i q = load256(aq + b * kQ);
      const uint8_t* blk = row + b * kBytes<TY>;
      __m128i dm = _mm_cvtsi32_si128(int(rd32(blk)));
      if constexpr (R > 1) dm = _mm_insert_epi32(dm, int(rd32(blk + rb)), 1);
      if constexpr (R > 2) dm = _mm_insert_epi32(dm, int(rd32(blk + 2 * rb)), 2);
      if constexpr (R > 3) dm = _mm_insert_epi32(dm, int(rd32(blk + 3 * rb)), 3);
      const __m256 xs = _mm256_blend_ps(_mm256_set1_ps(ad[b]), _mm256_set1_ps(am[b]), 0xaa);
      const __m256 sc = _mm256_mul_ps(_mm256_cvtph_ps(dm), xs);
      mins = _mm256_add_ps(mins, sc);
      for (int r = 0; r < R; ++r) {
        prefetch_ahead(blk + r * rb, rb);
        float dw, mw;
        const __m256i w = block_codes<TY>(blk + r * rb, &dw, &mw);
        acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot_u8s8(w, q)),
                                 _mm256_permutevar8x32_ps(sc, _mm256_set1_epi32(2 * r)), acc[r]);
      }
    }
    alignas(32) float m8[8];
    _mm256_store_ps(m8, mins);
    for (int r = 0; r < R; ++r) corr[r] = m8[2 * r + 1];
  } else {
    for (int64_t b = 0; b < nb; ++b) {
      const __m256i q = load256(aq + b * kQ);
      const float dx = ad[b];
      for (int r = 0; r < R; ++r) {
        prefetch_ahead(row + r * rb + b * kBytes<TY>, rb);
        float dw, mw = 0.f;
        const __m256i w = block_codes<TY>(row + r * rb + b * kBytes<TY>, &dw, &mw);
        acc[r] =
            _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot_s8s8(w, q)), _mm256_set1_ps(dw * dx), acc[r]);
      }
    }
  }
  for (int r = 0; r < R; ++r) y[n + r] = hsum_ps(acc[r]) + corr[r];
}

template <BlockType TY>
void q8_rows(const uint8_t* wb, int64_t rb, const int8_t* aq, const float* ad, const int32_t*,
             const float* am, int64_t nt, int64_t K, int64_t n0, int64_t n1, float* y,
             int64_t ldy) {
  if (nt == 1) {
    int64_t n = n0;
    for (; n + 4 <= n1; n += 4) q8_rows_1<TY, 4>(wb, rb, aq, ad, am, K, n, y);
    for (; n < n1; ++n) q8_rows_1<TY, 1>(wb, rb, aq, ad, am, K, n, y);
  } else {
    q8_rows_impl<TY>(wb, rb, aq, ad, am, nt, K, n0, n1, y, ldy);
  }
}

// ---- The K-quants ------------------------------------------------------------------------------

// One super-block (256 weights) in one form for the five types, as the reference's KBlock: chunk c
// of u holds the unsigned codes of weights 32c .. 32c + 31 (groups 2c and 2c + 1 of 16), sc16 / m16
// the 16 group scales / mins as int16 (lane g = group g), so w_j = D sc[g] (u_j - off) - Dmin m[g].
struct KAvx2 {
  __m256i u[8], sc16, m16;
  float D, Dmin;
};

template <BlockType TY>
constexpr int kOff = TY == BlockType::Q6_K   ? 32
                     : TY == BlockType::Q3_K ? 4
                                             : 0;
template <BlockType TY>
constexpr bool kKMin = TY == BlockType::Q2_K || TY == BlockType::Q4_K || TY == BlockType::Q5_K;

// Layouts: ggml-common.h block_q2_K .. block_q6_K (the reference unpack_kblock in ggml.cpp).
template <BlockType TY>
MINFER_INLINE void unpack_k(const uint8_t* p, KAvx2& k) {
  const __m256i m4 = _mm256_set1_epi8(15);
  if constexpr (TY == BlockType::Q4_K || TY == BlockType::Q5_K) {
    k.D = _cvtsh_ss(rd16(p));
    k.Dmin = _cvtsh_ss(rd16(p + 2));
    // 8 scales and 8 mins of 6 bits (ggml::q4k_scale_min), four per 32-bit word.
    const uint32_t w0 = rd32(p + 4), w1 = rd32(p + 8), w2 = rd32(p + 12);
    const uint32_t sc_lo = w0 & 0x3f3f3f3fu, m_lo = w1 & 0x3f3f3f3fu;
    const uint32_t sc_hi = (w2 & 0x0f0f0f0fu) | ((w0 >> 6) & 0x03030303u) << 4;
    const uint32_t m_hi = ((w2 >> 4) & 0x0f0f0f0fu) | ((w1 >> 6) & 0x03030303u) << 4;
    const __m128i sm = _mm_setr_epi32(int(sc_lo), int(sc_hi), int(m_lo), int(m_hi));
    // A sub-block of 32 is two groups of 16 with its scale and min.
    k.sc16 = _mm256_cvtepu8_epi16(_mm_unpacklo_epi8(sm, sm));
    k.m16 = _mm256_cvtepu8_epi16(_mm_unpackhi_epi8(sm, sm));
    const uint8_t* qs = p + (TY == BlockType::Q5_K ? 48 : 16);
    for (int j = 0; j < 4; ++j) {  // bytes 32j ..: weights 64j + l (low), 64j + 32 + l (high)
      const __m256i v = load256(qs + 32 * j);
      k.u[2 * j] = _mm256_and_si256(v, m4);
      k.u[2 * j + 1] = _mm256_and_si256(_mm256_srli_epi16(v, 4), m4);
    }
    if constexpr (TY == BlockType::Q5_K) {  // qh[l] bit c: the fifth bit of weight 32c + l
      const __m256i h = load256(p + 16), b4 = _mm256_set1_epi8(16);
      for (int c = 0; c < 8; ++c) {
        const __m256i hb = c <= 4 ? _mm256_slli_epi16(h, 4 - c) : _mm256_srli_epi16(h, c - 4);
        k.u[c] = _mm256_or_si256(k.u[c], _mm256_and_si256(hb, b4));
      }
    }
  } else if constexpr (TY == BlockType::Q6_K) {  // ql[128], qh[64], scales[16] int8, d
    k.D = _cvtsh_ss(rd16(p + 208));
    k.Dmin = 0.f;
    k.sc16 = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 192)));
    k.m16 = _mm256_setzero_si256();
    const __m256i m30 = _mm256_set1_epi8(0x30);
    for (int n = 0; n < 2; ++n) {
      const __m256i L0 = load256(p + 64 * n), L1 = load256(p + 64 * n + 32),
                    H = load256(p + 128 + 32 * n);
      // Weights 128n + l, + 32, + 64, + 96: high bits (H >> 0, 2, 4, 6) & 3 moved to bits 4-5.
      k.u[4 * n] =
          _mm256_or_si256(_mm256_and_si256(L0, m4), _mm256_and_si256(_mm256_slli_epi16(H, 4), m30));
      k.u[4 * n + 1] =
          _mm256_or_si256(_mm256_and_si256(L1, m4), _mm256_and_si256(_mm256_slli_epi16(H, 2), m30));
      k.u[4 * n + 2] =
          _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(L0, 4), m4), _mm256_and_si256(H, m30));
      k.u[4 * n + 3] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(L1, 4), m4),
                                       _mm256_and_si256(_mm256_srli_epi16(H, 2), m30));
    }
  } else if constexpr (TY == BlockType::Q2_K) {  // scales[16], qs[64], d, dmin
    k.D = _cvtsh_ss(rd16(p + 80));
    k.Dmin = _cvtsh_ss(rd16(p + 82));
    const __m128i sc = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
    const __m128i n4 = _mm_set1_epi8(15);
    k.sc16 = _mm256_cvtepu8_epi16(_mm_and_si128(sc, n4));
    k.m16 = _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16(sc, 4), n4));
    const __m256i m3 = _mm256_set1_epi8(3);
    for (int n = 0; n < 2; ++n) {  // weights 128n + 32s + l: bits 2s, 2s + 1 of qs[32n + l]
      const __m256i v = load256(p + 16 + 32 * n);
      for (int s = 0; s < 4; ++s)
        k.u[4 * n + s] = _mm256_and_si256(_mm256_srli_epi16(v, 2 * s), m3);
    }
  } else {  // Q3_K: hmask[32], qs[64], scales[12], d
    k.D = _cvtsh_ss(rd16(p + 108));
    k.Dmin = 0.f;
    k.m16 = _mm256_setzero_si256();
    // 16 scales of 6 bits: low 4 from bytes 0-7 (nibbles), high 2 from bytes 8-11; minus 32.
    const uint32_t a0 = rd32(p + 96), a1 = rd32(p + 100), a2 = rd32(p + 104);
    const uint32_t f = 0x0f0f0f0fu, t = 0x03030303u;
    const __m128i w = _mm_setr_epi32(
        int((a0 & f) | (a2 & t) << 4), int((a1 & f) | ((a2 >> 2) & t) << 4),
        int(((a0 >> 4) & f) | ((a2 >> 4) & t) << 4), int(((a1 >> 4) & f) | ((a2 >> 6) & t) << 4));
    k.sc16 = _mm256_sub_epi16(_mm256_cvtepu8_epi16(w), _mm256_set1_epi16(32));
    const __m256i hm = load256(p), m3 = _mm256_set1_epi8(3), b2 = _mm256_set1_epi8(4);
    for (int n = 0; n < 2; ++n) {  // weights 128n + 32s + l: 2 bits of qs, bit 4n + s of hmask[l]
      const __m256i v = load256(p + 32 + 32 * n);
      for (int s = 0; s < 4; ++s) {
        const __m256i bit = _mm256_set1_epi8(char(1 << (4 * n + s)));
        const __m256i h = _mm256_cmpeq_epi8(_mm256_and_si256(hm, bit), bit);
        k.u[4 * n + s] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(v, 2 * s), m3),
                                         _mm256_and_si256(h, b2));
      }
    }
  }
}

// y[t, n] = Σ_b dx (D (Σ_g sc[g] Σ_{j in g} u_j q_j - off Σ_g sc[g] s_g) - Dmin Σ_g m[g] s_g):
// the integers of the reference, then its f32 expression per super-block.
template <BlockType TY>
MINFER_INLINE void k_rows_impl(const uint8_t* wb, int64_t rb, const int8_t* aq, const float* ad,
                               const int32_t* as, int64_t nt, int64_t K, int64_t n0, int64_t n1,
                               float* y, int64_t ldy) {
  constexpr int64_t QK = ggml::QK_K;
  const int64_t nb = K / QK;
  // Chunk c's int16 scale lanes: group 2c in the low 128 bits, 2c + 1 in the high. Groups 0-7
  // (8-15) copied to both halves once per super-block, then one vpshufb per chunk picks the
  // words 2c and 2c + 1 (mod 8): pick[j] holds bytes 4j, 4j + 1 (low half), 4j + 2, 4j + 3 (high).
  const __m256i pick0 = _mm256_setr_epi8(0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 2, 3, 2, 3,
                                         2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3);
  const __m256i pick[4] = {pick0, _mm256_add_epi8(pick0, _mm256_set1_epi8(4)),
                           _mm256_add_epi8(pick0, _mm256_set1_epi8(8)),
                           _mm256_add_epi8(pick0, _mm256_set1_epi8(12))};
  for (int64_t n = n0; n < n1; ++n) {
    const uint8_t* row = wb + n * rb;
    float acc[kGgmlGemmMinT] = {};
    for (int64_t b = 0; b < nb; ++b) {
      KAvx2 k;
      unpack_k<TY>(row + b * kBytes<TY>, k);
      __m256i s[8];
      const __m256i lo = _mm256_permute2x128_si256(k.sc16, k.sc16, 0x00),
                    hi = _mm256_permute2x128_si256(k.sc16, k.sc16, 0x11);
      for (int c = 0; c < 8; ++c) s[c] = _mm256_shuffle_epi8(c < 4 ? lo : hi, pick[c % 4]);
      for (int64_t t = 0; t < nt; ++t) {
        const int8_t* q = aq + t * K + b * QK;
        __m256i dot = _mm256_setzero_si256();
        for (int c = 0; c < 8; ++c)
          dot = _mm256_add_epi32(
              dot, _mm256_madd_epi16(_mm256_maddubs_epi16(k.u[c], load256(q + 32 * c)), s[c]));
        // The 16 group sums of x (each |s_g| <= 16 · 127) as int16, in group order.
        const int32_t* g = as + (t * nb + b) * 16;
        const __m256i B =
            _mm256_permute4x64_epi64(_mm256_packs_epi32(load256(g), load256(g + 8)), 0xD8);
        int32_t idot = hsum_epi32(dot), mins = 0;
        if constexpr (kOff<TY> != 0) idot -= kOff<TY> * hsum_epi32(_mm256_madd_epi16(B, k.sc16));
        if constexpr (kKMin<TY>) mins = hsum_epi32(_mm256_madd_epi16(B, k.m16));
        acc[t] += ad[t * nb + b] * (k.D * float(idot) - k.Dmin * float(mins));
      }
    }
    for (int64_t t = 0; t < nt; ++t) y[t * ldy + n] = acc[t];
  }
}

template <BlockType TY>
void k_rows(const uint8_t* wb, int64_t rb, const int8_t* aq, const float* ad, const int32_t* as,
            const float*, int64_t nt, int64_t K, int64_t n0, int64_t n1, float* y, int64_t ldy) {
  if (nt == 1)
    k_rows_impl<TY>(wb, rb, aq, ad, as, 1, K, n0, n1, y, ldy);
  else
    k_rows_impl<TY>(wb, rb, aq, ad, as, nt, K, n0, n1, y, ldy);
}

}  // namespace

RowsFn rows_avx2(uint32_t type) {
  switch (BlockType(type)) {
    case BlockType::Q4_0:
      return q8_rows<BlockType::Q4_0>;
    case BlockType::Q4_1:
      return q8_rows<BlockType::Q4_1>;
    case BlockType::Q5_0:
      return q8_rows<BlockType::Q5_0>;
    case BlockType::Q5_1:
      return q8_rows<BlockType::Q5_1>;
    case BlockType::Q8_0:
      return q8_rows<BlockType::Q8_0>;
    case BlockType::Q2_K:
      return k_rows<BlockType::Q2_K>;
    case BlockType::Q3_K:
      return k_rows<BlockType::Q3_K>;
    case BlockType::Q4_K:
      return k_rows<BlockType::Q4_K>;
    case BlockType::Q5_K:
      return k_rows<BlockType::Q5_K>;
    case BlockType::Q6_K:
      return k_rows<BlockType::Q6_K>;
  }
  return nullptr;
}

}  // namespace minfer::ggml_cpu

#endif
