// Structured pruning (compress/structured.h): kept heads / neurons / blocks and the pruned
// model's logits against an independent numpy reference (tests/fixtures/structured, made by
// make_structured_fixtures.py from the parity models); pruning == zeroing the removed units in
// the unpruned model; per-layer configs round-trip through a saved folder; bad input.
#include <doctest/doctest.h>
#include <fmt/format.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "compress/compress.h"
#include "compress/structured.h"
#include "engine/safetensors.h"
#include "models/model.h"
#include "test_util.h"

using namespace minfer;

namespace {

const std::string kParity = "tests/fixtures/parity/";
const std::string kFix = "tests/fixtures/structured/";
constexpr int kCalibWindows = 3;  // as make_structured_fixtures.py: N_CALIB x CALIB_LEN
constexpr int64_t kCalibLen = 16;

std::vector<int32_t> ids_of(const Tensor& t) {
  return std::vector<int32_t>(t.data<int32_t>(), t.data<int32_t>() + t.numel());
}

std::vector<int64_t> idx_of(const Tensor& t) {
  return std::vector<int64_t>(t.data<int32_t>(), t.data<int32_t>() + t.numel());
}

std::vector<float> all_logits(Model& m, const std::vector<int32_t>& ids) {
  const int64_t T = int64_t(ids.size());
  RunState s = m.new_state(T, T);
  Tensor l = m.forward(s, ids.data(), T, true);
  return std::vector<float>(l.data<float>(), l.data<float>() + l.numel());
}

std::vector<float> hidden(Model& m, const std::vector<int32_t>& ids) {
  const int64_t T = int64_t(ids.size());
  RunState s = m.new_state(0, T);
  Tensor h = m.encode(s, ids.data(), 1, T);
  return std::vector<float>(h.data<float>(), h.data<float>() + h.numel());
}

float max_diff(const std::vector<float>& a, const std::vector<float>& b) {
  REQUIRE(a.size() == b.size());
  float d = 0;
  for (size_t i = 0; i < a.size(); ++i) d = std::max(d, std::fabs(a[i] - b[i]));
  return d;
}

// The unpruned model with the removed units zeroed: W_o columns of removed heads, W_down
// columns of removed neurons (what removing them computes, in an attention / FFN block).
void zero_removed(Model& m, const StructuredPlan& p) {
  const ModelConfig& c = m.config();
  for (Linear* w : m.linears()) {
    const bool o = w->name.find("attn.c_proj") != std::string::npos ||
                   w->name.find("o_proj") != std::string::npos ||
                   w->name.find("attention.output.dense") != std::string::npos;
    const bool down = !o && (w->name.find("mlp.c_proj") != std::string::npos ||
                             w->name.find("down_proj") != std::string::npos ||
                             w->name.find("output.dense") != std::string::npos);
    if (!o && !down) continue;
    int64_t l = -1;
    for (int64_t k = 0; k < c.n_layers; ++k)
      if (w->name.find(fmt::format(".{}.", k)) != std::string::npos) l = k;
    REQUIRE(l >= 0);
    const auto& keep = o ? p.heads[size_t(l)] : p.ffn[size_t(l)];
    const int64_t unit = o ? c.head_dim : 1;
    Dense d = std::get<Dense>(w->repr);
    Tensor cl = d.w.clone();  // the fixture is mmap'd read-only
    for (int64_t j = 0; j < w->in; ++j) {
      if (std::binary_search(keep.begin(), keep.end(), j / unit)) continue;
      for (int64_t i = 0; i < w->out; ++i)
        (d.transposed ? cl.data<float>()[j * w->out + i] : cl.data<float>()[i * w->in + j]) = 0.f;
    }
    w->repr = Dense{cl, d.transposed};
  }
}

}  // namespace

