// The q8 path of int8 / int4 / NF4 weights (kernels/cpu/quant.h quantized_linear_q8): activations
// quantized per block of 32, integer dot products per 64-weight chunk (groups of an odd number of
// 32s, g32 / g96: each half chunk scaled by its own group). Checked here:
//   - the reference against the f64 product of the dequantized weights and the f32 x, within the
//     activation-rounding bound Σ_b d_b / 2 Σ_{j in b} |ŵ_j| (d_b = max|x_b| / 127 recomputed
//     here from its definition) plus f32 rounding; NF4 also rounds its levels to
//     round(8192 · value) / 8192, a relative change of at most δ (computed here from the NF4
//     table), so its bound adds Σ_j δ |ŵ_j x_j| and its weights in the first term grow by (1 + δ);
//   - the NF4 integer levels equal round(8192 · NF4 value) and split as 128 · hi + lo;
//   - the SIMD kernel against the reference (same codes, exact block sums; only the f32
//     combination order differs), row and interleaved layouts, odd K and N, T = 1..17;
//   - the dispatch: quantized_linear, op groups and the fused gate·up + SiLU·mul on the q8 path
//     equal quantized_linear_q8 bit for bit, on 1 and 3 threads;
//   - formats without the path are reported and rejected; an inf / NaN poisons only its token.
// Every case loops over q8_formats(), which holds groups on whole chunks (g64, g128, per row) and
// groups that split chunks (g32, g96, with and without zero points).
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "compress/quantize.h"
#include "engine/backend.h"
#include "engine/thread_pool.h"
#include "kernels/common/quant_math.h"
#include "kernels/cpu/act.h"
#include "kernels/cpu/quant.h"

using namespace minfer;

namespace {

std::vector<float> randn(int64_t n, uint64_t seed, float std = 1.f) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> nd(0.f, std);
  std::vector<float> v(static_cast<size_t>(n));
  for (auto& x : v) x = nd(rng);
  return v;
}

Linear quantized_of(const std::vector<float>& w, int64_t N, int64_t K, const QuantSpec& spec) {
  Tensor t = Tensor::empty(DType::F32, {N, K});
  std::memcpy(t.data<float>(), w.data(), w.size() * 4);
  return quantize_linear(make_dense("q8.weight", t, K, N, false), spec);
}

QuantSpec spec(const std::string& m, int g = 0, bool asym = false, bool per_channel = true) {
  QuantSpec q;
  q.method = m;
  q.group = g;
  q.asymmetric = asym;
  q.per_channel = per_channel;
  return q;
}

struct Fmt {
  const char* label;
  QuantSpec spec;
};
std::vector<Fmt> q8_formats() {
  QuantSpec dq = spec("nf4", 64);
  dq.double_quant = true;
  return {{"int8 per-channel", spec("int8")},
          {"int8 per-tensor", spec("int8", 0, false, false)},
          {"int8 g64", spec("int8", 64)},
          {"int8 g32", spec("int8", 32)},
          {"int4 g64", spec("int4", 64)},
          {"int4 g128", spec("int4", 128)},
          {"int4 g128 asym", spec("int4", 128, true)},
          {"int4 g32", spec("int4", 32)},
          {"int4 g32 asym", spec("int4", 32, true)},
          {"int4 g96 asym", spec("int4", 96, true)},
          {"nf4 b64", spec("nf4", 64)},
          {"nf4 b128", spec("nf4", 128)},
          {"nf4 b64 double-quant", dq}};
}

// The largest relative change |round(8192 v) / 8192 - v| / |v| over the nonzero NF4 values v.
double nf4_level_delta() {
  double m = 0;
  for (int i = 0; i < 16; ++i) {
    const double v = qm::nf4_value(i);
    if (v != 0) m = std::max(m, std::fabs(double(std::lround(8192 * v)) / 8192 - v) / std::fabs(v));
  }
  return m;
}

