// Internal: the state behind minfer::Tokenizer, one field group per pipeline stage. loader_json.cpp
// fills it from tokenizer.json; tokenizer.cpp runs it (encode, decode) and answers the public API.
#pragma once
#include <cstdint>
#include <memory>
#include <nlohmann/json.hpp>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "tokenizer/added_tokens.h"
#include "tokenizer/decoders.h"
#include "tokenizer/models.h"
#include "tokenizer/normalizers.h"
#include "tokenizer/pretokenize.h"
#include "tokenizer/tokenizer.h"

namespace minfer {

struct Tokenizer::Impl {
  std::string origin;
  nlohmann::json source;  // the tokenizer.json this was built from (to_hf_json)

  // 1. added tokens
  std::vector<AddedToken> added;
  AddedMatcher raw_matcher, norm_matcher;  // normalized: false / true
  Vocab added_by_content;
  // 2-4. normalizer, pre-tokenizer, model
  std::vector<Normalizer> normalizers;
  std::vector<PreTokenizer> pretoks;
  Model model;
  bool byte_level_bpe = false;  // a ByteLevel pre-tokenizer (for describe())
  // 5. post-processor: the ids around the text
  std::vector<int32_t> prefix, suffix;
  // the way back
  std::vector<Decoder> decoders;

  std::vector<std::string> id_to_tok;  // model vocab and added tokens
  std::vector<uint8_t> special;        // per id
  int32_t bos = -1, eos = -1;
  std::vector<std::pair<std::string, int32_t>> roles;  // Tokenizer::special_id, besides bos/eos
  std::string chat_template;

  // Appends the ids of `text` to `out`, or with `words` set, the words the model would see.
  void encode(std::string_view text, bool add_special, std::vector<int32_t>& out,
              std::vector<std::string>* words) const;
  std::string decode(std::span<const int32_t> ids, bool skip_special) const;

 private:
  void segment(std::string_view seg, bool at_start, PreTokScratch& scratch, WordSink sink,
               std::vector<int32_t>& out, std::vector<std::string>* words) const;
};

// The one way to construct a Tokenizer (its constructor is private).
std::unique_ptr<Tokenizer> make_tokenizer(std::unique_ptr<Tokenizer::Impl> impl);

}  // namespace minfer
