// The Hugging Face `tokenizers` pipeline (tokenizer/mod.rs: added tokens -> normalizer ->
// pre-tokenizer -> model -> post-processor; decoders for the way back), loaded from
// tokenizer.json. Each component follows the Rust implementation it names.
#include "tokenizer/tokenizer.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "engine/error.h"
#include "tokenizer/bpe.h"
#include "tokenizer/pretokenize.h"
#include "tokenizer/tokenizer_internal.h"
#include "tokenizer/unicode.h"

namespace minfer {

using nlohmann::json;
using pretok::Behavior;
using pretok::Span;
using pretok::Spans;

namespace {

// ---------------------------------------------------------------------------------------------
// Components

struct AddedToken {
  int32_t id = -1;
  std::string content;
  bool special = false, normalized = false, lstrip = false, rstrip = false, single_word = false;
};

struct Normalizer {
  enum class Kind {
    Bert,
    Lowercase,
    Nfc,
    Nfd,
    Nfkc,
    Nfkd,
    StripAccents,
    Strip,
    Replace,
    Prepend,
    ByteLevel
  };
  Kind kind = Kind::Lowercase;
  bool clean_text = false, chinese = false, strip_accents = false, lower = false;  // Bert
  bool left = false, right = false;                                                // Strip
  std::string pattern, content;  // Replace, Prepend
};

enum class Prepend { Always, First, Never };

struct PreTok {
  enum class Kind {
    ByteLevel,
    Split,
    Digits,
    Whitespace,
    WhitespaceSplit,
    Bert,
    Metaspace,
    Punctuation,
    CharDelimiter
  };
  Kind kind = Kind::Bert;
  bool add_prefix_space = false, use_regex = true;  // ByteLevel
  int pattern = -1;                                 // Split: pretok::Pattern, -1 = literal
  std::string literal;                              // Split literal
  Behavior behavior = Behavior::Isolated;           // Split, Punctuation
  bool invert = false;                              // Split
  bool individual = false;                          // Digits
  std::string replacement;                          // Metaspace (UTF-8 of one char)
  Prepend prepend = Prepend::Always;                // Metaspace
  bool split = true;                                // Metaspace
  uint32_t delimiter = 0;                           // CharDelimiter
};

struct Decoder {
  enum class Kind { ByteLevel, Replace, ByteFallback, Fuse, Strip, WordPiece, Metaspace, Bpe, Ctc };
  Kind kind = Kind::Fuse;
  std::string a, b;  // Replace pattern/content, WordPiece prefix, Metaspace replacement, BPE suffix
  uint32_t ch = 0;   // Strip content
  size_t start = 0, stop = 0;
  bool cleanup = false;
  Prepend prepend = Prepend::Always;
};

// Leftmost-longest matching of added tokens (HF uses aho-corasick with MatchKind::LeftmostLongest).
struct AddedMatcher {
  std::vector<std::string> patterns;
  std::vector<const AddedToken*> tokens;
  std::array<std::vector<uint32_t>, 256> by_first;  // pattern indices by first byte

  bool empty() const { return patterns.empty(); }
  void add(std::string pattern, const AddedToken* t) {
    if (pattern.empty()) return;
    by_first[static_cast<uint8_t>(pattern[0])].push_back(static_cast<uint32_t>(patterns.size()));
    patterns.push_back(std::move(pattern));
    tokens.push_back(t);
  }
  struct Seg {
    uint32_t begin, end;
    int32_t id;  // -1: text
  };
  // AddedVocabulary::find_matches: token segments and the text between them (non-empty).
  void split(std::string_view s, std::vector<Seg>& out) const;
};

bool is_word_char(uint32_t cp) {
  return cp == '_' || (unicode::flags(cp) & (unicode::kLetter | unicode::kNumber));
}

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

}  // namespace

// ---------------------------------------------------------------------------------------------
struct Tokenizer::Impl {
  std::string origin;
  json source;  // the tokenizer.json this was built from (to_hf_json)
  std::string model_type;
  std::vector<Normalizer> normalizers;
  std::vector<PreTok> pretoks;
  std::unique_ptr<BpeModel> bpe;
  std::unique_ptr<WordPieceModel> wordpiece;
  Vocab wordlevel;
  int32_t wordlevel_unk = -1;
  bool byte_level_bpe = false;

  std::vector<AddedToken> added;
  AddedMatcher raw_matcher, norm_matcher;
  Vocab added_by_content;
  std::vector<std::string> id_to_tok;  // model vocab and added tokens
  std::vector<uint8_t> special;        // per id
  std::vector<int32_t> prefix, suffix;
  std::vector<Decoder> decoders;
  int32_t bos = -1, eos = -1;
  std::string chat_template;

