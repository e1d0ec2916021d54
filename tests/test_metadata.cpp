// Metadata that changes the math is read, never guessed: BOS insertion follows the tokenizer's
// add_bos flag (GGUF tokenizer.ggml.add_bos_token, tokenizer_config.json add_bos_token) in both
// perplexity methods and in encode. References: tests/fixtures/gguf/make_bos_fixtures.py (a
// float64 numpy forward of the same weights with llama.cpp's perplexity chunking).
#include <doctest/doctest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "compress/compress.h"
#include "engine/backend.h"
#include "engine/config.h"
#include "models/eval.h"
#include "models/loader.h"
#include "test_util.h"

using namespace minfer;
namespace fs = std::filesystem;

namespace {

const std::string kGguf = "tests/fixtures/gguf/";

nlohmann::json read_json(const std::string& path) {
  std::ifstream f(path);
  REQUIRE(f.good());
  return nlohmann::json::parse(f);
}

}  // namespace

TEST_CASE("metadata: encode adds BOS only when the GGUF tokenizer's add_bos_token is true") {
  auto yes = Tokenizer::load(kGguf + "tiny_llama.gguf");
  auto no = Tokenizer::load(kGguf + "tiny_llama_nobos.gguf");
  // Both files name bos 1; only the first one adds it.
  CHECK(yes->bos_id() == 1);
  CHECK(no->bos_id() == 1);
  CHECK(yes->added_bos() == 1);
  CHECK(no->added_bos() == -1);
  CHECK(yes->encode("hello tell") == std::vector<int32_t>{1, 98, 99, 81, 100, 71, 99});
  CHECK(no->encode("hello tell") == std::vector<int32_t>{98, 99, 81, 100, 71, 99});
}

TEST_CASE("metadata: llama.cpp-way perplexity writes BOS only when the tokenizer adds it") {
  const nlohmann::json ref = read_json(kGguf + "bos_reference.json");
  const std::vector<int32_t> ids = ref["ids"].get<std::vector<int32_t>>();
  const int64_t ctx = ref["ctx"].get<int64_t>();
  auto be = make_cpu_backend(1);
  struct Case {
    const char* file;
    const char* key;
  };
  for (Case c : {Case{"tiny_llama_nobos.gguf", "ppl_llama_no_bos"},
                 Case{"tiny_llama.gguf", "ppl_llama_bos"}}) {
    CAPTURE(c.file);
    LoadedModel lm = open_model(kGguf + c.file, *be);
    PerplexityResult r = perplexity(*lm.model, ids, ctx, ctx, PplMethod::Llama,
                                    lm.tokenizer->added_bos(), /*progress=*/false);
    const double want = ref[c.key].get<double>();
    MESSAGE(c.file << ": ppl " << r.ppl << ", float64 reference " << want);
    CHECK(r.tokens_scored == int64_t(ids.size()) / ctx * (ctx - ctx / 2 - 1));
    CHECK(std::fabs(r.ppl - want) / want < 1e-5);
  }
  // The two references differ, so the test tells the two rules apart.
  CHECK(std::fabs(ref["ppl_llama_no_bos"].get<double>() - ref["ppl_llama_bos"].get<double>()) >
        1.0);
}

TEST_CASE("metadata: a bad BOS id is an error") {
  auto be = make_cpu_backend(1);
  LoadedModel lm = open_model(kGguf + "tiny_llama.gguf", *be, false);
  std::vector<int32_t> ids(64, 5);
  CHECK_THROWS_WITH_AS(perplexity(*lm.model, ids, 32, 32, PplMethod::Llama, 101, false),
                       doctest::Contains("BOS id 101 is outside the vocabulary"), Error);
}

TEST_CASE(
    "metadata: tokenizer_config.json add_bos_token rebuilds a LlamaTokenizerFast's template") {
  // transformers' LlamaTokenizerFast.update_post_processor(): "<s> $A" by default, "$A" with
  // add_bos_token false, "$A </s>" added with add_eos_token true; PreTrainedTokenizerFast keeps
  // tokenizer.json's post-processor whatever the flags say.
  test::TempDir d("bos");
  auto gguf_tok = Tokenizer::load(kGguf + "tiny_llama.gguf");  // its post-processor adds <s>
  { std::ofstream(d / "tokenizer.json") << gguf_tok->to_hf_json(); }
  auto with_config = [&](const nlohmann::json& cfg) {
    std::ofstream(d / "tokenizer_config.json") << cfg.dump();
    return Tokenizer::load(d / "tokenizer.json")->encode("he");
  };
  const nlohmann::json base = {{"bos_token", "<s>"}, {"eos_token", "</s>"}};
  nlohmann::json c = base;
  c["tokenizer_class"] = "LlamaTokenizerFast";
  CHECK(with_config(c) == std::vector<int32_t>{1, 98});
  c["add_bos_token"] = false;
  CHECK(with_config(c) == std::vector<int32_t>{98});
  c["add_eos_token"] = true;
  CHECK(with_config(c) == std::vector<int32_t>{98, 2});
  c = base;
  c["tokenizer_class"] = "PreTrainedTokenizerFast";
  c["add_bos_token"] = false;
  CHECK(with_config(c) == std::vector<int32_t>{1, 98});
  c = base;
  c["tokenizer_class"] = "LlamaTokenizerFast";
  c["add_bos_token"] = "no";
  CHECK_THROWS_WITH_AS(with_config(c), doctest::Contains("'add_bos_token' should be true or false"),
                       Error);
}

