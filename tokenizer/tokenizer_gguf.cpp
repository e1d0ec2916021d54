// Loading, GGUF: tokenizers stored in GGUF metadata (llama.cpp's tokenizer.ggml.* keys, written
// by its convert_hf_to_gguf.py), turned into the equivalent tokenizer.json object so that one
// loader and one pipeline serve both (loader_json.h), and to_hf_json() can hand the same object
// to HF `tokenizers`.
//
//   tokenizer.ggml.model  what the converter wrote it from         becomes (tokenizer.json)
//   gpt2                  byte-level BPE (tokens, merges, pre)      BPE + the family's
//                                                                   pre-tokenizer (table below)
//   gpt2 with gemma4,     BPE on raw UTF-8 (llama.cpp's            Replace(" ", "▁"), split at
//   granite-embed-multi-  byte_encode = false types)               newline runs, BPE with byte
//   311m or sarvam-moe                                             fallback
//   gemma4                as the gpt2 gemma4 type (Gemma 4)
//   whitespace            BPE on raw UTF-8 between whitespace      BPE + HF's Whitespace
//                         (Jina embeddings v2 zh)                  pre-tokenizer
//   llama                 SentencePiece BPE (tokens, scores, types) BPE with byte fallback,
//                                                                   merges rebuilt from scores
//                                                                   (transformers' LlamaConverter)
//   bert                  WordPiece, "phantom space" vocabulary     WordPiece + BertNormalizer
//
// The target is Hugging Face `tokenizers` on the tokenizer.json the GGUF was converted from.
#include <algorithm>
#include <filesystem>
#include <fstream>
#include <numeric>
#include <unordered_map>

#include "engine/error.h"
#include "engine/gguf.h"
#include "tokenizer/loader_json.h"
#include "tokenizer/pretokenize.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/unicode.h"

namespace minfer {

using nlohmann::json;

namespace {

// llama.cpp token types (llama_token_type / gguf-py TokenType).
enum : int64_t {
  kNormal = 1,
  kUnknown = 2,
  kControl = 3,
  kUserDefined = 4,
  kUnused = 5,
  kByte = 6
};

const char* const kSpace = "\xE2\x96\x81";  // U+2581 LOWER ONE EIGHTH BLOCK, SentencePiece's space

json byte_level(bool use_regex) {
  return {{"type", "ByteLevel"},
          {"add_prefix_space", false},
          {"trim_offsets", true},
          {"use_regex", use_regex}};
}
json split(const std::string& regex) {
  return {{"type", "Split"},
          {"pattern", {{"Regex", regex}}},
          {"behavior", "Isolated"},
          {"invert", false}};
}
json digits(bool individual) {
  return {{"type", "Digits"}, {"individual_digits", individual}};
}
json sequence(json steps) {
  return {{"type", "Sequence"}, {"pretokenizers", std::move(steps)}};
}

// Split patterns of the published tokenizer.json files (llama.cpp's llama-vocab.cpp carries
// adapted copies of the same expressions).
// BLOOM, Poro, GPT-3 Finnish, Viking: a word is everything up to whitespace or . , ! ? … 。 ， 、
// । ۔ ، (the parentheses and | inside the class are literal members of it).
const char* const kBloomRegex =
    " ?[^(\\s|[.,!?\xE2\x80\xA6\xE3\x80\x82\xEF\xBC\x8C\xE3\x80\x81\xE0\xA5\xA4\xDB\x94\xD8\x8C])]"
    "+";
// DeepSeek LLM / Coder (their tokenizer.json Split steps).
const char* const kDeepseekNewlines = "[\r\n]";
const char* const kDeepseekLlmLetters =
    "\\s?[A-Za-z\xC2\xB5\xC3\x80-\xC3\x96\xC3\x98-\xC3\xB6\xC3\xB8-\xC6\xBA\xC6\xBC-\xC6\xBF\xC7"
    "\x84-\xCA\x93\xCA\x95-\xCA\xAF\xCD\xB0-\xCD\xB3\xCD\xB6\xCD\xB7\xCD\xBB-\xCD\xBD\xCD\xBF\xCE"
    "\x86\xCE\x88-\xCE\x8A\xCE\x8C\xCE\x8E-\xCE\xA1\xCE\xA3-\xCF\xB5\xCF\xB7-\xD2\x81\xD2\x8A-\xD4"
    "\xAF\xD4\xB1-\xD5\x96\xE1\x82\xA0-\xE1\x83\x85\xE1\x8E\xA0-\xE1\x8F\xB5\xE1\x8F\xB8-\xE1\x8F"
    "\xBD\xE1\xB2\x90-\xE1\xB2\xBA\xE1\xB2\xBD-\xE1\xB2\xBF\xE1\xB4\x80-\xE1\xB4\xAB\xE1\xB5\xAB-"
    "\xE1\xB5\xB7\xE1\xB5\xB9-\xE1\xB6\x9A\xE1\xB8\x80-\xE1\xBC\x95\xE1\xBC\x98-\xE1\xBC\x9D\xE1"
    "\xBC\xA0-\xE1\xBD\x85\xE1\xBD\x88-\xE1\xBD\x8D\xE1\xBD\x90-\xE1\xBD\x97\xE1\xBD\x99\xE1\xBD"
    "\x9B\xE1\xBD\x9D\xE1\xBD\x9F-\xE1\xBD\xBD\xE1\xBE\x80-\xE1\xBE\xB4\xE1\xBE\xB6-\xE1\xBE\xBC"
    "\xE1\xBE\xBE\xE1\xBF\x82-\xE1\xBF\x84\xE1\xBF\x86-\xE1\xBF\x8C\xE1\xBF\x90-\xE1\xBF\x93\xE1"
    "\xBF\x96-\xE1\xBF\x9B\xE1\xBF\xA0-\xE1\xBF\xAC\xE1\xBF\xB2-\xE1\xBF\xB4\xE1\xBF\xB6-\xE1\xBF"
    "\xBC\xE2\x84\x82\xE2\x84\x87\xE2\x84\x8A-\xE2\x84\x93\xE2\x84\x95\xE2\x84\x99-\xE2\x84\x9D"
    "\xE2\x84\xA4\xE2\x84\xA6\xE2\x84\xA8\xE2\x84\xAA-\xE2\x84\xAD\xE2\x84\xAF-\xE2\x84\xB4\xE2"
    "\x84\xB9\xE2\x84\xBC-\xE2\x84\xBF\xE2\x85\x85-\xE2\x85\x89\xE2\x85\x8E\xE2\x86\x83\xE2\x86"
    "\x84\xE2\xB0\x80-\xE2\xB1\xBB\xE2\xB1\xBE-\xE2\xB3\xA4\xE2\xB3\xAB-\xE2\xB3\xAE\xE2\xB3\xB2"
    "\xE2\xB3\xB3\xEA\x99\x80-\xEA\x99\xAD\xEA\x9A\x80-\xEA\x9A\x9B\xEA\x9C\xA2-\xEA\x9D\xAF\xEA"
    "\x9D\xB1-\xEA\x9E\x87\xEA\x9E\x8B-\xEA\x9E\x8E\xEA\xAD\xB0-\xEA\xAE\xBF\xEF\xAC\x80-\xEF\xAC"
    "\x86\xEF\xAC\x93-\xEF\xAC\x97\xEF\xBC\xA1-\xEF\xBC\xBA\xEF\xBD\x81-\xEF\xBD\x9A\xF0\x90\x90"
    "\x80-\xF0\x90\x91\x8F\xF0\x90\x92\xB0-\xF0\x90\x93\x93\xF0\x90\x93\x98-\xF0\x90\x93\xBB\xF0"
    "\x90\xB2\x80-\xF0\x90\xB2\xB2\xF0\x90\xB3\x80-\xF0\x90\xB3\xB2\xF0\x91\xA2\xA0-\xF0\x91\xA3"
    "\x9F\xF0\x9E\xA4\x80-\xF0\x9E\xA5\x83]+";
const char* const kDeepseekLlmPunct =
    "\\s?[!-/:-~\xEF\xBC\x81-\xEF\xBC\x8F\xEF\xBC\x9A-\xEF\xBD\x9E\xE2\x80\x98-\xE2\x80\x9F\xE3"
    "\x80\x80-\xE3\x80\x82]+";
const char* const kDeepseekTrailingSpace = "\\s+$";
const char* const kDeepseekCjk =
    "[\xE4\xB8\x80-\xE9\xBE\xA5\xE0\xA0\x80-\xE4\xB8\x80\xEA\xB0\x80-\xED\x9F\xBF]+";
// Mistral's Tekken (Mistral Nemo, Pixtral): case-aware words, single digits.
const char* const kTekkenRegex =
    "[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]*[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]+|"
    "[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]+[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]*|"
    "\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

// OpenAI's o200k (GPT-4o), also Llama 4's: case-aware words with case-insensitive contractions,
// up to three digits.
const char* const kGpt4oRegex =
    "[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]*[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]+"
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)?|"
    "[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]+[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]*"
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)?|"
    "\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