// MINFER_TEST_QUICK=1 (the aarch64 suite under qemu, the sanitizer runs): fewer token and thread
// counts, every format and shape (docs/ci.md). aarch64 has no SIMD q8 kernel: its q8 path is the
// reference, T <= 4 in one pass over W, larger T in tiles of 16 rows with tokens in groups of 4.
bool quick_run() {
  static const bool q = [] {
    const char* e = std::getenv("MINFER_TEST_QUICK");
    return e && std::string(e) == "1";
  }();
  return q;
}

// Restores the process-wide activation path when a test case ends.
struct ActPathGuard {
  QuantActPath saved = quantized_act_path();
  ~ActPathGuard() { set_quantized_act_path(saved); }
};

// Every 5th block of 32 of x gets an outlier 40x the rest (SmolLM2-like outlier features), and
// one block is all zero.
std::vector<float> activations(int64_t T, int64_t ldx, uint64_t seed) {
  std::vector<float> x = randn(T * ldx, seed);
  for (int64_t t = 0; t < T; ++t) {
    for (int64_t k = 7; k < ldx; k += 160) x[size_t(t * ldx + k)] = 40.f;
    for (int64_t k = 32; k < std::min<int64_t>(64, ldx); ++k) x[size_t(t * ldx + k)] = 0.f;
  }
  return x;
}

}  // namespace

TEST_CASE("quant q8: reference within the activation-rounding bound; SIMD equals it to f32 order") {
  ActPathGuard guard;
  struct Shape {
    int64_t K, N;
  };
  for (const Shape sh : {Shape{64, 4}, Shape{200, 36}, Shape{576, 37}, Shape{1536, 200}})
    for (const Fmt& f : q8_formats()) {
      const int64_t K = sh.K, N = sh.N;
      if (f.spec.group > 0 && f.spec.group >= K) continue;
      const Linear l = quantized_of(randn(N * K, uint64_t(K * 13 + N)), N, K, f.spec);
      const Quantized& q = std::get<Quantized>(l.repr);
      REQUIRE(quantized_has_q8_path(q, K));
      const Tensor wh = dequantize_weight(l);
      const float* W = wh.data<float>();
      const double delta = f.spec.method == "nf4" ? nf4_level_delta() : 0.0;
      std::vector<Quantized> layouts = {q};
      if (N % 4 == 0) layouts.push_back(quantized_interleave(q, 4));
      // Quick runs: T 1, 3 (decode), 5 (a group of 4 tokens and a remainder) and 8 (two whole
      // groups) instead of 1, 2, 3, 4, 5, 8, 17.
      const std::vector<int64_t> Ts = quick_run() ? std::vector<int64_t>{1, 3, 5, 8}
                                                  : std::vector<int64_t>{1, 2, 3, 4, 5, 8, 17};
      for (int64_t T : Ts) {
        const int64_t ldx = K + 3, ldy = N + 1;
        const std::vector<float> x = activations(T, ldx, uint64_t(T * 5 + K));
        std::vector<float> yr(size_t(T * ldy), -2.f);
        quantized_linear_q8_ref(q, x.data(), T, ldx, yr.data(), ldy, K, N);
        int bad_ref = 0, bad_simd = 0;
        for (int64_t t = 0; t < T; ++t)
          for (int64_t n = 0; n < N; ++n) {
            // The definition: d_b = max|x_b| / 127, |x_j - d_b q_j| <= d_b / 2.
            double exact = 0, bound = 0, mag = 0;
            for (int64_t b = 0; b * 32 < K; ++b) {
              double amax = 0, wsum = 0;
              for (int64_t k = b * 32; k < std::min(K, b * 32 + 32); ++k) {
                amax = std::max(amax, double(std::fabs(x[size_t(t * ldx + k)])));
                wsum += std::fabs(W[n * K + k]);
              }
              for (int64_t k = b * 32; k < std::min(K, b * 32 + 32); ++k) {
                const double xv = x[size_t(t * ldx + k)], wv = W[n * K + k];
                exact += wv * xv;
                mag += std::fabs(wv) * (std::fabs(xv) + amax / 127);
                bound += delta * std::fabs(wv * xv);
              }
              bound += amax / 127 / 2 * wsum * (1 + delta) * (1 + 1e-6);
            }
            const double fb = double(K + 64) * std::ldexp(1.0, -23) * mag + 1e-30;
            const double ref = yr[size_t(t * ldy + n)];
            if (!(std::fabs(ref - exact) <= bound + fb) && bad_ref++ < 3)
              MESSAGE(std::string(f.label), " K ", K, " N ", N, " T ", T, " t ", t, " n ", n,
                      ": ref ", ref, " exact ", exact, " bound ", bound + fb);
          }
        for (const Quantized& lq : layouts) {
          std::vector<float> y(size_t(T * ldy), -1.f);
          quantized_linear_q8(lq, x.data(), T, ldx, y.data(), ldy, K, N);
          for (int64_t t = 0; t < T; ++t) {
            CHECK(y[size_t(t * ldy + N)] == -1.f);  // the row stride's padding is not written
            for (int64_t n = 0; n < N; ++n) {
              double mag = 0;
              for (int64_t k = 0; k < K; ++k)
                mag += std::fabs(W[n * K + k]) * (std::fabs(x[size_t(t * ldx + k)]) + 1.f);
              const double got = y[size_t(t * ldy + n)], ref = yr[size_t(t * ldy + n)];
              if (!(std::fabs(got - ref) <= double(K + 64) * std::ldexp(1.0, -22) * mag) &&
                  bad_simd++ < 3)
                MESSAGE(std::string(f.label), " il ", lq.interleave, " K ", K, " N ", N, " T ", T,
                        " t ", t, " n ", n, ": kernel ", got, " reference ", ref);
            }
          }
        }
        CAPTURE(f.label);
        CAPTURE(K);
        CAPTURE(T);
        CHECK(bad_ref == 0);
        CHECK(bad_simd == 0);
      }
    }
}

