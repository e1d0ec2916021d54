// Loading: tokenizer.json (plus tokenizer_config.json beside it) into a Tokenizer. Each stage
// parses its own object (added_tokens.cpp, normalizers.cpp, pretokenize.cpp, models.cpp,
// post_processor.cpp, decoders.cpp); this file reads the files, runs the stage parsers in order
// and derives the id table, the added-token matchers and BOS/EOS.
#include "tokenizer/loader_json.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <utility>

#include "engine/error.h"
#include "engine/json_text.h"
#include "tokenizer/json_reader.h"
#include "tokenizer/post_processor.h"
#include "tokenizer/tokenizer_impl.h"

namespace minfer {

using nlohmann::json;

std::unique_ptr<Tokenizer> tokenizer_from_json(const json& j, const std::string& origin,
                                               const TokenizerExtras& extras) {
  JsonReader r{origin};
  if (!j.is_object()) r.fail("tokenizer.json should be a JSON object");
  auto impl = std::make_unique<Tokenizer::Impl>();
  impl->origin = origin;
  impl->source = j;
  impl->chat_template = extras.chat_template;

  // ---- model ----
  impl->model = parse_model(r.field(j, "model", "tokenizer.json"), r);
  if (extras.bpe_whole_newline_words) {
    if (!impl->model.bpe) r.fail("the whole-newline-words rule applies to BPE models only");
    impl->model.bpe->set_whole_newline_words(true);
  }
  const Vocab& mv = impl->model.vocab();

  // ---- components ----
  parse_normalizer(j.value("normalizer", json()), r, impl->normalizers);
  parse_pre_tokenizer(j.value("pre_tokenizer", json()), r, impl->pretoks);
  parse_decoder(j.value("decoder", json()), r, impl->decoders);
  for (const PreTokenizer& p : impl->pretoks)
    if (p.kind == PreTokenizer::Kind::ByteLevel) impl->byte_level_bpe = true;

  // ---- vocabulary by id, added tokens ----
  int64_t max_id = -1;
  for (const auto& [tok, id] : mv) max_id = std::max<int64_t>(max_id, id);
  if (j.contains("added_tokens") && !j.at("added_tokens").is_null()) {
    for (const json& a : r.array(j, "added_tokens", "tokenizer.json")) {
      AddedToken t = parse_added_token(a, r);
      max_id = std::max<int64_t>(max_id, t.id);
      impl->added.push_back(std::move(t));
    }
  }
  impl->id_to_tok.assign(static_cast<size_t>(max_id + 1), std::string());
  impl->special.assign(static_cast<size_t>(max_id + 1), 0);
  for (const auto& [tok, id] : mv) impl->id_to_tok[static_cast<size_t>(id)] = tok;
  for (const AddedToken& t : impl->added) {
    impl->id_to_tok[static_cast<size_t>(t.id)] = t.content;
    impl->special[static_cast<size_t>(t.id)] = t.special;
    impl->added_by_content[t.content] = t.id;
  }
  // Longest first is irrelevant (the matcher picks the longest); keep file order.
  for (const AddedToken& t : impl->added) {
    if (t.normalized && !impl->normalizers.empty())
      impl->norm_matcher.add(normalize(impl->normalizers, t.content), &t);
    else if (t.normalized)
      impl->norm_matcher.add(t.content, &t);
    else
      impl->raw_matcher.add(t.content, &t);
  }

  parse_post_processor(j.value("post_processor", json()), r, impl->prefix, impl->suffix);
  for (int32_t id : impl->prefix)
    if (id < 0 || id > max_id)
      r.fail(fmt::format("post_processor uses token id {} outside the vocabulary", id));
  for (int32_t id : impl->suffix)
    if (id < 0 || id > max_id)
      r.fail(fmt::format("post_processor uses token id {} outside the vocabulary", id));

  // ---- bos / eos ----
  auto lookup = [&](std::string_view s) -> int32_t {
    auto it = impl->added_by_content.find(s);
    if (it != impl->added_by_content.end()) return it->second;
    auto jt = mv.find(s);
    return jt == mv.end() ? -1 : jt->second;
  };
  impl->bos = extras.bos_id;
  impl->roles = extras.roles;
  impl->eos = extras.eos_id;
  if (impl->bos == -2)
    impl->bos = (!impl->model.wordpiece && impl->prefix.size() == 1) ? impl->prefix[0] : -1;
  if (impl->eos == -2) {
    impl->eos = -1;
    if (!impl->model.wordpiece)
      for (const char* name :
           {"</s>", "<|endoftext|>", "<|end_of_text|>", "<|eot_id|>", "<|im_end|>", "<eos>"})
        if (int32_t id = lookup(name); id >= 0) {
          impl->eos = id;
          break;
        }
  }
  // transformers' LlamaTokenizerFast, CodeLlamaTokenizerFast and GemmaTokenizerFast rebuild the
  // post-processor from tokenizer_config.json's add_bos_token (default true) and add_eos_token
  // (default false) in update_post_processor(): "<bos> $A <eos>"; the other classes keep
  // tokenizer.json's post-processor and ignore those keys.
  static const char* kRebuilds[] = {"LlamaTokenizer",     "LlamaTokenizerFast",
                                    "CodeLlamaTokenizer", "CodeLlamaTokenizerFast",
                                    "GemmaTokenizer",     "GemmaTokenizerFast"};
  if (std::find(std::begin(kRebuilds), std::end(kRebuilds), extras.tokenizer_class) !=
      std::end(kRebuilds)) {
    const bool add_bos = extras.add_bos_token != 0, add_eos = extras.add_eos_token == 1;
    if (add_bos && impl->bos < 0)
      r.fail(
          fmt::format("tokenizer_config.json: {} adds BOS (add_bos_token) but bos_token is not "
                      "in the vocabulary",
                      extras.tokenizer_class));
    if (add_eos && impl->eos < 0)
      r.fail(
          fmt::format("tokenizer_config.json: {} adds EOS (add_eos_token) but eos_token is not "
                      "in the vocabulary",
                      extras.tokenizer_class));
    impl->prefix.clear();
    impl->suffix.clear();
    if (add_bos) impl->prefix.push_back(impl->bos);
    if (add_eos) impl->suffix.push_back(impl->eos);
  }
  return make_tokenizer(std::move(impl));
}

namespace {

std::string read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  MINFER_CHECK(f.good(), "cannot open '{}'", path);
  std::ostringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

json parse_json(const std::string& text, const std::string& origin) {
  return parse_json_text(text, origin);
}

// tokenizer_config.json: chat_template, bos_token, eos_token (strings or {"content": ...}).
void read_config(const std::string& dir, const json& tok_json, TokenizerExtras& ex) {
  std::filesystem::path p = std::filesystem::path(dir) / "tokenizer_config.json";
  if (!std::filesystem::exists(p)) return;
  json c = parse_json(read_file(p.string()), p.string());
  if (c.contains("chat_template")) {
    const json& t = c.at("chat_template");
    MINFER_CHECK(t.is_string() || t.is_array() || t.is_null(),
                 "{}: 'chat_template' must be a string or a list of named templates, found {}",
                 p.string(), t.type_name());
    if (t.is_string()) {
      ex.chat_template = t.get<std::string>();
    } else if (t.is_array()) {
      // [{"name": "default", "template": ...}, {"name": "tool_use", ...}]: transformers renders
      // "default" (or the only entry) and refuses to choose among several; so do we, by a
      // template that raises the reason when chat is used (loading for plain text still works).
      std::string names, dflt, only;
      for (const json& e : t) {
        MINFER_CHECK(e.is_object() && e.contains("name") && e.at("name").is_string() &&
                         e.contains("template") && e.at("template").is_string(),
                     "{}: each 'chat_template' list entry must be {{\"name\": string, "
                     "\"template\": string}}",
                     p.string());
        const std::string name = e.at("name").get<std::string>();
        if (name == "default") dflt = e.at("template").get<std::string>();
        only = e.at("template").get<std::string>();
        for (char ch : name)
          if (ch != '"' && ch != '\\' && ch != '{' && ch != '}') names += ch;
        names += ' ';
      }
      if (!dflt.empty())
        ex.chat_template = dflt;
      else if (t.size() == 1)
        ex.chat_template = only;
      else if (!t.empty())
        ex.chat_template = fmt::format(
            "{{{{ raise_exception(\"{} has {} named chat templates ({}) and none is named "
            "default; refusing to guess\") }}}}",
            p.filename().string(), t.size(),
            names.empty() ? names : names.substr(0, names.size() - 1));
    }
  }
  auto token_id = [&](const char* key) -> int32_t {
    if (!c.contains(key) || c.at(key).is_null()) return -1;
    const json& v = c.at(key);
    std::string s;
    MINFER_CHECK(json_get(v, &s) ||
                     (v.is_object() && v.contains("content") && json_get(v.at("content"), &s)),
                 "{}: '{}' should be a string or {{\"content\": string}}, found {}", p.string(),
                 key, v.dump());
    int32_t id = -1;
    if (tok_json.contains("added_tokens") && tok_json.at("added_tokens").is_array())
      for (const json& a : tok_json.at("added_tokens"))
        if (a.is_object() && a.contains("content") && a.at("content") == s && a.contains("id") &&
            json_get(a.at("id"), &id))
          return id;
    if (tok_json.contains("model") && tok_json.at("model").is_object() &&
        tok_json.at("model").contains("vocab")) {
      const json& vocab = tok_json.at("model").at("vocab");
      if (vocab.is_object() && vocab.contains(s) && json_get(vocab.at(s), &id)) return id;
    }
    return -1;
  };
  ex.bos_id = token_id("bos_token");
  ex.eos_id = token_id("eos_token");
  auto flag = [&](const char* key) -> int {
    if (!c.contains(key) || c.at(key).is_null()) return -1;
    MINFER_CHECK(c.at(key).is_boolean(), "{}: '{}' should be true or false, found {}", p.string(),
                 key, c.at(key).dump());
    return c.at(key).get<bool>() ? 1 : 0;
  };
  ex.add_bos_token = flag("add_bos_token");
  ex.add_eos_token = flag("add_eos_token");
  if (c.contains("tokenizer_class") && c.at("tokenizer_class").is_string())
    ex.tokenizer_class = c.at("tokenizer_class").get<std::string>();
}

}  // namespace

std::unique_ptr<Tokenizer> Tokenizer::from_json_file(const std::string& path) {
  json j = parse_json(read_file(path), path);
  return with_json_origin(path, [&] {
    TokenizerExtras ex;
    if (j.is_object() && j.contains("model"))
      read_config(std::filesystem::path(path).parent_path().string(), j, ex);
    return tokenizer_from_json(j, path, ex);
  });
}

std::unique_ptr<Tokenizer> Tokenizer::from_json_string(const std::string& text,
                                                       const std::string& origin) {
  const json j = parse_json(text, origin);
  return with_json_origin(origin,
                          [&] { return tokenizer_from_json(j, origin, TokenizerExtras{}); });
}

// Runs the pre-tokenizer through a tokenizer whose model is an empty WordLevel: words() stops
// before the model.
std::vector<std::string> pre_tokenize(const std::string& pre_tokenizer_json,
                                      std::string_view text) {
  json j = json::object();
  j["model"] = {{"type", "WordLevel"}, {"vocab", json::object()}, {"unk_token", nullptr}};
  j["pre_tokenizer"] = parse_json(pre_tokenizer_json, "pre_tokenizer");
  auto t = tokenizer_from_json(j, "pre_tokenizer", TokenizerExtras{});
  return t->words(text);
}

}  // namespace minfer