TEST_CASE("structured: kept units and logits equal the numpy reference (llama GQA, gpt2)") {
  auto be = make_cpu_backend(2);
  for (std::string name : {"llama", "gpt2"}) {
    auto exp = SafetensorsFile::open(kFix + "expected_" + name + ".safetensors");
    const std::vector<int32_t> calib = ids_of(exp->get("calib_ids"));
    const std::vector<int32_t> test = ids_of(exp->get("test_ids"));
    const std::vector<std::string> methods =
        name == "llama" ? std::vector<std::string>{"heads-40", "heads-50", "ffn-40", "layers-1"}
                        : std::vector<std::string>{"heads-50", "ffn-40", "layers-1"};
    for (const std::string& method : methods) {
      CAPTURE(name);
      CAPTURE(method);
      auto m = load_model(kParity + name, *be);
      const MethodSpec step = method_spec_from_name(method);
      const FeatureNorms norms = calibrate_feature_norms(*m, calib, kCalibWindows, kCalibLen);
      CHECK(norms.tokens == kCalibWindows * kCalibLen);
      const StructuredPlan plan =
          plan_structured_step(*m, step, norms, calib, kCalibWindows, kCalibLen);
      CHECK(plan.layers == idx_of(exp->get(method + ".layers")));
      for (int64_t l = 0; l < m->config().n_layers; ++l) {
        const std::string h = method + ".heads_" + std::to_string(l);
        const std::string f = method + ".ffn_" + std::to_string(l);
        if (exp->has(h)) CHECK(plan.heads[size_t(l)] == idx_of(exp->get(h)));
        if (exp->has(f)) CHECK(plan.ffn[size_t(l)] == idx_of(exp->get(f)));
      }
      auto p = apply_structured_plan(*m, plan);
      const ModelConfig& c = p->config();
      CHECK(c.n_layers == int64_t(plan.layers.size()));
      for (int64_t l = 0; l < c.n_layers; ++l) {
        CHECK(c.heads_at(l) == int64_t(plan.heads[size_t(plan.layers[size_t(l)])].size()));
        CHECK(c.ffn_at(l) == int64_t(plan.ffn[size_t(plan.layers[size_t(l)])].size()));
      }
      for (const Linear* w : p->linears()) CHECK(std::holds_alternative<Dense>(w->repr));
      const Tensor& ref = exp->get(method + ".logits");
      const std::vector<float> want(ref.data<float>(), ref.data<float>() + ref.numel());
      CHECK(max_diff(all_logits(*p, test), want) <= 1e-4f);
    }
  }
}

TEST_CASE("structured: llama heads-50 removes a whole KV group; shapes and HF fields") {
  auto be = make_cpu_backend(2);
  auto exp = SafetensorsFile::open(kFix + "expected_llama.safetensors");
  const std::vector<int32_t> calib = ids_of(exp->get("calib_ids"));
  auto m = load_model(kParity + "llama", *be);  // 6 heads in 2 KV groups, D 8, F 80
  auto p = prune_structured(*m, compress_spec_from_name("heads-50+ffn-40"), calib, kCalibWindows,
                            kCalibLen);
  REQUIRE(p);
  const ModelConfig& c = p->config();
  CHECK(c.n_heads == 3);
  CHECK(c.n_kv_heads == 1);
  CHECK(c.ffn == 48);
  CHECK(c.layer_heads.empty());  // uniform: the standard fields say it all
  for (const Linear* w : p->linears()) {
    if (w->name.ends_with("q_proj.weight")) CHECK(w->out == 24);
    if (w->name.ends_with("k_proj.weight")) CHECK(w->out == 8);
    if (w->name.ends_with("o_proj.weight")) CHECK(w->in == 24);
    if (w->name.ends_with("up_proj.weight")) CHECK(w->out == 48);
    if (w->name.ends_with("down_proj.weight")) CHECK(w->in == 48);
  }
  const nlohmann::json j = nlohmann::json::parse(c.source_json);
  CHECK(j["num_attention_heads"] == 3);
  CHECK(j["num_key_value_heads"] == 1);
  CHECK(j["head_dim"] == 8);
  CHECK(j["intermediate_size"] == 48);
  CHECK(j["num_hidden_layers"] == 2);
}

