// Compressed students: a pruned folder (sparse bitmask or dense with zeros) trains with its
// masks fixed; a uniformly structurally pruned folder (ffn-<pct>) trains at its smaller width;
// a low-rank folder is refused until its factors train.
#include <doctest/doctest.h>

#include <filesystem>
#include <random>
#include <vector>

#include "compress/compress.h"
#include "engine/backend.h"
#include "engine/safetensors.h"
#include "models/loader.h"
#include "tests/test_util.h"
#include "train/distill.h"

using namespace minfer;
using namespace minfer::train;

namespace {

const char* kLlama = "tests/fixtures/parity/llama";

std::vector<int32_t> random_ids(size_t n, int32_t V, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<int32_t> v(n);
  for (int32_t& x : v) x = int32_t(rng() % uint64_t(V));
  return v;
}

DistillOptions opts(const std::string& student) {
  DistillOptions o;
  o.student = student;
  o.loss = {0.5f, 2.f, false};
  o.steps = 4;
  o.batch = 2;
  o.seq = 8;
  o.lr = 1e-2f;
  o.warmup = 1;
  o.seed = 3;
  o.progress = false;
  return o;
}

void compress_to(const std::string& method, const std::string& out,
                 CompressSpec::SparseStorage storage = CompressSpec::SparseStorage::Auto) {
  auto be = make_cpu_backend(1);
  auto m = load_model(kLlama, *be);
  CompressSpec spec = compress_spec_from_name(method);
  spec.sparse_storage = storage;
  compress_model(*m, spec, nullptr, false);
  save_compressed(*m, nullptr, out, spec);
}

}  // namespace

TEST_CASE("train compressed: a pruned student keeps its masks fixed while the rest trains") {
  auto be = make_cpu_backend(1);
  auto teacher = load_model(kLlama, *be);
  const auto ids = random_ids(300, 101, 1);
  test::TempDir tmp("distill-pruned");
  for (auto storage : {CompressSpec::SparseStorage::Sparse, CompressSpec::SparseStorage::Dense}) {
    const bool sparse = storage == CompressSpec::SparseStorage::Sparse;
    CAPTURE(sparse);
    const std::string dir = tmp / (sparse ? "sparse" : "dense"),
                      out = tmp / (sparse ? "out-sparse" : "out-dense");
    compress_to("magnitude-50", dir, storage);
    // The student as it starts (dequantized) and its recorded masks.
    auto st = make_student(opts(dir), *teacher);
    const auto fixed = st->params().fixed_zeros();
    REQUIRE(fixed.size() == 2 * 7);  // every Linear of both blocks
    const DistillResult r = distill(*teacher, nullptr, ids, "ids", {}, opts(dir), out);
    REQUIRE(r.finished);
    auto after = SafetensorsFile::open(out + "/model.safetensors");
    size_t zeros = 0, moved = 0, kept_nonzero = 0;
    for (const auto& [name, nz] : fixed) {
      CAPTURE(name);
      const float* w0 = st->params().w(name);
      const Tensor& w1 = after->get(name);
      REQUIRE(size_t(w1.numel()) == st->params().find(name).numel);
      size_t z = 0;
      for (int64_t i = 0; i < w1.numel(); ++i) {
        if (w0[i] == 0.f) {
          ++z;
          CHECK(w1.data<float>()[i] == 0.f);  // a pruned weight stays exactly zero
          zeros += w1.data<float>()[i] == 0.f;
        } else {
          ++kept_nonzero;
          moved += w1.data<float>()[i] != w0[i];
        }
      }
      CHECK(z == nz);
      CHECK(z >= size_t(w1.numel()) / 2);  // magnitude-50
    }
    CHECK(zeros > 0);
    // The kept weights train (AdamW moves essentially all of them).
    CHECK(double(moved) > 0.9 * double(kept_nonzero));
  }
}

TEST_CASE(
    "train compressed: equal per-layer widths (ffn-<pct>) train, a compressed folder is a "
    "student") {
  auto be = make_cpu_backend(1);
  auto teacher = load_model(kLlama, *be);
  const auto ids = random_ids(300, 101, 1);
  test::TempDir tmp("distill-ffn");
  auto m = load_model(kLlama, *be);
  const int64_t F = m->config().ffn;
  const std::string dir = tmp / "ffn";
  compress_to("fp16", dir);
  // A folder whose per-layer widths differ is refused with a clear message; equal widths train.
  ModelConfig sc = load_model(dir, *be)->config();
  sc.layer_ffn.assign(size_t(sc.n_layers), F);
  TrainLlama uniform(sc);
  CHECK(uniform.config().ffn == F);
  CHECK(uniform.config().layer_ffn.empty());
  sc.layer_ffn[0] = F - 2;
  CHECK_THROWS_WITH(TrainLlama{sc}, doctest::Contains("different widths per layer"));
  // The compressed (fp16) folder is a student too: no masks, every weight trains.
  auto st = make_student(opts(dir), *teacher);
  CHECK(st->params().fixed_zeros().empty());
  const DistillResult r = distill(*teacher, nullptr, ids, "ids", {}, opts(dir), tmp / "out");
  CHECK(r.finished);
}
