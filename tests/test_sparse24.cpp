// The 2:4 format with 2-bit indices (engine/formats/sparse24.h, kernels/cpu/sparse24.h): every
// decode kernel set this machine runs against the scalar reference, bit-identical int8 results
// across SIMD sets and against the SparseBitmask kernel of the same weights, the
// compressed-tensors sparse-24-bitmask layout, and the errors for weights that are not 2:4.
#include <doctest/doctest.h>
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>
#include <nlohmann/json.hpp>
#include <random>

#include "compress/compress.h"
#include "engine/backend.h"
#include "engine/formats/sparse24_convert.h"
#include "engine/safetensors.h"
#include "kernels/cpu/sparse.h"
#include "kernels/cpu/sparse24.h"
#include "tests/test_util.h"

using namespace minfer;
using test::FileTensors;

namespace {

bool same_bytes(const Tensor& a, const Tensor& b) {
  return a.dtype() == b.dtype() && a.nbytes() == b.nbytes() &&
         std::memcmp(a.raw(), b.raw(), a.nbytes()) == 0;
}

Tensor randn_t(int64_t out, int64_t in, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.f, 0.05f);
  Tensor t = Tensor::empty(DType::F32, {out, in});
  for (int64_t i = 0; i < t.numel(); ++i) t.data<float>()[i] = nd(rng);
  return t;
}

// magnitude-2:4 (+ values) of random weights [out, in], stored with `storage`.
Linear pruned24(int64_t out, int64_t in, const std::string& values, uint32_t seed,
                CompressSpec::SparseStorage storage = CompressSpec::SparseStorage::Sparse) {
  CompressSpec spec = compress_spec_from_name("magnitude-2:4" + values);
  spec.sparse_storage = storage;
  return compress_linear(make_dense("blk.0.w.weight", randn_t(out, in, seed), in, out), spec);
}

}  // namespace

