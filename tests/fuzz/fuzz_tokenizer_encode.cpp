// libFuzzer harness: arbitrary bytes encoded by fixed tokenizers (tests/fixtures/tokenizers: one
// of each model type — byte-level BPE with the Llama-3 and Qwen2 splits, SentencePiece-style BPE
// with byte fallback, Metaspace, WordPiece — and GGUF byte-level BPE with the llama.cpp split
// lists that need the general regex matcher, and the raw-UTF-8 BPE types). The first byte picks the
// tokenizer; the rest is the text. Invalid UTF-8 must be a minfer::Error; valid text must give ids
// in range that decode and stream-decode to the same string. Run from the repository root. See
// docs/fuzzing.md.
#include <memory>
#include <vector>

#include "tests/fuzz/fuzz_util.h"
#include "tokenizer/tokenizer.h"

using namespace minfer;

namespace {
const std::vector<std::unique_ptr<Tokenizer>>& tokenizers() {
  static const auto toks = [] {
    std::vector<std::unique_ptr<Tokenizer>> v;
    for (const char* name :
         {"synth-llama3", "synth-qwen2", "synth-spm", "synth-metaspace", "synth-wordpiece"})
      v.push_back(Tokenizer::from_json_file(std::string("tests/fixtures/tokenizers/") + name +
                                            ".tokenizer.json"));
    // GGUF byte-level BPE whose splits run through SplitRegex: groups, lookaheads with groups,
    // \b, empty-match splits, classes inside groups.
    // Also: class intersection and \p{Han} (Kimi K2), a width-1 group with a lookahead (EXAONE
    // MoE), the digit-group lookahead on \p{N} (AFMoE), raw-UTF-8 BPE with the Gemma 4 newline
    // rule, and BPE over Whitespace pieces with [UNK].
    for (const char* name :
         {"bpe-deepseek-v3", "bpe-youtu", "bpe-chameleon", "bpe-superbpe", "bpe-tiny_aya",
          "bpe-granite-embed-multi-97m", "bpe-bailingmoe", "bpe-kimi-k2", "bpe-exaone-moe",
          "bpe-afmoe", "raw-gemma4", "raw-whitespace"})
      v.push_back(Tokenizer::load(std::string("tests/fixtures/tokenizers/gguf/") + name + ".gguf"));
    return v;
  }();
  return toks;
}
}  // namespace

// Loads the tokenizers before the first input, so that their loading (seconds under ASan on a busy
// machine) is not timed as part of that input (-timeout).
extern "C" int LLVMFuzzerInitialize(int*, char***) {
  (void)tokenizers();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const auto& toks = tokenizers();
  const Tokenizer& tok = *toks[data[0] % toks.size()];
  const std::string text = fuzz::as_string(data + 1, size - 1);
  fuzz::expect_clean([&] {
    const auto ids = tok.encode(text, (data[0] / toks.size()) % 2 == 0);
    for (int32_t id : ids)
      if (id < 0 || id >= tok.vocab_size()) __builtin_trap();
    const std::string whole = tok.decode(ids, false);
    StreamDecoder sd(tok, false);
    std::string streamed;
    for (int32_t id : ids) streamed += sd.push(id);
    streamed += sd.flush();
    if (streamed != whole) __builtin_trap();  // StreamDecoder's documented invariant
    (void)tok.words(text);
  });
  return 0;
}
