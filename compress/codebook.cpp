#include "compress/codebook.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "engine/error.h"
#include "engine/half.h"
#include "kernels/common/codebook_math.h"

namespace minfer {

namespace {

// Index of the nearest of the ascending values c[0..k) to x (the lower one on a tie).
int nearest(const float* c, int k, float x) {
  const int hi = int(std::lower_bound(c, c + k, x) - c);
  if (hi == 0) return 0;
  if (hi == k) return k - 1;
  return x - c[hi - 1] <= c[hi] - x ? hi - 1 : hi;
}

}  // namespace

KMeans1d kmeans_1d(const float* v, const float* s, int64_t n, int k, int max_iter, double tol) {
  MINFER_CHECK(n >= 1 && k >= 1, "kmeans: need at least one value and one cluster (n {}, k {})", n,
               k);
  // Sorted values with their weights, and prefix sums of s, s v, s v² (double).
  std::vector<int64_t> order(static_cast<size_t>(n));
  std::iota(order.begin(), order.end(), int64_t(0));
  for (int64_t i = 0; i < n; ++i) {
    MINFER_CHECK(std::isfinite(v[i]), "kmeans: value {} is not finite ({})", i, v[i]);
    if (s) MINFER_CHECK(std::isfinite(s[i]) && s[i] >= 0, "kmeans: weight {} is {}", i, s[i]);
  }
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return v[a] < v[b]; });
  bool unit = s == nullptr;
  if (!unit) {
    double tot = 0;
    for (int64_t i = 0; i < n; ++i) tot += s[i];
    unit = !(tot > 0);
  }
  std::vector<float> sv(static_cast<size_t>(n));
  std::vector<double> W(size_t(n + 1), 0.0), S1(size_t(n + 1), 0.0), S2(size_t(n + 1), 0.0);
  for (int64_t i = 0; i < n; ++i) {
    const float x = v[order[size_t(i)]];
    const double w = unit ? 1.0 : double(s[order[size_t(i)]]);
    sv[size_t(i)] = x;
    W[size_t(i + 1)] = W[size_t(i)] + w;
    S1[size_t(i + 1)] = S1[size_t(i)] + w * x;
    S2[size_t(i + 1)] = S2[size_t(i)] + w * double(x) * x;
  }
  const double total = W[size_t(n)];
  // Lloyd's iterations from the centroids c0; fills the centroids (ascending), objective,
  // iterations and converged of the result.
  auto lloyd = [&](std::vector<double> c) {
    KMeans1d r;
    std::vector<int64_t> end(size_t(k), -1), prev(size_t(k), -2);  // cluster j = [end[j-1], end[j])
    double last = INFINITY;
    for (int it = 0; it < max_iter; ++it) {
      std::sort(c.begin(), c.end());
      // Assignment: cluster j takes the values up to the midpoint with j + 1 (ties to the lower).
      for (int j = 0; j + 1 < k; ++j) {
        const double mid = 0.5 * (c[size_t(j)] + c[size_t(j + 1)]);
        end[size_t(j)] = int64_t(std::upper_bound(sv.begin(), sv.end(), mid,
                                                  [](double m, float x) { return m < double(x); }) -
                                 sv.begin());
      }
      end[size_t(k - 1)] = n;
      // Update: weighted means of the ranges; an empty (or weightless) cluster keeps its centroid.
      double obj = 0;
      for (int j = 0; j < k; ++j) {
        const int64_t a = j ? end[size_t(j - 1)] : 0, b = end[size_t(j)];
        const double w = W[size_t(b)] - W[size_t(a)];
        if (b > a && w > 0) c[size_t(j)] = (S1[size_t(b)] - S1[size_t(a)]) / w;
        const double cj = c[size_t(j)];
        obj += (S2[size_t(b)] - S2[size_t(a)]) - 2 * cj * (S1[size_t(b)] - S1[size_t(a)]) +
               cj * cj * w;
      }
      obj = std::max(obj, 0.0);
      r.objective.push_back(obj);
      r.iterations = it + 1;
      // (The first iteration has no previous objective: INF <= tol * INF would stop it.)
      if (end == prev || (std::isfinite(last) && last - obj <= tol * last)) {
        r.converged = true;
        break;
      }
      prev = end;
      last = obj;
    }
    std::sort(c.begin(), c.end());
    r.centroids.resize(size_t(k));
    for (int j = 0; j < k; ++j) r.centroids[size_t(j)] = float(c[size_t(j)]);
    return r;
  };
  // Init 1, quantiles: the value where the cumulative weight first passes (j + 1/2) / k of the
  // total (equal mass per cluster).
  std::vector<double> c(static_cast<size_t>(k));
  for (int j = 0; j < k; ++j) {
    const double q = (j + 0.5) / k * total;
    int64_t i = int64_t(std::upper_bound(W.begin() + 1, W.end(), q) - (W.begin() + 1));
    c[size_t(j)] = sv[size_t(std::min(i, n - 1))];
  }
  KMeans1d best = lloyd(c);
  // Init 2, the uniform grid from the smallest to the largest value (where round-to-nearest
  // starts): Lloyd only lowers the objective, so this run ends at or below the uniform
  // quantizer's error and keeps a centroid at an isolated outlier, a local minimum the quantile
  // start misses (its clusters all begin in the bulk, and one outlier barely moves the mean of
  // the top cluster: on SmolLM2 rows this left errors of 2.6 on weights of 9.3). Keep the lower.
  if (k > 1 && sv[size_t(n - 1)] > sv[0]) {
    for (int j = 0; j < k; ++j)
      c[size_t(j)] = sv[0] + (double(sv[size_t(n - 1)]) - sv[0]) * j / (k - 1);
    KMeans1d u = lloyd(c);
    if (u.objective.back() < best.objective.back()) best = std::move(u);
  }
  return best;
}

