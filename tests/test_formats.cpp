// Every registered weight format, one loop over a table of rows (ggml's test-quantize-fns,
// gemma.cpp's per-format tests): make it from random and adversarial matrices, check it, save it
// to safetensors and load it back, then run the CPU kernel and the emulated CUDA kernel against the
// format's reference (dequantize_weight, then an f64 matmul). Adding a format adds a row to its
// family of the table; a test fails while some registered format has no row.
#include <doctest/doctest.h>

#include <cmath>
#include <cstdlib>
#include <functional>
#include <nlohmann/json.hpp>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "compress/compress.h"
#include "engine/backend.h"
#include "engine/safetensors.h"
#include "kernels/cpu/ggml.h"
#include "tests/test_util.h"

namespace minfer {
std::unique_ptr<Backend> make_cuda_emu_backend(int device);
namespace cuda_emu {
void emu_set_device_count(int n);
}
}  // namespace minfer

using namespace minfer;
using namespace minfer::test;

namespace {

// f32 [out, in] dense Linear from values.
Linear dense(const std::vector<float>& w, int64_t out, int64_t in) {
  Tensor t = Tensor::empty(DType::F32, {out, in});
  std::copy(w.begin(), w.end(), t.data<float>());
  return make_dense("blk.0.w.weight", t, in, out);
}

// Random and adversarial weights: gaussian, a huge outlier, an all-zero row, constant rows,
// tiny (subnormal-scale) values, alternating signs.
std::vector<float> weights(int kind, int64_t out, int64_t in, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.f, 0.05f);
  std::vector<float> w(size_t(out * in));
  for (float& v : w) v = nd(rng);
  switch (kind) {
    case 0:
      break;
    case 1:
      w[size_t(in / 2)] = 40.f;                                  // one outlier in row 0
      for (int64_t k = 0; k < in; ++k) w[size_t(in + k)] = 0.f;  // row 1 all zero
      break;
    case 2:
      for (int64_t r = 0; r < out; ++r)
        for (int64_t k = 0; k < in; ++k) w[size_t(r * in + k)] = r % 2 ? 0.25f : -1e-30f;
      break;
    case 3:
      for (int64_t i = 0; i < out * in; ++i) w[size_t(i)] = i % 2 ? 1e-3f : -1e-3f;
      break;
  }
  return w;
}

// Activation calibration for the methods that read it (outliers at features 3 and 10).
ActStats stats_for(const Linear& l) {
  ActStats s;
  std::vector<float> a(size_t(l.in), 1.f);
  a[3] = 20.f;
  if (l.in > 10) a[10] = 8.f;
  s.absmax[l.name] = a;
  for (float v : a) s.sumsq[l.name].push_back(double(v) * v);
  s.tokens = 1;
  return s;
}

// A low-rank pair of factors of `l` (rank r) in `factor_method`: the first r rows of W as V, and
// U selecting them (U = [I; 0.5 I; ...]); not an SVD, only a valid LowRank to run and round-trip.
Linear lowrank_of(const Linear& l, int64_t r, const std::string& factor_method) {
  const Tensor w = dequantize_weight(l);
  std::vector<float> v(w.data<float>(), w.data<float>() + r * l.in), u(size_t(l.out * r), 0.f);
  for (int64_t o = 0; o < l.out; ++o) u[size_t(o * r + o % r)] = o < r ? 1.f : 0.5f;
  LowRank lr;
  Linear lv = dense(v, r, l.in), lu = dense(u, l.out, r);
  lv.name = l.name + ".v";
  lu.name = l.name + ".u";
  lr.v = Box<Linear>(compress_linear(lv, compress_spec_from_name(factor_method)));
  lr.u = Box<Linear>(compress_linear(lu, compress_spec_from_name(factor_method)));
  return make_linear(l.name, l.in, l.out, std::move(lr));
}

