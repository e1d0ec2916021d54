// Sparse kernels (kernels/cpu/sparse.h) beyond the format table of test_formats.cpp: the decode
// path of int8 values (x rounded to 16-bit codes) on a row longer than one int32 block, rows of
// different lengths, and inf / NaN in x (the f32 path propagates them as the dense product does).
#include <doctest/doctest.h>
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <cmath>
#include <cstring>
#include <random>

#include "compress/compress.h"
#include "engine/backend.h"
#include "engine/thread_pool.h"
#include "kernels/cpu/sparse.h"
#include "tests/op_group_check.h"
#include "tests/test_util.h"

using namespace minfer;

namespace {

// A magnitude-pruned int8 SparseBitmask of random weights [out, in] at sparsity p.
Linear sparse_int8(int64_t out, int64_t in, const std::string& chain, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.f, 0.05f);
  Tensor t = Tensor::empty(DType::F32, {out, in});
  for (int64_t i = 0; i < t.numel(); ++i) t.data<float>()[i] = nd(rng);
  CompressSpec spec = compress_spec_from_name(chain);
  spec.sparse_storage = CompressSpec::SparseStorage::Bitmask;  // 2:4 chains too
  Linear l = compress_linear(make_dense("blk.0.w.weight", t, in, out), spec);
  REQUIRE(std::holds_alternative<SparseBitmask>(l.repr));
  return l;
}

// y = x · dequant(W)ᵀ in f64 and the bound of the 16-bit rounding of x plus f32 summation.
void check_against_dense(const Linear& l, const std::vector<float>& x, int64_t T) {
  const Tensor w = dequantize_weight(l);
  const float* W = w.data<float>();
  const int64_t K = l.in, N = l.out;
  std::vector<float> y(size_t(T * N), -1.f);
  sparse_linear(std::get<SparseBitmask>(l.repr), x.data(), T, K, y.data(), N, K, N);
  int bad = 0;
  for (int64_t t = 0; t < T; ++t) {
    double xmax = 0;
    for (int64_t k = 0; k < K; ++k) xmax = std::max(xmax, double(std::fabs(x[t * K + k])));
    for (int64_t n = 0; n < N; ++n) {
      double s = 0, a = 0, ws = 0;
      for (int64_t k = 0; k < K; ++k) {
        s += double(x[t * K + k]) * W[n * K + k];
        a += std::fabs(double(x[t * K + k]) * W[n * K + k]);
        ws += std::fabs(double(W[n * K + k]));
      }
      const double tol = 1e-5 * a + 1e-6 + 0.51 * xmax / 32639 * ws;
      if (!(std::fabs(double(y[t * N + n]) - s) <= tol)) ++bad;
    }
  }
  CHECK(bad == 0);
}

}  // namespace

TEST_CASE("sparse kernels: int8 values, decode against the dense product of the same weights") {
  // 40000 inputs: more than one 32768-input block of int32 sums; 8 rows; T = 1..4 (decode).
  for (auto [N, K, chain] :
       {std::tuple<int64_t, int64_t, const char*>{8, 40000, "magnitude-50+int8"},
        {17, 200, "magnitude-70+int8"},
        {9, 64, "magnitude-10+int8-tensor"},
        {5, 128, "magnitude-2:4+int8"}}) {
    CAPTURE_BINDING(K);
    CAPTURE_BINDING(chain);
    const Linear l = sparse_int8(N, K, chain, uint32_t(N + K));
    for (int64_t T = 1; T <= 4; ++T) {
      CAPTURE(T);
      std::mt19937 rng{uint32_t(T)};
      std::normal_distribution<float> nd(0.f, 1.f);
      std::vector<float> x(size_t(T * K));
      for (float& v : x) v = nd(rng);
      x[size_t(K / 3)] = 40.f;  // an outlier feature sets the row's step
      check_against_dense(l, x, T);
      // All-zero x: exactly 0.
      std::vector<float> z(size_t(T * K), 0.f), y(size_t(T * N), 1.f);
      sparse_linear(std::get<SparseBitmask>(l.repr), z.data(), T, K, y.data(), N, K, N);
      for (float v : y) CHECK(v == 0.f);
    }
  }
}

