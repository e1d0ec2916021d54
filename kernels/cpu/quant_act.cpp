// W8A8 and LLM.int8() linears (CPU): argument checks, the outlier split of LLM.int8(),
// dispatch, and the scalar reference. The SIMD kernels live in quant_act_avx512.cpp (AVX-512 VNNI)
// and quant_act_avx2.cpp (AVX2).
// Legend: T rows of x, K = in features, N = out features, Kp = K padded to 64, m = outliers.
#include "kernels/cpu/quant_act.h"

#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "engine/half.h"
#include "kernels/common/quant_math.h"
#include "kernels/cpu/quant_act_impl.h"

namespace minfer {

using namespace qcpu;

namespace {

// int32 exactness: |Σ q_x q_w| <= 127² Kp < 2^31.
constexpr int64_t kMaxKp = int64_t(1) << 17;

void check_call(int64_t T, int64_t ldx, int64_t ldy, int64_t K, int64_t N, const char* what) {
  MINFER_CHECK(T >= 0 && ldx >= K && ldy >= N,
               "{}: bad strides (T {}, ldx {} < K {} or ldy {} < N {})", what, T, ldx, K, ldy, N);
  MINFER_CHECK(qm::padded_k(K) <= kMaxKp, "{}: in = {} features, at most {} supported (int32 sums)",
               what, K, kMaxKp);
}

// ---- Scalar reference pieces.

void quantize_rows_ref(const float* x, int64_t T, int64_t ldx, int64_t K, float scale, int8_t* q,
                       float* d, int32_t* s) {
  const int64_t Kp = qm::padded_k(K);
  for (int64_t t = 0; t < T; ++t) {
    if (scale > 0.f)
      qm::quantize_act_static(x + t * ldx, int(K), int(Kp), scale, q + t * Kp, d + t, s + t);
    else
      qm::quantize_act_block(x + t * ldx, int(K), int(Kp), q + t * Kp, d + t, s + t);
  }
}

void matmul_ref(const int8_t* xq, int64_t T, int64_t Kp, const uint8_t* codes, int64_t rb,
                int64_t N, const I8Out& o) {
  for (int64_t t = 0; t < T; ++t)
    for (int64_t n = 0; n < N; ++n) {
      const int8_t* xr = xq + t * Kp;
      const uint8_t* wr = codes + n * rb;
      int32_t dot = 0;
      for (int64_t k = 0; k < Kp; ++k) dot += int32_t(xr[k]) * (int32_t(wr[k]) - 128);
      if (o.c)
        o.c[t * o.ldc + n] = dot;
      else
        o.y[t * o.ldy + n] = float(dot) * (o.d[t] * o.sw[n]);
    }
}

// Scratch of the calling thread, reused across calls (no allocation per forward once warm).
struct Scratch {
  std::vector<int8_t> q;
  std::vector<float> d, xm, xo, wo;
  std::vector<int32_t> s, cols, slot;
  std::vector<uint8_t> flag;
};
Scratch& scratch() {
  thread_local Scratch s;
  return s;
}

void quantize_rows(const float* x, int64_t T, int64_t ldx, int64_t K, float scale, Scratch& sc,
                   bool fast) {
  const int64_t Kp = qm::padded_k(K);
  sc.q.resize(size_t(T * Kp));
  sc.d.resize(size_t(T));
  sc.s.resize(size_t(T));
#if defined(MINFER_QACT_SIMD)
  if (fast) {
    simd_quantize_act_rows(x, T, ldx, K, scale, sc.q.data(), sc.d.data(), sc.s.data());
    return;
  }
#endif
  quantize_rows_ref(x, T, ldx, K, scale, sc.q.data(), sc.d.data(), sc.s.data());
}

void int_part(const Quantized& w, int64_t T, int64_t K, int64_t N, float* y, int64_t ldy,
              Scratch& sc, bool fast) {
  I8Out o;
  o.y = y;
  o.ldy = ldy;
  o.d = sc.d.data();
  o.sw = w.scales.data<float>();
  const int64_t Kp = qm::padded_k(K);
#if defined(MINFER_QACT_SIMD)
  if (fast) {
    simd_matmul_i8(sc.q.data(), sc.s.data(), T, Kp, w.codes.data<uint8_t>(), w.codes.dim(1), N, o);
    return;
  }
#endif
  matmul_ref(sc.q.data(), T, Kp, w.codes.data<uint8_t>(), w.codes.dim(1), N, o);
}

void w8a8_any(const W8A8& w, const float* x, int64_t T, int64_t ldx, float* y, int64_t ldy,
              int64_t K, int64_t N, bool fast) {
  MINFER_DCHECK((FormatTraits<W8A8>::check(w, K, N, "w8a8_linear"), true), "");  // checked at load
  check_call(T, ldx, ldy, K, N, "w8a8_linear");
  if (T == 0) return;
  Scratch& sc = scratch();
  quantize_rows(x, T, ldx, K, w.act == ActScale::Static ? w.act_scale : 0.f, sc, fast);
  int_part(w.w, T, K, N, y, ldy, sc, fast);
}

void llm_int8_any(const Int8WithOutliers& w, const float* x, int64_t T, int64_t ldx, float* y,
                  int64_t ldy, int64_t K, int64_t N, bool fast) {
  MINFER_DCHECK((FormatTraits<Int8WithOutliers>::check(w, K, N, "llm_int8_linear"), true), "");
  check_call(T, ldx, ldy, K, N, "llm_int8_linear");
  if (T == 0) return;
  Scratch& sc = scratch();
  // Outlier features: listed ones, then any with |x| >= threshold in some row of this call.
  const int64_t nl = w.outlier_cols.defined() ? w.outlier_cols.numel() : 0;
  const int32_t* listed = nl > 0 ? w.outlier_cols.data<int32_t>() : nullptr;
  sc.flag.assign(size_t(K), 0);
  for (int64_t j = 0; j < nl; ++j) sc.flag[size_t(listed[j])] = 1;
  const float thr = w.threshold;
  for (int64_t t = 0; t < T; ++t) {
    const float* xr = x + t * ldx;
    uint8_t* f = sc.flag.data();
    for (int64_t k = 0; k < K; ++k) f[k] |= uint8_t(std::fabs(xr[k]) >= thr);
  }
  sc.cols.clear();
  for (int64_t k = 0; k < K; ++k)
    if (sc.flag[size_t(k)]) sc.cols.push_back(int32_t(k));
  const int64_t m = int64_t(sc.cols.size());

  // Int8 part: x with the outlier columns set to 0.
  const float* xi = x;
  int64_t ldi = ldx;
  if (m > 0) {
    sc.xm.resize(size_t(T * K));
    for (int64_t t = 0; t < T; ++t) {
      std::copy(x + t * ldx, x + t * ldx + K, sc.xm.begin() + t * K);
      for (int32_t c : sc.cols) sc.xm[size_t(t * K + c)] = 0.f;
    }
    xi = sc.xm.data();
    ldi = K;
  }
  quantize_rows(xi, T, ldi, K, 0.f, sc, fast);
  int_part(w.w, T, K, N, y, ldy, sc, fast);
  if (m == 0) return;

  // Outlier part in f32: Xo [T, m] · Woᵀ, Wo [N, m] from outlier_w (listed) or dequantized int8.
  sc.slot.assign(size_t(m), -1);
  for (int64_t i = 0, j = 0; i < m; ++i) {
    while (j < nl && listed[j] < sc.cols[size_t(i)]) ++j;
    if (j < nl && listed[j] == sc.cols[size_t(i)]) sc.slot[size_t(i)] = int32_t(j);
  }
  sc.xo.resize(size_t(T * m));
  sc.wo.resize(size_t(N * m));
  for (int64_t t = 0; t < T; ++t)
    for (int64_t i = 0; i < m; ++i) sc.xo[size_t(t * m + i)] = x[t * ldx + sc.cols[size_t(i)]];
  const uint8_t* codes = w.w.codes.data<uint8_t>();
  const int64_t rb = w.w.codes.dim(1);
  const float* sw = w.w.scales.data<float>();
  const uint16_t* ow = nl > 0 ? w.outlier_w.data<uint16_t>() : nullptr;
  for (int64_t n = 0; n < N; ++n)
    for (int64_t i = 0; i < m; ++i) {
      const int32_t j = sc.slot[size_t(i)];
      sc.wo[size_t(n * m + i)] =
          j >= 0 ? f16_to_f32(ow[n * nl + j])
                 : qm::dequant_uz(codes[n * rb + sc.cols[size_t(i)]], 128, sw[n]);
    }
  if (fast) {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, int(T), int(N), int(m), 1.f, sc.xo.data(),
                int(m), sc.wo.data(), int(m), 1.f, y, int(ldy));
    return;
  }
  for (int64_t t = 0; t < T; ++t)
    for (int64_t n = 0; n < N; ++n) {
      float acc = 0.f;
      for (int64_t i = 0; i < m; ++i) acc += sc.xo[size_t(t * m + i)] * sc.wo[size_t(n * m + i)];
      y[t * ldy + n] += acc;
    }
}

constexpr bool kFast =
#if defined(MINFER_QACT_SIMD)
    true;
#else
    false;
#endif

}  // namespace

