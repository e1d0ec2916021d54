// RoPE scaling (linear, llama3, yarn) and the qwen2 / phi3 / gemma / gemma2 architectures against
// Hugging Face transformers logits, from config.json folders and from their GGUF files
// (tests/fixtures/arch, made by make_arch_fixtures.py), and the refusals of what is not
// implemented.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <functional>
#include <nlohmann/json.hpp>
#include <vector>

#include "engine/convert.h"
#include "engine/gguf.h"
#include "engine/gguf_source.h"
#include "engine/rope.h"
#include "engine/safetensors.h"
#include "models/loader.h"
#include "models/model.h"
#include "tests/test_util.h"

using namespace minfer;
using minfer::test::error_of;
namespace fs = std::filesystem;

namespace {

const std::string kArch = "tests/fixtures/arch/";

// Worst |logit - HF| over the fixture's sequences, full forward; and token by token through the
// KV cache for the longest one (positions past the original context go through the cache too).
float parity(Model& m, const SafetensorsFile& exp) {
  float worst = 0;
  for (int i = 0; exp.has("input_ids_" + std::to_string(i)); ++i) {
    const Tensor& ids = exp.get("input_ids_" + std::to_string(i));
    const Tensor& ref = exp.get("logits_" + std::to_string(i));
    const int64_t T = ids.numel(), V = ref.dim(1);
    RunState s = m.new_state(T, T);
    Tensor lg = m.forward(s, ids.data<int32_t>(), T, true);
    REQUIRE(lg.dim(0) == T);
    REQUIRE(lg.dim(1) == V);
    for (int64_t t = 0; t < T; ++t)
      for (int64_t v = 0; v < V; ++v)
        worst = std::max(worst, std::fabs(lg.data<float>()[t * lg.stride(0) + v] -
                                          ref.data<float>()[t * V + v]));
    if (T > 16) {
      RunState s1 = m.new_state(T, 1);
      for (int64_t t = 0; t < T; ++t) {
        Tensor l1 = m.forward(s1, ids.data<int32_t>() + t, 1, false);
        for (int64_t v = 0; v < V; ++v)
          worst = std::max(worst, std::fabs(l1.data<float>()[v] - ref.data<float>()[t * V + v]));
      }
    }
  }
  return worst;
}

}  // namespace

TEST_CASE(
    "arch: RoPE scaling, qwen2, phi3, gemma, gemma2 equal HF transformers (config.json and GGUF)") {
  auto be = make_cpu_backend(2);
  struct Case {
    const char* name;
    RopeType type;
    bool gguf;
  };
  for (const Case& k :
       {Case{"rope_linear", RopeType::Linear, true}, Case{"rope_llama3", RopeType::Llama3, true},
        Case{"rope_yarn", RopeType::Yarn, true}, Case{"rope_yarn_af", RopeType::Yarn, false},
        Case{"qwen2", RopeType::Default, true}, Case{"phi3", RopeType::Default, true},
        Case{"gemma", RopeType::Default, true}, Case{"gemma2", RopeType::Default, true}}) {
    CAPTURE(std::string(k.name));
    auto exp = SafetensorsFile::open(kArch + k.name + "/expected.safetensors");
    auto m = load_model(kArch + k.name, *be);
    CHECK(m->config().rope_scaling.type == k.type);
    const float d = parity(*m, *exp);
    MESSAGE(std::string(k.name) << " (config.json): max |logit diff| vs HF = " << d);
    CHECK(d <= 1e-4f);
    if (!k.gguf) continue;
    LoadedModel g = open_model(kArch + k.name + "/model.gguf", *be, true);
    const ModelConfig& gc = g.model->config();
    // llama3 reaches GGUF as rope_freqs.weight: per-dimension divisors on default RoPE.
    CHECK(gc.rope_scaling.type == (k.type == RopeType::Llama3 ? RopeType::Default : k.type));
    CHECK(gc.rope_scaling.freq_factors.size() == (k.type == RopeType::Llama3 ? 8u : 0u));
    const float dg = parity(*g.model, *exp);
    MESSAGE(std::string(k.name) << " (GGUF): max |logit diff| vs HF = " << dg);
    CHECK(dg <= 1e-4f);
  }
}

