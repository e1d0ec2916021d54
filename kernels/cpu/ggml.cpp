// GGML block-format linears (CPU): dispatch, activation quantization, the scalar q8 reference,
// the AVX-512 VNNI q8 kernel (the AVX2 one: ggml_avx2.cpp) and the dequantize-a-tile + sgemm path.
// Legend and error bound: kernels/cpu/ggml.h.
#include "kernels/cpu/ggml.h"

#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "engine/error.h"
#include "engine/gguf.h"
#include "engine/half.h"
#include "engine/thread_pool.h"
#include "kernels/common/ggml_quants.h"
#include "kernels/cpu/act.h"
#include "kernels/cpu/env_switch.h"
#include "kernels/cpu/ggml_impl.h"
#include "kernels/cpu/prefill_gemm.h"

#if defined(MINFER_GGML_VNNI)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#include <immintrin.h>
#pragma GCC diagnostic pop
#endif

namespace minfer {

namespace {

using ggml::fp16_to_f32;
using ggml_cpu::RowsFn;
constexpr int kQ = 32;  // weights per block of the q8-path types and of the activation blocks

// x quantized per block of qb values: q [T, K] int8, d [T, K / qb] scales, s [T, K / sg] = Σ q
// over each group of sg values (sg = 32 for the 32-weight types, 16 for the K-quants, whose
// sub-block scales apply to groups of 16 or 32), m [T, K / qb] (qb = 32 only).
// qb = 32: as llama.cpp's CPU backend does it for the dot products of these weight types
// (ggml-cpu quantize_row_q8_0 / quantize_row_q8_1, x86 path), so that a GGUF gives the same
// logits in both engines: amax = max |x_j|, d = amax / 127 stored as fp16, codes
// q_j = round-half-even(x_j * (127 / amax)), and for Q4_1 / Q5_1 (ggml's Q8_1 partner) the block
// sum term m = fp16(d * Σ q_j) that multiplies the weight block's min.
// qb = 256: q8k_block (llama.cpp's quantize_row_q8_K_ref).
struct QAct {
  std::vector<int8_t> q;
  std::vector<float> d;
  std::vector<int32_t> s;
  std::vector<float> m;
};

[[maybe_unused]] QAct& act_scratch() {  // used by the SIMD kernels only
  thread_local QAct a;
  return a;
}

// f32 -> fp16 -> f32, round to nearest even (ggml's GGML_FP32_TO_FP16). A value past fp16's
// range (|v| >= 65520, activations beyond 8e6) keeps its f32 value instead of becoming inf.
float round_fp16(float v) {
  const float r = f16_to_f32(f32_to_f16(v));
  return std::isinf(r) ? v : r;
}

// One block of 256 finite values x to Q8_K codes q[256]; returns the scale d (x ~= d q). As
// llama.cpp's quantize_row_q8_K_ref (ggml-quants.c; the x86 CPU backend calls it for every
// K-quant activation row): max = the signed value of the first element of largest |x|,
// iscale = -127 / max (f32), q = min(127, round-half-even(iscale · x)) (ggml's nearest_int),
// d = 1 / iscale (f32: not max / 127, which can differ by an ulp). So d < 0 when max > 0 and
// the codes carry the opposite sign of x; d q is unchanged. All zero (or max|x| < 7.5e-37):
// d = 0, q = 0.
float q8k_block(const float* x, int8_t* q) {
  float amax = 0.f, max = 0.f;
  for (int64_t j = 0; j < ggml::QK_K; ++j) {
    const float ax = std::fabs(x[j]);
    if (ax > amax) {
      amax = ax;
      max = x[j];
    }
  }
  if (amax == 0.f) {
    std::fill(q, q + ggml::QK_K, int8_t(0));
    return 0.f;
  }
  const float iscale = -127.f / max;
  // max|x| < 127 / FLT_MAX (7.5e-37): iscale is inf and llama.cpp's codes are undefined; such a
  // block is zero to f32 precision of everything it is added to.
  if (!std::isfinite(iscale)) {
    std::fill(q, q + ggml::QK_K, int8_t(0));
    return 0.f;
  }
  // nearbyint: round-half-even in the default rounding mode, as nearest_int's 1.5 · 2^23 trick.
  for (int64_t j = 0; j < ggml::QK_K; ++j)
    q[j] = int8_t(std::min(127.f, std::nearbyint(iscale * x[j])));
  return 1.f / iscale;
}

void quantize_act(const float* x, int64_t T, int64_t ldx, int64_t K, QAct& a, int64_t qb = kQ,
                  int64_t sg = kQ) {
  const int64_t nb = K / qb, ng = K / sg;
  a.q.resize(size_t(T * K));
  a.d.resize(size_t(T * nb));
  a.s.resize(size_t(T * ng));
  a.m.resize(size_t(qb == kQ ? T * nb : 0));
  for (int64_t t = 0; t < T; ++t)
    for (int64_t b = 0; b < nb; ++b) {
      const float* xb = x + t * ldx + b * qb;
      float amax = 0.f;
      bool finite = true;
      for (int64_t j = 0; j < qb; ++j) {
        amax = std::max(amax, std::fabs(xb[j]));
        finite = finite && std::isfinite(xb[j]);
      }
      // A NaN or inf gets the block the scale NaN: every output of the row is NaN, as in f32.
      const float nan = std::numeric_limits<float>::quiet_NaN();
      int8_t* q = a.q.data() + t * K + b * qb;
      const size_t i = size_t(t * nb + b);
      if (qb == kQ) {
        const float d = amax / 127.f, id = amax != 0.f ? 127.f / amax : 0.f;
        int32_t s = 0;
        for (int64_t j = 0; j < qb; ++j) {
          // nearbyint: the current rounding mode, round-half-even by default (as _mm256_round_ps
          // with _MM_ROUND_NEAREST in llama.cpp; std::lround would round halves away from zero).
          q[j] = int8_t(finite ? std::nearbyint(xb[j] * id) : 0.f);
          s += q[j];
        }
        a.d[i] = finite ? round_fp16(d) : nan;
        a.m[i] = finite ? round_fp16(d * float(s)) : nan;
      } else {
        if (finite) {
          a.d[i] = q8k_block(xb, q);
        } else {
          std::fill(q, q + qb, int8_t(0));
          a.d[i] = nan;
        }
      }
    }
  for (int64_t t = 0; t < T; ++t)
    for (int64_t g = 0; g < ng; ++g) {
      const int8_t* q = a.q.data() + t * K + g * sg;
      int32_t s = 0;
      for (int64_t j = 0; j < sg; ++j) s += q[j];
      a.s[size_t(t * ng + g)] = s;
    }
}

bool is_k_quant(uint32_t type) {
  return ggml_block_size(type) == uint32_t(ggml::QK_K);
}

[[maybe_unused]] bool repack_type(uint32_t type) {
  return type == uint32_t(GgmlType::Q4_0) || type == uint32_t(GgmlType::Q4_1) ||
         type == uint32_t(GgmlType::Q8_0);
}
// Whether the SIMD q8 kernels read w's layout: the row layout, or (AVX-512 VNNI) interleave 4 for
// the repacked types. Any other layout runs the (layout-aware) scalar reference.
[[maybe_unused]] bool simd_layout(const GgmlBlocks& w) {
#if defined(MINFER_GGML_VNNI)
  return w.interleave == 1 || (w.interleave == 4 && repack_type(w.type));
#else
  return w.interleave == 1;
#endif
}

// One weight block of a q8-path type as unsigned codes u[32] (weight = dw (u - off) + mw).
struct UBlock {
  uint8_t u[kQ];
  float dw, mw;
};
constexpr int offset_of(uint32_t type) {
  return type == uint32_t(GgmlType::Q4_0)   ? 8
         : type == uint32_t(GgmlType::Q5_0) ? 16
         : type == uint32_t(GgmlType::Q8_0) ? 128
                                            : 0;
}
int64_t block_bytes(uint32_t type) {
  return int64_t(ggml_type_size(type));
}

uint16_t rd16(const uint8_t* p) {
  uint16_t v;
  std::memcpy(&v, p, 2);
  return v;
}
uint32_t rd32(const uint8_t* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
}

void unpack_block(uint32_t type, const uint8_t* p, UBlock& o) {
  o.dw = fp16_to_f32(rd16(p));
  o.mw = 0.f;
  switch (GgmlType(type)) {
    case GgmlType::Q4_1:
      o.mw = fp16_to_f32(rd16(p + 2));
      p += 2;
      [[fallthrough]];
    case GgmlType::Q4_0:
      for (int j = 0; j < 16; ++j) {
        o.u[j] = p[2 + j] & 15;
        o.u[j + 16] = p[2 + j] >> 4;
      }
      return;
    case GgmlType::Q5_1:
      o.mw = fp16_to_f32(rd16(p + 2));
      p += 2;
      [[fallthrough]];
    case GgmlType::Q5_0: {
      const uint32_t qh = rd32(p + 2);
      for (int j = 0; j < 16; ++j) {
        o.u[j] = uint8_t((p[6 + j] & 15) | ((qh >> j) & 1) << 4);
        o.u[j + 16] = uint8_t((p[6 + j] >> 4) | ((qh >> (j + 16)) & 1) << 4);
      }
      return;
    }
    case GgmlType::Q8_0:
      for (int j = 0; j < kQ; ++j) o.u[j] = uint8_t(int(int8_t(p[2 + j])) + 128);
      return;
    default:
      MINFER_FAIL("ggml q8 path: type {} has no integer kernel", ggml_type_name(type));
  }
}

// One K-quant super-block (256 weights) in one form for all five types: unsigned codes u[256] in
// weight order, and per group g of 16 weights an integer scale sc[g] and min m[g], so that
//   w_j = D sc[g] (u_j - off) - Dmin m[g]      (j in group g)
// Q4_K / Q5_K: u = 4 / 5-bit code, off 0, sc / m the 6-bit scale / min of its 32-weight
// sub-block; Q2_K: u 2-bit, off 0, sc / m the 4-bit nibbles; Q3_K: u = q + 4 h (3 bits), off 4,
// sc the 6-bit scale - 32, m 0; Q6_K: u 6-bit, off 32, sc the int8 scale, m 0 (ggml-common.h,
// the dequantize_row_q*_K functions of ggml-quants.c).
struct KBlock {
  uint8_t u[ggml::QK_K];
  int32_t sc[16], m[16];
  float D, Dmin;
  int off;
};

void unpack_kblock(uint32_t type, const uint8_t* p, KBlock& o) {
  o.Dmin = 0.f;
  o.off = 0;
  std::fill(o.m, o.m + 16, 0);
  switch (GgmlType(type)) {
    case GgmlType::Q2_K: {  // scales[16], qs[64], d, dmin
      o.D = fp16_to_f32(rd16(p + 80));
      o.Dmin = fp16_to_f32(rd16(p + 82));
      for (int g = 0; g < 16; ++g) {
        o.sc[g] = p[g] & 15;
        o.m[g] = p[g] >> 4;
      }
      for (int n = 0; n < 2; ++n)
        for (int j = 0; j < 4; ++j)
          for (int l = 0; l < 32; ++l)
            o.u[128 * n + 32 * j + l] = (p[16 + 32 * n + l] >> 2 * j) & 3;
      return;
    }
    case GgmlType::Q3_K: {  // hmask[32], qs[64], scales[12], d
      o.D = fp16_to_f32(rd16(p + 108));
      o.off = 4;
      const uint8_t* sc = p + 96;
      for (int i = 0; i < 16; ++i) {
        const int lo = i < 8 ? (sc[i] & 15) : (sc[i - 8] >> 4);
        const int hi = (sc[8 + i % 4] >> 2 * (i / 4)) & 3;
        o.sc[i] = (lo | hi << 4) - 32;
      }
      for (int n = 0; n < 2; ++n)
        for (int j = 0; j < 4; ++j)
          for (int l = 0; l < 32; ++l)
            o.u[128 * n + 32 * j + l] =
                uint8_t(((p[32 + 32 * n + l] >> 2 * j) & 3) | ((p[l] >> (4 * n + j)) & 1) << 2);
      return;
    }
    case GgmlType::Q4_K:
    case GgmlType::Q5_K: {  // d, dmin, scales[12], (qh[32]), qs[128]
      const bool five = GgmlType(type) == GgmlType::Q5_K;
      o.D = fp16_to_f32(rd16(p));
      o.Dmin = fp16_to_f32(rd16(p + 2));
      for (int g = 0; g < 16; ++g) {
        uint8_t sc, m;
        ggml::q4k_scale_min(g / 2, p + 4, &sc, &m);
        o.sc[g] = sc;
        o.m[g] = m;
      }
      const uint8_t* qh = p + 16;
      const uint8_t* qs = p + (five ? 48 : 16);
      for (int c = 0; c < 4; ++c)
        for (int l = 0; l < 32; ++l) {
          o.u[64 * c + l] = qs[32 * c + l] & 15;
          o.u[64 * c + 32 + l] = qs[32 * c + l] >> 4;
          if (five) {
            o.u[64 * c + l] |= ((qh[l] >> 2 * c) & 1) << 4;
            o.u[64 * c + 32 + l] |= ((qh[l] >> (2 * c + 1)) & 1) << 4;
          }
        }
      return;
    }
    case GgmlType::Q6_K: {  // ql[128], qh[64], scales[16] int8, d
      o.D = fp16_to_f32(rd16(p + 208));
      o.off = 32;
      for (int g = 0; g < 16; ++g) o.sc[g] = int8_t(p[192 + g]);
      for (int n = 0; n < 2; ++n) {
        const uint8_t* L = p + 64 * n;
        const uint8_t* H = p + 128 + 32 * n;
        uint8_t* u = o.u + 128 * n;
        for (int l = 0; l < 32; ++l) {
          u[l] = uint8_t((L[l] & 15) | (H[l] & 3) << 4);
          u[l + 32] = uint8_t((L[l + 32] & 15) | ((H[l] >> 2) & 3) << 4);
          u[l + 64] = uint8_t((L[l] >> 4) | ((H[l] >> 4) & 3) << 4);
          u[l + 96] = uint8_t((L[l + 32] >> 4) | ((H[l] >> 6) & 3) << 4);
        }
      }
      return;
    }
    default:
      MINFER_FAIL("ggml q8 path: {} is not a K-quant", ggml_type_name(type));
  }
}

void check_call(const GgmlBlocks& w, int64_t T, int64_t ldx, int64_t ldy, int64_t K, int64_t N,
                const char* what) {
  MINFER_CHECK(T >= 0 && ldx >= K && ldy >= N,
               "{}: bad strides (T {}, ldx {} < K {} or ldy {} < N {})", what, T, ldx, K, ldy, N);
  MINFER_DCHECK((FormatTraits<GgmlBlocks>::check(w, K, N, what), true), "");
}

inline bool worth_threads(int64_t work) {
  return work >= 32768;
}

#if defined(MINFER_GGML_VNNI)
#define MINFER_INLINE inline __attribute__((always_inline))

MINFER_INLINE float hsum256(__m256 v) {
  __m128 x = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  x = _mm_add_ps(x, _mm_movehl_ps(x, x));
  x = _mm_add_ss(x, _mm_movehdup_ps(x));
  return _mm_cvtss_f32(x);
}

// The 32 unsigned codes of one block in weight order, and its scale / min.
template <GgmlType TY>
MINFER_INLINE __m256i unpack_simd(const uint8_t* p, float* dw, float* mw) {
  *dw = _cvtsh_ss(rd16(p));
  *mw = 0.f;
  if constexpr (TY == GgmlType::Q4_0 || TY == GgmlType::Q4_1) {
    const uint8_t* qs = p + (TY == GgmlType::Q4_1 ? 4 : 2);
    if constexpr (TY == GgmlType::Q4_1) *mw = _cvtsh_ss(rd16(p + 2));
    const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(qs));
    const __m128i m = _mm_set1_epi8(15);
    return _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(v, 4), m), _mm_and_si128(v, m));
  } else if constexpr (TY == GgmlType::Q5_0 || TY == GgmlType::Q5_1) {
    const uint8_t* h = p + (TY == GgmlType::Q5_1 ? 4 : 2);
    if constexpr (TY == GgmlType::Q5_1) *mw = _cvtsh_ss(rd16(p + 2));
    const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(h + 4));
    const __m128i m = _mm_set1_epi8(15);
    const __m256i lo =
        _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(v, 4), m), _mm_and_si128(v, m));
    const __m256i hi = _mm256_and_si256(_mm256_movm_epi8(__mmask32(rd32(h))), _mm256_set1_epi8(16));
    return _mm256_or_si256(lo, hi);
  } else {  // Q8_0: int8 + 128
    return _mm256_xor_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 2)),
                            _mm256_set1_epi8(char(0x80)));
  }
}

