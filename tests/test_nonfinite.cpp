// No silent non-finite numbers: every narrowing to f16 / bf16 is range-checked and names the
// tensor and element; NaN / inf logits are errors naming the position (perplexity, argmax,
// sampling, embeddings); the sampler is numerically safe for every legal parameter value.
#include <doctest/doctest.h>

#include <cmath>
#include <functional>
#include <map>
#include <vector>

#include "compress/compress.h"
#include "compress/quantize.h"
#include "engine/backend.h"
#include "engine/half.h"
#include "engine/model_folder.h"
#include "engine/sampler.h"
#include "models/eval.h"
#include "models/loader.h"
#include "tests/test_util.h"

using namespace minfer;
using minfer::test::error_of;

namespace {

const std::string kLlama = "tests/fixtures/parity/llama";

#define CHECK_HAS(msg, part)                   \
  do {                                         \
    const std::string m_ = (msg);              \
    CAPTURE(m_);                               \
    CHECK(m_.find(part) != std::string::npos); \
  } while (0)

Tensor f32_matrix(int64_t r, int64_t c, float fill = 0.5f) {
  Tensor t = Tensor::empty(DType::F32, {r, c});
  for (int64_t i = 0; i < t.numel(); ++i) t.data<float>()[i] = fill;
  return t;
}

// Sets element [r, c] of the Dense weight `name` of m to v (a private copy of the weight).
void set_weight(Model& m, const std::string& name, int64_t r, int64_t c, float v) {
  for (Linear* l : m.linears()) {
    if (l->name != name) continue;
    Dense& d = std::get<Dense>(l->repr);
    Tensor w = d.w.to_f32().clone();
    w.data<float>()[r * w.dim(1) + c] = v;
    d.w = w;
    return;
  }
  FAIL("no linear " << name);
}

}  // namespace

TEST_CASE("nonfinite: f32 -> f16 narrowing is range-checked and names the element") {
  Tensor w = f32_matrix(3, 4);
  w.data<float>()[1 * 4 + 2] = 1e5f;
  const std::string e = error_of([&] { cast_to(w, DType::F16, "blk.w"); });
  CHECK_HAS(e, "tensor 'blk.w'");
  CHECK_HAS(e, "[1, 2]");
  CHECK_HAS(e, "100000");
  CHECK_HAS(e, "float16");
  CHECK_HAS(e, "bf16");
  // bf16 has the f32 exponent range: the same tensor fits.
  CHECK(cast_to(w, DType::BF16, "blk.w").dtype() == DType::BF16);
  // The f16 boundary: 65504 is the largest f16; 65519 rounds down to it; 65520 rounds to inf.
  for (float ok : {65504.f, 65519.f, -65519.f}) {
    w.data<float>()[6] = ok;
    Tensor h = cast_to(w, DType::F16, "w");
    CHECK(std::fabs(f16_to_f32(h.data<uint16_t>()[6])) == 65504.f);
  }
  w.data<float>()[6] = -65520.f;
  CHECK_HAS(error_of([&] { cast_to(w, DType::F16, "w"); }), "-65520");
  // Non-finite inputs are named for every target type.
  w.data<float>()[6] = NAN;
  CHECK_HAS(error_of([&] { cast_to(w, DType::BF16, "w"); }), "is nan");
  w.data<float>()[6] = 3.4e38f;  // finite in f32, inf in bf16 (rounds past 3.3895e38)
  CHECK_HAS(error_of([&] { cast_to(w, DType::BF16, "w"); }), "bfloat16 range");
}

