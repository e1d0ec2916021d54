// Compressed students: a pruned folder (sparse bitmask or dense with zeros) trains with its
// masks fixed; a uniformly structurally pruned folder (ffn-<pct>) trains at its smaller width;
// a low-rank folder trains its two factors (W = U·V stays rank r).
#include <doctest/doctest.h>
#include <lapacke.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <map>
#include <random>
#include <vector>

#include "compress/compress.h"
#include "engine/backend.h"
#include "engine/safetensors.h"
#include "models/loader.h"
#include "tests/test_util.h"
#include "tests/train_test_util.h"
#include "train/distill.h"
#include "train/loss.h"

using namespace minfer;
using namespace minfer::train;

namespace {

const char* kLlama = "tests/fixtures/parity/llama";

using test::random_ids;

DistillOptions opts(const std::string& student) {
  return test::tiny_distill(student, 4, 2, 1, 1, 3);
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

TEST_CASE("train compressed: --qat or --lora-rank with a compressed student is a clear error") {
  auto be = make_cpu_backend(1);
  auto teacher = load_model(kLlama, *be);
  const auto ids = random_ids(300, 101, 1);
  test::TempDir tmp("distill-pruned-mods");
  compress_to("magnitude-50", tmp / "m50");
  DistillOptions o = opts(tmp / "m50");
  o.qat = "int8";
  CHECK_THROWS_WITH(distill(*teacher, nullptr, ids, "ids", {}, o, tmp / "out"),
                    doctest::Contains("not implemented: --qat with a compressed student"));
  o.qat.clear();
  o.lora.rank = 2;
  CHECK_THROWS_WITH(distill(*teacher, nullptr, ids, "ids", {}, o, tmp / "out"),
                    doctest::Contains("not implemented: --lora-rank with a compressed student"));
  CHECK_FALSE(std::filesystem::exists(tmp.path / "out"));
}

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
      CAPTURE_BINDING(name);
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

TEST_CASE("train compressed: a low-rank student trains its factors, W stays rank r") {
  auto be = make_cpu_backend(1);
  auto teacher = load_model(kLlama, *be);
  const auto ids = random_ids(300, 101, 1);
  test::TempDir tmp("distill-lowrank");
  const std::string dir = tmp / "lr";
  const int64_t r = 3;
  compress_to("lowrank-r3", dir);
  auto st = make_student(opts(dir), *teacher);
  FactoredLinears& f = st->factors();
  REQUIRE(f.size() == 2 * 7);
  const std::string name = "model.layers.1.mlp.down_proj.weight";

  // The factor gradients (dU = dW·Vᵀ, dV = Uᵀ·dW) against central differences of the loss.
  const int64_t B = 2, T = 5, N = B * T, V = st->config().vocab_size;
  const auto in = random_ids(size_t(N), int32_t(V), 7), tg = random_ids(size_t(N), int32_t(V), 8);
  auto loss = [&]() {
    f.materialize(st->params());
    const float* logits = st->forward(in.data(), B, T);
    return distill_loss(logits, nullptr, tg.data(), N, V, DistillLossArgs{0.f, 1.f, false}, nullptr)
        .total;
  };
  st->params().zero_grad();
  std::fill(f.params().grads().begin(), f.params().grads().end(), 0.f);
  {
    f.materialize(st->params());
    const float* logits = st->forward(in.data(), B, T);
    std::vector<float> d(size_t(N * V), 0.f);
    distill_loss(logits, nullptr, tg.data(), N, V, DistillLossArgs{0.f, 1.f, false}, d.data());
    st->backward(d.data());
    f.pull_grads(st->params());
  }
  for (const char* part : {".u", ".v"}) {
    const ParamTensor& p = f.params().find(name + part);
    for (size_t i : {size_t(0), p.numel / 2, p.numel - 1}) {
      float* w = f.params().w(name + part) + i;
      const float w0 = *w, h = 1e-2f;
      *w = w0 + h;
      const double lp = loss();
      *w = w0 - h;
      const double lm = loss();
      *w = w0;
      const double fd = (lp - lm) / (2 * h), an = f.params().g(name + part)[i];
      CAPTURE(part);
      CAPTURE(i);
      CHECK(std::abs(fd - an) <= 5e-3 * std::max(1.0, std::abs(fd)));
    }
  }
  // W's own gradient went to the factors.
  for (size_t i = 0; i < st->params().find(name).numel; ++i)
    REQUIRE(st->params().g(name)[i] == 0.f);

  // Distilled: the weights move, and every factored W is still of rank <= r.
  const DistillResult res = distill(*teacher, nullptr, ids, "ids", {}, opts(dir), tmp / "out");
  REQUIRE(res.finished);
  CHECK(res.log["factored_linears"] == 14);
  auto after = SafetensorsFile::open(tmp / "out/model.safetensors");
  auto st0 = make_student(opts(dir), *teacher);
  for (const ParamTensor& p : st0->params().table()) {
    if (!st0->factors().params().has(p.name + ".u")) continue;
    CAPTURE(p.name);
    const Tensor& w = after->get(p.name);
    const int64_t out = p.shape[0], inf = p.shape[1];
    double moved = 0;
    for (int64_t i = 0; i < w.numel(); ++i)
      moved = std::max(moved, std::abs(double(w.data<float>()[i]) - st0->params().w(p.name)[i]));
    CHECK(moved > 1e-4);
    std::vector<float> a(w.data<float>(), w.data<float>() + w.numel()),
        s(size_t(std::min(out, inf)));
    REQUIRE(LAPACKE_sgesdd(LAPACK_ROW_MAJOR, 'N', int(out), int(inf), a.data(), int(inf), s.data(),
                           nullptr, int(std::max(out, inf)), nullptr, int(inf)) == 0);
    CHECK(s[size_t(r)] <= 1e-5f * s[0]);  // singular values beyond r are rounding
  }
  // Resume: the checkpoint holds the factors and their AdamW moments (factors.safetensors); a run
  // stopped at step 2 and resumed writes the uninterrupted run's weights bit for bit.
  DistillOptions o = opts(dir);
  o.checkpoint = tmp / "ck";
  o.stop_at = 2;
  CHECK_FALSE(distill(*teacher, nullptr, ids, "ids", {}, o, tmp / "out2").finished);
  {
    auto fck = SafetensorsFile::open(tmp / "ck/factors.safetensors");
    CHECK(fck->tensors().size() == 14 * 2 * 3);  // U, V and their two moments
  }
  o.stop_at = 0;
  o.checkpoint.clear();
  o.resume = tmp / "ck";
  const DistillResult res2 = distill(*teacher, nullptr, ids, "ids", {}, o, tmp / "out2");
  REQUIRE(res2.finished);
  CHECK(res2.steps.front().step == 3);
  CHECK(res2.steps.back().loss == res.steps.back().loss);
  {
    auto a = SafetensorsFile::open(tmp / "out/model.safetensors");
    auto b = SafetensorsFile::open(tmp / "out2/model.safetensors");
    REQUIRE(a->tensors().size() == b->tensors().size());
    int same = 0;
    for (const auto& kv : a->tensors()) {
      CAPTURE(kv.first);
      const Tensor& u = b->get(kv.first);
      REQUIRE(u.nbytes() == kv.second.nbytes());
      CHECK(std::memcmp(u.raw(), kv.second.raw(), u.nbytes()) == 0);
      ++same;
    }
    CHECK(same == int(a->tensors().size()));
  }
  // The checkpoint resumed as a plain (not low-rank) student is refused, naming the file.
  DistillOptions plain = test::tiny_distill("init", 4, 2, 1, 1, 3);
  plain.resume = tmp / "ck";
  CHECK_THROWS_WITH(distill(*teacher, nullptr, ids, "ids", {}, plain, tmp / "out3"),
                    doctest::Contains("factors.safetensors"));
}

namespace {

// Zeros of the block projections in a model folder's model.safetensors: name -> zero flags.
std::map<std::string, std::vector<uint8_t>> projection_zeros(const std::filesystem::path& dir) {
  std::map<std::string, std::vector<uint8_t>> out;
  auto f = SafetensorsFile::open(dir / "model.safetensors");
  for (const auto& kv : f->tensors()) {
    const std::string& n = kv.first;
    if (n.rfind("model.layers.", 0) != 0 || n.find("_proj.weight") == std::string::npos) continue;
    const float* w = kv.second.data<float>();
    std::vector<uint8_t> z(size_t(kv.second.numel()));
    for (size_t i = 0; i < z.size(); ++i) z[i] = w[i] == 0.f;
    out[n] = z;
  }
  return out;
}

}  // namespace

TEST_CASE("train prune schedule: sparsity follows the cubic schedule, masks stay fixed") {
  auto be = make_cpu_backend(1);
  auto teacher = load_model(kLlama, *be);
  const auto ids = random_ids(300, 101, 1);
  test::TempDir tmp("prune-schedule");
  DistillOptions o = test::tiny_distill("init", 10, 2, 1, 1, 3);
  o.prune.method = "magnitude";
  o.prune.final_sparsity = 0.5;
  o.prune.start = 2;
  o.prune.end = 8;
  o.prune.every = 2;
  // The tiny model's projections: per layer q [48, 48], k, v [16, 48], o [48, 48], gate, up
  // [80, 48], down [48, 80]; a row of I inputs keeps I - round(s·I) weights.
  struct Shape {
    int64_t O, I;
  };
  const std::vector<Shape> shapes = {{48, 48}, {16, 48}, {16, 48}, {48, 48},
                                     {80, 48}, {80, 48}, {48, 80}};
  auto expected = [&](int64_t t) {
    // Zhu & Gupta: s_t = s_f + (s_i - s_f)(1 - (t - t0)/(t1 - t0))^3 at the updates 2, 4, 6, 8.
    const int64_t u = t < 2 ? 0 : std::min<int64_t>(8, t - t % 2);
    if (u == 0) return 0.0;
    const double f = 1.0 - double(u - 2) / 6.0, s = 0.5 - 0.5 * f * f * f;
    double zeros = 0, total = 0;
    for (const Shape& sh : shapes) {
      zeros += double(sh.O * std::llround(s * double(sh.I)));
      total += double(sh.O * sh.I);
    }
    return zeros / total;
  };
  const DistillResult a = distill(*teacher, nullptr, ids, "ids", {}, o, tmp / "a");
  REQUIRE(a.steps.size() == 10);
  for (const DistillStep& s : a.steps) {
    CAPTURE(s.step);
    // Between updates the sparsity does not move: no pruned weight came back.
    CHECK(s.sparsity == doctest::Approx(expected(s.step)).epsilon(1e-12));
  }
  CHECK(a.steps[1].sparsity == 0);  // the first update, at t0, is to s_i = 0
  CHECK(a.steps[3].sparsity > 0.25);
  CHECK(a.steps.back().sparsity == doctest::Approx(0.5).epsilon(0.01));
  // Every output row has exactly round(0.5 I) zeros.
  const auto za = projection_zeros(tmp / "a");
  CHECK(za.size() == 14);
  for (const auto& kv : za) {
    CAPTURE(kv.first);
    const int64_t I = kv.first.find("down_proj") != std::string::npos ? 80 : 48;
    for (size_t r = 0; r < kv.second.size() / size_t(I); ++r)
      CHECK(std::count(kv.second.begin() + long(r * I), kv.second.begin() + long((r + 1) * I),
                       uint8_t(1)) == std::llround(0.5 * double(I)));
  }
  // Stopped at step 5 (after two updates) and resumed: the masks of step 5 are inside the final
  // ones, and the run is bit-identical to the uninterrupted one.
  DistillOptions o1 = o;
  o1.checkpoint = tmp / "ck";
  o1.stop_at = 5;
  distill(*teacher, nullptr, ids, "ids", {}, o1, tmp / "b");
  const auto z5 = projection_zeros(tmp / "ck");
  for (const auto& kv : z5)
    for (size_t i = 0; i < kv.second.size(); ++i)
      if (kv.second[i]) REQUIRE(za.at(kv.first)[i]);
  DistillOptions o2 = o;
  o2.resume = tmp / "ck";
  const DistillResult b = distill(*teacher, nullptr, ids, "ids", {}, o2, tmp / "b");
  CHECK(b.steps.back().loss == a.steps.back().loss);
  auto fa = SafetensorsFile::open(tmp / "a/model.safetensors");
  auto fb = SafetensorsFile::open(tmp / "b/model.safetensors");
  for (const auto& kv : fa->tensors()) {
    CAPTURE(kv.first);
    CHECK(std::memcmp(fb->get(kv.first).raw(), kv.second.raw(), kv.second.nbytes()) == 0);
  }

  // Wanda: the same schedule with |w|·||x|| scores (a different mask than magnitude's).
  o.prune.method = "wanda";
  const DistillResult w = distill(*teacher, nullptr, ids, "ids", {}, o, tmp / "w");
  CHECK(w.steps.back().sparsity == doctest::Approx(a.steps.back().sparsity).epsilon(1e-12));
  const auto zw = projection_zeros(tmp / "w");
  size_t differ = 0;
  for (const auto& kv : zw)
    for (size_t i = 0; i < kv.second.size(); ++i) differ += kv.second[i] != za.at(kv.first)[i];
  CHECK(differ > 0);

  // Bad input.
  DistillOptions bad = o;
  bad.prune.final_sparsity = 1.2;
  CHECK_THROWS_WITH(distill(*teacher, nullptr, ids, "ids", {}, bad, tmp / "c"),
                    doctest::Contains("--prune-to 1.2 outside (0, 1)"));
  bad = o;
  bad.prune.end = 11;
  CHECK_THROWS_WITH(distill(*teacher, nullptr, ids, "ids", {}, bad, tmp / "c"),
                    doctest::Contains("--prune-end 11 outside"));
  bad = o;
  bad.grad_checkpoint = true;
  CHECK_THROWS_WITH(distill(*teacher, nullptr, ids, "ids", {}, bad, tmp / "c"),
                    doctest::Contains("not implemented: --prune-schedule wanda with"));
  CHECK_FALSE(std::filesystem::exists(tmp / "c"));
}
