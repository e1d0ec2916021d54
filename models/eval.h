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

}  // namespace minfer