// The regex lists of llama.cpp's llm_tokenizer_bpe (llama-vocab.cpp, b11312) for the types added
// after the table above was written from the published tokenizer.json files: each list is
// applied as llama.cpp applies it, one Split (Isolated) after the other, then the byte-level
// mapping. Where llama.cpp adapted a tokenizer.json pattern (case-insensitive (?i:'s|...) written
// as (?:'[sS]|...), possessive quantifiers made greedy), the adapted form is used (GGUF input
// follows llama.cpp; docs/tokenizers.md lists the differences).
const std::string kContractions = "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])";
// GPT-2's pattern as llama.cpp writes it (no final \s+ alternative).
const char* const kGpt2Regex =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)";
// Han, Hiragana, Katakana runs (DeepSeek-V3, Hunyuan-Dense, JoyAI, Spark 2.5, Youtu).
const char* const kCjkKana = "[\u4e00-\u9fa5\u3040-\u309f\u30a0-\u30ff]+";
// DeepSeek-V3: ASCII punctuation may lead a Latin word; letters take their marks.
const char* const kDeepseek3Words =
    "[!\"#$%&'()*+,\\-./"
    ":;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+|[^\r\n\\p{L}\\p{P}\\p{S}]?[\\p{L}\\p{M}]+|"
    " ?[\\p{P}\\p{S}]+[\r\n]*|\\s*[\r\n]+|\\s+(?!\\S)|\\s+";
const char* const kSpark25Words =
    "[!\"#$%&'()*+,\\-./"
    ":;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+|[^\r\n\\p{L}\\p{P}\\p{S}]?[\\p{L}\\p{M}]+|"
    " ?[\\p{P}\\p{S}]+|[\r\n]|\\s+(?!\\S)|\\s+";
const char* const kYoutuCjk =
    "[\uac00-\ud7a3\u3131-\u318e]+|[\uff01\u2026\u201c\u201d\u2018\u2019\u2014\uff1a\uff1b\uff0c"
    "\u3001-\u303f\ufe30-\ufe4f]+|[\u3105-\u312f]+|[\u4e00-\u9fa5\u3040-\u309f\u30a0-\u30ff]+";
std::string youtu_words() {
  return "[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]*[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]"
         "+" +
         kContractions +
         "?|[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]+[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}"
         "]*" +
         kContractions + "?|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
}
// Qwen2's pattern with llama.cpp's contractions (also Hunyuan, Solar Open, Grok-2, Laguna).
std::string qwen2_adapted() {
  return kContractions +
         "|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|"
         "\\s+(?!\\S)|\\s+";
}
std::string qwen35_words() {
  return kContractions +
         "|[^\\r\\n\\p{L}\\p{N}]?[\\p{L}\\p{M}]+|\\p{N}| ?[^\\s\\p{L}\\p{M}\\p{N}]+[\\r\\n]*|"
         "\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
}
// Jais-2: LLaMA-3's pattern with whitespace runs cut at 512, 256, ..., 4, 2, 1.
std::string jais2_words() {
  return kContractions +
         "|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|"
         "\\s{512}(?!\\S)|\\s{256}(?!\\S)|\\s{128}(?!\\S)|\\s{64}(?!\\S)|\\s{32}(?!\\S)|"
         "\\s{16}(?!\\S)|\\s{8}(?!\\S)|\\s{4}(?!\\S)|\\s{1,2}(?!\\S)|\\s{1}";
}
std::string seed_coder_words() {
  return kContractions +
         "|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1}| ?[^\\s\\p{L}\\p{N}\\r\\n]+|\\s*[\\r\\n]+|"
         "\\s+(?!\\S)|\\s+";
}
// Ling / BailingMoE (llama.cpp makes the tokenizer.json's ?+ and ++ greedy).
const char* const kBailingWords =
    "'(?:[sSdDmMtT]|[lL][lL]|[vV][eE]|[rR][eE])|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| "
    "?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]|\\s+(?!\\S)|\\s+";
