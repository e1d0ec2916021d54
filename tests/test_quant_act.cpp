// W8A8 and LLM.int8(): the integer core against an independent int64 product (exact), the SIMD
// path against the scalar reference, both against "dequantize, then f64 matmul" with the error
// bound of per-token int8 activations (|x - x̂| <= d / 2 on the int8 columns, the outlier columns
// exact), static-scale saturation, the outlier split (which columns, which weights), and the
// claim that motivates LLM.int8(): with an outlier feature its error is far below W8A8's.
// Odd sizes (K and N not multiples of 16 / 64, T = 1, 3, 17, 130) and adversarial rows.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "compress/quantize.h"
#include "engine/backend.h"
#include "engine/half.h"
#include "kernels/common/quant_math.h"
#include "kernels/cpu/quant_act.h"

using namespace minfer;

namespace {

constexpr double kEps = 5.960464477539063e-08;  // 2^-24

Linear dense_of(const std::vector<float>& w, int64_t N, int64_t K) {
  Tensor t = Tensor::empty(DType::F32, {N, K});
  std::memcpy(t.data<float>(), w.data(), w.size() * 4);
  return make_dense("test.weight", t, K, N);
}

std::vector<float> randn(int64_t n, uint64_t seed, float std = 1.f) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> nd(0.f, std);
  std::vector<float> v(static_cast<size_t>(n));
  for (auto& x : v) x = nd(rng);
  return v;
}

// T rows of ldx floats; row kinds rotate: N(0,1), all zero, ±0 with small values, subnormals
// only, one huge value (|x| = 3e4) in one column, a wide dynamic range, N(0,1) with |x| in the
// 6..20 range at two columns (LLM.int8() outliers).
std::vector<float> act_rows(int64_t T, int64_t ldx, int64_t K, uint64_t seed, bool adversarial) {
  std::vector<float> x = randn(T * ldx, seed);
  if (!adversarial) return x;
  std::mt19937_64 rng(seed * 7 + 1);
  for (int64_t t = 0; t < T; ++t) {
    float* r = x.data() + t * ldx;
    switch ((t + int64_t(seed)) % 7) {
      case 0:
        break;
      case 1:
        std::fill(r, r + K, 0.f);
        break;
      case 2:
        for (int64_t k = 0; k < K; ++k) r[k] = k % 3 == 0 ? 0.f : k % 3 == 1 ? -0.f : r[k] * 1e-3f;
        break;
      case 3:
        for (int64_t k = 0; k < K; ++k) r[k] *= 1e-39f;
        break;
      case 4:
        r[int64_t(rng() % uint64_t(K))] = (rng() & 1) ? 3e4f : -3e4f;
        break;
      case 5:
        for (int64_t k = 0; k < K; ++k) r[k] *= std::ldexp(1.f, int(k % 40) - 20);
        break;
      case 6:
        r[K / 3] = 9.f;
        r[K - 1] = -17.f;
        break;
    }
  }
  return x;
}

// Σ_{k in cols} ŵ[n, k] x[k] (f64) and Σ |ŵ| over the same columns.
struct Part {
  double y = 0, wabs = 0, mag = 0;
};
Part part(const float* W, const float* xr, int64_t K, int64_t n, const std::vector<char>& in_set,
          bool in) {
  Part p;
  for (int64_t k = 0; k < K; ++k) {
    if (bool(in_set[size_t(k)]) != in) continue;
    const double w = W[n * K + k], x = xr[k];
    p.y += w * x;
    p.wabs += std::fabs(w);
    p.mag += std::fabs(w * x);
  }
  return p;
}

double max_abs(const float* xr, int64_t K, const std::vector<char>& skip) {
  double m = 0;
  for (int64_t k = 0; k < K; ++k)
    if (!skip[size_t(k)]) m = std::max(m, std::fabs(double(xr[k])));
  return m;
}

