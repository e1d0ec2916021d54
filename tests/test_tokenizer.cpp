// Tokenizer parity with Hugging Face `tokenizers`: fixtures from
// tests/fixtures/tokenizers/make_tokenizer_fixtures.py (ids, decodes, per-line WikiText-2 counts
// and FNV-1a hashes), plus unit tests of the pieces with hand-computed expectations.
#include <doctest/doctest.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "engine/error.h"
#include "tokenizer/split_regex.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/unicode.h"

using minfer::Tokenizer;
using nlohmann::json;

namespace {

const char* kFixtures = "tests/fixtures/tokenizers/";
// WikiText-2 test split: $MINFER_WIKITEXT (the wikitext-2-raw folder) or ../shared/data.
const std::string kWiki = [] {
  const char* d = std::getenv("MINFER_WIKITEXT");
  return std::string(d && *d ? d : "../shared/data/wikitext-2-raw") + "/wiki.test.raw";
}();

#if defined(__SANITIZE_ADDRESS__)
#define MINFER_TEST_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define MINFER_TEST_ASAN 1  // clang before 18 does not define __SANITIZE_ADDRESS__
#endif
#endif
// Sanitizer builds, and runs with MINFER_TEST_QUICK=1 (scripts/ci-arm.sh: the aarch64 suite
// under qemu), check the first 500 WikiText lines and skip the whole-file encode (and time the
// matchers' linear work on shorter runs, below): the hard set and
// those lines run the same code; the whole sweep is the native release run's (~1 s per tokenizer
// there, minutes under ASan or emulation).
#if defined(MINFER_TEST_ASAN) || defined(MINFER_SANITIZE)
constexpr bool kSanitized = true;
#else
constexpr bool kSanitized = false;
#endif
bool quick_run() {
  static const bool q = kSanitized || [] {
    const char* e = std::getenv("MINFER_TEST_QUICK");
    return e && std::string(e) == "1";
  }();
  return q;
}

std::string read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  REQUIRE_MESSAGE(f.good(), "cannot open ", path);
  std::ostringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

std::string minfer_home() {
  const char* h = std::getenv("MINFER_HOME");
  if (h && *h) return h;
  const char* home = std::getenv("HOME");
  return std::string(home ? home : "") + "/.cache/minfer";
}

std::string fnv1a64(const std::vector<int32_t>& ids) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (int32_t id : ids) {
    uint32_t u = static_cast<uint32_t>(id);
    for (int b = 0; b < 4; ++b) {
      h ^= (u >> (8 * b)) & 0xff;
      h *= 0x100000001b3ull;
    }
  }
  return fmt::format("{:016x}", h);
}

std::string fnv1a64_bytes(const std::string& s) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (unsigned char c : s) {
    h ^= c;
    h *= 0x100000001b3ull;
  }
  return fmt::format("{:016x}", h);
}

std::string show(const std::string& s) {  // printable form of a test string
  std::string o;
  for (unsigned char c : s) {
    if (c == '\n')
      o += "\\n";
    else if (c == '\t')
      o += "\\t";
    else if (c == '\r')
      o += "\\r";
    else if (c < 0x20 || c == 0x7f)
      o += fmt::format("\\x{:02x}", c);
    else
      o.push_back(static_cast<char>(c));
  }
  return o.size() > 160 ? o.substr(0, 160) + "..." : o;
}

std::string show_ids(const std::vector<int32_t>& v) {
  return fmt::format("[{}]", fmt::join(v, ", "));
}

std::string unhex(const std::string& h) {
  std::string out;
  for (size_t i = 0; i + 1 < h.size(); i += 2)
    out.push_back(static_cast<char>(std::stoi(h.substr(i, 2), nullptr, 16)));
  return out;
}

std::vector<std::string> wiki_lines(const std::string& text) {
  std::vector<std::string> lines;
  size_t pos = 0;
  while (pos < text.size()) {
    size_t nl = text.find('\n', pos);
    if (nl == std::string::npos) nl = text.size();
    lines.push_back(text.substr(pos, nl - pos));
    pos = nl + 1;
  }
  return lines;
}

// Streams ids one at a time; every chunk must be valid UTF-8 and the chunks must add up to
// decode().
void check_stream(const Tokenizer& tok, const std::vector<int32_t>& ids, const std::string& text) {
  minfer::StreamDecoder sd(tok);
  std::string all;
  for (int32_t id : ids) {
    std::string piece = sd.push(id);
    CHECK_MESSAGE(minfer::unicode::find_invalid_utf8(piece) == std::string::npos,
                  "stream chunk not UTF-8 for '", show(text), "'");
    all += piece;
  }
  all += sd.flush();
  CHECK_MESSAGE(all == tok.decode(ids), "stream decode of '", show(text), "' gave '", show(all),
                "'");
}

