// The training engine end to end: whole-model gradients against PyTorch autograd, the optimizer,
// checkpoint resume, the distillation loop and its input errors.
#include <doctest/doctest.h>

#include <cmath>
#include <cstring>
#include <vector>

#include "engine/config.h"
#include "engine/safetensors.h"
#include "engine/weights.h"
#include "tests/test_util.h"
#include "train/checkpoint.h"
#include "train/llama_train.h"
#include "train/loss.h"
#include "train/optim.h"

using namespace minfer;
using namespace minfer::train;

namespace {

const char* kLlama = "tests/fixtures/parity/llama";
const char* kGrads = "tests/fixtures/train/llama_grads.safetensors";

std::vector<int32_t> ints(const Tensor& t) {
  REQUIRE(t.dtype() == DType::I32);
  return std::vector<int32_t>(t.data<int32_t>(), t.data<int32_t>() + t.numel());
}

// max |a − ref| / max |ref| over one tensor: the relative error of the whole gradient tensor
// (element-wise ratios blow up on entries that are ~0 in both).
double rel_err(const float* a, const Tensor& ref) {
  const float* r = ref.data<float>();
  double diff = 0, mx = 0;
  for (int64_t i = 0; i < ref.numel(); ++i) {
    diff = std::max(diff, std::abs(double(a[i]) - r[i]));
    mx = std::max(mx, std::abs(double(r[i])));
  }
  return diff / std::max(mx, 1e-30);
}

}  // namespace

TEST_CASE("train llama: whole-model gradients equal PyTorch autograd (GQA, tied)") {
  const ModelConfig cfg = load_config(std::string(kLlama) + "/config.json");
  REQUIRE(cfg.tie_embeddings);
  REQUIRE(cfg.n_kv_heads < cfg.n_heads);
  TrainLlama m(cfg);
  m.load(SafetensorsSource(WeightStore::open(kLlama)));
  auto ref = SafetensorsFile::open(kGrads);
  const Tensor& ids_t = ref->get("ids");
  const int64_t B = ids_t.dim(0), T = ids_t.dim(1), N = B * T, V = cfg.vocab_size;
  const std::vector<int32_t> ids = ints(ids_t), targets = ints(ref->get("targets"));
  const float* teacher = ref->get("teacher").data<float>();

  for (const char* tag : {"ce", "kd"}) {
    CAPTURE(tag);
    const bool kd = std::strcmp(tag, "kd") == 0;
    DistillLossArgs la{kd ? 0.5f : 0.f, kd ? 2.f : 1.f, false};
    m.params().zero_grad();
    const float* logits = m.forward(ids.data(), B, T);
    std::vector<float> dlogits(size_t(N * V), 0.f);
    const LossParts lp =
        distill_loss(logits, kd ? teacher : nullptr, targets.data(), N, V, la, dlogits.data());
    CHECK(lp.total ==
          doctest::Approx(ref->get(std::string("loss_") + tag).data<float>()[0]).epsilon(1e-5));
    m.backward(dlogits.data());
    int checked = 0;
    double worst = 0;
    for (const ParamTensor& p : m.params().table()) {
      CAPTURE(p.name);
      const Tensor& g = ref->get(std::string(tag) + "." + p.name);
      REQUIRE(size_t(g.numel()) == p.numel);
      const double e = rel_err(m.params().grads().data() + p.offset, g);
      CHECK(e <= 1e-4);
      worst = std::max(worst, e);
      ++checked;
    }
    MESSAGE(std::string(tag) << ": worst relative gradient error " << worst);
    CHECK(checked == 2 * 9 + 2);  // every parameter PyTorch has (tied head counted once)
  }
}

TEST_CASE("train optim: AdamW with clipping follows torch.optim.AdamW") {
  auto ref = SafetensorsFile::open("tests/fixtures/train/adamw.safetensors");
  ParamStore P;
  P.add("w", {3, 5}, true);
  P.add("n", {4}, false);
  P.allocate();
  for (const char* n : {"w", "n"}) {
    const Tensor& t = ref->get(std::string("init.") + n);
    std::memcpy(P.w(n), t.data<float>(), t.nbytes());
  }
  const float* lr = ref->get("lr").data<float>();
  const float* norms = ref->get("norm").data<float>();
  AdamWConfig c;
  c.weight_decay = 0.1f;
  for (int k = 0; k < 3; ++k) {
    for (const char* n : {"w", "n"}) {
      const Tensor& g = ref->get(fmt::format("grad{}.{}", k, n));
      std::memcpy(P.g(n), g.data<float>(), g.nbytes());
    }
    CHECK(clip_grad_norm(P, 1.0) == doctest::Approx(norms[k]).epsilon(1e-6));
    adamw_step(P, c, lr[k], k + 1);
  }
  for (const char* n : {"w", "n"}) {
    CAPTURE(n);
    const ParamTensor& p = P.find(n);
    CHECK(rel_err(P.w(n), ref->get(std::string("final.") + n)) <= 1e-6);
    CHECK(rel_err(P.m().data() + p.offset, ref->get(std::string("m.") + n)) <= 1e-6);
    CHECK(rel_err(P.v().data() + p.offset, ref->get(std::string("v.") + n)) <= 1e-6);
  }
}

TEST_CASE("train optim: warmup + cosine schedule") {
  // warmup 4 steps to 1.0, cosine to 0.1 at step 14
  CHECK(lr_at(0, 4, 14, 1.f, 0.1f) == doctest::Approx(0.25));
  CHECK(lr_at(3, 4, 14, 1.f, 0.1f) == doctest::Approx(1.0));
  CHECK(lr_at(4, 4, 14, 1.f, 0.1f) == doctest::Approx(1.0));
  CHECK(lr_at(9, 4, 14, 1.f, 0.1f) == doctest::Approx(0.55));  // half way: (1 + 0.1) / 2
  CHECK(lr_at(14, 4, 14, 1.f, 0.1f) == doctest::Approx(0.1));
  CHECK(lr_at(20, 4, 14, 1.f, 0.1f) == doctest::Approx(0.1));
  ParamStore P;
  P.add("x", {2}, false);
  P.allocate();
  P.g("x")[0] = NAN;
  CHECK_THROWS_WITH(clip_grad_norm(P, 1.0), doctest::Contains("diverged"));
}

TEST_CASE("train checkpoint: save and load restore weights, moments and state") {
  const ModelConfig cfg = load_config(std::string(kLlama) + "/config.json");
  TrainLlama a(cfg), b(cfg);
  a.init_random(3);
  for (float& g : a.params().grads()) g = 0.01f;
  adamw_step(a.params(), AdamWConfig{}, 1e-3f, 1);
  test::TempDir tmp("ckpt");
  TrainerState s{5, 40, 11, nlohmann::json{{"lr", 0.1}}};
  save_checkpoint(tmp / "ck", a, s);
  const TrainerState r = load_checkpoint(tmp / "ck", b);
  CHECK(r.step == 5);
  CHECK(r.data_position == 40);
  CHECK(r.seed == 11);
  CHECK(b.params().weights() == a.params().weights());
  CHECK(b.params().m() == a.params().m());
  CHECK(b.params().v() == a.params().v());
  // A checkpoint is a model folder.
  CHECK(load_config(tmp / "ck/config.json").n_layers == cfg.n_layers);
  CHECK_THROWS_WITH(load_checkpoint(tmp / "nothing", b),
                    doctest::Contains("not a training checkpoint"));
}
