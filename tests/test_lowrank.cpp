// Low-rank factorization (compress/lowrank.h): the rank rules, truncated SVD and SVD-LLM whitening
// against a numpy float64 reference (tests/fixtures/lowrank/make_lowrank_fixture.py), the Gram
// statistic of a calibration pass, chains with a quantizer, and the errors for bad input.
#include <doctest/doctest.h>

#include <cmath>
#include <random>

#include "compress/compress.h"
#include "compress/lowrank.h"
#include "engine/safetensors.h"
#include "models/model.h"
#include "test_util.h"

using namespace minfer;
using namespace minfer::test;

namespace {

const std::string kSvd = "tests/fixtures/lowrank/svd.safetensors";

Linear dense_of(const Tensor& w, const std::string& name = "blk.w") {
  return make_dense(name, w, w.dim(1), w.dim(0));
}

// max |a - b| over two [out, in] f32 tensors
double max_abs_diff(const Tensor& a, const Tensor& b) {
  REQUIRE(a.numel() == b.numel());
  double d = 0;
  for (int64_t i = 0; i < a.numel(); ++i)
    d = std::max(d, std::fabs(double(a.data<float>()[i]) - b.data<float>()[i]));
  return d;
}

std::vector<int32_t> some_ids(int64_t n, int64_t vocab, uint32_t seed = 7) {
  std::mt19937 rng(seed);
  std::vector<int32_t> ids(static_cast<size_t>(n));
  for (auto& i : ids) i = int32_t(rng() % uint32_t(vocab));
  return ids;
}

}  // namespace

TEST_CASE("lowrank: the rank for a parameter reduction and for an energy") {
  // SmolLM2-135M shapes at 20 %: q/o [576, 576], k/v [192, 576], gate/up [1536, 576], down.
  CHECK(lowrank_rank_for_percent(576, 576, 20) == 230);
  CHECK(lowrank_rank_for_percent(576, 192, 20) == 115);
  CHECK(lowrank_rank_for_percent(576, 1536, 20) == 335);
  CHECK(lowrank_rank_for_percent(1536, 576, 40) == 251);
  for (auto [in, out] : {std::pair<int64_t, int64_t>{576, 576}, {576, 192}, {40, 48}, {7, 300}})
    for (int p : {1, 20, 40, 75}) {
      CAPTURE_BINDING(in);
      CAPTURE_BINDING(out);
      CAPTURE(p);
      const int64_t r = lowrank_rank_for_percent(in, out, p);
      // The largest rank whose factors keep at most (100 - p) % of the parameters.
      CHECK(100 * r * (in + out) <= (100 - p) * in * out);
      CHECK(100 * (r + 1) * (in + out) > (100 - p) * in * out);
      CHECK(r <= std::min(in, out));
    }
  CHECK_THROWS_WITH_AS(lowrank_rank_for_percent(4, 4, 90), doctest::Contains("cannot lose 90 %"),
                       Error);
  CHECK_THROWS_WITH_AS(lowrank_rank_for_percent(64, 64, 0), doctest::Contains("1..99"), Error);
  CHECK_THROWS_WITH_AS(lowrank_rank_for_percent(64, 64, 100), doctest::Contains("1..99"), Error);

  const std::vector<float> s = {3, 2, 1};  // σ² = 9, 4, 1 of 14
  CHECK(lowrank_rank_for_energy(s, 0.5) == 1);
  CHECK(lowrank_rank_for_energy(s, 9.0 / 14) == 1);
  CHECK(lowrank_rank_for_energy(s, 0.65) == 2);
  CHECK(lowrank_rank_for_energy(s, 13.0 / 14) == 2);
  CHECK(lowrank_rank_for_energy(s, 0.95) == 3);
  CHECK(lowrank_rank_for_energy(s, 1.0) == 3);
  CHECK_THROWS_WITH_AS(lowrank_rank_for_energy(s, 0.0), doctest::Contains("(0, 1]"), Error);
}