// y[t, n] for rows [n0, n1) and all nt <= 8 tokens.
template <GgmlType TY>
void q8_rows_simd(const uint8_t* wb, int64_t rb, const int8_t* aq, const float* ad,
                  const int32_t* as, const float* am, int64_t nt, int64_t K, int64_t n0, int64_t n1,
                  float* y, int64_t ldy) {
  constexpr int off = offset_of(uint32_t(TY));
  const int64_t nb = K / kQ, bs = int64_t(ggml_type_size(uint32_t(TY)));
  for (int64_t n = n0; n < n1; ++n) {
    const uint8_t* row = wb + n * rb;
    __m256 acc[kGgmlGemmMinT];
    float corr[kGgmlGemmMinT];
    for (int64_t t = 0; t < nt; ++t) {
      acc[t] = _mm256_setzero_ps();
      corr[t] = 0.f;
    }
    for (int64_t b = 0; b < nb; ++b) {
      float dw, mw;
      const __m256i u = unpack_simd<TY>(row + b * bs, &dw, &mw);
      const float c = mw - float(off) * dw;
      for (int64_t t = 0; t < nt; ++t) {
        const __m256i xq =
            _mm256_loadu_si256(reinterpret_cast<const __m256i*>(aq + t * K + b * kQ));
        const __m256i p = _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, xq);
        const float dx = ad[t * nb + b];
        acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_set1_ps(dw * dx), acc[t]);
        // Q4_1 / Q5_1: min times the block's fp16 sum term (llama.cpp's m_w * s_x); the offset
        // types: the integer code sum times -off * dw.
        if constexpr (off == 0)
          corr[t] += mw * am[t * nb + b];
        else
          corr[t] += dx * float(as[t * nb + b]) * c;
      }
    }
    for (int64_t t = 0; t < nt; ++t) y[t * ldy + n] = hsum256(acc[t]) + corr[t];
  }
}

