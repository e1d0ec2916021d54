// The parts of the C API the C test (tests/capi/test_capi.c) cannot reach with the header alone:
// a safetensors model image in memory (built here from the parity fixture), and token pieces
// across every tokenizer family.
#include <doctest/doctest.h>

#include <cstring>
#include <fstream>
#include <sstream>
#include <vector>

#include "engine/safetensors.h"
#include "minfer.h"
#include "models/loader.h"
#include "tests/test_util.h"
#include "tokenizer/tokenizer.h"

using namespace minfer;

namespace {

std::string slurp(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  REQUIRE(f.good());
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

const char* kLlama = "tests/fixtures/parity/llama";
const char* kTok = "tests/fixtures/tokenizers/synth-llama3.tokenizer.json";

// parity/llama's weights as one safetensors image with config.json and a tokenizer.json in
// its __metadata__ (what an application would embed).
std::string llama_image(const test::TempDir& tmp, bool with_config) {
  WeightStore ws = WeightStore::open(kLlama);
  std::vector<std::pair<std::string, Tensor>> ts;
  for (const auto& n : ws.names()) ts.emplace_back(n, ws.get(n));
  std::map<std::string, std::string> meta{{"tokenizer.json", slurp(kTok)}};
  if (with_config) meta["config.json"] = slurp(std::string(kLlama) + "/config.json");
  save_safetensors(tmp / "image.safetensors", ts, meta);
  return slurp(tmp / "image.safetensors");
}

}  // namespace

TEST_CASE("capi: a safetensors image in memory gives the folder's logits") {
  test::TempDir tmp("capi");
  const std::string image = llama_image(tmp, true);

  // the folder, through the library (the reference)
  auto be = make_cpu_backend(1);
  LoadedModel ref = open_model(kLlama, *be, /*with_tokenizer=*/false);
  const int32_t ids[] = {1, 5, 9, 17, 33, 2};
  RunState s = ref.model->new_state(16, 6, 1);
  Tensor lg = ref.model->forward(s, ids, 6, false);
  const int64_t V = ref.model->config().vocab_size;
  std::vector<float> want(static_cast<size_t>(V));
  be->to_host(lg, want.data());

  for (bool in_place : {false, true}) {
    CAPTURE(in_place);
    minfer_model_params mp = minfer_model_default_params();
    mp.n_threads = 1;
    mp.use_buffer_in_place = in_place;
    // in place needs 64-byte alignment: a std::string's buffer may not have it, so copy into
    // an aligned one (what an app embedding the image would arrange with alignas)
    std::vector<uint8_t> store(image.size() + 64);
    auto* aligned =
        reinterpret_cast<uint8_t*>((reinterpret_cast<uintptr_t>(store.data()) + 63) / 64 * 64);
    std::memcpy(aligned, image.data(), image.size());
    minfer_model* m = nullptr;
    REQUIRE_MESSAGE(minfer_model_load_from_buffer(aligned, image.size(), &mp, &m) == MINFER_OK,
                    minfer_last_error());
    CHECK(minfer_n_vocab(m) == V);
    CHECK(minfer_n_embd(m) == 48);
    minfer_context* c = nullptr;
    REQUIRE(minfer_context_new(m, nullptr, &c) == MINFER_OK);
    REQUIRE(minfer_decode(c, ids, 6) == MINFER_OK);
    const float* got = minfer_get_logits(c);
    REQUIRE(got != nullptr);
    float d = 0;
    for (int64_t i = 0; i < V; ++i) d = std::max(d, std::abs(got[i] - want[size_t(i)]));
    CHECK(d == 0.f);
    int32_t toks[16];
    CHECK(minfer_tokenize(m, "hello", -1, toks, 16, false) > 0);  // the embedded tokenizer
    minfer_context_free(c);
    minfer_model_free(m);
  }
}

TEST_CASE("capi: a safetensors image without config.json is a clear load error") {
  test::TempDir tmp("capi");
  const std::string image = llama_image(tmp, false);
  minfer_model* m = nullptr;
  CHECK(minfer_model_load_from_buffer(image.data(), image.size(), nullptr, &m) == MINFER_ERR_LOAD);
  CHECK(m == nullptr);
  CHECK(std::string(minfer_last_error()).find("config.json") != std::string::npos);
  // truncated: the header length runs past the end
  CHECK(minfer_model_load_from_buffer(image.data(), 64, nullptr, &m) == MINFER_ERR_LOAD);
}

TEST_CASE("tokenizer: pieces of consecutive tokens concatenate to the decoded text") {
  // Every decoder family: byte-level BPE (llama3, qwen2), SentencePiece BPE with byte fallback
  // (spm), Metaspace, WordPiece. A piece is the token in the middle of a text, so the only
  // difference allowed is the one leading space decode strips from a whole text's first token.
  const char* kDir = "tests/fixtures/tokenizers/";
  const char* texts[] = {"Hello world, this is a test.", "  spaces  and\ttabs",
                         "Caf\xc3\xa9 na\xc3\xafve \xe2\x82\xac 3.14", "don't stop"};
  for (const char* name :
       {"synth-llama3", "synth-qwen2", "synth-spm", "synth-metaspace", "synth-wordpiece"}) {
    auto tok = Tokenizer::load(std::string(kDir) + name + ".tokenizer.json");
    for (const char* text : texts) {
      CAPTURE(name);
      CAPTURE(text);
      std::vector<int32_t> ids = tok->encode(text, false);
      std::string joined;
      for (int32_t id : ids) joined += tok->piece(id);
      std::string want = tok->decode(ids, false);
      if (joined.size() == want.size() + 1 && joined[0] == ' ') joined.erase(0, 1);
      CHECK(joined == want);
    }
  }
}
