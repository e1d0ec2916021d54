// GGML block-format linears (CPU): dispatch, activation quantization, the scalar q8 reference,
// the AVX-512 VNNI q8 kernel and the dequantize-a-tile + sgemm path. Legend and error bound:
// kernels/cpu/ggml.h.
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

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__) && \
    defined(__AVX512VNNI__) && defined(__F16C__)
#define MINFER_GGML_VNNI 1
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#include <immintrin.h>
#pragma GCC diagnostic pop
#endif

namespace minfer {

namespace {

using ggml::fp16_to_f32;
constexpr int kQ = 32;  // weights per block of the q8-path types and of the activation blocks

// x quantized per block of 32 as llama.cpp's CPU backend does it for the dot products of these
// weight types (ggml-cpu quantize_row_q8_0 / quantize_row_q8_1, x86 path), so that a GGUF gives
// the same logits in both engines: amax = max |x_j|, d = amax / 127 stored as fp16, codes
// q_j = round-half-even(x_j * (127 / amax)), and for Q4_1 / Q5_1 (ggml's Q8_1 partner) the block
// sum term m = fp16(d * Σ q_j) that multiplies the weight block's min.
// q [T, K] int8, d [T, nb] fp16-rounded scales, s [T, nb] = Σ q of the block, m [T, nb].
struct QAct {
  std::vector<int8_t> q;
  std::vector<float> d;
  std::vector<int32_t> s;
  std::vector<float> m;
};

QAct& act_scratch() {
  thread_local QAct a;
  return a;
}

// f32 -> fp16 -> f32, round to nearest even (ggml's GGML_FP32_TO_FP16). A value past fp16's
// range (|v| >= 65520, activations beyond 8e6) keeps its f32 value instead of becoming inf.
float round_fp16(float v) {
  const float r = f16_to_f32(f32_to_f16(v));
  return std::isinf(r) ? v : r;
}

void quantize_act(const float* x, int64_t T, int64_t ldx, int64_t K, QAct& a) {
  const int64_t nb = K / kQ;
  a.q.resize(size_t(T * K));
  a.d.resize(size_t(T * nb));
  a.s.resize(size_t(T * nb));
  a.m.resize(size_t(T * nb));
  for (int64_t t = 0; t < T; ++t)
    for (int64_t b = 0; b < nb; ++b) {
      const float* xb = x + t * ldx + b * kQ;
      float amax = 0.f;
      bool finite = true;
      for (int j = 0; j < kQ; ++j) {
        amax = std::max(amax, std::fabs(xb[j]));
        finite = finite && std::isfinite(xb[j]);
      }
      // A NaN or inf gets the block the scale NaN: every output of the row is NaN, as in f32.
      const float d = amax / 127.f, id = amax != 0.f ? 127.f / amax : 0.f;
      int8_t* q = a.q.data() + t * K + b * kQ;
      int32_t s = 0;
      for (int j = 0; j < kQ; ++j) {
        // nearbyint: the current rounding mode, round-half-even by default (as _mm256_round_ps
        // with _MM_ROUND_NEAREST in llama.cpp; std::lround would round halves away from zero).
        q[j] = int8_t(finite ? std::nearbyint(xb[j] * id) : 0.f);
        s += q[j];
      }
      const size_t i = size_t(t * nb + b);
      a.d[i] = finite ? round_fp16(d) : std::numeric_limits<float>::quiet_NaN();
      a.s[i] = s;
      a.m[i] = finite ? round_fp16(d * float(s)) : std::numeric_limits<float>::quiet_NaN();
    }
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

template <GgmlType TY>
void q8_simd(const GgmlBlocks& w, const QAct& a, int64_t T, int64_t K, int64_t N, float* y,
             int64_t ldy) {
  const uint8_t* wb = w.blocks.data<uint8_t>();
  const int64_t rb = w.blocks.dim(1);
  for (int64_t t0 = 0; t0 < T; t0 += kGgmlGemmMinT) {
    const int64_t nt = std::min<int64_t>(kGgmlGemmMinT, T - t0);
    const int64_t nb = K / kQ;
    const int8_t* aq = a.q.data() + t0 * K;
    const float* ad = a.d.data() + t0 * nb;
    const int32_t* as = a.s.data() + t0 * nb;
    const float* am = a.m.data() + t0 * nb;
    constexpr int64_t kRows = 16;  // rows per work item
    const int64_t items = (N + kRows - 1) / kRows;
    // Decode: on the thread pool (one dispatch, chunks claimed dynamically; engine/thread_pool.h).
    parallel_for(items, kRows * K, int64_t(1) << 15, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i)
        q8_rows_simd<TY>(wb, rb, aq, ad, as, am, nt, K, i * kRows, std::min(N, (i + 1) * kRows),
                         y + t0 * ldy, ldy);
    });
  }
}
#endif

}  // namespace