// Per token, the four row sums of a zmm whose lanes 4r .. 4r + 3 belong to row r.
MINFER_INLINE __m128 sum_groups4(__m512 v) {
  const __m128 r0 = _mm512_castps512_ps128(v), r1 = _mm512_extractf32x4_ps(v, 1),
               r2 = _mm512_extractf32x4_ps(v, 2), r3 = _mm512_extractf32x4_ps(v, 3);
  return _mm_hadd_ps(_mm_hadd_ps(r0, r1), _mm_hadd_ps(r2, r3));
}
// The four fp16 values at p, p + bs, p + 2 bs, p + 3 bs as f32.
MINFER_INLINE __m128 half4(const uint8_t* p, int64_t bs) {
  return _mm_cvtph_ps(_mm_setr_epi16(short(rd16(p)), short(rd16(p + bs)), short(rd16(p + 2 * bs)),
                                     short(rd16(p + 3 * bs)), 0, 0, 0, 0));
}

// The repacked layout (interleave 4; Q4_0, Q4_1, Q8_0): rows [n0, n1) (multiples of 4) and all
// nt <= 8 tokens. A group of 4 rows is one contiguous stream of 4 blocks per block index; each
// activation block is loaded once for the 4 rows. Per block and token: Q4_0 / Q4_1 put the 4
// rows' 16 nibble bytes in one zmm (lane quarter r = row r), low nibbles (codes 0-15) against
// x[0..15] and high nibbles (codes 16-31) against x[16..31] broadcast to every quarter: two
// vpdpbusd give lanes 4r .. 4r + 3 = row r's integer dot; Q8_0 puts rows 0-1 and 2-3 in two zmm
// (half h = row 2i + h), x[0..31] broadcast to both halves. Same integer sums per block as
// q8_rows_simd, f32 accumulation in another order (results equal to rounding).
template <GgmlType TY>
void q8_rows_x4(const uint8_t* wb, int64_t rb, const int8_t* aq, const float* ad, const int32_t* as,
                const float* am, int64_t nt, int64_t K, int64_t n0, int64_t n1, float* y,
                int64_t ldy) {
  constexpr int off = offset_of(uint32_t(TY));
  constexpr bool kQ8 = TY == GgmlType::Q8_0, kMin = TY == GgmlType::Q4_1;
  const int64_t nb = K / kQ, bs = int64_t(ggml_type_size(uint32_t(TY)));
  const __m512i lane4 = _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3);
  const __m512i lane8a = _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1);
  const __m512i lane8b = _mm512_add_epi32(lane8a, _mm512_set1_epi32(2));
  const __m512i m4 = _mm512_set1_epi8(15);
  for (int64_t n = n0; n < n1; n += 4) {
    const uint8_t* g = wb + n * rb;  // group of rows n .. n + 3: 4 rb bytes
    __m512 acc[kGgmlGemmMinT], acc2[kGgmlGemmMinT];
    __m128 corr[kGgmlGemmMinT];
    for (int64_t t = 0; t < nt; ++t) {
      acc[t] = acc2[t] = _mm512_setzero_ps();
      corr[t] = _mm_setzero_ps();
    }
    for (int64_t b = 0; b < nb; ++b) {
      const uint8_t* p = g + b * 4 * bs;
      const __m128 dw4 = half4(p, bs);
      if constexpr (kQ8) {
        const __m512i sign = _mm512_set1_epi8(char(0x80));
        auto two = [&](const uint8_t* q) {
          return _mm512_xor_si512(
              _mm512_inserti64x4(
                  _mm512_castsi256_si512(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(q))),
                  _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q + bs)), 1),
              sign);
        };
        const __m512i ua = two(p + 2), ub = two(p + 2 + 2 * bs);
        const __m512 da = _mm512_permutexvar_ps(lane8a, _mm512_castps128_ps512(dw4));
        const __m512 db = _mm512_permutexvar_ps(lane8b, _mm512_castps128_ps512(dw4));
        for (int64_t t = 0; t < nt; ++t) {
          const __m512i xq = _mm512_broadcast_i64x4(
              _mm256_loadu_si256(reinterpret_cast<const __m256i*>(aq + t * K + b * kQ)));
          const float dx = ad[t * nb + b];
          const __m512 sx = _mm512_set1_ps(dx);
          const __m512i pa = _mm512_dpbusd_epi32(_mm512_setzero_si512(), ua, xq);
          const __m512i pb = _mm512_dpbusd_epi32(_mm512_setzero_si512(), ub, xq);
          acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(pa), _mm512_mul_ps(da, sx), acc[t]);
          acc2[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(pb), _mm512_mul_ps(db, sx), acc2[t]);
          corr[t] =
              _mm_fmadd_ps(dw4, _mm_set1_ps(-float(off) * dx * float(as[t * nb + b])), corr[t]);
        }
      } else {
        const int64_t qo = kMin ? 4 : 2;  // nibbles after d (and m)
        __m512i v =
            _mm512_castsi128_si512(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + qo)));
        v = _mm512_inserti32x4(v, _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + bs + qo)),
                               1);
        v = _mm512_inserti32x4(
            v, _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 2 * bs + qo)), 2);
        v = _mm512_inserti32x4(
            v, _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 3 * bs + qo)), 3);
        const __m512i lo = _mm512_and_si512(v, m4),
                      hi = _mm512_and_si512(_mm512_srli_epi16(v, 4), m4);
        const __m512 d16 = _mm512_permutexvar_ps(lane4, _mm512_castps128_ps512(dw4));
        __m128 mw4 = _mm_setzero_ps();
        if constexpr (kMin) mw4 = half4(p + 2, bs);
        for (int64_t t = 0; t < nt; ++t) {
          const int8_t* xb = aq + t * K + b * kQ;
          const __m512i xlo =
              _mm512_broadcast_i32x4(_mm_loadu_si128(reinterpret_cast<const __m128i*>(xb)));
          const __m512i xhi =
              _mm512_broadcast_i32x4(_mm_loadu_si128(reinterpret_cast<const __m128i*>(xb + 16)));
          const __m512i pq =
              _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(_mm512_setzero_si512(), lo, xlo), hi, xhi);
          const float dx = ad[t * nb + b];
          acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(pq), _mm512_mul_ps(d16, _mm512_set1_ps(dx)),
                                   acc[t]);
          if constexpr (kMin)
            corr[t] = _mm_fmadd_ps(mw4, _mm_set1_ps(am[t * nb + b]), corr[t]);
          else
            corr[t] =
                _mm_fmadd_ps(dw4, _mm_set1_ps(-float(off) * dx * float(as[t * nb + b])), corr[t]);
        }
      }
    }
    for (int64_t t = 0; t < nt; ++t) {
      __m512 v = acc[t];
      if constexpr (kQ8)  // quarters (a0 a1 a2 a3), (b0 b1 b2 b3) -> rows as 4-lane groups
        v = _mm512_add_ps(_mm512_shuffle_f32x4(acc[t], acc2[t], 0x88),
                          _mm512_shuffle_f32x4(acc[t], acc2[t], 0xDD));
      _mm_storeu_ps(y + t * ldy + n, _mm_add_ps(sum_groups4(v), corr[t]));
    }
  }
}

