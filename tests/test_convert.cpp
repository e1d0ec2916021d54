// GGUF fixtures (tests/fixtures/gguf/make_tiny_llama_gguf.py, written the way llama.cpp's
// convert_hf_to_gguf.py writes a llama) against Hugging Face logits, and the GGUF -> HF folder
// export (engine/convert.h) round trip, and bad-input errors.
#include <doctest/doctest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <tuple>

#include "engine/convert.h"
#include "engine/gguf.h"
#include "engine/safetensors.h"
#include "models/loader.h"
#include "tests/test_util.h"

using namespace minfer;
using minfer::test::error_of;
namespace fs = std::filesystem;

namespace {

const std::string kGguf = "tests/fixtures/gguf/";
const std::string kParity = "tests/fixtures/parity/llama/expected.safetensors";

#define CHECK_HAS(msg, part)                   \
  do {                                         \
    const std::string m_ = (msg);              \
    CAPTURE(m_);                               \
    CHECK(m_.find(part) != std::string::npos); \
  } while (0)

// Worst |logit diff| over every input_ids_k / logits_k pair of `exp`.
float parity(Model& m, const SafetensorsFile& exp) {
  float worst = 0;
  int n = 0;
  for (; exp.has("input_ids_" + std::to_string(n)); ++n) {
    const Tensor& ids = exp.get("input_ids_" + std::to_string(n));
    const Tensor& ref = exp.get("logits_" + std::to_string(n));
    const int64_t T = ids.numel();
    RunState s = m.new_state(T, T);
    Tensor lg = m.forward(s, ids.data<int32_t>(), T, true);
    REQUIRE(lg.dim(0) == T);
    REQUIRE(lg.dim(1) == ref.dim(1));
    for (int64_t r = 0; r < T; ++r)
      for (int64_t c = 0; c < lg.dim(1); ++c)
        worst = std::max(worst, std::fabs(lg.data<float>()[r * lg.stride(0) + c] -
                                          ref.data<float>()[r * ref.dim(1) + c]));
  }
  REQUIRE(n > 0);
  return worst;
}

// "<out>.tmp-*" folders left next to `out` (there must be none after success or failure).
int tmp_litter(const fs::path& out) {
  int n = 0;
  for (auto& e : fs::directory_iterator(out.parent_path()))
    n += e.path().filename().string().rfind(out.filename().string() + ".tmp-", 0) == 0;
  return n;
}

fs::path fresh_dir(const std::string& name) {
  fs::path p = fs::temp_directory_path() / ("minfer_convert_" + name);
  fs::remove_all(p);
  return p;
}

}  // namespace

TEST_CASE("convert: tiny llama GGUF (F32, permuted Q/K) gives the HF parity logits") {
  auto be = make_cpu_backend(2);
  LoadedModel lm = open_model(kGguf + "tiny_llama.gguf", *be);
  const ModelConfig& c = lm.model->config();
  CHECK(c.vocab_size == 101);
  CHECK(c.hidden == 48);
  CHECK(c.n_heads == 6);
  CHECK(c.n_kv_heads == 2);
  CHECK(c.tie_embeddings);
  CHECK(c.rope_theta == 500000.f);
  auto exp = SafetensorsFile::open(kParity);
  const float d = parity(*lm.model, *exp);
  MESSAGE("tiny_llama.gguf vs HF parity logits: max |diff| = " << d);
  CHECK(d <= 1e-4f);
  // The tokenizer: bos 1 prepended, merges "h e", "l l", "Ġ t" applied.
  REQUIRE(lm.tokenizer);
  CHECK(lm.tokenizer->encode("hello tell") == std::vector<int32_t>{1, 98, 99, 81, 100, 71, 99});
}

TEST_CASE("convert: Q8_0 tiny llama GGUF equals transformers' GGUF loader on the same file") {
  // The reference is transformers run on gguf-py's dequantization of the same Q8_0 blocks, so the
  // only differences are float summation order: the f32 tolerance applies. The unquantized
  // model's logits differ by Q8_0's rounding (~0.29 at this wide weight spread), which is checked
  // as a sanity bound, not as parity.
  // Dequantized at load (the native Q8_0 run is compared with this one in test_ggml_blocks.cpp).
  auto be = make_cpu_backend(2);
  LoadedModel lm = open_model(kGguf + "tiny_llama_q8_0.gguf", *be, true, GgufWeights::F32);
  CHECK_FALSE(lm.model->config().tie_embeddings);
  auto exp = SafetensorsFile::open(kGguf + "tiny_llama_q8_0_expected.safetensors");
  const float d = parity(*lm.model, *exp);
  MESSAGE("tiny_llama_q8_0.gguf vs transformers GGUF loader: max |diff| = " << d);
  CHECK(d <= 1e-4f);
}

