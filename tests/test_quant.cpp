// Weight-only quantization: encoders against their definitions (error bounds, code choice, scale
// formulas recomputed here), exact storage cost, code packing layouts, and every CPU kernel
// (decode, few-row and prefill paths; activations stay f32) against "dequantize, then f64 matmul"
// within f32 rounding, plus the SIMD path against the scalar path. Odd sizes (K not a multiple of
// the group or of 64, N not a multiple of the tile) and adversarial data throughout.
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
#include "engine/half.h"
#include "engine/thread_pool.h"
#include "kernels/common/quant_math.h"
#include "kernels/cpu/act.h"
#include "kernels/cpu/quant.h"
#include "kernels/cpu/quant_act.h"
#include "tests/op_group_check.h"

using namespace minfer;

namespace {

Linear dense_of(const std::vector<float>& w, int64_t N, int64_t K, bool transposed = false) {
  Tensor t = Tensor::empty(DType::F32, {transposed ? K : N, transposed ? N : K});
  std::memcpy(t.data<float>(), w.data(), w.size() * 4);
  return make_dense("test.weight", t, K, N, transposed);
}

std::vector<float> randn(int64_t n, uint64_t seed, float std = 1.f) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> nd(0.f, std);
  std::vector<float> v(static_cast<size_t>(n));
  for (auto& x : v) x = nd(rng);
  return v;
}

// Fills runs of 32 values (the smallest group / activation block) with a rotating adversarial
// pattern: plain N(0,1), all zero, one huge outlier, ±0 mixed with small values, subnormals only,
// a wide dynamic range, all equal positive.
std::vector<float> adversarial(int64_t n, uint64_t seed) {
  std::vector<float> v = randn(n, seed);
  std::mt19937_64 rng(seed ^ 0x9e3779b97f4a7c15ull);
  for (int64_t b = 0; b * 32 < n; ++b) {
    const int64_t k0 = b * 32, k1 = std::min(n, k0 + 32);
    switch ((b + int64_t(seed)) % 7) {
      case 0:
        break;
      case 1:
        for (int64_t k = k0; k < k1; ++k) v[size_t(k)] = 0.f;
        break;
      case 2:
        v[size_t(k0 + int64_t(rng() % uint64_t(k1 - k0)))] = (rng() & 1) ? 3e4f : -3e4f;
        break;
      case 3:
        for (int64_t k = k0; k < k1; ++k)
          v[size_t(k)] = (k % 3 == 0) ? 0.f : (k % 3 == 1) ? -0.f : v[size_t(k)] * 1e-3f;
        break;
      case 4:
        for (int64_t k = k0; k < k1; ++k) v[size_t(k)] *= 1e-39f;  // subnormal f32
        break;
      case 5:
        for (int64_t k = k0; k < k1; ++k) v[size_t(k)] *= std::ldexp(1.f, int(k % 40) - 20);
        break;
      case 6:
        for (int64_t k = k0; k < k1; ++k) v[size_t(k)] = 0.75f;
        break;
    }
  }
  return v;
}

// Scale of group g of row n, read from the representation (double-quantized: decoded here).
float stored_scale(const Quantized& q, int64_t n, int64_t g, int64_t groups) {
  if (q.per_tensor) return q.scales.data<float>()[0];
  const int64_t i = n * groups + g;
  if (q.scale_codes.defined())
    return q.scale_scales.data<float>()[i / 256] * float(q.scale_codes.data<int8_t>()[i]) +
           q.scale_offset;
  return q.scales.data<float>()[i];
}

struct Fmt {
  std::string label;
  QuantSpec spec;
};

std::vector<Fmt> all_formats() {
  auto s = [](std::string m, int g = 0) {
    QuantSpec q;
    q.method = std::move(m);
    q.group = g;
    return q;
  };
  std::vector<Fmt> f;
  f.push_back({"int8 per-channel", s("int8")});
  QuantSpec pt = s("int8");
  pt.per_channel = false;
  f.push_back({"int8 per-tensor", pt});
  f.push_back({"int8 g32", s("int8", 32)});
  f.push_back({"int8 g64", s("int8", 64)});
  f.push_back({"int4 g32", s("int4", 32)});
  f.push_back({"int4 g64", s("int4", 64)});
  f.push_back({"int4 g96", s("int4", 96)});
  f.push_back({"int4 g128", s("int4", 128)});
  f.push_back({"int3 g32", s("int3", 32)});
  f.push_back({"int3 g96", s("int3", 96)});
  f.push_back({"int3 g128", s("int3", 128)});
  QuantSpec a32 = s("int4", 32), a128 = s("int4", 128);
  a32.asymmetric = a128.asymmetric = true;
  f.push_back({"int4 g32 asym", a32});
  f.push_back({"int4 g128 asym", a128});
  f.push_back({"nf4 b64", s("nf4", 64)});
  f.push_back({"nf4 b128", s("nf4", 128)});
  QuantSpec dq = s("nf4", 64);
  dq.double_quant = true;
  f.push_back({"nf4 b64 double-quant", dq});
  f.push_back({"binary", s("binary")});
  f.push_back({"ternary per-tensor", s("ternary")});
  QuantSpec tr = s("ternary");
  tr.ternary_per_row = true;
  f.push_back({"ternary per-row", tr});
  return f;
}

// y[t, n] = Σ_k ŵ[n, k] x[t, k] in double, with Σ |ŵ x| for rounding bounds.
void matmul_f64(const float* W, const float* x, int64_t T, int64_t ldx, int64_t K, int64_t N,
                std::vector<double>& y, std::vector<double>& mag) {
  y.assign(size_t(T * N), 0);
  mag.assign(size_t(T * N), 0);
  for (int64_t t = 0; t < T; ++t)
    for (int64_t n = 0; n < N; ++n) {
      double s = 0, m = 0;
      for (int64_t k = 0; k < K; ++k) {
        const double p = double(W[n * K + k]) * double(x[t * ldx + k]);
        s += p;
        m += std::fabs(p);
      }
      y[size_t(t * N + n)] = s;
      mag[size_t(t * N + n)] = m;
    }
}

// Bound on |f32 result - exact Σ ŵ x| for a kernel summing K products in f32 in any order: K + 16
// roundings of at most 2^-24 of Σ |ŵ x| (int8 applies its scale to a group sum instead of to
// each weight: one more rounding), plus underflow of subnormal products (2^-149 each).
double f32_bound(int64_t K, double mag) {
  return double(K + 16) * std::ldexp(1.0, -24) * mag + double(K) * std::ldexp(1.0, -148) + 1e-40;
}

// MINFER_TEST_QUICK=1 (the aarch64 suite under qemu, the sanitizer runs): the long sweeps below
// take fewer token counts and thread counts, never fewer formats or shapes (docs/ci.md).
bool quick_run() {
  static const bool q = [] {
    const char* e = std::getenv("MINFER_TEST_QUICK");
    return e && std::string(e) == "1";
  }();
  return q;
}