TEST_CASE("sparse kernels: inf or NaN in a row of x makes that row's outputs NaN") {
  // As W8A8 (kernels/cpu/quant_act.h): the row has no finite 16-bit step.
  const int64_t N = 6, K = 300;
  const Linear l = sparse_int8(N, K, "magnitude-50+int8", 7);
  const SparseBitmask& sb = std::get<SparseBitmask>(l.repr);
  for (float bad : {NAN, INFINITY, -INFINITY}) {
    std::vector<float> x(size_t(2 * K), 0.5f), y(size_t(2 * N), 0.f);
    x[size_t(K + 17)] = bad;  // token 1 only
    sparse_linear(sb, x.data(), 2, K, y.data(), N, K, N);
    for (int64_t n = 0; n < N; ++n) {
      CAPTURE(n);
      CHECK(std::isfinite(y[size_t(n)]));
      CHECK(std::isnan(y[size_t(N + n)]));
    }
  }
}

TEST_CASE(
    "sparse kernels: every decode kernel set this machine runs against the scalar reference") {
  // sparse_decode_isas(): the AVX-512 kernels where built, the AVX2 ones where the CPU has AVX2
  // (chosen at run time, so an AVX-512 machine tests both), and the scalar reference.
  const std::vector<std::string> isas = sparse_decode_isas();
  REQUIRE(!isas.empty());
  CHECK(isas.back() == "scalar");
  MESSAGE("sparse decode kernel sets here: " << fmt::format("{}", fmt::join(isas, ", ")));
  // Odd row lengths (a mask byte or a 16-input step past the row), 2:4, long rows (several int32
  // flushes of the AVX2 int8 kernel: > 256 steps of 16 inputs), empty-ish rows at 90 %.
  const std::tuple<int64_t, int64_t, const char*> shapes[] = {
      {13, 1000, "magnitude-50"}, {7, 37, "magnitude-30"},   {5, 128, "magnitude-2:4"},
      {9, 72, "magnitude-90"},    {3, 9000, "magnitude-50"}, {4, 24, "magnitude-4:8"}};
  for (const char* values : {"", "+int8", "+int8-tensor", "+fp16"})
    for (const auto& shape : shapes) {
      const int64_t N = std::get<0>(shape), K = std::get<1>(shape);
      const std::string chain = std::string(std::get<2>(shape)) + values;
      CAPTURE(chain);
      CAPTURE(K);
      const Linear l = sparse_int8(N, K, chain, uint32_t(N * 31 + K));
      const SparseBitmask& sb = std::get<SparseBitmask>(l.repr);
      const bool i8 = std::string(values).starts_with("+int8");
      const Tensor w = dequantize_weight(l);
      for (int64_t T = 1; T <= 4; ++T) {
        CAPTURE(T);
        const int64_t ldx = K + 3, ldy = N + 2;  // strides wider than the rows
        std::mt19937 rng{uint32_t(T * 7 + K)};
        std::normal_distribution<float> nd(0.f, 1.f);
        std::vector<float> x(size_t(T * ldx), std::nanf(""));  // NaN in the stride gap
        for (int64_t t = 0; t < T; ++t)
          for (int64_t k = 0; k < K; ++k) x[size_t(t * ldx + k)] = nd(rng);
        std::vector<float> ref(size_t(T * ldy), -7.f);
        sparse_linear_ref(sb, x.data(), T, ldx, ref.data(), ldy, K, N);
        std::vector<float> first;
        for (const std::string& isa : isas) {
          CAPTURE(isa);
          std::vector<float> y(size_t(T * ldy), -7.f);
          sparse_linear_decode_isa(sb, isa, x.data(), T, ldx, y.data(), ldy, K, N);
          int bad = 0;
          for (int64_t t = 0; t < T; ++t) {
            double xmax = 0;
            for (int64_t k = 0; k < K; ++k)
              xmax = std::max(xmax, double(std::fabs(x[t * ldx + k])));
            for (int64_t n = 0; n < N; ++n) {
              double a = 0, ws = 0;
              for (int64_t k = 0; k < K; ++k) {
                a += std::fabs(double(x[t * ldx + k]) * w.data<float>()[n * K + k]);
                ws += std::fabs(double(w.data<float>()[n * K + k]));
              }
              // int8 values: SIMD kernels round x to 16-bit codes (half a step per element).
              const double tol = 1e-5 * a + 1e-6 + (i8 ? 0.51 * xmax / 32639 * ws : 0.0);
              if (!(std::fabs(double(y[t * ldy + n]) - ref[t * ldy + n]) <= tol)) ++bad;
            }
            for (int64_t n = N; n < ldy; ++n) bad += y[t * ldy + n] != -7.f;  // gap untouched
          }
          CHECK(bad == 0);
          // int8 values: the AVX-512 VNNI and AVX2 kernels add the same integers, so they agree
          // bit for bit.
          if (i8 && isa != "scalar") {
            if (first.empty())
              first = y;
            else
              CHECK(first == y);
          }
        }
      }
    }
  // A pruned input holding NaN does not reach y with f32 values (x is read under the mask).
  const Linear l = sparse_int8(4, 64, "magnitude-2:4", 5);
  const SparseBitmask& sb = std::get<SparseBitmask>(l.repr);
  std::vector<float> x(64, 1.f);
  for (int64_t k = 0; k < 64; ++k)
    if (!((sb.bitmask.data<uint8_t>()[k / 8] >> (k % 8)) & 1)) x[size_t(k)] = NAN;
  for (const std::string& isa : isas) {
    CAPTURE(isa);
    std::vector<float> y(4, 0.f);
    sparse_linear_decode_isa(sb, isa, x.data(), 1, 64, y.data(), 4, 64, 4);
    CHECK(std::isfinite(y[0]));
  }
  CHECK_THROWS_WITH_AS(sparse_linear_decode_isa(sb, "neon9", x.data(), 1, 64,
                                                std::vector<float>(4).data(), 4, 64, 4),
                       doctest::Contains("kernel set 'neon9'"), Error);
}