  // ---- encode ----
  struct Ctx {
    std::vector<Spans> spans;
    std::vector<std::string> bufs, pre;
    Spans tmp;
  };
  std::string normalize(std::string_view s) const;
  void encode(std::string_view text, bool add_special, std::vector<int32_t>& out,
              std::vector<std::string>* words) const;
  void segment(std::string_view seg, bool at_start, Ctx& ctx, std::vector<int32_t>& out,
               std::vector<std::string>* words) const;
  void run_pre(size_t k, std::string_view piece, bool first, Ctx& ctx, std::vector<int32_t>& out,
               std::vector<std::string>* words) const;
  void model_tokenize(std::string_view w, std::vector<int32_t>& out) const;
  // ---- decode ----
  std::string decode(std::span<const int32_t> ids, bool skip_special) const;
};

std::unique_ptr<Tokenizer> make_tokenizer(std::unique_ptr<Tokenizer::Impl> impl) {
  return std::unique_ptr<Tokenizer>(new Tokenizer(std::move(impl)));
}

Tokenizer::Tokenizer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Tokenizer::~Tokenizer() = default;

std::string Tokenizer::Impl::normalize(std::string_view s) const {
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

void Tokenizer::Impl::model_tokenize(std::string_view w, std::vector<int32_t>& out) const {
  if (bpe) {
    bpe->tokenize(w, out);
  } else if (wordpiece) {
    wordpiece->tokenize(w, out);
  } else {
    auto it = wordlevel.find(w);
    if (it != wordlevel.end()) {
      out.push_back(it->second);
    } else {
      MINFER_CHECK(wordlevel_unk >= 0, "{}: WordLevel model has no unk_token for '{}'", origin, w);
      out.push_back(wordlevel_unk);
    }
  }
}

void Tokenizer::Impl::run_pre(size_t k, std::string_view piece, bool first, Ctx& ctx,
                              std::vector<int32_t>& out, std::vector<std::string>* words) const {
  if (piece.empty()) return;
  if (k == pretoks.size()) {
    if (words)
      words->emplace_back(piece);
    else
      model_tokenize(piece, out);
    return;
  }
  const PreTok& p = pretoks[k];
  Spans& sp = ctx.spans[k];
  sp.clear();
  Spans& tmp = ctx.tmp;
  tmp.clear();
  const uint32_t n = static_cast<uint32_t>(piece.size());
  auto recurse_spans = [&](std::string_view src) {
    for (const Span& s : sp)
      run_pre(k + 1, src.substr(s.first, s.second - s.first), first && s.first == 0, ctx, out,
              words);
  };
  switch (p.kind) {
    case PreTok::Kind::ByteLevel: {  // pre_tokenizers/byte_level.rs
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
        run_pre(k + 1, buf, first && s.first == 0, ctx, out, words);
      }
      return;
    }
    case PreTok::Kind::Split:
      if (p.pattern >= 0)
        pretok::find_pattern(static_cast<pretok::Pattern>(p.pattern), piece, tmp);
      else
        pretok::find_literal(piece, p.literal, tmp);
      pretok::split_by(n, tmp, p.invert, p.behavior, sp);
      return recurse_spans(piece);
    case PreTok::Kind::Digits:
      find_chars(piece, unicode::is_number, tmp);
      pretok::split_by(n, tmp, false, p.individual ? Behavior::Isolated : Behavior::Contiguous, sp);
      return recurse_spans(piece);
    case PreTok::Kind::Whitespace:
      pretok::find_words_and_symbols(piece, tmp);
      pretok::split_by(n, tmp, true, Behavior::Removed, sp);
      return recurse_spans(piece);
    case PreTok::Kind::WhitespaceSplit:
      find_chars(piece, unicode::is_space, tmp);
      pretok::split_by(n, tmp, false, Behavior::Removed, sp);
      return recurse_spans(piece);
    case PreTok::Kind::Punctuation:
      find_chars(piece, unicode::is_bert_punct, tmp);
      pretok::split_by(n, tmp, false, p.behavior, sp);
      return recurse_spans(piece);
    case PreTok::Kind::CharDelimiter:
      find_chars(
          piece, [&](uint32_t c) { return c == p.delimiter; }, tmp);
      pretok::split_by(n, tmp, false, Behavior::Removed, sp);
      return recurse_spans(piece);
    case PreTok::Kind::Bert: {  // whitespace removed, then punctuation isolated
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
          run_pre(k + 1, word.substr(s.first, s.second - s.first),
                  first && w.first == 0 && s.first == 0, ctx, out, words);
      }
      return;
    }
    case PreTok::Kind::Metaspace: {  // pre_tokenizers/metaspace.rs
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
        run_pre(k + 1, std::string_view(local).substr(s.first, s.second - s.first),
                first && s.first == 0, ctx, out, words);
      return;
    }
  }
}

void Tokenizer::Impl::segment(std::string_view seg, bool at_start, Ctx& ctx,
                              std::vector<int32_t>& out, std::vector<std::string>* words) const {
  std::string norm;
  std::string_view text = seg;
  if (!normalizers.empty()) {
    norm = normalize(seg);
    text = norm;
  }
  if (text.empty()) return;
  if (norm_matcher.empty()) return run_pre(0, text, at_start, ctx, out, words);
  std::vector<AddedMatcher::Seg> segs;
  norm_matcher.split(text, segs);
  for (const auto& s : segs) {
    if (s.id >= 0) {
      if (words)
        words->emplace_back(text.substr(s.begin, s.end - s.begin));
      else
        out.push_back(s.id);
    } else {
      run_pre(0, text.substr(s.begin, s.end - s.begin), at_start && s.begin == 0, ctx, out, words);
    }
  }
}