// ASan builds (as in test_tokenizer.cpp: clang before 18 does not define __SANITIZE_ADDRESS__).
#if defined(__SANITIZE_ADDRESS__)
constexpr bool kAsan = true;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
constexpr bool kAsan = true;
#else
constexpr bool kAsan = false;
#endif
#else
constexpr bool kAsan = false;
#endif

// These cases test the f32-activation kernels: the decode range's default q8 path for int8 / int4
// (tests/test_quant_q8.cpp) is switched off while they run.
struct F32Activations {
  QuantActPath saved = quantized_act_path();
  F32Activations() { set_quantized_act_path(QuantActPath::F32); }
  ~F32Activations() { set_quantized_act_path(saved); }
};

}  // namespace

TEST_CASE("quant: NF4 table, code packing layouts and the int8 activation quantizer") {
  // The 16 NF4 values of bitsandbytes (functional.py get_4bit_type("nf4")), typed in here.
  const float nf4[16] = {-1.0f,
                         -0.6961928009986877f,
                         -0.5250730514526367f,
                         -0.39491748809814453f,
                         -0.28444138169288635f,
                         -0.18477343022823334f,
                         -0.09105003625154495f,
                         0.0f,
                         0.07958029955625534f,
                         0.16093020141124725f,
                         0.24611230194568634f,
                         0.33791524171829224f,
                         0.44070982933044434f,
                         0.5626170039176941f,
                         0.7229568362236023f,
                         1.0f};
  for (int i = 0; i < 16; ++i) CHECK(qm::nf4_value(i) == nf4[i]);
  // Nearest-value rounding, midpoints included.
  CHECK(qm::nf4_nearest(0.f) == 7);
  CHECK(qm::nf4_nearest(0.03f) == 7);
  CHECK(qm::nf4_nearest(0.05f) == 8);
  CHECK(qm::nf4_nearest(-1.f) == 0);
  CHECK(qm::nf4_nearest(0.99f) == 15);
  CHECK(qm::nf4_nearest(-0.8f) == 1);
  CHECK(qm::nf4_nearest(-0.9f) == 0);
  std::mt19937 rng(3);
  std::uniform_real_distribution<float> ud(-1.2f, 1.2f);
  for (int i = 0; i < 2000; ++i) {
    const float v = ud(rng);
    float best = 1e9f;
    for (int j = 0; j < 16; ++j) best = std::min(best, std::fabs(v - nf4[j]));
    CHECK(std::fabs(v - nf4[qm::nf4_nearest(v)]) == best);
  }

  // Layouts, byte by byte.
  uint8_t r4[64] = {};
  qm::set_q4(r4, 0, 0x3);
  qm::set_q4(r4, 32, 0xa);
  qm::set_q4(r4, 31, 0x5);
  qm::set_q4(r4, 64 + 33, 0xf);
  CHECK(r4[0] == 0xa3);
  CHECK(r4[31] == 0x05);
  CHECK(r4[32 + 1] == 0xf0);
  uint8_t r2[32] = {};
  qm::set_q2(r2, 0, 2);
  qm::set_q2(r2, 16, 1);
  qm::set_q2(r2, 63, 3);
  qm::set_q2(r2, 64 + 5, 1);
  CHECK(r2[0] == 0x06);
  CHECK(r2[15] == 0xc0);
  CHECK(r2[16 + 5] == 0x01);
  uint8_t r1[16] = {};
  qm::set_q1(r1, 0, 1);
  qm::set_q1(r1, 9, 1);
  qm::set_q1(r1, 127, 1);
  CHECK(r1[0] == 0x01);
  CHECK(r1[1] == 0x02);
  CHECK(r1[15] == 0x80);
  // Round trips of random codes.
  std::vector<uint8_t> p4(96), p2(48), p1(24);
  std::vector<int> c4(192), c2(192), c1(192);
  for (int k = 0; k < 192; ++k) {
    c4[k] = int(rng() % 16);
    c2[k] = int(rng() % 4);
    c1[k] = int(rng() % 2);
    qm::set_q4(p4.data(), k, c4[k]);
    qm::set_q2(p2.data(), k, c2[k]);
    qm::set_q1(p1.data(), k, c1[k]);
  }
  for (int k = 0; k < 192; ++k) {
    CHECK(qm::get_q4(p4.data(), k) == c4[k]);
    CHECK(qm::get_q2(p2.data(), k) == c2[k]);
    CHECK(qm::get_q1(p1.data(), k) == c1[k]);
  }

  // The int8 activation quantizer of quant_math.h (used by the activation-quantized formats),
  // hand-checked.
  {
    const float x[4] = {1.f, -0.5f, 0.25f, 2.f};
    int8_t q[32];
    float d;
    int32_t s;
    qm::quantize_act_block(x, 4, 32, q, &d, &s);
    CHECK(d == 2.f / 127.f);
    CHECK(q[0] == 64);   // 63.5 -> 64 (half to even)
    CHECK(q[1] == -32);  // -31.75
    CHECK(q[2] == 16);   // 15.875
    CHECK(q[3] == 127);
    CHECK(q[4] == 0);
    CHECK(s == 64 - 32 + 16 + 127);
    const float bad[2] = {1.f, std::numeric_limits<float>::infinity()};
    qm::quantize_act_block(bad, 2, 32, q, &d, &s);
    CHECK(std::isnan(d));
  }
}

TEST_CASE("quant: int8 round trip, scales and error bound |w - ŵ| <= scale / 2") {
  const int64_t N = 23, K = 200;
  for (uint64_t seed : {1ull, 2ull, 3ull}) {
    const std::vector<float> w = seed == 1 ? randn(N * K, 7) : adversarial(N * K, seed);
    const Linear d = dense_of(w, N, K);
    for (int mode = 0; mode < 3; ++mode) {
      QuantSpec spec;
      spec.method = "int8";
      spec.per_channel = mode != 1;
      spec.group = mode == 2 ? 64 : 0;
      const Linear l = quantize_linear(d, spec);
      const Quantized& q = std::get<Quantized>(l.repr);
      const int64_t G = mode == 2 ? 64 : K, groups = qm::ceil_div(K, G);
      CHECK(q.group == G);
      CHECK(q.per_tensor == (mode == 1));
      const Tensor wh = dequantize_weight(l);
      float tmax = 0;
      for (float v : w) tmax = std::max(tmax, std::fabs(v));
      for (int64_t n = 0; n < N; ++n)
        for (int64_t g = 0; g < groups; ++g) {
          float amax = 0;
          for (int64_t k = g * G; k < std::min(K, (g + 1) * G); ++k)
            amax = std::max(amax, std::fabs(w[size_t(n * K + k)]));
          const float s = stored_scale(q, n, g, groups);
          REQUIRE(s == (mode == 1 ? tmax : amax) / 127.f);
          for (int64_t k = g * G; k < std::min(K, (g + 1) * G); ++k) {
            const float e = std::fabs(w[size_t(n * K + k)] - wh.data<float>()[n * K + k]);
            const uint8_t u = q.codes.data<uint8_t>()[n * q.codes.dim(1) + k];
            CHECK(u >= 1);  // codes -127..127 (+128)
            CHECK(e <= s / 2 * 1.0001f + 127 * std::ldexp(1.f, -149));
          }
        }
      // Padding codes are the code of 0.
      for (int64_t n = 0; n < N; ++n)
        for (int64_t k = K; k < qm::padded_k(K); ++k)
          CHECK(q.codes.data<uint8_t>()[n * q.codes.dim(1) + k] == 128);
    }
  }
}

