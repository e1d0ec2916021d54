// Pruning (compress/prune.h): masks against an independent rank-counting reference written here,
// exact sparsity per row / layer / whole model, the N:M pattern, Wanda's calibration statistic,
// the sparse-or-dense storage choice, chains with quantizers, and the argument errors.
#include <doctest/doctest.h>
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>
#include <nlohmann/json.hpp>
#include <random>

#include "compress/compress.h"
#include "engine/safetensors.h"
#include "models/model.h"
#include "test_util.h"

using namespace minfer;
using namespace minfer::test;

namespace {

std::vector<float> randn(int64_t n, uint32_t seed, float sd = 1.f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.f, sd);
  std::vector<float> v(static_cast<size_t>(n));
  for (float& x : v) x = nd(rng);
  return v;
}

Linear dense(const std::vector<float>& w, int64_t out, int64_t in,
             const std::string& name = "blk.0.w.weight") {
  Tensor t = Tensor::empty(DType::F32, {out, in});
  std::copy(w.begin(), w.end(), t.data<float>());
  return make_dense(name, t, in, out);
}

// Reference: an element is pruned when fewer than k elements of its comparison group rank below
// it, where a ranks below b when score(a) < score(b), or equal scores and a has the lower index
// (a stable ascending sort, as torch.sort(stable=True) in the Wanda code). O(group²) on purpose.
std::vector<uint8_t> ref_mask(const std::vector<float>& score, int64_t groups, int64_t gsize,
                              int64_t k) {
  std::vector<uint8_t> keep(score.size(), 1);
  for (int64_t g = 0; g < groups; ++g)
    for (int64_t i = 0; i < gsize; ++i) {
      int64_t below = 0;
      const float si = score[size_t(g * gsize + i)];
      for (int64_t j = 0; j < gsize; ++j) {
        const float sj = score[size_t(g * gsize + j)];
        below += sj < si || (sj == si && j < i);
      }
      if (below < k) keep[size_t(g * gsize + i)] = 0;
    }
  return keep;
}

std::vector<uint8_t> mask_of(const Linear& l) {
  const Tensor w = dequantize_weight(l);
  std::vector<uint8_t> m(size_t(w.numel()));
  for (int64_t i = 0; i < w.numel(); ++i) m[size_t(i)] = w.data<float>()[i] != 0.f;
  return m;
}

ActStats wanda_stats(const Linear& l, const std::vector<float>& norm) {
  ActStats st;
  st.sumsq[l.name].resize(norm.size());
  for (size_t j = 0; j < norm.size(); ++j) st.sumsq[l.name][j] = double(norm[j]) * norm[j];
  st.absmax[l.name] = norm;
  st.tokens = 1;
  return st;
}

}  // namespace

TEST_CASE("prune: magnitude and wanda masks match the rank-counting reference") {
  const int64_t N = 13, K = 40;
  std::vector<float> w = randn(N * K, 1);
  // Ties: a row of equal magnitudes and a few repeated values.
  for (int64_t k = 0; k < K; ++k) w[size_t(2 * K + k)] = k % 2 ? 0.5f : -0.5f;
  w[5] = w[6] = w[7];
  std::vector<float> norm = randn(K, 2);
  for (float& v : norm) v = std::fabs(v) * 3 + 0.01f;
  const Linear l = dense(w, N, K);
  const ActStats st = wanda_stats(l, norm);
  std::vector<float> mag(w.size()), wan(w.size());
  for (int64_t i = 0; i < N * K; ++i) {
    mag[size_t(i)] = std::fabs(w[size_t(i)]);
    wan[size_t(i)] = std::fabs(w[size_t(i)]) * norm[size_t(i % K)];
  }
  struct Case {
    std::string method;
    const std::vector<float>* score;
    int64_t groups, gsize, k;
  };
  const Case cases[] = {
      {"magnitude-50", &mag, N, K, 20},
      {"magnitude-10", &mag, N, K, 4},
      {"magnitude-72.5", &mag, N, K, 29},
      {"wanda-50", &wan, N, K, 20},
      {"wanda-30", &wan, N, K, 12},
      {"magnitude-2:4", &mag, N * K / 4, 4, 2},
      {"wanda-2:4", &wan, N * K / 4, 4, 2},
      {"wanda-4:8", &wan, N * K / 8, 8, 4},
      {"magnitude-1:8", &mag, N * K / 8, 8, 7},
      {"magnitude-33-layer", &mag, 1, N * K, 171},
  };
  for (const Case& c : cases) {
    CAPTURE(c.method);
    // Prune only (dense storage for the comparison: a prune-only chain at these sparsities may
    // be stored sparse, which dequantizes to the same weights).
    const Linear p = compress_linear(l, compress_spec_from_name(c.method), &st);
    const std::vector<uint8_t> want = ref_mask(*c.score, c.groups, c.gsize, c.k);
    CHECK(mask_of(p) == want);
    // The kept weights are untouched.
    const Tensor pw = dequantize_weight(p);
    for (int64_t i = 0; i < N * K; ++i)
      if (want[size_t(i)]) CHECK(pw.data<float>()[i] == w[size_t(i)]);
  }
}

