#include "compress/prune.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <numeric>

#include "engine/error.h"
#include "engine/model_folder.h"

namespace minfer {

namespace {

const char* score_name(PruneScore s) {
  return s == PruneScore::Wanda ? "wanda" : "magnitude";
}

// Prunes the k lowest of scores[idx[0..n)] (ties: lower position first) by clearing keep[].
void prune_lowest(const float* score, const int64_t* idx, int64_t n, int64_t k, uint8_t* keep,
                  std::vector<int64_t>& order) {
  if (k <= 0) return;
  order.assign(idx, idx + n);
  std::stable_sort(order.begin(), order.end(),
                   [&](int64_t a, int64_t b) { return score[a] < score[b]; });
  for (int64_t i = 0; i < std::min(k, n); ++i) keep[order[size_t(i)]] = 0;
}

// |w| as an order-preserving integer (non-negative floats sort like their bit patterns).
inline uint32_t abs_bits(float v) {
  uint32_t u;
  std::memcpy(&u, &v, 4);
  return u & 0x7fffffffu;
}

}  // namespace

void validate_prune_spec(const PruneSpec& s, const std::string& method) {
  if (s.m > 0) {
    MINFER_CHECK(s.m <= 64, "{}: N:M group size M must be at most 64, got {}", method, s.m);
    MINFER_CHECK(s.n >= 1 && s.n < s.m,
                 "{}: N:M pattern keeps N of every M weights and needs 1 <= N < M, got {}:{}",
                 method, s.n, s.m);
    MINFER_CHECK(s.scope == PruneScope::Row,
                 "{}: an N:M pattern is per row; --prune-scope layer/global is for <pct>", method);
  } else {
    MINFER_CHECK(std::isfinite(s.sparsity) && s.sparsity >= 0 && s.sparsity < 1,
                 "{}: sparsity must be a percentage in [0, 100), got {}", method, s.sparsity * 100);
  }
  MINFER_CHECK(!(s.score == PruneScore::Wanda && s.scope != PruneScope::Row),
               "{}: Wanda compares scores within each output row (Sun et al. 2023); "
               "--prune-scope layer/global is a magnitude option",
               method);
}

std::vector<uint8_t> prune_mask(const float* w, int64_t out, int64_t in, const PruneSpec& s,
                                const float* feat_norm, const std::string& name) {
  validate_prune_spec(s, score_name(s.score));
  MINFER_CHECK(s.score != PruneScore::Wanda || feat_norm != nullptr,
               "wanda: no calibration statistics (||X_j||) for '{}' (run a calibration pass: "
               "compress --calibrate FILE)",
               name);
  if (s.m > 0)
    MINFER_CHECK(in % s.m == 0,
                 "tensor '{}': an {}:{} pattern needs the row length to be a multiple of {}, the "
                 "row has {} weights",
                 name, s.n, s.m, s.m, in);
  const int64_t total = out * in;
  std::vector<float> score(static_cast<size_t>(total));
  for (int64_t r = 0; r < out; ++r)
    for (int64_t c = 0; c < in; ++c) {
      const float a = std::fabs(w[r * in + c]);
      MINFER_CHECK(std::isfinite(a), "tensor '{}': non-finite weight at [{}, {}]", name, r, c);
      score[size_t(r * in + c)] = s.score == PruneScore::Wanda ? a * feat_norm[c] : a;
    }
  std::vector<uint8_t> keep(size_t(total), 1);
  std::vector<int64_t> idx, order;
  if (s.m > 0) {
    idx.resize(size_t(s.m));
    for (int64_t g = 0; g < total; g += s.m) {
      std::iota(idx.begin(), idx.end(), g);
      prune_lowest(score.data(), idx.data(), s.m, s.m - s.n, keep.data(), order);
    }
  } else if (s.scope == PruneScope::Row) {
    const auto k = int64_t(std::floor(s.sparsity * double(in) + 1e-9));
    idx.resize(size_t(in));
    for (int64_t r = 0; r < out; ++r) {
      std::iota(idx.begin(), idx.end(), r * in);
      prune_lowest(score.data(), idx.data(), in, k, keep.data(), order);
    }
  } else {
    const int64_t k = s.scope == PruneScope::Layer
                          ? int64_t(std::floor(s.sparsity * double(total) + 1e-9))
                          : s.global_count;
    MINFER_CHECK(k >= 0 && k <= total,
                 "tensor '{}': global pruning count {} not computed or out of range (0..{})", name,
                 k, total);
    idx.resize(size_t(total));
    std::iota(idx.begin(), idx.end(), 0);
    prune_lowest(score.data(), idx.data(), total, k, keep.data(), order);
  }
  return keep;
}

Linear prune_linear(const Linear& l, const PruneSpec& s, const float* feat_norm) {
  const Dense* d = std::get_if<Dense>(&l.repr);
  MINFER_CHECK(d != nullptr,
               "tensor '{}': pruning takes float weights, but the weight is already {} (put the "
               "prune step first in a chain, e.g. wanda-50+int8)",
               l.name, linear_format(l));
  Tensor w = dequantize_weight(l);  // F32 [out, in], Conv1D layouts transposed
  float* p = w.data<float>();
  const std::vector<uint8_t> keep = prune_mask(p, l.out, l.in, s, feat_norm, l.name);
  for (size_t i = 0; i < keep.size(); ++i)
    if (!keep[i]) p[i] = 0.f;
  // Zeros are exact in every float type: a 16-bit weight stays 16-bit.
  if (d->w.dtype() != DType::F32) w = cast_to(w, d->w.dtype(), l.name);
  return make_linear(l.name, l.in, l.out, Dense{w, false}, l.bias);
}

std::vector<int64_t> global_prune_counts(const std::vector<const Linear*>& ws, double sparsity) {
  MINFER_CHECK(std::isfinite(sparsity) && sparsity >= 0 && sparsity < 1,
               "global pruning: sparsity must be in [0, 100) %, got {}", sparsity * 100);
  int64_t total = 0;
  for (const Linear* l : ws) total += l->in * l->out;
  const auto k = int64_t(std::floor(sparsity * double(total) + 1e-9));
  std::vector<int64_t> counts(ws.size(), 0);
  if (k == 0) return counts;
  // Radix select of the k-th smallest |w| (1-based): the high 16 bits, then the low 16 bits.
  auto histogram = [&](auto&& bucket_of, std::vector<int64_t>& h) {
    h.assign(65536, 0);
    for (const Linear* l : ws) {
      const Tensor t = dequantize_weight(*l);
      const float* p = t.data<float>();
      for (int64_t i = 0; i < t.numel(); ++i) {
        const int b = bucket_of(abs_bits(p[i]));
        if (b >= 0) ++h[size_t(b)];
      }
    }
  };
  // The bucket holding the k-th value and how many values lie in lower buckets.
  auto find = [](const std::vector<int64_t>& h, int64_t kth, int64_t& below) {
    int64_t acc = 0;
    for (int b = 0; b < 65536; ++b) {
      if (acc + h[size_t(b)] >= kth) {
        below = acc;
        return uint32_t(b);
      }
      acc += h[size_t(b)];
    }
    MINFER_FAIL("global pruning: radix select ran past the end ({} of {})", kth, acc);
  };
  std::vector<int64_t> h;
  histogram([](uint32_t u) { return int(u >> 16); }, h);
  int64_t below_hi = 0, below_lo = 0;
  const uint32_t hi = find(h, k, below_hi);
  histogram([hi](uint32_t u) { return (u >> 16) == hi ? int(u & 0xffffu) : -1; }, h);
  const uint32_t lo = find(h, k - below_hi, below_lo);
  const uint32_t v = (hi << 16) | lo;
  int64_t ties_left = k - (below_hi + below_lo);  // values equal to v still to prune
  for (size_t i = 0; i < ws.size(); ++i) {
    const Tensor t = dequantize_weight(*ws[i]);
    const float* p = t.data<float>();
    int64_t lt = 0, eq = 0;
    for (int64_t j = 0; j < t.numel(); ++j) {
      const uint32_t u = abs_bits(p[j]);
      lt += u < v;
      eq += u == v;
    }
    const int64_t take = std::min(eq, ties_left);
    ties_left -= take;
    counts[i] = lt + take;
  }
  return counts;
}

}  // namespace minfer