// Everything a <name>.expected.json records, checked against `tok`.
void check_expected(const Tokenizer& tok, const std::string& name, bool lossless) {
  json exp = json::parse(read_file(std::string(kFixtures) + name + ".expected.json"));
  INFO("tokenizer ", name, " (", tok.describe(), ")");

  for (const json& h : exp["hard"]) {
    const std::string text = h["text"].get<std::string>();
    auto ids = tok.encode(text);
    auto want = h["ids"].get<std::vector<int32_t>>();
    CHECK_MESSAGE(ids == want, "encode('", show(text), "')\n  got  ", show_ids(ids), "\n  want ",
                  show_ids(want));
    auto plain = tok.encode(text, false);
    auto want_plain = h["ids_plain"].get<std::vector<int32_t>>();
    CHECK_MESSAGE(plain == want_plain, "encode('", show(text), "', no special)\n  got  ",
                  show_ids(plain), "\n  want ", show_ids(want_plain));
    if (ids != want) continue;
    CHECK_MESSAGE(tok.decode(ids) == h["decoded"].get<std::string>(), "decode of '", show(text),
                  "' gave '", show(tok.decode(ids)), "'");
    CHECK_MESSAGE(tok.decode(ids, false) == h["decoded_special"].get<std::string>(),
                  "decode(keep special) of '", show(text), "' gave '", show(tok.decode(ids, false)),
                  "'");
    check_stream(tok, ids, text);
  }

  for (const json& c : exp["invalid_utf8"]) {
    const std::string raw = unhex(c["hex"].get<std::string>());
    CHECK_THROWS_WITH_AS(tok.encode(raw), doctest::Contains("not valid UTF-8 at byte offset"),
                         minfer::Error);
    const std::string rep = minfer::unicode::replace_invalid_utf8(raw);
    CHECK_MESSAGE(rep == c["replaced"].get<std::string>(), "replacement of ",
                  c["hex"].get<std::string>());
    CHECK(tok.encode(rep, false) == c["ids"].get<std::vector<int32_t>>());
  }

  if (!std::filesystem::exists(kWiki)) {
    MESSAGE("WikiText-2 absent (", kWiki, "): per-line sweep skipped");
    return;
  }
  const std::string text = read_file(kWiki);
  const auto lines = wiki_lines(text);
  const json& w = exp["wiki"];
  REQUIRE(lines.size() == w["lines"].get<size_t>());
  const auto& counts = w["count"];
  const auto& hashes = w["fnv"];
  const auto& full = w["full"];
  int bad = 0, roundtrip_bad = 0;
  const size_t n = quick_run() ? std::min<size_t>(lines.size(), 500) : lines.size();
  for (size_t i = 0; i < n; ++i) {
    auto ids = tok.encode(lines[i]);
    bool ok = ids.size() == counts[i].get<size_t>() && fnv1a64(ids) == hashes[i].get<std::string>();
    if (ok && i < full.size()) ok = ids == full[i].get<std::vector<int32_t>>();
    if (!ok && ++bad <= 5) {
      std::string detail =
          i < full.size() ? "\n  want " + show_ids(full[i].get<std::vector<int32_t>>()) : "";
      FAIL_CHECK("WikiText line ", i + 1, " '", show(lines[i]), "'\n  got ", ids.size(), " ids ",
                 show_ids(ids), "\n  want ", counts[i].get<size_t>(), " ids, fnv ",
                 hashes[i].get<std::string>(), detail);
    }
    if (lossless && tok.decode(ids) != lines[i] && ++roundtrip_bad <= 5)
      FAIL_CHECK("decode(encode(x)) != x for WikiText line ", i + 1, " '", show(lines[i]), "'");
  }
  CHECK_MESSAGE(bad == 0, bad, " of ", n, " WikiText lines differ from HF");
  CHECK(roundtrip_bad == 0);

  // The whole file as one text (what perplexity encodes).
  if (quick_run()) return;
  auto ids = tok.encode(text);
  CHECK(ids.size() == exp["whole"]["count"].get<size_t>());
  CHECK(fnv1a64(ids) == exp["whole"]["fnv"].get<std::string>());
  if (lossless) CHECK(tok.decode(ids) == text);
}

std::string smollm2_gguf() {
  return minfer_home() + "/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";
}

}  // namespace

// ---------------------------------------------------------------------------------------------
TEST_CASE("tokenizer: unicode helpers") {
  using namespace minfer::unicode;
  // GPT-2 bytes_to_unicode: space -> U+0120 'Ġ', newline -> U+010A 'Ċ', 'a' -> 'a', 0xAD -> U+0143.
  CHECK(byte_to_cp()[' '] == 0x120);
  CHECK(byte_to_cp()['\n'] == 0x10A);
  CHECK(byte_to_cp()['a'] == 'a');
  CHECK(byte_to_cp()[0xAD] == 0x143);
  for (int b = 0; b < 256; ++b) CHECK(cp_to_byte(byte_to_cp()[b]) == b);
  std::string enc;
  byte_level_encode(" a\n", enc);
  CHECK(enc ==
        "\xC4\xA0"
        "a"
        "\xC4\x8A");

  CHECK(find_invalid_utf8("plain ascii") == std::string::npos);
  CHECK(find_invalid_utf8("caf\xC3\xA9 \xE4\xB8\xAD \xF0\x9F\x98\x80") == std::string::npos);
  CHECK(find_invalid_utf8("ab\xC3") == 2);                       // truncated
  CHECK(find_invalid_utf8("\xC0\xAF") == 0);                     // overlong
  CHECK(find_invalid_utf8("x\xED\xA0\x80") == 1);                // surrogate
  CHECK(find_invalid_utf8("0123456789\xF4\x90\x80\x80") == 10);  // > U+10FFFF
  // Maximal subparts: "\xE4\xB8" is one U+FFFD, "\x80\x80" two.
  CHECK(replace_invalid_utf8("a\xE4\xB8"
                             "b\x80\x80") ==
        "a\xEF\xBF\xBD"
        "b\xEF\xBF\xBD\xEF\xBF\xBD");

  CHECK(is_letter(U'é'));
  CHECK(is_number(U'٣'));
  CHECK(is_number(U'½'));
  CHECK(is_space(0x3000));
  CHECK(is_space(0x85));
  CHECK_FALSE(is_space(0x200B));  // zero width space is Cf, not whitespace
  CHECK(is_bert_punct('$'));      // ASCII symbol counts as punctuation for BERT
  CHECK(is_punct(U'。'));
  CHECK(is_chinese_char(U'中'));
  CHECK_FALSE(is_chinese_char(U'カ'));
  CHECK(nfd("\xC3\xA9") == "e\xCC\x81");
  CHECK(nfc("e\xCC\x81") == "\xC3\xA9");
  CHECK(nfkc("\xEF\xAC\x81") == "fi");
  CHECK(lowercase("\xC4\xB0Stanbul \xC3\x89") == "i\xCC\x87stanbul \xC3\xA9");
}