TEST_CASE("prune: exact sparsity per row, per layer, and over the whole model") {
  const int64_t N = 9, K = 64;
  const Linear l = dense(randn(N * K, 3), N, K);
  for (double pct : {0.0, 10.0, 20.0, 40.0, 50.0, 70.0, 99.0}) {
    CAPTURE(pct);
    const Linear p =
        compress_linear(l, compress_spec_from_name(fmt::format("magnitude-{:g}", pct)));
    const std::vector<uint8_t> m = mask_of(p);
    const auto per_row = int64_t(std::floor(pct / 100 * K));
    for (int64_t r = 0; r < N; ++r) {
      int64_t zeros = 0;
      for (int64_t k = 0; k < K; ++k) zeros += !m[size_t(r * K + k)];
      CHECK(zeros == per_row);
    }
    const Linear q =
        compress_linear(l, compress_spec_from_name(fmt::format("magnitude-{:g}-layer", pct)));
    const std::vector<uint8_t> mq = mask_of(q);
    CHECK(std::count(mq.begin(), mq.end(), 0) == int64_t(std::floor(pct / 100 * N * K)));
  }
  // N:M: every group of M consecutive inputs keeps exactly N.
  for (auto [n, mm] : {std::pair{2, 4}, {4, 8}, {1, 4}}) {
    const Linear p =
        compress_linear(l, compress_spec_from_name(fmt::format("magnitude-{}:{}", n, mm)));
    const std::vector<uint8_t> m = mask_of(p);
    for (int64_t g = 0; g < N * K / mm; ++g)
      CHECK(std::count(m.begin() + g * mm, m.begin() + (g + 1) * mm, 1) == n);
  }
  // Global: two matrices of different scales share one threshold: the floor(p * total) smallest
  // |w| of both go, so the small-scale matrix loses more.
  const Linear a = dense(randn(N * K, 4, 1.f), N, K, "a.weight");
  const Linear b = dense(randn(N * K, 5, 0.1f), N, K, "b.weight");
  const std::vector<int64_t> c = global_prune_counts({&a, &b}, 0.5);
  CHECK(c[0] + c[1] == N * K);
  CHECK(c[1] > c[0]);
  std::vector<float> all;
  for (const Linear* x : {&a, &b}) {
    const Tensor t = dequantize_weight(*x);
    for (int64_t i = 0; i < t.numel(); ++i) all.push_back(std::fabs(t.data<float>()[i]));
  }
  std::vector<float> sorted = all;
  std::sort(sorted.begin(), sorted.end());
  const float thr = sorted[size_t(N * K - 1)];  // the largest pruned |w|
  int64_t below_a = 0;
  for (int64_t i = 0; i < N * K; ++i) below_a += all[size_t(i)] <= thr;
  CHECK(c[0] == below_a);  // no ties in gaussian data
  // Through compress_model's path: the spec carries the per-matrix count.
  CompressSpec g = compress_spec_from_name("magnitude-50-global");
  g.steps[0].prune.global_count = c[1];
  const std::vector<uint8_t> mb = mask_of(compress_linear(b, g));
  CHECK(std::count(mb.begin(), mb.end(), 0) == c[1]);
  g.steps[0].prune.global_count = -1;
  CHECK_THROWS_WITH_AS(compress_linear(b, g), doctest::Contains("not computed"), Error);
}

