// Inputs that crashed, overflowed, allocated without bound or escaped as a foreign exception
// before the input hardening (docs/fuzzing.md, "Findings"). Each is a small committed file in
// tests/fuzz/regressions/ fed to the reader its fuzz harness drives; each must now be a
// minfer::Error whose message names what is wrong.
#include <doctest/doctest.h>

#include <fstream>
#include <sstream>
#include <string>

#include "engine/compressed_folder.h"
#include "engine/config.h"
#include "engine/error.h"
#include "engine/json_text.h"
#include "engine/safetensors.h"
#include "tokenizer/tokenizer.h"

using namespace minfer;

namespace {

std::string read_case(const std::string& name) {
  std::ifstream f("tests/fuzz/regressions/" + name, std::ios::binary);
  REQUIRE_MESSAGE(f.good(), "missing regression case " << name);
  std::ostringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

// The message of the minfer::Error `f` throws; fails the test when it throws anything else or
// nothing.
template <typename F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  } catch (const std::exception& e) {
    FAIL("not a minfer::Error: " << e.what());
  }
  FAIL("no error");
  return "";
}

// As fuzz_compressed_folder: config.json text, NUL, model.safetensors image.
void open_compressed(const std::string& bytes) {
  const size_t z = bytes.find('\0');
  REQUIRE(z != std::string::npos);
  const std::string config = bytes.substr(0, z), image = bytes.substr(z + 1);
  auto st = SafetensorsFile::open_memory(borrowed_storage(image.data(), image.size()), "st");
  CompressedSource src(config, WeightStore::from_file(st), "folder");
}

}  // namespace

TEST_CASE("fuzz regressions: config.json sizes are bounded and typed before use") {
  struct Case {
    const char* file;
    const char* says;
  };
  for (const Case c : {
           // n_inner defaulted to 4 * n_embd before n_embd was checked: signed overflow (UB).
           Case{"config-n_embd-overflow.json", "hidden size = 4611686018427387904 is outside"},
           // n_layer = 1e12 sized a per-layer vector: a multi-terabyte allocation.
           Case{"config-n_layer-huge.json", "layer count = 1000000000000 is outside"},
           // A negative head_dim was accepted.
           Case{"config-head_dim-negative.json", "head_dim = -4 is outside"},
           // 1e300 read as an integer: an out-of-range float-to-int conversion (UB).
           Case{"config-vocab-1e300.json", "field 'vocab_size' should be an integer in range"},
           // rms_norm_eps = 1e300 became an infinite epsilon, silently.
           Case{"config-eps-inf.json", "field 'rms_norm_eps' should be a finite number"},
           // rope_scaling.rope_type = 5 escaped as nlohmann::json::type_error.
           Case{"config-rope_type-number.json", "field 'rope_type' should be a string"},
           // nlohmann keeps one of two equal keys silently.
           Case{"config-duplicate-key.json", "has the key 'vocab_size' more than once"},
       }) {
    CAPTURE(c.file);
    const std::string msg = error_of([&] { parse_config(read_case(c.file), "config.json"); });
    CHECK_MESSAGE(msg.find(c.says) != std::string::npos, msg);
    CHECK(msg.find("config.json") != std::string::npos);
  }
}

TEST_CASE("fuzz regressions: compressed-folder metadata is typed and bounded") {
  struct Case {
    const char* file;
    const char* says;
  };
  for (const Case c : {
           // quantization.format / version of the wrong JSON type: nlohmann::json::type_error.
           Case{"compressed-format-number", "quantization: format should be a string, found 5"},
           Case{"compressed-version-string", "quantization version \"1\" is not supported"},
           // An entry nested 100 deep; at 200000 levels its dump() overflowed the stack.
           Case{"compressed-deep-entry", "deeper than 64 levels"},
       }) {
    CAPTURE(c.file);
    const std::string msg = error_of([&] { open_compressed(read_case(c.file)); });
    CHECK_MESSAGE(msg.find(c.says) != std::string::npos, msg);
  }
}