void Tokenizer::Impl::encode(std::string_view text, bool add_special, std::vector<int32_t>& out,
                             std::vector<std::string>* words) const {
  size_t bad = unicode::find_invalid_utf8(text);
  MINFER_CHECK(bad == std::string_view::npos,
               "{}: input text is not valid UTF-8 at byte offset {} (byte 0x{:02X}); "
               "replace invalid sequences (U+FFFD) before encoding",
               origin, bad, bad == std::string_view::npos ? 0 : static_cast<uint8_t>(text[bad]));
  if (add_special) out.insert(out.end(), prefix.begin(), prefix.end());
  Ctx ctx;
  ctx.spans.resize(pretoks.size());
  ctx.bufs.resize(pretoks.size());
  ctx.pre.resize(pretoks.size());
  if (raw_matcher.empty()) {
    if (!text.empty()) segment(text, true, ctx, out, words);
  } else {
    std::vector<AddedMatcher::Seg> segs;
    raw_matcher.split(text, segs);
    for (const auto& s : segs) {
      if (s.id >= 0) {
        if (words)
          words->emplace_back(text.substr(s.begin, s.end - s.begin));
        else
          out.push_back(s.id);
      } else {
        segment(text.substr(s.begin, s.end - s.begin), s.begin == 0, ctx, out, words);
      }
    }
  }
  if (add_special) out.insert(out.end(), suffix.begin(), suffix.end());
}

// ---------------------------------------------------------------------------------------------
// Decoding (decoders/*.rs). Each decoder maps the list of token strings to a new list.

namespace {

void decode_step(const Decoder& d, std::vector<std::string>& toks) {
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
      toks.assign(1, unicode::replace_invalid_utf8(bytes));
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
        if (unicode::find_invalid_utf8(pending) == std::string::npos)
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
        else if (i != 0)
          t.insert(0, " ");
        if (d.cleanup) {  // decoders/wordpiece.rs cleanup()
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
            if (!(i == 0 && d.prepend != Prepend::Never)) r.push_back(' ');
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
        toks[i] = replace_all(toks[i], d.a, i + 1 == toks.size() ? "" : " ");
      return;
    case Decoder::Kind::Ctc:
      MINFER_FAIL("CTC decoder is not supported");
  }
}

}  // namespace

std::string Tokenizer::Impl::decode(std::span<const int32_t> ids, bool skip_special) const {
  std::vector<std::string> toks;
  toks.reserve(ids.size());
  for (int32_t id : ids) {
    MINFER_CHECK(id >= 0 && static_cast<size_t>(id) < id_to_tok.size(),
                 "{}: token id {} is out of range [0, {})", origin, id, id_to_tok.size());
    if (skip_special && special[static_cast<size_t>(id)]) continue;
    toks.push_back(id_to_tok[static_cast<size_t>(id)]);
  }
  if (decoders.empty()) {
    std::string out;
    for (size_t i = 0; i < toks.size(); ++i) {
      if (i) out.push_back(' ');
      out += toks[i];
    }
    return unicode::replace_invalid_utf8(out);
  }
  for (const Decoder& d : decoders) decode_step(d, toks);
  std::string out;
  for (const std::string& t : toks) out += t;
  return unicode::replace_invalid_utf8(out);
}

// ---------------------------------------------------------------------------------------------
// tokenizer.json parsing

namespace {

struct Parser {
  std::string origin;

  [[noreturn]] void fail(const std::string& what) const { MINFER_FAIL("{}: {}", origin, what); }

  const json& field(const json& o, const char* key, const std::string& where) const {
    if (!o.is_object() || !o.contains(key)) fail(fmt::format("{} has no field '{}'", where, key));
    return o.at(key);
  }
  std::string str(const json& o, const char* key, const std::string& where) const {
    const json& v = field(o, key, where);
    if (!v.is_string())
      fail(fmt::format("{}.{} should be a string, found {}", where, key, v.type_name()));
    return v.get<std::string>();
  }
  std::string str_or(const json& o, const char* key, const std::string& def) const {
    if (!o.is_object() || !o.contains(key) || o.at(key).is_null()) return def;
    if (!o.at(key).is_string())
      fail(fmt::format("field '{}' should be a string, found {}", key, o.at(key).type_name()));
    return o.at(key).get<std::string>();
  }
  bool boolean(const json& o, const char* key, bool def) const {
    if (!o.is_object() || !o.contains(key) || o.at(key).is_null()) return def;
    if (!o.at(key).is_boolean())
      fail(fmt::format("field '{}' should be a boolean, found {}", key, o.at(key).dump()));
    return o.at(key).get<bool>();
  }
  int64_t integer(const json& o, const char* key, int64_t def) const {
    if (!o.is_object() || !o.contains(key) || o.at(key).is_null()) return def;
    if (!o.at(key).is_number_integer())
      fail(fmt::format("field '{}' should be an integer, found {}", key, o.at(key).dump()));
    return o.at(key).get<int64_t>();
  }
  std::string type(const json& o, const std::string& where) const {
    if (!o.is_object()) fail(fmt::format("{} should be an object, found {}", where, o.type_name()));
    return str(o, "type", where);
  }
  // {"String": "x"} or {"Regex": "..."} -> (is_regex, text)
  std::pair<bool, std::string> pattern(const json& o, const std::string& where) const {
    const json& p = field(o, "pattern", where);
    if (p.is_object() && p.contains("String")) return {false, p.at("String").get<std::string>()};
    if (p.is_object() && p.contains("Regex")) return {true, p.at("Regex").get<std::string>()};
    fail(fmt::format("{}.pattern should be {{\"String\": ...}} or {{\"Regex\": ...}}, found {}",
                     where, p.dump()));
  }
  Behavior behavior(const json& o, const std::string& where) const {
    std::string b = str_or(o, "behavior", "Isolated");
    std::string l = b;
    std::transform(l.begin(), l.end(), l.begin(),
                   [](char c) { return static_cast<char>(std::tolower(c)); });
    std::erase(l, '_');
    if (l == "removed") return Behavior::Removed;
    if (l == "isolated") return Behavior::Isolated;
    if (l == "mergedwithprevious") return Behavior::MergedWithPrevious;
    if (l == "mergedwithnext") return Behavior::MergedWithNext;
    if (l == "contiguous") return Behavior::Contiguous;
    fail(fmt::format("{}: unknown split behavior '{}'", where, b));
  }
  Prepend prepend_scheme(const json& o) const {
    if (o.contains("prepend_scheme") && !o.at("prepend_scheme").is_null()) {
      std::string s = o.at("prepend_scheme").get<std::string>();
      if (s == "always") return Prepend::Always;
      if (s == "first") return Prepend::First;
      if (s == "never") return Prepend::Never;
      fail(fmt::format("Metaspace prepend_scheme '{}' is unknown (always, first, never)", s));
    }
    return boolean(o, "add_prefix_space", true) ? Prepend::Always : Prepend::Never;
  }
  std::string one_char(const json& o, const char* key, const std::string& where) const {
    std::string s = str(o, key, where);
    if (unicode::find_invalid_utf8(s) != std::string::npos || unicode::count_chars(s) != 1)
      fail(fmt::format("{}.{} should be a single character, found '{}'", where, key, s));
    return s;
  }