// Bound on |y - (exact outlier part + Σ ŵ x)| when x is replaced by d q on the int8 columns:
// d / 2 per element (+0.1%: f32 rounding of d and of 127 / max), subnormal d's absolute step,
// f32 rounding of the int32 -> f32 conversion, d * s, the product and the outlier sum.
double int8_bound(double d, const Part& in, const Part& out, int64_t m) {
  return in.wabs * (d / 2 * 1.001 + 128 * std::ldexp(1.0, -149)) +
         8 * kEps * (in.mag + in.wabs * d) + (m + 8) * kEps * out.mag + 1e-37;
}

bool close_f32(float a, float b) {
  if (std::isnan(a) || std::isnan(b)) return std::isnan(a) && std::isnan(b);
  return std::fabs(double(a) - double(b)) <= 4 * kEps * std::fabs(double(b)) + 1e-38;
}

}  // namespace

TEST_CASE("quant-act: matmul_i8_i8_i32 is exact (GEMM and GEMV paths, extremes, wrap-around)") {
  MESSAGE("w8a8 / llm-int8 path in this build: ", std::string(act_linear_isa()));
  std::mt19937_64 rng(11);
  struct Shape {
    int64_t T, Kp, N;
  };
  for (const Shape s : {Shape{1, 64, 1}, Shape{3, 128, 17}, Shape{7, 576, 65}, Shape{8, 64, 16},
                        Shape{17, 192, 130}, Shape{130, 640, 67}, Shape{13, 1536, 64}}) {
    CAPTURE(s.T);
    CAPTURE(s.Kp);
    CAPTURE(s.N);
    const int64_t rb = s.Kp + 64, ldc = s.N + 3;  // a wider code row than Kp, a padded C row
    std::vector<int8_t> xq(size_t(s.T * s.Kp));
    std::vector<uint8_t> codes(size_t(s.N * rb));
    for (auto& v : xq) v = int8_t(int(rng() % 255) - 127);
    for (auto& v : codes) v = uint8_t(1 + rng() % 255);
    // Extremes: x rows of +127, -127 and alternating ±127 codes; weight rows of u = 255, u = 1
    // (q = ±127), u = 0 (q = -128, the one code whose negation leaves int8) and alternating
    // u = 255 / 1 / 0: every int16 pair of a maddubs-based kernel at its largest magnitude.
    for (int64_t t = 0; t < std::min<int64_t>(s.T, 3); ++t)
      for (int64_t k = 0; k < s.Kp; ++k)
        xq[size_t(t * s.Kp + k)] = int8_t(t == 0 ? 127 : t == 1 ? -127 : (k % 2 ? 127 : -127));
    const uint8_t row_code[4][3] = {{255, 255, 255}, {1, 1, 1}, {0, 0, 0}, {255, 1, 0}};
    for (int64_t n = 0; n < std::min<int64_t>(s.N, 4); ++n)
      for (int64_t k = 0; k < rb; ++k) codes[size_t(n * rb + k)] = row_code[n][k % 3];
    std::vector<int32_t> c(size_t(s.T * ldc), -7), cr(size_t(s.T * ldc), -7);
    matmul_i8_i8_i32(xq.data(), s.T, s.Kp, codes.data(), rb, s.N, c.data(), ldc);
    matmul_i8_i8_i32_ref(xq.data(), s.T, s.Kp, codes.data(), rb, s.N, cr.data(), ldc);
    int bad = 0;
    for (int64_t t = 0; t < s.T; ++t)
      for (int64_t n = 0; n < s.N; ++n) {
        int64_t e = 0;
        for (int64_t k = 0; k < s.Kp; ++k)
          e += int64_t(xq[size_t(t * s.Kp + k)]) * (int64_t(codes[size_t(n * rb + k)]) - 128);
        bad += c[size_t(t * ldc + n)] != e || cr[size_t(t * ldc + n)] != e;
      }
    CHECK(bad == 0);
    for (int64_t t = 0; t < s.T; ++t) CHECK(c[size_t(t * ldc + s.N)] == -7);  // ldc padding
  }
  // Kp = 2^17 at full scale: Σ u x = 255 * 127 * 2^17 overflows int32, Σ q x = ±127² 2^17 and
  // 128 * 127 * 2^17 (q = -128) do not; the sums must still be exact. Tokens alternate x = ±127.
  const int64_t Kp = int64_t(1) << 17;
  for (int64_t T : {1, 8, 9}) {
    CAPTURE(T);
    std::vector<int8_t> xq(size_t(T * Kp));
    for (int64_t t = 0; t < T; ++t)
      std::fill(xq.begin() + t * Kp, xq.begin() + (t + 1) * Kp, int8_t(t % 2 ? -127 : 127));
    std::vector<uint8_t> codes(size_t(3 * Kp), uint8_t(255));
    std::fill(codes.begin() + Kp, codes.begin() + 2 * Kp, uint8_t(1));
    std::fill(codes.begin() + 2 * Kp, codes.end(), uint8_t(0));
    std::vector<int32_t> c(size_t(T * 3));
    matmul_i8_i8_i32(xq.data(), T, Kp, codes.data(), Kp, 3, c.data(), 3);
    for (int64_t t = 0; t < T; ++t) {
      const int64_t x = t % 2 ? -127 : 127;
      CHECK(c[size_t(3 * t)] == x * 127 * Kp);
      CHECK(c[size_t(3 * t + 1)] == -x * 127 * Kp);
      CHECK(c[size_t(3 * t + 2)] == -x * 128 * Kp);
    }
  }
  std::vector<int32_t> c(4);
  std::vector<int8_t> xq(64);
  std::vector<uint8_t> codes(64);
  CHECK_THROWS_AS(matmul_i8_i8_i32(xq.data(), 1, 60, codes.data(), 64, 1, c.data(), 1), Error);
}

