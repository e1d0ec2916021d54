// The small backtracking matcher behind Split pre-tokenizers with regex patterns that have no
// hand-written matcher (see split_regex.h for the subset and the Oniguruma semantics it follows).
#include "tokenizer/split_regex.h"

#include <array>
#include <deque>

#include "engine/error.h"
#include "tokenizer/unicode.h"

namespace minfer::pretok {

namespace {
using unicode::Category;

// \p{X}: one category, or a one-letter group (L = Lu Ll Lt Lm Lo, ...), as a bit mask.
uint32_t category_mask(std::string_view name, std::string_view pattern) {
  static const char* const kNames[] = {"Cn", "Lu", "Ll", "Lt", "Lm", "Lo", "Mn", "Mc", "Me", "Nd",
                                       "Nl", "No", "Pc", "Pd", "Ps", "Pe", "Pi", "Pf", "Po", "Sm",
                                       "Sc", "Sk", "So", "Zs", "Zl", "Zp", "Cc", "Cf", "Cs", "Co"};
  uint32_t m = 0;
  for (uint32_t i = 0; i < 30; ++i) {
    std::string_view n = kNames[i];
    if (n == name || (name.size() == 1 && n[0] == name[0])) m |= 1u << i;
  }
  MINFER_CHECK(m != 0, "split regex '{}': unknown Unicode category \\p{{{}}}", pattern, name);
  return m;
}

// \p{Han}: the code points of Unicode's Script=Han, as Oniguruma (the engine of HF `tokenizers`)
// has them; the ranges were read from HF `tokenizers` by matching \p{Han} against every code point
// (tests/fixtures/tokenizers/make_gguf_tokenizer_fixtures.py, han_ranges()).
bool is_han(uint32_t cp) {
  static const uint32_t kHan[][2] = {
      {0x2E80, 0x2E99},   {0x2E9B, 0x2EF3},   {0x2F00, 0x2FD5},   {0x3005, 0x3005},
      {0x3007, 0x3007},   {0x3021, 0x3029},   {0x3038, 0x303B},   {0x3400, 0x4DBF},
      {0x4E00, 0x9FFF},   {0xF900, 0xFA6D},   {0xFA70, 0xFAD9},   {0x16FE2, 0x16FE3},
      {0x16FF0, 0x16FF1}, {0x20000, 0x2A6DF}, {0x2A700, 0x2B739}, {0x2B740, 0x2B81D},
      {0x2B820, 0x2CEA1}, {0x2CEB0, 0x2EBE0}, {0x2EBF0, 0x2EE5D}, {0x2F800, 0x2FA1D},
      {0x30000, 0x3134A}, {0x31350, 0x323AF}};
  if (cp < kHan[0][0]) return false;
  for (const auto& r : kHan)
    if (cp >= r[0] && cp <= r[1]) return true;
  return false;
}

}  // namespace

struct SplitRegex::CharSet {
  enum class Kind { Range, Categories, Space, Digit, Word, Han, Nested };
  struct Item {
    Kind kind;
    bool negated = false;  // \S \D \W \P{X}
    uint32_t lo = 0, hi = 0, mask = 0;
    std::shared_ptr<CharSet> nested;
  };
  bool negate = false;
  std::vector<Item> items;
  // [A&&B]: the union of items, intersected with `and_also` (then negated when negate).
  std::shared_ptr<CharSet> and_also;
  std::array<uint8_t, 128> ascii{};  // test() for ASCII, filled by finish()

