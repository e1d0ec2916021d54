// Next-token choice from logits: greedy (temp <= 0), or temperature + top-k + top-p (nucleus)
// sampling with a seeded generator.
#pragma once
#include <cstdint>
#include <random>
#include <vector>

namespace minfer {

struct SamplerParams {
  float temp = 0.f;     // <= 0: greedy
  int top_k = 40;       // <= 0: all tokens
  float top_p = 0.95f;  // >= 1: no nucleus cut
  uint64_t seed = 0;
};

class Sampler {
 public:
  explicit Sampler(SamplerParams p) : p_(p), rng_(p.seed) {}
  int32_t sample(const float* logits, int64_t V);

 private:
  SamplerParams p_;
  std::mt19937_64 rng_;
  std::vector<std::pair<float, int32_t>> cand_;
};

int32_t argmax(const float* logits, int64_t V);

}  // namespace minfer