TEST_CASE("quant-act: per-token quantizer matches its scalar definition (dynamic and static)") {
  const int64_t T = 14, K = 203, ldx = 211, Kp = qm::padded_k(K);
  std::vector<float> x = act_rows(T, ldx, K, 3, true);
  x[size_t(12 * ldx + 5)] = std::numeric_limits<float>::infinity();
  x[size_t(13 * ldx + 200)] = std::numeric_limits<float>::quiet_NaN();
  for (float scale : {0.f, 0.02f, 1e-39f}) {
    CAPTURE(scale);
    std::vector<int8_t> q(size_t(T * Kp), 99), qr(size_t(T * Kp));
    std::vector<float> d(static_cast<size_t>(T)), dr(static_cast<size_t>(T));
    std::vector<int32_t> s(static_cast<size_t>(T)), sr(static_cast<size_t>(T));
    quantize_act_rows(x.data(), T, ldx, K, scale, q.data(), d.data(), s.data());
    for (int64_t t = 0; t < T; ++t) {
      const float* xr = x.data() + t * ldx;
      if (scale > 0)
        qm::quantize_act_static(xr, int(K), int(Kp), scale, qr.data() + t * Kp, &dr[size_t(t)],
                                &sr[size_t(t)]);
      else
        qm::quantize_act_block(xr, int(K), int(Kp), qr.data() + t * Kp, &dr[size_t(t)],
                               &sr[size_t(t)]);
    }
    CHECK(q == qr);
    CHECK(s == sr);
    for (int64_t t = 0; t < T; ++t) {
      CAPTURE(t);
      CHECK((d[size_t(t)] == dr[size_t(t)] ||
             (std::isnan(d[size_t(t)]) && std::isnan(dr[size_t(t)]))));
      // Codes follow the definition; the padding is 0.
      int32_t sum = 0;
      for (int64_t k = 0; k < Kp; ++k) sum += q[size_t(t * Kp + k)];
      CHECK(sum == s[size_t(t)]);
      for (int64_t k = K; k < Kp; ++k) CHECK(q[size_t(t * Kp + k)] == 0);
    }
    CHECK(std::isnan(d[12]));  // inf / NaN rows are poisoned, never a plausible scale
    CHECK(std::isnan(d[13]));
    if (scale == 0.02f) {
      // Static saturation: row 4 + seed 3 holds a ±3e4 value -> code ±127; |x| < 2.54 rounds.
      const float* xr = x.data();
      for (int64_t k = 0; k < K; ++k) {
        const double r = std::clamp(double(xr[k]) / 0.02, -127.0, 127.0);
        CHECK(std::fabs(q[size_t(k)] - r) <= 0.5);
      }
      bool saturated = false;
      for (int64_t t = 0; t < 12; ++t)
        for (int64_t k = 0; k < K; ++k)
          if (std::fabs(x[size_t(t * ldx + k)]) > 1000.f)
            saturated = saturated || std::abs(q[size_t(t * Kp + k)]) == 127;
      CHECK(saturated);
    }
  }
}