TEST_CASE("lowrank: truncated SVD and SVD-LLM whitening match numpy") {
  auto fx = SafetensorsFile::open(kSvd);
  const Tensor w = fx->get("w"), x = fx->get("x");
  const Linear l = dense_of(w);
  const double wmax = 1.0;  // |w| entries are below 1 (spectrum 1.2^-i, orthonormal factors)

  LowRankSpec plain;
  plain.rank = 10;
  const Linear lp = lowrank_factorize(l, plain);
  const LowRank& lr = std::get<LowRank>(lp.repr);
  CHECK(lr.v->out == 10);
  CHECK(lr.u->in == 10);
  CHECK(lp.weight_bytes() == size_t(10 * (40 + 48) * 4));
  CHECK(linear_format(lp) == "lowrank-r10");
  const Tensor wp = dequantize_weight(lp);
  CHECK(max_abs_diff(wp, fx->get("plain_r10")) < 2e-5 * wmax);
  // U has orthonormal columns (the singular values live in V).
  const Tensor u = dequantize_weight(*lr.u);
  for (int a = 0; a < 10; ++a)
    for (int b = 0; b < 10; ++b) {
      double d = 0;
      for (int o = 0; o < 48; ++o)
        d += double(u.data<float>()[o * 10 + a]) * u.data<float>()[o * 10 + b];
      CHECK(d == doctest::Approx(a == b ? 1.0 : 0.0).epsilon(1e-5));
    }

  LowRankSpec aw = plain;
  aw.activation_aware = true;
  const std::vector<float> g = gram_of(x);
  const Tensor wa = dequantize_weight(lowrank_factorize(l, aw, &g));
  CHECK(max_abs_diff(wa, fx->get("aw_r10")) < 2e-4 * wmax);
  // Whitening minimizes the output error on the calibration data: it reaches the bound of the
  // whitened spectrum's tail and beats plain SVD (here by 2x: x has two 10x features).
  const double e_plain = output_error(w, wp, x), e_aw = output_error(w, wa, x);
  const double bound = fx->get("aw_tail").data<float>()[0];
  CHECK(e_aw <= e_plain);
  CHECK(e_aw == doctest::Approx(bound).epsilon(1e-3));
  CHECK(e_plain > 1.5 * e_aw);
  // …and plain SVD has the smaller weight error (what it minimizes).
  CHECK(max_abs_diff(wp, w) <= max_abs_diff(wa, w));

  // Energy: the smallest rank keeping 90 % of Σσ² of the numpy spectrum.
  const Tensor sig = fx->get("sigma");
  double tot = 0, kept = 0;
  for (int i = 0; i < 40; ++i) tot += double(sig.data<float>()[i]) * sig.data<float>()[i];
  int64_t want = 0;
  while (kept < 0.9 * tot)
    kept += double(sig.data<float>()[want]) * sig.data<float>()[want], ++want;
  LowRankSpec en;
  en.energy = 0.9;
  CHECK(std::get<LowRank>(lowrank_factorize(l, en).repr).v->out == want);
  // Full rank reproduces W.
  LowRankSpec full;
  full.rank = 40;
  CHECK(max_abs_diff(dequantize_weight(lowrank_factorize(l, full)), w) < 1e-5);
}

