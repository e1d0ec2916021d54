// Rotation before quantization (compress/rotate.h): the random orthogonal and Hadamard matrices
// are orthogonal; a rotated LLaMA-family model computes the unrotated model's logits (the
// reference: the same fixture before the rotation, itself equal to Hugging Face's in
// test_models); it saves and loads back as a plain folder; bad input is refused by name.
#include <doctest/doctest.h>

#include <cmath>
#include <random>

#include "compress/compress.h"
#include "compress/rotate.h"
#include "engine/backend.h"
#include "model_util.h"
#include "models/model.h"
#include "test_util.h"

using namespace minfer;
using namespace minfer::test;

namespace {

// max |AᵀA - I| of a row-major [n, n] matrix.
double orthogonality_error(const std::vector<double>& a, int64_t n) {
  double worst = 0;
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < n; ++j) {
      double s = 0;
      for (int64_t k = 0; k < n; ++k) s += a[size_t(k * n + i)] * a[size_t(k * n + j)];
      worst = std::max(worst, std::fabs(s - (i == j ? 1.0 : 0.0)));
    }
  return worst;
}

const Tensor& norm_weight(Model& m, const std::string& name) {
  for (Model::NamedTensor& t : m.tensors())
    if (t.name == name) return *t.t;
  FAIL("no tensor " << name);
  static Tensor none;
  return none;
}

}  // namespace

TEST_CASE("rotate: random orthogonal and Hadamard matrices") {
  for (int64_t n : {1, 9, 64, 100}) {
    CAPTURE(n);
    const std::vector<double> q = random_orthogonal(n, 42);
    CHECK(orthogonality_error(q, n) < 1e-12);
    CHECK(random_orthogonal(n, 42) == q);  // deterministic
    if (n < 9) continue;
    CHECK(random_orthogonal(n, 43) != q);
    // Spread, not a permutation: no entry near ±1 (for n = 64 a Haar entry is ~N(0, 1/64)).
    double big = 0;
    for (double v : q) big = std::max(big, std::fabs(v));
    CHECK(big < 0.75);
  }
  for (int64_t n : {1, 2, 8, 64}) {
    CAPTURE(n);
    const std::vector<double> h = random_hadamard(n, 5);
    CHECK(orthogonality_error(h, n) < 1e-12);
    for (double v : h) CHECK(std::fabs(std::fabs(v) - 1.0 / std::sqrt(double(n))) < 1e-15);
  }
  // The random signs differ with the seed (order 64: 2^64 sign patterns).
  CHECK(random_hadamard(64, 5) != random_hadamard(64, 6));
  CHECK_THROWS_WITH_AS(random_hadamard(12, 1), doctest::Contains("power of two"), Error);
  CHECK_THROWS_WITH_AS(random_orthogonal(0, 1), doctest::Contains(">= 1"), Error);
}

TEST_CASE("rotate: the rotated model computes the same logits") {
  auto be = make_cpu_backend(2);
  // llama: tied head, GQA 6 / 2 heads of 8 (R2 by Hadamard); llama_untied: q/k/v biases, heads
  // of 12 (R2 by a random orthogonal matrix); qwen2: biases, GQA; phi3: fused q|k|v and gate|up
  // split into row views.
  for (const char* dir : {"tests/fixtures/parity/llama", "tests/fixtures/parity/llama_untied",
                          "tests/fixtures/arch/qwen2", "tests/fixtures/arch/phi3"}) {
    for (const char* method : {"rotate", "rotate-r1", "rotate-r2"}) {
      CAPTURE(dir);
      CAPTURE(method);
      auto m0 = load_model(dir, *be);
      std::mt19937 rng(3);
      std::vector<int32_t> ids(17);
      for (int32_t& i : ids) i = int32_t(rng() % uint32_t(m0->config().vocab_size));
      const std::vector<float> y0 = model_logits(*m0, ids);

      auto m = load_model(dir, *be);
      const CompressSpec spec = compress_spec_from_name(method);
      const MethodSpec& st = spec.steps[0];
      const RotateReport r = rotate_for_spec(*m, spec);
      const ModelConfig& c = m->config();
      CHECK(r.dim == (st.rotate_stream ? c.hidden : 0));
      CHECK(r.head_dim == (st.rotate_heads ? c.head_dim : 0));
      // Stream: 5 input-side + 2 output-side linears per layer and the head; heads only: v, o.
      CHECK(r.linears == (st.rotate_stream ? 7 * int(c.n_layers) + 1 : 2 * int(c.n_layers)));
      const std::vector<float> y = model_logits(*m, ids);
      CAPTURE(rel_l2(y, y0));
      CHECK(rel_l2(y, y0) < 2e-6);

      // Every linear the rotation touched has moved by O(1) relative (not a no-op).
      const std::vector<Linear*> a = m->linears(), b = m0->linears();
      REQUIRE(a.size() == b.size());
      int moved = 0;
      for (size_t i = 0; i < a.size(); ++i) {
        const Tensor wa = dequantize_weight(*a[i]), wb = dequantize_weight(*b[i]);
        double num = 0, den = 0;
        for (int64_t k = 0; k < wa.numel(); ++k) {
          const double d = double(wa.data<float>()[k]) - wb.data<float>()[k];
          num += d * d;
          den += double(wb.data<float>()[k]) * wb.data<float>()[k];
        }
        moved += std::sqrt(num / den) > 0.1;
      }
      CHECK(moved == r.linears);
      if (st.rotate_stream) {  // every norm folded into its readers: all ones
        for (Model::NamedTensor& t : m->tensors()) {
          if (t.embedding) continue;
          CAPTURE(t.name);
          const Tensor f = t.t->to_f32();
          for (int64_t k = 0; k < f.numel(); ++k) REQUIRE(f.data<float>()[k] == 1.f);
        }
        CHECK(r.untied == c.tie_embeddings);
        CHECK(m->linears().back()->name == "lm_head.weight");
      } else {
        const Tensor g0 = norm_weight(*m0, "model.norm.weight").to_f32(),
                     g = norm_weight(*m, "model.norm.weight").to_f32();
        CHECK(std::equal(g.data<float>(), g.data<float>() + g.numel(), g0.data<float>()));
      }
    }
  }
}