// ---- sentence-transformers folders (tests/fixtures/sentence_transformers/make_st_fixtures.py) --

namespace {

const std::string kSt = "tests/fixtures/sentence_transformers/";

// A model folder: the tiny parity BERT, the fixture tokenizer and (when given) one variant's
// sentence-transformers files.
void make_st_folder(const fs::path& dir, const std::string& variant) {
  fs::create_directories(dir);
  for (const char* f : {"config.json", "model.safetensors"})
    fs::copy_file(fs::path("tests/fixtures/parity/bert") / f, dir / f);
  fs::copy_file(kSt + "tokenizer.json", dir / "tokenizer.json");
  if (!variant.empty())
    fs::copy(kSt + variant, dir, fs::copy_options::recursive | fs::copy_options::skip_existing);
}

}  // namespace

TEST_CASE(
    "metadata: embed follows each sentence-transformers folder's pooling, normalisation, "
    "max_seq_length and do_lower_case") {
  const nlohmann::json ref = read_json(kSt + "reference.json");
  const auto texts = ref["texts"].get<std::vector<std::string>>();
  auto be = make_cpu_backend(1);
  for (const auto& [name, v] : ref["variants"].items()) {
    CAPTURE_BINDING(name);
    test::TempDir d("st");
    const fs::path dir = d.path / "model";
    make_st_folder(dir, name == "no_modules_default" ? "" : name);
    LoadedModel lm = open_model(dir.string(), *be);
    const SentenceEmbeddingConfig st = read_sentence_embedding_config(dir.string());
    MESSAGE(name << ": " << st.source);
    // Batched with padding (batch 2 over 5 texts) against the unpadded float64 reference.
    const auto emb = embed_texts(*lm.model, *lm.tokenizer, texts, st, 2);
    const auto want = v["embeddings"].get<std::vector<std::vector<double>>>();
    REQUIRE(emb.size() == want.size());
    double worst = 0;
    for (size_t i = 0; i < emb.size(); ++i) {
      REQUIRE(emb[i].size() == want[i].size());
      for (size_t c = 0; c < emb[i].size(); ++c)
        worst = std::max(worst, std::fabs(double(emb[i][c]) - want[i][c]));
    }
    MESSAGE(name << ": max |embedding - reference| = " << worst);
    CHECK(worst < 2e-5);
  }
}

TEST_CASE("metadata: a compressed sentence-transformers folder keeps its pooling and limits") {
  test::TempDir d("st-compress");
  const fs::path src = d.path / "model", out = d.path / "int8";
  make_st_folder(src, "cls_16");
  auto be = make_cpu_backend(1);
  LoadedModel lm = open_model(src.string(), *be);
  compress_model(*lm.model, compress_spec_from_name("int8"), nullptr, false);
  save_compressed(*lm.model, lm.tokenizer.get(), out.string(), compress_spec_from_name("int8"),
                  false, src.string());
  const SentenceEmbeddingConfig st = read_sentence_embedding_config(out.string());
  CHECK(st.pooling == Pooling::Cls);
  CHECK(!st.normalize);
  CHECK(st.max_seq_length == 16);
  // The compressed folder's own config.json (with its quantization section) is kept.
  CHECK(read_json((out / "config.json").string()).contains("quantization"));
  LoadedModel back = open_model(out.string(), *be);
  CHECK(back.model->config().hidden == 32);
}