TEST_CASE("w8a8: kernel = scalar ref, both within the int8 bound of dequantize + f64 matmul") {
  struct Shape {
    int64_t K, N;
  };
  for (const Shape sh : {Shape{31, 5}, Shape{200, 67}, Shape{576, 19}, Shape{1000, 64}})
    for (int data = 0; data < 2; ++data)
      for (ActScale mode : {ActScale::Dynamic, ActScale::Static}) {
        const int64_t K = sh.K, N = sh.N;
        const float sa = 0.015f;  // static scale: |x| > 1.9 saturates
        const Linear l = quantize_w8a8(dense_of(randn(N * K, uint64_t(K + N), 0.05f), N, K), mode,
                                       mode == ActScale::Static ? sa : 0.f);
        const W8A8& w = std::get<W8A8>(l.repr);
        const Tensor wh = dequantize_weight(l);
        const float* W = wh.data<float>();
        for (int64_t T : {1, 3, 17, 130}) {
          CAPTURE(K);
          CAPTURE(N);
          CAPTURE(T);
          CAPTURE(data);
          CAPTURE(int(mode));
          const int64_t ldx = K + 3, ldy = N + 2;
          std::vector<float> x = act_rows(T, ldx, K, uint64_t(T * 5 + K), data == 1);
          std::vector<float> y(size_t(T * ldy), -1.f), yr(size_t(T * ldy), -2.f);
          w8a8_linear(w, x.data(), T, ldx, y.data(), ldy, K, N);
          w8a8_linear_ref(w, x.data(), T, ldx, yr.data(), ldy, K, N);
          int bad = 0, bad_ref = 0;
          const std::vector<char> none(size_t(K), 0);
          for (int64_t t = 0; t < T; ++t) {
            // Static: the oracle multiplies the saturated x (clamped to ±127 s).
            std::vector<float> xc(x.begin() + t * ldx, x.begin() + t * ldx + K);
            if (mode == ActScale::Static)
              for (float& v : xc) v = std::clamp(v, -127 * sa, 127 * sa);
            const double d =
                mode == ActScale::Static ? double(sa) : max_abs(xc.data(), K, none) / 127;
            for (int64_t n = 0; n < N; ++n) {
              const Part p = part(W, xc.data(), K, n, none, false), o;
              const double bound = int8_bound(d, p, o, 0);
              const float got = y[size_t(t * ldy + n)], ref = yr[size_t(t * ldy + n)];
              if (!close_f32(got, ref) && bad_ref++ < 3)
                MESSAGE("t ", t, " n ", n, ": kernel ", got, " ref ", ref);
              if (!(std::fabs(ref - p.y) <= bound) && bad++ < 3)
                MESSAGE("t ", t, " n ", n, ": ref ", ref, " exact ", p.y, " bound ", bound);
            }
          }
          CHECK(bad_ref == 0);
          CHECK(bad == 0);
          for (int64_t t = 0; t < T; ++t) CHECK(y[size_t(t * ldy + N)] == -1.f);
        }
      }
}

TEST_CASE("w8a8: a token's output does not depend on its batch (GEMM = GEMV path)") {
  const int64_t K = 320, N = 70, T = 130;
  const Linear l = quantize_w8a8(dense_of(randn(N * K, 21), N, K), ActScale::Dynamic);
  const W8A8& w = std::get<W8A8>(l.repr);
  const std::vector<float> x = act_rows(T, K, K, 4, true);
  std::vector<float> y(size_t(T * N)), y1(static_cast<size_t>(N));
  w8a8_linear(w, x.data(), T, K, y.data(), N, K, N);
  for (int64_t t : {0, 5, 77, 129}) {
    w8a8_linear(w, x.data() + t * K, 1, K, y1.data(), N, K, N);
    CHECK(std::equal(y1.begin(), y1.end(), y.begin() + t * N));
  }
}

