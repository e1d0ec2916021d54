// Pipeline stage 5, the post-processor (HF tokenizers/src/processors/*.rs): adds the special
// tokens around an encoded text, e.g. BOS, or [CLS] ... [SEP]. For the single-sequence case
// every supported processor reduces to fixed ids before and after the text, which encode() adds
// when add_special is true.
#pragma once
#include <cstdint>
#include <nlohmann/json.hpp>
#include <vector>

#include "tokenizer/json_reader.h"

namespace minfer {

// Flattens tokenizer.json's "post_processor" object `o` (null: none) into the ids before
// (`prefix`) and after (`suffix`) the text; appends to both. Throws naming the type if it is not
// supported.
void parse_post_processor(const nlohmann::json& o, const JsonReader& r,
                          std::vector<int32_t>& prefix, std::vector<int32_t>& suffix);

}  // namespace minfer