// K-quants: one super-block of 256 weights as four zmm of unsigned codes in weight order (zmm c
// holds weights 64c .. 64c+63, i.e. groups 4c .. 4c+3 of 16), the group scales S (lane g = sc[g])
// and mins M (lane g = m[g]) as int32, D and Dmin. The integer sum of a super-block against the
// Q8_K-style activation block q (bsums B, lane g = Σ q of group g) is
//   Σ_c Σ_lanes dpbusd(u_c, q_c) · S[4c + lane / 4] - off · S · B   (dot), M · B   (mins)
// and y += dx (D dot - Dmin mins).
struct KSimd {
  __m512i u[4], S, M;
  float D, Dmin;
};

MINFER_INLINE __m512i dup256(const uint8_t* p) {
  return _mm512_broadcast_i64x4(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}
// zmm of 64 bytes: the low 32 equal to a, the high 32 to b.
MINFER_INLINE __m512i halves8(int a, int b) {
  return _mm512_inserti64x4(_mm512_set1_epi8(char(a)), _mm256_set1_epi8(char(b)), 1);
}
MINFER_INLINE __m512i halves16(int a, int b) {
  return _mm512_inserti64x4(_mm512_set1_epi16(short(a)), _mm256_set1_epi16(short(b)), 1);
}

template <GgmlType TY>
MINFER_INLINE void unpack_k_simd(const uint8_t* p, KSimd& k) {
  const __m512i m4 = _mm512_set1_epi8(15);
  if constexpr (TY == GgmlType::Q4_K || TY == GgmlType::Q5_K) {
    k.D = _cvtsh_ss(rd16(p));
    k.Dmin = _cvtsh_ss(rd16(p + 2));
    // 8 scales and 8 mins of 6 bits (layout: ggml::q4k_scale_min), four per 32-bit word.
    const uint32_t w0 = rd32(p + 4), w1 = rd32(p + 8), w2 = rd32(p + 12);
    const uint32_t sc_lo = w0 & 0x3f3f3f3fu, m_lo = w1 & 0x3f3f3f3fu;
    const uint32_t sc_hi = (w2 & 0x0f0f0f0fu) | ((w0 >> 6) & 0x03030303u) << 4;
    const uint32_t m_hi = ((w2 >> 4) & 0x0f0f0f0fu) | ((w1 >> 6) & 0x03030303u) << 4;
    const __m512i sm = _mm512_cvtepu8_epi32(
        _mm_setr_epi32(int(sc_lo), int(sc_hi), int(m_lo), int(m_hi)));  // lanes: sc 0-7, m 0-7
    const __m512i half = _mm512_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7);
    k.S = _mm512_permutexvar_epi32(half, sm);
    k.M = _mm512_permutexvar_epi32(_mm512_add_epi32(half, _mm512_set1_epi32(8)), sm);
    const uint8_t* qs = p + (TY == GgmlType::Q5_K ? 48 : 16);
    for (int c = 0; c < 4; ++c) {
      const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(qs + 32 * c));
      const __m512i vv = _mm512_inserti64x4(_mm512_castsi256_si512(v), _mm256_srli_epi16(v, 4), 1);
      k.u[c] = _mm512_and_si512(vv, m4);
      if constexpr (TY == GgmlType::Q5_K) {
        const __mmask64 h = _mm512_test_epi8_mask(dup256(p + 16), halves8(1 << 2 * c, 2 << 2 * c));
        k.u[c] = _mm512_mask_add_epi8(k.u[c], h, k.u[c], _mm512_set1_epi8(16));
      }
    }
  } else if constexpr (TY == GgmlType::Q6_K) {
    k.D = _cvtsh_ss(rd16(p + 208));
    k.Dmin = 0.f;
    k.S = _mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 192)));
    k.M = _mm512_setzero_si512();
    const __m512i m30 = _mm512_set1_epi8(0x30);
    for (int n = 0; n < 2; ++n) {
      const __m512i L = _mm512_loadu_si512(p + 64 * n);
      const __m512i H = dup256(p + 128 + 32 * n);
      // Weights 128n + l and + 32: high bits (H >> 0) & 3 and (H >> 2) & 3, moved to bits 4-5.
      k.u[2 * n] = _mm512_or_si512(_mm512_and_si512(L, m4),
                                   _mm512_and_si512(_mm512_sllv_epi16(H, halves16(4, 2)), m30));
      // Weights 128n + l + 64 and + 96: (H >> 4) & 3 and (H >> 6) & 3.
      k.u[2 * n + 1] = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(L, 4), m4),
                                       _mm512_and_si512(_mm512_srlv_epi16(H, halves16(0, 2)), m30));
    }
  } else if constexpr (TY == GgmlType::Q2_K) {
    k.D = _cvtsh_ss(rd16(p + 80));
    k.Dmin = _cvtsh_ss(rd16(p + 82));
    const __m512i sc = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    k.S = _mm512_and_si512(sc, _mm512_set1_epi32(15));
    k.M = _mm512_srli_epi32(sc, 4);
    for (int c = 0; c < 4; ++c) {
      const int j = 2 * (c % 2);  // zmm c: half n = c / 2, bit pairs j and j + 1
      k.u[c] = _mm512_and_si512(
          _mm512_srlv_epi16(dup256(p + 16 + 32 * (c / 2)), halves16(2 * j, 2 * j + 2)),
          _mm512_set1_epi8(3));
    }
  } else {  // Q3_K
    k.D = _cvtsh_ss(rd16(p + 108));
    k.Dmin = 0.f;
    k.M = _mm512_setzero_si512();
    // 16 scales of 6 bits: low 4 from bytes 0-7 (nibbles), high 2 from bytes 8-11.
    const uint32_t a0 = rd32(p + 96), a1 = rd32(p + 100), a2 = rd32(p + 104);
    const uint32_t f = 0x0f0f0f0fu, t = 0x03030303u;
    const __m128i w = _mm_setr_epi32(
        int((a0 & f) | (a2 & t) << 4), int((a1 & f) | ((a2 >> 2) & t) << 4),
        int(((a0 >> 4) & f) | ((a2 >> 4) & t) << 4), int(((a1 >> 4) & f) | ((a2 >> 6) & t) << 4));
    k.S = _mm512_sub_epi32(_mm512_cvtepu8_epi32(w), _mm512_set1_epi32(32));
    const __m512i hm = dup256(p);
    for (int c = 0; c < 4; ++c) {
      const int n = c / 2, j = 2 * (c % 2);
      const __m512i q2 =
          _mm512_and_si512(_mm512_srlv_epi16(dup256(p + 32 + 32 * n), halves16(2 * j, 2 * j + 2)),
                           _mm512_set1_epi8(3));
      const __mmask64 h =
          _mm512_test_epi8_mask(hm, halves8(1 << (4 * n + j), 1 << (4 * n + j + 1)));
      k.u[c] = _mm512_mask_add_epi8(q2, h, q2, _mm512_set1_epi8(4));
    }
  }
}

