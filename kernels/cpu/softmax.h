// Softmax rows for attention: a vectorized exp (AVX2 + FMA where the build targets it, also on
// AVX-512 machines: a 16-lane version was not kept because it could not be run where it was
// written; the scalar twin elsewhere) and the row softmax the CPU backend's attention and softmax
// op share. Legend: n = values in a row.
//
// exp(x), the classic single-precision scheme (Cody & Waite range reduction, as in Cephes expf):
// x = k ln2 + r with k = round(x / ln2), |r| <= ln2 / 2, ln2 split into a part exact in f32 and a
// small remainder so that k ln2 is subtracted without rounding error; e^r by a degree-6
// polynomial (Cephes expf's minimax coefficients for e^r on [-ln2/2, ln2/2]); 2^k put into the
// exponent bits. Relative error within a few ulp of std::exp on [-87.3, 88.7]
// (tests/test_ops.cpp); x below ln(FLT_MIN) = -87.34 (the denormal range, and -inf: a masked
// score) gives 0, x above 88.72 gives +inf, NaN stays NaN.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#endif

namespace minfer {

namespace softmax_detail {
constexpr float kLog2e = 1.44269504088896341f;
constexpr float kLn2Hi = 0.693359375f;  // 355/512: k * kLn2Hi is exact for |k| < 2^15
constexpr float kLn2Lo = -2.12194440e-4f;
constexpr float kMaxX = 88.7228391f;   // ln(FLT_MAX)
constexpr float kMinX = -87.3365448f;  // ln(FLT_MIN): below, the result would be denormal
// e^r ≈ 1 + r + r² (c5 + r (c4 + r (c3 + r (c2 + r (c1 + r c0))))) (Cephes expf).
constexpr float kC0 = 1.9875691500e-4f, kC1 = 1.3981999507e-3f, kC2 = 8.3334519073e-3f,
                kC3 = 4.1665795894e-2f, kC4 = 1.6666665459e-1f, kC5 = 5.0000001201e-1f;
}  // namespace softmax_detail

// exp(x) in f32 by the scheme above, one value (the scalar twin of the SIMD lanes).
inline float exp_f32(float x) {
  using namespace softmax_detail;
  if (!(x >= kMinX)) return x != x ? x : 0.f;  // NaN stays NaN; below ln(FLT_MIN) (and -inf): 0
  if (x > kMaxX) return INFINITY;
  const float k = std::nearbyint(x * kLog2e);
  const float r = std::fma(k, -kLn2Lo, std::fma(k, -kLn2Hi, x));
  float p = kC0;
  p = std::fma(p, r, kC1);
  p = std::fma(p, r, kC2);
  p = std::fma(p, r, kC3);
  p = std::fma(p, r, kC4);
  p = std::fma(p, r, kC5);
  const float e = std::fma(p, r * r, r) + 1.f;
  // 2^k as 2^h * 2^(k - h), h = floor(k / 2): both factors normal for k in [-126, 128].
  const int ki = int(k), h = ki >> 1;
  uint32_t b1 = uint32_t(h + 127) << 23, b2 = uint32_t(ki - h + 127) << 23;
  float s1, s2;
  std::memcpy(&s1, &b1, 4);
  std::memcpy(&s2, &b2, 4);
  return e * s1 * s2;
}

#if defined(__AVX2__) && defined(__FMA__)
// 8 lanes of exp_f32.
inline __m256 exp_f32x8(__m256 x) {
  using namespace softmax_detail;
  const __m256 under = _mm256_cmp_ps(x, _mm256_set1_ps(kMinX), _CMP_LT_OQ);
  const __m256 over = _mm256_cmp_ps(x, _mm256_set1_ps(kMaxX), _CMP_GT_OQ);
  const __m256 nan = _mm256_cmp_ps(x, x, _CMP_UNORD_Q);
  const __m256 xc = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(kMinX)), _mm256_set1_ps(kMaxX));
  const __m256 k = _mm256_round_ps(_mm256_mul_ps(xc, _mm256_set1_ps(kLog2e)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(k, _mm256_set1_ps(kLn2Hi), xc);
  r = _mm256_fnmadd_ps(k, _mm256_set1_ps(kLn2Lo), r);
  __m256 p = _mm256_set1_ps(kC0);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(kC1));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(kC2));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(kC3));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(kC4));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(kC5));
  const __m256 e = _mm256_add_ps(_mm256_fmadd_ps(p, _mm256_mul_ps(r, r), r), _mm256_set1_ps(1.f));
  const __m256i ki = _mm256_cvtps_epi32(k), h = _mm256_srai_epi32(ki, 1);
  const __m256i b1 = _mm256_slli_epi32(_mm256_add_epi32(h, _mm256_set1_epi32(127)), 23);
  const __m256i b2 =
      _mm256_slli_epi32(_mm256_add_epi32(_mm256_sub_epi32(ki, h), _mm256_set1_epi32(127)), 23);
  __m256 y = _mm256_mul_ps(_mm256_mul_ps(e, _mm256_castsi256_ps(b1)), _mm256_castsi256_ps(b2));
  y = _mm256_andnot_ps(under, y);
  y = _mm256_blendv_ps(y, _mm256_set1_ps(INFINITY), over);
  return _mm256_blendv_ps(y, x, nan);
}
#endif

// y[i] = exp(x[i] - mx) for i < n (y may be x); returns Σ y[i], summed in f32.
inline float exp_shift_sum(const float* x, float* y, int64_t n, float mx) {
  int64_t i = 0;
  float sum = 0.f;
#if defined(__AVX2__) && defined(__FMA__)
  const __m256 m = _mm256_set1_ps(mx);
  __m256 acc = _mm256_setzero_ps();
  for (; i + 8 <= n; i += 8) {
    const __m256 e = exp_f32x8(_mm256_sub_ps(_mm256_loadu_ps(x + i), m));
    _mm256_storeu_ps(y + i, e);
    acc = _mm256_add_ps(acc, e);
  }
  alignas(32) float l[8];
  _mm256_store_ps(l, acc);
  sum = ((l[0] + l[4]) + (l[1] + l[5])) + ((l[2] + l[6]) + (l[3] + l[7]));
#endif
  for (; i < n; ++i) sum += (y[i] = exp_f32(x[i] - mx));
  return sum;
}

// y = softmax(x) over n values (y may be x). A row whose values are all -inf (every key masked)
// gives zeros: it attends to nothing.
inline void softmax_row(const float* x, float* y, int64_t n) {
  float mx = -INFINITY;
  for (int64_t i = 0; i < n; ++i) mx = std::max(mx, x[i]);
  if (mx == -INFINITY) {
    std::fill(y, y + n, 0.f);
    return;
  }
  const float inv = 1.f / exp_shift_sum(x, y, n, mx);
  for (int64_t i = 0; i < n; ++i) y[i] *= inv;
}

}  // namespace minfer