TEST_CASE("prune: Wanda keeps the outputs closer than magnitude when input features differ") {
  // Features with very different norms (LLM activations have outlier features; Sun et al. 2023,
  // section 2): the layer output error ||X (W - Ŵ)ᵀ||_F is lower with Wanda's score.
  const int64_t N = 32, K = 64, T = 200;
  const Linear l = dense(randn(N * K, 6), N, K);
  std::vector<float> x = randn(T * K, 7), norm(size_t(K), 0.f);
  for (int64_t k = 0; k < K; ++k)
    for (int64_t t = 0; t < T; ++t) x[size_t(t * K + k)] *= k % 7 == 0 ? 20.f : 0.5f;
  for (int64_t k = 0; k < K; ++k) {
    double s = 0;
    for (int64_t t = 0; t < T; ++t) s += double(x[size_t(t * K + k)]) * x[size_t(t * K + k)];
    norm[size_t(k)] = float(std::sqrt(s));
  }
  const ActStats st = wanda_stats(l, norm);
  auto out_err = [&](const Linear& p) {
    const Tensor a = dequantize_weight(l), b = dequantize_weight(p);
    double e = 0;
    for (int64_t t = 0; t < T; ++t)
      for (int64_t n = 0; n < N; ++n) {
        double d = 0;
        for (int64_t k = 0; k < K; ++k)
          d += double(x[size_t(t * K + k)]) *
               (a.data<float>()[n * K + k] - b.data<float>()[n * K + k]);
        e += d * d;
      }
    return e;
  };
  for (const char* sp : {"50", "2:4"}) {
    CAPTURE(sp);
    const double em =
        out_err(compress_linear(l, compress_spec_from_name(std::string("magnitude-") + sp)));
    const double ew =
        out_err(compress_linear(l, compress_spec_from_name(std::string("wanda-") + sp), &st));
    CHECK(ew < 0.8 * em);
  }
}

TEST_CASE("prune: storage follows the crossover; values quantized like the dense weights") {
  const int64_t N = 16, K = 128;
  const Linear l = dense(randn(N * K, 8), N, K);
  // Sparse storage (forced) at 50 % with int8 values: the same weights as int8 of the pruned
  // dense matrix (per-row absmax scales do not see the zeros), in fewer bytes.
  CompressSpec sp = compress_spec_from_name("magnitude-50+int8");
  sp.sparse_storage = CompressSpec::SparseStorage::Sparse;
  const Linear s = compress_linear(l, sp);
  REQUIRE(std::holds_alternative<SparseBitmask>(s.repr));
  CHECK(linear_format(s) == "sparse50+int8");
  CHECK(s.weight_bytes() < compress_linear(l, compress_spec_from_name("int8")).weight_bytes());
  const Linear pruned = prune_linear(l, method_spec_from_name("magnitude-50").prune, nullptr);
  const Linear dq = compress_linear(pruned, compress_spec_from_name("int8"));
  const Tensor a = dequantize_weight(s), b = dequantize_weight(dq);
  CHECK(std::equal(a.data<float>(), a.data<float>() + a.numel(), b.data<float>()));
  // Auto follows the measured crossover table; Dense keeps zeros in the dense format.
  CHECK(std::holds_alternative<SparseBitmask>(
            compress_linear(l, compress_spec_from_name("magnitude-50+int8")).repr) ==
        sparse_storage_wins(0.5, "int8"));
  sp.sparse_storage = CompressSpec::SparseStorage::Dense;
  CHECK(std::holds_alternative<Quantized>(compress_linear(l, sp).repr));
  // Value formats without a sparse kernel stay dense even when sparse storage is asked for.
  CompressSpec i4 = compress_spec_from_name("magnitude-2:4+int4");
  i4.sparse_storage = CompressSpec::SparseStorage::Sparse;
  CHECK(std::holds_alternative<Quantized>(compress_linear(l, i4).repr));
  CHECK(std::holds_alternative<SparseBitmask>(
            compress_linear(l, compress_spec_from_name("magnitude-70+int8")).repr) ==
        sparse_storage_wins(0.7, "int8"));
  // The table's int8 row starts above 50 % (docs/pruning.md: 50 % did not win on every shape).
  CHECK_FALSE(sparse_storage_wins(0.5, "int8"));
  CHECK_FALSE(sparse_storage_wins(0.9, "f32"));
  CHECK_FALSE(sparse_storage_wins(0.9, "nf4-g64"));
  CHECK(sparse_value_format("fp16"));
  CHECK_FALSE(sparse_value_format("int8-g32"));
  // fp16 / bf16 weights stay 16-bit after pruning.
  const Linear h = compress_linear(l, compress_spec_from_name("fp16"));
  const Linear hp = compress_linear(h, compress_spec_from_name("magnitude-10"));
  CHECK(linear_format(hp) == "fp16");
}