  void normalizer(const json& o, std::vector<Normalizer>& out) const {
    if (o.is_null()) return;
    std::string t = type(o, "normalizer");
    using K = Normalizer::Kind;
    Normalizer n;
    if (t == "Sequence") {
      for (const json& c : field(o, "normalizers", "Sequence normalizer")) normalizer(c, out);
      return;
    } else if (t == "BertNormalizer") {
      n.kind = K::Bert;
      n.clean_text = boolean(o, "clean_text", true);
      n.chinese = boolean(o, "handle_chinese_chars", true);
      n.lower = boolean(o, "lowercase", true);
      n.strip_accents = boolean(o, "strip_accents", n.lower);  // null: follows lowercase
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
      n.left = boolean(o, "strip_left", true);
      n.right = boolean(o, "strip_right", true);
    } else if (t == "Replace") {
      n.kind = K::Replace;
      auto [is_regex, p] = pattern(o, "Replace normalizer");
      if (is_regex)
        fail(fmt::format("Replace normalizer with a Regex pattern ('{}') is not supported", p));
      n.pattern = p;
      n.content = str(o, "content", "Replace normalizer");
    } else if (t == "Prepend") {
      n.kind = K::Prepend;
      n.content = str(o, "prepend", "Prepend normalizer");
    } else if (t == "ByteLevel") {
      n.kind = K::ByteLevel;
    } else {
      fail(fmt::format(
          "normalizer type '{}' is not supported (supported: Sequence, BertNormalizer, "
          "Lowercase, NFC, NFD, NFKC, NFKD, StripAccents, Strip, Replace, Prepend, ByteLevel)",
          t));
    }
    out.push_back(std::move(n));
  }

  void pre_tokenizer(const json& o, std::vector<PreTok>& out) const {
    if (o.is_null()) return;
    std::string t = type(o, "pre_tokenizer");
    using K = PreTok::Kind;
    PreTok p;
    if (t == "Sequence") {
      for (const json& c : field(o, "pretokenizers", "Sequence pre_tokenizer"))
        pre_tokenizer(c, out);
      return;
    } else if (t == "ByteLevel") {
      p.kind = K::ByteLevel;
      p.add_prefix_space = boolean(o, "add_prefix_space", true);
      p.use_regex = boolean(o, "use_regex", true);
    } else if (t == "Split") {
      p.kind = K::Split;
      auto [is_regex, pat] = pattern(o, "Split pre_tokenizer");
      if (is_regex) {
        p.pattern = pretok::pattern_from_regex(pat);
        if (p.pattern < 0)
          fail(
              fmt::format("Split pre_tokenizer regex '{}' is not supported (supported: the GPT-2, "
                          "LLaMA-3 and Qwen2 split patterns, \\p{{N}}, \\p{{N}}{{1,3}}, \\p{{N}}+, "
                          "\\w+|[^\\w\\s]+)",
                          pat));
      } else {
        p.literal = pat;
      }
      p.behavior = behavior(o, "Split pre_tokenizer");
      p.invert = boolean(o, "invert", false);
    } else if (t == "Digits") {
      p.kind = K::Digits;
      p.individual = boolean(o, "individual_digits", false);
    } else if (t == "Whitespace") {
      p.kind = K::Whitespace;
    } else if (t == "WhitespaceSplit") {
      p.kind = K::WhitespaceSplit;
    } else if (t == "BertPreTokenizer") {
      p.kind = K::Bert;
    } else if (t == "Punctuation") {
      p.kind = K::Punctuation;
      p.behavior = behavior(o, "Punctuation pre_tokenizer");
    } else if (t == "CharDelimiterSplit") {
      p.kind = K::CharDelimiter;
      std::string d = one_char(o, "delimiter", "CharDelimiterSplit");
      int l;
      p.delimiter = unicode::decode_at(d, 0, &l);
    } else if (t == "Metaspace") {
      p.kind = K::Metaspace;
      p.replacement = one_char(o, "replacement", "Metaspace pre_tokenizer");
      p.prepend = prepend_scheme(o);
      p.split = boolean(o, "split", true);
    } else {
      fail(
          fmt::format("pre_tokenizer type '{}' is not supported (supported: Sequence, ByteLevel, "
                      "Split, Digits, Whitespace, WhitespaceSplit, BertPreTokenizer, Punctuation, "
                      "CharDelimiterSplit, Metaspace)",
                      t));
    }
    out.push_back(std::move(p));
  }