TEST_CASE("structured: pruning equals zeroing the removed units (bert, gpt2 non-uniform)") {
  auto be = make_cpu_backend(2);
  const std::vector<int32_t> ids = {5, 17, 33, 2, 90, 41, 7, 64, 12, 3, 28};
  SUBCASE("bert heads-25 + ffn-40 from calibration") {
    std::vector<int32_t> calib;
    for (int i = 0; i < 48; ++i) calib.push_back((i * 37 + 11) % 103);
    auto m = load_model(kParity + "bert", *be);
    const FeatureNorms nh = calibrate_feature_norms(*m, calib, kCalibWindows, kCalibLen);
    StructuredPlan plan = plan_structured_step(*m, method_spec_from_name("heads-25"), nh, calib,
                                               kCalibWindows, kCalibLen);
    const StructuredPlan pf = plan_structured_step(*m, method_spec_from_name("ffn-40"), nh, calib,
                                                   kCalibWindows, kCalibLen);
    plan.ffn = pf.ffn;
    for (const auto& h : plan.heads) CHECK(h.size() == 3);  // 4 heads, round(1.0) removed
    for (const auto& f : plan.ffn) CHECK(f.size() == 38);   // 64 neurons, round(25.6) removed
    auto p = apply_structured_plan(*m, plan);
    auto ref = load_model(kParity + "bert", *be);
    zero_removed(*ref, plan);
    CHECK(max_diff(hidden(*p, ids), hidden(*ref, ids)) <= 1e-4f);
    CHECK(p->config().pruned_heads.size() == 2);
  }
  SUBCASE("gpt2 explicit non-uniform plan, saved and reloaded") {
    auto m = load_model(kParity + "gpt2", *be);  // 4 heads, F 128
    StructuredPlan plan = full_plan(m->config());
    plan.heads = {{0, 2, 3}, {1}};
    plan.ffn[0].resize(100);
    std::vector<int64_t> odd;
    for (int64_t j = 1; j < 128; j += 2) odd.push_back(j);
    plan.ffn[1] = odd;
    auto p = apply_structured_plan(*m, plan);
    CHECK(p->config().layer_heads == std::vector<int64_t>{3, 1});
    CHECK(p->config().layer_ffn == std::vector<int64_t>{100, 64});
    auto ref = load_model(kParity + "gpt2", *be);
    zero_removed(*ref, plan);
    const std::vector<float> got = all_logits(*p, ids);
    CHECK(max_diff(got, all_logits(*ref, ids)) <= 1e-4f);

    test::TempDir tmp("structured");
    const std::string dir = tmp / "out";
    save_compressed(*p, nullptr, dir, compress_spec_from_name("f32"));
    const ModelConfig rc = load_config(dir + "/config.json");
    CHECK(rc.layer_heads == std::vector<int64_t>{3, 1});
    CHECK(rc.layer_ffn == std::vector<int64_t>{100, 64});
    CHECK(rc.pruned_heads == std::vector<std::vector<int64_t>>{{1}, {0, 2, 3}});
    CHECK(rc.n_heads == 4);  // HF keeps the original count; pruned_heads says which went
    auto back = load_model(dir, *be);
    CHECK(max_diff(all_logits(*back, ids), got) <= 1e-6f);
    // Pruning a pruned model keeps pruned_heads in original indices.
    StructuredPlan again = full_plan(back->config());
    again.heads[0] = {1, 2};  // current heads 1, 2 of layer 0 = original heads 2, 3
    auto p2 = apply_structured_plan(*back, again);
    CHECK(p2->config().pruned_heads == std::vector<std::vector<int64_t>>{{0, 1}, {0, 2, 3}});
  }
}

TEST_CASE("structured: composes with a quantizer and round-trips a uniform llama folder") {
  auto be = make_cpu_backend(2);
  auto exp = SafetensorsFile::open(kFix + "expected_llama.safetensors");
  const std::vector<int32_t> calib = ids_of(exp->get("calib_ids"));
  const std::vector<int32_t> test = ids_of(exp->get("test_ids"));
  auto m = load_model(kParity + "llama", *be);
  const CompressSpec spec = compress_spec_from_name("ffn-40+int8");
  CHECK(compress_spec_name(spec) == "ffn-40+int8");
  auto p = prune_structured(*m, spec, calib, kCalibWindows, kCalibLen);
  REQUIRE(p);
  const std::vector<float> f32 = all_logits(*p, test);
  compress_model(*p, spec, nullptr, false);
  for (const Linear* w : p->linears())
    if (w->name.find("layers.") != std::string::npos) CHECK(linear_format(*w) == "int8");
  test::TempDir tmp("structured-q");
  save_compressed(*p, nullptr, tmp / "out", spec);
  auto back = load_model(tmp / "out", *be);
  CHECK(back->config().ffn == 48);
  CHECK(back->config().layer_ffn.empty());
  const std::vector<float> q = all_logits(*back, test);
  CHECK(max_diff(q, all_logits(*p, test)) <= 1e-5f);
  CHECK(max_diff(q, f32) <= 0.5f);  // int8 on top of the pruned f32 weights: close, not equal
  // A chain of structured steps only keeps f32 weights.
  CHECK(prune_structured(*m, compress_spec_from_name("int8"), calib, 3, 16) == nullptr);
}

