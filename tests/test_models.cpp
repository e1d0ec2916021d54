// Model forward passes against Hugging Face transformers logits (tests/fixtures/parity, made by
// make_parity_fixtures.py), KV-cache decoding against the full forward, and load-time errors.
#include <doctest/doctest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "engine/safetensors.h"
#include "models/model.h"
#include "tests/test_util.h"

using namespace minfer;
namespace fs = std::filesystem;

namespace {

const std::string kFix = "tests/fixtures/parity/";

float max_abs_diff(const Tensor& a, const float* b) {
  float m = 0;
  const int64_t cols = a.dim(1);
  for (int64_t r = 0; r < a.dim(0); ++r)
    for (int64_t c = 0; c < cols; ++c)
      m = std::max(m, std::fabs(a.data<float>()[r * a.stride(0) + c] - b[r * cols + c]));
  return m;
}

int count_inputs(const SafetensorsFile& e) {
  int n = 0;
  while (e.has("input_ids_" + std::to_string(n))) ++n;
  return n;
}

// Full-sequence forward of every fixture input; returns the worst |diff| against HF.
float causal_parity(Model& m, const SafetensorsFile& exp) {
  float worst = 0;
  const int n = count_inputs(exp);
  REQUIRE(n > 0);
  for (int i = 0; i < n; ++i) {
    const Tensor& ids = exp.get("input_ids_" + std::to_string(i));
    const Tensor& ref = exp.get("logits_" + std::to_string(i));
    const int64_t T = ids.numel();
    RunState s = m.new_state(T, T);
    Tensor logits = m.forward(s, ids.data<int32_t>(), T, true);
    REQUIRE(logits.dim(0) == T);
    REQUIRE(logits.dim(1) == ref.dim(1));
    worst = std::max(worst, max_abs_diff(logits, ref.data<float>()));
  }
  return worst;
}

}  // namespace

TEST_CASE("models: causal LMs equal HF transformers logits (f32, max |diff| <= 1e-4)") {
  auto be = make_cpu_backend(2);
  for (std::string name : {"gpt2", "llama", "llama_untied"}) {
    CAPTURE(name);
    auto m = load_model(kFix + name, *be);
    auto exp = SafetensorsFile::open(kFix + name + "/expected.safetensors");
    const float d = causal_parity(*m, *exp);
    MESSAGE(name << ": max |logit diff| vs HF = " << d);
    CHECK(d <= 1e-4f);
  }
}

TEST_CASE("models: f16 and bf16 weights run without an f32 copy and stay close to f32") {
  auto be = make_cpu_backend(2);
  auto exp = SafetensorsFile::open(kFix + "llama/expected.safetensors");
  for (auto [file, tol] : {std::pair<std::string, float>{"model_f16.safetensors", 2e-2f},
                           {"model_bf16.safetensors", 1.5e-1f}}) {
    CAPTURE_BINDING(file);
    // A folder view: config.json from the fixture, weights from the half-precision file.
    const fs::path dir = fs::temp_directory_path() / ("minfer_half_" + file);
    fs::create_directories(dir);
    fs::copy_file(kFix + "llama/config.json", dir / "config.json",
                  fs::copy_options::overwrite_existing);
    fs::copy_file(kFix + "llama/" + file, dir / "model.safetensors",
                  fs::copy_options::overwrite_existing);
    auto m = load_model(dir.string(), *be);
    const float d = causal_parity(*m, *exp);
    MESSAGE(file << ": max |logit diff| vs HF f32 = " << d);
    CHECK(d <= tol);
    fs::remove_all(dir);
  }
}

