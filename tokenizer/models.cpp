// Pipeline stage 4, the model: WordPiece, WordLevel, and tokenizer.json parsing of the "model"
// object for all three models (BPE itself is in bpe.cpp).
#include "tokenizer/models.h"

#include <algorithm>
#include <utility>

#include "engine/error.h"
#include "tokenizer/unicode.h"

namespace minfer {

using nlohmann::json;

WordPieceModel::WordPieceModel(Vocab vocab, std::string unk_token, std::string prefix,
                               size_t max_chars, const std::string& origin)
    : vocab_(std::move(vocab)), prefix_(std::move(prefix)), max_chars_(max_chars) {
  auto it = vocab_.find(unk_token);
  MINFER_CHECK(it != vocab_.end(), "{}: WordPiece unk_token '{}' is not in the vocabulary", origin,
               unk_token);
  unk_id_ = it->second;
  for (const auto& [tok, id] : vocab_) max_token_bytes_ = std::max(max_token_bytes_, tok.size());
}

void WordPieceModel::tokenize(std::string_view w, std::vector<int32_t>& out) const {
  if (w.empty()) return;
  if (unicode::count_chars(w) > max_chars_) {
    out.push_back(unk_id_);
    return;
  }
  size_t mark = out.size();
  std::string key;
  size_t start = 0;
  while (start < w.size()) {
    size_t end = std::min(w.size(), start + max_token_bytes_);
    while (end > start && end < w.size() && (static_cast<uint8_t>(w[end]) & 0xC0) == 0x80)
      --end;  // back to a character boundary
    int32_t found = -1;
    while (end > start) {
      key.clear();
      if (start > 0) key += prefix_;
      key.append(w.substr(start, end - start));
      auto it = vocab_.find(key);
      if (it != vocab_.end()) {
        found = it->second;
        break;
      }
      do --end;
      while (end > start && (static_cast<uint8_t>(w[end]) & 0xC0) == 0x80);
    }
    if (found < 0) {
      out.resize(mark);
      out.push_back(unk_id_);
      return;
    }
    out.push_back(found);
    start = end;
  }
}

void Model::tokenize(std::string_view w, std::vector<int32_t>& out) const {
  if (bpe) {
    bpe->tokenize(w, out);
  } else if (wordpiece) {
    wordpiece->tokenize(w, out);
  } else {
    auto it = wordlevel.find(w);
    if (it != wordlevel.end()) {
      out.push_back(it->second);
    } else {
      MINFER_CHECK(wordlevel_unk >= 0, "{}: WordLevel model has no unk_token for '{}'", origin, w);
      out.push_back(wordlevel_unk);
    }
  }
}

namespace {

Vocab parse_vocab(const json& v, const JsonReader& r) {
  if (!v.is_object())
    r.fail(fmt::format("model.vocab should be an object {{token: id}}, found {}", v.type_name()));
  Vocab vocab;
  vocab.reserve(v.size());
  for (auto it = v.begin(); it != v.end(); ++it) {
    int32_t id = -1;
    if (!json_get(it.value(), &id) || id < 0)
      r.fail(fmt::format("model.vocab['{}'] should be an integer id in [0, 2^31), found {}",
                         it.key(), it.value().dump()));
    vocab.emplace(it.key(), id);
  }
  return vocab;
}

}  // namespace

Model parse_model(const json& m, const JsonReader& r) {
  Model model;
  model.origin = r.origin;
  std::string mt = r.str_or(m, "type", "");
  if (mt.empty())
    mt = m.contains("merges") ? "BPE" : m.contains("continuing_subword_prefix") ? "WordPiece" : "";
  model.type = mt;
  if (mt == "BPE") {
    double dropout = 0;
    if (m.contains("dropout") && !m.at("dropout").is_null() && !json_get(m.at("dropout"), &dropout))
      r.fail(fmt::format("model.dropout should be a number, found {}", m.at("dropout").dump()));
    if (dropout > 0.0)
      r.fail(fmt::format("BPE dropout {} is not supported (inference tokenizes deterministically)",
                         m.at("dropout").dump()));
    BpeOptions opt;
    if (m.contains("unk_token") && !m.at("unk_token").is_null())
      opt.unk_token = r.str(m, "unk_token", "model");
    opt.continuing_subword_prefix = r.str_or(m, "continuing_subword_prefix", "");
    opt.end_of_word_suffix = r.str_or(m, "end_of_word_suffix", "");
    opt.fuse_unk = r.boolean(m, "fuse_unk", false);
    opt.byte_fallback = r.boolean(m, "byte_fallback", false);
    opt.ignore_merges = r.boolean(m, "ignore_merges", false);
    std::vector<std::pair<std::string, std::string>> merges;
    const json& mj = r.array(m, "merges", "model");
    merges.reserve(mj.size());
    for (size_t i = 0; i < mj.size(); ++i) {
      const json& e = mj[i];
      if (e.is_string()) {  // "a b"
        const std::string& s = e.get_ref<const std::string&>();
        size_t sp = s.find(' ');
        if (sp == std::string::npos || s.find(' ', sp + 1) != std::string::npos)
          r.fail(fmt::format("model.merges[{}] = '{}' should be two tokens separated by one space",
                             i, s));
        merges.emplace_back(s.substr(0, sp), s.substr(sp + 1));
      } else if (e.is_array() && e.size() == 2 && e[0].is_string() &&
                 e[1].is_string()) {  // ["a","b"]
        merges.emplace_back(e[0].get<std::string>(), e[1].get<std::string>());
      } else {
        r.fail(fmt::format("model.merges[{}] should be \"a b\" or [\"a\", \"b\"], found {}", i,
                           e.dump()));
      }
    }
    model.bpe = std::make_unique<BpeModel>(parse_vocab(r.field(m, "vocab", "model"), r), merges,
                                           opt, r.origin);
  } else if (mt == "WordPiece") {
    model.wordpiece = std::make_unique<WordPieceModel>(
        parse_vocab(r.field(m, "vocab", "model"), r), r.str_or(m, "unk_token", "[UNK]"),
        r.str_or(m, "continuing_subword_prefix", "##"),
        static_cast<size_t>(r.integer(m, "max_input_chars_per_word", 100)), r.origin);
  } else if (mt == "WordLevel") {
    model.wordlevel = parse_vocab(r.field(m, "vocab", "model"), r);
    std::string unk = r.str_or(m, "unk_token", "");
    if (!unk.empty()) {
      auto it = model.wordlevel.find(unk);
      if (it == model.wordlevel.end())
        r.fail(fmt::format("WordLevel unk_token '{}' is not in the vocabulary", unk));
      model.wordlevel_unk = it->second;
    }
  } else {
    r.fail(
        fmt::format("model type '{}' is not supported (supported: BPE, WordPiece, WordLevel)", mt));
  }
  return model;
}

}  // namespace minfer