TEST_CASE("sparse kernels: op groups and the fused gate·up + SiLU·mul equal the separate ops") {
  // Backend::linear_group runs SparseBitmask (or Sparse24) members on the decode path as one pool
  // loop over all their rows with x prepared once, and linear_swiglu computes gate and up rows and
  // SiLU·mul in one loop: every row comes from the kernel of a single linear(), so the results are
  // bit-identical for every value format, T and thread count. Mixed formats, a biased gate and
  // T above the decode range take the separate ops.
  const int64_t K = 200;    // 3 chunks of 64 + a tail; a multiple of 4 for 2:4
  set_pool_backoff(false);  // every thread takes chunks even while the machine is busy
  auto sparse_of = [&](int64_t out, const std::string& chain, CompressSpec::SparseStorage st,
                       uint32_t seed) {
    std::mt19937 rng(seed);
    std::normal_distribution<float> nd(0.f, 0.05f);
    Tensor t = Tensor::empty(DType::F32, {out, K});
    for (int64_t i = 0; i < t.numel(); ++i) t.data<float>()[i] = nd(rng);
    CompressSpec spec = compress_spec_from_name(chain);
    spec.sparse_storage = st;
    return compress_linear(make_dense("blk.0.w.weight", t, K, out), spec);
  };
  using St = CompressSpec::SparseStorage;
  const std::tuple<const char*, St, bool> cases[] = {
      {"magnitude-50+int8", St::Bitmask, false},       {"magnitude-50", St::Bitmask, false},
      {"magnitude-30+fp16", St::Bitmask, false},       {"magnitude-2:4+int8", St::Sparse, true},
      {"magnitude-2:4+int8-tensor", St::Sparse, true}, {"magnitude-2:4", St::Sparse, true}};
  for (int threads : {1, 2, 3}) {
    auto be = make_cpu_backend(threads);
    for (const auto& c : cases) {
      const std::string chain = std::get<0>(c);
      const bool s24 = std::get<2>(c);
      std::vector<Linear> g;
      g.push_back(sparse_of(200, chain, std::get<1>(c), 11));
      g.push_back(sparse_of(64, chain, std::get<1>(c), 12));
      g.push_back(sparse_of(70, chain, std::get<1>(c), 13));
      for (const Linear& l : g)
        REQUIRE((s24 ? std::holds_alternative<Sparse24>(l.repr)
                     : std::holds_alternative<SparseBitmask>(l.repr)));
      g[0].bias = Tensor::empty(DType::F32, {200});
      for (int64_t j = 0; j < 200; ++j) g[0].bias.data<float>()[j] = 0.125f * float(j % 9);
      const int64_t F = 300;
      const Linear gate = sparse_of(F, chain, std::get<1>(c), 21);
      const Linear up = sparse_of(F, chain, std::get<1>(c), 22);
      for (bool mixed : {false, true}) {
        std::vector<Linear> gg = g;
        // A member of the other sparse format: the group falls back to one linear() each.
        if (mixed)
          gg.push_back(sparse_of(9, "magnitude-2:4+int8", s24 ? St::Bitmask : St::Sparse, 14));
        for (int64_t T : {1, 2, 4, 5}) {
          CAPTURE(threads);
          CAPTURE(chain);
          CAPTURE(mixed);
          CAPTURE(T);
          std::mt19937 rng{uint32_t(T * 7 + threads)};
          std::normal_distribution<float> nd(0.f, 1.f);
          Tensor x = Tensor::empty(DType::F32, {T, K});
          for (int64_t i = 0; i < T * K; ++i) x.data<float>()[i] = nd(rng);
          CHECK(test::group_mismatches(*be, gg, x) == 0);
          if (mixed) continue;
          // gate·up + SiLU·mul: fused against linear, linear, swiglu.
          const auto [y_same, u_same] = test::swiglu_matches(*be, x, gate, up, F);
          CHECK(y_same);
          CHECK(u_same);
        }
      }
    }
  }
  set_pool_backoff(true);
}