TEST_CASE("prune: bad arguments fail naming the argument or the tensor") {
  auto err = [](const std::string& m, const char* what) {
    CAPTURE(m);
    CHECK_THROWS_WITH_AS(compress_spec_from_name(m), doctest::Contains(what), Error);
  };
  err("wanda-100", "[0, 100)");
  err("magnitude-150", "[0, 100)");
  err("wanda", "expected wanda-<pct>");
  err("wanda-abc", "not a number");
  err("wanda--5", "expected wanda-<pct>");
  err("wanda-4:4", "N < M");
  err("wanda-5:4", "N < M");
  err("wanda-0:4", "1 <= N < M");
  err("wanda-2:4-layer", "N:M pattern is per row");
  err("wanda-50-layer", "magnitude option");
  err("magnitude-50-rows", "unknown scope 'rows'");
  err("int8+wanda-50", "must come before");
  err("magnitude-50+int8+int4", "must come last");
  CHECK(compress_spec_name(compress_spec_from_name("wanda-50+int8")) == "wanda-50+int8");
  CHECK(compress_spec_name(compress_spec_from_name("magnitude-12.5-layer")) ==
        "magnitude-12.5-layer");
  CHECK(compress_spec_name(compress_spec_from_name("wanda-4:8")) == "wanda-4:8");
  CHECK(compress_spec_from_name("wanda-2:4").needs_calibration());
  CHECK_FALSE(compress_spec_from_name("magnitude-2:4").needs_calibration());

  const Linear l = dense(randn(4 * 100, 9), 4, 100, "model.layers.0.mlp.up_proj.weight");
  CHECK_THROWS_WITH_AS(compress_linear(l, compress_spec_from_name("magnitude-4:8")),
                       doctest::Contains("'model.layers.0.mlp.up_proj.weight': an 4:8 pattern"),
                       Error);
  CHECK_THROWS_WITH_AS(compress_linear(l, compress_spec_from_name("wanda-50")),
                       doctest::Contains("no calibration statistics"), Error);
  const Linear q = compress_linear(l, compress_spec_from_name("int8"));
  MethodSpec ms = method_spec_from_name("magnitude-50");
  CompressSpec chain;
  chain.steps = {ms};
  CHECK_THROWS_WITH_AS(compress_linear(q, chain), doctest::Contains("pruning takes float weights"),
                       Error);
}