TEST_CASE("sparse-24: every decode kernel set against the scalar reference") {
  auto be = make_cpu_backend(2);  // two pool threads: large shapes run in several chunks
  const std::vector<std::string> isas = sparse24_decode_isas();
  REQUIRE(!isas.empty());
  CHECK(isas.back() == "scalar");
  MESSAGE("sparse-24 decode kernel sets here: " << fmt::format("{}", fmt::join(isas, ", ")));
  // Odd lengths: one group, a padding nibble (K % 8 == 4), partial 16 / 32 / 128-input steps,
  // several 128-input chunks, a long row.
  const std::pair<int64_t, int64_t> shapes[] = {{5, 4},    {7, 12},   {3, 100},  {9, 132},
                                                {4, 520},  {6, 1000}, {2, 9004}, {96, 1024},
                                                {2, 20000}};  // pool chunks; several int64 flushes
  for (const char* values : {"", "+int8", "+int8-tensor", "+fp16"})
    for (auto [N, K] : shapes) {
      CAPTURE(values);
      CAPTURE_BINDING(K);
      const Linear l = pruned24(N, K, values, uint32_t(N * 31 + K));
      REQUIRE(std::holds_alternative<Sparse24>(l.repr));
      const Sparse24& s = std::get<Sparse24>(l.repr);
      const bool i8 = std::string(values).starts_with("+int8");
      const Tensor w = dequantize_weight(l);
      // The same weights as SparseBitmask, for the int8 cross-check below.
      const Linear lb =
          pruned24(N, K, values, uint32_t(N * 31 + K), CompressSpec::SparseStorage::Bitmask);
      REQUIRE(std::holds_alternative<SparseBitmask>(lb.repr));
      const Tensor wb = dequantize_weight(lb);
      CHECK(std::equal(w.data<float>(), w.data<float>() + w.numel(), wb.data<float>()));
      for (int64_t T = 1; T <= 4; ++T) {
        CAPTURE(T);
        const int64_t ldx = K + 3, ldy = N + 2;  // strides wider than the rows
        std::mt19937 rng{uint32_t(T * 7 + K)};
        std::normal_distribution<float> nd(0.f, 1.f);
        std::vector<float> x(size_t(T * ldx), std::nanf(""));  // NaN in the stride gap
        for (int64_t t = 0; t < T; ++t)
          for (int64_t k = 0; k < K; ++k) x[size_t(t * ldx + k)] = nd(rng);
        std::vector<float> ref(size_t(T * ldy), -7.f);
        sparse24_linear_ref(s, x.data(), T, ldx, ref.data(), ldy, K, N);
        std::vector<float> first;
        for (const std::string& isa : isas) {
          CAPTURE(isa);
          std::vector<float> y(size_t(T * ldy), -7.f);
          sparse24_linear_decode_isa(s, isa, x.data(), T, ldx, y.data(), ldy, K, N);
          int bad = 0;
          for (int64_t t = 0; t < T; ++t) {
            double xmax = 0;
            for (int64_t k = 0; k < K; ++k)
              xmax = std::max(xmax, double(std::fabs(x[size_t(t * ldx + k)])));
            for (int64_t n = 0; n < N; ++n) {
              double a = 0, ws = 0, d = 0;
              for (int64_t k = 0; k < K; ++k) {
                const double wk = w.data<float>()[n * K + k];
                a += std::fabs(double(x[size_t(t * ldx + k)]) * wk);
                ws += std::fabs(wk);
                d += double(x[size_t(t * ldx + k)]) * wk;
              }
              // The reference is the f64 product within f32 summation error.
              if (!(std::fabs(double(ref[size_t(t * ldy + n)]) - d) <= 1e-5 * a + 1e-6)) ++bad;
              // int8 values: SIMD kernels round x to 16-bit codes (half a step per element).
              const double tol = 1e-5 * a + 1e-6 + (i8 ? 0.51 * xmax / 32639 * ws : 0.0);
              if (!(std::fabs(double(y[size_t(t * ldy + n)]) - d) <= tol)) ++bad;
            }
            for (int64_t n = N; n < ldy; ++n) bad += y[size_t(t * ldy + n)] != -7.f;
          }
          CHECK(bad == 0);
          if (i8 && isa != "scalar") {
            // The AVX-512 and AVX2 kernels add the same integers: the same y, bit for bit, and
            // the same as the SparseBitmask kernel of that ISA on the same weights.
            if (first.empty())
              first = y;
            else
              CHECK(first == y);
            const std::vector<std::string> bisas = sparse_decode_isas();
            if (std::find(bisas.begin(), bisas.end(), isa) != bisas.end()) {
              std::vector<float> yb(size_t(T * ldy), -7.f);
              sparse_linear_decode_isa(std::get<SparseBitmask>(lb.repr), isa, x.data(), T, ldx,
                                       yb.data(), ldy, K, N);
              CHECK(yb == y);
            }
          }
        }
        // The backend entry point: decode and prefill (T = 9 tiles + sgemm).
        std::vector<float> y(size_t(T * ldy), -7.f);
        sparse24_linear(s, x.data(), T, ldx, y.data(), ldy, K, N);
        CHECK(std::isfinite(y[0]));
      }
      const int64_t T = 9;
      std::vector<float> x(size_t(T * K)), y(size_t(T * N)), r(size_t(T * N));
      for (size_t i = 0; i < x.size(); ++i) x[i] = float(int(i % 17) - 8) * 0.1f;
      sparse24_linear(s, x.data(), T, K, y.data(), N, K, N);
      sparse24_linear_ref(s, x.data(), T, K, r.data(), N, K, N);
      for (size_t i = 0; i < y.size(); ++i) CHECK(std::fabs(y[i] - r[i]) <= 1e-4f);
    }
  // int8 values: a row of x with an inf or NaN gives NaN outputs in that row only; f32 values: a
  // NaN at an input no kept value reads does not reach y.
  const Linear l8 = pruned24(4, 64, "+int8", 3);
  const Linear lf = pruned24(4, 64, "", 3);
  const Sparse24& s8 = std::get<Sparse24>(l8.repr);
  const Sparse24& sf = std::get<Sparse24>(lf.repr);
  const Tensor wf = dequantize_weight(lf);
  for (const std::string& isa : isas) {
    CAPTURE(isa);
    std::vector<float> x(128, 0.5f), y(8, 0.f);
    x[64 + 9] = INFINITY;
    sparse24_linear_decode_isa(s8, isa, x.data(), 2, 64, y.data(), 4, 64, 4);
    for (int n = 0; n < 4; ++n) {
      CHECK(std::isfinite(y[size_t(n)]));
      CHECK(std::isnan(y[size_t(4 + n)]));
    }
    std::vector<float> xf(64, 1.f), yf(4, 0.f);
    for (int64_t k = 0; k < 64; ++k)
      if (wf.data<float>()[k] == 0.f) xf[size_t(k)] = NAN;  // row 0's pruned inputs
    sparse24_linear_decode_isa(sf, isa, xf.data(), 1, 64, yf.data(), 4, 64, 4);
    CHECK(std::isfinite(yf[0]));
  }
  CHECK_THROWS_WITH_AS(sparse24_linear_decode_isa(sf, "neon9", std::vector<float>(64).data(), 1, 64,
                                                  std::vector<float>(4).data(), 4, 64, 4),
                       doctest::Contains("kernel set 'neon9'"), Error);
}

