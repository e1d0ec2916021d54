// Text <-> token ids, compatible with Hugging Face `tokenizers` (tokenizer.json) and with the
// tokenizer stored in GGUF metadata (tokenizer.ggml.*).
//
//   auto tok = minfer::Tokenizer::load("~/.cache/minfer/minilm");  // folder, tokenizer.json, .gguf
//   std::vector<int32_t> ids = tok->encode("Hello world");          // with [CLS]/[SEP], BOS, ...
//   std::string text = tok->decode(ids);                             // special tokens skipped
//
// encode() runs the Hugging Face pipeline: added/special tokens are matched first (never split),
// the rest is normalized, pre-tokenized (split into words), each word is tokenized by the model
// (byte-level BPE, SentencePiece-style BPE with byte fallback, WordPiece, WordLevel), and the
// post-processor adds BOS/EOS or [CLS] ... [SEP] when add_special is true. Input text must be
// valid UTF-8: anything else throws minfer::Error naming the byte offset (callers that want
// Python's errors="replace" behaviour can pass unicode::replace_invalid_utf8(text) instead).
// Truncation and padding settings in tokenizer.json are ignored: encode never truncates or pads.
#pragma once
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace minfer {

class GgufFile;

// The texts of end-of-turn special tokens, in llama.cpp's order of preference for picking the
// "eot" id when a GGUF names none (llama-vocab.cpp, special tokens auto-detected by text).
const std::vector<std::string>& end_of_turn_texts();

class Tokenizer {
 public:
  ~Tokenizer();
  Tokenizer(const Tokenizer&) = delete;
  Tokenizer& operator=(const Tokenizer&) = delete;

  // tokenizer.json; chat template, bos and eos come from tokenizer_config.json beside it if
  // present.
  static std::unique_ptr<Tokenizer> from_json_file(const std::string& path);
  static std::unique_ptr<Tokenizer> from_json_string(const std::string& json,
                                                     const std::string& origin);
  static std::unique_ptr<Tokenizer> from_gguf(const GgufFile& f);  // tokenizer.ggml.* metadata
  // path = tokenizer.json, a folder containing tokenizer.json, or a .gguf file
  static std::unique_ptr<Tokenizer> load(const std::string& path);

  std::vector<int32_t> encode(std::string_view text, bool add_special = true) const;
  // Appends to `out` (no allocation of a fresh vector per call).
  void encode_into(std::string_view text, bool add_special, std::vector<int32_t>& out) const;
  // Invalid UTF-8 produced by the ids (e.g. half of a byte-level character) becomes U+FFFD.
  // Throws for ids outside [0, vocab_size()).
  std::string decode(std::span<const int32_t> ids, bool skip_special = true) const;

  // The bytes token `id` adds in the middle of a text (decode_piece in tokenizer/decoders.h):
  // possibly a partial UTF-8 character; special tokens give their content (through the
  // decoders, as decode(ids, skip_special = false) does). Throws when out of range.
  std::string piece(int32_t id) const;
  std::string id_to_token(int32_t id) const;        // the vocabulary string; throws if out of range
  int32_t token_to_id(std::string_view tok) const;  // -1 if absent
  int64_t vocab_size() const;                       // highest id + 1 (model vocab and added tokens)
  int32_t bos_id() const;                           // -1 if none
  int32_t eos_id() const;                           // -1 if none
  // The BOS id encode(text, true) puts first, -1 when it adds none. It follows the tokenizer's
  // own flag, never the mere existence of a BOS token: GGUF tokenizer.ggml.add_bos_token
  // (llama.cpp's llama_vocab_get_add_bos), the tokenizer.json post-processor, and
  // tokenizer_config.json add_bos_token for the classes whose HF fast tokenizer rebuilds its
  // post-processor from it (LlamaTokenizerFast, GemmaTokenizerFast, CodeLlamaTokenizerFast).
  int32_t added_bos() const;
  // The id of a special token by role, -1 if the tokenizer names none: "bos", "eos" (as bos_id(),
  // eos_id()), and from GGUF metadata "unk", "sep", "pad", "cls", "mask" (tokenizer.ggml.
  // unknown/seperator/padding/cls/mask_token_id), "eot" and "eom" (tokenizer.ggml.eot_token_id /
  // eom_token_id, else found by text as llama.cpp does: <|eot_id|>, <|im_end|>, <|end|>,
  // <end_of_turn>, <|endoftext|>, <EOT>, DeepSeek's end of sentence; <|eom_id|>).
  int32_t special_id(std::string_view role) const;
  bool is_special(int32_t id) const;
  // End-of-generation ids, ascending, no duplicates: eos, the "eot" and "eom" roles, and every
  // special token whose text is an end-of-turn marker (end_of_turn_texts()). Generation stops
  // on any of them, as llama.cpp's llama_vocab_is_eog does (run-model, --chat, the C API).
  std::vector<int32_t> eog_ids() const;
  // from tokenizer_config.json next to tokenizer.json if present, or GGUF tokenizer.chat_template
  const std::string& chat_template() const;
  // A tokenizer.json that HF `tokenizers` can load and that encodes identically.
  std::string to_hf_json() const;

  // Ids the post-processor puts before / after the text when add_special is true.
  const std::vector<int32_t>& special_prefix() const;
  const std::vector<int32_t>& special_suffix() const;
  // Where it was loaded from, and a one-line summary ("BPE byte-level, 49152 tokens, ...").
  const std::string& origin() const;
  std::string describe() const;
  // The words encode() hands to the model (after added-token matching, normalization and
  // pre-tokenization), for debugging; added tokens appear as their content.
  std::vector<std::string> words(std::string_view text) const;

  struct Impl;

 private:
  explicit Tokenizer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
  friend std::unique_ptr<Tokenizer> make_tokenizer(std::unique_ptr<Impl> impl);
};

// The tokenizer.ggml.pre values that Tokenizer::from_gguf accepts for tokenizer.ggml.model = gpt2
// (llama.cpp's names, llama-vocab.cpp); any other value is refused naming it.
std::vector<std::string> gguf_pre_tokenizer_types();

// Runs only a pre-tokenizer, given as its tokenizer.json object (e.g. {"type":"ByteLevel",...}),
// on `text`: the pieces HF's pre_tokenizer.pre_tokenize_str(text) returns.
std::vector<std::string> pre_tokenize(const std::string& pre_tokenizer_json, std::string_view text);

// Token-by-token decoding for streaming output: push() returns only complete UTF-8 characters;
// the concatenation of all push() results and flush() equals decode(all ids).
class StreamDecoder {
 public:
  explicit StreamDecoder(const Tokenizer& t, bool skip_special = true);
  std::string push(int32_t id);
  std::string flush();  // whatever is pending (incomplete characters become U+FFFD)

 private:
  const Tokenizer& tok_;
  bool skip_special_;
  std::vector<int32_t> ids_;  // context ids + pending ids
  size_t context_ = 0;        // ids_[0, context_) were already emitted; they give the context
  std::string prefix_;        // decode(ids_[0, context_))
};

}  // namespace minfer