  void decoder(const json& o, std::vector<Decoder>& out) const {
    if (o.is_null()) return;
    std::string t = type(o, "decoder");
    using K = Decoder::Kind;
    Decoder d;
    if (t == "Sequence") {
      for (const json& c : field(o, "decoders", "Sequence decoder")) decoder(c, out);
      return;
    } else if (t == "ByteLevel") {
      d.kind = K::ByteLevel;
    } else if (t == "Replace") {
      d.kind = K::Replace;
      auto [is_regex, p] = pattern(o, "Replace decoder");
      if (is_regex)
        fail(fmt::format("Replace decoder with a Regex pattern ('{}') is not supported", p));
      d.a = p;
      d.b = str(o, "content", "Replace decoder");
    } else if (t == "ByteFallback") {
      d.kind = K::ByteFallback;
    } else if (t == "Fuse") {
      d.kind = K::Fuse;
    } else if (t == "Strip") {
      d.kind = K::Strip;
      std::string c = one_char(o, "content", "Strip decoder");
      int l;
      d.ch = unicode::decode_at(c, 0, &l);
      d.start = static_cast<size_t>(integer(o, "start", 0));
      d.stop = static_cast<size_t>(integer(o, "stop", 0));
    } else if (t == "WordPiece") {
      d.kind = K::WordPiece;
      d.a = str_or(o, "prefix", "##");
      d.cleanup = boolean(o, "cleanup", true);
    } else if (t == "Metaspace") {
      d.kind = K::Metaspace;
      d.a = one_char(o, "replacement", "Metaspace decoder");
      d.prepend = prepend_scheme(o);
    } else if (t == "BPEDecoder") {
      d.kind = K::Bpe;
      d.a = str_or(o, "suffix", "</w>");
    } else {
      fail(fmt::format(
          "decoder type '{}' is not supported (supported: Sequence, ByteLevel, Replace, "
          "ByteFallback, Fuse, Strip, WordPiece, Metaspace, BPEDecoder)",
          t));
    }
    out.push_back(std::move(d));
  }

  // Flattens the post-processor (single-sequence case) into the ids before and after the text.
  void post_processor(const json& o, const Tokenizer::Impl& impl, std::vector<int32_t>& prefix,
                      std::vector<int32_t>& suffix) const {
    if (o.is_null()) return;
    std::string t = type(o, "post_processor");
    auto id_of = [&](const json& pair, const char* what) {  // ["[CLS]", 101]
      if (!pair.is_array() || pair.size() != 2 || !pair[1].is_number_integer())
        fail(fmt::format("{}.{} should be [token, id], found {}", t, what, pair.dump()));
      return pair[1].get<int32_t>();
    };
    if (t == "Sequence") {
      for (const json& c : field(o, "processors", "Sequence post_processor")) {
        std::vector<int32_t> p, s;
        post_processor(c, impl, p, s);
        prefix.insert(prefix.begin(), p.begin(), p.end());
        suffix.insert(suffix.end(), s.begin(), s.end());
      }
    } else if (t == "ByteLevel") {
      // Offsets only; no ids.
    } else if (t == "BertProcessing" || t == "RobertaProcessing") {
      prefix.push_back(id_of(field(o, "cls", t), "cls"));
      suffix.push_back(id_of(field(o, "sep", t), "sep"));
    } else if (t == "TemplateProcessing") {
      const json& single = field(o, "single", "TemplateProcessing");
      const json& specials = o.contains("special_tokens") ? o.at("special_tokens") : json::object();
      bool seen_a = false;
      for (const json& item : single) {
        if (item.contains("Sequence")) {
          if (seen_a) fail("TemplateProcessing 'single' uses the sequence twice");
          seen_a = true;
        } else if (item.contains("SpecialToken")) {
          std::string id = str(item.at("SpecialToken"), "id", "TemplateProcessing SpecialToken");
          if (!specials.contains(id))
            fail(fmt::format(
                "TemplateProcessing uses special token '{}' missing from special_tokens", id));
          for (const json& v :
               field(specials.at(id), "ids", "TemplateProcessing special_tokens entry"))
            (seen_a ? suffix : prefix).push_back(v.get<int32_t>());
        } else {
          fail(fmt::format("TemplateProcessing item {} is not understood", item.dump()));
        }
      }
    } else {
      fail(
          fmt::format("post_processor type '{}' is not supported (supported: Sequence, ByteLevel, "
                      "BertProcessing, RobertaProcessing, TemplateProcessing)",
                      t));
    }
  }
};

Vocab parse_vocab(const json& v, const Parser& P) {
  if (!v.is_object())
    P.fail(fmt::format("model.vocab should be an object {{token: id}}, found {}", v.type_name()));
  Vocab vocab;
  vocab.reserve(v.size());
  for (auto it = v.begin(); it != v.end(); ++it) {
    if (!it.value().is_number_integer() || it.value().get<int64_t>() < 0)
      P.fail(fmt::format("model.vocab['{}'] should be a non-negative integer id, found {}",
                         it.key(), it.value().dump()));
    vocab.emplace(it.key(), it.value().get<int32_t>());
  }
  return vocab;
}

}  // namespace