TEST_CASE("fuzz regressions: tokenizer.json fields are typed and ids are int32") {
  struct Case {
    const char* file;
    const char* says;
  };
  for (const Case c : {
           // Nested 100 deep; at 200000 levels copying the parsed value overflowed the stack.
           Case{"tokenizer-deep.json", "deeper than 64 levels"},
           // An id of 2^32 was truncated to a wrong int32 id.
           Case{"tokenizer-vocab-id-2^32.json", "model.vocab['a'] should be an integer id"},
           Case{"tokenizer-template-id-huge.json", "is not a token id"},
           // Non-string pattern / non-number dropout: nlohmann::json::type_error.
           Case{"tokenizer-pattern-number.json", "pattern should be"},
           Case{"tokenizer-dropout-string.json", "model.dropout should be a number"},
           // A list field given as a string: merges "a b" was indexed as merges[0] (a
           // nlohmann::json::type_error escaped, CI fuzz finding); Sequence members, added_tokens
           // and template ids were iterated as if the string were a one-element list.
           Case{"tokenizer-merges-string.json", "model.merges should be a list, found string"},
           Case{"tokenizer-sequence-string.json",
                "Sequence normalizer.normalizers should be a list, found string"},
           Case{"tokenizer-added-string.json", "tokenizer.json.added_tokens should be a list"},
           Case{"tokenizer-template-ids-string.json",
                "special_tokens entry.ids should be a list, found string"},
       }) {
    CAPTURE(c.file);
    const std::string msg =
        error_of([&] { Tokenizer::from_json_string(read_case(c.file), "tokenizer.json"); });
    CHECK_MESSAGE(msg.find(c.says) != std::string::npos, msg);
    CHECK(msg.find("tokenizer.json") != std::string::npos);
  }
}

TEST_CASE("parse_json_text: the one reader of JSON files rejects what nlohmann accepts silently") {
  CHECK(parse_json_text(R"({"a": [1, {"b": null}]})", "x.json").at("a").size() == 2);
  CHECK(error_of([] {
          parse_json_text(R"({"a": 1, "a": 2})", "x.json");
        }).find("x.json: file has the key 'a' more than once") != std::string::npos);
  CHECK(error_of([] {
          parse_json_text(R"({"o": {"k": 1, "k": 1}})", "x.json");
        }).find("'k' more than once") != std::string::npos);
  // The same key in two different objects is fine.
  CHECK_NOTHROW(parse_json_text(R"([{"k": 1}, {"k": 2}])", "x.json"));
  CHECK(error_of([] { parse_json_text("{\"a\": tru}", "x.json"); }).find("not valid JSON") !=
        std::string::npos);
  const std::string ok = std::string(kMaxJsonDepth, '[') + std::string(kMaxJsonDepth, ']');
  CHECK_NOTHROW(parse_json_text(ok, "x.json"));
  const std::string deep = "[" + ok + "]";
  CHECK(error_of([&] { parse_json_text(deep, "x.json"); }).find("deeper than 64") !=
        std::string::npos);
}

TEST_CASE("json_get: no silent conversions") {
  using nlohmann::json;
  int32_t i = 7;
  CHECK_FALSE(json_get(json(1.5), &i));
  CHECK_FALSE(json_get(json(int64_t(1) << 31), &i));
  CHECK_FALSE(json_get(json(true), &i));
  CHECK(i == 7);
  CHECK(json_get(json(-5), &i));
  CHECK(i == -5);
  uint32_t u = 0;
  CHECK_FALSE(json_get(json(-1), &u));
  float f = 0;
  CHECK_FALSE(json_get(json(1e300), &f));
  CHECK(json_get(json(3), &f));
  CHECK(f == 3.f);
  std::string s;
  CHECK_FALSE(json_get(json(5), &s));
  bool b = false;
  CHECK_FALSE(json_get(json(1), &b));
}
