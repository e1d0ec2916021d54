// Next-token choice from logits: greedy (temp <= 0), or temperature + top-k + top-p (nucleus)
// sampling with a seeded generator, in the order transformers' LogitsProcessors apply them
// (temperature, top-k, then top-p over the renormalised top-k).
//
// Numerically safe for every legal parameter value: probabilities are exp((l - l_max) / temp)
// in double, so a temperature near 0 (1e-30) is greedy among the tied maxima and a huge one
// (1e30) is uniform over the kept tokens, never inf / inf; top_p <= 0 keeps the single most
// likely token, top_p >= 1 keeps all; top_k <= 0 or >= V keeps all, top_k = 1 is greedy. Ties are
// broken by the lower token id, so a seed gives one sequence.
#pragma once
#include <cstdint>
#include <random>
#include <vector>

namespace minfer {

struct SamplerParams {
  float temp = 0.f;     // <= 0: greedy; must not be NaN or inf
  int top_k = 40;       // <= 0: all tokens
  float top_p = 0.95f;  // >= 1: no nucleus cut; <= 0: the most likely token only; not NaN
  uint64_t seed = 0;
};

class Sampler {
 public:
  // Throws minfer::Error for a NaN or infinite temperature or a NaN top_p.
  explicit Sampler(SamplerParams p);
  // logits [V]. pos: the sequence position these logits predict (named in errors; -1: unknown).
  // Throws minfer::Error naming the token id and position when a logit is NaN or +inf, or when
  // every logit is -inf: a non-finite model output is never turned into a token.
  int32_t sample(const float* logits, int64_t V, int64_t pos = -1);

 private:
  SamplerParams p_;
  std::mt19937_64 rng_;
  std::vector<std::pair<float, int32_t>> cand_;
  std::vector<double> weight_;
};

// Index of the largest of x[0, V) (the lowest index among ties). Throws minfer::Error naming the
// index (and `pos`, the sequence position, when >= 0) if a value is NaN or +inf, or if all are
// -inf: a comparison-based argmax would otherwise return 0 for all-NaN logits.
int32_t argmax(const float* x, int64_t V, int64_t pos = -1);

}  // namespace minfer