TEST_CASE("quant q8: NF4 integer levels are round(8192 x the NF4 values), split 128 hi + lo") {
  CHECK(qm::kNF4LevelScale == 8192);
  for (int i = 0; i < 16; ++i) {
    CAPTURE(i);
    CHECK(qm::nf4_level(i) == std::lround(8192.0 * qm::nf4_value(i)));
    CHECK(qm::nf4_level(i) == 128 * qm::nf4_level_hi(i) + qm::nf4_level_lo(i));
    CHECK(qm::nf4_level_lo(i) >= 0);  // vpmaddubsw's unsigned operand
    CHECK(qm::nf4_level_lo(i) <= 127);
    CHECK(std::abs(qm::nf4_level_hi(i)) <= 64);
  }
  CHECK(nf4_level_delta() < 3e-4);  // index 8: 651.92 -> 652, the largest relative change
}

TEST_CASE("quant q8: dispatch, op groups and fused gate·up equal quantized_linear_q8 bit for bit") {
  ActPathGuard guard;
  const int saved_threads = pool_threads();
  const int64_t K = 576, N = 200;
  for (const Fmt& f : q8_formats()) {
    const Linear la = quantized_of(randn(N * K, 11), N, K, f.spec);
    const Linear lb = quantized_of(randn(N * K, 12), N, K, f.spec);
    const Quantized qa = quantized_interleave(std::get<Quantized>(la.repr), 4);
    const Quantized& qb = std::get<Quantized>(lb.repr);  // row layout: groups may mix layouts
    // Quick runs: 3 threads only (chunks of rows that cut through the interleaved groups).
    for (int threads : quick_run() ? std::vector<int>{3} : std::vector<int>{1, 3}) {
      set_pool_threads(threads);
      for (int64_t T : {1, 2, 3, 4}) {
        CAPTURE(f.label);
        CAPTURE(threads);
        CAPTURE(T);
        const std::vector<float> x = activations(T, K, uint64_t(T));
        std::vector<float> ya(size_t(T * N)), yb(size_t(T * N)), y1(size_t(T * N)),
            y2(size_t(T * N)), u(size_t(T * N));
        quantized_linear_q8(qa, x.data(), T, K, ya.data(), N, K, N);
        quantized_linear_q8(qb, x.data(), T, K, yb.data(), N, K, N);
        set_quantized_act_path(QuantActPath::Q8);
        quantized_linear(qa, x.data(), T, K, y1.data(), N, K, N);
        CHECK(y1 == ya);
        const QuantGroupItem items[2] = {{&qa, y1.data(), N, N}, {&qb, y2.data(), N, N}};
        quantized_linear_group(items, 2, x.data(), T, K, K);
        CHECK(y1 == ya);
        CHECK(y2 == yb);
        quantized_linear_swiglu(qa, qb, x.data(), T, K, y1.data(), N, u.data(), N, K, N);
        CHECK(u == yb);
        std::vector<float> expect = ya;
        for (size_t i = 0; i < expect.size(); ++i) expect[i] = silu_mul(ya[i], yb[i]);
        CHECK(y1 == expect);
        // Auto takes the q8 path at decode for int4 where the build has a SIMD q8 kernel for its
        // groups (AVX2: all; AVX-512 VNNI: groups on whole 64-weight chunks) and for NF4 and int8
        // on AVX2 (int8 keeps f32 activations elsewhere: equal to the F32 path).
        set_quantized_act_path(QuantActPath::Auto);
        quantized_linear(qa, x.data(), T, K, y1.data(), N, K, N);
        const std::string isa = quantized_linear_isa();
        const bool chunk_groups = f.spec.group == 0 || f.spec.group % 64 == 0;
        if ((isa == "avx2" &&
             (f.spec.method == "int4" || f.spec.method == "nf4" || f.spec.method == "int8")) ||
            (isa == "avx512" && f.spec.method == "int4" && chunk_groups))
          CHECK(y1 == ya);
        if (f.spec.method == "int8" && isa != "avx2") {
          std::vector<float> y0(size_t(T * N));
          set_quantized_act_path(QuantActPath::F32);
          quantized_linear(qa, x.data(), T, K, y0.data(), N, K, N);
          CHECK(y1 == y0);
        }
        set_quantized_act_path(QuantActPath::F32);
        quantized_linear(qa, x.data(), T, K, y1.data(), N, K, N);
        std::vector<float> yf(size_t(T * N));
        quantized_linear_ref(qa, x.data(), T, K, yf.data(), N, K, N);
        for (size_t i = 0; i < yf.size(); ++i)
          CHECK(std::fabs(y1[i] - yf[i]) <= 1e-4f * (1.f + std::fabs(yf[i])));
      }
    }
  }
  set_pool_threads(saved_threads);
}