TEST_CASE("arch: rope_table follows transformers' formulas") {
  RopeScaling rs;
  const RopeTable d = rope_table(10000.f, 16, rs);
  REQUIRE(d.inv_freq.size() == 8);
  CHECK(d.inv_freq[0] == 1.f);
  CHECK(d.inv_freq[4] == doctest::Approx(0.01).epsilon(1e-6));  // 10000^(-8/16)
  CHECK(d.attention_scaling == 1.f);
  rs.type = RopeType::Linear, rs.factor = 4;
  CHECK(rope_table(10000.f, 16, rs).inv_freq[4] == doctest::Approx(0.0025).epsilon(1e-6));
  // yarn and llama3 against transformers 5.24's ROPE_INIT_FUNCTIONS on the same settings
  // (theta 10000, D 16, original 16; yarn factor 4, llama3 factor 8, low 1, high 4).
  const std::vector<double> hf_yarn = {1,
                                       0.079056941,
                                       0.0250000004,
                                       0.00790569466,
                                       0.00249999994,
                                       0.000790569466,
                                       0.000250000012,
                                       7.90569466e-05};
  const std::vector<double> hf_llama3 = {0.576056361,    0.0395284705,  0.0125000002,
                                         0.00395284733,  0.00124999997, 0.000395284733,
                                         0.000125000006, 3.95284733e-05};
  rs = {};
  rs.type = RopeType::Yarn, rs.factor = 4, rs.original_max_pos = 16;
  const RopeTable y = rope_table(10000.f, 16, rs);
  for (size_t i = 0; i < 8; ++i) CHECK(y.inv_freq[i] == doctest::Approx(hf_yarn[i]).epsilon(1e-6));
  CHECK(y.attention_scaling == doctest::Approx(1.138629436111989).epsilon(1e-7));  // 0.1 ln 4 + 1
  rs.mscale = 1, rs.mscale_all_dim = 1;  // DeepSeek form: the ratio, here 1
  CHECK(rope_table(10000.f, 16, rs).attention_scaling == doctest::Approx(1.0));
  rs.attention_factor = 0.8;  // given: replaces the formula
  CHECK(rope_table(10000.f, 16, rs).attention_scaling == doctest::Approx(0.8));
  rs = {};
  rs.type = RopeType::Llama3, rs.factor = 8, rs.original_max_pos = 16;
  const RopeTable l3 = rope_table(10000.f, 16, rs);
  for (size_t i = 0; i < 8; ++i)
    CHECK(l3.inv_freq[i] == doctest::Approx(hf_llama3[i]).epsilon(1e-6));
  CHECK(l3.attention_scaling == 1.f);
  // GGUF frequency factors divide.
  rs = {};
  rs.freq_factors = {1, 2, 4, 8, 1, 1, 1, 1};
  CHECK(rope_table(10000.f, 16, rs).inv_freq[3] == doctest::Approx(d.inv_freq[3] / 8));
  // Bad values name what is wrong.
  rs.freq_factors = {1, 2};
  CHECK(error_of([&] { rope_table(10000.f, 16, rs); }).find("2 values for a head size of 16") !=
        std::string::npos);
  rs = {};
  rs.type = RopeType::Linear, rs.factor = 0.5;
  CHECK(error_of([&] { rope_table(10000.f, 16, rs); }).find("factor >= 1, found 0.5") !=
        std::string::npos);
  rs = {};
  rs.type = RopeType::Llama3, rs.factor = 8, rs.original_max_pos = 16, rs.low_freq_factor = 4;
  CHECK(error_of([&] { rope_table(10000.f, 16, rs); }).find("high_freq_factor > low_freq_factor") !=
        std::string::npos);
}

