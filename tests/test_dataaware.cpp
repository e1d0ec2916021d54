// Data-aware quantization (compress/dataaware.h, compress/gptq.h options): GPTQ act-order and
// 3-bit GPTQ, the weighted scale search, against a numpy float64 reference
// (tests/fixtures/lowrank/make_dataaware_fixture.py); AWQ / SmoothQuant folding leaves the f32
// model's logits unchanged; int3 runs through the int4 kernels; bad input.
#include <doctest/doctest.h>

#include <cmath>
#include <random>

#include "compress/compress.h"
#include "compress/dataaware.h"
#include "compress/gptq.h"
#include "engine/backend.h"
#include "engine/safetensors.h"
#include "kernels/common/quant_math.h"
#include "models/model.h"
#include "test_util.h"

using namespace minfer;
using namespace minfer::test;

namespace {

std::vector<int32_t> some_ids(int64_t n, int64_t vocab, uint32_t seed = 7) {
  std::mt19937 rng(seed);
  std::vector<int32_t> ids(static_cast<size_t>(n));
  for (auto& i : ids) i = int32_t(rng() % uint32_t(vocab));
  return ids;
}

const std::string kGptq = "tests/fixtures/lowrank/gptq.safetensors";
const std::string kRef = "tests/fixtures/lowrank/dataaware.safetensors";

// Share of entries of got within 1e-5 relative of ref (a rounding tie may flip a code).
double agree(const Tensor& got, const Tensor& ref) {
  int64_t same = 0;
  for (int64_t i = 0; i < got.numel(); ++i)
    same += std::fabs(got.data<float>()[i] - ref.data<float>()[i]) <=
            1e-5f * std::fabs(ref.data<float>()[i]) + 1e-7f;
  return double(same) / double(got.numel());
}

std::vector<float> logits(Model& m, const std::vector<int32_t>& ids) {
  RunState s = m.new_state(int64_t(ids.size()), int64_t(ids.size()));
  Tensor t = m.forward(s, ids.data(), int64_t(ids.size()), true);
  std::vector<float> v(size_t(t.numel()));
  m.backend().to_host(t, v.data());
  return v;
}

double rel_diff(const std::vector<float>& a, const std::vector<float>& b) {
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    num += (double(a[i]) - b[i]) * (double(a[i]) - b[i]);
    den += double(b[i]) * b[i];
  }
  return std::sqrt(num / den);
}

}  // namespace