TEST_CASE("quant: int4 symmetric / asymmetric round trip and error bound |w - ŵ| <= scale / 2") {
  const int64_t N = 11, K = 200;
  for (uint64_t seed : {1ull, 4ull, 5ull})
    for (int G : {32, 64, 128})
      for (bool asym : {false, true}) {
        CAPTURE(seed);
        CAPTURE(G);
        CAPTURE(asym);
        const std::vector<float> w = seed == 1 ? randn(N * K, 9) : adversarial(N * K, seed);
        QuantSpec spec;
        spec.method = "int4";
        spec.group = G;
        spec.asymmetric = asym;
        const Linear l = quantize_linear(dense_of(w, N, K), spec);
        const Quantized& q = std::get<Quantized>(l.repr);
        const int64_t groups = qm::ceil_div(K, G);
        REQUIRE(q.scales.numel() == N * groups);
        const Tensor wh = dequantize_weight(l);
        for (int64_t n = 0; n < N; ++n)
          for (int64_t g = 0; g < groups; ++g) {
            float amax = 0, mn = 0, mx = 0;
            for (int64_t k = g * G; k < std::min<int64_t>(K, (g + 1) * G); ++k) {
              const float v = w[size_t(n * K + k)];
              amax = std::max(amax, std::fabs(v));
              mn = std::min(mn, v);
              mx = std::max(mx, v);
            }
            const float s = stored_scale(q, n, g, groups);
            if (asym) {
              CHECK(s == float((double(mx) - double(mn)) / 15));
              const int z = q.zeros.data<uint8_t>()[n * groups + g];
              if (s > 0) CHECK(z == int(std::nearbyint(-double(mn) / s)));
            } else {
              CHECK(s == amax / 7.f);
            }
            for (int64_t k = g * G; k < std::min<int64_t>(K, (g + 1) * G); ++k) {
              const float e = std::fabs(w[size_t(n * K + k)] - wh.data<float>()[n * K + k]);
              CHECK(e <= s / 2 * 1.0001f + 16 * std::ldexp(1.f, -149));
            }
          }
      }
}

TEST_CASE("quant: nf4 picks the nearest code; double-quantized scales within c / 2") {
  const int64_t N = 37, K = 200;
  for (bool dq : {false, true})
    for (uint64_t seed : {1ull, 6ull}) {
      const std::vector<float> w = seed == 1 ? randn(N * K, 11) : adversarial(N * K, seed);
      QuantSpec spec;
      spec.method = "nf4";
      spec.double_quant = dq;
      const Linear l = quantize_linear(dense_of(w, N, K), spec);
      const Quantized& q = std::get<Quantized>(l.repr);
      const int64_t G = 64, groups = qm::ceil_div(K, G);
      CHECK(q.group == 64);
      CHECK(q.scales.defined() == !dq);
      std::vector<float> absmax(size_t(N * groups));
      for (int64_t n = 0; n < N; ++n)
        for (int64_t g = 0; g < groups; ++g)
          for (int64_t k = g * G; k < std::min(K, (g + 1) * G); ++k)
            absmax[size_t(n * groups + g)] =
                std::max(absmax[size_t(n * groups + g)], std::fabs(w[size_t(n * K + k)]));
      if (dq) {
        double mean = 0;
        for (float a : absmax) mean += a;
        mean /= double(absmax.size());
        CHECK(q.scale_offset == doctest::Approx(mean).epsilon(1e-6));
        for (size_t i = 0; i < absmax.size(); ++i) {
          const float c = q.scale_scales.data<float>()[i / 256];
          const float dec = stored_scale(q, int64_t(i) / groups, int64_t(i) % groups, groups);
          CHECK(std::fabs(dec - absmax[i]) <= c / 2 * 1.0001f + 1e-6f * std::fabs(absmax[i]));
        }
      } else {
        for (size_t i = 0; i < absmax.size(); ++i) CHECK(q.scales.data<float>()[i] == absmax[i]);
      }
      const Tensor wh = dequantize_weight(l);
      for (int64_t n = 0; n < N; ++n)
        for (int64_t k = 0; k < K; ++k) {
          const float a = stored_scale(q, n, k / G, groups);
          const float v = w[size_t(n * K + k)];
          const float got = wh.data<float>()[n * K + k];
          float best = std::numeric_limits<float>::infinity();
          for (int j = 0; j < 16; ++j) best = std::min(best, std::fabs(v - a * qm::nf4_value(j)));
          // Nearest up to near-ties: the encoder compares the rounded w / a with rounded midpoints.
          CHECK(std::fabs(v - got) <= best + std::ldexp(std::fabs(a), -20) + 1e-30f);
          if (!dq) CHECK(std::fabs(v - got) <= a * (1.f - 0.6961928f) / 2 * 1.0001f);
        }
    }
}

TEST_CASE("quant: binary and ternary follow their definitions") {
  const int64_t N = 9, K = 200;
  std::vector<float> w = randn(N * K, 13);
  w[0] = 0.f;
  w[1] = -0.f;
  {
    QuantSpec spec;
    spec.method = "binary";
    const Linear l = quantize_linear(dense_of(w, N, K), spec);
    const Tensor wh = dequantize_weight(l);
    for (int64_t n = 0; n < N; ++n) {
      double m = 0;
      for (int64_t k = 0; k < K; ++k) m += std::fabs(double(w[size_t(n * K + k)]));
      const float alpha = float(m / K);
      for (int64_t k = 0; k < K; ++k) {
        const float v = w[size_t(n * K + k)];
        CHECK(wh.data<float>()[n * K + k] == (v >= 0.f ? alpha : -alpha));
      }
    }
    CHECK(wh.data<float>()[1] > 0.f);  // sign(-0) = +1
  }
  for (bool per_row : {false, true}) {
    QuantSpec spec;
    spec.method = "ternary";
    spec.ternary_per_row = per_row;
    const Linear l = quantize_linear(dense_of(w, N, K), spec);
    const Quantized& q = std::get<Quantized>(l.repr);
    CHECK(q.per_tensor == !per_row);
    const Tensor wh = dequantize_weight(l);
    double all = 0;
    for (float v : w) all += std::fabs(double(v));
    for (int64_t n = 0; n < N; ++n) {
      double m = 0;
      for (int64_t k = 0; k < K; ++k) m += std::fabs(double(w[size_t(n * K + k)]));
      const float gamma = float(per_row ? m / K : all / double(N * K));
      for (int64_t k = 0; k < K; ++k) {
        const double r = std::nearbyint(double(w[size_t(n * K + k)]) / gamma);
        const float expect = gamma * float(std::clamp(r, -1.0, 1.0));
        CHECK(wh.data<float>()[n * K + k] == expect);
      }
    }
  }
  // An all-zero matrix: ternary's scale floor (1e-5) keeps it finite, every code is 0.
  QuantSpec t;
  t.method = "ternary";
  const Linear z = quantize_linear(dense_of(std::vector<float>(size_t(N * K), 0.f), N, K), t);
  CHECK(std::get<Quantized>(z.repr).scales.data<float>()[0] == 1e-5f);
  const Tensor zh = dequantize_weight(z);
  for (int64_t i = 0; i < N * K; ++i) CHECK(zh.data<float>()[i] == 0.f);
}