TEST_CASE("arch: RoPE settings not implemented are refused by name, never ignored") {
  auto cfg_with = [](nlohmann::json rope) {
    nlohmann::json j = {
        {"model_type", "llama"},        {"vocab_size", 10},         {"hidden_size", 16},
        {"num_hidden_layers", 1},       {"num_attention_heads", 2}, {"intermediate_size", 8},
        {"max_position_embeddings", 64}};
    for (auto& [k, v] : rope.items()) j[k] = v;
    return error_of([&] { parse_config(j.dump(), "cfg.json"); });
  };
  CHECK(cfg_with({{"rope_scaling", {{"type", "dynamic"}, {"factor", 2.0}}}})
            .find("cfg.json: rope_scaling type 'dynamic' is not supported") != std::string::npos);
  CHECK(cfg_with({{"rope_parameters", {{"rope_type", "longrope"}, {"factor", 2.0}}}})
            .find("rope_parameters type 'longrope' is not supported") != std::string::npos);
  CHECK(cfg_with({{"rope_parameters", {{"rope_type", "linear"}, {"factor", 2.0}, {"beta", 1}}}})
            .find("key 'beta' is not read for rope type 'linear'") != std::string::npos);
  CHECK(cfg_with({{"rope_parameters", {{"rope_type", "llama3"}, {"factor", 8.0}}}})
            .find("missing field 'low_freq_factor'") != std::string::npos);
  CHECK(cfg_with({{"partial_rotary_factor", 0.5}}).find("partial_rotary_factor 0.5") !=
        std::string::npos);
  CHECK(cfg_with({{"rope_scaling", {{"type", "linear"}, {"factor", 2.0}}},
                  {"rope_parameters", {{"rope_type", "yarn"}, {"factor", 2.0}}}})
            .find("name different rope types") != std::string::npos);
  // What is read: the old top-level form, and yarn's factor defaulting to max / original.
  const ModelConfig c = parse_config(
      R"({"model_type": "llama", "vocab_size": 10, "hidden_size": 16, "num_hidden_layers": 1,
          "num_attention_heads": 2, "intermediate_size": 8, "max_position_embeddings": 64,
          "rope_theta": 500000.0,
          "rope_scaling": {"type": "yarn", "original_max_position_embeddings": 16}})",
      "cfg.json");
  CHECK(c.rope_theta == 500000.f);
  CHECK(c.rope_scaling.type == RopeType::Yarn);
  CHECK(c.rope_scaling.factor == 4.0);
  CHECK(c.rope_scaling.original_max_pos == 16);

  // GGUF: the old refusal fixture (linear, factor 4) now reads; the rest are refused.
  auto f = GgufFile::open("tests/fixtures/gguf/tiny_rope_scaling.gguf");
  const ModelConfig gl = config_from_gguf(*f);
  CHECK(gl.rope_scaling.type == RopeType::Linear);
  CHECK(gl.rope_scaling.factor == 4.0);
  auto refused = [](const std::string& file) {
    return error_of([&] { config_from_gguf(*GgufFile::open(kArch + file)); });
  };
  CHECK(refused("refuse_longrope.gguf").find("llama.rope.scaling.type = 'longrope'") !=
        std::string::npos);
  CHECK(refused("refuse_yarn_attn.gguf").find("llama.rope.scaling.yarn_attn_factor = 0.8") !=
        std::string::npos);
  CHECK(refused("refuse_rope_factors.gguf").find("rope_factors_long.weight (LongRoPE") !=
        std::string::npos);
}