// Qwen2's pattern without the contractions (Turkish suffixes after an apostrophe stay attached).
const char* const kUfakzekaWords =
    "[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|"
    "\\s+(?!\\S)|\\s+";
std::string minicpm5_words() {
  return kContractions +
         "|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}+| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|"
         "\\s+(?!\\S)|\\s+";
}
std::string tiny_aya_words() {
  return "[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]*[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]"
         "+" +
         kContractions +
         "?|[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]+[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}"
         "]*" +
         kContractions +
         "?|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
}
std::string granite_multi_words() {
  return "[^\\r\\n\\p{L}\\p{N}]?[^a-z[^\\p{L}\\p{M}]]*[^A-Z[^\\p{L}\\p{M}]]+" + kContractions +
         "?|[^\\r\\n\\p{L}\\p{N}]?[^a-z[^\\p{L}\\p{M}]]+[^A-Z[^\\p{L}\\p{M}]]*" + kContractions +
         "?|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
}
// Kimi K2 (tiktoken's pattern in its tokenization_kimi.py): Han runs alone, case-aware words of
// letters that are not Han, contractions, up to three digits. [A&&[^\p{Han}]] is class
// intersection, as Oniguruma and tiktoken's regex engine write it. llama.cpp replaces this pattern
// by a hand-written splitter that differs from it (docs/tokenizers.md); this is the model's own.
const char* const kKimiK2Regex =
    "[\\p{Han}]+|"
    "[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}&&[^\\p{Han}]]*"
    "[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}&&[^\\p{Han}]]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?|"
    "[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}&&[^\\p{Han}]]+"
    "[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}&&[^\\p{Han}]]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|"
    "\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
// EXAONE MoE: letters (with their marks) joined by single spaces are one piece, so a phrase is.
// llama.cpp writes it as [^\r\n\p{L}\p{N}]?(?:\p{L}\p{M}*(?: \p{L}\p{M}*)*)+, whose nested
// quantified groups backtrack as deep as the phrase is long; the same language, matched greedily
// with nothing after it in its alternative, is \p{L}(?:[\p{L}\p{M}]| (?=\p{L}))*: a letter, then
// letters, marks, and spaces that a letter follows.
std::string exaone_moe_words() {
  return kContractions +
         "|[^\\r\\n\\p{L}\\p{N}]?\\p{L}(?:[\\p{L}\\p{M}]| (?=\\p{L}))*|\\p{N}| ?[^\\s\\p{L}\\p{N}]+"
         "[\\r\\n/]?|\\s*[\\r\\n]|\\s+(?!\\S)|\\s+";
}
// AFMoE (Arcee Trinity). llama.cpp splits digit runs with a hand-written splitter: the leading
// (length mod 3) digits, then groups of three (1234567 -> 1 234 567); as a regex, a run of one to
// three digits that a multiple of three digits and then a non-digit follow. Then runs of CJK and
// other Asian scripts (the class as llama.cpp writes it: its third range starts at U+8C48, not at
// the compatibility ideograph U+F900 that looks the same), then DeepSeek-V3's words.
const char* const kAfmoeDigits = "\\p{N}{1,3}(?=(?:\\p{N}{3})*(?!\\p{N}))";
const char* const kAfmoeAsian =
    "[\u4e00-\u9fff\u3400-\u4dbf\u8c48-\ufaff\u3040-\u309f\u30a0-\u30ff\uff65-\uff9f\u2f00-\u2fdf"
    "\u0e40-\u0e7f\u0e80-\u0eff\u1780-\u17ff\u1000-\u109f\uaa60-\uaa7f\ua9e0-\ua9ff\uac00-\ud7af"
    "\u1100-\u11ff]+";
json splits_then_bytes(const std::vector<std::string>& regexes) {
  json steps = json::array();
  for (const std::string& r : regexes) steps.push_back(split(r));
  steps.push_back(byte_level(false));
  return sequence(std::move(steps));
}

// One row per pre-tokenizer family: the tokenizer.ggml.pre names llama.cpp's llama-vocab.cpp maps
// to it, and the normalizer and pre-tokenizer of the family's published tokenizer.json.
struct PreType {
  std::vector<const char*> names;
  bool nfc;            // tokenizer.json has an NFC normalizer (GPT-NeoX, Qwen2, Command-R)
  bool ignore_merges;  // BPE "ignore_merges" (LLaMA-3, Tekken), as llama.cpp sets it
  json (*pre)();
};