constexpr int k_offset(GgmlType t) {
  return t == GgmlType::Q6_K ? 32 : t == GgmlType::Q3_K ? 4 : 0;
}
constexpr bool k_has_min(GgmlType t) {
  return t == GgmlType::Q2_K || t == GgmlType::Q4_K || t == GgmlType::Q5_K;
}

// y[t, n] for rows [n0, n1) and all nt <= 8 tokens; aq [nt, K], ad [nt, K / 256], as [nt, K / 16].
// (am: unused, the K-quants have no Q8_1 sum term; the signature is q8_rows_simd's.)
template <GgmlType TY>
void k_rows_simd(const uint8_t* wb, int64_t rb, const int8_t* aq, const float* ad,
                 const int32_t* as, const float* /*am*/, int64_t nt, int64_t K, int64_t n0,
                 int64_t n1, float* y, int64_t ldy) {
  constexpr int off = k_offset(TY);
  constexpr int64_t QK = ggml::QK_K;
  const int64_t nb = K / QK, bs = int64_t(ggml_type_size(uint32_t(TY)));
  // Lane i of zmm c's dot products belongs to group 4c + i / 4.
  const __m512i g4 = _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3);
  for (int64_t n = n0; n < n1; ++n) {
    const uint8_t* row = wb + n * rb;
    __m512 acc[kGgmlGemmMinT];
    for (int64_t t = 0; t < nt; ++t) acc[t] = _mm512_setzero_ps();
    for (int64_t b = 0; b < nb; ++b) {
      KSimd k;
      unpack_k_simd<TY>(row + b * bs, k);
      __m512i sp[4];
      for (int c = 0; c < 4; ++c)
        sp[c] = _mm512_permutexvar_epi32(_mm512_add_epi32(g4, _mm512_set1_epi32(4 * c)), k.S);
      for (int64_t t = 0; t < nt; ++t) {
        const int8_t* q = aq + t * K + b * QK;
        __m512i dot = _mm512_setzero_si512();
        for (int c = 0; c < 4; ++c) {
          const __m512i p =
              _mm512_dpbusd_epi32(_mm512_setzero_si512(), k.u[c], _mm512_loadu_si512(q + 64 * c));
          dot = _mm512_add_epi32(dot, _mm512_mullo_epi32(p, sp[c]));
        }
        const __m512i B = _mm512_loadu_si512(as + (t * nb + b) * 16);
        if constexpr (off != 0)
          dot = _mm512_sub_epi32(
              dot, _mm512_mullo_epi32(k.S, _mm512_mullo_epi32(B, _mm512_set1_epi32(off))));
        const float dx = ad[t * nb + b];
        acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), _mm512_set1_ps(dx * k.D), acc[t]);
        if constexpr (k_has_min(TY))
          acc[t] = _mm512_fnmadd_ps(_mm512_cvtepi32_ps(_mm512_mullo_epi32(k.M, B)),
                                    _mm512_set1_ps(dx * k.Dmin), acc[t]);
      }
    }
    for (int64_t t = 0; t < nt; ++t) y[t * ldy + n] = _mm512_reduce_add_ps(acc[t]);
  }
}

