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
#include "train/llama_train.h"
#include "train/loss.h"

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