TEST_CASE("quant: bits per weight are exact") {
  auto bpw = [](const std::string& m, int64_t N, int64_t K, int g = 0, bool asym = false,
                bool dq = false, bool per_channel = true) {
    QuantSpec s;
    s.method = m;
    s.group = g;
    s.asymmetric = asym;
    s.double_quant = dq;
    s.per_channel = per_channel;
    return bits_per_weight(quantize_linear(dense_of(randn(N * K, 1), N, K), s));
  };
  CHECK(bpw("int8", 64, 256) == 8.0 + 32.0 / 256);
  CHECK(bpw("int8", 64, 256, 0, false, false, false) == doctest::Approx(8.0 + 32.0 / (64 * 256)));
  CHECK(bpw("int4", 64, 256, 128) == 4.25);
  CHECK(bpw("int4", 64, 256, 32) == 5.0);
  CHECK(bpw("int4", 64, 256, 128, true) == 4.0 + 32.0 / 128 + 8.0 / 128);
  CHECK(bpw("nf4", 256, 256) == 4.5);
  // QLoRA: 4 + 8/64 + 32/(64*256) ≈ 4.127, plus our one f32 mean offset per tensor.
  CHECK(bpw("nf4", 256, 256, 0, false, true) ==
        doctest::Approx(4.0 + 8.0 / 64 + 32.0 / (64 * 256) + 32.0 / (256 * 256)).epsilon(1e-12));
  CHECK(bpw("binary", 16, 256) == 1.0 + 32.0 / 256);
  CHECK(bpw("ternary", 16, 256) == doctest::Approx(2.0 + 32.0 / (16 * 256)));
  CHECK(bpw("fp16", 16, 256) == 16.0);
  CHECK(bpw("bf16", 16, 256) == 16.0);
  // K = 200: rows padded to 256 codes, last group partial: int4 g64 = (128 + 4 * 4) * 8 / 200.
  CHECK(bpw("int4", 8, 200, 64) == doctest::Approx((128.0 + 16.0) * 8 / 200));
  // SmolLM2's 576 = 4.5 groups of 128: 5 scales per row.
  CHECK(bpw("int4", 8, 576, 128) == doctest::Approx((288.0 + 20.0) * 8 / 576));
}

TEST_CASE("quant: f16 / bf16 conversions and transposed (Conv1D) inputs") {
  const int64_t N = 7, K = 45;
  const std::vector<float> w = randn(N * K, 21);
  std::vector<float> wt(size_t(N * K));
  for (int64_t n = 0; n < N; ++n)
    for (int64_t k = 0; k < K; ++k) wt[size_t(k * N + n)] = w[size_t(n * K + k)];
  const Linear d = dense_of(w, N, K), dt = dense_of(wt, N, K, true);
  for (const char* m : {"fp16", "bf16"}) {
    QuantSpec s;
    s.method = m;
    const Linear h = quantize_linear(dt, s);
    const Dense& hd = std::get<Dense>(h.repr);
    CHECK(!hd.transposed);
    CHECK(hd.w.dtype() == (std::string(m) == "fp16" ? DType::F16 : DType::BF16));
    for (int64_t i = 0; i < N * K; ++i) {
      const uint16_t v = hd.w.data<uint16_t>()[i];
      CHECK(v == (std::string(m) == "fp16" ? f32_to_f16(w[size_t(i)]) : f32_to_bf16(w[size_t(i)])));
    }
  }
  for (const Fmt& f : all_formats()) {
    CAPTURE(f.label);
    const Linear a = quantize_linear(d, f.spec), b = quantize_linear(dt, f.spec);
    const Tensor wa = dequantize_weight(a), wb = dequantize_weight(b);
    CHECK(std::memcmp(wa.raw(), wb.raw(), wa.nbytes()) == 0);
  }
}

TEST_CASE("quant: bad inputs give clear errors") {
  std::vector<float> w = randn(4 * 64, 2);
  w[70] = std::numeric_limits<float>::quiet_NaN();
  QuantSpec s;
  s.method = "int4";
  CHECK_THROWS_WITH_AS(quantize_linear(dense_of(w, 4, 64), s),
                       doctest::Contains("weight [1, 6] is nan"), Error);
  w[70] = 0;
  s.group = 48;
  CHECK_THROWS_WITH_AS(quantize_linear(dense_of(w, 4, 64), s), doctest::Contains("multiple of 32"),
                       Error);
  s.method = "int5";
  CHECK_THROWS_WITH_AS(quantize_linear(dense_of(w, 4, 64), s),
                       doctest::Contains("unknown method 'int5'"), Error);
  s.method = "nf4";
  s.group = 0;
  s.asymmetric = true;
  CHECK_THROWS_AS(quantize_linear(dense_of(w, 4, 64), s), Error);

  s = QuantSpec();
  s.method = "int4";
  Linear l = quantize_linear(dense_of(w, 4, 64), s);
  Quantized q = std::get<Quantized>(l.repr);
  std::vector<float> x(64, 1.f), y(4);
  q.scales = Tensor::empty(DType::F32, {3});
  // A format's invariants are checked where a Linear is made (and loaded), naming the tensor.
  CHECK_THROWS_WITH_AS(make_linear("blk.w", 64, 4, q),
                       doctest::Contains("'blk.w' (int4): scales must be F32 with 4 values"),
                       Error);
  q = std::get<Quantized>(l.repr);
  CHECK_THROWS_WITH_AS(make_linear("blk.w", 64, 5, q),
                       doctest::Contains("codes must be contiguous U8 [5, 32]"), Error);
  q.zeros = Tensor::empty(DType::U8, {4, 1});
  CHECK_THROWS_AS(make_linear("blk.w", 64, 4, q), Error);
  Linear already = l;
  CHECK_THROWS_WITH_AS(quantize_linear(already, s), doctest::Contains("expected a Dense"), Error);
}