TEST_CASE("lowrank: methods, chains with a quantizer, and bad input") {
  auto fx = SafetensorsFile::open(kSvd);
  const Tensor w = fx->get("w"), x = fx->get("x");
  const Linear l = dense_of(w);

  // Names parse and print back.
  for (std::string n : {"lowrank-20", "lowrank-aw-40", "lowrank-r64", "lowrank-aw-e0.9",
                        "lowrank-aw-20+int8", "lowrank-20+int4-g32", "lowrank-40+fp16"})
    CHECK(compress_spec_name(compress_spec_from_name(n)) == n);
  CHECK(compress_spec_from_name("lowrank-aw-20").needs_gram());
  CHECK(compress_spec_from_name("lowrank-aw-20").needs_calibration());
  CHECK_FALSE(compress_spec_from_name("lowrank-20").uses_calibration());

  // A rank of 0 or above min(in, out), sizes out of range, a missing size.
  CHECK_THROWS_WITH_AS(compress_spec_from_name("lowrank-r0"),
                       doctest::Contains("rank must be >= 1"), Error);
  CHECK_THROWS_WITH_AS(compress_linear(l, compress_spec_from_name("lowrank-r41")),
                       doctest::Contains("rank must be in [1, min(in, out) = 40]"), Error);
  CHECK_THROWS_WITH_AS(compress_spec_from_name("lowrank-0"), doctest::Contains("1..99"), Error);
  CHECK_THROWS_WITH_AS(compress_spec_from_name("lowrank-100"), doctest::Contains("1..99"), Error);
  CHECK_THROWS_WITH_AS(compress_spec_from_name("lowrank"), doctest::Contains("exactly one size"),
                       Error);
  CHECK_THROWS_WITH_AS(compress_spec_from_name("lowrank-20-r8"),
                       doctest::Contains("exactly one size"), Error);
  CHECK_THROWS_WITH_AS(compress_spec_from_name("lowrank-e1.5"), doctest::Contains("(0, 1]"), Error);
  CHECK_THROWS_WITH_AS(compress_spec_from_name("lowrank-ex"), doctest::Contains("unknown option"),
                       Error);
  CHECK_THROWS_WITH_AS(compress_spec_from_name("int8-20"), doctest::Contains("lowrank option"),
                       Error);
  // Chains: low-rank first, a weight-only method after it, one low-rank step.
  CHECK_THROWS_WITH_AS(compress_spec_from_name("int8+lowrank-20"),
                       doctest::Contains("must come last"), Error);
  CHECK_THROWS_WITH_AS(compress_spec_from_name("lowrank-20+lowrank-20"),
                       doctest::Contains("must come first"), Error);
  CHECK_THROWS_WITH_AS(compress_spec_from_name("lowrank-20+w8a8"), doctest::Contains("weight-only"),
                       Error);
  // A quantized weight cannot be factorized.
  const Linear q = compress_linear(l, compress_spec_from_name("int8"));
  CHECK_THROWS_WITH_AS(compress_linear(q, compress_spec_from_name("lowrank-20")),
                       doctest::Contains("already int8"), Error);

  // lowrank-r10+int8: the same factorization, each factor int8 per row, still one LowRank.
  const Linear lp = compress_linear(l, compress_spec_from_name("lowrank-r10"));
  const Linear l8 = compress_linear(l, compress_spec_from_name("lowrank-r10+int8"));
  const LowRank& f8 = std::get<LowRank>(l8.repr);
  CHECK(std::holds_alternative<Quantized>(f8.v->repr));
  CHECK(std::holds_alternative<Quantized>(f8.u->repr));
  CHECK(linear_format(l8) == "lowrank-r10+int8");
  CHECK(l8.weight_bytes() == f8.v->weight_bytes() + f8.u->weight_bytes());
  const Tensor wp = dequantize_weight(lp), w8 = dequantize_weight(l8);
  // int8 per-row rounding of each factor: at most half a step of each factor's row absmax,
  // which is far below the low-rank error itself.
  CHECK(max_abs_diff(wp, w8) < 0.02);
  CHECK(max_abs_diff(wp, w8) < 0.1 * max_abs_diff(wp, w));
  // The factors quantize exactly as the same factors quantized alone do.
  const Linear v8 = compress_linear(*std::get<LowRank>(lp.repr).v, compress_spec_from_name("int8"));
  CHECK(max_abs_diff(dequantize_weight(v8), dequantize_weight(*f8.v)) == 0.0);

  // lowrank-aw without calibration statistics, and with too few tokens.
  const CompressSpec aw = compress_spec_from_name("lowrank-aw-r10");
  CHECK_THROWS_WITH_AS(compress_linear(l, aw), doctest::Contains("no calibration Gram matrix"),
                       Error);
  ActStats st;
  auto g = std::make_shared<GramMatrix>();
  g->n = 40;
  g->xtx = gram_of(x);
  st.gram[l.name] = g;
  st.tokens = 39;
  CHECK_THROWS_WITH_AS(compress_linear(l, aw, &st), doctest::Contains("only 39 tokens"), Error);
  st.tokens = 300;
  CHECK(max_abs_diff(dequantize_weight(compress_linear(l, aw, &st)), fx->get("aw_r10")) < 2e-4);
  // A Gram matrix of the wrong size.
  g->xtx.resize(10);
  CHECK_THROWS_WITH_AS(compress_linear(l, aw, &st), doctest::Contains("expected [40, 40]"), Error);
  // Non-finite weights name the position.
  Tensor bad = Tensor::empty(DType::F32, {48, 40});
  std::copy(w.data<float>(), w.data<float>() + w.numel(), bad.data<float>());
  bad.data<float>()[5 * 40 + 7] = NAN;
  CHECK_THROWS_WITH_AS(compress_linear(dense_of(bad), compress_spec_from_name("lowrank-20")),
                       doctest::Contains("[5, 7] is not finite"), Error);
}