const std::vector<PreType>& pre_types() {
  static const std::vector<PreType> rows = {
      // GPT-2's regex inside ByteLevel (GPT-2, Phi-2, RoBERTa, Jina, GigaChat, Jais).
      // llama.cpp's GPT2 type (its GPT-2 pattern lacks the final \s+, which splits the same).
      {{"gpt-2", "phi-2", "roberta-bpe", "jina-es", "jina-de", "jina-v1-en", "jina-v2-es",
        "jina-v2-de", "jina-v2-code", "gigachat", "jais", "a.x-4.0", "mellum", "modern-bert",
        "exaone4", "trillion", "granite-docling"},
       false,
       false,
       [] { return byte_level(true); }},
      // GPT-NeoX's tokenizer (MPT, OLMo): NFC, then ByteLevel.
      {{"mpt", "olmo"}, true, false, [] { return byte_level(true); }},
      // Each digit alone, then ByteLevel (StarCoder, Refact, SmolLM, CodeShell, EXAONE, Minerva).
      {{"starcoder", "refact", "smollm", "codeshell", "exaone", "minerva-7b", "mellum2"},
       false,
       false,
       [] {
         return sequence(json::array({digits(true), byte_level(true)}));
       }},
      {{"command-r"},
       true,
       false,
       [] {
         return sequence(json::array({digits(true), byte_level(true)}));
       }},
      // LLaMA-3 (cl100k) split.
      {{"llama3", "llama-v3", "llama-bpe", "falcon3", "pixtral", "falcon-h1", "midm-2.0", "lfm2",
        "jina-v5-nano", "glm4", "glm5"},
       false,
       true,
       [] {
         return sequence(json::array({split(pretok::kLlama3Regex), byte_level(false)}));
       }},
      {{"dbrx", "smaug-bpe", "chatglm-bpe"},
       false,
       false,
       [] {
         return sequence(json::array({split(pretok::kLlama3Regex), byte_level(false)}));
       }},
      // Qwen2 split (single digits).
      {{"qwen2", "deepseek-r1-qwen", "megrez"},
       true,
       false,
       [] {
         return sequence(json::array({split(pretok::kQwen2Regex), byte_level(false)}));
       }},
      {{"stablelm2"},
       false,
       false,
       [] {
         return sequence(json::array({split(pretok::kQwen2Regex), byte_level(false)}));
       }},
      // Falcon: punctuation runs, ByteLevel, digit runs, then groups of three digits.
      {{"falcon"},
       false,
       false,
       [] {
         return sequence(json::array({{{"type", "Punctuation"}, {"behavior", "Contiguous"}},
                                      byte_level(true),
                                      digits(false),
                                      split("[0-9][0-9][0-9]")}));
       }},
      {{"bloom", "poro-chat", "gpt3-finnish"},
       false,
       false,
       [] {
         return sequence(json::array({split(kBloomRegex), byte_level(false)}));
       }},
      {{"viking"},
       false,
       false,
       [] {
         return sequence(json::array({split(kBloomRegex), digits(true), byte_level(false)}));
       }},
      {{"deepseek-llm"},
       false,
       false,
       [] {
         return sequence(json::array({split(kDeepseekNewlines), split(kDeepseekLlmLetters),
                                      split(kDeepseekLlmPunct), split(kDeepseekTrailingSpace),
                                      split(kDeepseekCjk), digits(false), byte_level(false)}));
       }},
      {{"deepseek-coder"},
       false,
       false,
       [] {
         return sequence(
             json::array({split(kDeepseekNewlines), split("\\s?\\p{L}+"), split("\\s?\\p{P}+"),
                          split(kDeepseekCjk), digits(true), byte_level(false)}));
       }},
      {{"gpt-4o", "llama4", "kanana2", "talkie", "minimax-m2"},
       false,
       false,
       [] {
         return sequence(json::array({split(kGpt4oRegex), byte_level(false)}));
       }},
      {{"tekken"},
       false,
       true,
       [] {
         return sequence(json::array({split(kTekkenRegex), byte_level(false)}));
       }},
      // Rows from llama.cpp's regex lists (see kContractions above).
      // A GGUF without tokenizer.ggml.pre, or with "default": llama.cpp's fallback split.
      {{"default"},
       false,
       false,
       [] {
         return splits_then_bytes(
             {"[\\p{P}\\$\\+<=>\\^~\\|]+", kGpt2Regex, "\\p{N}+", "[0-9][0-9][0-9]"});
       }},
      {{"deepseek-v3", "hunyuan-dense", "joyai-llm", "hy_v4"},
       false,
       false,
       [] {
         return splits_then_bytes({"\\p{N}{1,3}", kCjkKana, kDeepseek3Words});
       }},
      {{"spark2_5"},
       false,
       false,
       [] {
         return splits_then_bytes({"\\p{N}{1,3}", kCjkKana, kSpark25Words, "\\p{N}"});
       }},
      {{"youtu"},
       false,
       true,
       [] {
         return splits_then_bytes({kYoutuCjk, youtu_words()});
       }},
      {{"hunyuan", "solar-open", "grok-2", "kormo", "f2llmv2"},
       false,
       false,
       [] { return splits_then_bytes({qwen2_adapted()}); }},
      {{"qwen35"}, false, false, [] { return splits_then_bytes({qwen35_words()}); }},
      {{"jais-2"}, false, false, [] { return splits_then_bytes({jais2_words()}); }},
      {{"seed-coder"}, false, false, [] { return splits_then_bytes({seed_coder_words()}); }},
      {{"bailingmoe", "bailingmoe2", "llada-moe"},
       false,
       false,
       [] { return splits_then_bytes({kBailingWords}); }},
      {{"ufakzeka"}, false, false, [] { return splits_then_bytes({kUfakzekaWords}); }},
      {{"laguna"},
       false,
       false,
       [] {
         return splits_then_bytes({"[^\\n]+|[\\n]+", qwen2_adapted()});
       }},
      {{"minicpm5"},
       false,
       true,
       [] {
         return splits_then_bytes({"\\p{N}{1,3}", minicpm5_words()});
       }},
      // Chameleon: sentinel and image tokens, tabs/newlines and space pairs, single digits,
      // punctuation, then GPT-2's pattern.
      {{"chameleon"},
       false,
       false,
       [] {
         return splits_then_bytes({"<sentinel:[0-9]+>", "(IMGIMG)((A|B|C|D|E|F|G|H|I){1,4})Z",
                                   "([\\t\\n]|    |  )", "\\p{N}", "[\\p{P}!-/:-@\\[-`{-~]",
                                   kGpt2Regex});
       }},
      // SuperBPE: no split at whitespace (superword tokens), digit runs in groups of three from
      // the right (an empty-match split). llama.cpp's \d is std::wregex's: ASCII digits only.
      {{"superbpe"},
       false,
       false,
       [] {
         return splits_then_bytes({"\\p{N}+", "(?=([0-9]{3})+(?![0-9]))"});
       }},
      // Tiny Aya / Cohere2 MoE: digit runs in groups of three from the right, then o200k's
      // pattern with llama.cpp's contractions (\d as above).
      {{"tiny_aya", "cohere2moe"},
       false,
       false,
       [] {
         return splits_then_bytes({"[0-9]{1,3}(?=(?:[0-9]{3})*\\b)", tiny_aya_words()});
       }},
      // Granite embedding multilingual 97M: o200k's pattern with marks as letters. llama.cpp
      // writes "letter but not a-z" as ((?=[\p{L}\p{M}])([^a-z])); the same set is the class
      // [^a-z[^\p{L}\p{M}]], which matches without backtracking per character.
      {{"granite-embed-multi-97m"},
       false,
       true,
       [] { return splits_then_bytes({granite_multi_words()}); }},
      {{"kimi-k2"}, false, false, [] { return splits_then_bytes({kKimiK2Regex}); }},
      {{"exaone-moe"}, false, false, [] { return splits_then_bytes({exaone_moe_words()}); }},
      {{"afmoe"},
       false,
       false,
       [] {
         return splits_then_bytes({kAfmoeDigits, kAfmoeAsian, kDeepseek3Words});
       }},
  };
  return rows;
}