std::unique_ptr<Tokenizer> tokenizer_from_json(const json& j, const std::string& origin,
                                               const TokenizerExtras& extras) {
  Parser P{origin};
  if (!j.is_object()) P.fail("tokenizer.json should be a JSON object");
  auto impl = std::make_unique<Tokenizer::Impl>();
  impl->origin = origin;
  impl->source = j;
  impl->chat_template = extras.chat_template;

  // ---- model ----
  const json& m = P.field(j, "model", "tokenizer.json");
  std::string mt = P.str_or(m, "type", "");
  if (mt.empty())
    mt = m.contains("merges") ? "BPE" : m.contains("continuing_subword_prefix") ? "WordPiece" : "";
  impl->model_type = mt;
  if (mt == "BPE") {
    if (m.contains("dropout") && !m.at("dropout").is_null() && m.at("dropout").get<double>() > 0.0)
      P.fail(fmt::format("BPE dropout {} is not supported (inference tokenizes deterministically)",
                         m.at("dropout").dump()));
    BpeOptions opt;
    if (m.contains("unk_token") && !m.at("unk_token").is_null())
      opt.unk_token = m.at("unk_token").get<std::string>();
    opt.continuing_subword_prefix = P.str_or(m, "continuing_subword_prefix", "");
    opt.end_of_word_suffix = P.str_or(m, "end_of_word_suffix", "");
    opt.fuse_unk = P.boolean(m, "fuse_unk", false);
    opt.byte_fallback = P.boolean(m, "byte_fallback", false);
    opt.ignore_merges = P.boolean(m, "ignore_merges", false);
    std::vector<std::pair<std::string, std::string>> merges;
    const json& mj = P.field(m, "merges", "model");
    merges.reserve(mj.size());
    for (size_t r = 0; r < mj.size(); ++r) {
      const json& e = mj[r];
      if (e.is_string()) {  // "a b"
        const std::string& s = e.get_ref<const std::string&>();
        size_t sp = s.find(' ');
        if (sp == std::string::npos || s.find(' ', sp + 1) != std::string::npos)
          P.fail(fmt::format("model.merges[{}] = '{}' should be two tokens separated by one space",
                             r, s));
        merges.emplace_back(s.substr(0, sp), s.substr(sp + 1));
      } else if (e.is_array() && e.size() == 2 && e[0].is_string() &&
                 e[1].is_string()) {  // ["a","b"]
        merges.emplace_back(e[0].get<std::string>(), e[1].get<std::string>());
      } else {
        P.fail(fmt::format("model.merges[{}] should be \"a b\" or [\"a\", \"b\"], found {}", r,
                           e.dump()));
      }
    }
    impl->bpe = std::make_unique<BpeModel>(parse_vocab(P.field(m, "vocab", "model"), P), merges,
                                           opt, origin);
  } else if (mt == "WordPiece") {
    impl->wordpiece = std::make_unique<WordPieceModel>(
        parse_vocab(P.field(m, "vocab", "model"), P), P.str_or(m, "unk_token", "[UNK]"),
        P.str_or(m, "continuing_subword_prefix", "##"),
        static_cast<size_t>(P.integer(m, "max_input_chars_per_word", 100)), origin);
  } else if (mt == "WordLevel") {
    impl->wordlevel = parse_vocab(P.field(m, "vocab", "model"), P);
    std::string unk = P.str_or(m, "unk_token", "");
    if (!unk.empty()) {
      auto it = impl->wordlevel.find(unk);
      if (it == impl->wordlevel.end())
        P.fail(fmt::format("WordLevel unk_token '{}' is not in the vocabulary", unk));
      impl->wordlevel_unk = it->second;
    }
  } else {
    P.fail(
        fmt::format("model type '{}' is not supported (supported: BPE, WordPiece, WordLevel)", mt));
  }
  const Vocab& mv = impl->bpe         ? impl->bpe->vocab()
                    : impl->wordpiece ? impl->wordpiece->vocab()
                                      : impl->wordlevel;

  // ---- components ----
  P.normalizer(j.value("normalizer", json()), impl->normalizers);
  P.pre_tokenizer(j.value("pre_tokenizer", json()), impl->pretoks);
  P.decoder(j.value("decoder", json()), impl->decoders);
  for (const PreTok& p : impl->pretoks)
    if (p.kind == PreTok::Kind::ByteLevel) impl->byte_level_bpe = true;

  // ---- vocabulary by id, added tokens ----
  int64_t max_id = -1;
  for (const auto& [tok, id] : mv) max_id = std::max<int64_t>(max_id, id);
  if (j.contains("added_tokens") && !j.at("added_tokens").is_null()) {
    for (const json& a : j.at("added_tokens")) {
      AddedToken t;
      t.id = static_cast<int32_t>(P.integer(a, "id", -1));
      t.content = P.str(a, "content", "added_tokens entry");
      if (t.id < 0) P.fail(fmt::format("added token '{}' has no valid id", t.content));
      t.special = P.boolean(a, "special", false);
      t.normalized = P.boolean(a, "normalized", !t.special);
      t.lstrip = P.boolean(a, "lstrip", false);
      t.rstrip = P.boolean(a, "rstrip", false);
      t.single_word = P.boolean(a, "single_word", false);
      max_id = std::max<int64_t>(max_id, t.id);
      impl->added.push_back(std::move(t));
    }
  }
  impl->id_to_tok.assign(static_cast<size_t>(max_id + 1), std::string());
  impl->special.assign(static_cast<size_t>(max_id + 1), 0);
  for (const auto& [tok, id] : mv) impl->id_to_tok[static_cast<size_t>(id)] = tok;
  for (const AddedToken& t : impl->added) {
    impl->id_to_tok[static_cast<size_t>(t.id)] = t.content;
    impl->special[static_cast<size_t>(t.id)] = t.special;
    impl->added_by_content[t.content] = t.id;
  }
  // Longest first is irrelevant (the matcher picks the longest); keep file order.
  for (const AddedToken& t : impl->added) {
    if (t.normalized && !impl->normalizers.empty())
      impl->norm_matcher.add(impl->normalize(t.content), &t);
    else if (t.normalized)
      impl->norm_matcher.add(t.content, &t);
    else
      impl->raw_matcher.add(t.content, &t);
  }

  P.post_processor(j.value("post_processor", json()), *impl, impl->prefix, impl->suffix);
  for (int32_t id : impl->prefix)
    if (id < 0 || id > max_id)
      P.fail(fmt::format("post_processor uses token id {} outside the vocabulary", id));
  for (int32_t id : impl->suffix)
    if (id < 0 || id > max_id)
      P.fail(fmt::format("post_processor uses token id {} outside the vocabulary", id));

  // ---- bos / eos ----
  auto lookup = [&](std::string_view s) -> int32_t {
    auto it = impl->added_by_content.find(s);
    if (it != impl->added_by_content.end()) return it->second;
    auto jt = mv.find(s);
    return jt == mv.end() ? -1 : jt->second;
  };
  impl->bos = extras.bos_id;
  impl->eos = extras.eos_id;
  if (impl->bos == -2)
    impl->bos = (!impl->wordpiece && impl->prefix.size() == 1) ? impl->prefix[0] : -1;
  if (impl->eos == -2) {
    impl->eos = -1;
    if (!impl->wordpiece)
      for (const char* name :
           {"</s>", "<|endoftext|>", "<|end_of_text|>", "<|eot_id|>", "<|im_end|>", "<eos>"})
        if (int32_t id = lookup(name); id >= 0) {
          impl->eos = id;
          break;
        }
  }
  return make_tokenizer(std::move(impl));
}