  bool test_slow(uint32_t cp) const {
    bool in = false;
    for (const Item& it : items) {
      bool r = false;
      switch (it.kind) {
        case Kind::Range:
          r = cp >= it.lo && cp <= it.hi;
          break;
        case Kind::Categories:
          r = (it.mask >> static_cast<uint32_t>(unicode::category(cp))) & 1u;
          break;
        case Kind::Space:
          r = unicode::is_space(cp);
          break;
        case Kind::Digit:  // Oniguruma's Unicode \d: Nd
          r = unicode::category(cp) == Category::Nd;
          break;
        case Kind::Word:
          r = unicode::flags(cp) & unicode::kWord;
          break;
        case Kind::Han:
          r = is_han(cp);
          break;
        case Kind::Nested:
          r = it.nested->test(cp);
          break;
      }
      if (r != it.negated) {
        in = true;
        break;
      }
    }
    if (in && and_also) in = and_also->test(cp);
    return in != negate;
  }
  bool test(uint32_t cp) const { return cp < 128 ? ascii[cp] : test_slow(cp); }
  void finish() {
    for (uint32_t c = 0; c < 128; ++c) ascii[c] = test_slow(c);
  }
};

struct SplitRegex::Atom {
  enum class Kind { Set, End, NotAhead, Ahead, Literals, Group, WordBoundary };
  Kind kind = Kind::Set;
  CharSet set;
  uint32_t min = 1, max = 1;
  // Group: a group (capturing or not; captures are not kept) of general alternatives, with a
  // greedy quantifier. NotAhead / Ahead: the alternatives of the lookahead (one class, or any
  // pattern of the subset).
  std::vector<std::vector<Atom>> alts;
  // Literals: (?:a|b) or (?i:a|b), alternatives tried in order, each a sequence of single
  // characters: a literal, an escape or a class ((?:'[sS]|'[tT]) as llama.cpp writes the
  // contractions). Under (?i: a literal letter also matches its other ASCII case and, as
  // Oniguruma folds them, U+017F (long s) matches 's' and U+212A (Kelvin sign) 'k'.
  std::vector<std::vector<CharSet>> options;
};

namespace {

struct Parser {
  std::string_view p;  // the pattern
  size_t i = 0;