// SentencePiece-style BPE on raw UTF-8, without the byte-level mapping (llama.cpp's
// byte_encode = false types): spaces become "▁" (llama_escape_whitespace), the text is cut
// into runs of newlines and runs of other characters ([^\n]+|[\n]+), BPE merges run over each
// run's characters, and a character no token covers falls back to <0xXX> byte tokens.
struct RawPreType {
  std::vector<const char*> names;
  // Gemma 4 (llama.cpp PR 21343): a run of newlines that is a token is that token, whatever the
  // merges say; and a BOS is always added (PR 21500), as llama.cpp overrides add_bos_token.
  bool gemma4;
};
const std::vector<RawPreType>& raw_pre_types() {
  static const std::vector<RawPreType> rows = {
      {{"gemma4", "granite-embed-multi-311m"}, true},  // llama.cpp maps both to its GEMMA4 type
      {{"sarvam-moe"}, false}};
  return rows;
}
const RawPreType* raw_pre_type(const std::string& pre) {
  for (const RawPreType& t : raw_pre_types())
    for (const char* n : t.names)
      if (pre == n) return &t;
  return nullptr;
}

const PreType& pre_type_for(const std::string& pre, const std::string& origin) {
  for (const PreType& t : pre_types())
    for (const char* n : t.names)
      if (pre == n) return t;
  if (pre == "whitespace")
    throw Error(
        fmt::format("{}: GGUF tokenizer.ggml.pre = 'whitespace' with tokenizer.ggml.model = "
                    "'gpt2' (llama.cpp's converter writes that pre-tokenizer only with "
                    "tokenizer.ggml.model = 'whitespace')",
                    origin));
  throw NotImplemented(
      fmt::format("{}: GGUF tokenizer.ggml.pre = '{}' is not a known pre-tokenizer type "
                  "(supported: {})",
                  origin, pre, fmt::join(gguf_pre_tokenizer_types(), ", ")));
}

// The GGUF arrays and flags every tokenizer model reads.
struct GgufVocab {
  const GgufFile& f;
  std::string origin;
  const std::vector<std::string>& tokens;
  std::vector<int64_t> types;  // empty when the file has none

  int64_t type(size_t i) const { return types.empty() ? kNormal : types[i]; }
  bool flag(const char* key, bool def) const { return f.has(key) ? f.get_bool(key) : def; }
  // tokenizer.ggml.<role>_token_id, or -1; an id outside the vocabulary is an error.
  int64_t id(const std::string& role) const {
    const std::string key = "tokenizer.ggml." + role + "_token_id";
    if (!f.has(key)) return -1;
    const int64_t v = f.get_int(key);
    MINFER_CHECK(v >= 0 && static_cast<size_t>(v) < tokens.size(),
                 "{}: {} = {} is outside the vocabulary of {} tokens", origin, key, v,
                 tokens.size());
    return v;
  }
};

// Control and unknown tokens become special added tokens, user-defined ones plain added tokens
// (what transformers' converters and llama.cpp's tokenizer_st_partition both do).
json added_tokens_of(const GgufVocab& v) {
  json added = json::array();
  for (size_t i = 0; i < v.tokens.size(); ++i) {
    const int64_t t = v.type(i);
    if (t != kControl && t != kUserDefined && t != kUnknown) continue;
    if (v.tokens[i].empty()) continue;
    added.push_back({{"id", i},
                     {"content", v.tokens[i]},
                     {"single_word", false},
                     {"lstrip", false},
                     {"rstrip", false},
                     {"normalized", false},
                     {"special", t != kUserDefined}});
  }
  return added;
}

json vocab_of(const std::vector<std::string>& tokens) {
  json vocab = json::object();
  for (size_t i = 0; i < tokens.size(); ++i) {
    if (vocab.contains(tokens[i])) continue;  // duplicates: HF keeps one id per string
    vocab[tokens[i]] = i;
  }
  return vocab;
}

// "<first> $A <last>" with the ids the flags ask for (both may be -1: none).
json template_processing(const GgufVocab& v, int64_t first, const char* first_role, int64_t last,
                         const char* last_role) {
  json single = json::array(), specials = json::object();
  auto special = [&](int64_t id, const char* role) {
    MINFER_CHECK(id >= 0 && static_cast<size_t>(id) < v.tokens.size(),
                 "{}: the tokenizer adds a {} token but tokenizer.ggml.{}_token_id is absent",
                 v.origin, role, role);
    const std::string& t = v.tokens[static_cast<size_t>(id)];
    single.push_back({{"SpecialToken", {{"id", t}, {"type_id", 0}}}});
    specials[t] = {{"id", t}, {"ids", json::array({id})}, {"tokens", json::array({t})}};
  };
  if (first_role) special(first, first_role);
  single.push_back({{"Sequence", {{"id", "A"}, {"type_id", 0}}}});
  if (last_role) special(last, last_role);
  return {{"type", "TemplateProcessing"},
          {"single", single},
          {"pair", single},
          {"special_tokens", specials}};
}

json bpe_model(json vocab, json merges, const char* unk, bool byte_fallback, bool ignore_merges) {
  return {{"type", "BPE"},
          {"dropout", nullptr},
          {"unk_token", unk ? json(unk) : json(nullptr)},
          {"continuing_subword_prefix", nullptr},
          {"end_of_word_suffix", nullptr},
          {"fuse_unk", unk != nullptr},
          {"byte_fallback", byte_fallback},
          {"ignore_merges", ignore_merges},
          {"vocab", std::move(vocab)},
          {"merges", std::move(merges)}};
}

void build_raw_bpe(const GgufVocab& v, const RawPreType& rt, json& j);

// ---- gpt2: byte-level BPE ----
void build_gpt2(const GgufVocab& v, json& j, bool& whole_newline_words) {
  const std::string pre = v.f.get_str_or("tokenizer.ggml.pre", "default");
  if (const RawPreType* rt = raw_pre_type(pre)) {
    build_raw_bpe(v, *rt, j);
    whole_newline_words = rt->gemma4;
    return;
  }
  const PreType& pt = pre_type_for(pre, v.origin);
  j["normalizer"] = pt.nfc ? json{{"type", "NFC"}} : json(nullptr);
  j["pre_tokenizer"] = pt.pre();
  const bool add_bos = v.flag("tokenizer.ggml.add_bos_token", false);
  const bool add_eos = v.flag("tokenizer.ggml.add_eos_token", false);
  j["post_processor"] = (add_bos || add_eos)
                            ? template_processing(v, v.id("bos"), add_bos ? "bos" : nullptr,
                                                  v.id("eos"), add_eos ? "eos" : nullptr)
                            : json{{"type", "ByteLevel"},
                                   {"add_prefix_space", true},
                                   {"trim_offsets", false},
                                   {"use_regex", true}};
  j["decoder"] = {{"type", "ByteLevel"},
                  {"add_prefix_space", true},
                  {"trim_offsets", true},
                  {"use_regex", true}};
  MINFER_CHECK(v.f.has("tokenizer.ggml.merges"),
               "{}: byte-level BPE tokenizer (tokenizer.ggml.model = 'gpt2') without "
               "tokenizer.ggml.merges",
               v.origin);
  j["model"] = bpe_model(vocab_of(v.tokens), v.f.get_str_array("tokenizer.ggml.merges"), nullptr,
                         false, pt.ignore_merges);
}