struct Row {
  std::string name;
  std::function<Linear(const Linear&)> make;
  bool int8_activations = false;  // the kernel rounds x to int8 per row (W8A8, LLM.int8())
  // Relative rounding of x in the CUDA tensor-core GEMM (rows > 8) of 16-bit dense weights:
  // x is converted to the weight's type (docs/cuda.md), f32 accumulation.
  double cuda_prefill_x_rounding = 0;
  // (N, K) shapes to run instead of the default ones (block formats need K % block == 0).
  std::vector<std::pair<int64_t, int64_t>> shapes = {};
  // The decode kernel (T <= 4) rounds x to 16-bit codes per row, step max|x| / 32639 (sparse
  // int8 values, kernels/cpu/sparse.h).
  bool int16_decode_activations = false;
  // The decode kernel (T <= 4) may round x to int8 per block of 32 (int4's and NF4's q8 path,
  // and int8's on AVX2 builds, kernels/cpu/quant.h): a step at most max|x| / 127 of the row.
  bool int8_decode_activations = false;
  // ... and rounds each weight by at most this fraction of itself: NF4 on the q8 path multiplies
  // the integer levels round(8192 v) (qm::nf4_level), off 8192 v by < 0.5, i.e. < 0.026 % of the
  // value at the smallest level (v = 0.0796: 651.92 -> 652; tests/test_quant_q8.cpp checks it).
  double decode_weight_rounding = 0;
  // A lowrank_of pair of rank r (> 0 here) in a format with int8_decode_activations: its second
  // factor U (one entry of 1 or 0.5 per row) rounds its input too, the r intermediate values V x,
  // which are the first r outputs (their U entries are 1): half a step max_{i<r} |y_i| / 127 more
  // per output.
  int64_t int8_decode_inner_rank = 0;
};

// The table, in four families (one test case each, so that they run as separate processes under
// scripts/test-shards.sh): every registered method (and its option variants), plus the formats
// no method makes yet. Add a row for a new format to its family.

// Dense and Quantized formats, as the methods make them.
std::vector<Row> method_rows() {
  std::vector<Row> r;
  for (std::string m :
       {"f32",           "fp16",          "bf16",          "int8",   "int8-tensor", "int8-g32",
        "int4-g32",      "int4-g32-asym", "int4-g64-asym", "int4",   "int3",        "int3-g32",
        "int3-g32-clip", "nf4",           "nf4-dq",        "binary", "ternary",     "ternary-row",
        "llm-int8",      "w8a8",          "w8a8-static"}) {
    const CompressSpec spec = compress_spec_from_name(m);
    const bool act = spec.last().method == "llm-int8" || spec.last().method == "w8a8";
    const double half = m == "fp16" ? 0x1p-11 : m == "bf16" ? 0x1p-8 : 0;
    r.push_back({m,
                 [spec](const Linear& l) {
                   const ActStats st = stats_for(l);
                   return compress_linear(l, spec, &st);
                 },
                 act, half});
    r.back().int8_decode_activations = m == "int4" || m == "int4-g32" || m == "int4-g32-asym" ||
                                       m == "int4-g64-asym" || m == "nf4" || m == "nf4-dq" ||
                                       m == "int8" || m == "int8-tensor" || m == "int8-g32";
    r.back().decode_weight_rounding = m == "nf4" || m == "nf4-dq" ? 2.6e-4 : 0;
  }
  return r;
}

