// Pipeline stage 3, the pre-tokenizer: the split-regex matchers and split behaviours (namespace
// pretok), then each pre-tokenizer component, its tokenizer.json parsing and the chain that runs
// them (HF tokenizers/src/pre_tokenizers/*.rs).
#include "tokenizer/pretokenize.h"

#include <algorithm>
#include <array>
#include <cctype>
#include <string>

#include "tokenizer/normalizers.h"
#include "tokenizer/unicode.h"

namespace minfer::pretok {

const char* const kGpt2Regex =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";
const char* const kLlama3Regex =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
const char* const kQwen2Regex =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

namespace {

// The four classes the split regexes distinguish: \p{L}, \p{N}, \s, and everything else.
enum Cls : uint8_t { kL, kN, kWs, kO };

inline Cls cls_of(uint32_t cp) {
  static const std::array<Cls, 128> ascii = [] {
    std::array<Cls, 128> t{};
    for (uint32_t c = 0; c < 128; ++c) {
      uint8_t f = unicode::flags(c);
      t[c] = (f & unicode::kLetter)   ? kL
             : (f & unicode::kNumber) ? kN
             : (f & unicode::kSpace)  ? kWs
                                      : kO;
    }
    return t;
  }();
  if (cp < 128) return ascii[cp];
  uint8_t f = unicode::flags(cp);
  return (f & unicode::kLetter)   ? kL
         : (f & unicode::kNumber) ? kN
         : (f & unicode::kSpace)  ? kWs
                                  : kO;
}

struct Cursor {
  std::string_view s;
  // Code point and class at byte offset i (i < size).
  uint32_t cp(size_t i, int* len) const { return unicode::decode_at(s, i, len); }
  // End of the run of class k starting at i.
  size_t run(size_t i, Cls k) const {
    size_t n = s.size();
    while (i < n) {
      uint8_t b = static_cast<uint8_t>(s[i]);
      if (b < 0x80) {
        if (cls_of(b) != k) break;
        ++i;
        continue;
      }
      int l;
      uint32_t c = unicode::decode_at(s, i, &l);
      if (cls_of(c) != k) break;
      i += static_cast<size_t>(l);
    }
    return i;
  }
};

inline char lower_ascii(char c) {
  return (c >= 'A' && c <= 'Z') ? static_cast<char>(c + 32) : c;
}

// Length of a contraction at s[i] == '\'' ('s 't 're 've 'm 'll 'd), 0 if none.
inline size_t contraction(std::string_view s, size_t i, bool ignore_case) {
  size_t n = s.size();
  if (i + 1 >= n) return 0;
  char c1 = s[i + 1];
  if (ignore_case) {
    c1 = lower_ascii(c1);
    // Under (?i), Oniguruma also folds U+017F LATIN SMALL LETTER LONG S to 's'.
    if (i + 2 < n && static_cast<uint8_t>(s[i + 1]) == 0xC5 &&
        static_cast<uint8_t>(s[i + 2]) == 0xBF)
      return 3;
  }
  if (c1 == 's' || c1 == 't' || c1 == 'm' || c1 == 'd') return 2;
  if (i + 2 >= n) return 0;
  char c2 = ignore_case ? lower_ascii(s[i + 2]) : s[i + 2];
  if ((c1 == 'r' && c2 == 'e') || (c1 == 'v' && c2 == 'e') || (c1 == 'l' && c2 == 'l')) return 3;
  return 0;
}

// \s+(?!\S)|\s+ at i (s[i] is whitespace): the whole run if it reaches the end, else the run
// minus its last character, else (a single character followed by \S) that one character.
inline size_t whitespace_end(const Cursor& c, size_t i, size_t* last_newline_end) {
  size_t n = c.s.size(), p = i, last = i;
  *last_newline_end = 0;
  while (p < n) {
    int l;
    uint32_t cp = c.cp(p, &l);
    if (cls_of(cp) != kWs) break;
    if (cp == '\r' || cp == '\n') *last_newline_end = p + static_cast<size_t>(l);
    last = p;
    p += static_cast<size_t>(l);
  }
  if (p == n) return n;
  return last > i ? last : p;
}

}  // namespace

void find_gpt2(std::string_view s, Spans& out) {
  Cursor c{s};
  size_t n = s.size(), i = 0;
  while (i < n) {
    int l;
    uint32_t cp = c.cp(i, &l);
    size_t end = 0;
    if (cp == '\'') {
      size_t k = contraction(s, i, false);
      if (k) end = i + k;
    }
    if (!end) {
      Cls k = cls_of(cp);
      size_t j = i;
      if (cp == ' ' && i + 1 < n) {  // ' ?' before \p{L}+, \p{N}+ and [^\s\p{L}\p{N}]+
        int l2;
        Cls kn = cls_of(c.cp(i + 1, &l2));
        if (kn != kWs) {
          k = kn;
          j = i + 1;
        }
      }
      if (k != kWs) {
        end = c.run(j, k);
      } else {
        size_t unused;
        end = whitespace_end(c, i, &unused);
      }
    }
    out.emplace_back(static_cast<uint32_t>(i), static_cast<uint32_t>(end));
    i = end;
  }
}

void find_llama3(std::string_view s, int max_digits, Spans& out) {
  Cursor c{s};
  size_t n = s.size(), i = 0;
  while (i < n) {
    int l;
    uint32_t cp = c.cp(i, &l);
    Cls k = cls_of(cp);
    size_t end = 0;
    // (?i:'s|'t|'re|'ve|'m|'ll|'d)
    if (cp == '\'') {
      size_t m = contraction(s, i, true);
      if (m) end = i + m;
    }
    // [^\r\n\p{L}\p{N}]?\p{L}+
    if (!end) {
      if (k == kL) {
        end = c.run(i, kL);
      } else if (k != kN && cp != '\r' && cp != '\n' && i + static_cast<size_t>(l) < n) {
        int l2;
        if (cls_of(c.cp(i + static_cast<size_t>(l), &l2)) == kL)
          end = c.run(i + static_cast<size_t>(l), kL);
      }
    }
    // \p{N}{1,max}
    if (!end && k == kN) {
      size_t p = i;
      for (int d = 0; d < max_digits && p < n; ++d) {
        int l2;
        if (cls_of(c.cp(p, &l2)) != kN) break;
        p += static_cast<size_t>(l2);
      }
      end = p;
    }
    //  ?[^\s\p{L}\p{N}]+[\r\n]*
    if (!end) {
      size_t j = std::string_view::npos;
      if (k == kO) {
        j = i;
      } else if (cp == ' ' && i + 1 < n) {
        int l2;
        if (cls_of(c.cp(i + 1, &l2)) == kO) j = i + 1;
      }
      if (j != std::string_view::npos) {
        end = c.run(j, kO);
        while (end < n && (s[end] == '\r' || s[end] == '\n')) ++end;
      }
    }
    // \s*[\r\n]+ | \s+(?!\S) | \s+
    if (!end) {
      size_t nl_end;
      size_t ws = whitespace_end(c, i, &nl_end);
      end = nl_end ? nl_end : ws;
    }
    out.emplace_back(static_cast<uint32_t>(i), static_cast<uint32_t>(end));
    i = end;
  }
}

void find_digits_runs(std::string_view s, int max_digits, Spans& out) {
  Cursor c{s};
  size_t n = s.size(), i = 0;
  while (i < n) {
    int l;
    uint32_t cp = c.cp(i, &l);
    if (cls_of(cp) != kN) {
      i += static_cast<size_t>(l);
      continue;
    }
    size_t p = i;
    int d = 0;
    while (p < n && (max_digits <= 0 || d < max_digits)) {
      int l2;
      if (cls_of(c.cp(p, &l2)) != kN) break;
      p += static_cast<size_t>(l2);
      ++d;
    }
    out.emplace_back(static_cast<uint32_t>(i), static_cast<uint32_t>(p));
    i = p;
  }
}

void find_words_and_symbols(std::string_view s, Spans& out) {
  Cursor c{s};
  size_t n = s.size(), i = 0;
  auto kind = [&](size_t p, int* l) {
    uint8_t f = unicode::flags(c.cp(p, l));
    return (f & unicode::kWord) ? 0 : (f & unicode::kSpace) ? 2 : 1;
  };
  while (i < n) {
    int l;
    int k = kind(i, &l);
    if (k == 2) {
      i += static_cast<size_t>(l);
      continue;
    }
    size_t p = i + static_cast<size_t>(l);
    while (p < n) {
      int l2;
      if (kind(p, &l2) != k) break;
      p += static_cast<size_t>(l2);
    }
    out.emplace_back(static_cast<uint32_t>(i), static_cast<uint32_t>(p));
    i = p;
  }
}

void find_literal(std::string_view s, std::string_view needle, Spans& out) {
  if (needle.empty()) return;
  size_t pos = 0;
  while ((pos = s.find(needle, pos)) != std::string_view::npos) {
    out.emplace_back(static_cast<uint32_t>(pos), static_cast<uint32_t>(pos + needle.size()));
    pos += needle.size();
  }
}

int pattern_from_regex(std::string_view re) {
  if (re == kGpt2Regex) return static_cast<int>(Pattern::Gpt2);
  if (re == kLlama3Regex) return static_cast<int>(Pattern::Llama3);
  if (re == kQwen2Regex) return static_cast<int>(Pattern::Qwen2);
  if (re == R"(\p{N}{1,3})") return static_cast<int>(Pattern::Digits3);
  if (re == R"(\p{N})") return static_cast<int>(Pattern::Digits1);
  if (re == R"(\p{N}+)") return static_cast<int>(Pattern::DigitsAll);
  if (re == R"(\w+|[^\w\s]+)") return static_cast<int>(Pattern::WordsSymbols);
  return -1;
}

void find_pattern(Pattern p, std::string_view s, Spans& out) {
  switch (p) {
    case Pattern::Gpt2:
      return find_gpt2(s, out);
    case Pattern::Llama3:
      return find_llama3(s, 3, out);
    case Pattern::Qwen2:
      return find_llama3(s, 1, out);
    case Pattern::Digits3:
      return find_digits_runs(s, 3, out);
    case Pattern::Digits1:
      return find_digits_runs(s, 1, out);
    case Pattern::DigitsAll:
      return find_digits_runs(s, 0, out);
    case Pattern::WordsSymbols:
      return find_words_and_symbols(s, out);
  }
}

void split_by(uint32_t n, const Spans& matches, bool invert, Behavior b, Spans& pieces) {
  // (span, is_match) covering [0, n), as Pattern::find_matches builds it.
  struct Ev {
    Span span;
    bool match;
  };
  std::vector<Ev> ev;
  ev.reserve(matches.size() * 2 + 1);
  if (n == 0) {
    ev.push_back({{0, 0}, false});
  } else {
    uint32_t prev = 0;
    for (const Span& m : matches) {
      if (prev != m.first) ev.push_back({{prev, m.first}, false});
      ev.push_back({m, true});
      prev = m.second;
    }
    if (prev != n) ev.push_back({{prev, n}, false});
  }
  if (invert)
    for (Ev& e : ev) e.match = !e.match;

  size_t first = pieces.size();
  switch (b) {
    case Behavior::Isolated:
      for (const Ev& e : ev) pieces.push_back(e.span);
      break;
    case Behavior::Removed:
      for (const Ev& e : ev)
        if (!e.match) pieces.push_back(e.span);
      break;
    case Behavior::Contiguous: {
      bool prev_match = false;
      for (const Ev& e : ev) {
        if (e.match == prev_match && pieces.size() > first)
          pieces.back().second = e.span.second;
        else
          pieces.push_back(e.span);
        prev_match = e.match;
      }
      break;
    }
    case Behavior::MergedWithPrevious: {
      bool prev_match = false;
      for (const Ev& e : ev) {
        if (e.match && !prev_match && pieces.size() > first)
          pieces.back().second = e.span.second;
        else
          pieces.push_back(e.span);
        prev_match = e.match;
      }
      break;
    }
    case Behavior::MergedWithNext: {
      bool prev_match = false;
      Spans rev;
      for (size_t k = ev.size(); k-- > 0;) {
        const Ev& e = ev[k];
        if (e.match && !prev_match && !rev.empty())
          rev.back().first = e.span.first;
        else
          rev.push_back(e.span);
        prev_match = e.match;
      }
      for (size_t k = rev.size(); k-- > 0;) pieces.push_back(rev[k]);
      break;
    }
  }
  // Drop empty pieces.
  size_t w = first;
  for (size_t r = first; r < pieces.size(); ++r)
    if (pieces[r].second > pieces[r].first) pieces[w++] = pieces[r];
  pieces.resize(w);
}

}  // namespace minfer::pretok

