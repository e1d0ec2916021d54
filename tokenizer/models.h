// Pipeline stage 4, the model (HF tokenizers/src/models/*.rs): tokenizes one pre-tokenized
// word into ids. BPE (byte-level and SentencePiece-style) is in bpe.h; WordPiece (BERT's greedy
// longest match with "##") and WordLevel (a plain vocabulary lookup) are here, with the Model
// that holds whichever tokenizer.json names.
#pragma once
#include <cstdint>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <vector>

#include "tokenizer/bpe.h"
#include "tokenizer/json_reader.h"

namespace minfer {

// models/wordpiece/mod.rs
class WordPieceModel {
 public:
  WordPieceModel(Vocab vocab, std::string unk_token, std::string prefix, size_t max_chars,
                 const std::string& origin);
  void tokenize(std::string_view word, std::vector<int32_t>& out) const;
  const Vocab& vocab() const { return vocab_; }

 private:
  Vocab vocab_;
  std::string prefix_;
  size_t max_chars_;
  int32_t unk_id_;
  size_t max_token_bytes_ = 0;
};

// One of BPE, WordPiece, WordLevel.
struct Model {
  std::string type;  // "BPE", "WordPiece" or "WordLevel"
  std::string origin;
  std::unique_ptr<BpeModel> bpe;
  std::unique_ptr<WordPieceModel> wordpiece;
  Vocab wordlevel;  // WordLevel: the vocabulary is the whole model (models/wordlevel/mod.rs)
  int32_t wordlevel_unk = -1;

  const Vocab& vocab() const {
    return bpe ? bpe->vocab() : wordpiece ? wordpiece->vocab() : wordlevel;
  }
  // Appends the ids of one pre-tokenized word.
  void tokenize(std::string_view word, std::vector<int32_t>& out) const;
};

// tokenizer.json's "model" object; the type is inferred from the fields when "type" is absent.
// Throws for unsupported types and options (e.g. BPE dropout).
Model parse_model(const nlohmann::json& m, const JsonReader& r);

}  // namespace minfer