// Pruned weights: SparseBitmask, Sparse24 and SparseCsr with their value formats.
std::vector<Row> sparse_rows() {
  std::vector<Row> r;
  // Pruned weights stored as SparseBitmask (forced, whatever the crossover table says), its
  // values in every value format the format takes.
  for (std::string m :
       {"magnitude-50", "magnitude-60+int8", "wanda-50+int8", "magnitude-50+int8-tensor"}) {
    CompressSpec spec = compress_spec_from_name(m);
    spec.sparse_storage = CompressSpec::SparseStorage::Sparse;
    Row row{m, [spec](const Linear& l) {
              const ActStats st = stats_for(l);
              return compress_linear(l, spec, &st);
            }};
    row.int16_decode_activations = m.find("+int8") != std::string::npos;
    r.push_back(row);
  }
  for (std::string f : {"fp16", "bf16"})
    r.push_back({"magnitude-50(" + f + " values)", [f](const Linear& l) {
                   CompressSpec sp = compress_spec_from_name("magnitude-50");
                   sp.sparse_storage = CompressSpec::SparseStorage::Sparse;
                   Linear s = compress_linear(l, sp);
                   SparseBitmask sb = std::get<SparseBitmask>(s.repr);
                   sb.values = Box<Linear>(compress_linear(*sb.values, compress_spec_from_name(f)));
                   return make_linear(l.name, l.in, l.out, std::move(sb));
                 }});
  // 2:4 pruned weights stored as Sparse24 (2-bit indices; forced): f32, int8 per row and per
  // tensor, fp16 values. K % 4 == 0; 100 and 132 leave a padding nibble (K % 8 == 4).
  const std::vector<std::pair<int64_t, int64_t>> shapes24 = {{5, 64}, {7, 100}, {33, 132}};
  for (std::string m : {"magnitude-2:4", "wanda-2:4+int8", "magnitude-2:4+int8-tensor"}) {
    CompressSpec spec = compress_spec_from_name(m);
    spec.sparse_storage = CompressSpec::SparseStorage::Sparse;
    Row row{m + "(sparse24)", [spec](const Linear& l) {
              const ActStats st = stats_for(l);
              Linear s = compress_linear(l, spec, &st);
              MINFER_CHECK(std::holds_alternative<Sparse24>(s.repr), "expected sparse-24");
              return s;
            }};
    row.int16_decode_activations = m.find("+int8") != std::string::npos;
    row.shapes = shapes24;
    r.push_back(row);
  }
  {
    Row row{"magnitude-2:4(sparse24, fp16 values)", [](const Linear& l) {
              CompressSpec sp = compress_spec_from_name("magnitude-2:4");
              sp.sparse_storage = CompressSpec::SparseStorage::Sparse;
              Sparse24 s = std::get<Sparse24>(compress_linear(l, sp).repr);
              s.values = Box<Linear>(compress_linear(*s.values, compress_spec_from_name("fp16")));
              return make_linear(l.name, l.in, l.out, std::move(s));
            }};
    row.shapes = shapes24;
    r.push_back(row);
  }
  // SparseCsr (16-bit columns; forced): every value format; per-row pruning (every row the same
  // count, no padding) and per-layer pruning (rows of different counts, padded to the longest;
  // kind 1's all-zero row keeps nothing).
  for (std::string m : {"magnitude-90", "magnitude-80-layer", "magnitude-90+int8",
                        "wanda-70+int8-tensor", "magnitude-60-layer+int8"}) {
    CompressSpec spec = compress_spec_from_name(m);
    spec.sparse_storage = CompressSpec::SparseStorage::Csr;
    r.push_back({m + "(csr)", [spec](const Linear& l) {
                   const ActStats st = stats_for(l);
                   Linear s = compress_linear(l, spec, &st);
                   MINFER_CHECK(std::holds_alternative<SparseCsr>(s.repr), "expected sparse-csr");
                   return s;
                 }});
  }
  // 2:4 weights as CSR: saved in compressed-tensors' sparse-24-bitmask layout, loaded as CSR.
  for (std::string m : {"magnitude-2:4", "magnitude-2:4+int8"}) {
    CompressSpec spec = compress_spec_from_name(m);
    spec.sparse_storage = CompressSpec::SparseStorage::Csr;
    Row row{m + "(csr)", [spec](const Linear& l) {
              Linear s = compress_linear(l, spec);
              MINFER_CHECK(std::holds_alternative<SparseCsr>(s.repr), "expected sparse-csr");
              return s;
            }};
    row.shapes = shapes24;
    r.push_back(row);
  }
  for (std::string f : {"fp16", "bf16"})
    r.push_back({"magnitude-90-layer(csr, " + f + " values)", [f](const Linear& l) {
                   CompressSpec sp = compress_spec_from_name("magnitude-90-layer");
                   sp.sparse_storage = CompressSpec::SparseStorage::Csr;
                   SparseCsr c = std::get<SparseCsr>(compress_linear(l, sp).repr);
                   c.values = Box<Linear>(compress_linear(*c.values, compress_spec_from_name(f)));
                   return make_linear(l.name, l.in, l.out, std::move(c));
                 }});
  return r;
}

