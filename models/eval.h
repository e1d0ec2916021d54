// Evaluation over a model: perplexity (Hugging Face sliding window, or llama.cpp's chunks) and
// sentence embeddings (mean pooling + L2 normalisation, as sentence-transformers does).
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
  // chunk replaced by BOS when the model has one, only the second half of each chunk scored.
  Llama,
};

PerplexityResult perplexity(Model& m, const std::vector<int32_t>& ids, int64_t ctx, int64_t stride,
                            PplMethod method = PplMethod::HfSlidingWindow, bool progress = true);

// Host hidden states [B*T, C] -> B L2-normalised mean-pooled embeddings (mask: 1 = token).
std::vector<std::vector<float>> mean_pool_normalize(const float* hidden, int64_t B, int64_t T,
                                                    int64_t C, const int32_t* mask);

// Encodes texts in batches of `batch` (padded, with an attention mask) and returns one
// embedding per text. Sequences longer than max_len keep their first max_len - 1 tokens and the
// final special token, as HF truncation does ([CLS] ... [SEP]).
std::vector<std::vector<float>> embed_texts(Model& m, const Tokenizer& tok,
                                            const std::vector<std::string>& texts, int batch = 32,
                                            int64_t max_len = 256);

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
