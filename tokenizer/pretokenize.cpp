#include "tokenizer/pretokenize.h"

#include <array>
#include <string>

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