// ---------------------------------------------------------------------------------------------
// Public API

namespace {

std::string read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  MINFER_CHECK(f.good(), "cannot open '{}'", path);
  std::ostringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

json parse_json(const std::string& text, const std::string& origin) {
  try {
    return json::parse(text);
  } catch (const json::parse_error& e) {
    MINFER_FAIL("{}: invalid JSON: {}", origin, e.what());
  }
}

// tokenizer_config.json: chat_template, bos_token, eos_token (strings or {"content": ...}).
void read_config(const std::string& dir, const json& tok_json, TokenizerExtras& ex) {
  std::filesystem::path p = std::filesystem::path(dir) / "tokenizer_config.json";
  if (!std::filesystem::exists(p)) return;
  json c = parse_json(read_file(p.string()), p.string());
  if (c.contains("chat_template")) {
    const json& t = c.at("chat_template");
    if (t.is_string()) {
      ex.chat_template = t.get<std::string>();
    } else if (t.is_array()) {  // [{"name": "default", "template": ...}, ...]
      for (const json& e : t)
        if (e.value("name", "") == "default" || ex.chat_template.empty())
          ex.chat_template = e.value("template", "");
    }
  }
  auto token_id = [&](const char* key) -> int32_t {
    if (!c.contains(key) || c.at(key).is_null()) return -1;
    const json& v = c.at(key);
    std::string s = v.is_string() ? v.get<std::string>() : v.value("content", "");
    if (tok_json.contains("added_tokens"))
      for (const json& a : tok_json.at("added_tokens"))
        if (a.value("content", "") == s) return a.value("id", -1);
    const json& vocab = tok_json.at("model").value("vocab", json::object());
    if (vocab.is_object() && vocab.contains(s)) return vocab.at(s).get<int32_t>();
    return -1;
  };
  ex.bos_id = token_id("bos_token");
  ex.eos_id = token_id("eos_token");
}

}  // namespace

std::unique_ptr<Tokenizer> Tokenizer::from_json_file(const std::string& path) {
  json j = parse_json(read_file(path), path);
  TokenizerExtras ex;
  if (j.is_object() && j.contains("model"))
    read_config(std::filesystem::path(path).parent_path().string(), j, ex);
  return tokenizer_from_json(j, path, ex);
}

std::unique_ptr<Tokenizer> Tokenizer::from_json_string(const std::string& text,
                                                       const std::string& origin) {
  return tokenizer_from_json(parse_json(text, origin), origin, TokenizerExtras{});
}

std::vector<int32_t> Tokenizer::encode(std::string_view text, bool add_special) const {
  std::vector<int32_t> out;
  out.reserve(text.size() / 3 + 4);
  impl_->encode(text, add_special, out, nullptr);
  return out;
}