// ---- gpt2 / gemma4 with a raw-UTF-8 pre-tokenizer type (RawPreType above) ----
void build_raw_bpe(const GgufVocab& v, const RawPreType& rt, json& j) {
  j["normalizer"] = {{"type", "Replace"}, {"pattern", {{"String", " "}}}, {"content", kSpace}};
  j["pre_tokenizer"] = split("[^\\n]+|[\\n]+");
  j["decoder"] = {
      {"type", "Sequence"},
      {"decoders",
       json::array({{{"type", "Replace"}, {"pattern", {{"String", kSpace}}}, {"content", " "}},
                    {{"type", "ByteFallback"}},
                    {{"type", "Fuse"}}})}};
  const bool add_bos = rt.gemma4 || v.flag("tokenizer.ggml.add_bos_token", false);
  const bool add_eos = v.flag("tokenizer.ggml.add_eos_token", false);
  j["post_processor"] = template_processing(v, v.id("bos"), add_bos ? "bos" : nullptr, v.id("eos"),
                                            add_eos ? "eos" : nullptr);
  MINFER_CHECK(v.f.has("tokenizer.ggml.merges"),
               "{}: BPE tokenizer (tokenizer.ggml.model = '{}') without tokenizer.ggml.merges",
               v.origin, v.f.get_str("tokenizer.ggml.model"));
  int64_t unk = v.id("unknown");
  for (size_t i = 0; unk < 0 && i < v.tokens.size(); ++i)
    if (v.type(i) == kUnknown) unk = static_cast<int64_t>(i);
  bool byte_fallback = false;
  for (size_t i = 0; i < v.tokens.size() && !byte_fallback; ++i)
    byte_fallback = v.tokens[i] == "<0x00>";
  const std::string unk_tok = unk >= 0 ? v.tokens[static_cast<size_t>(unk)] : std::string();
  j["model"] = bpe_model(vocab_of(v.tokens), v.f.get_str_array("tokenizer.ggml.merges"),
                         unk >= 0 ? unk_tok.c_str() : nullptr, byte_fallback, false);
}

// ---- whitespace: BPE on raw UTF-8 between whitespace (Jina embeddings v2 zh) ----
// convert_hf_to_gguf writes tokenizer.ggml.model = pre = 'whitespace' for a tokenizer.json whose
// pre-tokenizer is HF's Whitespace (\w+|[^\w\s]+). llama.cpp drops whitespace and runs BPE on
// each whitespace-free segment; as the merges were learned on Whitespace's pieces, none joins a
// word character to a symbol, and both give the same tokens. HF's pre-tokenizer is used here.
// tokenizer.ggml.normalizer.lowercase (default false, as llama.cpp) lowercases first.
void build_whitespace(const GgufVocab& v, json& j) {
  const std::string pre = v.f.get_str_or("tokenizer.ggml.pre", "whitespace");
  MINFER_CHECK(pre == "whitespace",
               "{}: tokenizer.ggml.model = 'whitespace' with tokenizer.ggml.pre = '{}' (expected "
               "'whitespace', as llama.cpp's converter writes it)",
               v.origin, pre);
  j["normalizer"] = v.flag("tokenizer.ggml.normalizer.lowercase", false)
                        ? json{{"type", "Lowercase"}}
                        : json(nullptr);
  j["pre_tokenizer"] = {{"type", "Whitespace"}};
  j["decoder"] = nullptr;  // tokens joined by spaces, as HF decodes without a decoder
  // BOS and EOS as the flags say (tokenizer.ggml.add_sep_token is for pairs: llama.cpp puts the
  // SEP between a reranker's query and document, never after one text).
  const bool add_bos = v.flag("tokenizer.ggml.add_bos_token", false);
  const bool add_eos = v.flag("tokenizer.ggml.add_eos_token", false);
  j["post_processor"] = (add_bos || add_eos)
                            ? template_processing(v, v.id("bos"), add_bos ? "bos" : nullptr,
                                                  v.id("eos"), add_eos ? "eos" : nullptr)
                            : json(nullptr);
  MINFER_CHECK(v.f.has("tokenizer.ggml.merges"),
               "{}: BPE tokenizer (tokenizer.ggml.model = 'whitespace') without "
               "tokenizer.ggml.merges",
               v.origin);
  const int64_t unk = v.id("unknown");
  bool byte_fallback = false;
  for (size_t i = 0; i < v.tokens.size() && !byte_fallback; ++i)
    byte_fallback = v.tokens[i] == "<0x00>";
  const std::string unk_tok = unk >= 0 ? v.tokens[static_cast<size_t>(unk)] : std::string();
  j["model"] = bpe_model(vocab_of(v.tokens), v.f.get_str_array("tokenizer.ggml.merges"),
                         unk >= 0 ? unk_tok.c_str() : nullptr, byte_fallback, false);
  j["model"]["fuse_unk"] = false;  // HF's BPE default, which such a tokenizer.json keeps
}

// ---- llama: SentencePiece BPE ----
// The merges HF's converter derives from a SentencePiece vocabulary (transformers
// convert_slow_tokenizer.generate_merges): every split of every piece into two pieces of the
// vocabulary, ranked by the score of the merged piece (highest first; SentencePiece stores BPE
// pieces by descending score, so this is also id order), then by the lengths of the left and
// right parts. Splits are at code-point boundaries.
json merges_from_scores(const GgufVocab& v, const std::vector<double>& scores) {
  std::unordered_map<std::string_view, int64_t> id;
  id.reserve(v.tokens.size() * 2);
  for (size_t i = 0; i < v.tokens.size(); ++i) id.emplace(v.tokens[i], static_cast<int64_t>(i));
  struct M {
    int64_t merged;
    uint32_t left_chars, right_chars, cut;
  };
  std::vector<M> ms;
  for (size_t i = 0; i < v.tokens.size(); ++i) {
    const std::string& t = v.tokens[i];
    if (id.at(t) != static_cast<int64_t>(i)) continue;  // a duplicate string: its first id
    const uint32_t nchars = static_cast<uint32_t>(unicode::count_chars(t));
    uint32_t chars = 0;
    for (size_t p = 0; p < t.size();) {
      p += static_cast<size_t>(unicode::utf8_len(static_cast<uint8_t>(t[p])));
      ++chars;
      if (p >= t.size()) break;
      std::string_view l(t.data(), p), r(t.data() + p, t.size() - p);
      if (id.count(l) && id.count(r))
        ms.push_back({static_cast<int64_t>(i), chars, nchars - chars, static_cast<uint32_t>(p)});
    }
  }
  std::stable_sort(ms.begin(), ms.end(), [&](const M& a, const M& b) {
    const double sa = scores[static_cast<size_t>(a.merged)],
                 sb = scores[static_cast<size_t>(b.merged)];
    if (sa != sb) return sa > sb;
    if (a.merged != b.merged) return a.merged < b.merged;
    if (a.left_chars != b.left_chars) return a.left_chars < b.left_chars;
    return a.right_chars < b.right_chars;
  });
  json merges = json::array();
  for (const M& m : ms) {
    const std::string& t = v.tokens[static_cast<size_t>(m.merged)];
    merges.push_back(json::array({t.substr(0, m.cut), t.substr(m.cut)}));
  }
  return merges;
}