// Codebook and LowRank: the formats that own centroids or child Linears.
std::vector<Row> codebook_lowrank_rows() {
  std::vector<Row> r;
  // Codebooks (k-means weight sharing): every index width, per row and per group (K = 100, 130
  // leave a partial last group), weighted by calibration, after pruning.
  for (std::string m : {"kmeans2", "kmeans3", "kmeans4", "kmeans5-g32", "kmeans6", "kmeans7-g16",
                        "kmeans8", "kmeans4-g48-weighted", "wanda-50+kmeans3"}) {
    const CompressSpec spec = compress_spec_from_name(m);
    r.push_back({m, [spec](const Linear& l) {
                   const ActStats st = stats_for(l);
                   return compress_linear(l, spec, &st);
                 }});
  }
  r.push_back({"lowrank(f32)", [](const Linear& l) { return lowrank_of(l, 3, "f32"); }});
  r.push_back({"lowrank(int8)", [](const Linear& l) { return lowrank_of(l, 4, "int8"); }});
  r.back().int8_decode_activations = true;  // int8 decode on the q8 path (AVX2 builds)
  r.back().int8_decode_inner_rank = 4;
  return r;
}

// GGML block formats.
std::vector<Row> ggml_rows() {
  std::vector<Row> r;
  // GGML block formats (GGUF weights kept as stored): random valid blocks of every type; the
  // 32-weight types' decode kernel rounds x to int8 per block of 32 (a finer step than per row).
  for (uint32_t ty : ggml_blocks_types()) {
    const bool k_quant = ggml_block_size(ty) == 256;
    Row row{"ggml-" + ggml_type_name(ty),
            [ty](const Linear& l) {
              return make_linear(l.name, l.in, l.out,
                                 test::random_ggml_blocks(ty, l.out, l.in, uint32_t(l.out * l.in)));
            },
            ggml_has_q8_path(ty)};
    row.shapes = k_quant ? std::vector<std::pair<int64_t, int64_t>>{{5, 256}, {33, 512}}
                         : std::vector<std::pair<int64_t, int64_t>>{{5, 64}, {7, 96}, {33, 160}};
    r.push_back(row);
  }
  return r;
}

// Every family, the whole table.
std::vector<Row> rows() {
  std::vector<Row> r;
  for (auto family : {method_rows, sparse_rows, codebook_lowrank_rows, ggml_rows})
    for (Row& row : family()) r.push_back(std::move(row));
  return r;
}

std::vector<float> run(Backend& be, const Linear& l, const std::vector<float>& x, int64_t T) {
  Tensor xh = Tensor::empty(DType::F32, {T, l.in});
  std::copy(x.begin(), x.end(), xh.data<float>());
  Tensor xd = be.upload(xh);
  Tensor y = be.alloc({T, l.out});
  be.linear(y, xd, l);
  std::vector<float> out(size_t(T * l.out));
  be.to_host(y, out.data());
  return out;
}

