// The run layout of Sparse24 int8 values (SparseRun, engine/formats/sparse24.h) that the CPU
// backend builds at upload (kernels/cpu/sparse24.h sparse24_repack_for_cpu): decode through the
// run gives bit for bit the row layout's y (the same integer sums), on odd shapes and partial row
// groups; prefill reads the run; op groups and the fused gate·up too; the weight's saved tensors do
// not change; what is not repacked.
#include <doctest/doctest.h>

#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "compress/compress.h"
#include "engine/backend.h"
#include "kernels/cpu/sparse24.h"
#include "tests/test_util.h"

using namespace minfer;

namespace {

// magnitude-2:4 + values of random weights [out, in], stored Sparse24.
Linear pruned24(int64_t out, int64_t in, const std::string& values, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.f, 0.05f);
  Tensor t = Tensor::empty(DType::F32, {out, in});
  for (int64_t i = 0; i < t.numel(); ++i) t.data<float>()[i] = nd(rng);
  CompressSpec spec = compress_spec_from_name("magnitude-2:4" + values);
  spec.sparse_storage = CompressSpec::SparseStorage::Sparse;
  return compress_linear(make_dense("blk.0.w.weight", t, in, out), spec);
}

std::vector<float> randx(int64_t T, int64_t ldx, int64_t K, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.f, 1.f);
  std::vector<float> x(size_t(T * ldx), std::nanf(""));  // NaN in the stride gap
  for (int64_t t = 0; t < T; ++t)
    for (int64_t k = 0; k < K; ++k) x[size_t(t * ldx + k)] = nd(rng);
  return x;
}

}  // namespace

TEST_CASE("sparse run layout: decode and prefill bit-identical to the row layout") {
  auto be = make_cpu_backend(2);  // two pool threads: partial row groups at the chunk edges
  const std::string reads = sparse24_run_reader() ? "yes" : "no";
  MESSAGE("sparse-24 run layout read here: " << reads);
  // K % 32 != 0 (a partial last step), K % 8 == 4 (a padding nibble), long rows (several int64
  // flushes of 128 steps), N = 4 (one group) to 200 (pool chunks that split groups).
  const std::pair<int64_t, int64_t> shapes[] = {{4, 4},    {8, 12},    {4, 100},
                                                {12, 132}, {16, 520},  {8, 1000},
                                                {4, 9004}, {200, 576}, {96, 1536}};
  for (const char* values : {"+int8", "+int8-tensor"})
    for (auto [N, K] : shapes) {
      CAPTURE(values);
      CAPTURE_BINDING(N);
      CAPTURE_BINDING(K);
      const Linear l = pruned24(N, K, values, uint32_t(N * 13 + K));
      REQUIRE(std::holds_alternative<Sparse24>(l.repr));
      const Sparse24& rows = std::get<Sparse24>(l.repr);
      CHECK_FALSE(rows.run.defined());
      Linear lr = l;  // shares idx and the values; upload adds the run to the copy only
      be->upload(lr);
      REQUIRE(std::holds_alternative<Sparse24>(lr.repr));
      const Sparse24& run = std::get<Sparse24>(lr.repr);
      CHECK(run.run.defined() == sparse24_run_reader());
      if (run.run.defined()) {
        const int64_t steps = (K + 31) / 32;
        CHECK(run.run.bytes.dim(0) == N / 4);
        CHECK(run.run.bytes.dim(1) == steps * SparseRun::kBlock);  // 20 bytes a row per 32 inputs
      }
      for (int64_t T : {1, 2, 3, 4, 9}) {
        CAPTURE(T);
        const int64_t ldx = K + 3, ldy = N + 2;
        const std::vector<float> x = randx(T, ldx, K, uint32_t(T * 7 + K));
        std::vector<float> a(size_t(T * ldy), -7.f), b(size_t(T * ldy), -7.f);
        sparse24_linear(rows, x.data(), T, ldx, a.data(), ldy, K, N);
        sparse24_linear(run, x.data(), T, ldx, b.data(), ldy, K, N);
        CHECK(a == b);  // bit for bit, the stride gap untouched in both
        if (T <= 4) {
          // Against the scalar reference within the 16-bit rounding of x (as
          // tests/test_sparse24.cpp), so the identity above is not two equal wrong answers.
          std::vector<float> r(size_t(T * ldy), -7.f);
          sparse24_linear_ref(rows, x.data(), T, ldx, r.data(), ldy, K, N);
          const Tensor w = dequantize_weight(l);
          int bad = 0;
          for (int64_t t = 0; t < T; ++t) {
            double xmax = 0;
            for (int64_t k = 0; k < K; ++k)
              xmax = std::max(xmax, double(std::fabs(x[size_t(t * ldx + k)])));
            for (int64_t n = 0; n < N; ++n) {
              double ws = 0, ax = 0;
              for (int64_t k = 0; k < K; ++k) {
                const double wk = w.data<float>()[n * K + k];
                ws += std::fabs(wk);
                ax += std::fabs(wk * x[size_t(t * ldx + k)]);
              }
              const double tol = 1e-5 * ax + 1e-6 + 0.51 * xmax / 32639 * ws;
              bad += !(std::fabs(double(b[size_t(t * ldy + n)]) - r[size_t(t * ldy + n)]) <= tol);
            }
          }
          CHECK(bad == 0);
        }
      }
      // The AVX2 kernel set by name (as tests/test_sparse24.cpp runs it) on both layouts. N = 200
      // splits into pool chunks of 66 / 67 rows: ranges that start and end inside a group of 4
      // (the run kernel's one-row path).
      if (run.run.defined() && N >= 8) {
        std::vector<float> x = randx(1, K, K, 5);
        std::vector<float> a(size_t(N), 0.f), b(size_t(N), 0.f);
        sparse24_linear_decode_isa(run, "avx2", x.data(), 1, K, a.data(), N, K, N);
        sparse24_linear_decode_isa(rows, "avx2", x.data(), 1, K, b.data(), N, K, N);
        CHECK(a == b);
      }
      // The saved form is the row layout's: the same dequantized weight.
      const Tensor w0 = dequantize_weight(l), w1 = dequantize_weight(lr);
      CHECK(std::equal(w0.data<float>(), w0.data<float>() + w0.numel(), w1.data<float>()));
    }
}