TEST_CASE("arch: phi3's fused projections split into views; a split copy loads the same") {
  auto be = make_cpu_backend(1);
  auto m = load_model(kArch + "phi3", *be);
  // Every layer has seven projections named as llama's, so compression sees q, k, v, gate, up.
  const std::vector<Linear*> ls = m->linears();
  REQUIRE(ls.size() == 2 * 7 + 1);
  CHECK(ls[0]->name == "model.layers.0.self_attn.q_proj.weight");
  CHECK(ls[2]->name == "model.layers.0.self_attn.v_proj.weight");
  CHECK(ls[4]->name == "model.layers.0.mlp.gate_proj.weight");
  CHECK(ls[0]->out == 32);
  CHECK(ls[1]->out == 16);
  CHECK(ls[4]->out == 48);
}

TEST_CASE("arch: convert writes each architecture's HF config and tensors, with its RoPE scaling") {
  auto be = make_cpu_backend(2);
  const fs::path root = fs::temp_directory_path() / "minfer_arch_convert";
  fs::remove_all(root);
  for (const char* name : {"rope_linear", "rope_yarn", "qwen2", "phi3", "gemma", "gemma2"}) {
    CAPTURE(std::string(name));
    const fs::path out = root / name;
    export_hf_folder(kArch + name + "/model.gguf", out.string(), DType::F32);
    // The folder's config names the class transformers would build, and reads back the same.
    const ModelConfig exported = load_config((out / "config.json").string());
    const ModelConfig original = load_config(kArch + name + "/config.json");
    CHECK(exported.model_type == (std::string(name).rfind("rope_", 0) == 0 ? "llama" : name));
    CHECK(exported.rope_scaling.type == original.rope_scaling.type);
    CHECK(exported.rope_scaling.factor == original.rope_scaling.factor);
    CHECK(exported.rope_scaling.original_max_pos == original.rope_scaling.original_max_pos);
    auto m = load_model(out.string(), *be);
    auto exp = SafetensorsFile::open(kArch + name + "/expected.safetensors");
    CHECK(parity(*m, *exp) <= 1e-4f);
  }
  // Frequency factors have no config.json field: refused, nothing written.
  CHECK(error_of([&] {
          export_hf_folder(kArch + "rope_llama3/model.gguf", (root / "l3").string(), DType::F32);
        }).find("not implemented: config.json for RoPE frequency factors") != std::string::npos);
  CHECK(!fs::exists(root / "l3"));
  fs::remove_all(root);
}