  [[noreturn]] void fail(const std::string& what) const {
    MINFER_FAIL(
        "split regex '{}': {} at byte {} (supported: classes, escapes, \\b, $, greedy "
        "quantifiers, |, groups (X) and (?:X), lookaheads (?=X) and (?!X), (?i:a|b) groups of "
        "literal characters)",
        p, what, i);
  }
  bool done() const { return i >= p.size(); }
  uint32_t next_cp() {
    int l;
    uint32_t c = unicode::decode_at(p, i, &l);
    i += static_cast<size_t>(l);
    return c;
  }
  // After a backslash: a class escape into `set`, or a literal character (returned, set untouched).
  // Returns UINT32_MAX when it added a class item.
  uint32_t escape(SplitRegex::CharSet& set) {
    if (done()) fail("trailing backslash");
    const uint32_t c = next_cp();
    using K = SplitRegex::CharSet::Kind;
    auto add = [&](K k, bool neg, uint32_t mask = 0) {
      SplitRegex::CharSet::Item it{k, neg, 0, 0, mask, nullptr};
      set.items.push_back(it);
      return UINT32_MAX;
    };
    switch (c) {
      case 's':
        return add(K::Space, false);
      case 'S':
        return add(K::Space, true);
      case 'd':
        return add(K::Digit, false);
      case 'D':
        return add(K::Digit, true);
      case 'w':
        return add(K::Word, false);
      case 'W':
        return add(K::Word, true);
      case 'p':
      case 'P': {
        if (done() || p[i] != '{') fail("\\p without {name}");
        size_t e = p.find('}', i);
        if (e == std::string_view::npos) fail("unterminated \\p{");
        std::string_view name = p.substr(i + 1, e - i - 1);
        bool neg = c == 'P';
        if (!name.empty() && name[0] == '^') {
          neg = !neg;
          name.remove_prefix(1);
        }
        i = e + 1;
        if (name == "Han") return add(K::Han, neg);  // the one script property patterns use
        return add(K::Categories, neg, category_mask(name, p));
      }
      case 'r':
        return '\r';
      case 'n':
        return '\n';
      case 't':
        return '\t';
      case 'f':
        return '\f';
      case 'v':
        return '\v';
      default:
        if (c < 128 && (std::isalnum(static_cast<int>(c)) != 0))
          fail(fmt::format("escape \\{}", static_cast<char>(c)));
        return c;  // escaped punctuation stands for itself
    }
  }
  // After '[': the class up to its ']'.
  void klass(SplitRegex::CharSet& set) {
    using K = SplitRegex::CharSet::Kind;
    if (!done() && p[i] == '^') {
      set.negate = true;
      ++i;
    }
    bool first = true;
    for (;;) {
      if (done()) fail("unterminated character class");
      if (p[i] == ']' && !first) {
        ++i;
        return;
      }
      first = false;
      uint32_t lo;
      if (p[i] == '[') {
        if (i + 1 < p.size() && p[i + 1] == ':') fail("POSIX bracket");
        ++i;
        auto n = std::make_shared<SplitRegex::CharSet>();
        klass(*n);
        n->finish();
        set.items.push_back({K::Nested, false, 0, 0, 0, n});
        continue;
      }
      if (p[i] == '&' && i + 1 < p.size() && p[i + 1] == '&') {
        // [A&&B] (Oniguruma): what follows, up to the class's ']', is intersected with A.
        i += 2;
        if (set.items.empty()) fail("class intersection && with an empty left side");
        if (!done() && (p[i] == ']' || p[i] == '^'))
          fail("class intersection && with an empty or negated right side");
        auto rhs = std::make_shared<SplitRegex::CharSet>();
        klass(*rhs);  // consumes the ']'
        rhs->finish();
        set.and_also = rhs;
        return;
      }
      if (p[i] == '\\') {
        ++i;
        lo = escape(set);
        if (lo == UINT32_MAX) continue;
      } else {
        lo = next_cp();
      }
      uint32_t hi = lo;
      if (i + 1 < p.size() && p[i] == '-' && p[i + 1] != ']') {
        ++i;
        if (p[i] == '\\') {
          ++i;
          SplitRegex::CharSet dummy;
          hi = escape(dummy);
          if (hi == UINT32_MAX) fail("range ending in a class escape");
        } else if (p[i] == '[') {
          fail("range ending in a nested class");
        } else {
          hi = next_cp();
        }
        if (hi < lo) fail("empty range");
      }
      set.items.push_back({K::Range, false, lo, hi, 0, nullptr});
    }
  }
  int depth = 0;  // open groups
  // Alternatives up to the end of the pattern (depth 0) or the ')' closing the current group.
  std::vector<std::vector<SplitRegex::Atom>> alternatives() {
    std::vector<std::vector<SplitRegex::Atom>> alts;
    for (;;) {
      std::vector<SplitRegex::Atom> seq;
      for (;;) {
        SplitRegex::Atom a;
        if (!atom(a)) break;
        quantifier(a);
        seq.push_back(std::move(a));
      }
      alts.push_back(std::move(seq));
      if (done() || p[i] == ')') break;
      ++i;  // '|'
    }
    return alts;
  }
  // After the group's opening: its alternatives and the ')'.
  std::vector<std::vector<SplitRegex::Atom>> group_body() {
    if (++depth > 50) fail("groups nested more than 50 deep");
    auto alts = alternatives();
    if (done()) fail("unterminated group");
    ++i;  // ')'
    --depth;
    return alts;
  }
  // One atom (no quantifier): returns false at '|', at the ')' of an open group, or the end.
  bool atom(SplitRegex::Atom& a) {
    using AK = SplitRegex::Atom::Kind;
    using K = SplitRegex::CharSet::Kind;
    if (done() || p[i] == '|' || (p[i] == ')' && depth > 0)) return false;
    const char c = p[i];
    if (c == '$') {
      ++i;
      a.kind = AK::End;
      return true;
    }
    if (c == '\\' && i + 1 < p.size() && p[i + 1] == 'b') {
      i += 2;
      a.kind = AK::WordBoundary;
      return true;
    }
    if (c == '(') {
      if (p.substr(i, 3) == "(?!" || p.substr(i, 3) == "(?=") {
        a.kind = p[i + 2] == '!' ? AK::NotAhead : AK::Ahead;
        i += 3;
        a.alts = group_body();
        return true;
      }
      if (p.substr(i, 3) == "(?:") {
        // A group of single characters (the contractions) matches without the general
        // machinery; anything else is a general group.
        const size_t at = i;
        try {
          if (literals(a)) return true;
        } catch (const Error&) {
        }
        i = at + 3;
        a = SplitRegex::Atom{};
        a.kind = AK::Group;
        a.alts = group_body();
        return true;
      }
      if (p.substr(i, 4) == "(?i:") {
        literals(a);
        return true;
      }
      if (p.substr(i, 2) == "(?") fail("group option or extension");
      ++i;  // a capturing group, matched as a plain group
      a.kind = AK::Group;
      a.alts = group_body();
      return true;
    }
    if (c == ')' || c == '*' || c == '+' || c == '?' || c == '{') fail("misplaced metacharacter");
    if (c == '^') fail("anchor ^");
    if (c == '.') fail("'.'");
    a.kind = AK::Set;
    if (c == '[') {
      ++i;
      klass(a.set);
    } else if (c == '\\') {
      ++i;
      uint32_t lit = escape(a.set);
      if (lit != UINT32_MAX) a.set.items.push_back({K::Range, false, lit, lit, 0, nullptr});
    } else {
      uint32_t lit = next_cp();
      a.set.items.push_back({K::Range, false, lit, lit, 0, nullptr});
    }
    a.set.finish();
    return true;
  }
  // At "(?:" or "(?i:": a group of alternatives of single characters into a (Literals); false
  // (or a throw) when it holds more than that.
  bool literals(SplitRegex::Atom& a) {
    using AK = SplitRegex::Atom::Kind;
    {
      if (p.substr(i, 4) == "(?i:" || p.substr(i, 3) == "(?:") {
        a.kind = AK::Literals;
        const bool icase = p[i + 2] == 'i';
        i += icase ? 4 : 3;
        a.options.emplace_back();
        for (;;) {
          if (done()) fail("unterminated group");
          const char g = p[i];
          if (g == ')') {
            ++i;
            break;
          }
          if (g == '|') {
            ++i;
            a.options.emplace_back();
            continue;
          }
          if (std::string_view("](){}*+?.$^").find(g) != std::string_view::npos)
            fail("group holding more than alternatives of single characters and classes");
          SplitRegex::CharSet one;
          uint32_t lit = UINT32_MAX;
          if (g == '[') {
            if (icase) fail("class inside a case-insensitive group");
            ++i;
            klass(one);
          } else if (g == '\\') {
            ++i;
            lit = escape(one);
            if (lit != UINT32_MAX) one.items.clear();
            if (lit == UINT32_MAX && icase) fail("class escape inside a case-insensitive group");
          } else {
            lit = next_cp();
          }
          if (lit != UINT32_MAX) {
            auto add = [&](uint32_t c) {
              one.items.push_back({SplitRegex::CharSet::Kind::Range, false, c, c, 0, nullptr});
            };
            add(lit);
            if (icase && lit < 128 && std::isalpha(static_cast<int>(lit)) != 0) {
              add(lit ^ 0x20u);  // the other ASCII case
              if (lit == 's' || lit == 'S') add(0x17F);
              if (lit == 'k' || lit == 'K') add(0x212A);
            }
          }
          one.finish();
          a.options.back().push_back(std::move(one));
        }
        return true;
      }
    }
    return false;
  }
  size_t number() {
    size_t v = 0, start = i;
    while (!done() && p[i] >= '0' && p[i] <= '9') v = v * 10 + static_cast<size_t>(p[i++] - '0');
    if (i == start) fail("quantifier without a number");
    if (v > 100000) fail("quantifier bound too large");
    return v;
  }
  void quantifier(SplitRegex::Atom& a) {
    if (done()) return;
    const char c = p[i];
    if (c == '?' || c == '*' || c == '+') {
      ++i;
      a.min = c == '+' ? 1 : 0;
      a.max = c == '?' ? 1 : UINT32_MAX;
    } else if (c == '{') {
      ++i;
      a.min = static_cast<uint32_t>(number());
      a.max = a.min;
      if (!done() && p[i] == ',') {
        ++i;
        a.max = (!done() && p[i] == '}') ? UINT32_MAX : static_cast<uint32_t>(number());
      }
      if (done() || p[i] != '}') fail("unterminated {m,n}");
      ++i;
      if (a.max < a.min) fail("quantifier {m,n} with n < m");
    } else {
      return;
    }
    if (a.kind == SplitRegex::Atom::Kind::Literals && (a.min > 1 || a.max > 1)) {
      // A repeated group of single characters: a general group (same alternatives).
      SplitRegex::Atom g;
      g.kind = SplitRegex::Atom::Kind::Group;
      g.min = a.min;
      g.max = a.max;
      for (auto& opt : a.options) {
        std::vector<SplitRegex::Atom> seq;
        for (auto& cs : opt) {
          SplitRegex::Atom one;
          one.set = std::move(cs);
          seq.push_back(std::move(one));
        }
        g.alts.push_back(std::move(seq));
      }
      a = std::move(g);
    }
    if (a.kind != SplitRegex::Atom::Kind::Set && a.kind != SplitRegex::Atom::Kind::Literals &&
        a.kind != SplitRegex::Atom::Kind::Group)
      fail("quantified anchor or lookahead");
    if (!done() && (p[i] == '?' || p[i] == '+')) fail("lazy or possessive quantifier");
  }
};

// What follows a (sub)sequence once it has matched: the rest of an enclosing sequence, or the
// next iteration of a quantified group. A null continuation ends the match.
struct Cont {
  const std::vector<SplitRegex::Atom>* seq = nullptr;  // continue with (*seq)[ai..]
  size_t ai = 0;
  const SplitRegex::Atom* group = nullptr;  // or: `group` has matched `count` times
  uint32_t count = 0;
  size_t iter_start = 0;  // where the iteration just matched began
  const Cont* next = nullptr;
};

// One find_all call's state: the step counter and the memo of quantified fixed-width groups.
struct Ctx {
  std::string_view s;
  uint64_t steps = 0;
  // The result of a fixed-width group with an unbounded quantifier that has matched at least
  // `min` times, at byte `pos`, followed by (*seq)[ai..] and the end of the (sub)match: it depends
  // on `pos` only, so it is computed once per position (SuperBPE's and Tiny Aya's digit-grouping
  // lookaheads, re-run at every digit of a run, stay linear in the run's length).
  struct Memo {
    const SplitRegex::Atom* group;
    const std::vector<SplitRegex::Atom>* seq;
    size_t ai;
    std::vector<int64_t> end;  // per byte position: kUnknown, -1 (no match) or the match end
  };
  std::deque<Memo> memos;  // a deque: references stay valid while matching adds entries
  // run_to_end's state per set atom: the run [start, end) of the set that the last start inside
  // it found; every character boundary in [lowest, end] tried as the start of what follows (when
  // `tried`), the highest that matched (hit_at, or -1) and that match's end.
  struct Run {
    const SplitRegex::Atom* atom;
    bool valid = false;
    size_t start = 0, end = 0;
    bool tried = false;
    size_t lowest = 0;
    int64_t hit_at = -1, hit_end = -1;
  };
  std::deque<Run> runs;  // (as memos)
  static constexpr int64_t kUnknown = -2;
  std::vector<int64_t>& memo(const SplitRegex::Atom* g, const std::vector<SplitRegex::Atom>* seq,
                             size_t ai) {
    for (Memo& m : memos)
      if (m.group == g && m.seq == seq && m.ai == ai) return m.end;
    memos.push_back({g, seq, ai, std::vector<int64_t>(s.size() + 1, kUnknown)});
    return memos.back().end;
  }
};

int64_t match_seq(Ctx& cx, const std::vector<SplitRegex::Atom>& seq, size_t ai, size_t pos,
                  const Cont* k, int depth);

// seq[ai], a set with an unbounded quantifier (\s*, \p{L}+), then seq[ai+1..] up to the end of
// the match, at `pos`: the greedy run, then the rest tried from the run's end back. Starts inside
// one run share the run's end and the rest's results (which depend on where the rest starts
// only), so the run is scanned and each of its positions tried at most once per find_all call:
// without this, \s*[\r\n]+ (Jais-2) rescans a long space run from each 512-space cut.
int64_t run_to_end(Ctx& cx, const std::vector<SplitRegex::Atom>& seq, size_t ai, size_t pos,
                   int depth) {
  const SplitRegex::Atom& a = seq[ai];
  const std::string_view s = cx.s;
  Ctx::Run* m = nullptr;
  for (Ctx::Run& r : cx.runs)
    if (r.atom == &a) m = &r;
  if (!m) {
    cx.runs.push_back({&a});
    m = &cx.runs.back();
  }
  if (!m->valid || pos < m->start || pos > m->end) {
    size_t q = pos;
    while (q < s.size()) {
      ++cx.steps;
      int l;
      if (!a.set.test(unicode::decode_at(s, q, &l))) break;
      q += static_cast<size_t>(l);
    }
    *m = Ctx::Run{&a, true, pos, q, false, 0, -1, -1};
  }
  // The lowest allowed end: `min` characters past pos.
  size_t floor = pos;
  for (uint32_t n = 0; n < a.min; ++n) {
    ++cx.steps;
    if (floor >= m->end) return -1;
    floor += static_cast<size_t>(unicode::utf8_len(static_cast<uint8_t>(s[floor])));
  }
  if (ai + 1 == seq.size()) return static_cast<int64_t>(m->end);
  if (m->hit_at >= 0) return m->hit_at >= static_cast<int64_t>(floor) ? m->hit_end : -1;
  // Every position in [lowest, end] failed so far: go on below `lowest`, down to floor.
  size_t q = m->end;
  if (m->tried) {
    if (m->lowest <= floor) return -1;
    q = m->lowest - 1;
    while (q > 0 && (static_cast<uint8_t>(s[q]) & 0xC0) == 0x80) --q;
  }
  for (;;) {
    ++cx.steps;
    const int64_t r = match_seq(cx, seq, ai + 1, q, nullptr, depth + 1);
    m->tried = true;
    m->lowest = q;
    if (r >= 0) {
      m->hit_at = static_cast<int64_t>(q);
      m->hit_end = r;
      return r;
    }
    if (q <= floor) return -1;
    --q;
    while (q > 0 && (static_cast<uint8_t>(s[q]) & 0xC0) == 0x80) --q;
  }
}

bool is_word_at(std::string_view s, size_t pos) {
  int l;
  return pos < s.size() && (unicode::flags(unicode::decode_at(s, pos, &l)) & unicode::kWord);
}
bool is_word_before(std::string_view s, size_t pos) {
  if (pos == 0) return false;
  size_t q = pos - 1;
  while (q > 0 && (static_cast<uint8_t>(s[q]) & 0xC0) == 0x80) --q;
  return is_word_at(s, q);
}

// The byte end of one iteration of a fixed-width group (see fixed_width) at `pos`, or -1: its
// alternatives in order, the first that matches (all of them end at the same place).
int64_t fixed_iteration(Ctx& cx, const SplitRegex::Atom& g, size_t pos, int depth) {
  using AK = SplitRegex::Atom::Kind;
  const std::string_view s = cx.s;
  for (const auto& alt : g.alts) {
    size_t q = pos;
    bool ok = true;
    for (const SplitRegex::Atom& a : alt) {
      if (a.kind == AK::Ahead || a.kind == AK::NotAhead) {
        bool m = false;
        for (const auto& la : a.alts)
          if (match_seq(cx, la, 0, q, nullptr, depth + 1) >= 0) {
            m = true;
            break;
          }
        if (m != (a.kind == AK::Ahead)) {
          ok = false;
          break;
        }
        continue;
      }
      for (uint32_t n = 0; n < a.min && ok; ++n) {
        ++cx.steps;
        int l;
        if (q >= s.size() || !a.set.test(unicode::decode_at(s, q, &l))) {
          ok = false;
          break;
        }
        q += static_cast<size_t>(l);
      }
      if (!ok) break;
    }
    if (ok) return static_cast<int64_t>(q);
  }
  return -1;
}

// A group whose alternatives are classes with fixed counts and lookaheads, all the same number
// of characters wide, at least one ( ([0-9]{3}), (?:[\p{L}\p{M}]| (?=\p{L})) ): an iteration
// ends at one place or does not match, whichever alternative matches, so the greedy loop over it
// needs no recursion per iteration.
bool fixed_width(const SplitRegex::Atom& g) {
  using AK = SplitRegex::Atom::Kind;
  uint32_t width0 = 0;
  for (size_t i = 0; i < g.alts.size(); ++i) {
    uint32_t width = 0;
    for (const SplitRegex::Atom& a : g.alts[i]) {
      if (a.kind == AK::Ahead || a.kind == AK::NotAhead) continue;
      if (a.kind != AK::Set || a.min != a.max) return false;
      width += a.min;
    }
    if (i == 0) width0 = width;
    if (width != width0) return false;
  }
  return width0 > 0;
}

int64_t continue_after(Ctx& cx, const Cont* after, size_t pos, int depth);
int64_t repeat(Ctx& cx, const SplitRegex::Atom& g, uint32_t count, size_t iter_start, size_t pos,
               const Cont* after, int depth);

// repeat() for a fixed-width group: the iterations' ends forward (no recursion), then what follows
// tried from the last one back, as the backtracking would. With an unbounded quantifier and a
// continuation that is the rest of one sequence up to the end of the match, the result at each
// position past `min` iterations is memoized.
int64_t repeat_fixed(Ctx& cx, const SplitRegex::Atom& g, uint32_t count, size_t pos,
                     const Cont* after, int depth) {
  const bool memoize = g.max == UINT32_MAX && after && !after->group && !after->next;
  std::vector<int64_t>* memo = memoize ? &cx.memo(&g, after->seq, after->ai) : nullptr;
  std::vector<uint32_t> ends{static_cast<uint32_t>(pos)};
  int64_t known = -1;  // the memoized result at ends.back(), if the scan stopped at one
  bool stopped_at_known = false;
  for (;;) {
    const uint64_t c = count + (ends.size() - 1);
    const size_t q = ends.back();
    if (memo && c >= g.min && (*memo)[q] != Ctx::kUnknown) {
      known = (*memo)[q];
      stopped_at_known = true;
      break;
    }
    if (c >= g.max) break;
    const int64_t e = fixed_iteration(cx, g, q, depth);
    if (e < 0) break;
    ends.push_back(static_cast<uint32_t>(e));
  }
  // From the last end back: the result at ends[i] is the result at ends[i+1] (one more
  // iteration) if that matched, else what follows at ends[i] (when count + i >= min).
  int64_t r = stopped_at_known ? known : -1;
  for (size_t i = ends.size(); i-- > 0;) {
    ++cx.steps;
    const uint64_t c = count + i;
    if (stopped_at_known && i + 1 == ends.size()) continue;  // r is ends.back()'s result
    if (r < 0 && c >= g.min) r = continue_after(cx, after, ends[i], depth + 1);
    if (memo && c >= g.min) (*memo)[ends[i]] = r;
  }
  return r;
}

// What follows once a (sub)sequence has matched at `pos`: the continuation, or the match end.
int64_t continue_after(Ctx& cx, const Cont* after, size_t pos, int depth) {
  if (!after) return static_cast<int64_t>(pos);
  if (after->group)
    return repeat(cx, *after->group, after->count, after->iter_start, pos, after->next, depth + 1);
  return match_seq(cx, *after->seq, after->ai, pos, after->next, depth + 1);
}

// A quantified group that has matched `count` times, now at `pos`: greedily one more
// iteration (each alternative in order), else what follows. An iteration that matched nothing
// ends the loop (Oniguruma's empty-loop check).
int64_t repeat(Ctx& cx, const SplitRegex::Atom& g, uint32_t count, size_t iter_start, size_t pos,
               const Cont* after, int depth) {
  ++cx.steps;
  if (fixed_width(g)) return repeat_fixed(cx, g, count, pos, after, depth);
  const bool empty_iter = count > 0 && pos == iter_start;
  if (count < g.max && !empty_iter) {
    for (const auto& alt : g.alts) {
      Cont again{nullptr, 0, &g, count + 1, pos, after};
      if (int64_t r = match_seq(cx, alt, 0, pos, &again, depth + 1); r >= 0) return r;
    }
  }
  if (count >= g.min || empty_iter) return continue_after(cx, after, pos, depth);
  return -1;
}

// The end of a match of seq[ai..] starting at byte `pos` and then of the continuation `k`, or -1.
int64_t match_seq(Ctx& cx, const std::vector<SplitRegex::Atom>& seq, size_t ai, size_t pos,
                  const Cont* k, int depth) {
  using AK = SplitRegex::Atom::Kind;
  const std::string_view s = cx.s;
  ++cx.steps;
  // Backtracking depth grows with the text only through quantified groups; bound it so a hostile
  // pattern and text cannot exhaust the stack.
  MINFER_CHECK(
      depth < 6000,
      "split regex: backtracking deeper than 6000 steps (a long run through a quantified group)");
  for (; ai < seq.size(); ++ai) {
    const SplitRegex::Atom& a = seq[ai];
    if (a.kind == AK::End) {
      if (pos != s.size() && s[pos] != '\n') return -1;
      continue;
    }
    if (a.kind == AK::WordBoundary) {
      if (is_word_before(s, pos) == is_word_at(s, pos)) return -1;
      continue;
    }
    if (a.kind == AK::Group) {
      Cont after{&seq, ai + 1, nullptr, 0, 0, k};
      return repeat(cx, a, 0, pos, pos, &after, depth + 1);
    }
    if (a.kind == AK::Literals) {
      // Each alternative in order, then (when optional) none: the backtracking order.
      for (const auto& opt : a.options) {
        size_t q = pos;
        bool ok = true;
        for (const SplitRegex::CharSet& want : opt) {
          ++cx.steps;
          if (q >= s.size()) {
            ok = false;
            break;
          }
          int l;
          if (!want.test(unicode::decode_at(s, q, &l))) {
            ok = false;
            break;
          }
          q += static_cast<size_t>(l);
        }
        if (!ok) continue;
        if (int64_t r = match_seq(cx, seq, ai + 1, q, k, depth + 1); r >= 0) return r;
      }
      if (a.min == 0) continue;
      return -1;
    }
    if (a.kind == AK::NotAhead || a.kind == AK::Ahead) {
      bool m = false;
      for (const auto& alt : a.alts)
        if (match_seq(cx, alt, 0, pos, nullptr, depth + 1) >= 0) {
          m = true;
          break;
        }
      if (m != (a.kind == AK::Ahead)) return -1;
      continue;
    }
    // A set with a quantifier: take as many as possible, then give back one at a time.
    if (a.min == 1 && a.max == 1) {
      if (pos >= s.size()) return -1;
      int l;
      if (!a.set.test(unicode::decode_at(s, pos, &l))) return -1;
      pos += static_cast<size_t>(l);
      continue;
    }
    if (a.max == UINT32_MAX && !k) return run_to_end(cx, seq, ai, pos, depth);
    std::vector<uint32_t> ends{static_cast<uint32_t>(pos)};
    size_t q = pos;
    while (ends.size() - 1 < a.max && q < s.size()) {
      ++cx.steps;
      int l;
      if (!a.set.test(unicode::decode_at(s, q, &l))) break;
      q += static_cast<size_t>(l);
      ends.push_back(static_cast<uint32_t>(q));
    }
    const size_t count = ends.size() - 1;
    if (count < a.min) return -1;
    if (ai + 1 == seq.size() && !k) return ends[count];
    for (size_t k2 = count + 1; k2-- > a.min;) {
      ++cx.steps;
      int64_t r = match_seq(cx, seq, ai + 1, ends[k2], k, depth + 1);
      if (r >= 0) return r;
    }
    return -1;
  }
  return continue_after(cx, k, pos, depth);
}

}  // namespace

namespace {
thread_local uint64_t t_steps = 0;
}  // namespace

uint64_t SplitRegex::steps_on_this_thread() {
  return t_steps;
}

std::shared_ptr<const SplitRegex> SplitRegex::compile(std::string_view pattern) {
  const size_t bad = unicode::find_invalid_utf8(pattern);
  MINFER_CHECK(bad == std::string_view::npos, "split regex: not valid UTF-8 at byte offset {}",
               bad);
  auto re = std::make_shared<SplitRegex>();
  Parser ps{pattern};
  re->alts_ = ps.alternatives();
  if (!ps.done()) ps.fail("unbalanced ')'");
  return re;
}

void SplitRegex::find_all(std::string_view s,
                          std::vector<std::pair<uint32_t, uint32_t>>& out) const {
  Ctx cx;
  cx.s = s;
  size_t start = 0;
  int64_t last_end = -1;  // end of the last match kept
  while (start < s.size()) {
    int64_t end = -1;
    ++cx.steps;
    for (const auto& alt : alts_)
      if ((end = match_seq(cx, alt, 0, start, nullptr, 0)) >= 0) break;
    if (end > static_cast<int64_t>(start)) {
      out.emplace_back(static_cast<uint32_t>(start), static_cast<uint32_t>(end));
      start = static_cast<size_t>(end);
      last_end = end;
    } else {
      // An empty match is kept (it splits the text there), except right after the last match.
      if (end == static_cast<int64_t>(start) && last_end != end && start > 0) {
        out.emplace_back(static_cast<uint32_t>(start), static_cast<uint32_t>(start));
        last_end = end;
      }
      start += static_cast<size_t>(unicode::utf8_len(static_cast<uint8_t>(s[start])));
    }
  }
  t_steps += cx.steps;
}

}  // namespace minfer::pretok