TEST_CASE("lowrank: calibration records XᵀX per input, shared by linears that read one input") {
  auto be = make_cpu_backend(2);
  auto m = load_model("tests/fixtures/parity/llama", *be);
  const std::vector<int32_t> ids = some_ids(64, 97, 5);
  CHECK(calibrate(*m, ids, 2, 32, false).gram.empty());  // opt-in
  ActStats st = calibrate(*m, ids, 2, 32, false, /*with_gram=*/true);
  REQUIRE(st.tokens == 64);
  for (Linear* w : m->linears()) {
    CAPTURE(w->name);
    REQUIRE(st.gram.count(w->name));
    const GramMatrix& g = *st.gram[w->name];
    CHECK(g.n == w->in);
    for (int64_t i = 0; i < g.n; ++i) {
      // diag = Σ x_i² >= max x_i²
      CHECK(g.xtx[size_t(i * g.n + i)] >=
            st.absmax[w->name][size_t(i)] * st.absmax[w->name][size_t(i)] * (1 - 1e-5));
      for (int64_t j = 0; j < i; ++j)
        CHECK(g.xtx[size_t(i * g.n + j)] == g.xtx[size_t(j * g.n + i)]);
    }
  }
  const std::string a = "model.layers.1.self_attn.", p = "model.layers.1.mlp.";
  CHECK(st.gram[a + "q_proj.weight"] == st.gram[a + "k_proj.weight"]);
  CHECK(st.gram[a + "q_proj.weight"] == st.gram[a + "v_proj.weight"]);
  CHECK(st.gram[a + "q_proj.weight"] != st.gram[a + "o_proj.weight"]);
  CHECK(st.gram[p + "gate_proj.weight"] == st.gram[p + "up_proj.weight"]);
  CHECK(st.gram[p + "gate_proj.weight"] != st.gram[p + "down_proj.weight"]);
  CHECK(st.gram[a + "q_proj.weight"] != st.gram["model.layers.0.self_attn.q_proj.weight"]);

  // Layer 0's q/k/v read RMSNorm(embedding[ids]) * γ: XᵀX recomputed here in f64.
  const Tensor *emb = nullptr, *gamma = nullptr;
  for (const Model::NamedTensor& t : m->tensors()) {
    if (t.name == "model.embed_tokens.weight") emb = t.t;
    if (t.name == "model.layers.0.input_layernorm.weight") gamma = t.t;
  }
  REQUIRE(emb);
  REQUIRE(gamma);
  const Tensor e = emb->to_f32(), gm = gamma->to_f32();
  const int64_t d = 48;
  std::vector<double> xtx(size_t(d * d), 0.0);
  for (int32_t id : ids) {
    const float* row = e.data<float>() + int64_t(id) * d;
    double ms = 0;
    for (int64_t i = 0; i < d; ++i) ms += double(row[i]) * row[i];
    const double inv = 1.0 / std::sqrt(ms / double(d) + double(m->config().norm_eps));
    std::vector<double> xn(static_cast<size_t>(d));
    for (int64_t i = 0; i < d; ++i) xn[size_t(i)] = row[i] * inv * gm.data<float>()[i];
    for (int64_t i = 0; i < d; ++i)
      for (int64_t j = 0; j < d; ++j) xtx[size_t(i * d + j)] += xn[size_t(i)] * xn[size_t(j)];
  }
  const GramMatrix& g0 = *st.gram["model.layers.0.self_attn.q_proj.weight"];
  double scale = 0;
  for (double v : xtx) scale = std::max(scale, std::fabs(v));
  for (int64_t i = 0; i < d * d; ++i)
    CHECK(std::fabs(g0.xtx[size_t(i)] - xtx[size_t(i)]) < 1e-5 * scale);
}