TEST_CASE(
    "nonfinite: compress refuses an fp16 weight, LLM.int8() outlier or fp16 embedding "
    "table it cannot hold") {
  auto be = make_cpu_backend(1);
  SUBCASE("fp16 linear") {
    LoadedModel lm = open_model(kLlama, *be, false);
    set_weight(*lm.model, "model.layers.0.mlp.up_proj.weight", 0, 0, 1e5f);
    const std::string e = error_of(
        [&] { compress_model(*lm.model, compress_spec_from_name("fp16"), nullptr, false); });
    CHECK_HAS(e, "model.layers.0.mlp.up_proj.weight");
    CHECK_HAS(e, "[0, 0] = 100000");
    // bf16 keeps it.
    LoadedModel lm2 = open_model(kLlama, *be, false);
    set_weight(*lm2.model, "model.layers.0.mlp.up_proj.weight", 0, 0, 1e5f);
    compress_model(*lm2.model, compress_spec_from_name("bf16"), nullptr, false);
  }
  SUBCASE("the default fp16 embedding table of an integer method") {
    LoadedModel lm = open_model(kLlama, *be, false);
    for (Model::NamedTensor& t : lm.model->tensors())
      if (t.embedding) {
        Tensor c = t.t->to_f32().clone();
        c.data<float>()[5 * c.dim(1) + 3] = -7e4f;
        *t.t = c;
      }
    const std::string e = error_of(
        [&] { compress_model(*lm.model, compress_spec_from_name("int8"), nullptr, false); });
    CHECK_HAS(e, "model.embed_tokens.weight");
    CHECK_HAS(e, "[5, 3] = -70000");
  }
  SUBCASE("LLM.int8() outlier columns") {
    LoadedModel lm = open_model(kLlama, *be, false);
    set_weight(*lm.model, "model.layers.0.mlp.up_proj.weight", 2, 1, 9e4f);
    const Linear* up = nullptr;
    for (Linear* l : lm.model->linears())
      if (l->name == "model.layers.0.mlp.up_proj.weight") up = l;
    REQUIRE(up);
    std::vector<float> act(size_t(up->in), 0.f);
    act[1] = 10.f;  // feature 1 is an outlier: its column is kept in f16
    CHECK_HAS(error_of([&] { quantize_llm_int8(*up, 6.f, &act); }), "[2, 1] = 90000");
    act[1] = 0.f;  // not an outlier: int8 absmax holds it (scale 90000 / 127), no f16 involved
    CHECK_NOTHROW(quantize_llm_int8(*up, 6.f, &act));
  }
}

TEST_CASE("nonfinite: NaN logits are a perplexity error naming the token, never a result") {
  auto be = make_cpu_backend(1);
  LoadedModel lm = open_model(kLlama, *be, false);
  set_weight(*lm.model, "model.layers.1.mlp.down_proj.weight", 3, 4, NAN);
  std::vector<int32_t> ids(40);
  for (size_t i = 0; i < ids.size(); ++i) ids[i] = int32_t(3 + i * 7 % 90);
  for (PplMethod meth : {PplMethod::HfSlidingWindow, PplMethod::Llama}) {
    const std::string e =
        error_of([&] { perplexity(*lm.model, ids, 16, 16, meth, -1, /*progress=*/false); });
    CHECK_HAS(e, "not finite");
    CHECK_HAS(e, "token");
  }
}

TEST_CASE("nonfinite: argmax and sampling refuse NaN / +inf logits instead of returning 0") {
  std::vector<float> nan(8, NAN);
  CHECK_HAS(error_of([&] { argmax(nan.data(), 8, 17); }), "at position 17");
  std::vector<float> l = {0.f, 1.f, 2.f, INFINITY};
  CHECK_HAS(error_of([&] { argmax(l.data(), 4); }), "logit of token 3 is inf");
  std::vector<float> ninf(4, -INFINITY);
  CHECK_HAS(error_of([&] { argmax(ninf.data(), 4); }), "all 4 logits are -inf");
  // -inf is a legal mask value.
  std::vector<float> masked = {-INFINITY, 1.f, -INFINITY, 0.5f};
  CHECK(argmax(masked.data(), 4) == 1);
  Sampler s({1.f, 0, 1.f, 1});
  for (int i = 0; i < 50; ++i) {
    const int32_t t = s.sample(masked.data(), 4);
    CHECK((t == 1 || t == 3));
  }
  l[3] = NAN;
  CHECK_HAS(error_of([&] { s.sample(l.data(), 4, 5); }), "logit of token 3 at position 5 is nan");
  CHECK_HAS(error_of([&] { Sampler({NAN, 0, 1.f, 0}); }), "temperature must be finite");
  CHECK_HAS(error_of([&] { Sampler({INFINITY, 0, 1.f, 0}); }), "temperature must be finite");
  CHECK_HAS(error_of([&] { Sampler({1.f, 0, NAN, 0}); }), "top_p must be a number");
}