TEST_CASE("dataaware: GPTQ act-order, 3-bit GPTQ and the scale search match numpy") {
  auto fx = SafetensorsFile::open(kGptq);
  auto ref = SafetensorsFile::open(kRef);
  const Tensor w = fx->get("w"), x = fx->get("x");
  const Linear l = make_dense("blk.w", w, 96, 24);
  const std::vector<float> g = gram_of(x);
  std::vector<float> c(96);
  for (int64_t k = 0; k < 96; ++k) c[size_t(k)] = g[size_t(k * 96 + k)];
  QuantSpec q4;
  q4.method = "int4";
  q4.group = 32;
  QuantSpec q3 = q4;
  q3.method = "int3";

  GptqOptions act;
  act.act_order = true;
  const Tensor got_act = dequantize_weight(quantize_gptq(l, q4, g, act));
  const Tensor ref_act = ref->get("gptq_act_int4_g32");
  CHECK(agree(got_act, ref_act) >= 0.99);
  CHECK(output_error(w, got_act, x) == doctest::Approx(output_error(w, ref_act, x)).epsilon(0.01));
  // Act-order beats column order here (three inputs carry most of the energy).
  CHECK(output_error(w, got_act, x) <
        output_error(w, dequantize_weight(quantize_gptq(l, q4, g)), x));

  const Linear l3 = quantize_gptq(l, q3, g);
  CHECK(linear_format(l3) == "int4-g32");  // the int4 container
  const Tensor got3 = dequantize_weight(l3), ref3 = ref->get("gptq_int3_g32");
  CHECK(agree(got3, ref3) >= 0.99);
  CHECK(output_error(w, got3, x) == doctest::Approx(output_error(w, ref3, x)).epsilon(0.01));
  // Every code is one of the 8 levels -4..3.
  const Quantized& qz = std::get<Quantized>(l3.repr);
  for (int64_t n = 0; n < 24; ++n)
    for (int64_t k = 0; k < 96; ++k) {
      const int u = qm::get_q4(qz.codes.data<uint8_t>() + n * qz.codes.dim(1), k);
      REQUIRE((u >= 4 && u <= 11));
    }

  for (const auto& [spec, name] :
       {std::pair{q4, "clip_int4_g32"}, std::pair{q3, "clip_int3_g32"}}) {
    CAPTURE_BINDING(name);
    const Tensor got = dequantize_weight(quantize_rtn_search(l, spec, c.data(), true));
    const Tensor r = ref->get(name);
    CHECK(agree(got, r) >= 0.99);
    // The search includes the plain scale, so its weighted error is never larger.
    const Tensor plain = dequantize_weight(quantize_rtn_search(l, spec, c.data(), false));
    double e_s = 0, e_p = 0;
    for (int64_t n = 0; n < 24; ++n)
      for (int64_t k = 0; k < 96; ++k) {
        const double a = w.data<float>()[n * 96 + k];
        e_s += c[size_t(k)] * std::pow(a - got.data<float>()[n * 96 + k], 2);
        e_p += c[size_t(k)] * std::pow(a - plain.data<float>()[n * 96 + k], 2);
      }
    CHECK(e_s < 0.9 * e_p);
  }
  // Without search, int4 is exactly quantize_linear's absmax rule.
  const Tensor a = dequantize_weight(quantize_rtn_search(l, q4, nullptr, false));
  const Tensor b = dequantize_weight(quantize_linear(l, q4));
  CHECK(agree(a, b) == 1.0);
  // NF4 searched: never worse (unweighted) than NF4 absmax.
  QuantSpec nf;
  nf.method = "nf4";
  double e_n = 0, e_ns = 0;
  const Tensor n0 = dequantize_weight(quantize_linear(l, nf));
  const Tensor n1 = dequantize_weight(quantize_rtn_search(l, nf, nullptr, true));
  for (int64_t i = 0; i < w.numel(); ++i) {
    e_n += std::pow(double(w.data<float>()[i]) - n0.data<float>()[i], 2);
    e_ns += std::pow(double(w.data<float>()[i]) - n1.data<float>()[i], 2);
  }
  CHECK(e_ns <= e_n);
}