TEST_CASE("lowrank: whole model, save -> load, and a calibration too short for lowrank-aw") {
  auto be = make_cpu_backend(2);
  const std::vector<int32_t> ids = some_ids(12, 97);
  for (std::string method : {"lowrank-20", "lowrank-aw-20", "lowrank-aw-40+int8", "lowrank-e0.9"}) {
    CAPTURE(method);
    auto m = load_model("tests/fixtures/parity/llama", *be);
    const CompressSpec spec = compress_spec_from_name(method);
    ActStats st;
    if (spec.uses_calibration()) st = calibrate(*m, some_ids(128, 97, 3), 4, 32, false, true);
    const CompressReport r =
        compress_model(*m, spec, spec.uses_calibration() ? &st : nullptr, false);
    for (Linear* w : m->linears()) {
      CAPTURE(w->name);
      if (w->name.find(".layers.") == std::string::npos) {      // the (tied) head
        CHECK_FALSE(std::holds_alternative<LowRank>(w->repr));  // the head is not factorized
        continue;
      }
      REQUIRE(std::holds_alternative<LowRank>(w->repr));
      if (spec.steps.size() == 1 && spec.steps[0].lowrank.percent)  // f32 factors
        CHECK(100 * w->weight_bytes() <=
              size_t(100 - spec.steps[0].lowrank.percent) * size_t(w->in * w->out) * 4);
    }
    if (method == "lowrank-20") CHECK(r.linear_bpw <= 32 * 0.8);
    test::TempDir dir("lowrank");
    const std::string out = dir / "model";
    save_compressed(*m, nullptr, out, spec);
    auto back = load_model(out, *be);
    RunState s1 = m->new_state(12, 12), s2 = back->new_state(12, 12);
    Tensor a = m->forward(s1, ids.data(), 12, true), b = back->forward(s2, ids.data(), 12, true);
    std::vector<float> va(size_t(a.numel())), vb(size_t(b.numel()));
    m->backend().to_host(a, va.data());
    back->backend().to_host(b, vb.data());
    CHECK(va == vb);
    for (float v : va) REQUIRE(std::isfinite(v));
  }
  // 64 calibration tokens < 80 input features of down_proj: XᵀX is singular.
  auto m = load_model("tests/fixtures/parity/llama", *be);
  ActStats st = calibrate(*m, some_ids(64, 97, 3), 2, 32, false, true);
  CHECK_THROWS_WITH_AS(compress_model(*m, compress_spec_from_name("lowrank-aw-20"), &st, false),
                       doctest::Contains("fewer than the 80 input features"), Error);
  ActStats no_gram = calibrate(*m, some_ids(128, 97, 3), 4, 32, false);
  CHECK_THROWS_WITH_AS(
      compress_model(*m, compress_spec_from_name("lowrank-aw-20"), &no_gram, false),
      doctest::Contains("Gram statistic"), Error);
}