TEST_CASE("prune: calibration records sum of x² per input feature (||X_j||² for Wanda)") {
  // Layer 0's q_proj reads rmsnorm(embedding): computed here from the fixture's tensors.
  auto be = make_cpu_backend(2);
  auto m = load_model("tests/fixtures/parity/llama", *be);
  const int64_t S = 16;
  std::vector<int32_t> ids(static_cast<size_t>(S));
  for (int64_t i = 0; i < S; ++i) ids[size_t(i)] = int32_t((i * 37 + 5) % 101);
  const ActStats st = calibrate(*m, ids, 1, S, false);
  const Tensor* emb = nullptr;
  const Tensor* g = nullptr;
  for (const Model::NamedTensor& t : m->tensors()) {
    if (t.name == "model.embed_tokens.weight") emb = t.t;
    if (t.name == "model.layers.0.input_layernorm.weight") g = t.t;
  }
  REQUIRE(emb);
  REQUIRE(g);
  const int64_t C = emb->dim(1);
  std::vector<double> want(size_t(C), 0.0);
  const Tensor e32 = emb->to_f32(), g32 = g->to_f32();
  for (int64_t t = 0; t < S; ++t) {
    const float* row = e32.data<float>() + ids[size_t(t)] * C;
    double ss = 0;
    for (int64_t c = 0; c < C; ++c) ss += double(row[c]) * row[c];
    const double inv = 1.0 / std::sqrt(ss / double(C) + double(m->config().norm_eps));
    for (int64_t c = 0; c < C; ++c) {
      const double v = row[c] * inv * g32.data<float>()[c];
      want[size_t(c)] += v * v;
    }
  }
  const std::vector<double>& got = st.sumsq.at("model.layers.0.self_attn.q_proj.weight");
  REQUIRE(int64_t(got.size()) == C);
  for (int64_t c = 0; c < C; ++c)
    CHECK(got[size_t(c)] == doctest::Approx(want[size_t(c)]).epsilon(1e-4));
}

namespace {

bool same_bytes(const Tensor& a, const Tensor& b) {
  return a.dtype() == b.dtype() && a.nbytes() == b.nbytes() &&
         std::memcmp(a.raw(), b.raw(), a.nbytes()) == 0;
}
}  // namespace

TEST_CASE("prune: sparse-bitmask reads and writes the compressed-tensors layout") {
  // Fixture: tests/fixtures/sparse/make_sparse_bitmask_fixture.py (compressed-tensors'
  // bitmask_compress: packbits little-endian per row, int64 row offsets and shape).
  auto file = SafetensorsFile::open("tests/fixtures/sparse/sparse_bitmask.safetensors");
  FileTensors src(file);
  for (const char* name : {"a", "b", "c"}) {
    CAPTURE(name);
    const Tensor dense = file->get(std::string(name) + ".dense");
    const int64_t out = dense.dim(0), in = dense.dim(1);
    const Linear l = load_linear(src, name, json{{"repr", "sparse-bitmask"}}, in, out);
    const Tensor w = dequantize_weight(l), want = dense.to_f32();
    CHECK(std::equal(w.data<float>(), w.data<float>() + w.numel(), want.data<float>()));
    // Written back: the same four tensors, byte for byte.
    std::vector<std::pair<std::string, Tensor>> ts;
    TensorSink sink{ts};
    save_linear(l, name, sink);
    int found = 0;
    for (const auto& [n, t] : ts)
      for (const char* f : {".compressed", ".bitmask", ".shape", ".row_offsets"})
        if (n == std::string(name) + f) {
          CAPTURE_BINDING(n);
          CHECK(same_bytes(t, file->get(n)));
          ++found;
        }
    // b is 2:4: written back in the sparse-24-bitmask layout (no row_offsets; the shape's bytes
    // are the same, as [2, 1]).
    CHECK(found == (std::string(name) == "b" ? 3 : 4));
    // Our own pruning of the dense matrix gives the same layout.
    const Linear d = make_dense(name, dense, in, out);
    CompressSpec keep_all = compress_spec_from_name("magnitude-0");
    keep_all.sparse_storage = CompressSpec::SparseStorage::Sparse;
    const Linear mine = compress_linear(d, keep_all);
    const SparseBitmask& sb = std::get<SparseBitmask>(mine.repr);
    CHECK(same_bytes(sb.bitmask.view({out * ((in + 7) / 8)}),
                     file->get(std::string(name) + ".bitmask").view({out * ((in + 7) / 8)})));
    CHECK(same_bytes(sb.row_offsets, file->get(std::string(name) + ".row_offsets")));
  }
  // b keeps 8 of 16 in every row (2:4): its values are a view of the file, not a copy.
  const Linear b = load_linear(src, "b", json{{"repr", "sparse-bitmask"}}, 16, 6);
  const Dense& bv = std::get<Dense>(std::get<SparseBitmask>(b.repr).values->repr);
  CHECK(bv.w.raw() == file->get("b.compressed").raw());
  // A corrupt offset is named.
  std::vector<std::pair<std::string, Tensor>> ts;
  const Linear a = load_linear(src, "a", json{{"repr", "sparse-bitmask"}}, 20, 7);
  SparseBitmask bad = std::get<SparseBitmask>(a.repr);
  bad.row_offsets = bad.row_offsets.clone();
  bad.row_offsets.data<int64_t>()[2] += 1;
  CHECK_THROWS_WITH_AS(make_linear("a", 20, 7, bad),
                       doctest::Contains("sparse 'a': row_offsets[2]"), Error);
  CHECK_THROWS_WITH_AS(load_linear(src, "a", json{{"repr", "sparse-bitmask"}}, 24, 7),
                       doctest::Contains("shape tensor"), Error);
}

