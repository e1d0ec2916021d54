// Pipeline stage 2, the normalizer: tokenizer.json parsing and the text rewrite of each
// normalizer, following HF tokenizers/src/normalizers/*.rs.
#include "tokenizer/normalizers.h"

#include "tokenizer/unicode.h"

namespace minfer {

using nlohmann::json;

std::string replace_all(std::string_view s, std::string_view from, std::string_view to) {
  if (from.empty()) return std::string(s);
  std::string out;
  out.reserve(s.size());
  size_t pos = 0;
  for (;;) {
    size_t hit = s.find(from, pos);
    if (hit == std::string_view::npos) break;
    out.append(s.substr(pos, hit - pos));
    out.append(to);
    pos = hit + from.size();
  }
  out.append(s.substr(pos));
  return out;
}

void parse_normalizer(const json& o, const JsonReader& r, std::vector<Normalizer>& out) {
  if (o.is_null()) return;
  std::string t = r.type(o, "normalizer");
  using K = Normalizer::Kind;
  Normalizer n;
  if (t == "Sequence") {
    for (const json& c : r.array(o, "normalizers", "Sequence normalizer"))
      parse_normalizer(c, r, out);
    return;
  } else if (t == "BertNormalizer") {
    n.kind = K::Bert;
    n.clean_text = r.boolean(o, "clean_text", true);
    n.chinese = r.boolean(o, "handle_chinese_chars", true);
    n.lower = r.boolean(o, "lowercase", true);
    n.strip_accents = r.boolean(o, "strip_accents", n.lower);  // null: follows lowercase
  } else if (t == "Lowercase") {
    n.kind = K::Lowercase;
  } else if (t == "NFC") {
    n.kind = K::Nfc;
  } else if (t == "NFD") {
    n.kind = K::Nfd;
  } else if (t == "NFKC") {
    n.kind = K::Nfkc;
  } else if (t == "NFKD") {
    n.kind = K::Nfkd;
  } else if (t == "StripAccents") {
    n.kind = K::StripAccents;
  } else if (t == "Strip") {
    n.kind = K::Strip;
    n.left = r.boolean(o, "strip_left", true);
    n.right = r.boolean(o, "strip_right", true);
  } else if (t == "Replace") {
    n.kind = K::Replace;
    auto [is_regex, p] = r.pattern(o, "Replace normalizer");
    if (is_regex)
      r.fail(fmt::format("Replace normalizer with a Regex pattern ('{}') is not supported", p));
    n.pattern = p;
    n.content = r.str(o, "content", "Replace normalizer");
  } else if (t == "Prepend") {
    n.kind = K::Prepend;
    n.content = r.str(o, "prepend", "Prepend normalizer");
  } else if (t == "ByteLevel") {
    n.kind = K::ByteLevel;
  } else {
    r.fail(fmt::format(
        "normalizer type '{}' is not supported (supported: Sequence, BertNormalizer, "
        "Lowercase, NFC, NFD, NFKC, NFKD, StripAccents, Strip, Replace, Prepend, ByteLevel)",
        t));
  }
  out.push_back(std::move(n));
}

std::string normalize(const std::vector<Normalizer>& normalizers, std::string_view s) {
  std::string cur(s), next;
  for (const Normalizer& n : normalizers) {
    next.clear();
    switch (n.kind) {
      case Normalizer::Kind::Bert: {  // normalizers/bert.rs
        for (size_t i = 0; i < cur.size();) {
          int l;
          uint32_t cp = unicode::decode_at(cur, i, &l);
          std::string_view ch(cur.data() + i, static_cast<size_t>(l));
          i += static_cast<size_t>(l);
          if (n.clean_text) {
            bool ctl =
                cp != '\t' && cp != '\n' && cp != '\r' && (unicode::flags(cp) & unicode::kOther);
            if (cp == 0 || cp == 0xFFFD || ctl) continue;
            if (unicode::is_space(cp)) {
              next.push_back(' ');
              continue;
            }
          }
          if (n.chinese && unicode::is_chinese_char(cp)) {
            next.push_back(' ');
            next.append(ch);
            next.push_back(' ');
            continue;
          }
          next.append(ch);
        }
        if (n.strip_accents) {
          std::string d = unicode::nfd(next);
          next.clear();
          for (size_t i = 0; i < d.size();) {
            int l;
            uint32_t cp = unicode::decode_at(d, i, &l);
            if (!(unicode::flags(cp) & unicode::kMn)) next.append(d, i, static_cast<size_t>(l));
            i += static_cast<size_t>(l);
          }
        }
        if (n.lower) next = unicode::lowercase(next);
        break;
      }
      case Normalizer::Kind::Lowercase:
        next = unicode::lowercase(cur);
        break;
      case Normalizer::Kind::Nfc:
        next = unicode::nfc(cur);
        break;
      case Normalizer::Kind::Nfd:
        next = unicode::nfd(cur);
        break;
      case Normalizer::Kind::Nfkc:
        next = unicode::nfkc(cur);
        break;
      case Normalizer::Kind::Nfkd:
        next = unicode::nfkd(cur);
        break;
      case Normalizer::Kind::StripAccents:
        for (size_t i = 0; i < cur.size();) {
          int l;
          uint32_t cp = unicode::decode_at(cur, i, &l);
          if (!(unicode::flags(cp) & unicode::kMn)) next.append(cur, i, static_cast<size_t>(l));
          i += static_cast<size_t>(l);
        }
        break;
      case Normalizer::Kind::Strip: {
        size_t b = 0, e = cur.size();
        if (n.left)
          while (b < e) {
            int l;
            if (!unicode::is_space(unicode::decode_at(cur, b, &l))) break;
            b += static_cast<size_t>(l);
          }
        if (n.right)
          while (e > b) {
            size_t q = e - 1;
            while (q > b && (static_cast<uint8_t>(cur[q]) & 0xC0) == 0x80) --q;
            int l;
            if (!unicode::is_space(unicode::decode_at(cur, q, &l))) break;
            e = q;
          }
        next = cur.substr(b, e - b);
        break;
      }
      case Normalizer::Kind::Replace:
        next = replace_all(cur, n.pattern, n.content);
        break;
      case Normalizer::Kind::Prepend:
        if (!cur.empty()) next = n.content + cur;
        break;
      case Normalizer::Kind::ByteLevel:
        unicode::byte_level_encode(cur, next);
        break;
    }
    cur.swap(next);
  }
  return cur;
}

}  // namespace minfer
