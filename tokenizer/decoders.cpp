// The way back, the decoder: tokenizer.json parsing and each decoder's rewrite of the list of
// token strings, following HF tokenizers/src/decoders/*.rs.
#include "tokenizer/decoders.h"

#include <utility>

#include "engine/error.h"
#include "tokenizer/normalizers.h"
#include "tokenizer/unicode.h"

namespace minfer {

using nlohmann::json;

void parse_decoder(const json& o, const JsonReader& r, std::vector<Decoder>& out) {
  if (o.is_null()) return;
  std::string t = r.type(o, "decoder");
  using K = Decoder::Kind;
  Decoder d;
  if (t == "Sequence") {
    for (const json& c : r.array(o, "decoders", "Sequence decoder")) parse_decoder(c, r, out);
    return;
  } else if (t == "ByteLevel") {
    d.kind = K::ByteLevel;
  } else if (t == "Replace") {
    d.kind = K::Replace;
    auto [is_regex, p] = r.pattern(o, "Replace decoder");
    if (is_regex)
      r.fail(fmt::format("Replace decoder with a Regex pattern ('{}') is not supported", p));
    d.a = p;
    d.b = r.str(o, "content", "Replace decoder");
  } else if (t == "ByteFallback") {
    d.kind = K::ByteFallback;
  } else if (t == "Fuse") {
    d.kind = K::Fuse;
  } else if (t == "Strip") {
    d.kind = K::Strip;
    std::string c = r.one_char(o, "content", "Strip decoder");
    int l;
    d.ch = unicode::decode_at(c, 0, &l);
    d.start = static_cast<size_t>(r.integer(o, "start", 0));
    d.stop = static_cast<size_t>(r.integer(o, "stop", 0));
  } else if (t == "WordPiece") {
    d.kind = K::WordPiece;
    d.a = r.str_or(o, "prefix", "##");
    d.cleanup = r.boolean(o, "cleanup", true);
  } else if (t == "Metaspace") {
    d.kind = K::Metaspace;
    d.a = r.one_char(o, "replacement", "Metaspace decoder");
    d.prepend = parse_prepend_scheme(o, r);
  } else if (t == "BPEDecoder") {
    d.kind = K::Bpe;
    d.a = r.str_or(o, "suffix", "</w>");
  } else {
    r.fail(
        fmt::format("decoder type '{}' is not supported (supported: Sequence, ByteLevel, Replace, "
                    "ByteFallback, Fuse, Strip, WordPiece, Metaspace, BPEDecoder)",
                    t));
  }
  out.push_back(std::move(d));
}

namespace {

// mid: the list is one token in the middle of a text (decode_piece): keep raw bytes, no
// first / last token rules.
void decode_step(const Decoder& d, std::vector<std::string>& toks, bool mid) {
  switch (d.kind) {
    case Decoder::Kind::ByteLevel: {  // bytes of every token, then one lossy UTF-8 string
      std::string bytes;
      for (const std::string& t : toks) {
        size_t mark = bytes.size();
        bool ok = true;
        for (size_t i = 0; i < t.size() && ok;) {
          int l;
          int b = unicode::cp_to_byte(unicode::decode_at(t, i, &l));
          if (b < 0)
            ok = false;
          else
            bytes.push_back(static_cast<char>(b));
          i += static_cast<size_t>(l);
        }
        if (!ok) {
          bytes.resize(mark);
          bytes += t;
        }
      }
      toks.assign(1, mid ? bytes : unicode::replace_invalid_utf8(bytes));
      return;
    }
    case Decoder::Kind::Replace:
      for (std::string& t : toks) t = replace_all(t, d.a, d.b);
      return;
    case Decoder::Kind::ByteFallback: {
      std::vector<std::string> out;
      std::string pending;
      auto flush = [&] {
        if (pending.empty()) return;
        if (mid || unicode::find_invalid_utf8(pending) == std::string::npos)
          out.push_back(pending);
        else
          for (size_t i = 0; i < pending.size(); ++i) out.emplace_back("\xEF\xBF\xBD");
        pending.clear();
      };
      for (std::string& t : toks) {
        int byte = -1;
        if (t.size() == 6 && t.compare(0, 3, "<0x") == 0 && t[5] == '>') {
          auto hex = [](char c) {
            return c >= '0' && c <= '9'   ? c - '0'
                   : c >= 'A' && c <= 'F' ? c - 'A' + 10
                   : c >= 'a' && c <= 'f' ? c - 'a' + 10
                                          : -1;
          };
          int h = hex(t[3]), l = hex(t[4]);
          if (h >= 0 && l >= 0) byte = h * 16 + l;
        }
        if (byte >= 0) {
          pending.push_back(static_cast<char>(byte));
        } else {
          flush();
          out.push_back(std::move(t));
        }
      }
      flush();
      toks.swap(out);
      return;
    }
    case Decoder::Kind::Fuse: {
      std::string all;
      for (const std::string& t : toks) all += t;
      toks.assign(1, std::move(all));
      return;
    }
    case Decoder::Kind::Strip:
      if (mid) return;  // only strips the start / end of a whole text
      for (std::string& t : toks) {
        std::vector<std::pair<size_t, uint32_t>> chars;  // (offset, cp)
        for (size_t i = 0; i < t.size();) {
          int l;
          chars.emplace_back(i, unicode::decode_at(t, i, &l));
          i += static_cast<size_t>(l);
        }
        size_t b = 0, e = chars.size();
        for (size_t i = 0; i < d.start && i < chars.size() && chars[i].second == d.ch; ++i)
          b = i + 1;
        for (size_t i = 0; i < d.stop && i < chars.size(); ++i) {
          size_t idx = chars.size() - i - 1;
          if (chars[idx].second != d.ch) break;
          e = idx;
        }
        if (b >= e) {
          t.clear();
        } else {
          size_t bo = chars[b].first, eo = e < chars.size() ? chars[e].first : t.size();
          t = t.substr(bo, eo - bo);
        }
      }
      return;
    case Decoder::Kind::WordPiece:
      for (size_t i = 0; i < toks.size(); ++i) {
        std::string& t = toks[i];
        if (t.compare(0, d.a.size(), d.a) == 0 && !d.a.empty())
          t.erase(0, d.a.size());
        else if (i != 0 || mid)
          t.insert(0, 1, ' ');  // (0, " ") trips GCC 12's false -Wrestrict warning
        if (d.cleanup) {        // decoders/wordpiece.rs cleanup()
          static const std::pair<const char*, const char*> rules[] = {
              {" .", "."},   {" ?", "?"},     {" !", "!"},    {" ,", ","},
              {" ' ", "'"},  {" n't", "n't"}, {" 'm", "'m"},  {" do not", " don't"},
              {" 's", "'s"}, {" 've", "'ve"}, {" 're", "'re"}};
          for (const auto& [from, to] : rules) t = replace_all(t, from, to);
        }
      }
      return;
    case Decoder::Kind::Metaspace:
      for (size_t i = 0; i < toks.size(); ++i) {
        std::string r;
        const std::string& t = toks[i];
        for (size_t p = 0; p < t.size();) {
          if (t.compare(p, d.a.size(), d.a) == 0) {
            if (!(i == 0 && !mid && d.prepend != Prepend::Never)) r.push_back(' ');
            p += d.a.size();
          } else {
            r.push_back(t[p++]);
          }
        }
        toks[i] = std::move(r);
      }
      return;
    case Decoder::Kind::Bpe:
      for (size_t i = 0; i < toks.size(); ++i)
        toks[i] = replace_all(toks[i], d.a, i + 1 == toks.size() && !mid ? "" : " ");
      return;
    case Decoder::Kind::Ctc:
      MINFER_FAIL("CTC decoder is not supported");
  }
}

}  // namespace

std::string decode_tokens(const std::vector<Decoder>& decoders, std::vector<std::string>& toks) {
  if (decoders.empty()) {
    std::string out;
    for (size_t i = 0; i < toks.size(); ++i) {
      if (i) out.push_back(' ');
      out += toks[i];
    }
    return unicode::replace_invalid_utf8(out);
  }
  for (const Decoder& d : decoders) decode_step(d, toks, false);
  std::string out;
  for (const std::string& t : toks) out += t;
  return unicode::replace_invalid_utf8(out);
}

std::string decode_piece(const std::vector<Decoder>& decoders, std::string tok) {
  std::vector<std::string> toks{std::move(tok)};
  if (decoders.empty()) return " " + toks[0];  // tokens joined by spaces
  for (const Decoder& d : decoders) decode_step(d, toks, true);
  std::string out;
  for (const std::string& t : toks) out += t;
  return out;
}

}  // namespace minfer
