#include "engine/sampler.h"

#include <algorithm>
#include <cmath>
#include <string>

#include "engine/error.h"

namespace minfer {

namespace {

std::string at_pos(int64_t pos) {
  return pos >= 0 ? fmt::format(" at position {}", pos) : std::string();
}

// Checks that no logit is NaN or +inf and that at least one is finite; returns the argmax.
int64_t checked_max(const float* x, int64_t V, int64_t pos) {
  MINFER_CHECK(V > 0, "sampler: {} logits, expected at least 1", V);
  int64_t best = -1;
  for (int64_t i = 0; i < V; ++i) {
    const float v = x[i];
    MINFER_CHECK(!std::isnan(v) && v != INFINITY,
                 "sampler: logit of token {}{} is {}: the model output is not finite, no token is "
                 "chosen",
                 i, at_pos(pos), v);
    if (v != -INFINITY && (best < 0 || v > x[best])) best = i;
  }
  MINFER_CHECK(best >= 0, "sampler: all {} logits{} are -inf, no token can be chosen", V,
               at_pos(pos));
  return best;
}

}  // namespace

int32_t argmax(const float* x, int64_t V, int64_t pos) {
  return int32_t(checked_max(x, V, pos));
}

Sampler::Sampler(SamplerParams p) : p_(p), rng_(p.seed) {
  MINFER_CHECK(std::isfinite(p.temp), "sampler: temperature must be finite, found {}", p.temp);
  MINFER_CHECK(!std::isnan(p.top_p), "sampler: top_p must be a number, found {}", p.top_p);
}

int32_t Sampler::sample(const float* logits, int64_t V, int64_t pos) {
  const int64_t best = checked_max(logits, V, pos);
  if (p_.temp <= 0.f) return int32_t(best);
  cand_.resize(size_t(V));
  for (int64_t i = 0; i < V; ++i) cand_[size_t(i)] = {logits[i], int32_t(i)};
  auto by_logit = [](const auto& a, const auto& b) {
    return a.first > b.first || (a.first == b.first && a.second < b.second);
  };
  size_t k = size_t(V);
  if (p_.top_k > 0 && p_.top_k < V) {
    k = size_t(p_.top_k);
    std::partial_sort(cand_.begin(), cand_.begin() + long(k), cand_.end(), by_logit);
  } else {
    std::sort(cand_.begin(), cand_.end(), by_logit);
  }
  cand_.resize(k);
  // exp((l - l_max) / T) in double: each weight is in [0, 1] and the first is 1, so z >= 1 for
  // every temperature; a weight that underflows to 0 (T -> 0, -inf logits) is dropped.
  const double mx = double(cand_[0].first), T = double(p_.temp);
  weight_.resize(k);
  size_t n = 0;
  double z = 0;
  for (; n < k; ++n) {
    const double w = std::exp((double(cand_[n].first) - mx) / T);
    if (!(w > 0.0)) break;  // sorted: every later weight is 0 too
    z += (weight_[n] = w);
  }
  if (p_.top_p < 1.f) {  // the smallest prefix whose mass reaches top_p (at least one token)
    double cum = 0;
    size_t keep = 0;
    while (keep < n) {
      cum += weight_[keep++] / z;
      if (cum >= double(p_.top_p)) break;
    }
    n = keep;
    z = 0;
    for (size_t i = 0; i < n; ++i) z += weight_[i];
  }
  double r = std::uniform_real_distribution<double>(0.0, z)(rng_);
  for (size_t i = 0; i < n; ++i)
    if ((r -= weight_[i]) <= 0) return cand_[i].second;
  return cand_[n - 1].second;  // rounding left r > 0: the last kept token (weight > 0)
}

}  // namespace minfer
