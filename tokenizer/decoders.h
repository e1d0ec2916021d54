// The way back, the decoder (HF tokenizers/src/decoders/*.rs): turns the token strings of a list
// of ids into text, e.g. byte-level symbols back to bytes, "▁" back to spaces, "##" joined.
#pragma once
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "tokenizer/json_reader.h"
#include "tokenizer/pretokenize.h"

namespace minfer {

struct Decoder {
  enum class Kind { ByteLevel, Replace, ByteFallback, Fuse, Strip, WordPiece, Metaspace, Bpe, Ctc };
  Kind kind = Kind::Fuse;
  std::string a, b;  // Replace pattern/content, WordPiece prefix, Metaspace replacement, BPE suffix
  uint32_t ch = 0;   // Strip content
  size_t start = 0, stop = 0;
  bool cleanup = false;
  Prepend prepend = Prepend::Always;
};

// Appends the decoders that tokenizer.json's "decoder" object `o` describes (a Sequence is
// flattened; null adds none). Throws naming the type if it is not supported.
void parse_decoder(const nlohmann::json& o, const JsonReader& r, std::vector<Decoder>& out);

// Runs the decoders in order over the token strings (each maps the list to a new list) and
// concatenates the result; with no decoders the tokens are joined by spaces. Invalid UTF-8 in
// the result becomes U+FFFD. `toks` is consumed.
std::string decode_tokens(const std::vector<Decoder>& decoders, std::vector<std::string>& toks);

// The bytes one token contributes in the middle of a text (llama.cpp's token_to_piece): the
// decoders run on the token as if other tokens came before and after it (Metaspace keeps its
// leading space, WordPiece joins "##" pieces and puts a space before the others, Strip of the
// text's first character is skipped) and invalid UTF-8 is kept as raw bytes (half of a
// byte-level character), so the concatenated pieces of a generated sequence are its text.
std::string decode_piece(const std::vector<Decoder>& decoders, std::string tok);

}  // namespace minfer