TEST_CASE("convert: GGUF -> HF folder -> open_model round trip in f32, f16 and bf16") {
  auto be = make_cpu_backend(2);
  auto exp = SafetensorsFile::open(kParity);
  LoadedModel ref = open_model(kGguf + "tiny_llama.gguf", *be);
  for (auto [name, dtype, tol] : {std::tuple<std::string, DType, float>{"f32", DType::F32, 1e-4f},
                                  {"f16", DType::F16, 2e-2f},
                                  {"bf16", DType::BF16, 1.5e-1f}}) {
    CAPTURE_BINDING(name);
    const fs::path out = fresh_dir(name);
    export_hf_folder(kGguf + "tiny_llama.gguf", out.string(), dtype);
    for (const char* f : {"config.json", "model.safetensors", "tokenizer.json",
                          "tokenizer_config.json", "generation_config.json"})
      CHECK(fs::exists(out / f));
    CHECK(tmp_litter(out) == 0);

    auto st = SafetensorsFile::open((out / "model.safetensors").string());
    CHECK(st->tensors().size() == 1 + 2 * 9 + 1);  // embed, 9 per layer, norm; tied: no lm_head
    CHECK_FALSE(st->has("lm_head.weight"));
    for (const auto& [tn, t] : st->tensors()) {
      CAPTURE_BINDING(tn);
      CHECK(t.dtype() == dtype);
    }
    CHECK(st->get("model.layers.1.self_attn.k_proj.weight").shape_str() == "[16, 48]");
    CHECK(st->metadata().at("format") == "pt");

    std::ifstream cf(out / "config.json");
    const auto cj = nlohmann::json::parse(cf);
    CHECK(cj["architectures"][0] == "LlamaForCausalLM");
    CHECK(cj["num_key_value_heads"] == 2);
    CHECK(cj["rope_theta"] == 500000.0);
    CHECK(cj["tie_word_embeddings"] == true);
    CHECK(cj["bos_token_id"] == 1);
    CHECK(cj["eos_token_id"] == 2);
    std::ifstream tf(out / "tokenizer_config.json");
    const auto tj = nlohmann::json::parse(tf);
    CHECK(tj["bos_token"] == "<s>");
    CHECK(tj["eos_token"] == "</s>");
    CHECK(tj["pad_token"] == "<pad>");
    CHECK(tj["add_bos_token"] == true);
    CHECK(tj["chat_template"].get<std::string>().find("messages") != std::string::npos);

    LoadedModel lm = open_model(out.string(), *be);
    const float d = parity(*lm.model, *exp);
    MESSAGE(name << " export vs HF parity logits: max |diff| = " << d);
    CHECK(d <= tol);
    for (const char* text : {"hello tell", "Hello, world! 123", "the hell  ttt", ""}) {
      CAPTURE(text);
      CHECK(lm.tokenizer->encode(text) == ref.tokenizer->encode(text));
      CHECK(lm.tokenizer->encode(text, false) == ref.tokenizer->encode(text, false));
    }
    CHECK(lm.tokenizer->bos_id() == 1);
    CHECK(lm.tokenizer->eos_id() == 2);
    fs::remove_all(out);
  }
}

TEST_CASE("convert: Q8_0 GGUF exports untied, dequantized weights that run the same") {
  auto be = make_cpu_backend(2);
  const fs::path out = fresh_dir("q8");
  export_hf_folder(kGguf + "tiny_llama_q8_0.gguf", out.string(), DType::F32);
  auto st = SafetensorsFile::open((out / "model.safetensors").string());
  CHECK(st->has("lm_head.weight"));
  LoadedModel lm = open_model(out.string(), *be);
  auto exp = SafetensorsFile::open(kGguf + "tiny_llama_q8_0_expected.safetensors");
  const float d = parity(*lm.model, *exp);
  MESSAGE("Q8_0 export (f32) vs transformers GGUF loader: max |diff| = " << d);
  CHECK(d <= 1e-4f);
  fs::remove_all(out);
}