TEST_CASE("prune: 2:4 weights read and write compressed-tensors' sparse-24-bitmask layout") {
  // Fixture: tests/fixtures/sparse/make_sparse24_fixture.py, written by compressed-tensors 0.9.4's
  // Sparse24BitMaskTensor (shape I64 [2, 1], compressed [rows, cols / 2], bitmask; no
  // row_offsets); <m>.dense is the package's own decompress().
  auto file = SafetensorsFile::open("tests/fixtures/sparse/sparse24_bitmask.safetensors");
  FileTensors src(file);
  for (const char* name : {"a", "b"}) {
    CAPTURE(name);
    const Tensor dense = file->get(std::string(name) + ".dense");
    const int64_t out = dense.dim(0), in = dense.dim(1);
    const Linear l = load_linear(src, name, json{{"repr", "sparse-bitmask"}}, in, out);
    const SparseBitmask& sb = std::get<SparseBitmask>(l.repr);
    CHECK(sparse_is_2of4(sb));
    const Tensor w = dequantize_weight(l), want = dense.to_f32();
    CHECK(std::equal(w.data<float>(), w.data<float>() + w.numel(), want.data<float>()));
    // Zero-copy: the values are the file's bytes.
    CHECK(std::get<Dense>(sb.values->repr).w.raw() ==
          file->get(std::string(name) + ".compressed").raw());
    // Written back: the same three tensors, byte for byte and shape for shape, no row_offsets.
    std::vector<std::pair<std::string, Tensor>> ts;
    TensorSink sink{ts};
    const json meta = save_linear(l, name, sink);
    CHECK(meta.value("layout", "") == "sparse-24-bitmask");
    CHECK(ts.size() == 3);
    for (const auto& [n, t] : ts) {
      CAPTURE_BINDING(n);
      const Tensor f = file->get(n);
      CHECK(t.shape_str() == f.shape_str());
      CHECK(same_bytes(t, f));
    }
    // Our own 2:4 pruning of the dense matrix keeps the same positions (the package's topk(2)
    // per group of 4 is magnitude-2:4 when no two |w| of a group tie).
    CompressSpec m24 = compress_spec_from_name("magnitude-2:4");
    m24.sparse_storage = CompressSpec::SparseStorage::Bitmask;
    // The package saw the unpruned matrix; the stored values are its 2 largest per group, so
    // pruning the decompressed matrix again keeps exactly them.
    const Linear mine = compress_linear(make_dense(name, dense, in, out), m24);
    CHECK(same_bytes(std::get<SparseBitmask>(mine.repr).bitmask.view({out * ((in + 7) / 8)}),
                     file->get(std::string(name) + ".bitmask").view({out * ((in + 7) / 8)})));
  }
  // A group keeping 3 of 4 is named.
  const Tensor c = file->get("a.compressed"), sh = file->get("a.shape");
  Tensor bm = file->get("a.bitmask").clone();
  bm.data<uint8_t>()[3] |= 0x0f;  // row 1, inputs 8..11: all four kept
  struct Src final : TensorSource {
    std::map<std::string, Tensor> m;
    bool has(const std::string& n) const override { return m.count(n) > 0; }
    Tensor get(const std::string& n) const override { return m.at(n); }
  } bad;
  bad.m = {{"a.compressed", c}, {"a.shape", sh}, {"a.bitmask", bm}};
  CHECK_THROWS_WITH_AS(load_linear(bad, "a", json{{"repr", "sparse-bitmask"}}, 16, 6),
                       doctest::Contains("sparse 'a': sparse-24-bitmask row 1 inputs 8..11 keep 4"),
                       Error);
  CHECK_THROWS_WITH_AS(load_linear(bad, "a", json{{"repr", "sparse-bitmask"}}, 16, 5),
                       doctest::Contains("shape tensor"), Error);
}