TEST_CASE("sparse kernels: int8 decode sums do not overflow at the extremes of x and w") {
  // Every kept weight at its largest code (u = 255) and every input at max|x| (q = 32639): the
  // integer row sum Σ u q reaches 255 * 32639 * K / 2, beyond int32 for K >= 512 at 50 %. The
  // outputs must still be the exact product (as the f64 reference of the same weights).
  for (int64_t K : {int64_t(576), int64_t(2048), int64_t(4096)})
    for (const std::string chain : {"magnitude-50+int8", "magnitude-2:4+int8"}) {
      CAPTURE(K);
      CAPTURE(chain);
      const int64_t N = 8;
      Tensor t = Tensor::empty(DType::F32, {N, K});
      for (int64_t i = 0; i < N * K; ++i)
        t.data<float>()[i] = (i % 2 ? 1.f : 0.5f) * (i / K % 2 ? -1.f : 1.f);
      CompressSpec spec = compress_spec_from_name(chain);
      spec.sparse_storage = CompressSpec::SparseStorage::Sparse;
      const Linear l = compress_linear(make_dense("blk.0.w.weight", t, K, N), spec);
      auto be = make_cpu_backend(1);
      for (float xv : {1.f, -1.f}) {
        Tensor x = Tensor::empty(DType::F32, {1, K}), y = Tensor::empty(DType::F32, {1, N});
        for (int64_t k = 0; k < K; ++k) x.data<float>()[k] = xv;
        be->linear(y, x, l);
        const Tensor w = dequantize_weight(l);
        for (int64_t n = 0; n < N; ++n) {
          double s = 0;
          for (int64_t k = 0; k < K; ++k) s += double(w.data<float>()[n * K + k]) * xv;
          CHECK(y.data<float>()[n] == doctest::Approx(s).epsilon(1e-5));
        }
      }
    }
}
