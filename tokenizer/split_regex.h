// The split regexes of tokenizer.json Split pre-tokenizers beyond the hand-written matchers of
// pretokenize.h: a small backtracking matcher for the subset those patterns use, with the
// semantics of Oniguruma (the engine behind HF `tokenizers`, Ruby syntax) on that subset.
//
// Supported: alternation (a|b|c), literal characters, escapes (\s \S \d \D \w \W \p{X} \P{X}
// with X a general category, its one-letter group, or the script Han, \r \n \t \f \v and escaped
// punctuation), character classes with ranges, negation, escapes, nested classes ([^(\s|[.,])] is
// a union) and intersection ([\p{L}&&[^\p{Han}]], Kimi K2's letters that are not Han),
// the greedy quantifiers ? * + {m} {m,} {m,n} on characters, classes and groups, the anchors $
// (end of the text or before a newline, as in Ruby) and \b (Unicode word boundary), groups (X)
// (captures are not kept) and (?:X), lookaheads (?=X) and (?!X), and case-insensitive groups
// (?i:a|b) of literal characters (ASCII case, U+017F ~ s, U+212A ~ k, as Oniguruma folds them).
// Anything else (other group options, backreferences, lookbehind, lazy or possessive
// quantifiers, '.', '^', other scripts) is refused when the pattern is compiled, naming the
// construct.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace minfer::pretok {

class SplitRegex {
 public:
  // Throws minfer::Error naming the construct when `pattern` is outside the subset.
  static std::shared_ptr<const SplitRegex> compile(std::string_view pattern);
  // Non-overlapping, leftmost-first matches (Oniguruma's search loop), as byte spans of s
  // (valid UTF-8). An empty match is reported as an empty span (it splits the text there, as in
  // HF `tokenizers`), except at the start of s or right where the previous match ended.
  // Work is linear in s for the patterns of the GGUF pre-tokenizer table (fixed-width quantified
  // groups such as ([0-9]{3})+ are matched without recursion per iteration and, under an unbounded
  // quantifier, memoized per position within the call); a pattern outside that shape can
  // backtrack more, bounded in depth (an error past 6000 levels).
  void find_all(std::string_view s, std::vector<std::pair<uint32_t, uint32_t>>& out) const;
  // The matcher steps (calls into the matcher, characters tested, continuations tried) of all
  // find_all calls made on the calling thread so far: a measure of work for tests and benches.
  static uint64_t steps_on_this_thread();

  struct CharSet;
  struct Atom;

 private:
  std::vector<std::vector<Atom>> alts_;
};

}  // namespace minfer::pretok