TEST_CASE("prune: sparse tensors carry compressed-tensors' module names") {
  // Fixture: tests/fixtures/sparse/make_ct_module_names_fixture.py, written by compressed-tensors
  // 0.9.4's own model compressors on a state dict with real names: BaseSparseCompressor.compress
  // stores the weight `<m>.weight` as `<m>.compressed`, `<m>.bitmask`, `<m>.shape` (and
  // `<m>.row_offsets` for sparse-bitmask); reference.<m>.weight is the package's decompress().
  auto file = SafetensorsFile::open("tests/fixtures/sparse/ct_module_names.safetensors");
  FileTensors src(file);
  for (const std::string m : {"model.layers.0.mlp.down_proj", "model.layers.0.mlp.up_proj"}) {
    CAPTURE(m);
    const std::string wn = m + ".weight";
    const Tensor ref = file->get("reference." + wn);
    const int64_t out = ref.dim(0), in = ref.dim(1);
    const Linear l = load_linear(src, wn, json{{"repr", "sparse-bitmask"}}, in, out);
    const Tensor w = dequantize_weight(l);
    CHECK(std::equal(w.data<float>(), w.data<float>() + w.numel(), ref.data<float>()));
    // Written back under the weight's name: exactly the package's tensor names, byte for byte.
    std::vector<std::pair<std::string, Tensor>> ts;
    TensorSink sink{ts};
    save_linear(l, wn, sink);
    std::vector<std::string> want, got;
    for (const auto& [n, t] : file->tensors())
      if (n.starts_with(m + ".") && !n.ends_with(".bias")) want.push_back(n);
    for (const auto& [n, t] : ts) {
      got.push_back(n);
      CAPTURE_BINDING(n);
      REQUIRE(file->has(n));
      CHECK(t.shape_str() == file->get(n).shape_str());
      CHECK(same_bytes(t, file->get(n)));
    }
    std::sort(want.begin(), want.end());
    std::sort(got.begin(), got.end());
    CHECK(got == want);
    CHECK(want.size() == (m.ends_with("up_proj") ? 3u : 4u));
  }
  // Folders written before the names followed compressed-tensors (`<m>.weight.compressed`) load.
  struct Src final : TensorSource {
    std::map<std::string, Tensor> m;
    bool has(const std::string& n) const override { return m.count(n) > 0; }
    Tensor get(const std::string& n) const override { return m.at(n); }
  } old;
  const std::string m = "model.layers.0.mlp.down_proj";
  for (const char* f : {".compressed", ".bitmask", ".shape", ".row_offsets"})
    old.m[m + ".weight" + f] = file->get(m + f);
  const Tensor ref = file->get("reference." + m + ".weight");
  const Tensor w = dequantize_weight(
      load_linear(old, m + ".weight", json{{"repr", "sparse-bitmask"}}, ref.dim(1), ref.dim(0)));
  CHECK(std::equal(w.data<float>(), w.data<float>() + w.numel(), ref.data<float>()));
}