TEST_CASE("quant: kernels match dequantize + f64 matmul (every path, odd K and N, adversarial)") {
  F32Activations f32_activations;
  struct Shape {
    int64_t K, N;
  };
  // T 1..4: decode kernels; 7: 16-row tiles x groups of 4 x rows; 17: f32 tiles + sgemm.
  for (const Shape sh : {Shape{200, 37}, Shape{576, 19}, Shape{31, 5}, Shape{64, 16}})
    for (const Fmt& f : all_formats())
      for (int data = 0; data < 2; ++data) {
        const int64_t K = sh.K, N = sh.N;
        const std::vector<float> w =
            data == 0 ? randn(N * K, uint64_t(K * 31 + N)) : adversarial(N * K, uint64_t(K + N));
        const Linear l = quantize_linear(dense_of(w, N, K), f.spec);
        const Quantized& q = std::get<Quantized>(l.repr);
        const Tensor wh = dequantize_weight(l);
        const float* W = wh.data<float>();
        for (int64_t T : {1, 2, 3, 4, 7, 17}) {
          CAPTURE(f.label);
          CAPTURE(K);
          CAPTURE(N);
          CAPTURE(T);
          CAPTURE(data);
          const int64_t ldx = K + 5, ldy = N + 2;
          const std::vector<float> x = data == 0 ? randn(T * ldx, uint64_t(T * 7 + K))
                                                 : adversarial(T * ldx, uint64_t(T + 3));
          std::vector<float> y(size_t(T * ldy), -1.f), yr(size_t(T * ldy), -2.f);
          quantized_linear(q, x.data(), T, ldx, y.data(), ldy, K, N);
          quantized_linear_ref(q, x.data(), T, ldx, yr.data(), ldy, K, N);
          std::vector<double> exact, mag;
          matmul_f64(W, x.data(), T, ldx, K, N, exact, mag);
          int bad = 0;
          for (int64_t t = 0; t < T; ++t)
            for (int64_t n = 0; n < N; ++n) {
              const double e = exact[size_t(t * N + n)];
              const double bound = f32_bound(K, mag[size_t(t * N + n)]);
              const double got = y[size_t(t * ldy + n)], ref = yr[size_t(t * ldy + n)];
              if (!(std::fabs(got - e) <= bound) || !(std::fabs(ref - e) <= bound)) {
                if (bad++ < 3)
                  MESSAGE("t ", t, " n ", n, ": kernel ", got, " scalar ", ref, " exact ", e,
                          " bound ", bound);
              }
            }
          CHECK(bad == 0);
          // Row strides: untouched padding columns of y.
          for (int64_t t = 0; t < T; ++t) CHECK(y[size_t(t * ldy + N)] == -1.f);
        }
      }
}

TEST_CASE("quant: SIMD path agrees with the scalar path and with sgemm on dequantize_weight") {
  F32Activations f32_activations;
  const std::string isa = quantized_linear_isa();
  MESSAGE("quantized_linear path in this build: ", isa);
  const int64_t K = 1536, N = 70;
  // Quick runs (MINFER_TEST_QUICK=1: qemu, sanitizers): T 1, 3 and 16 (one token, a
  // few, and the 16-row threshold: on aarch64 T < 16 is one portable path, T >= 16 the tiles +
  // sgemm, where T is only sgemm's row count); every format and both data sets stay.
  const std::vector<int64_t> Ts =
      quick_run() ? std::vector<int64_t>{1, 3, 16} : std::vector<int64_t>{1, 2, 3, 4, 9, 16, 40};
  auto be = make_cpu_backend(1);
  for (const Fmt& f : all_formats())
    for (int data = 0; data < 2; ++data) {
      const std::vector<float> w = data ? adversarial(N * K, 17) : randn(N * K, 5);
      const Linear l = quantize_linear(dense_of(w, N, K), f.spec);
      const Quantized& q = std::get<Quantized>(l.repr);
      const Linear dq = make_dense("dq", dequantize_weight(l), K, N);
      const float* W = std::get<Dense>(dq.repr).w.data<float>();
      for (int64_t T : Ts) {
        CAPTURE(f.label);
        CAPTURE(data);
        CAPTURE(T);
        const std::vector<float> xv = data ? adversarial(T * K, uint64_t(T)) : randn(T * K, 7);
        std::vector<float> y(size_t(T * N)), yr(size_t(T * N));
        quantized_linear(q, xv.data(), T, K, y.data(), N, K, N);
        quantized_linear_ref(q, xv.data(), T, K, yr.data(), N, K, N);
        // "Dequantize, then f32 matmul" through the dense path (sgemm / gemv).
        Tensor x = Tensor::empty(DType::F32, {T, K}), yd = Tensor::empty(DType::F32, {T, N});
        std::memcpy(x.data<float>(), xv.data(), xv.size() * 4);
        be->linear(yd, x, dq);
        int bad = 0;
        for (int64_t t = 0; t < T; ++t)
          for (int64_t n = 0; n < N; ++n) {
            double m = 0;
            for (int64_t k = 0; k < K; ++k)
              m += std::fabs(double(W[n * K + k]) * double(xv[size_t(t * K + k)]));
            // Each result is within f32_bound of the exact sum, so two differ by twice that.
            const double tol = 2 * f32_bound(K, m);
            const double a = y[size_t(t * N + n)];
            if (!(std::fabs(a - yr[size_t(t * N + n)]) <= tol) ||
                !(std::fabs(a - yd.data<float>()[t * N + n]) <= tol)) {
              if (bad++ < 3)
                MESSAGE("t ", t, " n ", n, ": kernel ", a, " scalar ", yr[size_t(t * N + n)],
                        " dequant+f32 ", yd.data<float>()[t * N + n], " tol ", tol);
            }
          }
        CHECK(bad == 0);
      }
    }
}

TEST_CASE("quant: non-finite activations poison only their own row") {
  const int64_t K = 200, N = 8, T = 3;
  for (const Fmt& f : all_formats()) {
    CAPTURE(f.label);
    const Linear l = quantize_linear(dense_of(randn(N * K, 3), N, K), f.spec);
    const Quantized& q = std::get<Quantized>(l.repr);
    std::vector<float> x = randn(T * K, 4);
    x[size_t(K + 150)] = std::numeric_limits<float>::infinity();
    std::vector<float> y(size_t(T * N));
    quantized_linear(q, x.data(), T, K, y.data(), N, K, N);
    for (int64_t n = 0; n < N; ++n) {
      CHECK(std::isfinite(y[size_t(n)]));
      CHECK(!std::isfinite(y[size_t(N + n)]));
      CHECK(std::isfinite(y[size_t(2 * N + n)]));
    }
  }
}

TEST_CASE("quant: the CPU backend runs quantized linears with bias") {
  F32Activations f32_activations;  // the reference below is the f32-activation one (g32 decode
                                   // takes the q8 path by default on AVX2)
  const int64_t K = 96, N = 10, T = 2;
  std::vector<float> w = randn(N * K, 8);
  Tensor bias = Tensor::empty(DType::F32, {N});
  for (int64_t n = 0; n < N; ++n) bias.data<float>()[n] = float(n);
  Linear d = dense_of(w, N, K);
  d.bias = bias;
  QuantSpec s;
  s.method = "int4";
  s.group = 32;
  const Linear l = quantize_linear(d, s);
  CHECK(l.bias.defined());
  auto be = make_cpu_backend(2);
  Tensor x = Tensor::empty(DType::F32, {T, K}), y = Tensor::empty(DType::F32, {T, N});
  const std::vector<float> xv = randn(T * K, 9);
  std::memcpy(x.data<float>(), xv.data(), xv.size() * 4);
  be->linear(y, x, l);
  std::vector<float> yr(size_t(T * N));
  quantized_linear_ref(std::get<Quantized>(l.repr), xv.data(), T, K, yr.data(), N, K, N);
  for (int64_t t = 0; t < T; ++t)
    for (int64_t n = 0; n < N; ++n)
      CHECK(y.data<float>()[t * N + n] ==
            doctest::Approx(yr[size_t(t * N + n)] + float(n)).epsilon(1e-5));
}

