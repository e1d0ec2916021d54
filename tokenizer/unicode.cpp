// Shared by every pipeline stage: UTF-8 decoding and validation, the code-point class table
// (utf8proc), normalization forms, lowercasing and the GPT-2 byte<->unicode map (see unicode.h).
#include "tokenizer/unicode.h"

#include <utf8proc.h>

#include <cstdlib>
#include <memory>
#include <vector>

#include "engine/error.h"

namespace minfer::unicode {

namespace {

uint8_t compute_flags(uint32_t cp) {
  utf8proc_category_t cat = utf8proc_category(static_cast<utf8proc_int32_t>(cp));
  uint8_t f = 0;
  switch (cat) {
    case UTF8PROC_CATEGORY_LU:
    case UTF8PROC_CATEGORY_LL:
    case UTF8PROC_CATEGORY_LT:
    case UTF8PROC_CATEGORY_LM:
    case UTF8PROC_CATEGORY_LO:
      f |= kLetter | kWord;
      break;
    case UTF8PROC_CATEGORY_MN:
      f |= kMn | kMark | kWord;
      break;
    case UTF8PROC_CATEGORY_MC:
    case UTF8PROC_CATEGORY_ME:
      f |= kMark | kWord;
      break;
    case UTF8PROC_CATEGORY_ND:
    case UTF8PROC_CATEGORY_NL:
      f |= kNumber | kWord;
      break;
    case UTF8PROC_CATEGORY_NO:
      f |= kNumber;
      break;
    case UTF8PROC_CATEGORY_PC:
      f |= kPunct | kWord;
      break;
    case UTF8PROC_CATEGORY_PD:
    case UTF8PROC_CATEGORY_PS:
    case UTF8PROC_CATEGORY_PE:
    case UTF8PROC_CATEGORY_PI:
    case UTF8PROC_CATEGORY_PF:
    case UTF8PROC_CATEGORY_PO:
      f |= kPunct;
      break;
    case UTF8PROC_CATEGORY_ZS:
    case UTF8PROC_CATEGORY_ZL:
    case UTF8PROC_CATEGORY_ZP:
      f |= kSpace;
      break;
    case UTF8PROC_CATEGORY_CN:
    case UTF8PROC_CATEGORY_CC:
    case UTF8PROC_CATEGORY_CF:
    case UTF8PROC_CATEGORY_CO:
    case UTF8PROC_CATEGORY_CS:
      f |= kOther;
      break;
    default:
      break;
  }
  if ((cp >= 0x09 && cp <= 0x0D) || cp == 0x85) f |= kSpace;
  if (cp == 0x200C || cp == 0x200D) f |= kWord;  // Join_Control is part of Oniguruma's \w
  return f;
}

const uint8_t* flag_table() {
  static const std::unique_ptr<uint8_t[]> table = [] {
    std::unique_ptr<uint8_t[]> t(new uint8_t[0x110000]);
    for (uint32_t cp = 0; cp < 0x110000; ++cp) t[cp] = compute_flags(cp);
    return t;
  }();
  return table.get();
}

std::string utf8proc_normalize(std::string_view s, int options) {
  if (s.empty()) return {};
  utf8proc_uint8_t* out = nullptr;
  utf8proc_ssize_t n = utf8proc_map(reinterpret_cast<const utf8proc_uint8_t*>(s.data()),
                                    static_cast<utf8proc_ssize_t>(s.size()), &out,
                                    static_cast<utf8proc_option_t>(options | UTF8PROC_STABLE));
  if (n < 0) {
    std::free(out);
    MINFER_FAIL("unicode normalization failed: {}", utf8proc_errmsg(n));
  }
  std::string r(reinterpret_cast<const char*>(out), static_cast<size_t>(n));
  std::free(out);
  return r;
}

}  // namespace

uint8_t flags(uint32_t cp) {
  static const uint8_t* t = flag_table();
  return cp < 0x110000 ? t[cp] : 0;
}

static_assert(UTF8PROC_CATEGORY_LU == 1 && UTF8PROC_CATEGORY_ND == 9 &&
              UTF8PROC_CATEGORY_SO == 22 && UTF8PROC_CATEGORY_CO == 29);
Category category(uint32_t cp) {
  if (cp > 0x10FFFF) return Category::Cn;
  return static_cast<Category>(utf8proc_category(static_cast<utf8proc_int32_t>(cp)));
}

bool is_chinese_char(uint32_t cp) {
  return (cp >= 0x4E00 && cp <= 0x9FFF) || (cp >= 0x3400 && cp <= 0x4DBF) ||
         (cp >= 0x20000 && cp <= 0x2A6DF) || (cp >= 0x2A700 && cp <= 0x2B73F) ||
         (cp >= 0x2B740 && cp <= 0x2B81F) || (cp >= 0x2B920 && cp <= 0x2CEAF) ||
         (cp >= 0xF900 && cp <= 0xFAFF) || (cp >= 0x2F800 && cp <= 0x2FA1F);
}

void append_utf8(std::string& out, uint32_t cp) {
  if (cp < 0x80) {
    out.push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out.push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out.push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out.push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

namespace {
// Length of the well-formed sequence at p[0..n), or -k where k >= 1 is the length of the maximal
// ill-formed subpart to replace (Unicode Table 3-7).
int utf8_step(const uint8_t* p, size_t n) {
  uint8_t c = p[0];
  if (c < 0x80) return 1;
  int len;
  uint8_t lo = 0x80, hi = 0xBF;
  if (c >= 0xC2 && c <= 0xDF) {
    len = 2;
  } else if (c >= 0xE0 && c <= 0xEF) {
    len = 3;
    if (c == 0xE0) lo = 0xA0;
    if (c == 0xED) hi = 0x9F;
  } else if (c >= 0xF0 && c <= 0xF4) {
    len = 4;
    if (c == 0xF0) lo = 0x90;
    if (c == 0xF4) hi = 0x8F;
  } else {
    return -1;
  }
  for (int k = 1; k < len; ++k) {
    if (static_cast<size_t>(k) >= n) return -k;
    uint8_t b = p[k];
    uint8_t l = k == 1 ? lo : 0x80, h = k == 1 ? hi : 0xBF;
    if (b < l || b > h) return -k;
  }
  return len;
}
}  // namespace

size_t find_invalid_utf8(std::string_view s) {
  const uint8_t* p = reinterpret_cast<const uint8_t*>(s.data());
  size_t i = 0, n = s.size();
  while (i < n) {
    // ASCII fast path, 8 bytes at a time.
    while (i + 8 <= n) {
      uint64_t w;
      __builtin_memcpy(&w, p + i, 8);
      if (w & 0x8080808080808080ull) break;
      i += 8;
    }
    if (i >= n) break;
    int k = utf8_step(p + i, n - i);
    if (k < 0) return i;
    i += static_cast<size_t>(k);
  }
  return std::string_view::npos;
}

std::string replace_invalid_utf8(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  const uint8_t* p = reinterpret_cast<const uint8_t*>(s.data());
  size_t i = 0, n = s.size();
  while (i < n) {
    int k = utf8_step(p + i, n - i);
    if (k > 0) {
      out.append(s.data() + i, static_cast<size_t>(k));
      i += static_cast<size_t>(k);
    } else {
      out += "\xEF\xBF\xBD";
      i += static_cast<size_t>(-k);
    }
  }
  return out;
}

size_t count_chars(std::string_view s) {
  size_t n = 0;
  for (char c : s) n += (static_cast<uint8_t>(c) & 0xC0) != 0x80;
  return n;
}

std::string nfd(std::string_view s) {
  return utf8proc_normalize(s, UTF8PROC_DECOMPOSE);
}
std::string nfc(std::string_view s) {
  return utf8proc_normalize(s, UTF8PROC_COMPOSE);
}
std::string nfkd(std::string_view s) {
  return utf8proc_normalize(s, UTF8PROC_DECOMPOSE | UTF8PROC_COMPAT);
}
std::string nfkc(std::string_view s) {
  return utf8proc_normalize(s, UTF8PROC_COMPOSE | UTF8PROC_COMPAT);
}

std::string lowercase(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size();) {
    int len;
    uint32_t cp = decode_at(s, i, &len);
    i += static_cast<size_t>(len);
    if (cp < 0x80) {
      out.push_back(static_cast<char>(cp >= 'A' && cp <= 'Z' ? cp + 32 : cp));
    } else if (cp == 0x130) {  // the one unconditional multi-char lowercase mapping
      out += "i\xCC\x87";
    } else {
      append_utf8(out, static_cast<uint32_t>(utf8proc_tolower(static_cast<utf8proc_int32_t>(cp))));
    }
  }
  return out;
}

const std::array<uint32_t, 256>& byte_to_cp() {
  // GPT-2 (openai/gpt-2 encoder.py bytes_to_unicode): printable Latin-1 bytes map to themselves,
  // the other 68 bytes to U+0100.. in byte order.
  static const std::array<uint32_t, 256> table = [] {
    std::array<uint32_t, 256> t{};
    uint32_t next = 256;
    for (uint32_t b = 0; b < 256; ++b) {
      bool printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
      t[b] = printable ? b : next++;
    }
    return t;
  }();
  return table;
}

int cp_to_byte(uint32_t cp) {
  static const std::array<int16_t, 324> inv = [] {
    std::array<int16_t, 324> t;
    t.fill(-1);
    const auto& f = byte_to_cp();
    for (int b = 0; b < 256; ++b) t[f[b]] = static_cast<int16_t>(b);
    return t;
  }();
  return cp < inv.size() ? inv[cp] : -1;
}

void byte_level_encode(std::string_view s, std::string& out) {
  // Precomputed UTF-8 forms of the 256 byte symbols.
  struct Enc {
    char b[2];
    uint8_t n;
  };
  static const std::array<Enc, 256> enc = [] {
    std::array<Enc, 256> t{};
    const auto& f = byte_to_cp();
    for (int b = 0; b < 256; ++b) {
      std::string u;
      append_utf8(u, f[b]);
      t[b].n = static_cast<uint8_t>(u.size());
      for (size_t k = 0; k < u.size(); ++k) t[b].b[k] = u[k];
    }
    return t;
  }();
  out.reserve(out.size() + s.size() * 2);
  for (char c : s) {
    const Enc& e = enc[static_cast<uint8_t>(c)];
    out.append(e.b, e.n);
  }
}

}  // namespace minfer::unicode