TEST_CASE("w8a8: static scale saturates, dynamic follows the row's range") {
  const int64_t K = 64, N = 3;
  std::vector<float> wv(size_t(N * K), 0.f);
  for (int64_t n = 0; n < N; ++n) wv[size_t(n * K + 10)] = float(n + 1);  // ŵ exact: ±127 codes
  const Linear ls = quantize_w8a8(dense_of(wv, N, K), ActScale::Static, 0.5f);
  const Linear ld = quantize_w8a8(dense_of(wv, N, K), ActScale::Dynamic);
  std::vector<float> x(size_t(K), 0.f);
  x[10] = 1000.f;  // far past 127 * 0.5 = 63.5
  std::vector<float> y(static_cast<size_t>(N));
  w8a8_linear(std::get<W8A8>(ls.repr), x.data(), 1, K, y.data(), N, K, N);
  for (int64_t n = 0; n < N; ++n) CHECK(y[size_t(n)] == doctest::Approx(63.5 * (n + 1)));
  w8a8_linear(std::get<W8A8>(ld.repr), x.data(), 1, K, y.data(), N, K, N);
  for (int64_t n = 0; n < N; ++n) CHECK(y[size_t(n)] == doctest::Approx(1000.0 * (n + 1)));
  x[10] = -0.2f;  // static: rounds to code 0
  w8a8_linear(std::get<W8A8>(ls.repr), x.data(), 1, K, y.data(), N, K, N);
  for (int64_t n = 0; n < N; ++n) CHECK(y[size_t(n)] == 0.f);
}

TEST_CASE("llm-int8: outlier split, kernel = scalar ref, both within the bound of the oracle") {
  struct Shape {
    int64_t K, N;
  };
  for (const Shape sh : {Shape{31, 5}, Shape{200, 67}, Shape{576, 19}, Shape{1000, 64}})
    for (int calib = 0; calib < 2; ++calib)
      for (int data = 0; data < 2; ++data) {
        const int64_t K = sh.K, N = sh.N;
        const float thr = 6.f;
        // Calibration statistics list K/3 (also an outlier at run time in adversarial data),
        // 2 (never reaches the threshold at run time) and K-1.
        std::vector<float> absmax(size_t(K), 1.f);
        absmax[2] = 7.f;
        absmax[size_t(K / 3)] = 30.f;
        absmax[size_t(K - 1)] = 6.f;  // >= threshold counts
        const Linear dense = dense_of(randn(N * K, uint64_t(K * 3 + N), 0.05f), N, K);
        const Linear l = quantize_llm_int8(dense, thr, calib ? &absmax : nullptr);
        const Int8WithOutliers& w = std::get<Int8WithOutliers>(l.repr);
        const int64_t nl = w.outlier_cols.numel();
        CHECK(nl == (calib ? 3 : 0));
        const Tensor wh = dequantize_weight(l);
        const float* W = wh.data<float>();
        if (calib) {
          // Listed columns: the f16 copy of the original weight; others: int8 dequantized.
          const float* W0 = std::get<Dense>(dense.repr).w.data<float>();
          for (int64_t n = 0; n < N; ++n) {
            CHECK(W[n * K + 2] == f16_to_f32(f32_to_f16(W0[n * K + 2])));
            CHECK(W[n * K + K - 1] == f16_to_f32(f32_to_f16(W0[n * K + K - 1])));
          }
        }
        for (int64_t T : {1, 3, 17, 130}) {
          CAPTURE(K);
          CAPTURE(N);
          CAPTURE(T);
          CAPTURE(calib);
          CAPTURE(data);
          const int64_t ldx = K + 3, ldy = N + 2;
          std::vector<float> x = act_rows(T, ldx, K, uint64_t(T * 5 + K), data == 1);
          // The outlier set, recomputed: listed features, and |x| >= threshold anywhere.
          std::vector<char> outl(size_t(K), 0);
          for (int64_t j = 0; j < nl; ++j) outl[size_t(w.outlier_cols.data<int32_t>()[j])] = 1;
          for (int64_t t = 0; t < T; ++t)
            for (int64_t k = 0; k < K; ++k)
              if (std::fabs(x[size_t(t * ldx + k)]) >= thr) outl[size_t(k)] = 1;
          const int64_t m = std::count(outl.begin(), outl.end(), 1);
          std::vector<float> y(size_t(T * ldy), -1.f), yr(size_t(T * ldy), -2.f);
          llm_int8_linear(w, x.data(), T, ldx, y.data(), ldy, K, N);
          llm_int8_linear_ref(w, x.data(), T, ldx, yr.data(), ldy, K, N);
          int bad = 0, bad_ref = 0;
          for (int64_t t = 0; t < T; ++t) {
            const float* xr = x.data() + t * ldx;
            const double d = max_abs(xr, K, outl) / 127;
            for (int64_t n = 0; n < N; ++n) {
              const Part pin = part(W, xr, K, n, outl, false), pout = part(W, xr, K, n, outl, true);
              const double e = pin.y + pout.y, bound = int8_bound(d, pin, pout, m);
              const float got = y[size_t(t * ldy + n)], ref = yr[size_t(t * ldy + n)];
              // Kernel vs ref: the same int8 part; the outlier part is an f32 sum in another
              // order (sgemm), so allow its rounding.
              const double tol =
                  4 * kEps * std::fabs(double(ref)) + (m + 4) * kEps * pout.mag + 1e-37;
              if (!(std::fabs(double(got) - double(ref)) <= tol) && bad_ref++ < 3)
                MESSAGE("t ", t, " n ", n, ": kernel ", got, " ref ", ref);
              if (!(std::fabs(ref - e) <= bound) && bad++ < 3)
                MESSAGE("t ", t, " n ", n, ": ref ", ref, " exact ", e, " bound ", bound);
            }
          }
          CHECK(bad_ref == 0);
          CHECK(bad == 0);
          for (int64_t t = 0; t < T; ++t) CHECK(y[size_t(t * ldy + N)] == -1.f);
        }
      }
}

