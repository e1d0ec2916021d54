// Sparse kernels (kernels/cpu/sparse.h) beyond the format table of test_formats.cpp: the decode
// path of int8 values (x rounded to 16-bit codes) on a row longer than one int32 block, rows of
// different lengths, and inf / NaN in x (the f32 path propagates them as the dense product does).
#include <doctest/doctest.h>

#include <cmath>
#include <random>

#include "compress/compress.h"
#include "kernels/cpu/sparse.h"
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
  spec.sparse_storage = CompressSpec::SparseStorage::Sparse;
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
