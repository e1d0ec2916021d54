// Data-aware quantization (compress/dataaware.h, compress/gptq.h options): GPTQ act-order and
// 3-bit GPTQ, the weighted scale search, against a numpy float64 reference
// (tests/fixtures/lowrank/make_dataaware_fixture.py); AWQ / SmoothQuant folding leaves the f32
// model's logits unchanged; int3 runs on its packed 3-bit kernels; bad input.
#include <doctest/doctest.h>

#include <cmath>
#include <map>
#include <random>

#include "compress/compress.h"
#include "compress/dataaware.h"
#include "compress/gptq.h"
#include "engine/backend.h"
#include "engine/safetensors.h"
#include "kernels/common/quant_math.h"
#include "model_util.h"
#include "models/eval.h"
#include "models/model.h"
#include "test_util.h"
#include "tokenizer/tokenizer.h"

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
  CHECK(linear_format(l3) == "int3-g32");  // packed 3-bit codes
  const Tensor got3 = dequantize_weight(l3), ref3 = ref->get("gptq_int3_g32");
  CHECK(agree(got3, ref3) >= 0.99);
  CHECK(output_error(w, got3, x) == doctest::Approx(output_error(w, ref3, x)).epsilon(0.01));
  // 3 bits per code: 96 weights in 36 bytes (rows padded to 128 weights, 48 bytes).
  const Quantized& qz = std::get<Quantized>(l3.repr);
  CHECK(qz.scheme == QScheme::Int3);
  CHECK(qz.codes.dim(1) == 48);

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
  // Asymmetric int4 (zero points): the searched round-to-nearest, and GPTQ act-order whose
  // static groups take (s, z) from the same search weighted by diag(XᵀX).
  QuantSpec qa = q4;
  qa.asymmetric = true;
  const Linear la = quantize_rtn_search(l, qa, c.data(), true);
  CHECK(linear_format(la) == "int4-g32-asym");
  const Tensor got_a = dequantize_weight(la), ref_a = ref->get("clip_asym_g32");
  CHECK(agree(got_a, ref_a) >= 0.99);
  {  // The search includes min/max (f = 1): never a larger weighted error than plain -asym.
    const Tensor plain = dequantize_weight(quantize_linear(l, qa));
    double e_s = 0, e_p = 0;
    for (int64_t n = 0; n < 24; ++n)
      for (int64_t k = 0; k < 96; ++k) {
        const double a = w.data<float>()[n * 96 + k];
        e_s += c[size_t(k)] * std::pow(a - got_a.data<float>()[n * 96 + k], 2);
        e_p += c[size_t(k)] * std::pow(a - plain.data<float>()[n * 96 + k], 2);
      }
    CHECK(e_s < 0.9 * e_p);
  }
  GptqOptions act_clip = act;
  act_clip.clip_search = true;
  const Linear lga = quantize_gptq(l, qa, g, act_clip);
  CHECK(linear_format(lga) == "int4-g32-asym");
  const Tensor got_ga = dequantize_weight(lga), ref_ga = ref->get("gptq_act_asym_clip_g32");
  CHECK(agree(got_ga, ref_ga) >= 0.99);
  CHECK(output_error(w, got_ga, x) == doctest::Approx(output_error(w, ref_ga, x)).epsilon(0.01));
  // Zero points with the search beat the symmetric act-order GPTQ on this data (numpy: 27.8 vs
  // 35.1).
  CHECK(output_error(w, got_ga, x) < output_error(w, got_act, x));
  // Column order (groups fitted as GPTQ reaches them) with zero points runs too, and its padding
  // and codes decode through the shared rule.
  const Tensor got_gc = dequantize_weight(quantize_gptq(l, qa, g));
  CHECK(output_error(w, got_gc, x) < output_error(w, got_a, x) * 1.5);

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
  const std::vector<float> y0 = model_logits(*ref, ids);
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
    CHECK(rel_l2(model_logits(*m, ids), y0) < 1e-5);
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
    return rel_l2(model_logits(*m, ids), y0);
  };
  const double e_rtn = err_of("int4-g32"), e_awq = err_of("int4-awq-g32"),
               e_awq_gptq = err_of("int4-gptq-g32-awq-act-clip");
  CAPTURE(e_rtn);
  CAPTURE(e_awq);
  CAPTURE(e_awq_gptq);
  CHECK(e_awq < e_rtn);
  CHECK(e_awq_gptq < e_rtn);
  // The same with zero points (the α search then scores zero-point RTN): AWQ closer to f32 than
  // zero-point round-to-nearest.
  const double e_rtn_a = err_of("int4-g32-asym"), e_awq_a = err_of("int4-awq-g32-asym"),
               e_awq_gptq_a = err_of("int4-gptq-g32-awq-act-clip-asym");
  CAPTURE(e_rtn_a);
  CAPTURE(e_awq_a);
  CAPTURE(e_awq_gptq_a);
  CHECK(e_awq_a < e_rtn_a);
  // GPTQ after the zero-point AWQ fold runs end to end; on this random tiny model with 256
  // calibration tokens it lands near zero-point RTN (0.286 vs 0.278), below symmetric RTN (0.370).
  CHECK(e_awq_gptq_a < e_rtn);
  // keep_gram (GPTQ after AWQ): the kept matrices are the folded model's own inputs' XᵀX, as a
  // fresh calibration of the folded model measures them; the caller's matrices are untouched.
  {
    auto m = load_model("tests/fixtures/parity/llama", *be);
    const ActStats st0 = calibrate(*m, calib, 8, 32, false, true);
    ActStats st = st0;
    SmoothOptions o;
    o.rule = SmoothOptions::Rule::Awq;
    o.group = 32;
    o.alpha = 0.5;  // every site moves
    o.keep_gram = true;
    smooth_model(*m, st, o);
    const ActStats fresh = calibrate(*m, calib, 8, 32, false, true);
    int checked = 0;
    for (const Linear* l : m->linears()) {
      if (l->name.find(".layers.") == std::string::npos) continue;  // the head is not scaled
      CAPTURE(l->name);
      const GramMatrix &kept = *st.gram.at(l->name), &now = *fresh.gram.at(l->name),
                       &orig = *st0.gram.at(l->name);
      REQUIRE(kept.n == now.n);
      double num = 0, den = 0, moved = 0;
      for (size_t i = 0; i < kept.xtx.size(); ++i) {
        num += (double(kept.xtx[i]) - now.xtx[i]) * (double(kept.xtx[i]) - now.xtx[i]);
        den += double(now.xtx[i]) * now.xtx[i];
        moved += std::fabs(double(orig.xtx[i]) - now.xtx[i]);
      }
      CHECK(std::sqrt(num / den) < 1e-4);
      CHECK(moved > 0);
      ++checked;
    }
    CHECK(checked == 7 * int(m->config().n_layers));
  }
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

  // int3 (packed 3-bit codes, negative scales included) runs through the int3 kernels: the
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
  const std::vector<float> yq = model_logits(*m, ids);
  // (the kernels' own arithmetic differs from f32 GEMM by ~5e-4 here; a mishandled
  // negative scale would be O(1)).
  CHECK(rel_l2(yq, model_logits(*d, ids)) < 2e-3);
  test::TempDir dir("int3");
  save_compressed(*m, nullptr, (dir.path / "model").string(),
                  compress_spec_from_name("int3-gptq-g32-act-clip"));
  auto back = load_model((dir.path / "model").string(), *be);
  CHECK(model_logits(*back, ids) == yq);
}