TEST_CASE("rotate: chained with a quantizer, saved and loaded back") {
  auto be = make_cpu_backend(2);
  const std::string dir = "tests/fixtures/parity/llama";
  std::vector<int32_t> ids = {1, 5, 9, 33, 2, 17, 60, 4};
  TempDir tmp("rotate");
  for (const char* method : {"rotate+f32", "rotate+int8"}) {
    CAPTURE(method);
    auto m = load_model(dir, *be);
    const CompressSpec spec = compress_spec_from_name(method);
    CHECK(compress_spec_name(spec) == method);
    rotate_for_spec(*m, spec);
    compress_model(*m, spec, nullptr, false);
    const std::vector<float> y = model_logits(*m, ids);
    const std::string out = tmp / method;
    save_compressed(*m, nullptr, out, spec);
    auto back = load_model(out, *be);
    CHECK(model_logits(*back, ids) == y);
    // A plain folder: the head is its own tensor now.
    CHECK_FALSE(back->config().tie_embeddings);
  }
  // The untied head is not a new parameter of the source model: the same parameter count and
  // bits/w as the unrotated chain (whose int8 head is untied from the fp16 table as well).
  {
    auto a = load_model(dir, *be), b = load_model(dir, *be);
    const CompressReport ra = compress_model(*a, compress_spec_from_name("int8"), nullptr, false);
    const CompressSpec sb = compress_spec_from_name("rotate+int8");
    rotate_for_spec(*b, sb);
    const CompressReport rb = compress_model(*b, sb, nullptr, false);
    CHECK(rb.params == ra.params);
    CHECK(rb.bytes_after == ra.bytes_after);
    CHECK(rb.bits_per_weight == ra.bits_per_weight);
    CHECK(rb.linear_bpw == ra.linear_bpw);
  }
  // rotate+f32 is the f32 model (up to rounding): the same logits as the fixture itself.
  auto m0 = load_model(dir, *be);
  auto r = load_model(tmp / "rotate+f32", *be);
  CHECK(rel_l2(model_logits(*r, ids), model_logits(*m0, ids)) < 2e-6);
}

TEST_CASE("rotate: bad input") {
  auto be = make_cpu_backend(1);
  // Models whose norms cannot be folded, or that are not LLaMA-family.
  for (const char* dir : {"tests/fixtures/arch/gemma", "tests/fixtures/arch/gemma2"}) {
    auto m = load_model(dir, *be);
    CHECK_THROWS_WITH_AS(rotate_model(*m, 1, true, true), doctest::Contains("norms"), Error);
  }
  for (const char* dir : {"tests/fixtures/parity/gpt2", "tests/fixtures/parity/bert"}) {
    auto m = load_model(dir, *be);
    CHECK_THROWS_WITH_AS(rotate_model(*m, 1, true, true), doctest::Contains("LLaMA family"), Error);
  }
  // Weights already compressed.
  {
    auto m = load_model("tests/fixtures/parity/llama", *be);
    compress_model(*m, compress_spec_from_name("int8"), nullptr, false);
    CHECK_THROWS_WITH_AS(rotate_model(*m, 1, true, false), doctest::Contains("already compressed"),
                         Error);
  }
  // Chains and options.
  CHECK_THROWS_WITH_AS(compress_spec_from_name("int4+rotate"), doctest::Contains("must come"),
                       Error);
  CHECK_THROWS_WITH_AS(compress_spec_from_name("rotate+rotate"), doctest::Contains("must come"),
                       Error);
  CHECK_THROWS_WITH_AS(compress_spec_from_name("rotate-r1-r2"), doctest::Contains("at most one"),
                       Error);
  CHECK_THROWS_WITH_AS(compress_spec_from_name("int4-r1"), doctest::Contains("rotate"), Error);
  CHECK_THROWS_WITH_AS(compress_spec_from_name("rotate-g64"), doctest::Contains("group"), Error);
  // compress_model refuses a chain with a rotation on a model that was not rotated.
  {
    auto m = load_model("tests/fixtures/parity/llama", *be);
    CHECK_THROWS_WITH_AS(compress_model(*m, compress_spec_from_name("rotate+int8"), nullptr, false),
                         doctest::Contains("not been rotated"), Error);
  }
  // ffn-20+rotate+int4 is a valid order (structured, then the rotation).
  CHECK(compress_spec_name(compress_spec_from_name("ffn-20+rotate+int4")) ==
        "ffn-20+rotate+int4-g128");
}