TEST_CASE("structured: bad input gives clear errors") {
  for (const char* bad : {"ffn-100", "heads-150", "ffn", "layers-1.5", "int8-20", "ffn-20-30"})
    CHECK_THROWS_AS(compress_spec_from_name(bad), Error);
  CHECK_THROWS_WITH_AS(compress_spec_from_name("ffn-100"), doctest::Contains("[0, 100)"), Error);
  CHECK_THROWS_WITH_AS(compress_spec_from_name("int8+ffn-20"), doctest::Contains("before"), Error);
  auto be = make_cpu_backend(2);
  auto exp = SafetensorsFile::open(kFix + "expected_gpt2.safetensors");
  const std::vector<int32_t> calib = ids_of(exp->get("calib_ids"));
  auto m = load_model(kParity + "gpt2", *be);
  CHECK_THROWS_WITH_AS(prune_structured(*m, compress_spec_from_name("heads-99"), calib, 3, 16),
                       doctest::Contains("at least one head"), Error);
  CHECK_THROWS_WITH_AS(prune_structured(*m, compress_spec_from_name("layers-2"), calib, 3, 16),
                       doctest::Contains("at least one must stay"), Error);
  CHECK_THROWS_WITH_AS(
      prune_structured(*m, compress_spec_from_name("ffn-20"), std::vector<int32_t>(5, 1), 3, 16),
      doctest::Contains("fewer than one window"), Error);
  StructuredPlan plan = full_plan(m->config());
  plan.heads[1] = {};
  CHECK_THROWS_WITH_AS(apply_structured_plan(*m, plan), doctest::Contains("layer 1 keeps no"),
                       Error);
  plan = full_plan(m->config());
  plan.ffn[0] = {3, 2};
  CHECK_THROWS_WITH_AS(apply_structured_plan(*m, plan), doctest::Contains("ascending"), Error);
  auto llama = load_model(kParity + "llama", *be);
  plan = full_plan(llama->config());
  plan.heads[0] = {0, 1, 3};  // 2 heads of group 0, 1 of group 1
  CHECK_THROWS_WITH_AS(apply_structured_plan(*llama, plan), doctest::Contains("group"), Error);

  // A per-layer list that does not fit the config.
  test::TempDir tmp("structured-cfg");
  std::ifstream in(kParity + "llama/config.json");
  nlohmann::json j = nlohmann::json::parse(in);
  j["intermediate_size_per_layer"] = {80};
  std::ofstream(tmp / "config.json") << j.dump();
  CHECK_THROWS_WITH_AS(load_config(tmp / "config.json"),
                       doctest::Contains("intermediate_size_per_layer"), Error);
  j["intermediate_size_per_layer"] = {80, 81};
  std::ofstream(tmp / "config.json") << j.dump();
  CHECK_THROWS_WITH_AS(load_config(tmp / "config.json"), doctest::Contains("[1, 80]"), Error);
}

TEST_CASE("structured: an already quantized model is dequantized and pruned (gpt2 int8)") {
  auto be = make_cpu_backend(2);
  auto exp = SafetensorsFile::open(kFix + "expected_gpt2.safetensors");
  const std::vector<int32_t> calib = ids_of(exp->get("calib_ids"));
  const std::vector<int32_t> test = ids_of(exp->get("test_ids"));
  auto m = load_model(kParity + "gpt2", *be);
  compress_model(*m, compress_spec_from_name("int8"), nullptr, false);
  StructuredPlan plan = full_plan(m->config());
  plan.heads = {{1, 3}, {0, 1, 2}};
  plan.ffn[1].resize(40);
  auto p = apply_structured_plan(*m, plan);
  for (const Linear* w : p->linears()) {
    CHECK(std::holds_alternative<Dense>(w->repr));
    if (w->name == "transformer.h.1.mlp.c_proj.weight") CHECK(w->in == 40);
    if (w->name == "transformer.h.0.attn.c_attn.weight") CHECK(w->out == 3 * 2 * 8);
  }
  // The pruned model computes what the int8 model (dequantized) with those units zeroed does.
  auto ref = load_model(kParity + "gpt2", *be);
  compress_model(*ref, compress_spec_from_name("int8"), nullptr, false);
  for (Linear* w : ref->linears()) w->repr = Dense{dequantize_weight(*w), false};
  zero_removed(*ref, plan);
  CHECK(max_diff(all_logits(*p, test), all_logits(*ref, test)) <= 1e-4f);
}