TEST_CASE("models: token-by-token decoding through the KV cache equals the full forward") {
  auto be = make_cpu_backend(2);
  for (std::string name : {"gpt2", "llama", "llama_untied"}) {
    CAPTURE(name);
    auto m = load_model(kFix + name, *be);
    auto exp = SafetensorsFile::open(kFix + name + "/expected.safetensors");
    const int n = count_inputs(*exp);
    const Tensor& ids = exp->get("input_ids_" + std::to_string(n - 1));
    const Tensor& ref = exp->get("logits_" + std::to_string(n - 1));
    const int64_t T = ids.numel(), V = ref.dim(1);
    REQUIRE(T >= 4);
    // One token at a time.
    RunState s = m->new_state(T, 1);
    float worst = 0;
    for (int64_t t = 0; t < T; ++t) {
      Tensor lg = m->forward(s, ids.data<int32_t>() + t, 1, false);
      worst = std::max(worst, max_abs_diff(lg, ref.data<float>() + t * V));
    }
    CHECK(s.n_past == T);
    CHECK(worst <= 1e-4f);
    // A prefill chunk, then single tokens, last-token logits only.
    RunState s2 = m->new_state(T, T);
    const int64_t P = T / 2;
    Tensor lg = m->forward(s2, ids.data<int32_t>(), P, false);
    CHECK(max_abs_diff(lg, ref.data<float>() + (P - 1) * V) <= 1e-4f);
    for (int64_t t = P; t < T; ++t) {
      lg = m->forward(s2, ids.data<int32_t>() + t, 1, false);
      CHECK(max_abs_diff(lg, ref.data<float>() + t * V) <= 1e-4f);
    }
    // Context overflow is an error, not a write past the cache.
    CHECK_THROWS_WITH_AS(m->forward(s2, ids.data<int32_t>(), 1, false),
                         doctest::Contains("context full"), Error);
  }
}

TEST_CASE("models: an F16 KV cache decodes as its own full forward, close to HF") {
  // With an F16 cache the keys and values are rounded to fp16 where they are written, in a
  // prefill and a decode step alike. Token-by-token decoding must stay close to the full forward
  // (f32 sums in another order move a later layer's key or value across an fp16 rounding
  // boundary now and then: one fp16 ulp, 2^-11 relative, in that element), and both stay within
  // fp16's rounding of HF's f32 logits (measured: <= 4.5e-3 on these fixtures, where an F32 cache
  // gives <= 1e-4).
  auto be = make_cpu_backend(2);
  for (std::string name : {"gpt2", "llama", "llama_untied"}) {
    CAPTURE(name);
    auto m = load_model(kFix + name, *be);
    m->set_kv_cache_dtype(DType::F16);
    auto exp = SafetensorsFile::open(kFix + name + "/expected.safetensors");
    const int n = count_inputs(*exp);
    const Tensor& ids = exp->get("input_ids_" + std::to_string(n - 1));
    const Tensor& ref = exp->get("logits_" + std::to_string(n - 1));
    const int64_t T = ids.numel(), V = ref.dim(1);
    RunState full = m->new_state(T, T);
    REQUIRE(full.k_cache[0].dtype() == DType::F16);
    // The CPU backend's caches are head-major, [Hkv, max_ctx, D] (kv_cache_head_major).
    CHECK(full.k_cache[0].shape_str() ==
          fmt::format("[{}, {}, {}]", m->config().n_kv_heads, T, m->config().head_dim));
    Tensor all = m->forward(full, ids.data<int32_t>(), T, true);
    const float to_hf = max_abs_diff(all, ref.data<float>());
    CHECK(to_hf <= 1e-2f);
    CHECK(to_hf > 0.f);  // the rounding is really there
    std::vector<float> full_logits(size_t(T * V));
    for (int64_t t = 0; t < T; ++t)
      std::memcpy(full_logits.data() + t * V, all.data<float>() + t * all.stride(0), size_t(V) * 4);
    RunState s = m->new_state(T, 1);
    float worst = 0;
    for (int64_t t = 0; t < T; ++t) {
      Tensor lg = m->forward(s, ids.data<int32_t>() + t, 1, false);
      worst = std::max(worst, max_abs_diff(lg, full_logits.data() + t * V));
    }
    CHECK(worst <= 1e-3f);
  }
  // Other element types are refused by name.
  auto m = load_model(kFix + "llama", *be);
  CHECK_THROWS_WITH_AS(m->set_kv_cache_dtype(DType::BF16), doctest::Contains("KV cache dtype"),
                       Error);
}