namespace minfer {

using nlohmann::json;
using pretok::Behavior;
using pretok::Span;
using pretok::Spans;

namespace {

// Matches of a char predicate, one span per matching character (HF's Pattern for Fn(char)->bool).
template <class F>
void find_chars(std::string_view s, F pred, Spans& out) {
  for (size_t i = 0; i < s.size();) {
    int l;
    uint32_t cp = unicode::decode_at(s, i, &l);
    if (pred(cp))
      out.emplace_back(static_cast<uint32_t>(i), static_cast<uint32_t>(i + static_cast<size_t>(l)));
    i += static_cast<size_t>(l);
  }
}

Behavior parse_behavior(const json& o, const JsonReader& r, const std::string& where) {
  std::string b = r.str_or(o, "behavior", "Isolated");
  std::string l = b;
  std::transform(l.begin(), l.end(), l.begin(),
                 [](char c) { return static_cast<char>(std::tolower(c)); });
  std::erase(l, '_');
  if (l == "removed") return Behavior::Removed;
  if (l == "isolated") return Behavior::Isolated;
  if (l == "mergedwithprevious") return Behavior::MergedWithPrevious;
  if (l == "mergedwithnext") return Behavior::MergedWithNext;
  if (l == "contiguous") return Behavior::Contiguous;
  r.fail(fmt::format("{}: unknown split behavior '{}'", where, b));
}

// Runs steps[k..] on `piece`: step k splits it and hands each part to step k + 1; the parts
// that leave the last step are the words.
void run_from(const std::vector<PreTokenizer>& steps, size_t k, std::string_view piece, bool first,
              PreTokScratch& ctx, WordSink sink) {
  if (piece.empty()) return;
  if (k == steps.size()) return sink(piece);
  const PreTokenizer& p = steps[k];
  Spans& sp = ctx.spans[k];
  sp.clear();
  Spans& tmp = ctx.tmp;
  tmp.clear();
  const uint32_t n = static_cast<uint32_t>(piece.size());
  auto recurse_spans = [&](std::string_view src) {
    for (const Span& s : sp)
      run_from(steps, k + 1, src.substr(s.first, s.second - s.first), first && s.first == 0, ctx,
               sink);
  };
  switch (p.kind) {
    case PreTokenizer::Kind::ByteLevel: {  // pre_tokenizers/byte_level.rs
      std::string_view src = piece;
      if (p.add_prefix_space && piece[0] != ' ') {
        ctx.pre[k].assign(1, ' ');
        ctx.pre[k].append(piece);
        src = ctx.pre[k];
      }
      if (p.use_regex)
        pretok::find_gpt2(src, sp);
      else
        sp.emplace_back(0u, static_cast<uint32_t>(src.size()));
      std::string& buf = ctx.bufs[k];
      for (const Span& s : sp) {
        buf.clear();
        unicode::byte_level_encode(src.substr(s.first, s.second - s.first), buf);
        run_from(steps, k + 1, buf, first && s.first == 0, ctx, sink);
      }
      return;
    }
    case PreTokenizer::Kind::Split:
      if (p.pattern >= 0)
        pretok::find_pattern(static_cast<pretok::Pattern>(p.pattern), piece, tmp);
      else if (p.regex)
        p.regex->find_all(piece, tmp);
      else
        pretok::find_literal(piece, p.literal, tmp);
      pretok::split_by(n, tmp, p.invert, p.behavior, sp);
      return recurse_spans(piece);
    case PreTokenizer::Kind::Digits:
      find_chars(piece, unicode::is_number, tmp);
      pretok::split_by(n, tmp, false, p.individual ? Behavior::Isolated : Behavior::Contiguous, sp);
      return recurse_spans(piece);
    case PreTokenizer::Kind::Whitespace:
      pretok::find_words_and_symbols(piece, tmp);
      pretok::split_by(n, tmp, true, Behavior::Removed, sp);
      return recurse_spans(piece);
    case PreTokenizer::Kind::WhitespaceSplit:
      find_chars(piece, unicode::is_space, tmp);
      pretok::split_by(n, tmp, false, Behavior::Removed, sp);
      return recurse_spans(piece);
    case PreTokenizer::Kind::Punctuation:
      find_chars(piece, unicode::is_bert_punct, tmp);
      pretok::split_by(n, tmp, false, p.behavior, sp);
      return recurse_spans(piece);
    case PreTokenizer::Kind::CharDelimiter:
      find_chars(
          piece, [&](uint32_t c) { return c == p.delimiter; }, tmp);
      pretok::split_by(n, tmp, false, Behavior::Removed, sp);
      return recurse_spans(piece);
    case PreTokenizer::Kind::Bert: {  // whitespace removed, then punctuation isolated
      Spans words_sp;
      find_chars(piece, unicode::is_space, tmp);
      pretok::split_by(n, tmp, false, Behavior::Removed, words_sp);
      for (const Span& w : words_sp) {
        std::string_view word = piece.substr(w.first, w.second - w.first);
        tmp.clear();
        find_chars(word, unicode::is_bert_punct, tmp);
        Spans parts;
        pretok::split_by(static_cast<uint32_t>(word.size()), tmp, false, Behavior::Isolated, parts);
        for (const Span& s : parts)
          run_from(steps, k + 1, word.substr(s.first, s.second - s.first),
                   first && w.first == 0 && s.first == 0, ctx, sink);
      }
      return;
    }
    case PreTokenizer::Kind::Metaspace: {  // pre_tokenizers/metaspace.rs
      std::string& buf = ctx.bufs[k];
      buf = replace_all(piece, " ", p.replacement);
      bool starts = buf.compare(0, p.replacement.size(), p.replacement) == 0;
      if (!starts && (p.prepend == Prepend::Always || (p.prepend == Prepend::First && first)))
        buf.insert(0, p.replacement);
      if (p.split) {
        pretok::find_literal(buf, p.replacement, tmp);
        pretok::split_by(static_cast<uint32_t>(buf.size()), tmp, false, Behavior::MergedWithNext,
                         sp);
      } else {
        sp.emplace_back(0u, static_cast<uint32_t>(buf.size()));
      }
      // buf must survive the recursion: move it to a local.
      std::string local = std::move(buf);
      for (const Span& s : sp)
        run_from(steps, k + 1, std::string_view(local).substr(s.first, s.second - s.first),
                 first && s.first == 0, ctx, sink);
      return;
    }
  }
}

}  // namespace

void run_pre_tokenizers(const std::vector<PreTokenizer>& steps, std::string_view text, bool first,
                        PreTokScratch& scratch, WordSink sink) {
  run_from(steps, 0, text, first, scratch, sink);
}

Prepend parse_prepend_scheme(const json& o, const JsonReader& r) {
  if (o.contains("prepend_scheme") && !o.at("prepend_scheme").is_null()) {
    const std::string s = r.str_or(o, "prepend_scheme", "");
    if (s == "always") return Prepend::Always;
    if (s == "first") return Prepend::First;
    if (s == "never") return Prepend::Never;
    r.fail(fmt::format("Metaspace prepend_scheme '{}' is unknown (always, first, never)", s));
  }
  return r.boolean(o, "add_prefix_space", true) ? Prepend::Always : Prepend::Never;
}

void parse_pre_tokenizer(const json& o, const JsonReader& r, std::vector<PreTokenizer>& out) {
  if (o.is_null()) return;
  std::string t = r.type(o, "pre_tokenizer");
  using K = PreTokenizer::Kind;
  PreTokenizer p;
  if (t == "Sequence") {
    for (const json& c : r.array(o, "pretokenizers", "Sequence pre_tokenizer"))
      parse_pre_tokenizer(c, r, out);
    return;
  } else if (t == "ByteLevel") {
    p.kind = K::ByteLevel;
    p.add_prefix_space = r.boolean(o, "add_prefix_space", true);
    p.use_regex = r.boolean(o, "use_regex", true);
  } else if (t == "Split") {
    p.kind = K::Split;
    auto [is_regex, pat] = r.pattern(o, "Split pre_tokenizer");
    if (is_regex) {
      p.pattern = pretok::pattern_from_regex(pat);
      if (p.pattern < 0) {  // no hand-written matcher: the general one, if the subset has it
        try {
          p.regex = pretok::SplitRegex::compile(pat);
        } catch (const Error& e) {
          r.fail(fmt::format("Split pre_tokenizer regex '{}' is not supported: {}", pat, e.what()));
        }
      }
    } else {
      p.literal = pat;
    }
    p.behavior = parse_behavior(o, r, "Split pre_tokenizer");
    p.invert = r.boolean(o, "invert", false);
  } else if (t == "Digits") {
    p.kind = K::Digits;
    p.individual = r.boolean(o, "individual_digits", false);
  } else if (t == "Whitespace") {
    p.kind = K::Whitespace;
  } else if (t == "WhitespaceSplit") {
    p.kind = K::WhitespaceSplit;
  } else if (t == "BertPreTokenizer") {
    p.kind = K::Bert;
  } else if (t == "Punctuation") {
    p.kind = K::Punctuation;
    p.behavior = parse_behavior(o, r, "Punctuation pre_tokenizer");
  } else if (t == "CharDelimiterSplit") {
    p.kind = K::CharDelimiter;
    std::string d = r.one_char(o, "delimiter", "CharDelimiterSplit");
    int l;
    p.delimiter = unicode::decode_at(d, 0, &l);
  } else if (t == "Metaspace") {
    p.kind = K::Metaspace;
    p.replacement = r.one_char(o, "replacement", "Metaspace pre_tokenizer");
    p.prepend = parse_prepend_scheme(o, r);
    p.split = r.boolean(o, "split", true);
  } else {
    r.fail(
        fmt::format("pre_tokenizer type '{}' is not supported (supported: Sequence, ByteLevel, "
                    "Split, Digits, Whitespace, WhitespaceSplit, BertPreTokenizer, Punctuation, "
                    "CharDelimiterSplit, Metaspace)",
                    t));
  }
  out.push_back(std::move(p));
}

}  // namespace minfer
