// Loading, GGUF: tokenizers stored in GGUF metadata (llama.cpp's tokenizer.ggml.* keys), turned
// into the equivalent tokenizer.json object so that one loader and one pipeline serve both
// (loader_json.h), and to_hf_json() can hand the same object to HF `tokenizers`.
#include <filesystem>
#include <fstream>

#include "engine/error.h"
#include "engine/gguf.h"
#include "tokenizer/loader_json.h"
#include "tokenizer/pretokenize.h"
#include "tokenizer/tokenizer.h"

namespace minfer {

using nlohmann::json;

namespace {

// llama.cpp token types (llama_token_type / gguf TokenType).
enum : int64_t {
  kNormal = 1,
  kUnknown = 2,
  kControl = 3,
  kUserDefined = 4,
  kUnused = 5,
  kByte = 6
};

json byte_level(bool use_regex) {
  return {{"type", "ByteLevel"},
          {"add_prefix_space", false},
          {"trim_offsets", true},
          {"use_regex", use_regex}};
}
json split(const char* regex) {
  return {{"type", "Split"},
          {"pattern", {{"Regex", regex}}},
          {"behavior", "Isolated"},
          {"invert", false}};
}

// tokenizer.ggml.pre -> the pre-tokenizer of the model's tokenizer.json. The names are
// llama.cpp's (llama-vocab.cpp); each group shares one split regex set there.
json pre_tokenizer_for(const std::string& pre, const std::string& origin, bool* ignore_merges) {
  *ignore_merges = false;
  // GPT-2 regex on its own.
  if (pre == "gpt-2" || pre == "default" || pre == "gpt2") return byte_level(true);
  // \p{N} (each digit alone), then the GPT-2 regex: HF's Sequence[Digits(individual_digits),
  // ByteLevel] (SmolLM/SmolLM2, StarCoder, ...).
  if (pre == "smollm" || pre == "starcoder" || pre == "refact" || pre == "codeshell" ||
      pre == "exaone" || pre == "minerva-7b" || pre == "command-r")
    return {{"type", "Sequence"},
            {"pretokenizers",
             json::array({{{"type", "Digits"}, {"individual_digits", true}}, byte_level(true)})}};
  if (pre == "llama3" || pre == "llama-v3" || pre == "llama-bpe" || pre == "falcon3" ||
      pre == "pixtral" || pre == "dbrx" || pre == "smaug-bpe") {
    *ignore_merges = true;  // as in Meta's LLaMA-3 tokenizer.json
    return {{"type", "Sequence"},
            {"pretokenizers", json::array({split(pretok::kLlama3Regex), byte_level(false)})}};
  }
  if (pre == "qwen2" || pre == "deepseek-r1-qwen" || pre == "megrez")
    return {{"type", "Sequence"},
            {"pretokenizers", json::array({split(pretok::kQwen2Regex), byte_level(false)})}};
  throw NotImplemented(fmt::format(
      "{}: GGUF tokenizer.ggml.pre = '{}' (supported: gpt-2, default, smollm, starcoder, refact, "
      "codeshell, exaone, minerva-7b, command-r, llama3, llama-v3, llama-bpe, falcon3, pixtral, "
      "dbrx, "
      "smaug-bpe, qwen2, deepseek-r1-qwen, megrez)",
      origin, pre));
}

json template_processing(const std::vector<std::string>& tokens, int64_t bos, int64_t eos,
                         bool add_bos, bool add_eos, const std::string& origin) {
  json single = json::array(), specials = json::object();
  auto special = [&](int64_t id, const char* what) {
    MINFER_CHECK(
        id >= 0 && static_cast<size_t>(id) < tokens.size(),
        "{}: tokenizer.ggml.add_{}_token is set but tokenizer.ggml.{}_token_id ({}) is not a token",
        origin, what, what, id);
    const std::string& t = tokens[static_cast<size_t>(id)];
    single.push_back({{"SpecialToken", {{"id", t}, {"type_id", 0}}}});
    specials[t] = {{"id", t}, {"ids", json::array({id})}, {"tokens", json::array({t})}};
  };
  if (add_bos) special(bos, "bos");
  single.push_back({{"Sequence", {{"id", "A"}, {"type_id", 0}}}});
  if (add_eos) special(eos, "eos");
  return {{"type", "TemplateProcessing"},
          {"single", single},
          {"pair", single},
          {"special_tokens", specials}};
}

}  // namespace

std::unique_ptr<Tokenizer> Tokenizer::from_gguf(const GgufFile& f) {
  const std::string origin = f.path();
  const std::string model = f.get_str("tokenizer.ggml.model");
  const std::vector<std::string>& tokens = f.get_str_array("tokenizer.ggml.tokens");
  std::vector<int64_t> types;
  if (f.has("tokenizer.ggml.token_type")) {
    types = f.get_int_array("tokenizer.ggml.token_type");
    MINFER_CHECK(types.size() == tokens.size(),
                 "{}: tokenizer.ggml.token_type has {} entries, tokenizer.ggml.tokens has {}",
                 origin, types.size(), tokens.size());
  }
  const int64_t bos = f.get_int_or("tokenizer.ggml.bos_token_id", -1);
  const int64_t eos = f.get_int_or("tokenizer.ggml.eos_token_id", -1);
  auto flag = [&](const char* key, bool def) { return f.has(key) ? f.get_bool(key) : def; };

  json j = json::object();
  j["version"] = "1.0";
  j["truncation"] = nullptr;
  j["padding"] = nullptr;
  json added = json::array();
  for (size_t i = 0; i < types.size(); ++i) {
    if (types[i] != kControl && types[i] != kUserDefined) continue;
    added.push_back({{"id", i},
                     {"content", tokens[i]},
                     {"single_word", false},
                     {"lstrip", false},
                     {"rstrip", false},
                     {"normalized", false},
                     {"special", types[i] == kControl}});
  }
  j["added_tokens"] = added;
  json vocab = json::object();
  for (size_t i = 0; i < tokens.size(); ++i) {
    if (vocab.contains(tokens[i])) continue;  // duplicates: HF keeps one id per string
    vocab[tokens[i]] = i;
  }

  if (model == "gpt2") {
    bool ignore_merges = false;
    j["normalizer"] = nullptr;
    j["pre_tokenizer"] =
        pre_tokenizer_for(f.get_str_or("tokenizer.ggml.pre", "default"), origin, &ignore_merges);
    const bool add_bos = flag("tokenizer.ggml.add_bos_token", false);
    const bool add_eos = flag("tokenizer.ggml.add_eos_token", false);
    j["post_processor"] = (add_bos || add_eos)
                              ? template_processing(tokens, bos, eos, add_bos, add_eos, origin)
                              : json{{"type", "ByteLevel"},
                                     {"add_prefix_space", true},
                                     {"trim_offsets", false},
                                     {"use_regex", true}};
    j["decoder"] = {{"type", "ByteLevel"},
                    {"add_prefix_space", true},
                    {"trim_offsets", true},
                    {"use_regex", true}};
    j["model"] = {{"type", "BPE"},
                  {"dropout", nullptr},
                  {"unk_token", nullptr},
                  {"continuing_subword_prefix", nullptr},
                  {"end_of_word_suffix", nullptr},
                  {"fuse_unk", false},
                  {"byte_fallback", false},
                  {"ignore_merges", ignore_merges},
                  {"vocab", std::move(vocab)},
                  {"merges", f.get_str_array("tokenizer.ggml.merges")}};
  } else if (model == "llama") {
    throw NotImplemented(fmt::format(
        "{}: SentencePiece-style GGUF tokenizer (tokenizer.ggml.model = 'llama'); load the model's "
        "tokenizer.json instead",
        origin));
  } else {
    throw NotImplemented(
        fmt::format("{}: GGUF tokenizer.ggml.model = '{}' (supported: gpt2)", origin, model));
  }

  TokenizerExtras ex;
  ex.chat_template = f.get_str_or("tokenizer.chat_template", "");
  ex.bos_id = static_cast<int32_t>(bos);
  ex.eos_id = static_cast<int32_t>(eos);
  return tokenizer_from_json(j, origin, ex);
}

std::unique_ptr<Tokenizer> Tokenizer::load(const std::string& path) {
  namespace fs = std::filesystem;
  MINFER_CHECK(fs::exists(path), "tokenizer: '{}' does not exist", path);
  if (fs::is_directory(path)) {
    fs::path tj = fs::path(path) / "tokenizer.json";
    if (fs::exists(tj)) return from_json_file(tj.string());
    std::vector<fs::path> ggufs;
    for (const auto& e : fs::directory_iterator(path))
      if (e.path().extension() == ".gguf") ggufs.push_back(e.path());
    MINFER_CHECK(ggufs.size() == 1,
                 "tokenizer: folder '{}' has no tokenizer.json and {} .gguf files (need one)", path,
                 ggufs.size());
    return load(ggufs[0].string());
  }
  char magic[4] = {0, 0, 0, 0};
  {
    std::ifstream in(path, std::ios::binary);
    in.read(magic, 4);
  }
  if (std::string_view(magic, 4) == "GGUF") {
    auto g = GgufFile::open(path);
    return from_gguf(*g);
  }
  return from_json_file(path);
}

}  // namespace minfer
