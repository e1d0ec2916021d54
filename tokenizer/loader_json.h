// Internal: building a Tokenizer from a parsed tokenizer.json (loader_json.cpp). The GGUF loader
// (tokenizer_gguf.cpp) turns GGUF metadata into the same JSON object and comes through here too.
#pragma once
#include <cstdint>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

#include "tokenizer/tokenizer.h"

namespace minfer {

// What tokenizer.json itself does not say: from tokenizer_config.json or GGUF metadata.
struct TokenizerExtras {
  std::string chat_template;
  int32_t bos_id = -2;  // -2: not given, derive from the tokenizer
  int32_t eos_id = -2;
  // tokenizer_config.json tokenizer_class, add_bos_token / add_eos_token (-1: not given).
  std::string tokenizer_class;
  int add_bos_token = -1, add_eos_token = -1;
  // Other special-token ids by role ("unk", "sep", "pad", "cls", "mask", "eot", "eom"; -1: none),
  // from GGUF tokenizer.ggml.<role>_token_id (Tokenizer::special_id).
  std::vector<std::pair<std::string, int32_t>> roles;
  // BPE: a pre-tokenized word made only of newlines that is a token is that token, whatever the
  // merges say (llama.cpp's Gemma 4 rule; no tokenizer.json field says this).
  bool bpe_whole_newline_words = false;
};

// Builds a tokenizer from a parsed tokenizer.json; `origin` names it in errors.
std::unique_ptr<Tokenizer> tokenizer_from_json(const nlohmann::json& j, const std::string& origin,
                                               const TokenizerExtras& extras);

}  // namespace minfer
