// Pre-tokenizer building blocks: hand-written matchers equivalent to the split regexes that
// byte-level BPE tokenizers use (no regex engine at run time), and Hugging Face's
// SplitDelimiterBehavior applied to a list of matches.
//
// Each matcher returns the non-overlapping, leftmost-first matches that Oniguruma (the regex
// engine behind HF `tokenizers`) finds for the pattern, as byte spans of the input.
#pragma once
#include <cstdint>
#include <string_view>
#include <utility>
#include <vector>

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