TEST_CASE("nonfinite: sampling is safe and right for extreme temperature, top_k and top_p") {
  // Token 5 is the maximum, tied with token 2 at the top; a spread below.
  const std::vector<float> logits = {-3.f, 0.5f, 4.f, 1.f, -1e20f, 4.f, 2.f, 3.f};
  const int64_t V = int64_t(logits.size());
  auto counts = [&](SamplerParams p, int n) {
    Sampler s(p);
    std::map<int32_t, int> c;
    for (int i = 0; i < n; ++i) {
      const int32_t t = s.sample(logits.data(), V);
      REQUIRE((t >= 0 && t < V));
      ++c[t];
    }
    return c;
  };
  for (float temp : {1e-30f, 1e-6f, 0.3f, 1.f, 7.f, 1e6f, 1e30f})
    for (int top_k : {0, 1, 2, 8, 1000})
      for (float top_p : {0.f, 1e-9f, 0.5f, 0.999f, 1.f}) {
        CAPTURE(temp);
        CAPTURE(top_k);
        CAPTURE(top_p);
        auto c = counts({temp, top_k, top_p, 3}, 200);
        // Always one of the kept tokens: greedy regimes pick among the tied maxima (2, 5).
        if (temp <= 1e-6f || top_k == 1 || top_p <= 1e-9f)
          for (auto [t, n] : c) CHECK((top_k == 1 || top_p <= 1e-9f ? t == 2 : (t == 2 || t == 5)));
        if (top_k == 2)
          for (auto [t, n] : c) CHECK((t == 2 || t == 5));
      }
  // A huge temperature is uniform over the kept tokens (here all 8, the -1e20 one included).
  {
    auto c = counts({1e30f, 0, 1.f, 11}, 8000);
    for (int32_t t = 0; t < V; ++t) CHECK((c[t] > 800 && c[t] < 1200));
  }
  // temperature 1, no cut: frequencies match softmax within 4 sigma.
  {
    const int n = 20000;
    auto c = counts({1.f, 0, 1.f, 5}, n);
    double z = 0;
    for (float v : logits) z += std::exp(double(v) - 4.0);
    for (int32_t t = 0; t < V; ++t) {
      const double p = std::exp(double(logits[size_t(t)]) - 4.0) / z;
      const double sd = std::sqrt(p * (1 - p) / n);
      CAPTURE(t);
      CHECK(std::fabs(double(c[t]) / n - p) <= 4 * sd + 1e-12);
    }
  }
  // top_p 0.5: the two tied maxima hold 2 x 0.39 of the mass; the first (id 2) alone is < 0.5,
  // so exactly tokens 2 and 5 are kept.
  {
    auto c = counts({1.f, 0, 0.5f, 9}, 2000);
    for (auto [t, n] : c) CHECK((t == 2 || t == 5));
    CHECK(c.size() == 2);
  }
  // Same seed, same sequence.
  {
    Sampler a({0.8f, 40, 0.95f, 42}), b({0.8f, 40, 0.95f, 42});
    for (int i = 0; i < 100; ++i) CHECK(a.sample(logits.data(), V) == b.sample(logits.data(), V));
  }
}

TEST_CASE("nonfinite: a non-finite hidden state is an embedding error naming the text") {
  std::vector<float> h(2 * 3 * 4, 0.25f);
  h[1 * 12 + 2 * 4 + 1] = NAN;  // text 1, token 2
  const std::vector<int32_t> mask = {1, 1, 1, 1, 1, 1};
  const std::string e =
      error_of([&] { pool_embeddings(h.data(), 2, 3, 4, mask.data(), Pooling::Mean, true); });
  CHECK_HAS(e, "embedding of text 1");
  // Masked-out positions are never read.
  const std::vector<int32_t> mask2 = {1, 1, 1, 1, 1, 0};
  CHECK_NOTHROW(pool_embeddings(h.data(), 2, 3, 4, mask2.data(), Pooling::Mean, true));
}