void build_llama(const GgufVocab& v, json& j) {
  MINFER_CHECK(v.f.has("tokenizer.ggml.scores"),
               "{}: SentencePiece tokenizer (tokenizer.ggml.model = 'llama') without "
               "tokenizer.ggml.scores",
               v.origin);
  const std::vector<double> scores = v.f.get_float_array("tokenizer.ggml.scores");
  MINFER_CHECK(scores.size() == v.tokens.size(),
               "{}: tokenizer.ggml.scores has {} entries, tokenizer.ggml.tokens has {}", v.origin,
               scores.size(), v.tokens.size());
  if (v.flag("tokenizer.ggml.remove_extra_whitespaces", false))
    throw NotImplemented(fmt::format(
        "{}: tokenizer.ggml.remove_extra_whitespaces = true for a SentencePiece BPE tokenizer "
        "(neither llama.cpp nor transformers' LlamaConverter collapse whitespace for "
        "tokenizer.ggml.model = 'llama')",
        v.origin));
  const bool add_space_prefix = v.flag("tokenizer.ggml.add_space_prefix", true);
  // transformers' LlamaConverter in its "legacy" form, the tokenizer.json that LLaMA-2,
  // TinyLlama, Mistral-7B v0.1 and Phi-3 publish: "▁" before each text segment (llama.cpp adds it
  // likewise after every special token) and spaces as "▁"; no pre-tokenizer.
  json norm = json::array();
  if (add_space_prefix) norm.push_back({{"type", "Prepend"}, {"prepend", kSpace}});
  norm.push_back({{"type", "Replace"}, {"pattern", {{"String", " "}}}, {"content", kSpace}});
  j["normalizer"] = {{"type", "Sequence"}, {"normalizers", norm}};
  j["pre_tokenizer"] = nullptr;
  json dec =
      json::array({{{"type", "Replace"}, {"pattern", {{"String", kSpace}}}, {"content", " "}},
                   {{"type", "ByteFallback"}},
                   {{"type", "Fuse"}}});
  if (add_space_prefix)
    dec.push_back({{"type", "Strip"}, {"content", " "}, {"start", 1}, {"stop", 0}});
  j["decoder"] = {{"type", "Sequence"}, {"decoders", dec}};
  const bool add_bos = v.flag("tokenizer.ggml.add_bos_token", true);  // llama.cpp's SPM defaults
  const bool add_eos = v.flag("tokenizer.ggml.add_eos_token", false);
  j["post_processor"] = template_processing(v, v.id("bos"), add_bos ? "bos" : nullptr, v.id("eos"),
                                            add_eos ? "eos" : nullptr);
  // The unknown piece: tokenizer.ggml.unknown_token_id, else the token typed UNKNOWN.
  int64_t unk = v.id("unknown");
  for (size_t i = 0; unk < 0 && i < v.tokens.size(); ++i)
    if (v.type(i) == kUnknown) unk = static_cast<int64_t>(i);
  bool byte_fallback = false;
  for (size_t i = 0; i < v.tokens.size() && !byte_fallback; ++i)
    byte_fallback = v.type(i) == kByte || v.tokens[i] == "<0x00>";
  const std::string unk_tok = unk >= 0 ? v.tokens[static_cast<size_t>(unk)] : std::string();
  j["model"] = bpe_model(vocab_of(v.tokens), merges_from_scores(v, scores),
                         unk >= 0 ? unk_tok.c_str() : nullptr, byte_fallback, false);
}

// ---- bert: WordPiece ----
// convert_hf_to_gguf.py (BertModel.set_vocab) stores WordPiece tokens in "phantom space" form:
// a word-initial piece gets "▁" in front, a continuation loses its "##", and "[...]" tokens stay.
// This undoes it (a file that still has "##" pieces is taken as stored in HF form).
std::vector<std::string> wordpiece_tokens(const GgufVocab& v) {
  const bool phantom = std::none_of(v.tokens.begin(), v.tokens.end(),
                                    [](const std::string& t) { return t.rfind("##", 0) == 0; });
  std::vector<std::string> out;
  out.reserve(v.tokens.size());
  for (size_t i = 0; i < v.tokens.size(); ++i) {
    const std::string& t = v.tokens[i];
    if (!phantom || v.type(i) == kControl || v.type(i) == kUnknown ||
        (t.size() >= 2 && t.front() == '[' && t.back() == ']'))
      out.push_back(t);
    else if (t.rfind(kSpace, 0) == 0)
      out.push_back(t.substr(3));
    else
      out.push_back(std::string("##").append(t));
  }
  return out;
}