TEST_CASE("sparse-24: built from 2:4 weights only, errors name the tensor") {
  // A group with 3 nonzeros.
  std::vector<float> w(2 * 8, 0.f);
  w[0] = 1.f;
  w[3] = 2.f;
  w[8 + 4] = 1.f;
  w[8 + 5] = 1.f;
  w[8 + 7] = 1.f;  // row 1, inputs 4..7: 3 of 4
  CHECK_FALSE(is_2of4(w.data(), 8, 2));
  CHECK_THROWS_WITH_AS(sparse24_from_dense(w.data(), 8, 2, "model.layers.3.mlp.up_proj.weight"),
                       doctest::Contains("tensor 'model.layers.3.mlp.up_proj.weight': row 1 "
                                         "inputs 4..7 hold 3 nonzero weights"),
                       Error);
  CHECK_THROWS_WITH_AS(sparse24_from_dense(w.data(), 6, 2, "t.weight"),
                       doctest::Contains("tensor 't.weight': a 2:4 weight needs the row length "
                                         "to be a multiple of 4, found 6"),
                       Error);
  // Fewer than 2 nonzeros: free slots at the lowest free positions, value 0.
  w[8 + 7] = 0.f;
  REQUIRE(is_2of4(w.data(), 8, 2));
  const Sparse24 s = sparse24_from_dense(w.data(), 8, 2, "t.weight");
  CHECK(s.idx.data<uint8_t>()[0] == uint8_t((0 | 3 << 2) | (0 | 1 << 2) << 4));  // {0,3} {4,5}
  CHECK(s.idx.data<uint8_t>()[1] == uint8_t((0 | 1 << 2) | (0 | 1 << 2) << 4));  // {0,1} {4,5}
  const Linear l = make_linear("t.weight", 8, 2, s);
  const Tensor back = dequantize_weight(l);
  CHECK(std::equal(w.begin(), w.end(), back.data<float>()));
  // A corrupt index code (i0 >= i1) is named.
  Sparse24 bad = s;
  bad.idx = s.idx.clone();
  bad.idx.data<uint8_t>()[1] = uint8_t(0x0f);  // row 1 group 0: {3, 3}
  CHECK_THROWS_WITH_AS(make_linear("t.weight", 8, 2, bad),
                       doctest::Contains("sparse-24 't.weight': row 1 inputs 0..3"), Error);
  // Auto / sparse / bitmask / dense storage names.
  CHECK(sparse_storage_from_name("bitmask") == CompressSpec::SparseStorage::Bitmask);
  CHECK_THROWS_WITH_AS(
      sparse_storage_from_name("ell"),
      doctest::Contains("expected auto, sparse, bitmask, csr or dense, found 'ell'"), Error);
  // Auto follows the measured 2:4 table; Bitmask and Dense never give Sparse24.
  const Linear d24 = make_dense("a.weight", randn_t(4, 64, 2), 64, 4);
  for (const char* chain : {"magnitude-2:4+int8", "magnitude-2:4", "magnitude-2:4+fp16"}) {
    CAPTURE(chain);
    const std::string vf =
        std::string(chain) == "magnitude-2:4" ? "f32" : std::string(chain).substr(14);
    CHECK(std::holds_alternative<Sparse24>(
              compress_linear(d24, compress_spec_from_name(chain)).repr) ==
          sparse24_storage_wins(vf));
    CompressSpec b = compress_spec_from_name(chain);
    b.sparse_storage = CompressSpec::SparseStorage::Bitmask;
    CHECK(std::holds_alternative<SparseBitmask>(compress_linear(d24, b).repr));
    b.sparse_storage = CompressSpec::SparseStorage::Dense;
    CHECK_FALSE(std::holds_alternative<Sparse24>(compress_linear(d24, b).repr));
  }
  CHECK_FALSE(sparse24_storage_wins("fp16"));  // no SIMD kernel for 16-bit values
  // Non-2:4 prune steps never give Sparse24, whatever the storage.
  CompressSpec p50 = compress_spec_from_name("magnitude-50+int8");
  p50.sparse_storage = CompressSpec::SparseStorage::Sparse;
  CHECK(std::holds_alternative<SparseBitmask>(
      compress_linear(make_dense("a.weight", randn_t(4, 64, 1), 64, 4), p50).repr));
}