TEST_CASE("arch: gemma / gemma2 settings from config.json and GGUF metadata") {
  // config.json: what Gemma2ForCausalLM reads (tests/fixtures/arch/gemma2/config.json).
  const ModelConfig c = load_config(kArch + "gemma2/config.json");
  CHECK(c.norm_unit_offset);
  CHECK(c.embed_scale);
  CHECK(c.sandwich_norms);
  CHECK(c.act == Act::GeluTanh);
  CHECK(c.head_dim == 16);                       // head_dim, not hidden / heads = 8
  CHECK(c.attn_scale == doctest::Approx(0.25));  // query_pre_attn_scalar 16
  CHECK(c.attn_softcap == 1.5f);
  CHECK(c.final_softcap == 5.f);
  CHECK(c.tie_embeddings);
  CHECK(c.window_at(0) == 8);
  CHECK(c.window_at(1) == 0);
  CHECK(c.window_at(2) == 8);
  CHECK(c.max_pos == 64);  // windows on some layers only: no position limit from them
  // GGUF: the same, with llama.cpp's query scale 1/sqrt(head_dim) and layer pattern 2.
  const ModelConfig g = config_from_gguf(*GgufFile::open(kArch + "gemma2/model.gguf"));
  CHECK(g.model_type == "gemma2");
  CHECK(g.act == Act::GeluTanh);
  CHECK(g.norm_unit_offset);
  CHECK(g.sandwich_norms);
  CHECK(g.attn_scale == doctest::Approx(0.25));
  CHECK(g.attn_softcap == 1.5f);
  CHECK(g.final_softcap == 5.f);
  CHECK(g.layer_sliding == std::vector<bool>{true, false, true});
  CHECK(g.sliding_window == 8);
  const ModelConfig g1 = load_config(kArch + "gemma/config.json");
  CHECK(g1.norm_unit_offset);
  CHECK(!g1.sandwich_norms);
  CHECK(g1.attn_scale == 0.f);
  CHECK(g1.window_at(0) == 0);
  // A saved gemma keeps HF's norm weights w (the backend holds 1 + w): the GGUF's 1 + w is
  // given back as w, equal to the safetensors value.
  auto be = make_cpu_backend(1);
  auto hf = load_model(kArch + "gemma2", *be);
  LoadedModel gg = open_model(kArch + "gemma2/model.gguf", *be, true);
  auto find = [](Model& m, const std::string& name) -> const Tensor* {
    for (const auto& nt : m.tensors())
      if (nt.name == name) return nt.t;
    return nullptr;
  };
  for (const char* name :
       {"model.layers.1.pre_feedforward_layernorm.weight",
        "model.layers.2.post_feedforward_layernorm.weight", "model.norm.weight"}) {
    CAPTURE(std::string(name));
    const Tensor* a = find(*hf, name);
    const Tensor* b = find(*gg.model, name);
    REQUIRE(a != nullptr);
    REQUIRE(b != nullptr);
    REQUIRE(a->numel() == 32);
    REQUIRE(b->numel() == 32);
    for (int64_t i = 0; i < 32; ++i)
      CHECK(a->to_f32().data<float>()[i] ==
            doctest::Approx(b->to_f32().data<float>()[i]).epsilon(1e-6));
  }
  // Settings Gemma-2 has no code for are refused by name.
  nlohmann::json j = nlohmann::json::parse(hf->config().source_json);
  j["layer_types"][1] = "chunked_attention";
  CHECK(error_of([&] {
          parse_config(j.dump(), "g2.json");
        }).find("layer_types[1] = \"chunked_attention\"") != std::string::npos);
  j = nlohmann::json::parse(hf->config().source_json);
  j["use_bidirectional_attention"] = true;
  CHECK(error_of([&] {
          parse_config(j.dump(), "g2.json");
        }).find("use_bidirectional_attention = true") != std::string::npos);
}