Linear quantize_codebook(const Linear& l, const CodebookSpec& spec,
                         const std::vector<float>* col_weight) {
  MINFER_CHECK(spec.bits >= cb::kMinBits && spec.bits <= cb::kMaxBits,
               "kmeans '{}': bits must be in {}..{}, got {}", l.name, cb::kMinBits, cb::kMaxBits,
               spec.bits);
  MINFER_CHECK(std::holds_alternative<Dense>(l.repr),
               "kmeans '{}': needs float weights, the weight is {}", l.name, linear_format(l));
  const int64_t K = l.in, N = l.out;
  const int64_t G = spec.group <= 0 || spec.group >= K ? K : spec.group;
  MINFER_CHECK(G == K || G % cb::kGroupMultiple == 0,
               "kmeans '{}': group must be a multiple of {}, got {}", l.name, cb::kGroupMultiple,
               spec.group);
  const float* s = nullptr;
  if (spec.weighted) {
    MINFER_CHECK(col_weight != nullptr && int64_t(col_weight->size()) == K,
                 "kmeans '{}': the weighted variant needs {} calibration input weights, got {}",
                 l.name, K, col_weight ? col_weight->size() : size_t(0));
    s = col_weight->data();
  }
  const Tensor wt = dequantize_weight(l);
  const float* w = wt.data<float>();
  for (int64_t i = 0; i < N * K; ++i)
    MINFER_CHECK(std::isfinite(w[i]), "kmeans '{}': weight [{}, {}] is not finite ({})", l.name,
                 i / K, i % K, w[i]);
  const int kc = 1 << spec.bits;
  const int64_t ng = (K + G - 1) / G, rb = cb::row_bytes(K, spec.bits);
  Codebook c;
  c.bits = spec.bits;
  c.group = G;
  c.indices = Tensor::empty(DType::U8, {N, rb});
  c.centroids = Tensor::empty(DType::F16, {N, ng, int64_t(kc)});
  std::fill_n(c.indices.data<uint8_t>(), size_t(N * rb), uint8_t(0));
  uint8_t* idx = c.indices.data<uint8_t>();
  uint16_t* cen = c.centroids.data<uint16_t>();
#pragma omp parallel for schedule(dynamic, 8)
  for (int64_t n = 0; n < N; ++n) {
    std::vector<float> vals, wts, table(static_cast<size_t>(kc));
    for (int64_t g = 0; g < ng; ++g) {
      const int64_t k0 = g * G, k1 = std::min(K, k0 + G);
      const float* row = w + n * K;
      int64_t zeros = 0;
      for (int64_t k = k0; k < k1; ++k) zeros += row[k] == 0.f;
      // Pruned groups keep an exact zero centroid and cluster the rest.
      const bool keep_zero = zeros > 0 && zeros * kc >= (k1 - k0) && zeros < k1 - k0;
      vals.clear();
      wts.clear();
      for (int64_t k = k0; k < k1; ++k)
        if (!keep_zero || row[k] != 0.f) {
          vals.push_back(row[k]);
          if (s) wts.push_back(s[k]);
        }
      const KMeans1d km = kmeans_1d(vals.data(), s ? wts.data() : nullptr, int64_t(vals.size()),
                                    keep_zero ? kc - 1 : kc, spec.max_iter, spec.tol);
      for (size_t j = 0; j < km.centroids.size(); ++j) table[j] = km.centroids[j];
      if (keep_zero) table[size_t(kc - 1)] = 0.f;
      // Round to f16 (the stored type), then sort so that nearest() can bisect.
      for (float& t : table) t = f16_to_f32(f32_to_f16(t));
      std::sort(table.begin(), table.end());
      uint16_t* tab = cen + (n * ng + g) * kc;
      for (int j = 0; j < kc; ++j) tab[j] = f32_to_f16(table[size_t(j)]);
      for (int64_t k = k0; k < k1; ++k)
        cb::set_index(idx + n * rb, k, spec.bits, unsigned(nearest(table.data(), kc, row[k])));
    }
  }
  return make_linear(l.name, K, N, std::move(c), l.bias);
}

}  // namespace minfer
