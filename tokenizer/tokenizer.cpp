// The Tokenizer class: the encode pipeline in Hugging Face's order (tokenizer/mod.rs: added
// tokens -> normalizer -> pre-tokenizer -> model -> post-processor), decoding, the public
// accessors and StreamDecoder. Each stage lives in its own file (see tokenizer_impl.h); loading
// is in loader_json.cpp and tokenizer_gguf.cpp.
#include "tokenizer/tokenizer.h"

#include <fmt/ranges.h>

#include <algorithm>
#include <utility>

#include "engine/error.h"
#include "tokenizer/tokenizer_impl.h"
#include "tokenizer/unicode.h"

namespace minfer {

std::unique_ptr<Tokenizer> make_tokenizer(std::unique_ptr<Tokenizer::Impl> impl) {
  return std::unique_ptr<Tokenizer>(new Tokenizer(std::move(impl)));
}

Tokenizer::Tokenizer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Tokenizer::~Tokenizer() = default;

// ---------------------------------------------------------------------------------------------
// Encoding

// A piece of input between raw-matched added tokens: normalize it, match the normalized added
// tokens, and pre-tokenize the text between them into words for `sink`.
void Tokenizer::Impl::segment(std::string_view seg, bool at_start, PreTokScratch& scratch,
                              WordSink sink, std::vector<int32_t>& out,
                              std::vector<std::string>* words) const {
  std::string norm;
  std::string_view text = seg;
  if (!normalizers.empty()) {
    norm = normalize(normalizers, seg);
    text = norm;
  }
  if (text.empty()) return;
  if (norm_matcher.empty()) return run_pre_tokenizers(pretoks, text, at_start, scratch, sink);
  std::vector<AddedMatcher::Seg> segs;
  norm_matcher.split(text, segs);
  for (const auto& s : segs) {
    if (s.id >= 0) {
      if (words)
        words->emplace_back(text.substr(s.begin, s.end - s.begin));
      else
        out.push_back(s.id);
    } else {
      run_pre_tokenizers(pretoks, text.substr(s.begin, s.end - s.begin), at_start && s.begin == 0,
                         scratch, sink);
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
  PreTokScratch scratch;
  scratch.resize(pretoks.size());
  // Each word goes to the model, or with `words`, is collected as it is.
  auto to_model = [&](std::string_view w) {
    if (words)
      words->emplace_back(w);
    else
      model.tokenize(w, out);
  };
  WordSink sink(to_model);
  if (raw_matcher.empty()) {
    if (!text.empty()) segment(text, true, scratch, sink, out, words);
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
        segment(text.substr(s.begin, s.end - s.begin), s.begin == 0, scratch, sink, out, words);
      }
    }
  }
  if (add_special) out.insert(out.end(), suffix.begin(), suffix.end());
}

// ---------------------------------------------------------------------------------------------
// Decoding: ids -> token strings (special tokens skipped on request) -> decoders.

std::string Tokenizer::Impl::decode(std::span<const int32_t> ids, bool skip_special) const {
  std::vector<std::string> toks;
  toks.reserve(ids.size());
  for (int32_t id : ids) {
    MINFER_CHECK(id >= 0 && static_cast<size_t>(id) < id_to_tok.size(),
                 "{}: token id {} is out of range [0, {})", origin, id, id_to_tok.size());
    if (skip_special && special[static_cast<size_t>(id)]) continue;
    toks.push_back(id_to_tok[static_cast<size_t>(id)]);
  }
  return decode_tokens(decoders, toks);
}

// ---------------------------------------------------------------------------------------------
// Public API (loading: loader_json.cpp, tokenizer_gguf.cpp)

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

std::string Tokenizer::piece(int32_t id) const {
  return decode_piece(impl_->decoders, id_to_token(id));
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
  const Vocab& v = impl_->model.vocab();
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
int32_t Tokenizer::special_id(std::string_view role) const {
  if (role == "bos") return impl_->bos;
  if (role == "eos") return impl_->eos;
  for (const auto& [name, id] : impl_->roles)
    if (name == role) return id;
  return -1;
}
int32_t Tokenizer::added_bos() const {
  return !impl_->prefix.empty() && impl_->bos >= 0 && impl_->prefix.front() == impl_->bos
             ? impl_->bos
             : -1;
}
const std::vector<std::string>& end_of_turn_texts() {
  static const std::vector<std::string> k = {"<|eot_id|>",
                                             "<|im_end|>",
                                             "<|end|>",
                                             "<end_of_turn>",
                                             "<|endoftext|>",
                                             "<EOT>",
                                             "<\xEF\xBD\x9C"
                                             "end\xE2\x96\x81of\xE2\x96\x81sentence\xEF\xBD\x9C>",
                                             "<|eom_id|>"};
  return k;
}
std::vector<int32_t> Tokenizer::eog_ids() const {
  std::vector<int32_t> ids;
  for (const char* role : {"eos", "eot", "eom"})
    if (const int32_t id = special_id(role); id >= 0 && id < vocab_size()) ids.push_back(id);
  for (const std::string& t : end_of_turn_texts())
    if (const int32_t id = token_to_id(t); id >= 0 && is_special(id)) ids.push_back(id);
  std::sort(ids.begin(), ids.end());
  ids.erase(std::unique(ids.begin(), ids.end()), ids.end());
  return ids;
}
bool Tokenizer::is_special(int32_t id) const {
  return id >= 0 && static_cast<size_t>(id) < impl_->special.size() &&
         impl_->special[static_cast<size_t>(id)];
}
const std::string& Tokenizer::chat_template() const {
  return impl_->chat_template;
}
namespace {

// The bytes of a string for an error message: printable ASCII as is, the rest as \xNN.
std::string escaped_bytes(std::string_view s) {
  std::string out;
  for (unsigned char c : s.substr(0, 64)) {
    if (c >= 0x20 && c < 0x7f && c != '\\')
      out.push_back(static_cast<char>(c));
    else
      out += fmt::format("\\x{:02X}", c);
  }
  if (s.size() > 64) out += "...";
  return out;
}

// The first string (object key or value) in `j` that is not valid UTF-8: its JSON path and text.
bool find_invalid_string(const nlohmann::json& j, const std::string& path, std::string* where,
                         std::string* text) {
  if (j.is_string()) {
    const auto& s = j.get_ref<const std::string&>();
    if (unicode::find_invalid_utf8(s) == std::string::npos) return false;
    *where = path;
    *text = s;
    return true;
  }
  if (j.is_object()) {
    for (auto it = j.begin(); it != j.end(); ++it) {
      if (unicode::find_invalid_utf8(it.key()) != std::string::npos) {
        *where = path + "/" + escaped_bytes(it.key()) + " (a key)";
        *text = it.key();
        return true;
      }
      if (find_invalid_string(it.value(), path + "/" + it.key(), where, text)) return true;
    }
  } else if (j.is_array()) {
    for (size_t i = 0; i < j.size(); ++i)
      if (find_invalid_string(j[i], path + "/" + std::to_string(i), where, text)) return true;
  }
  return false;
}

}  // namespace

// A tokenizer.json is JSON text, whose strings must be UTF-8 (RFC 8259 section 8.1), and HF
// `tokenizers` keeps tokens as Rust strings, which must be UTF-8 too: a token that is not (a GGUF
// vocabulary can hold any bytes) cannot be written, so it is an error naming the token id.
std::string Tokenizer::to_hf_json() const {
  const Impl& m = *impl_;
  for (size_t id = 0; id < m.id_to_tok.size(); ++id) {
    const std::string& t = m.id_to_tok[id];
    const size_t bad = unicode::find_invalid_utf8(t);
    if (bad != std::string::npos)
      throw Error(fmt::format(
          "{}: token {} ('{}') is not valid UTF-8 (ill-formed sequence at byte {}); a "
          "tokenizer.json (and HF `tokenizers`) can only hold UTF-8 tokens, so this tokenizer "
          "cannot be written as one",
          m.origin, id, escaped_bytes(t), bad));
  }
  std::string where, text;
  if (find_invalid_string(m.source, "", &where, &text))
    throw Error(fmt::format(
        "{}: the tokenizer.json string at {} ('{}') is not valid UTF-8; a tokenizer.json can "
        "only hold UTF-8 text",
        m.origin, where, escaped_bytes(text)));
  return m.source.dump();
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
  std::string kind = m.model.type;
  if (const BpeModel* bpe = m.model.bpe.get()) {
    kind += m.byte_level_bpe               ? " byte-level"
            : bpe->options().byte_fallback ? " with byte fallback"
                                           : "";
    kind += fmt::format(", {} merges", bpe->num_merges());
  }
  size_t nspecial = 0;
  for (uint8_t s : m.special) nspecial += s;
  return fmt::format(
      "{}, {} tokens ({} added, {} special), {} normalizer(s), {} pre-tokenizer(s), adds {} "
      "before and {} after the text",
      kind, m.id_to_tok.size(), m.added.size(), nspecial, m.normalizers.size(), m.pretoks.size(),
      m.prefix.empty() ? std::string("nothing") : fmt::format("[{}]", fmt::join(m.prefix, ", ")),
      m.suffix.empty() ? std::string("nothing") : fmt::format("[{}]", fmt::join(m.suffix, ", ")));
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