TEST_CASE("dataaware: AWQ and SmoothQuant folding keep the f32 logits; int3 runs on the kernels") {
  auto be = make_cpu_backend(2);
  const std::vector<int32_t> ids = some_ids(12, 97);
  auto ref = load_model("tests/fixtures/parity/llama", *be);
  const std::vector<float> y0 = logits(*ref, ids);
  const std::vector<int32_t> calib = some_ids(256, 97, 3);
  for (auto rule : {SmoothOptions::Rule::SmoothQuant, SmoothOptions::Rule::Awq}) {
    auto m = load_model("tests/fixtures/parity/llama", *be);
    ActStats st = calibrate(*m, calib, 8, 32, false, true);
    SmoothOptions o;
    o.rule = rule;
    o.group = 32;
    const SmoothReport r = smooth_model(*m, st, o);
    // Per layer: input norm, post-attention norm, v -> o, up -> down.
    CHECK(r.sites == 4 * int(m->config().n_layers));
    CHECK(rel_diff(logits(*m, ids), y0) < 1e-5);
    // The scales are not all 1 (something moved).
    bool moved = false;
    auto m0 = load_model("tests/fixtures/parity/llama", *be);
    for (size_t i = 0; i < m->linears().size(); ++i) {
      const Tensor a = dequantize_weight(*m->linears()[i]),
                   b = dequantize_weight(*m0->linears()[i]);
      for (int64_t j = 0; j < a.numel() && !moved; ++j)
        moved = std::fabs(a.data<float>()[j] - b.data<float>()[j]) > 1e-6f;
    }
    CHECK(moved);
  }
  // AWQ's model: closer to f32 than round-to-nearest int4 at the same group.
  auto err_of = [&](const std::string& method) {
    auto m = load_model("tests/fixtures/parity/llama", *be);
    ActStats st = calibrate(*m, calib, 8, 32, false, true);
    compress_model(*m, compress_spec_from_name(method), &st, false);
    return rel_diff(logits(*m, ids), y0);
  };
  const double e_rtn = err_of("int4-g32"), e_awq = err_of("int4-awq-g32");
  CAPTURE(e_rtn);
  CAPTURE(e_awq);
  CHECK(e_awq < e_rtn);
  // SmoothQuant at α = 0.5 equalizes each input channel's ranges: after the fold
  // max|X_j| / s_j = max|W_j| s_j. down_proj (fed by up_proj's rows) is scaled by no other site.
  {
    auto m = load_model("tests/fixtures/parity/llama", *be);
    ActStats st = calibrate(*m, calib, 8, 32, false, true);
    smooth_model(*m, st, SmoothOptions{});
    int checked = 0;
    for (const Linear* c : m->linears()) {
      if (!c->name.ends_with("down_proj.weight")) continue;
      CAPTURE(c->name);
      std::vector<double> wmax(size_t(c->in), 0.0);
      const Tensor w = dequantize_weight(*c);
      for (int64_t r = 0; r < c->out; ++r)
        for (int64_t k = 0; k < c->in; ++k)
          wmax[size_t(k)] =
              std::max(wmax[size_t(k)], double(std::fabs(w.data<float>()[r * c->in + k])));
      const std::vector<float>& xm = st.absmax.at(c->name);
      for (int64_t k = 0; k < c->in; ++k)
        CHECK(double(xm[size_t(k)]) == doctest::Approx(wmax[size_t(k)]).epsilon(1e-4));
      ++checked;
    }
    CHECK(checked == int(m->config().n_layers));
  }

  // int3 in the int4 container (negative scales included) runs through the int4 kernels: the
  // compressed model equals the model holding the same weights dequantized, and saves / loads.
  auto m = load_model("tests/fixtures/parity/llama", *be);
  ActStats st = calibrate(*m, calib, 8, 32, false, true);
  compress_model(*m, compress_spec_from_name("int3-gptq-g32-act-clip"), &st, false);
  auto d = load_model("tests/fixtures/parity/llama", *be);
  const std::vector<Linear*> lq = m->linears(), ld = d->linears();
  bool negative = false;
  for (size_t i = 0; i < lq.size(); ++i) {
    if (const Quantized* q = std::get_if<Quantized>(&lq[i]->repr))
      for (int64_t j = 0; j < q->scales.numel(); ++j) negative |= q->scales.data<float>()[j] < 0;
    *ld[i] = make_dense(lq[i]->name, dequantize_weight(*lq[i]), lq[i]->in, lq[i]->out, false,
                        lq[i]->bias);
    be->upload(*ld[i]);
  }
  CHECK(negative);
  const std::vector<float> yq = logits(*m, ids);
  // (the int4 kernels' own arithmetic differs from f32 GEMM by ~5e-4 here; a mishandled
  // negative scale would be O(1)).
  CHECK(rel_diff(yq, logits(*d, ids)) < 2e-3);
  test::TempDir dir("int3");
  save_compressed(*m, nullptr, (dir.path / "model").string(),
                  compress_spec_from_name("int3-gptq-g32-act-clip"));
  auto back = load_model((dir.path / "model").string(), *be);
  CHECK(logits(*back, ids) == yq);
}