TEST_CASE("quant: distortion on N(0,1) weights") {
  F32Activations f32_activations;
  // Expected relative Frobenius errors, from the quantizers' definitions: uniform rounding noise
  // s² / 12 with s = max / 127 (int8: max of 1024 normals ≈ 3.2 -> ~0.7%) or max / 7 (int4 g128:
  // max of 128 ≈ 2.6 -> ~11%); NF4 block 64 ≈ 9-10% (QLoRA's motivation: below int4 at the same
  // block size); binary: sqrt(1 - 2/π) = 0.603 exactly in the limit; ternary absmean ≈ 0.5.
  const int64_t N = 256, K = 1024;
  const Linear d = dense_of(randn(N * K, 77), N, K);
  struct Expect {
    const char* label;
    double lo, hi;
  };
  const Expect ex[] = {{"int8 per-channel", 0.004, 0.010},
                       {"int8 per-tensor", 0.006, 0.016},
                       {"int8 g32", 0.002, 0.008},
                       {"int8 g64", 0.002, 0.009},
                       {"int4 g32", 0.06, 0.10},
                       {"int4 g64", 0.07, 0.115},
                       {"int4 g96", 0.08, 0.12},
                       {"int4 g128", 0.08, 0.125},
                       {"int4 g32 asym", 0.05, 0.10},
                       {"int4 g128 asym", 0.07, 0.12},
                       {"nf4 b64", 0.07, 0.11},
                       {"nf4 b128", 0.075, 0.12},
                       {"nf4 b64 double-quant", 0.07, 0.11},
                       {"binary", 0.595, 0.61},
                       {"ternary per-tensor", 0.4, 0.6},
                       {"ternary per-row", 0.4, 0.6}};
  for (const Fmt& f : all_formats()) {
    const Linear q = quantize_linear(d, f.spec);
    const Distortion m = measure(d, q);
    MESSAGE(f.label, ": rel Frobenius ", m.rel_fro * 100, "%, mse ", m.mse, ", max |err| ",
            m.max_abs, ", ", bits_per_weight(q), " bits/weight");
    for (const Expect& e : ex)
      if (f.label == e.label) {
        CAPTURE(f.label);
        CHECK(m.rel_fro >= e.lo);
        CHECK(m.rel_fro <= e.hi);
      }
  }
  // More scales never hurt: int4 g32 < g64 < g128, int8 per-channel < per-tensor.
  auto rel = [&](const std::string& label) {
    for (const Fmt& f : all_formats())
      if (f.label == label) return measure(d, quantize_linear(d, f.spec)).rel_fro;
    return -1.0;
  };
  CHECK(rel("int4 g32") < rel("int4 g64"));
  CHECK(rel("int4 g64") < rel("int4 g128"));
  CHECK(rel("int8 per-channel") < rel("int8 per-tensor"));
  CHECK(rel("nf4 b64") < rel("int4 g64"));
}

TEST_CASE("quant: op groups and the fused gate·up + SiLU·mul equal the separate ops bit for bit") {
  F32Activations f32_activations;
  // Backend::linear_group on the CPU runs Quantized members on the decode path as one pool loop
  // over all their rows, and linear_swiglu computes gate and up rows and SiLU·mul in one loop:
  // every row comes from the same kernel as a single linear(), so the results are identical for
  // every format, T and thread count. Groups it cannot fuse (a dense member, T above the decode
  // range) and a biased gate fall back to the separate ops.
  // Quick runs (MINFER_TEST_QUICK=1: qemu, sanitizers): 3 threads and T 1, 2, 5, 17
  // only (on aarch64 T <= 15 is the group path, 17 the separate ops); every format stays.
  const int64_t K = 576;
  const std::vector<Fmt> fmts = all_formats();
  const bool quick = quick_run();
  const std::vector<int> threads_list = quick ? std::vector<int>{3} : std::vector<int>{1, 2, 3};
  const std::vector<int64_t> Ts =
      quick ? std::vector<int64_t>{1, 2, 5, 17} : std::vector<int64_t>{1, 2, 4, 5, 17};
  set_pool_backoff(false);  // every thread takes chunks even while the machine is busy
  for (int threads : threads_list) {
    auto be = make_cpu_backend(threads);
    for (size_t fi = 0; fi < fmts.size(); ++fi) {
      const Fmt& f = fmts[fi];
      const Fmt& f2 = fmts[(fi + 5) % fmts.size()];  // a second format in the same group
      // q, k, v of different widths and formats; the first with a bias.
      std::vector<Linear> g;
      g.push_back(quantize_linear(dense_of(randn(200 * K, 11 + fi), 200, K), f.spec));
      g.push_back(quantize_linear(dense_of(randn(64 * K, 12 + fi), 64, K), f2.spec));
      g.push_back(quantize_linear(dense_of(randn(70 * K, 13 + fi), 70, K), f.spec));
      g[0].bias = Tensor::empty(DType::F32, {200});
      for (int64_t j = 0; j < 200; ++j) g[0].bias.data<float>()[j] = 0.125f * float(j % 9);
      const int64_t F = 300;
      const Linear gate = quantize_linear(dense_of(randn(F * K, 21 + fi), F, K), f.spec);
      const Linear up = quantize_linear(dense_of(randn(F * K, 22 + fi), F, K), f.spec);
      for (bool with_dense : {false, true}) {
        std::vector<Linear> gg = g;
        if (with_dense) gg.push_back(make_dense("d", Tensor::empty(DType::F32, {9, K}), K, 9));
        if (with_dense)
          for (int64_t j = 0; j < 9 * K; ++j)
            std::get<Dense>(gg.back().repr).w.data<float>()[j] = float(j % 13) * 0.01f;
        for (int64_t T : Ts) {
          CAPTURE(threads);
          CAPTURE(f.label);
          CAPTURE(with_dense);
          CAPTURE(T);
          const std::vector<float> xv = randn(T * K, uint64_t(T * 7 + fi));
          Tensor x = Tensor::empty(DType::F32, {T, K});
          std::memcpy(x.data<float>(), xv.data(), xv.size() * 4);
          CHECK(test::group_mismatches(*be, gg, x) == 0);
          if (with_dense) continue;
          // gate·up + SiLU·mul: fused against linear, linear, swiglu.
          Tensor y1 = be->alloc({T, F}), u1 = be->alloc({T, F});
          Tensor y2 = be->alloc({T, F}), u2 = be->alloc({T, F});
          be->linear_swiglu(y1, u1, x, gate, up);
          be->linear(y2, x, gate);
          be->linear(u2, x, up);
          be->swiglu(y2, y2, u2);
          CHECK(std::memcmp(y1.raw(), y2.raw(), y1.nbytes()) == 0);
          CHECK(std::memcmp(u1.raw(), u2.raw(), u1.nbytes()) == 0);
          // And silu(g) u against its definition in double, from the reference kernel.
          std::vector<float> gr(size_t(T * F)), ur(size_t(T * F));
          quantized_linear_ref(std::get<Quantized>(gate.repr), xv.data(), T, K, gr.data(), F, K, F);
          quantized_linear_ref(std::get<Quantized>(up.repr), xv.data(), T, K, ur.data(), F, K, F);
          // The kernels sum in another order than the reference: allow 1e-4 relative error on
          // g and u (~100x their f32 rounding here), propagated through silu(g) u.
          int bad = 0;
          for (int64_t j = 0; j < T * F; ++j) {
            const double gd = gr[size_t(j)], ud = ur[size_t(j)];
            const double want = gd / (1 + std::exp(-gd)) * ud;
            const double tol = 1e-4 * (1 + std::fabs(gd)) * (1 + std::fabs(ud));
            bad += !(std::fabs(want - double(y1.data<float>()[j])) <= tol);
          }
          CHECK(bad == 0);
        }
      }
    }
  }
  set_pool_backoff(true);
  // A projection with a bias takes the unfused route and still adds it before SiLU.
  auto be = make_cpu_backend(2);
  const int64_t F = 40, T = 1;
  QuantSpec s;
  s.method = "int8";
  Linear gate = quantize_linear(dense_of(randn(F * K, 31), F, K), s);
  const Linear up = quantize_linear(dense_of(randn(F * K, 32), F, K), s);
  gate.bias = Tensor::empty(DType::F32, {F});
  for (int64_t j = 0; j < F; ++j) gate.bias.data<float>()[j] = 0.5f;
  Tensor x = Tensor::empty(DType::F32, {T, K});
  const std::vector<float> xv = randn(K, 33);
  std::memcpy(x.data<float>(), xv.data(), xv.size() * 4);
  Tensor y1 = be->alloc({T, F}), u1 = be->alloc({T, F}), y2 = be->alloc({T, F}),
         u2 = be->alloc({T, F});
  be->linear_swiglu(y1, u1, x, gate, up);
  be->linear(y2, x, gate);
  be->linear(u2, x, up);
  be->swiglu(y2, y2, u2);
  CHECK(std::memcmp(y1.raw(), y2.raw(), y1.nbytes()) == 0);
}

