// Pipeline stage 2, the normalizer (HF tokenizers/src/normalizers/*.rs): rewrites the text
// before it is split into words, e.g. BERT's cleanup and lowercasing, NFC, or SentencePiece's
// "▁" for spaces.
#pragma once
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <vector>

#include "tokenizer/json_reader.h"

namespace minfer {

struct Normalizer {
  enum class Kind {
    Bert,
    Lowercase,
    Nfc,
    Nfd,
    Nfkc,
    Nfkd,
    StripAccents,
    Strip,
    Replace,
    Prepend,
    ByteLevel
  };
  Kind kind = Kind::Lowercase;
  bool clean_text = false, chinese = false, strip_accents = false, lower = false;  // Bert
  bool left = false, right = false;                                                // Strip
  std::string pattern, content;  // Replace, Prepend
};

// Appends the normalizers that tokenizer.json's "normalizer" object `o` describes (a Sequence
// is flattened; null adds none). Throws naming the type if it is not supported.
void parse_normalizer(const nlohmann::json& o, const JsonReader& r, std::vector<Normalizer>& out);

// Runs the normalizers in order.
std::string normalize(const std::vector<Normalizer>& normalizers, std::string_view s);

// Every occurrence of `from` replaced by `to`, left to right (empty `from`: s unchanged). The
// Replace normalizer with a String pattern; HF reuses it as the Replace decoder, and Metaspace
// replaces spaces with it.
std::string replace_all(std::string_view s, std::string_view from, std::string_view to);

}  // namespace minfer