const char* act_linear_isa() {
#if defined(MINFER_QACT_SIMD)
  return kActIsa;
#else
  return "scalar";
#endif
}

void quantize_act_rows(const float* x, int64_t T, int64_t ldx, int64_t K, float scale, int8_t* q,
                       float* d, int32_t* s) {
  MINFER_CHECK(std::isfinite(scale) && scale >= 0.f,
               "quantize_act_rows: scale must be finite and >= 0, found {}", scale);
#if defined(MINFER_QACT_SIMD)
  simd_quantize_act_rows(x, T, ldx, K, scale, q, d, s);
#else
  quantize_rows_ref(x, T, ldx, K, scale, q, d, s);
#endif
}

void matmul_i8_i8_i32_ref(const int8_t* xq, int64_t T, int64_t Kp, const uint8_t* codes, int64_t rb,
                          int64_t N, int32_t* c, int64_t ldc) {
  MINFER_CHECK(Kp % 64 == 0 && Kp <= kMaxKp && rb >= Kp && ldc >= N,
               "matmul_i8_i8_i32: Kp {} (multiple of 64, <= {}), rb {}, ldc {}, N {}", Kp, kMaxKp,
               rb, ldc, N);
  I8Out o;
  o.c = c;
  o.ldc = ldc;
  matmul_ref(xq, T, Kp, codes, rb, N, o);
}