namespace {

// The repacked layout of the formats in `methods` (QuantSpec::method): Quantized::interleave = R
// stores each group of R rows 64-weight chunk first, int8 codes as u - 128. Every reader
// (dequantize, save's row layout, the reference, the SIMD kernels at every T, op groups and the
// fused gate·up) must see the same matrix. The AVX-512 and AVX2 kernels keep each row's arithmetic
// (the kernels of 2 or 4 interleaved rows at once included) and the scalar path gathers rows, so
// all are bit-identical to the row layout.
// Quick runs (MINFER_TEST_QUICK=1: qemu, sanitizers) take T 1, 2, 5 and 17 (one
// token, a few, above x86's 4-token decode range and above the 16-row tile threshold: on aarch64
// T < 16 is one portable path, 17 the tiles) on 3 threads only (chunks that split row groups,
// and one chunk for the whole of a small N); every format, K and N stays. ASan builds take every
// T on 3 threads (each kernel's memory accesses; the bits on 1 thread are the native run's), the
// native run every T on 1 and 3 threads.
void check_repacked(const std::vector<std::string>& methods) {
  const bool quick = quick_run();
  const std::vector<int64_t> Ts =
      quick ? std::vector<int64_t>{1, 2, 5, 17} : std::vector<int64_t>{1, 2, 3, 4, 5, 9, 17};
  const std::vector<int> threads_list =
      quick || kAsan ? std::vector<int>{3} : std::vector<int>{1, 3};
  set_pool_backoff(false);
  for (const Fmt& f : all_formats()) {
    if (std::find(methods.begin(), methods.end(), f.spec.method) == methods.end()) continue;
    for (int64_t K : {int64_t(64), int64_t(200), int64_t(1536)})
      for (int64_t N : {int64_t(4), int64_t(36), int64_t(200)})
        for (int32_t R : {4, 8}) {
          if (N % R != 0) continue;
          CAPTURE(f.label);
          CAPTURE(K);
          CAPTURE(N);
          CAPTURE(R);
          const Linear lg =
              quantize_linear(dense_of(randn(N * K, uint64_t(K + N + R)), N, K), f.spec);
          const Quantized& g = std::get<Quantized>(lg.repr);
          const Quantized r = quantized_interleave(g, R);
          CHECK(r.interleave == R);
          if (K > 64 || g.scheme == QScheme::Int8)  // one chunk per row: the same order
            CHECK(std::memcmp(r.codes.data<uint8_t>(), g.codes.data<uint8_t>(),
                              size_t(g.codes.nbytes())) != 0);
          const Linear lr = make_linear("w", K, N, r);
          const Tensor wg = dequantize_weight(lg), wr = dequantize_weight(lr);
          CHECK(std::memcmp(wg.data<float>(), wr.data<float>(), size_t(wg.nbytes())) == 0);
          const Quantized back = quantized_row_major(r);  // what save() and the CUDA upload read
          CHECK(back.interleave == 1);
          CHECK(std::memcmp(back.codes.data<uint8_t>(), g.codes.data<uint8_t>(),
                            size_t(g.codes.nbytes())) == 0);
          for (int64_t T : Ts) {
            CAPTURE(T);
            const std::vector<float> xv = randn(T * K, uint64_t(T * 5 + K));
            // The reference on both layouts (independent of the thread count: once per T).
            std::vector<float> a(size_t(T * N)), b(size_t(T * N)), c(size_t(T * N));
            quantized_linear_ref(g, xv.data(), T, K, a.data(), N, K, N);
            quantized_linear_ref(r, xv.data(), T, K, b.data(), N, K, N);
            CHECK(a == b);
            for (int threads : threads_list) {
              CAPTURE(threads);
              auto be = make_cpu_backend(threads);
              quantized_linear(g, xv.data(), T, K, a.data(), N, K, N);
              quantized_linear(r, xv.data(), T, K, b.data(), N, K, N);
              CHECK(a == b);
              // An op group of an interleaved and a row-layout member, and the fused gate·up,
              // against one quantized_linear per member.
              QuantGroupItem items[2] = {{&r, c.data(), N, N}, {&g, a.data(), N, N}};
              quantized_linear_group(items, 2, xv.data(), T, K, K);
              CHECK(c == b);
              std::vector<float> ys(size_t(T * N)), us(size_t(T * N)), ye(size_t(T * N));
              quantized_linear_swiglu(r, r, xv.data(), T, K, ys.data(), N, us.data(), N, K, N);
              CHECK(us == b);
              for (size_t i = 0; i < ye.size(); ++i) ye[i] = silu_mul(b[i], b[i]);
              CHECK(ys == ye);
              // Through the backend (observer-free linear of a Linear holding the layout).
              Tensor x = Tensor::empty(DType::F32, {T, K}), y = be->alloc({T, N});
              std::memcpy(x.data<float>(), xv.data(), xv.size() * 4);
              be->linear(y, x, lr);
              CHECK(std::memcmp(y.raw(), b.data(), b.size() * 4) == 0);
            }
          }
        }
  }
  set_pool_backoff(true);
}

// The repacked-layout sweep as one case per family of QuantSpec methods (as one case it took a
// third of the aarch64 suite's time under qemu), so that the sharded runs (scripts/test-shards.sh)
// spread it over the cores.
const std::vector<std::vector<std::string>> kRepackedFamilies = {
    {"int8"}, {"int4"}, {"int3", "nf4"}, {"binary", "ternary"}};

}  // namespace