TEST_CASE("dataaware: method names and bad input") {
  for (std::string n : {"int3-g128", "int3-g64-clip", "int4-g128-clip", "nf4-g64-clip",
                        "int3-gptq-g128", "int4-gptq-g128-act-clip", "int4-awq-g128",
                        "w8a8-static-sq", "int4-gptq-g64-awq-act-clip", "int3-gptq-g128-awq"})
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
  // Zero points: int4, int4-gptq, int4-awq (with or without the search); not int3 / nf4 / int8.
  CHECK(compress_spec_from_name("int4-asym-clip").steps[0].quant.asymmetric);
  CHECK(compress_spec_from_name("int4-gptq-g64-awq-act-clip-asym").steps[0].quant.asymmetric);
  CHECK(compress_spec_from_name("int4-awq-asym").steps[0].quant.asymmetric);
  CHECK_THROWS_WITH_AS(compress_spec_from_name("int3-gptq-asym"), doctest::Contains("int4"), Error);
  CHECK_THROWS_WITH_AS(compress_spec_from_name("nf4-asym"), doctest::Contains("int4"), Error);
  CHECK_THROWS_WITH_AS(compress_spec_from_name("int4-act"), doctest::Contains("GPTQ"), Error);
  CHECK(compress_spec_from_name("int4-gptq-awq").steps[0].smooths());
  CHECK_THROWS_WITH_AS(compress_spec_from_name("int8-gptq-awq"),
                       doctest::Contains("int4-gptq / int3-gptq"), Error);
  CHECK_THROWS_WITH_AS(compress_spec_from_name("int4-awq-awq"),
                       doctest::Contains("int4-gptq / int3-gptq"), Error);
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

// ---- encoders (BERT): calibration on sentences -------------------------------------------

TEST_CASE("dataaware: encoder calibration sentences are whole lines, evenly spread") {
  const std::string dir = "tests/fixtures/sentence_transformers/";
  auto tok = Tokenizer::from_json_file(dir + "tokenizer.json");
  // max_seq_length 8, no lowercasing (make_st_fixtures.py).
  const SentenceEmbeddingConfig st = read_sentence_embedding_config(dir + "mean_norm_8");
  const std::vector<std::string> lines = {"alpha bravo",
                                          "charlie delta echo",
                                          "= golf =",
                                          "hotel",
                                          "india juliet kilo lima mike november oscar papa quebec",
                                          "romeo",
                                          "sierra tango",
                                          "uniform victor whiskey",
                                          "xray",
                                          "yankee zulu one two"};
  std::string text;
  for (size_t i = 0; i < lines.size(); ++i)
    text += (i == 2 ? "  " : "") + lines[i] + (i == 2 ? " \n" : "\n") + (i == 3 ? "\n   \n" : "");
  const int32_t cls = tok->token_to_id("[CLS]"), sep = tok->token_to_id("[SEP]");
  REQUIRE(cls >= 0);
  REQUIRE(sep >= 0);
  auto expect = [&](const std::string& l) {  // HF truncation to 8 keeps the final [SEP]
    std::vector<int32_t> ids = tok->encode(l, true);
    if (ids.size() > 8) {
      ids.resize(8);
      ids.back() = sep;
    }
    return ids;
  };
  int64_t total = 0;
  for (const auto& l : lines) total += int64_t(expect(l).size());
  const auto all = encoder_calibration_sequences(*tok, text, st, 64, total);
  REQUIRE(all.size() == lines.size());  // blank lines skipped, the rest all needed
  for (size_t i = 0; i < lines.size(); ++i) {
    CAPTURE(i);
    CHECK(all[i] == expect(lines[i]));
    CHECK(all[i].front() == cls);
    CHECK(all[i].back() == sep);
  }
  CHECK(all[4].size() == 8);  // 9 words + [CLS] + [SEP], truncated
  // 6 tokens: line 0 alone has 4; lines 0 and 5 (i·n/k, k = 2) have 4 + 3.
  const auto two = encoder_calibration_sequences(*tok, text, st, 64, 6);
  REQUIRE(two.size() == 2);
  CHECK(two[0] == expect(lines[0]));
  CHECK(two[1] == expect(lines[5]));
  // The model's positions cap the length too.
  int64_t total5 = 0;
  for (const auto& l : lines) total5 += std::min<int64_t>(int64_t(expect(l).size()), 5);
  const auto capped = encoder_calibration_sequences(*tok, text, st, 5, total5);
  REQUIRE(capped.size() == lines.size());
  CHECK(capped[4].size() == 5);
  CHECK(capped[4].back() == sep);
  CHECK_THROWS_WITH_AS(encoder_calibration_sequences(*tok, text, st, 64, total + 1),
                       doctest::Contains("fewer than the"), Error);
  CHECK_THROWS_WITH_AS(encoder_calibration_sequences(*tok, "\n  \n", st, 64, 1),
                       doctest::Contains("no non-blank line"), Error);
}

TEST_CASE("dataaware: encoder calibration statistics; AWQ and GPTQ on BERT") {
  auto be = make_cpu_backend(2);
  const std::string fx = "tests/fixtures/parity/bert";
  auto m = load_model(fx, *be);
  const ModelConfig& c = m->config();
  std::vector<std::vector<int32_t>> seqs;
  int64_t tokens = 0;
  for (int i = 0; i < 24; ++i) {
    std::vector<int32_t> s = some_ids(5 + (i * 7) % 17, c.vocab_size, uint32_t(100 + i));
    s.front() = 2;  // [CLS]
    s.back() = 3;   // [SEP]
    tokens += int64_t(s.size());
    seqs.push_back(std::move(s));
  }
  REQUIRE(tokens > c.ffn_at(0));  // enough for GPTQ / AWQ on the widest input (intermediate)
  const ActStats st = calibrate_encoder(*m, seqs, false, true);
  CHECK(st.tokens == tokens);
  const std::string l0 = "encoder.layer.0.";
  const std::string q = l0 + "attention.self.query.weight", k = l0 + "attention.self.key.weight",
                    v = l0 + "attention.self.value.weight";
  // q / k / v read one input: one Gram matrix. Every Linear: diag(XᵀX) = Σ x².
  CHECK(st.gram.at(q).get() == st.gram.at(k).get());
  CHECK(st.gram.at(q).get() == st.gram.at(v).get());
  for (const Linear* l : m->linears()) {
    CAPTURE(l->name);
    const GramMatrix& g = *st.gram.at(l->name);
    const std::vector<double>& sq = st.sumsq.at(l->name);
    REQUIRE(g.n == l->in);
    for (int64_t j = 0; j < l->in; ++j)
      CHECK(double(g.xtx[size_t(j * g.n + j)]) == doctest::Approx(sq[size_t(j)]).epsilon(1e-4));
  }
  // Layer 0's query reads LayerNorm(word + position + type 0) of each token: computed here from
  // the fixture's tensors, in double.
  {
    std::map<std::string, const Tensor*> t;
    for (const Model::NamedTensor& n : m->tensors()) t[n.name] = n.t;
    const int64_t C = c.hidden;
    const float *word = t.at("embeddings.word_embeddings.weight")->data<float>(),
                *pos = t.at("embeddings.position_embeddings.weight")->data<float>(),
                *type = t.at("embeddings.token_type_embeddings.weight")->data<float>(),
                *g = t.at("embeddings.LayerNorm.weight")->data<float>(),
                *b = t.at("embeddings.LayerNorm.bias")->data<float>();
    std::vector<double> amax(size_t(C), 0.0), sq(size_t(C), 0.0), e(size_t(C), 0.0);
    for (const auto& s : seqs)
      for (size_t p = 0; p < s.size(); ++p) {
        double mean = 0, var = 0;
        for (int64_t j = 0; j < C; ++j) {
          e[size_t(j)] = double(word[s[p] * C + j]) + pos[int64_t(p) * C + j] + type[j];
          mean += e[size_t(j)] / double(C);
        }
        for (int64_t j = 0; j < C; ++j) var += (e[size_t(j)] - mean) * (e[size_t(j)] - mean);
        var /= double(C);
        for (int64_t j = 0; j < C; ++j) {
          const double x = (e[size_t(j)] - mean) / std::sqrt(var + 1e-12) * g[j] + b[j];
          amax[size_t(j)] = std::max(amax[size_t(j)], std::fabs(x));
          sq[size_t(j)] += x * x;
        }
      }
    for (int64_t j = 0; j < C; ++j) {
      CHECK(double(st.absmax.at(q)[size_t(j)]) == doctest::Approx(amax[size_t(j)]).epsilon(1e-4));
      CHECK(st.sumsq.at(q)[size_t(j)] == doctest::Approx(sq[size_t(j)]).epsilon(1e-4));
    }
  }

  // Hidden states of every calibration sequence, for the comparisons below.
  auto hidden = [&](Model& mm) {
    std::vector<float> out;
    RunState s = mm.new_state(0, 64);
    for (const auto& q : seqs) {
      Tensor h = mm.encode(s, q.data(), 1, int64_t(q.size()));
      std::vector<float> v(size_t(h.numel()));
      mm.backend().to_host(h, v.data());
      out.insert(out.end(), v.begin(), v.end());
    }
    return out;
  };
  const std::vector<float> y0 = hidden(*m);
  // AWQ's one BERT fold (value -> attention.output) per layer keeps the f32 model's output.
  {
    auto ms = load_model(fx, *be);
    ActStats s2 = calibrate_encoder(*ms, seqs, false, true);
    SmoothOptions o;
    o.rule = SmoothOptions::Rule::Awq;
    o.group = 32;
    const SmoothReport r = smooth_model(*ms, s2, o);
    CHECK(r.sites == int(c.n_layers));
    CHECK(rel_l2(hidden(*ms), y0) < 1e-5);
  }
  // The calibrated methods beat round-to-nearest at the same group on these sequences.
  auto err_of = [&](const std::string& method) {
    auto mq = load_model(fx, *be);
    ActStats s2 = calibrate_encoder(*mq, seqs, false, true);
    compress_model(*mq, compress_spec_from_name(method), &s2, false);
    return rel_l2(hidden(*mq), y0);
  };
  const double e_rtn = err_of("int4-g32"), e_awq = err_of("int4-awq-g32"),
               e_gptq = err_of("int4-gptq-g32");
  CAPTURE(e_rtn);
  CAPTURE(e_awq);
  CAPTURE(e_gptq);
  CHECK(e_awq < e_rtn);
  CHECK(e_gptq < e_rtn);

  // Bad input: the causal path refuses an encoder and the other way round, no sequences, a
  // sequence longer than the positions.
  CHECK_THROWS_WITH_AS(calibrate(*m, some_ids(64, c.vocab_size), 2, 32, false),
                       doctest::Contains("calibrate_encoder"), Error);
  auto llama = load_model("tests/fixtures/parity/llama", *be);
  CHECK_THROWS_WITH_AS(calibrate_encoder(*llama, seqs, false), doctest::Contains("causal LM"),
                       Error);
  CHECK_THROWS_WITH_AS(calibrate_encoder(*m, {}, false), doctest::Contains("no calibration"),
                       Error);
  CHECK_THROWS_WITH_AS(calibrate_encoder(*m, {some_ids(c.max_pos + 1, c.vocab_size)}, false),
                       doctest::Contains("expected 1..64"), Error);
}

TEST_CASE("dataaware: partial forward runs, and GPTQ true-sequential calibration (-seq)") {
  auto be = make_cpu_backend(2);
  // Blocks [0, 1) then [1, end) from the kept residual stream: the logits of one whole run.
  for (const char* dir : {"tests/fixtures/parity/llama", "tests/fixtures/parity/gpt2"}) {
    CAPTURE(dir);
    auto m = load_model(dir, *be);
    const int64_t V = m->config().vocab_size;
    const std::vector<int32_t> gid = some_ids(12, V);
    const std::vector<float> y0 = model_logits(*m, gid);
    const int64_t T = int64_t(gid.size()), C = m->config().hidden;
    RunState s = m->new_state(T, T);
    s.layer_end = 1;
    CHECK(!m->forward(s, gid.data(), T, true).defined());
    const std::vector<float> x(s.x.data<float>(), s.x.data<float>() + T * C);
    RunState s2 = m->new_state(T, T);
    s2.layer_begin = 1;
    std::copy(x.begin(), x.end(), s2.x.data<float>());
    const Tensor t = m->forward(s2, gid.data(), T, true);
    std::vector<float> y(size_t(t.numel()));
    be->to_host(t, y.data());
    CHECK(rel_l2(y, y0) < 1e-6);
    RunState bad = m->new_state(T, T);
    bad.layer_end = m->config().n_layers + 1;
    CHECK_THROWS_WITH_AS(m->forward(bad, gid.data(), T, true), doctest::Contains("blocks"), Error);
  }

  // -seq equals its definition done the slow way: block b's Linears quantized with XᵀX from a
  // whole-model calibration pass of the model whose blocks 0..b-1 are already quantized.
  const std::vector<int32_t> calib = some_ids(256, 97, 3);
  const SequentialCalibration seq{&calib, 8, 32};
  for (const std::string method : {"int4-gptq-g32", "int3-gptq-g32-awq-act-clip"}) {
    CAPTURE(method);
    auto m = load_model("tests/fixtures/parity/llama", *be);
    const ActStats st = calibrate(*m, calib, 8, 32, false, true);
    // Embedding tables kept f32 (by default compress_model makes them fp16 before the Linears,
    // which the block passes of -seq then read), so that block 0 sees what the f32 model's
    // calibration saw.
    CompressSpec with_seq = compress_spec_from_name(method + "-seq");
    with_seq.embed_format = "f32";
    const CompressReport rep = compress_model(*m, with_seq, &st, false, &seq);
    CHECK(rep.sequential_seconds > 0);
    // The slow way (for the AWQ chain: the fold first, as compress_model does it).
    auto r = load_model("tests/fixtures/parity/llama", *be);
    CompressSpec plain = compress_spec_from_name(method);
    plain.embed_format = "f32";
    if (plain.last().awq_scales) {
      ActStats st_r = calibrate(*r, calib, 8, 32, false, true);
      SmoothOptions o;
      o.rule = SmoothOptions::Rule::Awq;
      o.group = 32;
      smooth_model(*r, st_r, o);
    }
    const int64_t L = r->config().n_layers;
    for (int64_t b = 0; b < L; ++b) {
      const ActStats now = calibrate(*r, calib, 8, 32, false, true);
      for (Linear* w : r->linears())
        if (w->name.starts_with(fmt::format("model.layers.{}.", b))) {
          *w = compress_linear(*w, plain, &now);
          be->upload(*w);
        }
    }
    // Against plain GPTQ (every block's XᵀX from the f32 model): block 0 is the same, block 1
    // is not (its inputs now come from the quantized block 0).
    auto p = load_model("tests/fixtures/parity/llama", *be);
    const ActStats st_p = calibrate(*p, calib, 8, 32, false, true);
    compress_model(*p, plain, &st_p, false);
    const std::vector<Linear*> lm = m->linears(), lr = r->linears(), lp = p->linears();
    for (size_t i = 0; i < lm.size(); ++i) {
      if (lm[i]->name.find(".layers.") == std::string::npos) continue;
      CAPTURE(lm[i]->name);
      const Tensor a = dequantize_weight(*lm[i]), b = dequantize_weight(*lr[i]),
                   c = dequantize_weight(*lp[i]);
      CHECK(agree(a, b) > 0.995);
      if (lm[i]->name.starts_with("model.layers.0."))
        CHECK(agree(a, c) > 0.995);
      else
        CHECK(agree(a, c) < 0.95);
    }
  }
  // Names and bad input.
  CHECK(compress_spec_name(compress_spec_from_name("int4-gptq-g64-awq-act-clip-asym-seq")) ==
        "int4-gptq-g64-asym-awq-act-clip-seq");
  CHECK_THROWS_WITH_AS(compress_spec_from_name("int4-awq-seq"), doctest::Contains("GPTQ"), Error);
  CHECK_THROWS_WITH_AS(compress_spec_from_name("int4-seq"), doctest::Contains("GPTQ"), Error);
  auto m = load_model("tests/fixtures/parity/llama", *be);
  const ActStats st = calibrate(*m, calib, 8, 32, false, true);
  CHECK_THROWS_WITH_AS(compress_model(*m, compress_spec_from_name("int4-gptq-g32-seq"), &st, false),
                       doctest::Contains("calibration text"), Error);
}