void build_bert(const GgufVocab& v, json& j, std::vector<std::string>& tokens) {
  tokens = wordpiece_tokens(v);
  // GGUF has no do_lower_case key. An uncased vocabulary holds no upper-case letter outside its
  // bracketed special tokens (an upper-case piece could never be produced after lowercasing); a
  // cased one does. llama.cpp lowercases always.
  bool lower = true;
  for (size_t i = 0; i < tokens.size() && lower; ++i) {
    const std::string& t = tokens[i];
    if (v.type(i) == kControl || v.type(i) == kUnknown ||
        (t.size() >= 2 && t.front() == '[' && t.back() == ']'))
      continue;
    if (unicode::find_invalid_utf8(t) != std::string::npos) continue;
    lower = unicode::lowercase(t) == t;
  }
  j["normalizer"] = {{"type", "BertNormalizer"},
                     {"clean_text", true},
                     {"handle_chinese_chars", true},
                     {"strip_accents", nullptr},
                     {"lowercase", lower}};
  j["pre_tokenizer"] = {{"type", "BertPreTokenizer"}};
  j["decoder"] = {{"type", "WordPiece"}, {"prefix", "##"}, {"cleanup", true}};
  auto find = [&](const char* s) -> int64_t {
    auto it = std::find(tokens.begin(), tokens.end(), s);
    return it == tokens.end() ? -1 : it - tokens.begin();
  };
  int64_t cls = v.id("cls"), sep = v.id("seperator");  // llama.cpp's spelling of the key
  if (cls < 0) cls = v.id("bos");
  if (sep < 0) sep = v.id("eos");
  if (cls < 0) cls = find("[CLS]");
  if (sep < 0) sep = find("[SEP]");
  const bool add_cls = v.flag("tokenizer.ggml.add_bos_token", true);
  const bool add_sep = v.f.has("tokenizer.ggml.add_sep_token")
                           ? v.f.get_bool("tokenizer.ggml.add_sep_token")
                           : v.flag("tokenizer.ggml.add_eos_token", true);
  j["post_processor"] =
      template_processing(v, cls, add_cls ? "cls" : nullptr, sep, add_sep ? "sep" : nullptr);
  int64_t unk = v.id("unknown");
  if (unk < 0) unk = find("[UNK]");
  MINFER_CHECK(unk >= 0,
               "{}: WordPiece tokenizer without an unknown token (tokenizer.ggml.unknown_token_id "
               "absent and no [UNK])",
               v.origin);
  j["model"] = {{"type", "WordPiece"},
                {"unk_token", tokens[static_cast<size_t>(unk)]},
                {"continuing_subword_prefix", "##"},
                {"max_input_chars_per_word", 100},
                {"vocab", vocab_of(tokens)}};
}

}  // namespace

std::vector<std::string> gguf_pre_tokenizer_types() {
  std::vector<std::string> out;
  for (const PreType& t : pre_types())
    for (const char* n : t.names) out.emplace_back(n);
  for (const RawPreType& t : raw_pre_types())
    for (const char* n : t.names) out.emplace_back(n);
  return out;
}

std::unique_ptr<Tokenizer> Tokenizer::from_gguf(const GgufFile& f) {
  const std::string origin = f.path();
  const std::string model = f.get_str("tokenizer.ggml.model");
  GgufVocab v{f, origin, f.get_str_array("tokenizer.ggml.tokens"), {}};
  if (f.has("tokenizer.ggml.token_type")) {
    v.types = f.get_int_array("tokenizer.ggml.token_type");
    MINFER_CHECK(v.types.size() == v.tokens.size(),
                 "{}: tokenizer.ggml.token_type has {} entries, tokenizer.ggml.tokens has {}",
                 origin, v.types.size(), v.tokens.size());
  }

  json j = json::object();
  j["version"] = "1.0";
  j["truncation"] = nullptr;
  j["padding"] = nullptr;
  std::vector<std::string> wp_tokens;  // bert: the tokens in HF form
  bool whole_newline_words = false;
  if (model == "gpt2") {
    build_gpt2(v, j, whole_newline_words);
  } else if (model == "gemma4") {  // llama.cpp takes the gemma4 pre type whatever the file says
    build_raw_bpe(v, *raw_pre_type("gemma4"), j);
    whole_newline_words = true;
  } else if (model == "whitespace") {
    build_whitespace(v, j);
  } else if (model == "llama") {
    build_llama(v, j);
  } else if (model == "bert") {
    build_bert(v, j, wp_tokens);
  } else {
    throw NotImplemented(
        fmt::format("{}: GGUF tokenizer.ggml.model = '{}' (supported: gpt2, gemma4, whitespace, "
                    "llama, bert)",
                    origin, model));
  }
  json added = added_tokens_of(v);
  if (!wp_tokens.empty())
    for (json& a : added) a["content"] = wp_tokens[a["id"].get<size_t>()];
  j["added_tokens"] = added;

  TokenizerExtras ex;
  ex.bpe_whole_newline_words = whole_newline_words;
  ex.chat_template = f.get_str_or("tokenizer.chat_template", "");
  ex.bos_id = static_cast<int32_t>(v.id("bos"));
  ex.eos_id = static_cast<int32_t>(v.id("eos"));
  const std::vector<std::string>& names = wp_tokens.empty() ? v.tokens : wp_tokens;
  auto by_text = [&](std::string_view s) -> int32_t {
    auto it = std::find(names.begin(), names.end(), s);
    return it == names.end() ? -1 : static_cast<int32_t>(it - names.begin());
  };
  for (const char* role : {"unknown", "seperator", "padding", "cls", "mask", "eot", "eom"}) {
    int64_t id = v.id(role);
    if (std::string_view(role) == "eot" && id < 0)
      for (const std::string& t : end_of_turn_texts())  // "<|eom_id|>" last: never reached first
        if (t != "<|eom_id|>" && (id = by_text(t)) >= 0) break;
    if (std::string_view(role) == "eom" && id < 0) id = by_text("<|eom_id|>");
    const std::string_view name = std::string_view(role) == "unknown"     ? "unk"
                                  : std::string_view(role) == "seperator" ? "sep"
                                  : std::string_view(role) == "padding"   ? "pad"
                                                                          : role;
    ex.roles.emplace_back(std::string(name), static_cast<int32_t>(id));
  }
  return tokenizer_from_json(j, origin, ex);
}

std::unique_ptr<Tokenizer> Tokenizer::load(const std::string& path) {
  namespace fs = std::filesystem;
  MINFER_CHECK(fs::exists(path), "tokenizer: '{}' does not exist", path);
  if (fs::is_directory(path)) {
    fs::path tj = fs::path(path) / "tokenizer.json";
    if (fs::exists(tj)) return from_json_file(tj.string());
    std::vector<fs::path> ggufs;
    for (const auto& e : fs::directory_iterator(path))
      if (e.path().extension() == ".gguf") ggufs.push_back(e.path());
    MINFER_CHECK(ggufs.size() == 1,
                 "tokenizer: folder '{}' has no tokenizer.json and {} .gguf files (need one)", path,
                 ggufs.size());
    return load(ggufs[0].string());
  }
  char magic[4] = {0, 0, 0, 0};
  {
    std::ifstream in(path, std::ios::binary);
    in.read(magic, 4);
  }
  if (std::string_view(magic, 4) == "GGUF") {
    auto g = GgufFile::open(path);
    return from_gguf(*g);
  }
  return from_json_file(path);
}

}  // namespace minfer