TEST_CASE("llm-int8: with an outlier feature its error is far below W8A8's") {
  // The effect the paper is about (Dettmers et al. 2022, section 3-4): one feature of magnitude
  // ~60 in a few tokens sets the absmax of those rows, and int8 steps of 60 / 127 wipe out the
  // N(0, 1) features; LLM.int8() moves the feature to f32.
  const int64_t K = 512, N = 64, T = 16;
  const std::vector<float> wv = randn(N * K, 31, 0.05f);
  const Linear dense = dense_of(wv, N, K);
  std::vector<float> x = randn(T * K, 32);
  for (int64_t t : {2, 5, 11}) x[size_t(t * K + 7)] = t == 5 ? -60.f : 60.f;
  // Without statistics the outlier column's weights are the int8 ones (as in bitsandbytes), so
  // 60 x their rounding error remains; with calibration statistics listing feature 7 its f16
  // weights are used and the outlier rows are as accurate as the others.
  std::vector<float> absmax(size_t(K), 3.f);
  absmax[7] = 60.f;
  const Linear li = quantize_llm_int8(dense), lc = quantize_llm_int8(dense, 6.f, &absmax);
  const Linear la = quantize_w8a8(dense, ActScale::Dynamic);
  std::vector<float> yi(size_t(T * N)), yc(size_t(T * N)), ya(size_t(T * N));
  llm_int8_linear(std::get<Int8WithOutliers>(li.repr), x.data(), T, K, yi.data(), N, K, N);
  llm_int8_linear(std::get<Int8WithOutliers>(lc.repr), x.data(), T, K, yc.data(), N, K, N);
  w8a8_linear(std::get<W8A8>(la.repr), x.data(), T, K, ya.data(), N, K, N);
  // Sum of squared errors against the f64 product with the original weights, [outlier rows,
  // other rows] for each of llm-int8, llm-int8 calibrated, w8a8.
  double e[3][2] = {};
  for (int64_t t = 0; t < T; ++t)
    for (int64_t n = 0; n < N; ++n) {
      double ex = 0;
      for (int64_t k = 0; k < K; ++k) ex += double(wv[size_t(n * K + k)]) * x[size_t(t * K + k)];
      const int hit = t == 2 || t == 5 || t == 11 ? 0 : 1;
      e[0][hit] += std::pow(yi[size_t(t * N + n)] - ex, 2);
      e[1][hit] += std::pow(yc[size_t(t * N + n)] - ex, 2);
      e[2][hit] += std::pow(ya[size_t(t * N + n)] - ex, 2);
    }
  const std::string names[3] = {"llm-int8", "llm-int8 calibrated", "w8a8"};
  for (int i = 0; i < 3; ++i)
    MESSAGE(names[i], ": RMS error, rows with the outlier ", std::sqrt(e[i][0] / (3 * N)),
            ", other rows ", std::sqrt(e[i][1] / (13 * N)));
  CHECK(std::sqrt(e[0][0]) * 4 < std::sqrt(e[2][0]));
  CHECK(std::sqrt(e[1][0]) * 8 < std::sqrt(e[2][0]));
  CHECK(e[1][0] / 3 < 2 * e[1][1] / 13);  // calibrated: outlier rows no worse than the rest
  // Away from the outlier all three are int8 on the same columns.
  CHECK(std::sqrt(e[0][1]) < 1.5 * std::sqrt(e[2][1]));
}

