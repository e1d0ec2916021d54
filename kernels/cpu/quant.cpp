// Quantized linear kernels (CPU): argument checks, dispatch, the activation quantizer and the
// scalar reference path. The SIMD kernels live in the sibling files quant_avx512.cpp and
// quant_avx2.cpp; shared structs and the row tiling in quant_impl.h.
// Legend: T rows of x, K = in features, N = out features, Kp = K padded to 64, QA = activation
// block, nb = ceil(Kp / QA) activation blocks per row, G = weight group.
#include "kernels/cpu/quant.h"

#include <algorithm>
#include <vector>

#include "engine/quantize.h"
#include "kernels/common/quant_math.h"
#include "kernels/cpu/quant_impl.h"

namespace minfer {

using namespace qcpu;

namespace {

void check_call(const Quantized& w, int64_t T, int64_t ldx, int64_t ldy, int64_t K, int64_t N) {
  check_quantized(w, K, N, "quantized_linear");
  MINFER_CHECK(T >= 0 && ldx >= K && ldy >= N,
               "quantized_linear: bad strides (T {}, ldx {} < K {} or ldy {} < N {})", T, ldx, K,
               ldy, N);
}

UArgs uniform_args(const Quantized& w, const ActQ& a, std::vector<int32_t>& gidx, int64_t K) {
  UArgs u;
  u.codes = w.codes.data<uint8_t>();
  u.rb = w.codes.dim(1);
  u.scales = w.scales.data<float>();
  u.groups = w.per_tensor ? 0 : qm::ceil_div(K, w.group);
  u.zeros = w.zeros.defined() ? w.zeros.data<uint8_t>() : nullptr;
  // Activation block b lies inside weight group b * QA / G (QA divides G, or G = K); blocks of
  // pure padding past the last group use the last group's scale (their codes are all 0).
  gidx.resize(size_t(a.nb));
  for (int64_t b = 0; b < a.nb; ++b)
    gidx[size_t(b)] =
        w.per_tensor ? 0 : int32_t(std::min<int64_t>(b * a.QA / w.group, u.groups - 1));
  u.gidx = gidx.data();
  u.a = &a;
  return u;
}

NArgs nf4_args(const Quantized& w, int64_t K) {
  NArgs a;
  a.codes = w.codes.data<uint8_t>();
  a.rb = w.codes.dim(1);
  a.G = w.group;
  a.groups = qm::ceil_div(K, w.group);
  a.K = K;
  a.Kp = qm::padded_k(K);
  if (w.scale_codes.defined()) {
    a.sc = w.scale_codes.data<int8_t>();
    a.ss = w.scale_scales.data<float>();
    a.offset = w.scale_offset;
  } else {
    a.scales = w.scales.data<float>();
  }
  return a;
}

void size_act(ActQ& a, int64_t T, int64_t K, int QA) {
  a.Kp = qm::padded_k(K);
  a.QA = QA;
  a.nb = qm::ceil_div(a.Kp, QA);
  a.q.resize(size_t(T * a.Kp));
  a.d.resize(size_t(T * a.nb));
  a.s.resize(size_t(T * a.nb));
}

void quantize_activations_ref(const float* x, int64_t T, int64_t ldx, int64_t K, int QA, int8_t* q,
                              float* d, int32_t* s) {
  const int64_t Kp = qm::padded_k(K), nb = qm::ceil_div(Kp, QA);
  for (int64_t t = 0; t < T; ++t)
    for (int64_t b = 0; b < nb; ++b) {
      const int64_t k0 = b * QA, len = std::min<int64_t>(QA, Kp - k0);
      const int64_t n = std::clamp<int64_t>(K - k0, 0, len);
      qm::quantize_act_block(x + t * ldx + k0, int(n), int(len), q + t * Kp + k0, d + t * nb + b,
                             s + t * nb + b);
    }
}

// ---- Scalar reference: one element at a time, exact integer dot product per block.

template <QScheme S>
inline int code_u(const uint8_t* row, int64_t k) {
  if constexpr (S == QScheme::Int8) return row[k];
  if constexpr (S == QScheme::Int4) return qm::get_q4(row, k);
  if constexpr (S == QScheme::Ternary) return qm::get_q2(row, k);
  if constexpr (S == QScheme::Binary) return 2 * qm::get_q1(row, k);
  return 0;
}

template <QScheme S>
void uniform_ref(const UArgs& u, int64_t N, int64_t T, float* y, int64_t ldy) {
  const ActQ& a = *u.a;
  for (int64_t n = 0; n < N; ++n) {
    const uint8_t* row = u.codes + n * u.rb;
    for (int64_t t = 0; t < T; ++t) {
      const int8_t* xq = a.q.data() + t * a.Kp;
      float acc = 0;
      for (int64_t b = 0; b < a.nb; ++b) {
        const int64_t g = u.gidx[b];
        const float sw = u.scales[n * u.groups + g];
        const int z = u.zeros ? u.zeros[n * u.groups + g] : zero_code(S);
        int32_t dot = -z * a.s[size_t(t * a.nb + b)];  // Σ (u - z) q = Σ u q - z Σ q
        for (int64_t k = b * a.QA; k < std::min(a.Kp, (b + 1) * a.QA); ++k)
          dot += code_u<S>(row, k) * xq[k];
        acc += float(dot) * (sw * a.d[size_t(t * a.nb + b)]);
      }
      y[t * ldy + n] = acc;
    }
  }
}

void nf4_ref(const NArgs& w, const float* x, int64_t T, int64_t ldx, float* y, int64_t ldy,
             int64_t N) {
  for (int64_t n = 0; n < N; ++n) {
    const uint8_t* row = w.codes + n * w.rb;
    for (int64_t t = 0; t < T; ++t) {
      const float* xr = x + t * ldx;
      float acc = 0;
      for (int64_t g = 0; g < w.groups; ++g) {
        const float s = w.scale(n, g);
        for (int64_t k = g * w.G; k < std::min(w.K, (g + 1) * w.G); ++k)
          acc += (s * qm::nf4_value(qm::get_q4(row, k))) * xr[k];
      }
      y[t * ldy + n] = acc;
    }
  }
}

void uniform_ref_any(QScheme s, const UArgs& u, int64_t N, int64_t T, float* y, int64_t ldy) {
  switch (s) {
    case QScheme::Int8:
      uniform_ref<QScheme::Int8>(u, N, T, y, ldy);
      break;
    case QScheme::Int4:
      uniform_ref<QScheme::Int4>(u, N, T, y, ldy);
      break;
    case QScheme::Binary:
      uniform_ref<QScheme::Binary>(u, N, T, y, ldy);
      break;
    case QScheme::Ternary:
      uniform_ref<QScheme::Ternary>(u, N, T, y, ldy);
      break;
    case QScheme::NF4:
      MINFER_FAIL("internal: nf4 has no integer kernel");
  }
}

#if defined(MINFER_Q_AVX512) || defined(MINFER_Q_AVX2)
// Scratch of the calling thread, reused across calls (kernel workers only read it).
struct Scratch {
  ActQ act;
  std::vector<int32_t> gidx;
};
Scratch& scratch() {
  thread_local Scratch s;
  return s;
}
#endif

}  // namespace

const char* quantized_linear_isa() {
#if defined(MINFER_Q_AVX512) || defined(MINFER_Q_AVX2)
  return kSimdIsa;
#else
  return "scalar";
#endif
}

void quantize_activations(const float* x, int64_t T, int64_t ldx, int64_t K, int QA, int8_t* q,
                          float* d, int32_t* s) {
  MINFER_CHECK(QA == 32 || QA == 64 || QA == 128, "quantize_activations: block {} not 32/64/128",
               QA);
#if defined(MINFER_Q_AVX512) || defined(MINFER_Q_AVX2)
  simd_quantize_activations(x, T, ldx, K, QA, q, d, s);
#else
  quantize_activations_ref(x, T, ldx, K, QA, q, d, s);
#endif
}

void quantized_linear_ref(const Quantized& w, const float* x, int64_t T, int64_t ldx, float* y,
                          int64_t ldy, int64_t K, int64_t N) {
  check_call(w, T, ldx, ldy, K, N);
  if (T == 0) return;
  if (w.scheme == QScheme::NF4) {
    nf4_ref(nf4_args(w, K), x, T, ldx, y, ldy, N);
    return;
  }
  ActQ a;
  std::vector<int32_t> gidx;
  const int QA = qm::act_block(w.group, K);
  size_act(a, T, K, QA);
  quantize_activations_ref(x, T, ldx, K, QA, a.q.data(), a.d.data(), a.s.data());
  uniform_ref_any(w.scheme, uniform_args(w, a, gidx, K), N, T, y, ldy);
}

void quantized_linear(const Quantized& w, const float* x, int64_t T, int64_t ldx, float* y,
                      int64_t ldy, int64_t K, int64_t N) {
#if defined(MINFER_Q_AVX512) || defined(MINFER_Q_AVX2)
  check_call(w, T, ldx, ldy, K, N);
  if (T == 0) return;
  if (w.scheme == QScheme::NF4) {
    simd_nf4_linear(nf4_args(w, K), x, T, ldx, y, ldy, N);
    return;
  }
  Scratch& sc = scratch();
  const int QA = qm::act_block(w.group, K);
  size_act(sc.act, T, K, QA);
  simd_quantize_activations(x, T, ldx, K, QA, sc.act.q.data(), sc.act.d.data(), sc.act.s.data());
  const int z = w.asymmetric ? 1 : zero_code(w.scheme);
  simd_lane_sums(sc.act, T, z == 128 ? 7 : z == 8 ? 3 : 0);
  simd_int_linear(w.scheme, w.asymmetric, uniform_args(w, sc.act, sc.gidx, K), N, T, y, ldy);
#else
  quantized_linear_ref(w, x, T, ldx, y, ldy, K, N);
#endif
}

}  // namespace minfer
