// Unicode helpers for the tokenizers: UTF-8 decoding/validation, per-code-point class flags
// (from utf8proc's tables), normalization forms, lowercasing and GPT-2's byte<->unicode map.
//
// The class flags follow the definitions the Hugging Face `tokenizers` components use:
//   kLetter  \p{L}  (Lu Ll Lt Lm Lo)            kNumber  \p{N} (Nd Nl No) == Rust char::is_numeric
//   kSpace   Oniguruma's Unicode \s: U+0009..U+000D, U+0085, Zs, Zl, Zp; for the current Unicode
//            version this equals the White_Space property, i.e. Rust char::is_whitespace
//   kPunct   P* (Rust unicode_categories is_punctuation)   kMn  Mn (nonspacing marks)
//   kOther   Cc Cf Cn Co Cs (unicode_categories is_other, used by BertNormalizer's clean_text)
//   kWord    Oniguruma's \w: L, M, Nd, Nl, Pc and Join_Control (U+200C, U+200D)
#pragma once
#include <array>
#include <cstdint>
#include <string>
#include <string_view>

namespace minfer::unicode {

enum : uint8_t {
  kLetter = 1,
  kNumber = 2,
  kSpace = 4,
  kPunct = 8,
  kMn = 16,
  kOther = 32,
  kWord = 64,
  kMark = 128,
};

// Flags for code point cp (0 for cp > 0x10FFFF).
uint8_t flags(uint32_t cp);

inline bool is_letter(uint32_t cp) {
  return flags(cp) & kLetter;
}
inline bool is_number(uint32_t cp) {
  return flags(cp) & kNumber;
}
inline bool is_space(uint32_t cp) {
  return flags(cp) & kSpace;
}
inline bool is_punct(uint32_t cp) {
  return flags(cp) & kPunct;
}
inline bool is_ascii_punct(uint32_t cp) {
  return (cp >= 33 && cp <= 47) || (cp >= 58 && cp <= 64) || (cp >= 91 && cp <= 96) ||
         (cp >= 123 && cp <= 126);
}
// BertPreTokenizer / BasicTokenizer punctuation: ASCII punctuation or Unicode P*.
inline bool is_bert_punct(uint32_t cp) {
  return is_ascii_punct(cp) || is_punct(cp);
}
// Unicode general category, in utf8proc's order (utf8proc_category_t): \p{Lu}, \p{Nd}, ...
enum class Category : uint8_t {
  Cn,
  Lu,
  Ll,
  Lt,
  Lm,
  Lo,
  Mn,
  Mc,
  Me,
  Nd,
  Nl,
  No,
  Pc,
  Pd,
  Ps,
  Pe,
  Pi,
  Pf,
  Po,
  Sm,
  Sc,
  Sk,
  So,
  Zs,
  Zl,
  Zp,
  Cc,
  Cf,
  Cs,
  Co
};
Category category(uint32_t cp);  // Cn for cp > 0x10FFFF

// The CJK ideograph blocks that BertNormalizer surrounds with spaces (HF bert.rs).
bool is_chinese_char(uint32_t cp);

// ---- UTF-8 ----
// Byte length of the sequence that starts with `lead` (1 for continuation/invalid bytes).
inline int utf8_len(uint8_t lead) {
  return lead < 0x80 ? 1 : lead < 0xE0 ? (lead < 0xC0 ? 1 : 2) : lead < 0xF0 ? 3 : 4;
}
// Decodes the code point at s[i] (s must be valid UTF-8); stores its byte length in *len.
inline uint32_t decode_at(std::string_view s, size_t i, int* len) {
  const uint8_t* p = reinterpret_cast<const uint8_t*>(s.data()) + i;
  uint8_t c = p[0];
  if (c < 0x80) {
    *len = 1;
    return c;
  }
  if (c < 0xE0) {
    *len = 2;
    return ((c & 0x1Fu) << 6) | (p[1] & 0x3Fu);
  }
  if (c < 0xF0) {
    *len = 3;
    return ((c & 0x0Fu) << 12) | ((p[1] & 0x3Fu) << 6) | (p[2] & 0x3Fu);
  }
  *len = 4;
  return ((c & 0x07u) << 18) | ((p[1] & 0x3Fu) << 12) | ((p[2] & 0x3Fu) << 6) | (p[3] & 0x3Fu);
}
void append_utf8(std::string& out, uint32_t cp);
// Offset of the first byte that is not part of a well-formed UTF-8 sequence (overlong forms,
// surrogates and code points above U+10FFFF are ill-formed), or npos if `s` is valid.
size_t find_invalid_utf8(std::string_view s);
// Replaces each maximal ill-formed subpart by U+FFFD (the Unicode "best practice" that
// Python's bytes.decode(errors="replace") and Rust's String::from_utf8_lossy implement).
std::string replace_invalid_utf8(std::string_view s);
// Number of code points in valid UTF-8.
size_t count_chars(std::string_view s);

// ---- normalization and case (inputs must be valid UTF-8) ----
std::string nfd(std::string_view s);
std::string nfc(std::string_view s);
std::string nfkd(std::string_view s);
std::string nfkc(std::string_view s);
// Rust char::to_lowercase per code point (U+0130 becomes "i\u0307"; no final-sigma rule).
std::string lowercase(std::string_view s);

// ---- GPT-2 byte-level alphabet ----
// byte_to_cp()[b] is the printable code point that stands for byte b (GPT-2's bytes_to_unicode).
const std::array<uint32_t, 256>& byte_to_cp();
// Inverse: the byte for code point cp, or -1 when cp is not in the byte-level alphabet.
int cp_to_byte(uint32_t cp);
// Appends the byte-level form of raw bytes `s` to `out` (each byte becomes 1 or 2 UTF-8 bytes).
void byte_level_encode(std::string_view s, std::string& out);

}  // namespace minfer::unicode