TEST_CASE("quant q8: formats without the path; non-finite activations poison only their token") {
  ActPathGuard guard;
  const int64_t K = 200, N = 8;
  for (const QuantSpec& s : {spec("int3"), spec("int3", 32), spec("ternary"), spec("binary")}) {
    const Linear l = quantized_of(randn(N * K, 5), N, K, s);
    const Quantized& q = std::get<Quantized>(l.repr);
    CAPTURE(s.method);
    CAPTURE(s.group);
    CHECK_FALSE(quantized_has_q8_path(q, K));
    std::vector<float> x = randn(K, 1), y(N);
    CHECK_THROWS_WITH(quantized_linear_q8(q, x.data(), 1, K, y.data(), N, K, N),
                      doctest::Contains("no q8 path"));
    // Forcing q8 leaves such weights on the f32 path.
    set_quantized_act_path(QuantActPath::Q8);
    std::vector<float> yr(N);
    quantized_linear(q, x.data(), 1, K, y.data(), N, K, N);
    quantized_linear_ref(q, x.data(), 1, K, yr.data(), N, K, N);
    for (int64_t n = 0; n < N; ++n)
      CHECK(std::fabs(y[n] - yr[n]) <= 1e-4f * (1 + std::fabs(yr[n])));
  }
  const Linear l = quantized_of(randn(N * K, 6), N, K, spec("int8"));
  const Quantized& q = std::get<Quantized>(l.repr);
  for (float bad :
       {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity()}) {
    std::vector<float> x = randn(3 * K, 2), y(3 * N), yr(3 * N);
    x[size_t(K + 150)] = bad;  // token 1
    quantized_linear_q8(q, x.data(), 3, K, y.data(), N, K, N);
    quantized_linear_q8_ref(q, x.data(), 3, K, yr.data(), N, K, N);
    for (int64_t n = 0; n < N; ++n) {
      CHECK(std::isfinite(y[size_t(n)]));
      CHECK(std::isnan(y[size_t(N + n)]));
      CHECK(std::isnan(yr[size_t(N + n)]));
      CHECK(std::isfinite(y[size_t(2 * N + n)]));
    }
  }
}