TEST_CASE("sparse-24: reads and writes compressed-tensors' sparse-24-bitmask layout") {
  // Fixture: tests/fixtures/sparse/make_sparse24_fixture.py (compressed-tensors'
  // Sparse24BitMaskTensor; <m>.dense is the package's own decompress()).
  auto file = SafetensorsFile::open("tests/fixtures/sparse/sparse24_bitmask.safetensors");
  FileTensors src(file);
  for (const char* name : {"a", "b"}) {
    CAPTURE(name);
    const Tensor dense = file->get(std::string(name) + ".dense");
    const int64_t out = dense.dim(0), in = dense.dim(1);
    const Linear l = load_linear(src, name, json{{"repr", "sparse-24"}}, in, out);
    REQUIRE(std::holds_alternative<Sparse24>(l.repr));
    const Tensor w = dequantize_weight(l), want = dense.to_f32();
    CHECK(std::equal(w.data<float>(), w.data<float>() + w.numel(), want.data<float>()));
    CHECK(std::get<Dense>(std::get<Sparse24>(l.repr).values->repr).w.raw() ==
          file->get(std::string(name) + ".compressed").raw());  // a view of the file
    std::vector<std::pair<std::string, Tensor>> ts;
    TensorSink sink{ts};
    const json meta = save_linear(l, name, sink);
    CHECK(meta.value("layout", "") == "sparse-24-bitmask");
    CHECK(meta.value("repr", "") == "sparse-24");
    CHECK(ts.size() == 3);
    for (const auto& [n, t] : ts) {
      CAPTURE_BINDING(n);
      const Tensor f = file->get(n);
      CHECK(t.shape_str() == f.shape_str());
      CHECK(same_bytes(t, f));
    }
  }
  // A bitmask group keeping 3 of 4 is named.
  struct Map final : TensorSource {
    std::map<std::string, Tensor> m;
    bool has(const std::string& n) const override { return m.count(n) > 0; }
    Tensor get(const std::string& n) const override { return m.at(n); }
  } bad;
  for (const char* f : {".shape", ".compressed", ".bitmask"})
    bad.m[std::string("a") + f] = file->get(std::string("a") + f).clone();
  const Tensor dense = file->get("a.dense");
  bad.m["a.bitmask"].data<uint8_t>()[bad.m["a.bitmask"].dim(1)] |= 0x0f;  // row 1, inputs 0..3
  CHECK_THROWS_WITH_AS(
      load_linear(bad, "a", json{{"repr", "sparse-24"}}, dense.dim(1), dense.dim(0)),
      doctest::Contains("sparse-24 'a': bitmask row 1 inputs 0..3 keep 4 of 4"), Error);
}