#endif

#if defined(MINFER_GGML_SIMD)
// The SIMD row kernel of a type on the q8 path (its signature: ggml_cpu::RowsFn, ggml_impl.h).
RowsFn rows_fn(const GgmlBlocks& w) {
#if defined(MINFER_GGML_VNNI)
  const uint32_t type = w.type;
  const bool x4 = w.interleave == 4;  // the caller checked simd_layout(w)
  switch (GgmlType(type)) {
    case GgmlType::Q4_0:
      return x4 ? q8_rows_x4<GgmlType::Q4_0> : q8_rows_simd<GgmlType::Q4_0>;
    case GgmlType::Q4_1:
      return x4 ? q8_rows_x4<GgmlType::Q4_1> : q8_rows_simd<GgmlType::Q4_1>;
    case GgmlType::Q5_0:
      return q8_rows_simd<GgmlType::Q5_0>;
    case GgmlType::Q5_1:
      return q8_rows_simd<GgmlType::Q5_1>;
    case GgmlType::Q8_0:
      return x4 ? q8_rows_x4<GgmlType::Q8_0> : q8_rows_simd<GgmlType::Q8_0>;
    case GgmlType::Q2_K:
      return k_rows_simd<GgmlType::Q2_K>;
    case GgmlType::Q3_K:
      return k_rows_simd<GgmlType::Q3_K>;
    case GgmlType::Q4_K:
      return k_rows_simd<GgmlType::Q4_K>;
    case GgmlType::Q5_K:
      return k_rows_simd<GgmlType::Q5_K>;
    case GgmlType::Q6_K:
      return k_rows_simd<GgmlType::Q6_K>;
    default:
      break;
  }
  MINFER_FAIL("ggml q8 path: type {} has no integer kernel", ggml_type_name(type));
#else
  const RowsFn f = ggml_cpu::rows_avx2(w.type);
  MINFER_CHECK(f != nullptr, "ggml q8 path: type {} has no integer kernel", ggml_type_name(w.type));
  return f;
#endif
}

// Quantizes x once for matrices of w's activation layout (K-quants: blocks of 256).
QAct& quantize_for(const GgmlBlocks& w, const float* x, int64_t T, int64_t ldx, int64_t K) {
  QAct& a = act_scratch();
  if (is_k_quant(w.type))
    quantize_act(x, T, ldx, K, a, ggml::QK_K, 16);
  else
    quantize_act(x, T, ldx, K, a);
  return a;
}

// y[T, N] = x · Wᵀ on the q8 path from x quantized in a (quantize_for): tokens in tiles of up to
// kGgmlGemmMinT, each tile's rows in work items of 16 on the thread pool (one dispatch, chunks
// claimed dynamically; engine/thread_pool.h).
void run_rows(RowsFn fn, const GgmlBlocks& w, const QAct& a, int64_t T, int64_t K, int64_t N,
              float* y, int64_t ldy) {
  const uint8_t* wb = w.blocks.data<uint8_t>();
  const int64_t rb = w.blocks.dim(1);
  const bool kq = is_k_quant(w.type);
  const int64_t nb = K / (kq ? ggml::QK_K : kQ), ns = kq ? K / 16 : nb;  // blocks, code sums
  for (int64_t t0 = 0; t0 < T; t0 += kGgmlGemmMinT) {
    const int64_t nt = std::min<int64_t>(kGgmlGemmMinT, T - t0);
    const int8_t* aq = a.q.data() + t0 * K;
    const float* ad = a.d.data() + t0 * nb;
    const int32_t* as = a.s.data() + t0 * ns;
    const float* am = kq ? nullptr : a.m.data() + t0 * nb;
    constexpr int64_t kRows = 16;  // rows per work item
    const int64_t items = (N + kRows - 1) / kRows;
    parallel_for(items, kRows * K, int64_t(1) << 15, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i)
        fn(wb, rb, aq, ad, as, am, nt, K, i * kRows, std::min(N, (i + 1) * kRows), y + t0 * ldy,
           ldy);
    });
  }
}
#endif

}  // namespace

