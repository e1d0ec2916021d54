// Pipeline stage 1, added tokens (HF tokenizers/src/tokenizer/added_vocabulary.rs): special and
// added tokens are found in the text before anything else runs, and a matched token is never
// split. Tokens with normalized: false are matched in the raw text, the others in the
// normalized text.
#pragma once
#include <array>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <vector>

#include "tokenizer/json_reader.h"

namespace minfer {

struct AddedToken {
  int32_t id = -1;
  std::string content;
  bool special = false, normalized = false, lstrip = false, rstrip = false, single_word = false;
};

// One entry of tokenizer.json's "added_tokens"; "normalized" defaults to !special as in HF.
AddedToken parse_added_token(const nlohmann::json& a, const JsonReader& r);

// Leftmost-longest matching of added tokens (HF uses aho-corasick with MatchKind::LeftmostLongest).
struct AddedMatcher {
  std::vector<std::string> patterns;
  std::vector<const AddedToken*> tokens;
  std::array<std::vector<uint32_t>, 256> by_first;  // pattern indices by first byte

  bool empty() const { return patterns.empty(); }
  void add(std::string pattern, const AddedToken* t) {
    if (pattern.empty()) return;
    by_first[static_cast<uint8_t>(pattern[0])].push_back(static_cast<uint32_t>(patterns.size()));
    patterns.push_back(std::move(pattern));
    tokens.push_back(t);
  }
  struct Seg {
    uint32_t begin, end;
    int32_t id;  // -1: text
  };
  // AddedVocabulary::find_matches: token segments and the text between them (non-empty).
  void split(std::string_view s, std::vector<Seg>& out) const;
};

}  // namespace minfer