TEST_CASE("sparse-24: a compressed-tensors 2:4 tensor becomes Sparse24 at load where it wins") {
  // Fixture: tests/fixtures/sparse/make_ct_module_names_fixture.py, written by compressed-tensors
  // 0.9.4's own "sparse-24-bitmask" model compressor (up_proj, [6, 16], 2:4) and "sparse-bitmask"
  // one (down_proj, [5, 24], unstructured). A folder written by the package names no minfer
  // representation: its tensors read as "sparse-bitmask", and the CPU backend's upload turns the
  // 2:4 one into Sparse24 where that kernel is the measured winner.
  auto file = SafetensorsFile::open("tests/fixtures/sparse/ct_module_names.safetensors");
  FileTensors src(file);
  auto be = make_cpu_backend(1);
  const std::string up = "model.layers.0.mlp.up_proj", down = "model.layers.0.mlp.down_proj";
  const Tensor ref = file->get("reference." + up + ".weight");
  const int64_t out = ref.dim(0), in = ref.dim(1);
  Linear l = load_linear(src, up + ".weight", json{{"repr", "sparse-bitmask"}}, in, out);
  REQUIRE(std::holds_alternative<SparseBitmask>(l.repr));
  const bool wins = sparse24_decode_wins(*std::get<SparseBitmask>(l.repr).values);
  CHECK(wins == sparse24_storage_wins("f32"));  // the same table as compress's auto
  be->upload(l);
  CHECK(std::holds_alternative<Sparse24>(l.repr) == wins);
  const Tensor w = dequantize_weight(l);
  CHECK(std::equal(w.data<float>(), w.data<float>() + w.numel(), ref.data<float>()));
  if (wins) {
    // The values are still the file's bytes (no copy).
    const Sparse24& s = std::get<Sparse24>(l.repr);
    CHECK(std::get<Dense>(s.values->repr).w.raw() == file->get(up + ".compressed").raw());
    // y = x W^T against the f64 product of the package's decompressed matrix.
    Tensor x = randn_t(1, in, 5), y = Tensor::empty(DType::F32, {1, out});
    be->linear(y, x, l);
    for (int64_t n = 0; n < out; ++n) {
      double e = 0;
      for (int64_t k = 0; k < in; ++k)
        e += double(ref.data<float>()[n * in + k]) * double(x.data<float>()[k]);
      CHECK(y.data<float>()[n] == doctest::Approx(e).epsilon(1e-5));
    }
  }
  // Written back: still compressed-tensors' sparse-24-bitmask tensors, byte for byte.
  std::vector<std::pair<std::string, Tensor>> ts;
  TensorSink sink{ts};
  save_linear(l, up + ".weight", sink);
  CHECK(ts.size() == 3);
  for (const auto& [n, t] : ts) {
    CAPTURE_BINDING(n);
    REQUIRE(file->has(n));
    CHECK(same_bytes(t, file->get(n)));
  }
  // The unstructured tensor stays a bitmask.
  Linear d = load_linear(src, down + ".weight", json{{"repr", "sparse-bitmask"}}, 24, 5);
  be->upload(d);
  CHECK(std::holds_alternative<SparseBitmask>(d.repr));
  // int8 values (the package's tensor with its values quantized per row): the converted weight
  // decodes to exactly the bitmask kernel's outputs (the same integer sums,
  // kernels/cpu/sparse24.h).
  Linear q = load_linear(src, up + ".weight", json{{"repr", "sparse-bitmask"}}, in, out);
  {
    SparseBitmask& sb = std::get<SparseBitmask>(q.repr);
    sb.values = Box<Linear>(compress_linear(*sb.values, compress_spec_from_name("int8")));
  }
  Tensor x = randn_t(3, in, 6), y0 = Tensor::empty(DType::F32, {3, out}),
         y1 = Tensor::empty(DType::F32, {3, out});
  be->linear(y0, x, q);
  const bool wins8 = sparse24_decode_wins(*std::get<SparseBitmask>(q.repr).values);
  be->upload(q);
  CHECK(std::holds_alternative<Sparse24>(q.repr) == wins8);
  be->linear(y1, x, q);
  CHECK(same_bytes(y0, y1));
  // sparse24_from_bitmask names the tensor, row and inputs of a group that is not 2 of 4.
  SparseBitmask bad = std::get<SparseBitmask>(d.repr);
  CHECK_THROWS_WITH_AS(sparse24_from_bitmask(bad, "t.weight"),
                       doctest::Contains("sparse-24 't.weight'"), Error);
  SparseBitmask odd = std::get<SparseBitmask>(
      load_linear(src, up + ".weight", json{{"repr", "sparse-bitmask"}}, in, out).repr);
  odd.bitmask = odd.bitmask.clone();
  odd.bitmask.data<uint8_t>()[2 * 1 + 1] = 0x0f;  // row 1, inputs 8..15: 4 and 0 kept
  CHECK_THROWS_WITH_AS(sparse24_from_bitmask(odd, "t.weight"),
                       doctest::Contains("sparse-24 't.weight': bitmask row 1 inputs 8..11 keep 4"),
                       Error);
}