TEST_CASE("quant-act: representation, storage and bad inputs") {
  const int64_t K = 100, N = 6;
  const Linear dense = dense_of(randn(N * K, 41), N, K);
  std::vector<float> absmax(size_t(K), 0.5f);
  absmax[3] = absmax[50] = 8.f;
  const Linear li = quantize_llm_int8(dense, 6.f, &absmax);
  const Int8WithOutliers& o = std::get<Int8WithOutliers>(li.repr);
  CHECK(o.w.scheme == QScheme::Int8);
  CHECK(o.w.group == K);
  CHECK(o.outlier_cols.numel() == 2);
  CHECK(o.outlier_cols.data<int32_t>()[1] == 50);
  CHECK(o.outlier_w.dtype() == DType::F16);
  // codes N x 128 + N f32 scales + 2 I32 columns + N x 2 f16 weights.
  CHECK(bits_per_weight(li) == doctest::Approx(double(N * 128 + 4 * N + 8 + 4 * N) * 8 / (N * K)));
  const Linear la = quantize_w8a8(dense, ActScale::Static, 0.1f);
  CHECK(bits_per_weight(la) == doctest::Approx(double(N * 128 + 4 * N) * 8 / (N * K)));
  // dequantize_weight of W8A8 = the int8 codes: error <= scale / 2 per row.
  const Distortion dd = measure(dense, la);
  CHECK(dd.rel_fro > 0);
  CHECK(dd.rel_fro < 0.01);

  CHECK_THROWS_WITH_AS(quantize_w8a8(dense, ActScale::Static, 0.f), doctest::Contains("> 0"),
                       Error);
  CHECK_THROWS_AS(quantize_w8a8(dense, ActScale::Static, NAN), Error);
  CHECK_THROWS_WITH_AS(quantize_llm_int8(dense, 0.f), doctest::Contains("threshold"), Error);
  std::vector<float> short_stats(10, 1.f);
  CHECK_THROWS_WITH_AS(quantize_llm_int8(dense, 6.f, &short_stats),
                       doctest::Contains("act_absmax has 10 values"), Error);
  CHECK_THROWS_AS(quantize_w8a8(la, ActScale::Dynamic), Error);  // not Dense

  Int8WithOutliers bad = o;
  bad.outlier_cols = o.outlier_cols.clone();
  bad.outlier_cols.data<int32_t>()[1] = 2;  // not ascending
  CHECK_THROWS_WITH_AS(FormatTraits<Int8WithOutliers>::check(bad, K, N, "x"),
                       doctest::Contains("ascending"), Error);
  bad = o;
  bad.threshold = -1.f;
  CHECK_THROWS_AS(FormatTraits<Int8WithOutliers>::check(bad, K, N, "x"), Error);
  bad = o;
  bad.outlier_w = Tensor::empty(DType::F32, {N, 2});
  CHECK_THROWS_WITH_AS(FormatTraits<Int8WithOutliers>::check(bad, K, N, "x"),
                       doctest::Contains("F16"), Error);
  W8A8 wb = std::get<W8A8>(la.repr);
  wb.act_scale = 0.f;
  CHECK_THROWS_AS(FormatTraits<W8A8>::check(wb, K, N, "x"), Error);
  QuantSpec s4;
  s4.method = "int4";
  s4.group = 32;
  wb.w = std::get<Quantized>(quantize_linear(dense, s4).repr);
  wb.act_scale = 1.f;
  CHECK_THROWS_WITH_AS(FormatTraits<W8A8>::check(wb, K, N, "x"), doctest::Contains("int8"), Error);
  std::vector<float> x(static_cast<size_t>(K)), y(static_cast<size_t>(N));
  CHECK_THROWS_AS(make_linear("x", K, N, wb), Error);
}