// Each row of `table`: make the format from random and adversarial matrices, check it, save and
// load it, run the CPU and the emulated CUDA kernel against the reference.
void round_trip_and_run(const std::vector<Row>& table) {
  // MINFER_TEST_QUICK=1 (the aarch64 suite under qemu, scripts/ci-arm.sh, and the sanitizer
  // runs, Makefile TEST_QUICK): the emulated CUDA backend, portable C++ that runs the same on
  // every architecture, checks each format on its first shape only (emulating CUDA under qemu or
  // ASan is most of this case's time); the CPU backend checks every shape. The native run checks
  // both everywhere.
  const char* quick_env = std::getenv("MINFER_TEST_QUICK");
  const bool quick = quick_env && std::string(quick_env) == "1";
  auto cpu = make_cpu_backend(2);
  cuda_emu::emu_set_device_count(1);
  auto cuda = make_cuda_emu_backend(0);
  const std::vector<std::pair<int64_t, int64_t>> shapes = {{5, 64}, {7, 100}, {33, 130}};
  for (const Row& row : table) {
    bool first_shape = true;
    for (auto [N, K] : row.shapes.empty() ? shapes : row.shapes) {
      const bool with_cuda = !quick || first_shape;
      first_shape = false;
      for (int kind = 0; kind < 4; ++kind) {
        CAPTURE(row.name);
        CAPTURE_BINDING(N);
        CAPTURE_BINDING(K);
        CAPTURE(kind);
        const Linear d = dense(weights(kind, N, K, uint32_t(N * 131 + K + kind)), N, K);
        Linear q = row.make(d);
        CHECK_NOTHROW(check_linear(q));
        const Tensor ref = dequantize_weight(q);
        const float* W = ref.data<float>();

        // Save -> load: the same format, the same weights, bit for bit.
        test::TempDir dir("formats");
        std::vector<std::pair<std::string, Tensor>> tensors;
        TensorSink sink{tensors};
        const json meta = save_linear(q, q.name, sink);
        save_safetensors(dir / "w.safetensors", tensors, {});
        const Linear back = load_linear(FileTensors(SafetensorsFile::open(dir / "w.safetensors")),
                                        q.name, json::parse(meta.dump()), K, N);
        CHECK(linear_format(back) == linear_format(q));
        CHECK(back.weight_bytes() == q.weight_bytes());
        const Tensor ref2 = dequantize_weight(back);
        CHECK(std::equal(W, W + N * K, ref2.data<float>()));

        for (int64_t T : {1, 3, 17}) {
          CAPTURE(T);
          std::mt19937 rng(uint32_t(T * 7 + kind));
          std::normal_distribution<float> nd(0.f, 1.f);
          std::vector<float> x(size_t(T * K));
          for (float& v : x) v = nd(rng);
          // Reference y = x · Wᵀ in f64, and the tolerance each output may differ by: f32
          // summation order, plus for int8 activations half a code step per element.
          // A static W8A8 scale rounds to steps of act_scale instead of the row's max / 127.
          const W8A8* a8 = std::get_if<W8A8>(&q.repr);
          const double static_step = a8 && a8->act == ActScale::Static ? a8->act_scale : 0;
          std::vector<double> yr(size_t(T * N)), tol(size_t(T * N)), sum_abs(size_t(T * N));
          for (int64_t t = 0; t < T; ++t) {
            double xmax = 0;
            for (int64_t k = 0; k < K; ++k) xmax = std::max(xmax, double(std::fabs(x[t * K + k])));
            const double step = static_step > 0 ? static_step : xmax / 127;
            for (int64_t n = 0; n < N; ++n) {
              double s = 0, a = 0;
              for (int64_t k = 0; k < K; ++k) {
                s += double(x[t * K + k]) * W[n * K + k];
                a += std::fabs(double(x[t * K + k]) * W[n * K + k]);
              }
              double wsum = 0;
              for (int64_t k = 0; k < K; ++k) wsum += std::fabs(double(W[n * K + k]));
              yr[size_t(t * N + n)] = s;
              sum_abs[size_t(t * N + n)] = a;
              tol[size_t(t * N + n)] =
                  1e-5 * a + 1e-6 + (row.int8_activations ? 0.51 * step * wsum : 0) +
                  (row.int16_decode_activations && T <= 4 ? 0.51 * xmax / 32639 * wsum : 0) +
                  (row.int8_decode_activations && T <= 4
                       ? 0.51 * step * wsum * (1 + row.decode_weight_rounding) +
                             row.decode_weight_rounding * a
                       : 0);
            }
            if (row.int8_decode_inner_rank > 0 && T <= 4) {
              double zmax = 0;
              for (int64_t i = 0; i < row.int8_decode_inner_rank; ++i)
                zmax = std::max(zmax, std::fabs(yr[size_t(t * N + i)]));
              for (int64_t n = 0; n < N; ++n) tol[size_t(t * N + n)] += 0.51 * 1.01 * zmax / 127;
            }
          }
          for (Backend* be : {cpu.get(), cuda.get()}) {
            if (be == cuda.get() && !with_cuda) continue;
            CAPTURE(be->name());
            const std::vector<float> y = run(*be, q, x, T);
            const double xr = be == cuda.get() && T > 8 ? row.cuda_prefill_x_rounding : 0;
            int bad = 0;
            for (size_t i = 0; i < y.size(); ++i)
              if (!(std::fabs(double(y[i]) - yr[i]) <= tol[i] + 1.01 * xr * sum_abs[i])) ++bad;
            CHECK(bad == 0);
          }
        }
      }
    }
  }
}

}  // namespace