TEST_CASE("convert: bad input gives clear errors and writes nothing") {
  auto be = make_cpu_backend(1);
  const std::string arch = kGguf + "tiny_unknown_arch.gguf";
  CHECK_HAS(
      error_of([&] { open_model(arch, *be); }),
      arch +
          ": unknown architecture 'mamba' (supported in GGUF: llama, qwen2, phi3, gemma, gemma2)");
  const std::string notok = kGguf + "tiny_no_tokenizer.gguf";
  CHECK_HAS(error_of([&] { open_model(notok, *be); }),
            notok + ": no tokenizer in the GGUF metadata (tokenizer.ggml.model missing)");
  CHECK_NOTHROW(open_model(notok, *be, /*with_tokenizer=*/false));
  const std::string iq = kGguf + "tiny_unsupported_quant.gguf";
  // (dequantize_row / GgufFile::dequantize errors per type are covered in tests/test_gguf.cpp.)
  CHECK_HAS(error_of([&] { open_model(iq, *be); }),
            iq + ": tensor 'token_embd.weight' has type IQ4_NL (20), which minfer cannot "
                 "dequantize");

  const fs::path out = fresh_dir("bad");
  CHECK_HAS(error_of([&] { export_hf_folder(arch, out.string(), DType::F32); }),
            "unknown architecture 'mamba'");
  CHECK_HAS(error_of([&] { export_hf_folder(notok, out.string(), DType::F32); }),
            notok + ": no tokenizer in the GGUF metadata");
  CHECK_HAS(error_of([&] { export_hf_folder(iq, out.string(), DType::F32); }),
            "tensor 'token_embd.weight' has type IQ4_NL");
  CHECK_FALSE(fs::exists(out));

  // Truncated GGUF: the reader's error names the file.
  const fs::path cut = fs::temp_directory_path() / "minfer_convert_cut.gguf";
  {
    std::ifstream in(kGguf + "tiny_llama.gguf", std::ios::binary);
    std::string bytes((std::istreambuf_iterator<char>(in)), {});
    std::ofstream o(cut, std::ios::binary);
    o.write(bytes.data(), std::streamsize(bytes.size() / 2));
  }
  CHECK_HAS(error_of([&] { export_hf_folder(cut.string(), out.string(), DType::F32); }),
            cut.string());
  CHECK_FALSE(fs::exists(out));
  fs::remove(cut);
  CHECK(tmp_litter(out) == 0);  // no "<out>.tmp-*" left by any of these failures

  CHECK_HAS(error_of([] { parse_export_dtype("q4"); }), "unknown export dtype 'q4'");
}

TEST_CASE("convert: an existing output folder is kept without --force, replaced with it") {
  const fs::path out = fresh_dir("exists");
  fs::create_directories(out);
  { std::ofstream(out / "config.json") << "{\"keep\": true}"; }
  const std::string src = kGguf + "tiny_llama.gguf";
  CHECK_HAS(error_of([&] { export_hf_folder(src, out.string(), DType::F32); }),
            out.string() + ": output already exists (pass --force to replace it)");
  {
    std::ifstream f(out / "config.json");
    std::string s((std::istreambuf_iterator<char>(f)), {});
    CHECK(s == "{\"keep\": true}");
    CHECK_FALSE(fs::exists(out / "model.safetensors"));
  }
  // A non-model folder is never removed, even with force.
  const fs::path other = fresh_dir("other");
  fs::create_directories(other);
  { std::ofstream(other / "notes.txt") << "mine"; }
  CHECK_HAS(error_of([&] {
              export_hf_folder(src, other.string(), {DType::F32, true});
            }),
            "refusing to replace a non-empty folder");
  CHECK(fs::exists(other / "notes.txt"));

  export_hf_folder(src, out.string(), {DType::F16, true});
  auto st = SafetensorsFile::open((out / "model.safetensors").string());
  CHECK(st->get("model.norm.weight").dtype() == DType::F16);
  fs::remove_all(out);
  fs::remove_all(other);
}