TEST_CASE("arch: a Qwen2.5-class Q4_K_M GGUF runs natively as dequantized and as HF") {
  // tests/fixtures/arch/qwen2_q4km (make_qwen2_q4km.py): llama.cpp's convert_hf_to_gguf.py and
  // llama-quantize Q4_K_M on a random Qwen2ForCausalLM with a trained byte-level BPE (qwen2
  // pre-tokenizer); expected logits are transformers' on the gguf-py-dequantized tensors.
  auto be = make_cpu_backend(2);
  const std::string path = kArch + "qwen2_q4km/model.gguf";
  auto exp = SafetensorsFile::open(kArch + "qwen2_q4km/expected.safetensors");
  LoadedModel native = open_model(path, *be, true, GgufWeights::Native);
  LoadedModel f32 = open_model(path, *be, false, GgufWeights::F32);
  // The mix llama-quantize writes (block types run as stored).
  for (const char* ty : {"Q4_K (native)", "Q6_K (native)", "Q8_0 (native)"})
    CHECK(native.weights_summary.find(ty) != std::string::npos);
  CHECK(native.tokenizer->encode("Hello world", false).size() >= 2);
  const float dn = parity(*native.model, *exp), df = parity(*f32.model, *exp);
  MESSAGE("qwen2 Q4_K_M: max |logit diff| vs HF on dequantized weights: native " << dn << ", f32 "
                                                                                 << df);
  // Logits reach ~67 here. Dequantized: float32 rounding only (3.5e-6 relative). Native: the
  // block kernels quantize activations to 8 bits per block as llama.cpp's do (Q8_K for K-quants:
  // one scale per 256 values, i.e. per whole row of this 256-wide model; Q8_0 otherwise), which
  // on this random model's outlier-heavy activations is ~6% of the logit scale: measured 4.18
  // (0.53 when only the Q8_0 tensors took the 8-bit path); the f32 path gives the dequantized
  // run's 2.4e-4 (MINFER_GGML_PATH=f32). llama.cpp's logits on the same file
  // (llamacpp_logits.safetensors, make_qwen2_q4km_llamacpp.py) are as far from transformers'
  // (4.179): that error belongs to the 8-bit activations, not to either engine.
  CHECK(df <= 1e-3f);
  auto lc = SafetensorsFile::open(kArch + "qwen2_q4km/llamacpp_logits.safetensors");
  float lc_hf = 0;
  for (int i = 0; exp->has("input_ids_" + std::to_string(i)); ++i) {
    const Tensor& a = lc->get("logits_" + std::to_string(i));
    const Tensor& b = exp->get("logits_" + std::to_string(i));
    REQUIRE(a.numel() == b.numel());
    for (int64_t j = 0; j < a.numel(); ++j)
      lc_hf = std::max(lc_hf, std::fabs(a.data<float>()[j] - b.data<float>()[j]));
  }
  MESSAGE("llama.cpp vs HF on dequantized weights: " << lc_hf);
  CHECK(lc_hf > 1.f);  // the fixture holds llama.cpp's 8-bit-activation logits, not HF's
  CHECK(dn <= lc_hf + 1e-3f);
  // Decode steps (one token per forward: the q8 path, whose Q8_K / Q8_0 activation blocks are
  // bit-identical to llama.cpp's) against llama.cpp's logits: f32 summation order only,
  // measured 2.7e-5 (VNNI); checked against 5e-4 (scalar path and aarch64 sum in other orders).
  float d_lc = 0;
  for (int i = 0; exp->has("input_ids_" + std::to_string(i)); ++i) {
    const Tensor& ids = exp->get("input_ids_" + std::to_string(i));
    const Tensor& want = lc->get("logits_" + std::to_string(i));
    const int64_t T = ids.numel(), V = want.dim(1);
    RunState s1 = native.model->new_state(T, 1);
    for (int64_t t = 0; t < T; ++t) {
      Tensor l1 = native.model->forward(s1, ids.data<int32_t>() + t, 1, false);
      REQUIRE(l1.numel() == V);
      for (int64_t v = 0; v < V; ++v)
        d_lc = std::max(d_lc, std::fabs(l1.data<float>()[v] - want.data<float>()[t * V + v]));
    }
  }
  MESSAGE("qwen2 Q4_K_M decode steps: max |logit diff| vs llama.cpp " << d_lc);
  CHECK(d_lc <= 5e-4f);
  int positions = 0, clear = 0;
  // Native and dequantized runs agree token by token on greedy argmax wherever the dequantized
  // run's top-2 margin exceeds twice the native run's measured logit error (no near-tie).
  for (int i = 0; exp->has("input_ids_" + std::to_string(i)); ++i) {
    const Tensor& ids = exp->get("input_ids_" + std::to_string(i));
    const int64_t T = ids.numel();
    RunState sa = native.model->new_state(T, T), sb = f32.model->new_state(T, T);
    Tensor a = native.model->forward(sa, ids.data<int32_t>(), T, true);
    Tensor b = f32.model->forward(sb, ids.data<int32_t>(), T, true);
    const int64_t V = a.dim(1);
    for (int64_t t = 0; t < T; ++t) {
      const float* pa = a.data<float>() + t * a.stride(0);
      const float* pb = b.data<float>() + t * b.stride(0);
      std::vector<float> top(pb, pb + V);
      std::partial_sort(top.begin(), top.begin() + 2, top.end(), std::greater<float>());
      ++positions;
      if (top[0] - top[1] <= 2 * dn) continue;
      ++clear;
      CHECK(std::max_element(pa, pa + V) - pa == std::max_element(pb, pb + V) - pb);
    }
  }
  MESSAGE("argmax compared at " << clear << " of " << positions << " positions (no near-tie)");
  CHECK(clear >= 5);  // not vacuous (7 of 32 on this random model's flat logits)
}
