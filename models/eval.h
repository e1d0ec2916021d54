// Evaluation over a model: perplexity (Hugging Face sliding window, or llama.cpp's chunks) and
// sentence embeddings (pooling and normalisation as the folder's sentence-transformers files say).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "models/model.h"
#include "tokenizer/tokenizer.h"

namespace minfer {

struct PerplexityResult {
  double ppl = 0;
  double mean_nll = 0;
  int64_t tokens_scored = 0;
  int64_t windows = 0;
  double seconds = 0;
  double tokens_per_s = 0;  // tokens forwarded per second
};

enum class PplMethod {
  // HF "Perplexity of fixed-length models": windows of up to ctx tokens advancing by stride;
  // each token is scored once, by the window that first covers it (the first token of the text
  // and of a window's non-overlapping head are never scored without context).
  HfSlidingWindow,
  // llama.cpp's llama-perplexity: non-overlapping chunks of ctx tokens, the first token of each
  // chunk replaced by BOS when the tokenizer adds BOS (llama_vocab_get_add_bos()), only the
  // second half of each chunk scored (tools/perplexity/perplexity.cpp, perplexity()).
  Llama,
};

// Perplexity of `ids` (the whole text, encoded with the tokenizer's special tokens). ctx: window
// / chunk length in tokens; stride: window advance (HfSlidingWindow only). bos: the id written
// over token 0 of every llama.cpp chunk, -1 for none; pass Tokenizer::added_bos() so it follows
// the tokenizer's add_bos flag as llama.cpp does (unused by HfSlidingWindow, whose ids already
// carry what the tokenizer adds). Throws minfer::Error when a logit row that scores a token is
// not finite (NaN / inf: an overflowed weight or activation), naming the token position.
PerplexityResult perplexity(Model& m, const std::vector<int32_t>& ids, int64_t ctx, int64_t stride,
                            PplMethod method, int32_t bos, bool progress = true);

// How sentence-transformers turns a BERT's token states into one sentence embedding, read from
// the model folder the way SentenceTransformer(folder) reads it:
//   modules.json                 the module list: Transformer, then Pooling, then Normalize or not
//                                (any other module, e.g. Dense, is an error: not supported);
//   sentence_bert_config.json    max_seq_length (tokens, [CLS]/[SEP] included) and do_lower_case,
//                                in the Transformer module's folder (usually the root);
//   <pooling path>/config.json   pooling_mode_{cls_token, max_tokens, mean_tokens,
//                                mean_sqrt_len_tokens, weightedmean_tokens, lasttoken}: exactly one
//                                must be true (sentence-transformers concatenates several; we
//                                refuse that).
// A folder without modules.json (or a .gguf) gets the defaults below: mean pooling, L2
// normalisation, 256 tokens (all-MiniLM-L6-v2's settings), and `source` says so.
enum class Pooling { Mean, Cls, Max, MeanSqrtLen, WeightedMean, LastToken };

struct SentenceEmbeddingConfig {
  int64_t max_seq_length = 256;  // tokens kept per text, special tokens included
  bool do_lower_case = false;    // lowercase the text before tokenizing
  Pooling pooling = Pooling::Mean;
  bool normalize = true;  // a sentence_transformers.models.Normalize module: L2, eps 1e-12
  std::string source = "defaults (no modules.json: mean pooling, L2 normalisation, 256 tokens)";
};

// Throws minfer::Error naming the file and field for malformed JSON, unknown or unsupported
// modules, pooling modes or values. `model_path`: a model folder or file (a file gets defaults).
SentenceEmbeddingConfig read_sentence_embedding_config(const std::string& model_path);

// "mean", "cls", "max", "mean_sqrt_len", "weightedmean", "lasttoken".
const char* pooling_name(Pooling p);

// Copies the sentence-transformers files of `src` (modules.json, sentence_bert_config.json,
// config_sentence_transformers.json, each module folder's config.json) into `dst`, so a
// compressed or converted copy embeds the same way. No-op when src has no modules.json.
void copy_sentence_embedding_files(const std::string& src, const std::string& dst);

// Host hidden states [B*T, C] -> B pooled embeddings (mask [B*T]: 1 = token, null = all tokens),
// L2-normalised when `normalize`. Follows sentence_transformers.models.Pooling: mean = sum /
// max(count, 1e-9); mean_sqrt_len = sum / sqrt(count); max over unmasked tokens; cls = token 0;
// lasttoken = the last unmasked token; weightedmean = weights 1..T by position. Normalize:
// x / max(||x||, 1e-12). Throws naming the text (b) when a value is not finite.
std::vector<std::vector<float>> pool_embeddings(const float* hidden, int64_t B, int64_t T,
                                                int64_t C, const int32_t* mask, Pooling pooling,
                                                bool normalize);

// Mean pooling + L2 normalisation (pool_embeddings with Pooling::Mean, normalize).
std::vector<std::vector<float>> mean_pool_normalize(const float* hidden, int64_t B, int64_t T,
                                                    int64_t C, const int32_t* mask);

// Encodes texts in batches of `batch` (padded, with an attention mask) and returns one
// embedding per text, pooled and normalised as `st` says. Texts are lowercased first when
// st.do_lower_case; sequences longer than min(st.max_seq_length, the model's positions) keep
// their first max - 1 tokens and the final special token, as HF truncation does ([CLS] ... [SEP]).
std::vector<std::vector<float>> embed_texts(Model& m, const Tokenizer& tok,
                                            const std::vector<std::string>& texts,
                                            const SentenceEmbeddingConfig& st, int batch = 32);

// Calibration sequences for an encoder (compress --calibrate, bench): the non-blank lines of
// `text` (trimmed; headings included, as bench's cosine texts), each encoded as embed_texts
// encodes a text (lowercased when st.do_lower_case, with the special tokens, e.g. [CLS] … [SEP],
// truncated to min(st.max_seq_length, max_pos) keeping the final special token). The k lines
// i·n/k (i = 0..k−1) of the n non-blank ones are taken, evenly spread over the text, with the
// smallest k whose tokens reach `tokens`: deterministic, no random seed. Throws when the text
// has no non-blank line, tokens < 1, or all its lines together have fewer than `tokens` tokens.
std::vector<std::vector<int32_t>> encoder_calibration_sequences(const Tokenizer& tok,
                                                                const std::string& text,
                                                                const SentenceEmbeddingConfig& st,
                                                                int64_t max_pos, int64_t tokens);

double cosine(const std::vector<float>& a, const std::vector<float>& b);

// How sentence-transformers turns one sequence's token states into a sentence vector: the
// Pooling module (1_Pooling/config.json: pooling_mode_{mean,cls,max,lasttoken}_tokens) and
// whether a Normalize module follows it (modules.json).
struct SentencePooling {
  enum class Mode { Mean, Cls, Max, LastToken };
  Mode mode = Mode::Mean;
  bool normalize = false;
};

// Reads the modules a sentence-transformers folder declares. A path without modules.json (a
// plain HF folder, a .gguf) gives mean pooling without normalization, as SentenceTransformer
// builds for a plain transformers model. Throws naming the file for a mode it does not support
// (mean_sqrt_len, weightedmean, several modes concatenated).
SentencePooling load_sentence_pooling(const std::string& model_path);

// One sequence's hidden states [T, C] (host, no padding) -> the pooled (and normalised, eps
// 1e-12 as torch.nn.functional.normalize) vector of C floats.
std::vector<float> pool_sentence(const float* hidden, int64_t T, int64_t C,
                                 const SentencePooling& p);

}  // namespace minfer
