#include "engine/sampler.h"

#include <algorithm>
#include <cmath>

namespace minfer {

int32_t argmax(const float* x, int64_t V) {
  int64_t best = 0;
  for (int64_t i = 1; i < V; ++i)
    if (x[i] > x[best]) best = i;
  return int32_t(best);
}

int32_t Sampler::sample(const float* logits, int64_t V) {
  if (p_.temp <= 0.f) return argmax(logits, V);
  cand_.resize(size_t(V));
  for (int64_t i = 0; i < V; ++i) cand_[size_t(i)] = {logits[i] / p_.temp, int32_t(i)};
  auto by_logit = [](auto& a, auto& b) { return a.first > b.first; };
  size_t k = size_t(V);
  if (p_.top_k > 0 && p_.top_k < V) {
    k = size_t(p_.top_k);
    std::partial_sort(cand_.begin(), cand_.begin() + long(k), cand_.end(), by_logit);
  } else {
    std::sort(cand_.begin(), cand_.end(), by_logit);
  }
  cand_.resize(k);
  const float mx = cand_[0].first;
  double z = 0;
  for (auto& c : cand_) z += (c.first = std::exp(c.first - mx));
  if (p_.top_p < 1.f) {  // smallest prefix whose mass reaches top_p
    double cum = 0;
    size_t keep = 0;
    while (keep < cand_.size()) {
      cum += cand_[keep++].first / z;
      if (cum >= p_.top_p) break;
    }
    cand_.resize(keep);
    z = 0;
    for (auto& c : cand_) z += c.first;
  }
  double r = std::uniform_real_distribution<double>(0.0, z)(rng_);
  for (auto& c : cand_)
    if ((r -= c.first) <= 0) return c.second;
  return cand_.back().second;
}

}  // namespace minfer
