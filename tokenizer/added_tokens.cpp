// Pipeline stage 1, added tokens: parsing an "added_tokens" entry and the leftmost-longest
// matcher with HF's lstrip, rstrip and single_word rules (tokenizer/added_vocabulary.rs).
#include "tokenizer/added_tokens.h"

#include <utility>

#include "tokenizer/unicode.h"

namespace minfer {

AddedToken parse_added_token(const nlohmann::json& a, const JsonReader& r) {
  AddedToken t;
  t.id = static_cast<int32_t>(r.integer(a, "id", -1));
  t.content = r.str(a, "content", "added_tokens entry");
  if (t.id < 0) r.fail(fmt::format("added token '{}' has no valid id", t.content));
  t.special = r.boolean(a, "special", false);
  t.normalized = r.boolean(a, "normalized", !t.special);
  t.lstrip = r.boolean(a, "lstrip", false);
  t.rstrip = r.boolean(a, "rstrip", false);
  t.single_word = r.boolean(a, "single_word", false);
  return t;
}

namespace {

bool is_word_char(uint32_t cp) {
  return cp == '_' || (unicode::flags(cp) & (unicode::kLetter | unicode::kNumber));
}

}  // namespace

void AddedMatcher::split(std::string_view s, std::vector<Seg>& out) const {
  const size_t n = s.size();
  size_t start_offset = 0;
  size_t i = 0;
  while (i < n) {
    const auto& cands = by_first[static_cast<uint8_t>(s[i])];
    size_t best_len = 0;
    int best = -1;
    for (uint32_t c : cands) {
      const std::string& p = patterns[c];
      if (p.size() > best_len && n - i >= p.size() && s.compare(i, p.size(), p) == 0) {
        best_len = p.size();
        best = static_cast<int>(c);
      }
    }
    if (best < 0) {
      ++i;
      continue;
    }
    const AddedToken& t = *tokens[static_cast<size_t>(best)];
    size_t start = i, stop = i + best_len;
    if (t.single_word) {
      bool start_ok = true, stop_ok = true;
      if (start > 0) {  // the character before must not be a word character
        size_t p = start - 1;
        while (p > 0 && (static_cast<uint8_t>(s[p]) & 0xC0) == 0x80) --p;
        int l;
        start_ok = !is_word_char(unicode::decode_at(s, p, &l));
      }
      if (stop < n) {
        int l;
        stop_ok = !is_word_char(unicode::decode_at(s, stop, &l));
      }
      if (!start_ok || !stop_ok) {
        ++i;
        continue;
      }
    }
    if (t.lstrip) {  // swallow the whitespace before the token
      size_t p = start;
      while (p > start_offset) {
        size_t q = p - 1;
        while (q > 0 && (static_cast<uint8_t>(s[q]) & 0xC0) == 0x80) --q;
        int l;
        if (!unicode::is_space(unicode::decode_at(s, q, &l))) break;
        p = q;
      }
      start = p;
    }
    if (t.rstrip) {  // and after it
      while (stop < n) {
        int l;
        if (!unicode::is_space(unicode::decode_at(s, stop, &l))) break;
        stop += static_cast<size_t>(l);
      }
    }
    if (start_offset < start)
      out.push_back({static_cast<uint32_t>(start_offset), static_cast<uint32_t>(start), -1});
    out.push_back({static_cast<uint32_t>(start), static_cast<uint32_t>(stop), t.id});
    start_offset = stop;
    i = stop;
  }
  if (start_offset < n)
    out.push_back({static_cast<uint32_t>(start_offset), static_cast<uint32_t>(n), -1});
}

}  // namespace minfer