void Tokenizer::encode_into(std::string_view text, bool add_special,
                            std::vector<int32_t>& out) const {
  impl_->encode(text, add_special, out, nullptr);
}

std::vector<std::string> Tokenizer::words(std::string_view text) const {
  std::vector<int32_t> unused;
  std::vector<std::string> w;
  impl_->encode(text, false, unused, &w);
  return w;
}

std::string Tokenizer::decode(std::span<const int32_t> ids, bool skip_special) const {
  return impl_->decode(ids, skip_special);
}

std::string Tokenizer::id_to_token(int32_t id) const {
  MINFER_CHECK(id >= 0 && static_cast<size_t>(id) < impl_->id_to_tok.size(),
               "{}: token id {} is out of range [0, {})", impl_->origin, id,
               impl_->id_to_tok.size());
  return impl_->id_to_tok[static_cast<size_t>(id)];
}

int32_t Tokenizer::token_to_id(std::string_view tok) const {
  auto it = impl_->added_by_content.find(tok);
  if (it != impl_->added_by_content.end()) return it->second;
  const Vocab& v = impl_->bpe         ? impl_->bpe->vocab()
                   : impl_->wordpiece ? impl_->wordpiece->vocab()
                                      : impl_->wordlevel;
  auto jt = v.find(tok);
  return jt == v.end() ? -1 : jt->second;
}

int64_t Tokenizer::vocab_size() const {
  return static_cast<int64_t>(impl_->id_to_tok.size());
}
int32_t Tokenizer::bos_id() const {
  return impl_->bos;
}
int32_t Tokenizer::eos_id() const {
  return impl_->eos;
}
bool Tokenizer::is_special(int32_t id) const {
  return id >= 0 && static_cast<size_t>(id) < impl_->special.size() &&
         impl_->special[static_cast<size_t>(id)];
}
const std::string& Tokenizer::chat_template() const {
  return impl_->chat_template;
}
std::string Tokenizer::to_hf_json() const {
  return impl_->source.dump();
}
const std::vector<int32_t>& Tokenizer::special_prefix() const {
  return impl_->prefix;
}
const std::vector<int32_t>& Tokenizer::special_suffix() const {
  return impl_->suffix;
}
const std::string& Tokenizer::origin() const {
  return impl_->origin;
}

std::string Tokenizer::describe() const {
  const Impl& m = *impl_;
  std::string kind = m.model_type;
  if (m.bpe) {
    kind += m.byte_level_bpe                 ? " byte-level"
            : m.bpe->options().byte_fallback ? " with byte fallback"
                                             : "";
    kind += fmt::format(", {} merges", m.bpe->num_merges());
  }
  size_t nspecial = 0;
  for (uint8_t s : m.special) nspecial += s;
  return fmt::format("{}, {} tokens ({} added, {} special), {} normalizer(s), {} pre-tokenizer(s)",
                     kind, m.id_to_tok.size(), m.added.size(), nspecial, m.normalizers.size(),
                     m.pretoks.size());
}

std::vector<std::string> pre_tokenize(const std::string& pre_tokenizer_json,
                                      std::string_view text) {
  json j = json::object();
  j["model"] = {{"type", "WordLevel"}, {"vocab", json::object()}, {"unk_token", nullptr}};
  j["pre_tokenizer"] = parse_json(pre_tokenizer_json, "pre_tokenizer");
  auto t = tokenizer_from_json(j, "pre_tokenizer", TokenizerExtras{});
  return t->words(text);
}

// ---------------------------------------------------------------------------------------------
// StreamDecoder: HF's DecodeStream approach. Decode the window [context ids | new ids]; once the
// result is longer than the context's own decoding and does not end in U+FFFD (an incomplete
// character), emit the difference and make the new ids the context of the next step. The context
// keeps decoders that look at neighbours (Metaspace's first-token rule, WordPiece's "##") right.
StreamDecoder::StreamDecoder(const Tokenizer& t, bool skip_special)
    : tok_(t), skip_special_(skip_special) {}

std::string StreamDecoder::push(int32_t id) {
  ids_.push_back(id);
  std::string text = tok_.decode(ids_, skip_special_);
  if (text.size() <= prefix_.size()) return {};
  if (text.size() >= 3 && text.compare(text.size() - 3, 3, "\xEF\xBF\xBD") == 0) return {};
  std::string out;
  if (text.compare(0, prefix_.size(), prefix_) == 0) {
    out = text.substr(prefix_.size());
  } else {  // the context decodes differently with the new ids: emit past the common prefix
    size_t k = 0;
    while (k < prefix_.size() && k < text.size() && prefix_[k] == text[k]) ++k;
    while (k > 0 && (static_cast<uint8_t>(text[k]) & 0xC0) == 0x80) --k;
    out = text.substr(k);
  }
  ids_.erase(ids_.begin(), ids_.begin() + static_cast<std::ptrdiff_t>(context_));
  context_ = ids_.size();
  prefix_ = tok_.decode(ids_, skip_special_);
  return out;
}

std::string StreamDecoder::flush() {
  if (ids_.size() == context_) return {};
  std::string text = tok_.decode(ids_, skip_special_);
  std::string out = text.size() > prefix_.size() && text.compare(0, prefix_.size(), prefix_) == 0
                        ? text.substr(prefix_.size())
                        : std::string();
  ids_.clear();
  context_ = 0;
  prefix_.clear();
  return out;
}

}  // namespace minfer
