// Pipeline stage 3, the pre-tokenizer (HF tokenizers/src/pre_tokenizers/*.rs): splits the
// normalized text into the words the model tokenizes one at a time.
//
// The components (ByteLevel, Split, Digits, Whitespace, BertPreTokenizer, Metaspace, ...) run as
// a chain: each piece one pre-tokenizer produces goes through the next, and what leaves the last
// is a word. Their building blocks, in namespace pretok: hand-written matchers equivalent to the
// split regexes that byte-level BPE tokenizers use (no regex engine at run time), and Hugging
// Face's SplitDelimiterBehavior applied to a list of matches. Each matcher returns the
// non-overlapping, leftmost-first matches that Oniguruma (the regex engine behind HF
// `tokenizers`) finds for the pattern, as byte spans of the input.
#pragma once
#include <cstdint>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "tokenizer/json_reader.h"
#include "tokenizer/split_regex.h"

namespace minfer::pretok {

using Span = std::pair<uint32_t, uint32_t>;  // [begin, end) byte offsets
using Spans = std::vector<Span>;

// GPT-2: 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
void find_gpt2(std::string_view s, Spans& out);
// LLaMA-3 (max_digits = 3) and Qwen2 (max_digits = 1):
// (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,max}| ?[^\s\p{L}\p{N}]+[\r\n]*|
// \s*[\r\n]+|\s+(?!\S)|\s+
void find_llama3(std::string_view s, int max_digits, Spans& out);
// \p{N}{1,max}  (max <= 0: \p{N}+)
void find_digits_runs(std::string_view s, int max_digits, Spans& out);
// Oniguruma \w+|[^\w\s]+  (the Whitespace pre-tokenizer's pattern)
void find_words_and_symbols(std::string_view s, Spans& out);
// Every occurrence of a literal, left to right, non-overlapping (empty needle: none).
void find_literal(std::string_view s, std::string_view needle, Spans& out);

// The regex patterns above, spelled as they appear in tokenizer.json files. Returns the matcher
// id for a Split pattern, or -1 if the pattern is not one we implement.
enum class Pattern { Gpt2, Llama3, Qwen2, Digits3, Digits1, DigitsAll, WordsSymbols };
int pattern_from_regex(std::string_view regex);
void find_pattern(Pattern p, std::string_view s, Spans& out);
extern const char* const kGpt2Regex;
extern const char* const kLlama3Regex;
extern const char* const kQwen2Regex;

// SplitDelimiterBehavior (tokenizers/src/tokenizer/normalizer.rs).
enum class Behavior { Removed, Isolated, MergedWithPrevious, MergedWithNext, Contiguous };
// Turns `matches` (sorted, non-overlapping) of a string of length n into the pieces that HF's
// NormalizedString::split returns for the behavior (with `invert`, the matches are the content
// and the gaps the delimiters). Empty pieces are dropped.
void split_by(uint32_t n, const Spans& matches, bool invert, Behavior b, Spans& pieces);

}  // namespace minfer::pretok

namespace minfer {

// Metaspace's prepend_scheme: where "▁" goes in front of a word (the decoder reads it too).
enum class Prepend { Always, First, Never };

struct PreTokenizer {
  enum class Kind {
    ByteLevel,
    Split,
    Digits,
    Whitespace,
    WhitespaceSplit,
    Bert,
    Metaspace,
    Punctuation,
    CharDelimiter
  };
  Kind kind = Kind::Bert;
  bool add_prefix_space = false, use_regex = true;  // ByteLevel
  int pattern = -1;  // Split: pretok::Pattern, -1 = literal or `regex`
  std::shared_ptr<const pretok::SplitRegex> regex;         // Split: other regex patterns
  std::string literal;                                     // Split literal
  pretok::Behavior behavior = pretok::Behavior::Isolated;  // Split, Punctuation
  bool invert = false;                                     // Split
  bool individual = false;                                 // Digits
  std::string replacement;                                 // Metaspace (UTF-8 of one char)
  Prepend prepend = Prepend::Always;                       // Metaspace
  bool split = true;                                       // Metaspace
  uint32_t delimiter = 0;                                  // CharDelimiter
};

// Appends the pre-tokenizers that tokenizer.json's "pre_tokenizer" object `o` describes (a
// Sequence is flattened; null adds none). Throws naming the type or regex if not supported.
void parse_pre_tokenizer(const nlohmann::json& o, const JsonReader& r,
                         std::vector<PreTokenizer>& out);
// "prepend_scheme" of a Metaspace object, or the older "add_prefix_space" when it is absent.
Prepend parse_prepend_scheme(const nlohmann::json& o, const JsonReader& r);

// Buffers reused across the words of one encode call, one slot per pre-tokenizer in the chain.
struct PreTokScratch {
  std::vector<pretok::Spans> spans;
  std::vector<std::string> bufs, pre;
  pretok::Spans tmp;
  void resize(size_t n) {
    spans.resize(n);
    bufs.resize(n);
    pre.resize(n);
  }
};

// Receives each word, a view valid only during the call. Holds a reference to the callable.
class WordSink {
 public:
  template <class F>
  explicit WordSink(F& f)
      : obj_(&f), call_([](void* o, std::string_view w) { (*static_cast<F*>(o))(w); }) {}
  void operator()(std::string_view w) const { call_(obj_, w); }

 private:
  void* obj_;
  void (*call_)(void*, std::string_view);
};

// Runs the chain on `text` and hands every non-empty word to `sink`, in order. `first` says that
// `text` starts the input (Metaspace's prepend_scheme "first"). `scratch` holds steps.size() slots.
void run_pre_tokenizers(const std::vector<PreTokenizer>& steps, std::string_view text, bool first,
                        PreTokScratch& scratch, WordSink sink);

}  // namespace minfer