TEST_CASE("formats: every registered format has a row in the round-trip table") {
  std::set<std::string> covered;
  for (const Row& row : rows()) {
    CAPTURE(row.name);
    const auto [N, K] = row.shapes.empty() ? std::pair<int64_t, int64_t>{5, 64} : row.shapes[0];
    covered.insert(linear_repr(row.make(dense(weights(0, N, K, 1), N, K))));
  }
  for (const std::string& r : registered_reprs()) {
    CAPTURE(r);
    CHECK(covered.count(r) == 1);
  }
}

TEST_CASE("formats: Dense and Quantized formats round-trip and run on CPU and CUDA (emulated)") {
  round_trip_and_run(method_rows());
}

TEST_CASE("formats: sparse formats round-trip and run on CPU and CUDA (emulated)") {
  round_trip_and_run(sparse_rows());
}

TEST_CASE("formats: Codebook and LowRank round-trip and run on CPU and CUDA (emulated)") {
  round_trip_and_run(codebook_lowrank_rows());
}

TEST_CASE("formats: GGML block formats round-trip and run on CPU and CUDA (emulated)") {
  round_trip_and_run(ggml_rows());
}

TEST_CASE(
    "formats: load rejects unknown representations and mismatched shapes, naming the tensor") {
  std::vector<std::pair<std::string, Tensor>> tensors;
  TensorSink sink{tensors};
  const Linear q =
      compress_linear(dense(weights(0, 4, 64, 1), 4, 64), compress_spec_from_name("int8"));
  json meta = save_linear(q, "blk.q.weight", sink);
  test::TempDir dir("formats");
  save_safetensors(dir / "w.safetensors", tensors, {});
  FileTensors src(SafetensorsFile::open(dir / "w.safetensors"));
  CHECK_THROWS_WITH_AS(load_linear(src, "blk.q.weight", meta, 64, 5),
                       doctest::Contains("'blk.q.weight': stored as [4, 64]"), Error);
  json bad = meta;
  bad["repr"] = "sparse-magic";
  CHECK_THROWS_WITH_AS(load_linear(src, "blk.q.weight", bad, 64, 4),
                       doctest::Contains("unknown representation 'sparse-magic'"), Error);
  bad = meta;
  bad["scheme"] = "int5";
  CHECK_THROWS_WITH_AS(load_linear(src, "blk.q.weight", bad, 64, 4),
                       doctest::Contains("unknown quantization scheme 'int5'"), Error);
  bad = meta;
  bad.erase("group");
  CHECK_THROWS_WITH_AS(load_linear(src, "blk.q.weight", bad, 64, 4),
                       doctest::Contains("lacks 'group'"), Error);
  // LowRank: rank out of range.
  LowRank lr;
  CHECK_THROWS_WITH_AS(make_linear("lr.weight", 64, 4, lr), doctest::Contains("both factors"),
                       Error);
}