void matmul_i8_i8_i32(const int8_t* xq, int64_t T, int64_t Kp, const uint8_t* codes, int64_t rb,
                      int64_t N, int32_t* c, int64_t ldc) {
#if defined(MINFER_QACT_SIMD)
  MINFER_CHECK(Kp % 64 == 0 && Kp <= kMaxKp && rb >= Kp && ldc >= N,
               "matmul_i8_i8_i32: Kp {} (multiple of 64, <= {}), rb {}, ldc {}, N {}", Kp, kMaxKp,
               rb, ldc, N);
  std::vector<int32_t> sx(static_cast<size_t>(T));
  for (int64_t t = 0; t < T; ++t) {
    int32_t s = 0;
    for (int64_t k = 0; k < Kp; ++k) s += xq[t * Kp + k];
    sx[size_t(t)] = s;
  }
  I8Out o;
  o.c = c;
  o.ldc = ldc;
  simd_matmul_i8(xq, sx.data(), T, Kp, codes, rb, N, o);
#else
  matmul_i8_i8_i32_ref(xq, T, Kp, codes, rb, N, c, ldc);
#endif
}

void w8a8_linear(const W8A8& w, const float* x, int64_t T, int64_t ldx, float* y, int64_t ldy,
                 int64_t K, int64_t N) {
  w8a8_any(w, x, T, ldx, y, ldy, K, N, kFast);
}
void w8a8_linear_ref(const W8A8& w, const float* x, int64_t T, int64_t ldx, float* y, int64_t ldy,
                     int64_t K, int64_t N) {
  w8a8_any(w, x, T, ldx, y, ldy, K, N, false);
}
void llm_int8_linear(const Int8WithOutliers& w, const float* x, int64_t T, int64_t ldx, float* y,
                     int64_t ldy, int64_t K, int64_t N) {
  llm_int8_any(w, x, T, ldx, y, ldy, K, N, kFast);
}
void llm_int8_linear_ref(const Int8WithOutliers& w, const float* x, int64_t T, int64_t ldx,
                         float* y, int64_t ldy, int64_t K, int64_t N) {
  llm_int8_any(w, x, T, ldx, y, ldy, K, N, false);
}

}  // namespace minfer