void ggml_quantize_row_q8_K(const float* x, int64_t K, ggml::BlockQ8_K* y) {
  MINFER_CHECK(K >= 0 && K % ggml::QK_K == 0,
               "ggml_quantize_row_q8_K: K = {} is not a multiple of {}", K, ggml::QK_K);
  QAct a;
  quantize_act(x, 1, K, K, a, ggml::QK_K, 16);
  for (int64_t b = 0; b < K / ggml::QK_K; ++b) {
    y[b].d = a.d[size_t(b)];
    std::memcpy(y[b].qs, a.q.data() + b * ggml::QK_K, ggml::QK_K);
    for (int g = 0; g < ggml::QK_K / 16; ++g) y[b].bsums[g] = int16_t(a.s[size_t(b * 16 + g)]);
  }
}

bool ggml_has_q8_path(uint32_t type) {
  switch (GgmlType(type)) {
    case GgmlType::Q4_0:
    case GgmlType::Q4_1:
    case GgmlType::Q5_0:
    case GgmlType::Q5_1:
    case GgmlType::Q8_0:
    case GgmlType::Q2_K:
    case GgmlType::Q3_K:
    case GgmlType::Q4_K:
    case GgmlType::Q5_K:
    case GgmlType::Q6_K:
      return true;
    default:
      return false;
  }
}

bool ggml_repack_for_cpu(GgmlBlocks& w, int64_t K) {
#if defined(MINFER_GGML_VNNI)
  static const bool enabled = env_switch("MINFER_GGML_REPACK", "1", {"0", "1"}) == "1";
  if (!enabled || w.interleave != 1 || !repack_type(w.type) || w.blocks.dim(0) % 4 != 0)
    return false;
  GgmlBlocks r = ggml_blocks_interleave(w, K, 4);
  release_mapped_pages(w.blocks);
  w = std::move(r);
  return true;
#else
  (void)w;
  (void)K;
  return false;
#endif
}

const char* ggml_linear_isa() {
#if defined(MINFER_GGML_VNNI)
  return "avx512-vnni";
#elif defined(MINFER_GGML_AVX2)
  return "avx2";
#else
  return "scalar";
#endif
}

void ggml_linear_q8_ref(const GgmlBlocks& w, const float* x, int64_t T, int64_t ldx, float* y,
                        int64_t ldy, int64_t K, int64_t N) {
  check_call(w, T, ldx, ldy, K, N, "ggml_linear_q8_ref");
  MINFER_CHECK(ggml_has_q8_path(w.type), "ggml q8 path: type {} has no integer kernel",
               ggml_type_name(w.type));
  if (T == 0) return;
  QAct a;
  if (is_k_quant(w.type)) {
    constexpr int64_t QK = ggml::QK_K;
    quantize_act(x, T, ldx, K, a, QK, 16);
    const int64_t nb = K / QK, bs = block_bytes(w.type);
    KBlock kb;
    for (int64_t n = 0; n < N; ++n)
      for (int64_t t = 0; t < T; ++t) {
        float acc = 0.f;
        for (int64_t b = 0; b < nb; ++b) {
          unpack_kblock(w.type, ggml_block_ptr(w, nb, bs, n, b), kb);
          const int8_t* q = a.q.data() + t * K + b * QK;
          const int32_t* s = a.s.data() + (t * nb + b) * 16;
          int32_t dot = 0, mins = 0;
          for (int g = 0; g < 16; ++g) {
            int32_t d = 0;
            for (int j = 16 * g; j < 16 * g + 16; ++j) d += int32_t(kb.u[j]) * q[j];
            dot += kb.sc[g] * (d - kb.off * s[g]);
            mins += kb.m[g] * s[g];
          }
          acc += a.d[size_t(t * nb + b)] * (kb.D * float(dot) - kb.Dmin * float(mins));
        }
        y[t * ldy + n] = acc;
      }
    return;
  }
  quantize_act(x, T, ldx, K, a);
  const int64_t nb = K / kQ, bs = block_bytes(w.type);
  const int off = offset_of(w.type);
  UBlock u;
  for (int64_t n = 0; n < N; ++n)
    for (int64_t t = 0; t < T; ++t) {
      float acc = 0.f;
      for (int64_t b = 0; b < nb; ++b) {
        unpack_block(w.type, ggml_block_ptr(w, nb, bs, n, b), u);
        const int8_t* q = a.q.data() + t * K + b * kQ;
        int32_t dot = 0;
        for (int j = 0; j < kQ; ++j) dot += int32_t(u.u[j]) * q[j];
        const size_t i = size_t(t * nb + b);
        acc += a.d[i] * u.dw * float(dot - off * a.s[i]) + u.mw * a.m[i];
      }
      y[t * ldy + n] = acc;
    }
}

void ggml_linear_q8(const GgmlBlocks& w, const float* x, int64_t T, int64_t ldx, float* y,
                    int64_t ldy, int64_t K, int64_t N) {
#if defined(MINFER_GGML_SIMD)
  check_call(w, T, ldx, ldy, K, N, "ggml_linear_q8");
  MINFER_CHECK(ggml_has_q8_path(w.type), "ggml q8 path: type {} has no integer kernel",
               ggml_type_name(w.type));
  if (T == 0) return;
  if (!simd_layout(w)) return ggml_linear_q8_ref(w, x, T, ldx, y, ldy, K, N);
  run_rows(rows_fn(w), w, quantize_for(w, x, T, ldx, K), T, K, N, y, ldy);
#else
  ggml_linear_q8_ref(w, x, T, ldx, y, ldy, K, N);
#endif
}

bool ggml_q8_groupable(const GgmlBlocks* const* ws, int n) {
  for (int i = 0; i < n; ++i)
    if (!ggml_has_q8_path(ws[i]->type) || is_k_quant(ws[i]->type) != is_k_quant(ws[0]->type))
      return false;
  return n > 0;
}