TEST_CASE("tokenizer: hand-built byte-level BPE, merges in both JSON forms") {
  // Vocabulary: the bytes of "hello world", merges h+e, l+l, he+ll, hell+o, Ġ+w.
  auto make = [](bool pair_form) {
    json vocab = json::object();
    int id = 0;
    for (const char* t :
         {"h", "e", "l", "o", "w", "r", "d", "\xC4\xA0", "he", "ll", "hell", "hello", "\xC4\xA0w"})
      vocab[t] = id++;
    std::vector<std::pair<std::string, std::string>> m = {
        {"h", "e"}, {"l", "l"}, {"he", "ll"}, {"hell", "o"}, {"\xC4\xA0", "w"}};
    json merges = json::array();
    for (auto& [a, b] : m) merges.push_back(pair_form ? json::array({a, b}) : json(a + " " + b));
    json j = {
        {"model", {{"type", "BPE"}, {"vocab", vocab}, {"merges", merges}}},
        {"pre_tokenizer",
         {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", true}}},
        {"decoder", {{"type", "ByteLevel"}}},
        {"added_tokens", json::array({{{"id", 13}, {"content", "<|eos|>"}, {"special", true}}})}};
    return Tokenizer::from_json_string(j.dump(), pair_form ? "pairs" : "strings");
  };
  auto a = make(false), b = make(true);
  // "hello world": words "hello", "Ġworld" -> [hello] [Ġw, o, r, l, d]
  const std::vector<int32_t> want = {11, 12, 3, 5, 2, 6};
  CHECK(a->encode("hello world") == want);
  CHECK(b->encode("hello world") == want);
  CHECK(a->decode(want) == "hello world");
  // The special token is matched before splitting and skipped on decode unless asked for.
  CHECK(a->encode("hello<|eos|>") == std::vector<int32_t>{11, 13});
  CHECK(a->decode(std::vector<int32_t>{11, 13}) == "hello");
  CHECK(a->decode(std::vector<int32_t>{11, 13}, false) == "hello<|eos|>");
  CHECK(a->is_special(13));
  CHECK(a->token_to_id("hell") == 10);
  CHECK(a->token_to_id("nope") == -1);
  CHECK(a->vocab_size() == 14);
  CHECK_THROWS_WITH_AS(a->decode(std::vector<int32_t>{14}),
                       doctest::Contains("token id 14 is out of range"), minfer::Error);
}

TEST_CASE("tokenizer: stream decoder emits whole UTF-8 characters only") {
  // Byte-level vocabulary of single bytes: '中' (E4 B8 AD) is three tokens.
  json vocab = json::object();
  for (int b = 0; b < 256; ++b) {
    std::string s;
    minfer::unicode::append_utf8(s, minfer::unicode::byte_to_cp()[b]);
    vocab[s] = b;
  }
  json j = {{"model", {{"type", "BPE"}, {"vocab", vocab}, {"merges", json::array()}}},
            {"pre_tokenizer", {{"type", "ByteLevel"}, {"add_prefix_space", false}}},
            {"decoder", {{"type", "ByteLevel"}}}};
  auto tok = Tokenizer::from_json_string(j.dump(), "bytes");
  auto ids = tok->encode("a\xE4\xB8\xAD!");
  REQUIRE(ids == std::vector<int32_t>{'a', 0xE4, 0xB8, 0xAD, '!'});
  minfer::StreamDecoder sd(*tok);
  CHECK(sd.push(ids[0]) == "a");
  CHECK(sd.push(ids[1]) == "");
  CHECK(sd.push(ids[2]) == "");
  CHECK(sd.push(ids[3]) == "\xE4\xB8\xAD");
  CHECK(sd.push(ids[4]) == "!");
  CHECK(sd.push(0xE4) == "");
  CHECK(sd.flush() == "\xEF\xBF\xBD");  // an incomplete character at the end becomes U+FFFD
  CHECK(tok->decode(std::vector<int32_t>{0xE4}) == "\xEF\xBF\xBD");
}

TEST_CASE("tokenizer: unsupported components and bad files give clear errors") {
  auto load = [](const json& j) { return Tokenizer::from_json_string(j.dump(), "t.json"); };
  json base = {{"model", {{"type", "WordLevel"}, {"vocab", {{"a", 0}}}, {"unk_token", "a"}}}};
  json j = base;
  j["normalizer"] = {{"type", "Precompiled"}, {"precompiled_charsmap", "AA=="}};
  CHECK_THROWS_WITH_AS(load(j), doctest::Contains("normalizer type 'Precompiled' is not supported"),
                       minfer::Error);
  j = base;
  j["pre_tokenizer"] = {{"type", "UnicodeScripts"}};
  CHECK_THROWS_WITH_AS(load(j),
                       doctest::Contains("pre_tokenizer type 'UnicodeScripts' is not supported"),
                       minfer::Error);
  j = base;
  j["pre_tokenizer"] = {
      {"type", "Split"}, {"pattern", {{"Regex", "(?<=a)b"}}}, {"behavior", "Isolated"}};
  CHECK_THROWS_WITH_AS(load(j),
                       doctest::Contains("Split pre_tokenizer regex '(?<=a)b' is not supported"),
                       minfer::Error);
  CHECK_THROWS_WITH_AS(load(j), doctest::Contains("group option or extension"), minfer::Error);
  j["pre_tokenizer"]["pattern"]["Regex"] = "(?i:[ab])";
  CHECK_THROWS_WITH_AS(load(j), doctest::Contains("class inside a case-insensitive group"),
                       minfer::Error);
  j["pre_tokenizer"]["pattern"]["Regex"] = "(ab";
  CHECK_THROWS_WITH_AS(load(j), doctest::Contains("unterminated group"), minfer::Error);
  j["pre_tokenizer"]["pattern"]["Regex"] = "ab)";
  CHECK_THROWS_WITH_AS(load(j), doctest::Contains("misplaced metacharacter"), minfer::Error);
  j["pre_tokenizer"]["pattern"]["Regex"] = "a+?";
  CHECK_THROWS_WITH_AS(load(j), doctest::Contains("lazy or possessive quantifier"), minfer::Error);
  j["pre_tokenizer"]["pattern"]["Regex"] = "\\p{Xx}";
  CHECK_THROWS_WITH_AS(load(j), doctest::Contains("unknown Unicode category"), minfer::Error);
  j = base;
  j["decoder"] = {{"type", "CTC"}};
  CHECK_THROWS_WITH_AS(load(j), doctest::Contains("decoder type 'CTC' is not supported"),
                       minfer::Error);
  j = base;
  j["model"] = {{"type", "Unigram"}, {"vocab", json::array()}};
  CHECK_THROWS_WITH_AS(load(j), doctest::Contains("model type 'Unigram' is not supported"),
                       minfer::Error);
  j = {{"model",
        {{"type", "BPE"}, {"vocab", {{"a", 0}, {"b", 1}}}, {"merges", json::array({"a b"})}}}};
  CHECK_THROWS_WITH_AS(load(j), doctest::Contains("produces 'ab', which is not in the vocabulary"),
                       minfer::Error);
  j = {{"model", {{"type", "BPE"}, {"vocab", {{"a", 0}}}, {"merges", json::array({"a"})}}}};
  CHECK_THROWS_WITH_AS(load(j), doctest::Contains("model.merges[0] = 'a' should be two tokens"),
                       minfer::Error);
  CHECK_THROWS_WITH_AS(Tokenizer::from_json_string("{not json", "x.json"),
                       doctest::Contains("x.json: file is not valid JSON"), minfer::Error);
  CHECK_THROWS_WITH_AS(Tokenizer::load("/nonexistent/tokenizer.json"),
                       doctest::Contains("does not exist"), minfer::Error);
}

TEST_CASE("tokenizer: pre-tokenizers match HF pre_tokenize_str") {
  // pretokenizers-gguf: the Split regexes of the GGUF pre-tokenizer families (SplitRegex).
  for (const char* file : {"pretokenizers.expected.json", "pretokenizers-gguf.expected.json"}) {
    INFO("fixture ", file);
    json exp = json::parse(read_file(std::string(kFixtures) + file));
    const bool have_wiki = std::filesystem::exists(kWiki) && !quick_run();
    const std::string wiki = have_wiki ? read_file(kWiki) : std::string();
    for (auto it = exp.begin(); it != exp.end(); ++it) {
      INFO("pre-tokenizer ", it.key(), " ", it.value()["json"].dump());
      const std::string pj = it.value()["json"].dump();
      for (const json& h : it.value()["hard"]) {
        const std::string text = h["text"].get<std::string>();
        auto got = minfer::pre_tokenize(pj, text);
        auto want = h["pieces"].get<std::vector<std::string>>();
        CHECK_MESSAGE(got == want, "'", show(text), "': got ", got.size(), " pieces, want ",
                      want.size());
      }
      if (have_wiki) {
        auto pieces = minfer::pre_tokenize(pj, wiki);
        std::string joined;
        for (size_t i = 0; i < pieces.size(); ++i) {
          if (i) joined.push_back('\0');
          joined += pieces[i];
        }
        CHECK(pieces.size() == it.value()["whole"]["count"].get<size_t>());
        CHECK(fnv1a64_bytes(joined) == it.value()["whole"]["fnv"].get<std::string>());
      }
    }
  }
}

TEST_CASE("tokenizer: synthetic SentencePiece-style BPE with byte fallback") {
  auto tok = Tokenizer::load(std::string(kFixtures) + "synth-spm.tokenizer.json");
  CHECK(tok->bos_id() == 1);
  CHECK(tok->special_prefix() == std::vector<int32_t>{1});
  check_expected(*tok, "synth-spm", false);
}

TEST_CASE("tokenizer: synthetic WordPiece") {
  auto tok = Tokenizer::load(std::string(kFixtures) + "synth-wordpiece.tokenizer.json");
  check_expected(*tok, "synth-wordpiece", false);
}

TEST_CASE("tokenizer: synthetic LLaMA-3 style byte-level BPE") {
  auto tok = Tokenizer::load(std::string(kFixtures) + "synth-llama3.tokenizer.json");
  check_expected(*tok, "synth-llama3", true);
}

TEST_CASE("tokenizer: synthetic Qwen2 style byte-level BPE") {
  auto tok = Tokenizer::load(std::string(kFixtures) + "synth-qwen2.tokenizer.json");
  check_expected(*tok, "synth-qwen2", true);
}

TEST_CASE("tokenizer: synthetic Metaspace BPE") {
  auto tok = Tokenizer::load(std::string(kFixtures) + "synth-metaspace.tokenizer.json");
  check_expected(*tok, "synth-metaspace", false);
}

TEST_CASE("tokenizer: all-MiniLM-L6-v2 tokenizer.json (WordPiece)") {
  const std::string dir = minfer_home() + "/minilm";
  if (!std::filesystem::exists(dir + "/tokenizer.json")) {
    MESSAGE("MiniLM not installed in ", dir, ": run `make models`; skipped");
    return;
  }
  auto tok = Tokenizer::load(dir);
  CHECK(tok->vocab_size() == 30522);
  CHECK(tok->special_prefix() == std::vector<int32_t>{101});
  CHECK(tok->special_suffix() == std::vector<int32_t>{102});
  CHECK(tok->bos_id() == -1);
  check_expected(*tok, "minilm", false);
}

TEST_CASE("tokenizer: SmolLM2 from GGUF matches the HF reference") {
  const std::string path = smollm2_gguf();
  if (!std::filesystem::exists(path)) {
    MESSAGE("SmolLM2 not installed (", path, "): run `make models`; skipped");
    return;
  }
  auto tok = Tokenizer::load(path);
  CHECK(tok->vocab_size() == 49152);
  CHECK(tok->bos_id() == 1);  // <|im_start|>, not added by encode (add_bos_token = false)
  CHECK(tok->eos_id() == 2);  // <|im_end|>
  // No tokenizer.ggml.eot_token_id in the file: found by text, <|im_end|> before <|endoftext|>.
  CHECK(tok->special_id("eot") == 2);
  CHECK(tok->special_id("eom") == -1);
  CHECK(tok->special_prefix().empty());
  CHECK(tok->id_to_token(0) == "<|endoftext|>");
  CHECK(tok->is_special(16));
  CHECK_FALSE(tok->is_special(17));
  CHECK(tok->chat_template().find("<|im_start|>") != std::string::npos);
  check_expected(*tok, "smollm2", true);

  SUBCASE("to_hf_json round trip") {
    json j = json::parse(tok->to_hf_json());
    CHECK(j["pre_tokenizer"] ==
          json::parse(
              R"({"type":"Sequence","pretokenizers":[{"type":"Digits","individual_digits":true},
                         {"type":"ByteLevel","add_prefix_space":false,"trim_offsets":true,"use_regex":true}]})"));
    CHECK(j["model"]["merges"].size() == 48900);
    CHECK(j["added_tokens"].size() == 17);
    auto again = Tokenizer::from_json_string(j.dump(), "to_hf_json");
    json exp = json::parse(read_file(std::string(kFixtures) + "smollm2.expected.json"));
    for (const json& h : exp["hard"])
      CHECK(again->encode(h["text"].get<std::string>()) == h["ids"].get<std::vector<int32_t>>());
  }
}

// ---------------------------------------------------------------------------------------------
// GGUF tokenizers (tokenizer.ggml.*), fixtures from make_gguf_tokenizer_fixtures.py: each GGUF
// is written as convert_hf_to_gguf.py writes it, and the expected ids are HF `tokenizers` on the
// tokenizer.json it was converted from.
namespace {
std::unique_ptr<Tokenizer> gguf_fixture(const std::string& name) {
  return Tokenizer::load(std::string(kFixtures) + "gguf/" + name + ".gguf");
}
}  // namespace

TEST_CASE("tokenizer: GGUF byte-level BPE, every pre-tokenizer family") {
  for (const char* name :
       {"bpe-gpt-2", "bpe-mpt", "bpe-starcoder", "bpe-command-r", "bpe-llama-bpe", "bpe-qwen2",
        "bpe-falcon", "bpe-bloom", "bpe-viking", "bpe-deepseek-llm", "bpe-deepseek-coder",
        "bpe-tekken", "bpe-gpt-4o",
        // from llama.cpp's regex lists
        "bpe-default", "bpe-deepseek-v3", "bpe-spark2_5", "bpe-youtu", "bpe-hunyuan", "bpe-qwen35",
        "bpe-jais-2", "bpe-seed-coder", "bpe-bailingmoe", "bpe-ufakzeka", "bpe-laguna",
        "bpe-minicpm5", "bpe-chameleon", "bpe-superbpe", "bpe-tiny_aya",
        "bpe-granite-embed-multi-97m", "bpe-kimi-k2", "bpe-exaone-moe", "bpe-afmoe"}) {
    const std::string path = std::string(kFixtures) + "gguf/" + name + ".gguf";
    if (!std::filesystem::exists(path)) {
      FAIL_CHECK("missing fixture ", path);
      continue;
    }
    auto tok = gguf_fixture(name);
    CHECK(tok->special_id("eot") == tok->token_to_id("<|im_end|>"));
    CHECK(tok->is_special(tok->token_to_id("<|im_end|>")));
    CHECK_FALSE(tok->is_special(tok->token_to_id("<|reserved|>")));
    check_expected(*tok, std::string("gguf/") + name, true);
  }
}

TEST_CASE("tokenizer: GGUF SuperBPE digit groups") {
  auto tok = gguf_fixture("bpe-superbpe");
  // Digit runs split in threes from the right (an empty-match split), no split at spaces.
  auto words = tok->words("in 1234567 of");
  CHECK(std::find(words.begin(), words.end(), std::string("1")) != words.end());
  CHECK(std::find(words.begin(), words.end(), std::string("234")) != words.end());
  CHECK(std::find(words.begin(), words.end(), std::string("567")) != words.end());
}

namespace {
// The characters a long run of one class is made of, for the split-work checks below.
const std::pair<const char*, const char*> kRuns[] = {{"digits", "7"},
                                                     {"letters", "a"},
                                                     {"spaces", " "},
                                                     {"punctuation", "!"},
                                                     {"newlines", "\n"},
                                                     {"CJK", "\xe4\xb8\xad"},
                                                     {"letters and digits", "a1"},
                                                     {"space-separated letters", "ab "},
                                                     {"Han and Latin",
                                                      "\xe4\xb8\xad"
                                                      "Ab"},
                                                     {"space-separated digits", "12 "}};
std::string run_of(const std::string& unit, size_t bytes) {
  std::string s;
  while (s.size() < bytes) s += unit;
  return s;
}
// SplitRegex steps spent splitting `text` with tok's pre-tokenizer.
uint64_t split_steps(const Tokenizer& tok, const std::string& text) {
  const uint64_t before = minfer::pretok::SplitRegex::steps_on_this_thread();
  (void)tok.words(text);
  return minfer::pretok::SplitRegex::steps_on_this_thread() - before;
}
}  // namespace

TEST_CASE("tokenizer: digit-grouping lookaheads split a 100000-digit run in linear work") {
  // SuperBPE's (?=([0-9]{3})+(?![0-9])) and Tiny Aya's [0-9]{1,3}(?=(?:[0-9]{3})*\b) group a
  // digit run in threes from the right; both lookaheads are evaluated at every digit, so without
  // reuse along the run the work (and the backtracking depth) grows with the square of its length.
  const size_t n = 100000;  // 100000 = 1 + 3 * 33333
  const std::string digits(n, '7');
  for (const char* name : {"bpe-superbpe", "bpe-tiny_aya"}) {
    INFO(name);
    auto tok = gguf_fixture(name);
    const uint64_t before = minfer::pretok::SplitRegex::steps_on_this_thread();
    const auto words = tok->words(digits);
    const uint64_t steps = minfer::pretok::SplitRegex::steps_on_this_thread() - before;
    REQUIRE(words.size() == 1 + n / 3);
    CHECK(words[0] == "7");
    CHECK(std::all_of(words.begin() + 1, words.end(),
                      [](const std::string& w) { return w == "777"; }));
    CHECK(steps < 40 * n);  // linear: a quadratic matcher takes ~n^2/6 steps
    CHECK(tok->encode(digits, false).size() >= words.size());
  }
}

TEST_CASE("tokenizer: every GGUF pre-tokenizer splits long runs of one class in linear work") {
  // Doubling a run's length must at most double the matcher's work (plus a constant), for every
  // pre-tokenizer family and run class (the quadratic digit-grouping lookaheads were one case).
  // Runs of 10000 and 20000 bytes; 2500 and 5000 under the sanitizers and MINFER_TEST_QUICK (25 s
  // of the ASan suite otherwise), where a quadratic matcher (~n^2 / 2 steps) still fails both
  // bounds by far.
  const size_t n1 = quick_run() ? 2500 : 10000, n2 = 2 * n1;
  for (const char* name : {"bpe-gpt-2",
                           "bpe-mpt",
                           "bpe-starcoder",
                           "bpe-command-r",
                           "bpe-llama-bpe",
                           "bpe-qwen2",
                           "bpe-falcon",
                           "bpe-bloom",
                           "bpe-viking",
                           "bpe-deepseek-llm",
                           "bpe-deepseek-coder",
                           "bpe-tekken",
                           "bpe-gpt-4o",
                           "bpe-default",
                           "bpe-deepseek-v3",
                           "bpe-spark2_5",
                           "bpe-youtu",
                           "bpe-hunyuan",
                           "bpe-qwen35",
                           "bpe-jais-2",
                           "bpe-seed-coder",
                           "bpe-bailingmoe",
                           "bpe-ufakzeka",
                           "bpe-laguna",
                           "bpe-minicpm5",
                           "bpe-chameleon",
                           "bpe-superbpe",
                           "bpe-tiny_aya",
                           "bpe-granite-embed-multi-97m",
                           "bpe-kimi-k2",
                           "bpe-exaone-moe",
                           "bpe-afmoe",
                           "raw-gemma4",
                           "raw-sarvam-moe"}) {
    auto tok = gguf_fixture(name);
    for (const auto& [what, unit] : kRuns) {
      const std::string label = std::string(name) + ", a run of " + what;
      INFO(label);
      const uint64_t w1 = split_steps(*tok, run_of(unit, n1));
      const uint64_t w2 = split_steps(*tok, run_of(unit, n2));
      CHECK(w2 <= 2 * w1 + 1000);
      CHECK(w2 <= 100 * n2);
    }
  }
}

TEST_CASE("tokenizer: split regex class intersection and \\p{Han}, as Oniguruma") {
  // Expected pieces: HF `tokenizers` (Oniguruma) pre_tokenize_str with Split(..., "isolated").
  auto split = [](const std::string& re, const std::string& text) {
    const json pj = {{"type", "Split"},
                     {"pattern", {{"Regex", re}}},
                     {"behavior", "Isolated"},
                     {"invert", false}};
    return minfer::pre_tokenize(pj.dump(), text);
  };
  using V = std::vector<std::string>;
  CHECK(split("[\\p{L}&&[^\\p{Han}]]+", "ab\u4e2d\u6587cd\u3005x") ==
        V{"ab", "\u4e2d\u6587", "cd", "\u3005", "x"});
  // a negated class negates the whole intersection
  CHECK(split("[^a-z&&[^aeiou]]+", "strength of AI") == V{"str", "e", "ngth", " o", "f", " AI"});
  CHECK(split("[a-z&&[^aeiou]&&[^xyz]]+", "syzygy rhythm") ==
        V{"s", "yzy", "g", "y ", "rh", "y", "thm"});
  // Script=Han: iteration marks, radicals, extension B and compatibility ideographs too
  CHECK(split("[\\p{Han}]+", "\u3005\u3007\u2e80\U00020000x\uf900") ==
        V{"\u3005\u3007\u2e80\U00020000", "x", "\uf900"});
  for (const char* bad : {"[&&a]", "[a&&]", "\\p{Latin}"})
    CHECK_THROWS_AS(split(bad, "a"), minfer::Error);
}

TEST_CASE("tokenizer: GGUF pre-tokenizer splits llama.cpp writes by hand") {
  // Kimi K2: Han runs alone, words of other letters split by case, contractions, digits in threes.
  auto byte_level = [](std::vector<std::string> pieces) {  // GPT-2's byte-to-character mapping
    for (std::string& p : pieces) {
      std::string m;
      for (unsigned char c : p) minfer::unicode::append_utf8(m, minfer::unicode::byte_to_cp()[c]);
      p = m;
    }
    return pieces;
  };
  auto kimi = gguf_fixture("bpe-kimi-k2");
  CHECK(
      kimi->words("HelloWorld \u4e2d\u6587\u5b57and it's 12345") ==
      byte_level({"Hello", "World", " ", "\u4e2d\u6587\u5b57", "and", " it's", " ", "123", "45"}));
  // AFMoE: a digit run's first (length mod 3) digits, then threes; text between runs stays whole
  // as far as this step goes (llama.cpp's unicode_regex_split_custom_afmoe).
  auto afmoe = gguf_fixture("bpe-afmoe");
  CHECK(afmoe->words("1234567") == std::vector<std::string>{"1", "234", "567"});
  CHECK(afmoe->words("123456") == std::vector<std::string>{"123", "456"});
  CHECK(afmoe->words("x12y") == std::vector<std::string>{"x", "12", "y"});
  // EXAONE MoE: letters joined by single spaces are one piece; two spaces end it.
  auto exaone = gguf_fixture("bpe-exaone-moe");
  CHECK(exaone->words("the cat sat  on") == byte_level({"the cat sat", " ", " on"}));
}

TEST_CASE("tokenizer: GGUF BPE on raw UTF-8 (gemma4, granite-embed-multi-311m, sarvam-moe)") {
  for (const char* name : {"raw-gemma4", "raw-granite-embed-multi-311m", "raw-sarvam-moe"}) {
    INFO(name);
    auto tok = gguf_fixture(name);
    // every one adds a BOS: the granite file says add_bos_token = false, and llama.cpp adds one
    // for its Gemma 4 type whatever the file says
    CHECK(tok->added_bos() == 1);
    CHECK(tok->is_special(tok->token_to_id("<|im_end|>")));
    CHECK_FALSE(tok->is_special(tok->token_to_id("<|reserved|>")));
    check_expected(*tok, std::string("gguf/") + name, true);
  }
}

TEST_CASE("tokenizer: GGUF whitespace model (BPE between whitespace, Jina v2 zh)") {
  auto tok = gguf_fixture("raw-whitespace");
  CHECK(tok->special_prefix() == std::vector<int32_t>{tok->token_to_id("<|begin|>")});
  CHECK(tok->special_suffix() == std::vector<int32_t>{tok->token_to_id("<|endoftext|>")});
  check_expected(*tok, "gguf/raw-whitespace", false);
  CHECK(tok->encode("a  b", false) == tok->encode("a b", false));
}

TEST_CASE("tokenizer: GGUF SentencePiece (tokenizer.ggml.model = llama)") {
  auto tok = gguf_fixture("spm");
  CHECK(tok->bos_id() == 1);
  CHECK(tok->eos_id() == 2);
  CHECK(tok->added_bos() == 1);
  CHECK(tok->special_id("unk") == 0);
  CHECK(tok->is_special(0));
  CHECK_FALSE(tok->is_special(tok->token_to_id("<|reserved|>")));  // USER_DEFINED: added, plain
  check_expected(*tok, "gguf/spm", false);
  auto plain = gguf_fixture("spm-noprefix");  // tokenizer.ggml.add_space_prefix = false
  check_expected(*plain, "gguf/spm-noprefix", false);
  CHECK(tok->encode("a", false) != plain->encode("a", false));
}

TEST_CASE("tokenizer: GGUF WordPiece (tokenizer.ggml.model = bert)") {
  auto uncased = gguf_fixture("wordpiece-uncased");
  CHECK(uncased->special_prefix() == std::vector<int32_t>{uncased->token_to_id("[CLS]")});
  CHECK(uncased->special_suffix() == std::vector<int32_t>{uncased->token_to_id("[SEP]")});
  CHECK(uncased->special_id("sep") == uncased->token_to_id("[SEP]"));
  CHECK(uncased->special_id("mask") == uncased->token_to_id("[MASK]"));
  CHECK(uncased->special_id("cls") == uncased->token_to_id("[CLS]"));
  check_expected(*uncased, "gguf/wordpiece-uncased", false);
  auto cased = gguf_fixture("wordpiece-cased");
  CHECK(cased->special_id("cls") == -1);  // not in the file; found by text for the template
  check_expected(*cased, "gguf/wordpiece-cased", false);
  CHECK(uncased->encode("Hello HELLO", false) == uncased->encode("hello hello", false));
  CHECK(cased->encode("Hello HELLO", false) != cased->encode("hello hello", false));
}

TEST_CASE(
    "tokenizer: GGUF pre-tokenizer table, every name loads; unknown names and models refused") {
  // A minimal byte-level vocabulary (the 256 byte symbols, no merges) under each name.
  const std::string dir = (std::filesystem::temp_directory_path() / "minfer-ggtok-table").string();
  std::filesystem::create_directories(dir);
  const auto names = minfer::gguf_pre_tokenizer_types();
  CHECK(names.size() >= 79);
  // raw: the 256 <0xXX> byte tokens instead (the raw-UTF-8 types), and a BOS id (token 1)
  auto write = [&](const std::string& model, const std::string& pre, bool merges = false,
                   bool raw = false, const std::vector<std::string>& extra = {}) {
    // GGUF v3: header, then key/values (string, string array) as in the GGUF spec.
    std::string b;
    auto u32 = [&](uint32_t v) { b.append(reinterpret_cast<const char*>(&v), 4); };
    auto u64 = [&](uint64_t v) { b.append(reinterpret_cast<const char*>(&v), 8); };
    auto str = [&](const std::string& s) {
      u64(s.size());
      b += s;
    };
    std::vector<std::string> toks;
    for (int c = 0; c < 256; ++c) {
      std::string t;
      if (raw)
        t = fmt::format("<0x{:02X}>", c);
      else
        minfer::unicode::append_utf8(t, minfer::unicode::byte_to_cp()[c]);
      toks.push_back(t);
    }
    toks.insert(toks.end(), extra.begin(), extra.end());
    b += "GGUF";
    u32(3);
    u64(0);                                     // tensors
    u64(4 + (merges ? 1 : 0) + (raw ? 1 : 0));  // key/values
    str("general.architecture");
    u32(8);
    str("gpt2");
    if (raw) {
      str("tokenizer.ggml.bos_token_id");
      u32(4);
      u32(1);
    }
    if (merges) {  // an empty list: every byte its own token
      str("tokenizer.ggml.merges");
      u32(9);
      u32(8);
      u64(0);
    }
    str("tokenizer.ggml.model");
    u32(8);
    str(model);
    str("tokenizer.ggml.pre");
    u32(8);
    str(pre);
    str("tokenizer.ggml.tokens");
    u32(9);
    u32(8);
    u64(toks.size());
    for (const auto& t : toks) str(t);
    const std::string path = dir + "/t.gguf";
    std::ofstream(path, std::ios::binary) << b;
    return path;
  };
  const char* const kLowBlock = "\xe2\x96\x81";
  const std::set<std::string> raw_names = {"gemma4", "granite-embed-multi-311m", "sarvam-moe"};
  for (const std::string& n : names) {
    INFO("tokenizer.ggml.pre = ", n);
    const bool raw = raw_names.count(n) != 0;
    // no merges: refused with the key named
    CHECK_THROWS_WITH_AS(Tokenizer::load(write("gpt2", n, false, raw)),
                         doctest::Contains("without tokenizer.ggml.merges"), minfer::Error);
    // with merges: its split compiles and splits, and every byte comes back (raw UTF-8 types:
    // as <0xXX> byte tokens, each space as the three bytes of U+2581)
    auto tok = Tokenizer::load(write("gpt2", n, true, raw));
    const std::string text = "Hello, wörld's 12345 \u4e2d\u6587 \u3072\u3089  \n\n x!";
    const auto ids = tok->encode(text, false);
    const size_t spaces = static_cast<size_t>(std::count(text.begin(), text.end(), ' '));
    CHECK(ids.size() == text.size() + (raw ? 2 * spaces : 0));
    std::string back = text;  // the raw types' decoder maps "\u2581" tokens back to spaces, not
    if (raw)                  // the <0xE2><0x96><0x81> bytes (HF's Replace-before-ByteFallback)
      for (size_t p = 0; (p = back.find(' ', p)) != std::string::npos;)
        back.replace(p, 1, kLowBlock);
    CHECK(tok->decode(ids, false) == back);
  }
  for (const std::string& n : raw_names)
    CHECK(std::find(names.begin(), names.end(), n) != names.end());
  CHECK(Tokenizer::load(write("gemma4", "", true, true))->added_bos() == 1);
  // Gemma 4's newline runs (llama.cpp PR 21343): a run that is a token is that token though no
  // merge builds it; other raw types take the merges (none here: one <0x0A> per newline).
  const std::vector<std::string> nl3 = {"\n\n\n"};
  auto g4 = Tokenizer::load(write("gemma4", "", true, true, nl3));
  CHECK(g4->encode("\n\n\n", false) == std::vector<int32_t>{256});
  CHECK(g4->encode("a\n\n\nb\n\n", false) == std::vector<int32_t>{0x61, 256, 0x62, 10, 10});
  auto sarvam = Tokenizer::load(write("gpt2", "sarvam-moe", true, true, nl3));
  CHECK(sarvam->encode("\n\n\n", false) == std::vector<int32_t>{10, 10, 10});
  CHECK(Tokenizer::load(write("whitespace", "whitespace", true))->encode("a b", false).size() == 2);
  CHECK_THROWS_WITH_AS(Tokenizer::load(write("gpt2", "whitespace", true)),
                       doctest::Contains("only with tokenizer.ggml.model = 'whitespace'"),
                       minfer::Error);
  CHECK_THROWS_WITH_AS(Tokenizer::load(write("gpt2", "no-such-pre")),
                       doctest::Contains("tokenizer.ggml.pre = 'no-such-pre' is not a known"),
                       minfer::Error);
  CHECK_THROWS_WITH_AS(Tokenizer::load(write("rwkv", "default")),
                       doctest::Contains("tokenizer.ggml.model = 'rwkv'"), minfer::Error);
  CHECK_THROWS_WITH_AS(Tokenizer::load(write("llama", "default")),
                       doctest::Contains("without tokenizer.ggml.scores"), minfer::Error);
  std::filesystem::remove_all(dir);
}

TEST_CASE("tokenizer: to_hf_json names a GGUF token that is not valid UTF-8") {
  // A GGUF vocabulary can hold any bytes; tokenizer.json (and HF `tokenizers`) only UTF-8.
  // GGUF v3 with a SentencePiece vocabulary: <unk> <s> </s>, "a", and token 4 = "b\xC3(" (a
  // truncated two-byte sequence).
  std::string b;
  auto u32 = [&](uint32_t v) { b.append(reinterpret_cast<const char*>(&v), 4); };
  auto u64 = [&](uint64_t v) { b.append(reinterpret_cast<const char*>(&v), 8); };
  auto str = [&](const std::string& s) {
    u64(s.size());
    b += s;
  };
  const std::vector<std::string> toks = {"<unk>", "<s>", "</s>", "a", "b\xC3("};
  b += "GGUF";
  u32(3);
  u64(0);  // tensors
  u64(5);  // key/values
  str("general.architecture");
  u32(8);
  str("llama");
  str("tokenizer.ggml.add_bos_token");
  u32(7);  // bool
  b.push_back('\0');
  str("tokenizer.ggml.model");
  u32(8);
  str("llama");
  str("tokenizer.ggml.tokens");
  u32(9);
  u32(8);
  u64(toks.size());
  for (const auto& t : toks) str(t);
  str("tokenizer.ggml.scores");
  u32(9);
  u32(6);
  u64(toks.size());
  for (size_t i = 0; i < toks.size(); ++i) {
    const float f = -static_cast<float>(i);
    b.append(reinterpret_cast<const char*>(&f), 4);
  }
  const auto dir = std::filesystem::temp_directory_path() / "minfer-ggtok-utf8";
  std::filesystem::create_directories(dir);
  const std::string path = (dir / "t.gguf").string();
  { std::ofstream(path, std::ios::binary) << b; }
  auto tok = Tokenizer::load(path);
  CHECK(tok->encode("a", false) == std::vector<int32_t>{3});
  CHECK_THROWS_WITH_AS(tok->to_hf_json(),
                       doctest::Contains("token 4 ('b\\xC3(') is not valid UTF-8"), minfer::Error);
  std::filesystem::remove_all(dir);
}

TEST_CASE("tokenizer: end-of-generation ids are eos plus the special end-of-turn tokens") {
  // synth-llama3 with extra added tokens: <|eot_id|> and <|im_end|> special, <|end|> NOT special
  // (plain text must never stop generation), <|eom_id|> special.
  json j = json::parse(read_file(std::string(kFixtures) + "synth-llama3.tokenizer.json"));
  auto add = [&](int id, const char* text, bool special) {
    j["added_tokens"].push_back({{"id", id},
                                 {"content", text},
                                 {"single_word", false},
                                 {"lstrip", false},
                                 {"rstrip", false},
                                 {"normalized", false},
                                 {"special", special}});
  };
  add(2501, "<|eot_id|>", true);
  add(2502, "<|im_end|>", true);
  add(2503, "<|end|>", false);
  add(2504, "<|eom_id|>", true);
  auto tok = Tokenizer::from_json_string(j.dump(), "synth-llama3 + end-of-turn tokens");
  REQUIRE(tok->eos_id() == 1);  // <|end_of_text|>
  CHECK(tok->eog_ids() == std::vector<int32_t>{1, 2501, 2502, 2504});
  // Without any extra token only EOS ends generation.
  auto plain = Tokenizer::from_json_file(std::string(kFixtures) + "synth-llama3.tokenizer.json");
  CHECK(plain->eog_ids() == std::vector<int32_t>{plain->eos_id()});
}