TEST_CASE("models: BERT last hidden states equal HF, single sequences and a padded batch") {
  auto be = make_cpu_backend(2);
  auto m = load_model(kFix + "bert", *be);
  auto exp = SafetensorsFile::open(kFix + "bert/expected.safetensors");
  const int n = count_inputs(*exp);
  REQUIRE(n > 0);
  for (int i = 0; i < n; ++i) {
    const Tensor& ids = exp->get("input_ids_" + std::to_string(i));
    const Tensor& ref = exp->get("hidden_" + std::to_string(i));
    const int64_t T = ids.numel();
    RunState s = m->new_state(0, T);
    Tensor h = m->encode(s, ids.data<int32_t>(), 1, T);
    CHECK(max_abs_diff(h, ref.data<float>()) <= 1e-4f);
  }
  const Tensor& ids = exp->get("batch_ids");
  const Tensor& mask = exp->get("batch_mask");
  const Tensor& ref = exp->get("batch_hidden");
  const int64_t B = ids.dim(0), T = ids.dim(1);
  RunState s = m->new_state(0, B * T);
  Tensor h = m->encode(s, ids.data<int32_t>(), B, T, mask.data<int32_t>());
  // Compare real (unpadded) positions: those are what HF defines; padded rows are don't-care.
  float worst = 0;
  const int64_t C = h.dim(1);
  for (int64_t r = 0; r < B * T; ++r)
    if (mask.data<int32_t>()[r])
      for (int64_t c = 0; c < C; ++c)
        worst =
            std::max(worst, std::fabs(h.data<float>()[r * C + c] - ref.data<float>()[r * C + c]));
  MESSAGE("bert padded batch: max |diff| = " << worst);
  CHECK(worst <= 1e-4f);
}

namespace {
// Copies a fixture model to a temp folder, letting the caller edit config.json or drop a tensor.
fs::path edited_copy(const std::string& name, const std::string& tag,
                     const std::function<void(nlohmann::json&)>& edit_cfg,
                     const std::string& drop_tensor = "") {
  const fs::path dir = fs::temp_directory_path() / ("minfer_edit_" + name + "_" + tag);
  fs::remove_all(dir);
  fs::create_directories(dir);
  nlohmann::json cfg = nlohmann::json::parse(std::ifstream(kFix + name + "/config.json"));
  edit_cfg(cfg);
  std::ofstream(dir / "config.json") << cfg.dump(2);
  auto f = SafetensorsFile::open(kFix + name + "/model.safetensors");
  std::vector<std::pair<std::string, Tensor>> keep;
  for (auto& [n, t] : f->tensors())
    if (n != drop_tensor) keep.emplace_back(n, t);
  save_safetensors((dir / "model.safetensors").string(), keep);
  return dir;
}
}  // namespace

TEST_CASE("models: load errors name the file, the tensor or field, expected and found") {
  auto be = make_cpu_backend(1);
  SUBCASE("tensor shape disagrees with config.json") {
    auto dir = edited_copy("llama", "ffn", [](auto& c) { c["intermediate_size"] = 81; });
    CHECK_THROWS_WITH_AS(load_model(dir.string(), *be),
                         doctest::Contains("model.layers.0.mlp.gate_proj.weight': expected shape "
                                           "[81, 48] (from config.json), found [80, 48]"),
                         Error);
    fs::remove_all(dir);
  }
  SUBCASE("missing tensor") {
    auto dir = edited_copy(
        "llama", "miss", [](auto&) {}, "model.layers.1.self_attn.k_proj.weight");
    CHECK_THROWS_WITH_AS(
        load_model(dir.string(), *be),
        doctest::Contains("missing tensor 'model.layers.1.self_attn.k_proj.weight'"), Error);
    fs::remove_all(dir);
  }
  SUBCASE("unknown architecture") {
    auto dir = edited_copy("gpt2", "arch", [](auto& c) { c["model_type"] = "mamba"; });
    CHECK_THROWS_WITH_AS(load_model(dir.string(), *be),
                         doctest::Contains("unknown model_type 'mamba'"), Error);
    fs::remove_all(dir);
  }
  SUBCASE("missing config field") {
    auto dir = edited_copy("bert", "field", [](auto& c) { c.erase("num_hidden_layers"); });
    CHECK_THROWS_WITH_AS(load_model(dir.string(), *be),
                         doctest::Contains("config.json: missing field 'num_hidden_layers'"),
                         Error);
    fs::remove_all(dir);
  }
  SUBCASE("token id out of range") {
    auto m = load_model(kFix + "gpt2", *be);
    RunState s = m->new_state(8, 8);
    int32_t bad[2] = {1, 100000};
    CHECK_THROWS_WITH_AS(m->forward(s, bad, 2, false), doctest::Contains("token id 100000"), Error);
  }
}
