// Internal: shared between tokenizer.cpp (the pipeline and tokenizer.json loading) and
// tokenizer_gguf.cpp (GGUF metadata -> an equivalent tokenizer.json object).
#pragma once
#include <memory>
#include <nlohmann/json.hpp>
#include <string>

#include "tokenizer/tokenizer.h"

namespace minfer {

struct TokenizerExtras {
  std::string chat_template;
  int32_t bos_id = -2;  // -2: not given, derive from the tokenizer
  int32_t eos_id = -2;
};

// Builds a tokenizer from a parsed tokenizer.json; `origin` names it in errors.
std::unique_ptr<Tokenizer> tokenizer_from_json(const nlohmann::json& j, const std::string& origin,
                                               const TokenizerExtras& extras);

}  // namespace minfer