TEST_CASE("quant-act: non-finite activations poison only their own row") {
  const int64_t K = 200, N = 8, T = 3;
  const Linear dense = dense_of(randn(N * K, 3), N, K);
  const Linear ls[] = {quantize_w8a8(dense, ActScale::Dynamic),
                       quantize_w8a8(dense, ActScale::Static, 0.05f), quantize_llm_int8(dense)};
  for (const Linear& l : ls)
    for (float bad :
         {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity()}) {
      std::vector<float> x = randn(T * K, 4);
      x[size_t(K + 150)] = bad;
      std::vector<float> y(size_t(T * N));
      auto be = make_cpu_backend(2);
      Tensor xt = Tensor::empty(DType::F32, {T, K}), yt = Tensor::empty(DType::F32, {T, N});
      std::memcpy(xt.data<float>(), x.data(), x.size() * 4);
      be->linear(yt, xt, l);
      for (int64_t n = 0; n < N; ++n) {
        CHECK(std::isfinite(yt.data<float>()[n]));
        CHECK(!std::isfinite(yt.data<float>()[N + n]));
        CHECK(std::isfinite(yt.data<float>()[2 * N + n]));
      }
    }
}

TEST_CASE("quant-act: the CPU backend runs W8A8 and LLM.int8() linears with bias") {
  const int64_t K = 96, N = 10, T = 9;
  Tensor bias = Tensor::empty(DType::F32, {N});
  for (int64_t n = 0; n < N; ++n) bias.data<float>()[n] = float(n);
  Linear d = dense_of(randn(N * K, 8), N, K);
  d.bias = bias;
  std::vector<float> xv = randn(T * K, 9);
  xv[size_t(K + 4)] = 20.f;  // an outlier for LLM.int8()
  auto be = make_cpu_backend(2);
  Tensor x = Tensor::empty(DType::F32, {T, K}), y = Tensor::empty(DType::F32, {T, N});
  std::memcpy(x.data<float>(), xv.data(), xv.size() * 4);
  std::vector<float> yr(size_t(T * N));
  const Linear lw = quantize_w8a8(d, ActScale::Dynamic), li = quantize_llm_int8(d);
  CHECK(lw.bias.defined());
  CHECK(li.bias.defined());
  be->linear(y, x, lw);
  w8a8_linear_ref(std::get<W8A8>(lw.repr), xv.data(), T, K, yr.data(), N, K, N);
  for (int64_t i = 0; i < T * N; ++i)
    CHECK(y.data<float>()[i] == doctest::Approx(yr[size_t(i)] + float(i % N)).epsilon(1e-5));
  be->linear(y, x, li);
  llm_int8_linear_ref(std::get<Int8WithOutliers>(li.repr), xv.data(), T, K, yr.data(), N, K, N);
  for (int64_t i = 0; i < T * N; ++i)
    CHECK(y.data<float>()[i] == doctest::Approx(yr[size_t(i)] + float(i % N)).epsilon(1e-5));
}