TEST_CASE("metadata: sentence-transformers settings we cannot follow are errors") {
  test::TempDir d("st-bad");
  const fs::path dir = d.path / "model";
  make_st_folder(dir, "mean_norm_8");
  auto write = [&](const std::string& rel, const nlohmann::json& j) {
    std::ofstream(dir / rel) << j.dump();
  };
  auto err = [&]() -> std::string {
    try {
      read_sentence_embedding_config(dir.string());
    } catch (const Error& e) {
      return e.what();
    }
    return "(no error)";
  };
  const nlohmann::json mods = read_json((dir / "modules.json").string());
  SUBCASE("a Dense module") {
    nlohmann::json m = mods;  // Transformer, Pooling, Dense, Normalize (as in LaBSE-style models)
    m.insert(m.begin() + 2, nlohmann::json{{"idx", 2},
                                           {"name", "2"},
                                           {"path", "2_Dense"},
                                           {"type", "sentence_transformers.models.Dense"}});
    write("modules.json", m);
    CHECK(err().find("'sentence_transformers.models.Dense', which is not supported") !=
          std::string::npos);
  }
  SUBCASE("two pooling modes (concatenated by sentence-transformers)") {
    nlohmann::json c = read_json((dir / "1_Pooling/config.json").string());
    c["pooling_mode_cls_token"] = true;
    write("1_Pooling/config.json", c);
    CHECK(err().find("exactly one pooling mode must be true, found 2") != std::string::npos);
  }
  SUBCASE("an unknown pooling mode") {
    nlohmann::json c = read_json((dir / "1_Pooling/config.json").string());
    c["pooling_mode_attention"] = true;
    write("1_Pooling/config.json", c);
    CHECK(err().find("pooling mode 'pooling_mode_attention' is not supported") !=
          std::string::npos);
  }
  SUBCASE("a bad max_seq_length") {
    write("sentence_bert_config.json", {{"max_seq_length", "128"}});
    CHECK(err().find("max_seq_length should be an integer >= 2") != std::string::npos);
  }
  SUBCASE("no sentence_bert_config.json: the model's position limit, as sentence-transformers") {
    fs::remove(dir / "sentence_bert_config.json");
    const SentenceEmbeddingConfig st = read_sentence_embedding_config(dir.string());
    CHECK(st.max_seq_length > 64);  // embed_texts caps it at max_position_embeddings (64)
    CHECK(st.source.find("model's tokens") != std::string::npos);
  }
  SUBCASE("a module path outside the folder") {
    nlohmann::json m = mods;
    m[1]["path"] = "../elsewhere";
    write("modules.json", m);
    CHECK(err().find("leaves the model folder") != std::string::npos);
  }
  SUBCASE("no modules.json: the documented defaults") {
    fs::remove(dir / "modules.json");
    const SentenceEmbeddingConfig st = read_sentence_embedding_config(dir.string());
    CHECK(st.max_seq_length == 256);
    CHECK(st.pooling == Pooling::Mean);
    CHECK(st.normalize);
    CHECK(st.source.find("defaults") != std::string::npos);
  }
}

// ---- config.json / GGUF keys that change the math: read or refused, never skipped ----

TEST_CASE("metadata: config.json fields we do not implement are errors, sliding_window a limit") {
  test::TempDir d("cfg");
  auto load_with = [&](const std::string& base, const nlohmann::json& patch) {
    nlohmann::json c = read_json("tests/fixtures/parity/" + base + "/config.json");
    c.merge_patch(patch);
    std::ofstream(d / "config.json") << c.dump();
    return load_config(d / "config.json");
  };
  auto err = [&](const std::string& base, const nlohmann::json& patch) -> std::string {
    try {
      load_with(base, patch);
    } catch (const Error& e) {
      return e.what();
    }
    return "(no error)";
  };
  CHECK(err("gpt2", {{"scale_attn_weights", false}}).find("scale_attn_weights = false") !=
        std::string::npos);
  CHECK(err("gpt2", {{"scale_attn_by_inverse_layer_idx", true}})
            .find("scale_attn_by_inverse_layer_idx") != std::string::npos);
  CHECK(err("bert", {{"is_decoder", true}}).find("is_decoder = true") != std::string::npos);
  CHECK(err("llama", {{"rope_parameters", {{"rope_type", "dynamic"}, {"factor", 4.0}}}})
            .find("'dynamic' is not supported") != std::string::npos);
  // Mistral's sliding window caps the positions; Qwen2 only when use_sliding_window.
  CHECK(load_with("llama", {{"model_type", "mistral"}, {"sliding_window", 32}}).max_pos == 32);
  CHECK(load_with("llama", {{"model_type", "mistral"}, {"sliding_window", nullptr}}).max_pos ==
        128);
  CHECK(load_with("llama", {{"model_type", "qwen2"}, {"sliding_window", 32}}).max_pos == 128);
  CHECK(load_with("llama", {{"model_type", "qwen2"},
                            {"sliding_window", 32},
                            {"use_sliding_window", true},
                            {"max_window_layers", 2}})
            .max_pos == 32);
  CHECK(err("llama", {{"model_type", "qwen2"},
                      {"sliding_window", 32},
                      {"use_sliding_window", true},
                      {"max_window_layers", 1}})
            .find("max_window_layers") != std::string::npos);
}