TEST_CASE("dataaware: method names and bad input") {
  for (std::string n :
       {"int3-g128", "int3-g64-clip", "int4-g128-clip", "nf4-g64-clip", "int3-gptq-g128",
        "int4-gptq-g128-act-clip", "int4-awq-g128", "w8a8-static-sq"})
    CHECK(compress_spec_name(compress_spec_from_name(n)) == n);
  CHECK(compress_spec_name(compress_spec_from_name("int4-awq")) == "int4-awq-g128");
  CHECK(compress_spec_from_name("int4-awq").needs_gram());
  CHECK(compress_spec_from_name("int4-clip").uses_calibration());
  CHECK_FALSE(compress_spec_from_name("int4-clip").needs_calibration());
  // Bits outside the supported set.
  CHECK_THROWS_WITH_AS(compress_spec_from_name("int5"), doctest::Contains("unknown compression"),
                       Error);
  CHECK_THROWS_WITH_AS(compress_spec_from_name("int2-gptq"),
                       doctest::Contains("unknown compression"), Error);
  CHECK_THROWS_WITH_AS(compress_spec_from_name("int3-g33"), doctest::Contains("multiple of 32"),
                       Error);
  CHECK_THROWS_WITH_AS(compress_spec_from_name("int8-clip"), doctest::Contains("-clip"), Error);
  CHECK_THROWS_WITH_AS(compress_spec_from_name("int4-asym-clip"), doctest::Contains("-asym"),
                       Error);
  CHECK_THROWS_WITH_AS(compress_spec_from_name("int4-act"), doctest::Contains("GPTQ"), Error);
  CHECK_THROWS_WITH_AS(compress_spec_from_name("w8a8-sq"), doctest::Contains("static"), Error);
  // α outside [0, 1], a dampening outside (0, 1).
  MethodSpec s = method_spec_from_name("int4-awq");
  s.alpha = 1.5;
  CHECK_THROWS_WITH_AS(validate_method_spec(s), doctest::Contains("alpha must be in [0, 1]"),
                       Error);
  s.alpha = 0.5;
  validate_method_spec(s);
  MethodSpec i4 = method_spec_from_name("int4");
  i4.alpha = 0.5;
  CHECK_THROWS_WITH_AS(validate_method_spec(i4), doctest::Contains("alpha is an int4-awq"), Error);
  MethodSpec gq = method_spec_from_name("int4-gptq");
  gq.damp = 0;
  CHECK_THROWS_WITH_AS(validate_method_spec(gq), doctest::Contains("dampening"), Error);

  // A calibration too short for the method: fewer tokens than the widest input.
  auto be = make_cpu_backend(2);
  auto m = load_model("tests/fixtures/parity/llama", *be);
  ActStats st = calibrate(*m, some_ids(64, 97, 3), 2, 32, false, true);
  for (std::string method : {"int4-awq", "int3-gptq"}) {
    CAPTURE(method);
    CHECK_THROWS_WITH_AS(compress_model(*m, compress_spec_from_name(method), &st, false),
                         doctest::Contains("fewer than the 80 input features"), Error);
  }
  CHECK_THROWS_WITH_AS(compress_model(*m, compress_spec_from_name("int4-awq"), nullptr, false),
                       doctest::Contains("calibration"), Error);
  // The fold needs max|x| (SmoothQuant) from the calibration of each consumer.
  ActStats empty;
  SmoothOptions o;
  CHECK_THROWS_WITH_AS(smooth_model(*m, empty, o), doctest::Contains("no calibration max|x|"),
                       Error);
  o.alpha = 2;
  CHECK_THROWS_WITH_AS(smooth_model(*m, empty, o), doctest::Contains("--alpha must be in [0, 1]"),
                       Error);
  QuantSpec bad;
  bad.method = "int8";
  CHECK_THROWS_WITH_AS(quantize_rtn_search(*m->linears()[0], bad, nullptr, true),
                       doctest::Contains("int4, int3 or nf4"), Error);
}