TEST_CASE(
    "sparse-24: a 2:4 bitmask whose mask lost exact-zero kept weights converts with re-packed "
    "values") {
  // A bitmask is W != 0: a 2:4 weight whose kept weights include exact zeros (weights read from a
  // quantized GGUF, a group with fewer than 2 nonzeros) has groups with fewer than 2 bits. The
  // CPU backend's upload re-packs such a weight's values with zeros in the free slots
  // (sparse24_from_bitmask_repacked): the same W bit for bit, and with int8 values the same y as
  // the bitmask kernel bit for bit (the same integer sums plus zeros).
  const int64_t out = 37, in = 200;
  Tensor w = randn_t(out, in, 77);
  float* p = w.data<float>();
  for (int64_t n = 0; n < out; ++n)
    for (int64_t g = 0; g < in / 4; ++g) {
      if ((n + g) % 3 == 0) p[n * in + 4 * g + (g % 4)] = 0.f;  // a kept weight may be 0
      if ((n * 7 + g) % 11 == 0)
        for (int i = 0; i < 4; ++i) p[n * in + 4 * g + i] = 0.f;  // a whole group of zeros
    }
  auto be = make_cpu_backend(2);
  for (const char* values : {"", "+fp16", "+int8", "+int8-tensor"}) {
    CAPTURE(values);
    CompressSpec spec = compress_spec_from_name(std::string("magnitude-2:4") + values);
    spec.sparse_storage = CompressSpec::SparseStorage::Bitmask;
    Linear l = compress_linear(make_dense("blk.0.w.weight", w, in, out), spec);
    REQUIRE(std::holds_alternative<SparseBitmask>(l.repr));
    const SparseBitmask& sb = std::get<SparseBitmask>(l.repr);
    CHECK_FALSE(sparse_is_2of4(sb));
    CHECK(sparse_is_at_most_2of4(sb));
    const Tensor w0 = dequantize_weight(l);
    const Linear r = make_linear(l.name, in, out, sparse24_from_bitmask_repacked(sb, l.name));
    CHECK(same_bytes(dequantize_weight(r), w0));
    CHECK(linear_format(r) == "sparse24+" + std::string(values[0] ? values + 1 : "f32"));
    Tensor x = randn_t(3, in, 8), y0 = Tensor::empty(DType::F32, {3, out}),
           y1 = Tensor::empty(DType::F32, {3, out});
    be->linear(y0, x, l);
    const bool wins = sparse24_decode_wins(*sb.values);
    be->upload(l);
    CHECK(std::holds_alternative<Sparse24>(l.repr) == wins);
    CHECK(same_bytes(dequantize_weight(l), w0));
    be->linear(y1, x, l);
    if (std::string(values).starts_with("+int8")) {
      CHECK(same_bytes(y0, y1));
    } else {
      for (int64_t i = 0; i < 3 * out; ++i)
        CHECK(y1.data<float>()[i] == doctest::Approx(y0.data<float>()[i]).epsilon(1e-5));
    }
  }
  // A group keeping 3 is an error naming the tensor, row and inputs; so is in % 4 != 0.
  CompressSpec spec = compress_spec_from_name("magnitude-50");
  spec.sparse_storage = CompressSpec::SparseStorage::Bitmask;
  const Linear u = compress_linear(make_dense("blk.0.u.weight", randn_t(4, 64, 3), 64, 4), spec);
  const SparseBitmask& ub = std::get<SparseBitmask>(u.repr);
  CHECK_FALSE(sparse_is_at_most_2of4(ub));
  CHECK_THROWS_WITH_AS(sparse24_from_bitmask_repacked(ub, "t.weight"),
                       doctest::Contains("sparse-24 't.weight'"), Error);
}