TEST_CASE("quant q8: the activation quantizer equals qm::quantize_act_block per block of 32") {
  for (int64_t K : {1, 31, 32, 33, 64, 200, 576}) {
    const int64_t T = 3, ldx = K + 7, Kp = qm::padded_k(K);
    std::vector<float> x = randn(T * ldx, uint64_t(K));
    // Blocks of 32 with special contents: zeros, a NaN, an inf, tiny (< 2^-100), subnormal,
    // a huge outlier, values on a rounding midpoint of 127 / max.
    for (int64_t t = 0; t < T; ++t)
      for (int64_t b = 0; b * 32 < K; ++b) {
        float* xb = x.data() + t * ldx + b * 32;
        const int64_t n = std::min<int64_t>(32, K - b * 32);
        switch ((b + t) % 8) {
          case 1:
            for (int64_t j = 0; j < n; ++j) xb[j] = 0.f;
            break;
          case 2:
            xb[n / 2] = std::numeric_limits<float>::quiet_NaN();
            break;
          case 3:
            xb[0] = -std::numeric_limits<float>::infinity();
            break;
          case 4:
            for (int64_t j = 0; j < n; ++j) xb[j] *= 1e-32f;
            break;
          case 5:
            for (int64_t j = 0; j < n; ++j) xb[j] *= 1e-39f;
            break;
          case 6:
            xb[n - 1] = 3e4f;
            break;
          case 7:
            for (int64_t j = 0; j < n; ++j) xb[j] = float(j % 5) * 0.5f - 1.f;  // max 1: x·127
            break;
        }
      }
    std::vector<int8_t> q(size_t(T * Kp), 99);
    std::vector<float> d(size_t(T * Kp / 32));
    quantize_q8_activations(x.data(), T, ldx, K, q.data(), d.data());
    int bad = 0;
    for (int64_t t = 0; t < T; ++t)
      for (int64_t b = 0; b < Kp / 32; ++b) {
        int8_t qr[32];
        float dr;
        int32_t s;
        const int64_t n = std::clamp<int64_t>(K - b * 32, 0, 32);
        qm::quantize_act_block(x.data() + t * ldx + b * 32, int(n), 32, qr, &dr, &s);
        const float dg = d[size_t(t * (Kp / 32) + b)];
        bad += !(dg == dr || (std::isnan(dg) && std::isnan(dr)));
        bad += std::memcmp(qr, q.data() + t * Kp + b * 32, 32) != 0;
      }
    CAPTURE(K);
    CHECK(bad == 0);
  }
}