TEST_CASE("sparse run layout: op groups and fused gate·up through the run") {
  auto be = make_cpu_backend(2);
  const int64_t K = 576, F = 1536;
  const Linear g = pruned24(F, K, "+int8", 1), u = pruned24(F, K, "+int8", 2),
               q = pruned24(576, K, "+int8", 3), k = pruned24(192, K, "+int8", 4);
  Linear gr = g, ur = u, qr = q, kr = k;
  for (Linear* l : {&gr, &ur, &qr, &kr}) be->upload(*l);
  const auto S = [](const Linear& l) -> const Sparse24& { return std::get<Sparse24>(l.repr); };
  for (int64_t T = 1; T <= 4; ++T) {
    CAPTURE(T);
    const std::vector<float> x = randx(T, K, K, uint32_t(T));
    std::vector<float> y0(size_t(T * F)), u0(size_t(T * F)), y1(size_t(T * F)), u1(size_t(T * F));
    sparse24_linear_swiglu(S(g), S(u), x.data(), T, K, y0.data(), F, u0.data(), F, K, F);
    sparse24_linear_swiglu(S(gr), S(ur), x.data(), T, K, y1.data(), F, u1.data(), F, K, F);
    CHECK(y0 == y1);
    CHECK(u0 == u1);
    std::vector<float> a0(size_t(T * 576)), b0(size_t(T * 192)), a1(a0), b1(b0);
    const Sparse24GroupItem rows[] = {{&S(q), a0.data(), 576, 576}, {&S(k), b0.data(), 192, 192}};
    const Sparse24GroupItem runs[] = {{&S(qr), a1.data(), 576, 576}, {&S(kr), b1.data(), 192, 192}};
    sparse24_linear_group(rows, 2, x.data(), T, K, K);
    sparse24_linear_group(runs, 2, x.data(), T, K, K);
    CHECK(a0 == a1);
    CHECK(b0 == b1);
  }
}

TEST_CASE("sparse run layout: what is not repacked") {
  auto be = make_cpu_backend(1);
  // f32 values (their kernels read the row layout), out % 4 != 0, a Sparse24 repacked twice.
  Linear f = pruned24(8, 64, "", 1);
  be->upload(f);
  CHECK_FALSE(std::get<Sparse24>(f.repr).run.defined());
  Linear odd = pruned24(6, 64, "+int8", 1);
  be->upload(odd);
  CHECK_FALSE(std::get<Sparse24>(odd.repr).run.defined());
  Linear l = pruned24(8, 64, "+int8", 1);
  be->upload(l);
  CHECK_FALSE(sparse24_repack_for_cpu(std::get<Sparse24>(l.repr)));  // already has its run
}