void ggml_linear_q8_group(const GgmlGroupItem* items, int n, const float* x, int64_t T, int64_t ldx,
                          int64_t K) {
  std::vector<const GgmlBlocks*> ws(size_t(std::max(n, 0)));
  for (int i = 0; i < n; ++i) {
    ws[size_t(i)] = items[i].w;
    check_call(*items[i].w, T, ldx, items[i].ldy, K, items[i].N, "ggml_linear_q8_group");
  }
  MINFER_CHECK(ggml_q8_groupable(ws.data(), n),
               "ggml q8 group: every matrix needs the q8 path, all K-quants or none");
  if (T == 0) return;
#if defined(MINFER_GGML_SIMD)
  bool simd = true;
  for (int i = 0; i < n; ++i) simd = simd && simd_layout(*items[i].w);
  if (T > kGgmlGemmMinT || !simd) {
#endif
    for (int i = 0; i < n; ++i)
      ggml_linear_q8(*items[i].w, x, T, ldx, items[i].y, items[i].ldy, K, items[i].N);
    return;
#if defined(MINFER_GGML_SIMD)
  }
  QAct& a = quantize_for(*items[0].w, x, T, ldx, K);
  constexpr int64_t kRows = 16;  // rows per work item, as in the single-matrix kernels
  std::vector<int64_t> first(size_t(n) + 1, 0);  // first work item of each matrix
  std::vector<RowsFn> fn(static_cast<size_t>(n), nullptr);
  for (int i = 0; i < n; ++i) {
    first[size_t(i) + 1] = first[size_t(i)] + (items[i].N + kRows - 1) / kRows;
    fn[size_t(i)] = rows_fn(*items[i].w);
  }
  parallel_for(first[size_t(n)], kRows * K, int64_t(1) << 15, [&](int64_t i0, int64_t i1) {
    int m = 0;
    for (int64_t i = i0; i < i1; ++i) {
      while (i >= first[size_t(m) + 1]) ++m;
      const GgmlGroupItem& it = items[m];
      const int64_t r0 = (i - first[size_t(m)]) * kRows;
      fn[size_t(m)](it.w->blocks.data<uint8_t>(), it.w->blocks.dim(1), a.q.data(), a.d.data(),
                    a.s.data(), a.m.data(), T, K, r0, std::min(it.N, r0 + kRows), it.y, it.ldy);
    }
  });
#endif
}

void ggml_linear_q8_swiglu(const GgmlBlocks& gate, const GgmlBlocks& up, const float* x, int64_t T,
                           int64_t ldx, float* y, int64_t ldy, float* u, int64_t ldu, int64_t K,
                           int64_t F) {
  const GgmlGroupItem items[2] = {{&gate, y, ldy, F}, {&up, u, ldu, F}};
#if defined(MINFER_GGML_SIMD)
  const GgmlBlocks* ws[2] = {&gate, &up};
  if (T <= kGgmlGemmMinT && T > 0 && ggml_q8_groupable(ws, 2) && simd_layout(gate) &&
      simd_layout(up)) {
    check_call(gate, T, ldx, ldy, K, F, "ggml_linear_q8_swiglu");
    check_call(up, T, ldx, ldu, K, F, "ggml_linear_q8_swiglu");
    QAct& a = quantize_for(gate, x, T, ldx, K);
    const RowsFn fg = rows_fn(gate), fu = rows_fn(up);
    constexpr int64_t kRows = 16;  // rows per work item, as in the single-matrix kernels
    parallel_for((F + kRows - 1) / kRows, 2 * kRows * K, int64_t(1) << 15,
                 [&](int64_t i0, int64_t i1) {
                   for (int64_t i = i0; i < i1; ++i) {
                     const int64_t r0 = i * kRows, r1 = std::min(F, r0 + kRows);
                     fg(gate.blocks.data<uint8_t>(), gate.blocks.dim(1), a.q.data(), a.d.data(),
                        a.s.data(), a.m.data(), T, K, r0, r1, y, ldy);
                     fu(up.blocks.data<uint8_t>(), up.blocks.dim(1), a.q.data(), a.d.data(),
                        a.s.data(), a.m.data(), T, K, r0, r1, u, ldu);
                     for (int64_t t = 0; t < T; ++t)
                       for (int64_t r = r0; r < r1; ++r)
                         y[t * ldy + r] = silu_mul(y[t * ldy + r], u[t * ldu + r]);
                   }
                 });
    return;
  }
#endif
  ggml_linear_q8_group(items, 2, x, T, ldx, K);
  for (int64_t t = 0; t < T; ++t)
    for (int64_t r = 0; r < F; ++r) y[t * ldy + r] = silu_mul(y[t * ldy + r], u[t * ldu + r]);
}

void ggml_linear_f32(const GgmlBlocks& w, const float* x, int64_t T, int64_t ldx, float* y,
                     int64_t ldy, int64_t K, int64_t N) {
  check_call(w, T, ldx, ldy, K, N, "ggml_linear_f32");
  if (T == 0) return;
  constexpr int64_t kTile = 64;  // rows dequantized at a time: 64 x K floats stay in L2
  const int64_t tiles = (N + kTile - 1) / kTile, rb = w.blocks.dim(1);
  auto tile = [&](int64_t i, int) {
    thread_local std::vector<float> buf;
    thread_local std::vector<uint8_t> row;
    const int64_t n0 = i * kTile, nr = std::min(kTile, N - n0);
    buf.resize(size_t(kTile * K));
    row.resize(size_t(rb));
    for (int64_t r = 0; r < nr; ++r)
      dequantize_row(w.type, ggml_blocks_row(w, K, n0 + r, row.data()), buf.data() + r * K, K);
    // Inside the parallel loop OpenBLAS (OpenMP build) runs on the calling thread only.
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, int(T), int(nr), int(K), 1.f, x, int(ldx),
                buf.data(), int(K), 0.f, y + n0, int(ldy));
  };
  if (worth_threads(N * K) && prefill_gemm_path() == PrefillGemm::Tiles) {
    prefill_for(tiles, prefill_threads(tiles),
                tile);  // the tiles on the pool's active thread count
    return;
  }
#pragma omp parallel for schedule(dynamic) if (worth_threads(N * K))
  for (int64_t i = 0; i < tiles; ++i) tile(i, 0);
}

GgmlPath ggml_path() {
  static const GgmlPath p = [] {
    const std::string v = env_switch("MINFER_GGML_PATH", "auto", {"auto", "f32", "q8"});
    return v == "f32" ? GgmlPath::F32 : v == "q8" ? GgmlPath::Q8 : GgmlPath::Auto;
  }();
  return p;
}

void ggml_linear(const GgmlBlocks& w, const float* x, int64_t T, int64_t ldx, float* y, int64_t ldy,
                 int64_t K, int64_t N) {
  const GgmlPath p = ggml_path();
  const bool q8 =
      ggml_has_q8_path(w.type) && (p == GgmlPath::Q8 || (p == GgmlPath::Auto && T < kGgmlGemmMinT));
  if (q8)
    ggml_linear_q8(w, x, T, ldx, y, ldy, K, N);
  else
    ggml_linear_f32(w, x, T, ldx, y, ldy, K, N);
}

}  // namespace minfer