bool ggml_has_q8_path(uint32_t type) {
  switch (GgmlType(type)) {
    case GgmlType::Q4_0:
    case GgmlType::Q4_1:
    case GgmlType::Q5_0:
    case GgmlType::Q5_1:
    case GgmlType::Q8_0:
      return true;
    default:
      return false;
  }
}

const char* ggml_linear_isa() {
#if defined(MINFER_GGML_VNNI)
  return "avx512-vnni";
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
  quantize_act(x, T, ldx, K, a);
  const int64_t nb = K / kQ, bs = block_bytes(w.type), rb = w.blocks.dim(1);
  const int off = offset_of(w.type);
  const uint8_t* wb = w.blocks.data<uint8_t>();
  UBlock u;
  for (int64_t n = 0; n < N; ++n)
    for (int64_t t = 0; t < T; ++t) {
      float acc = 0.f;
      for (int64_t b = 0; b < nb; ++b) {
        unpack_block(w.type, wb + n * rb + b * bs, u);
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
#if defined(MINFER_GGML_VNNI)
  check_call(w, T, ldx, ldy, K, N, "ggml_linear_q8");
  MINFER_CHECK(ggml_has_q8_path(w.type), "ggml q8 path: type {} has no integer kernel",
               ggml_type_name(w.type));
  if (T == 0) return;
  QAct& a = act_scratch();
  quantize_act(x, T, ldx, K, a);
  switch (GgmlType(w.type)) {
    case GgmlType::Q4_0:
      return q8_simd<GgmlType::Q4_0>(w, a, T, K, N, y, ldy);
    case GgmlType::Q4_1:
      return q8_simd<GgmlType::Q4_1>(w, a, T, K, N, y, ldy);
    case GgmlType::Q5_0:
      return q8_simd<GgmlType::Q5_0>(w, a, T, K, N, y, ldy);
    case GgmlType::Q5_1:
      return q8_simd<GgmlType::Q5_1>(w, a, T, K, N, y, ldy);
    case GgmlType::Q8_0:
      return q8_simd<GgmlType::Q8_0>(w, a, T, K, N, y, ldy);
    default:
      break;
  }
  MINFER_FAIL("ggml q8 path: type {} has no integer kernel", ggml_type_name(w.type));
#else
  ggml_linear_q8_ref(w, x, T, ldx, y, ldy, K, N);
#endif
}

void ggml_linear_f32(const GgmlBlocks& w, const float* x, int64_t T, int64_t ldx, float* y,
                     int64_t ldy, int64_t K, int64_t N) {
  check_call(w, T, ldx, ldy, K, N, "ggml_linear_f32");
  if (T == 0) return;
  constexpr int64_t kTile = 64;  // rows dequantized at a time: 64 x K floats stay in L2
  const int64_t tiles = (N + kTile - 1) / kTile, rb = w.blocks.dim(1);
  const uint8_t* wb = w.blocks.data<uint8_t>();
#pragma omp parallel for schedule(dynamic) if (worth_threads(N * K))
  for (int64_t i = 0; i < tiles; ++i) {
    thread_local std::vector<float> buf;
    const int64_t n0 = i * kTile, nr = std::min(kTile, N - n0);
    buf.resize(size_t(kTile * K));
    for (int64_t r = 0; r < nr; ++r)
      dequantize_row(w.type, wb + (n0 + r) * rb, buf.data() + r * K, K);
    // Inside the parallel loop OpenBLAS (OpenMP build) runs on the calling thread only.
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, int(T), int(nr), int(K), 1.f, x, int(ldx),
                buf.data(), int(K), 0.f, y + n0, int(ldy));
  }
}

GgmlPath ggml_path() {
  static const GgmlPath p = [] {
    const char* e = std::getenv("MINFER_GGML_PATH");
    const std::string v = e ? e : "auto";
    MINFER_CHECK(v == "auto" || v == "f32" || v == "q8",
                 "MINFER_GGML_PATH='{}': expected auto, f32 or q8", v);
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