TEST_CASE("quant: the repacked layout (rows interleaved by 4 or 8) gives the same results: int8") {
  check_repacked(kRepackedFamilies[0]);
}

TEST_CASE("quant: the repacked layout (rows interleaved by 4 or 8) gives the same results: int4") {
  check_repacked(kRepackedFamilies[1]);
}

TEST_CASE(
    "quant: the repacked layout (rows interleaved by 4 or 8) gives the same results: int3, nf4") {
  check_repacked(kRepackedFamilies[2]);
}

TEST_CASE(
    "quant: the repacked layout (rows interleaved by 4 or 8) gives the same results: binary, "
    "ternary") {
  check_repacked(kRepackedFamilies[3]);
}

TEST_CASE("quant: every format is in one repacked-layout case") {
  for (const Fmt& f : all_formats()) {
    CAPTURE(f.label);
    int n = 0;
    for (const auto& family : kRepackedFamilies)
      n += int(std::count(family.begin(), family.end(), f.spec.method));
    CHECK(n == 1);
  }
}

TEST_CASE("quant: the repacked layout rejects bad factors; the CPU backend repacks at upload") {
  const std::string isa = quantized_linear_isa();
  // Interleaving needs out a multiple of R, from the row layout; check() rejects a bad factor.
  const Linear l6 = quantize_linear(dense_of(randn(6 * 64, 3), 6, 64), all_formats()[0].spec);
  const Quantized& q6 = std::get<Quantized>(l6.repr);
  CHECK_THROWS_WITH_AS(quantized_interleave(q6, 4), doctest::Contains("cannot be interleaved"),
                       Error);
  Quantized bad = quantized_interleave(q6, 3);
  bad.interleave = 4;
  CHECK_THROWS_WITH_AS(make_linear("w", 64, 6, bad), doctest::Contains("interleaved by 4"), Error);
  CHECK_THROWS_WITH_AS(quantized_interleave(quantized_interleave(q6, 2), 2),
                       doctest::Contains("cannot be interleaved"), Error);

  // The CPU backend repacks at upload where its kernels stream the layout, out % 4 == 0, once:
  // every format on AVX-512 builds; on AVX2 builds the formats whose decode kernel takes 4
  // interleaved rows at a time (int8, int4 and NF4 with groups of whole 64-weight chunks or one
  // scale per row or tensor); elsewhere weights stay as they are.
  const std::vector<std::string> avx2_repacked = {
      "int8 per-channel", "int8 per-tensor", "int8 g64",
      "int4 g64",         "int4 g128",       "int4 g128 asym",
      "nf4 b64",          "nf4 b128",        "nf4 b64 double-quant"};
  auto be = make_cpu_backend(1);
  for (const Fmt& f : all_formats())
    for (int64_t N : {int64_t(8), int64_t(6)}) {
      CAPTURE(f.label);
      CAPTURE(N);
      Linear l = quantize_linear(dense_of(randn(N * 128, 9), N, 128), f.spec);
      const Tensor before = dequantize_weight(l);
      be->upload(l);
      const bool kind =
          isa == "avx512" || (isa == "avx2" && std::find(avx2_repacked.begin(), avx2_repacked.end(),
                                                         f.label) != avx2_repacked.end());
      const int32_t want = kind && N % 4 == 0 ? 4 : 1;
      CHECK(std::get<Quantized>(l.repr).interleave == want);
      be->upload(l);
      CHECK(std::get<Quantized>(l.repr).interleave == want);
      const Tensor after = dequantize_weight(l);
      CHECK(std::memcmp(before.data<float>(), after.data<float>(), size_t(before.nbytes())) == 0);
    }
}

TEST_CASE("quant: integer prefill of int8 weights equals its integer reference") {
  // quantized_linear_int8_act: x rows quantized per token (quantize_act_rows), exact int32 sums
  // by the GEMM tiles (VNNI or AVX2), y = sum * d[t] * s[n]. Checked against the same activation
  // codes times the weight codes by the scalar integer core (exact), then scaled here; on the row
  // and the interleaved layout; odd T, K and N. Scalar builds return false.
  const bool simd = std::string(act_linear_isa()) != "scalar";
  for (const Fmt& f : {all_formats()[0], all_formats()[1], all_formats()[2]})
    for (int64_t K : {int64_t(64), int64_t(200), int64_t(1536)})
      for (int64_t N : {int64_t(4), int64_t(36), int64_t(200)})
        for (int64_t T : {int64_t(8), int64_t(17), int64_t(100)}) {
          CAPTURE(f.label);
          CAPTURE(K);
          CAPTURE(N);
          CAPTURE(T);
          const Linear l = quantize_linear(dense_of(randn(N * K, uint64_t(K * N)), N, K), f.spec);
          const Quantized& q = std::get<Quantized>(l.repr);
          const std::vector<float> x = adversarial(T * K, uint64_t(T + K));
          std::vector<float> y(size_t(T * N), -1.f), yi(size_t(T * N), -2.f);
          const bool ran = quantized_linear_int8_act(q, x.data(), T, K, y.data(), N, K, N);
          const bool applies = q.per_tensor || q.group == K;
          CHECK(ran == (simd && applies));
          if (!ran) continue;
          const int64_t Kp = qm::padded_k(K);
          std::vector<int8_t> xq(size_t(T * Kp));
          std::vector<float> d(static_cast<size_t>(T));
          std::vector<int32_t> sx(static_cast<size_t>(T)), c(size_t(T * N));
          quantize_act_rows(x.data(), T, K, K, 0.f, xq.data(), d.data(), sx.data());
          matmul_i8_i8_i32_ref(xq.data(), T, Kp, q.codes.data<uint8_t>(), q.codes.dim(1), N,
                               c.data(), N);
          int bad = 0;
          for (int64_t t = 0; t < T; ++t)
            for (int64_t n = 0; n < N; ++n) {
              const float s = q.scales.data<float>()[q.per_tensor ? 0 : n];
              const float want = float(c[size_t(t * N + n)]) * (d[size_t(t)] * s);
              bad += !(y[size_t(t * N + n)] == want);
            }
          CHECK(bad == 0);
          if (N % 4 == 0) {  // the interleaved layout: the same integers
            CHECK(quantized_linear_int8_act(quantized_interleave(q, 4), x.data(), T, K, yi.data(),
                                            N, K, N));
            CHECK(std::memcmp(y.data(), yi.data(), y.size() * 4) == 0);
          }
        }
}
