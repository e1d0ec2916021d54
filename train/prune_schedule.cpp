#include "train/prune_schedule.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "engine/error.h"

namespace minfer::train {

void PruneSchedule::resolve(int64_t steps) {
  if (!active()) return;
  MINFER_CHECK(method == "magnitude" || method == "wanda",
               "--prune-schedule '{}': expected magnitude or wanda", method);
  MINFER_CHECK(final_sparsity > 0 && final_sparsity < 1, "--prune-to {} outside (0, 1)",
               final_sparsity);
  MINFER_CHECK(initial >= 0 && initial < final_sparsity,
               "--prune-from {} outside [0, --prune-to {})", initial, final_sparsity);
  if (end == 0) end = std::max<int64_t>(start, steps * 3 / 4);
  MINFER_CHECK(start >= 1 && start <= steps, "--prune-start {} outside the run's steps 1..{}",
               start, steps);
  MINFER_CHECK(end >= start && end <= steps, "--prune-end {} outside --prune-start {} .. {}", end,
               start, steps);
  if (every == 0) every = std::max<int64_t>(1, (end - start) / 8);
  MINFER_CHECK(every >= 1, "--prune-every {} must be >= 1", every);
}

bool PruneSchedule::due(int64_t t) const {
  return active() && t >= start && t <= end && ((t - start) % every == 0 || t == end);
}

double PruneSchedule::target(int64_t t) const {
  if (t < start) return initial;
  if (t >= end) return final_sparsity;
  const double f = 1.0 - double(t - start) / double(end - start);
  return final_sparsity + (initial - final_sparsity) * f * f * f;
}

void prune_rows(ParamStore& P, const std::string& name, double sparsity,
                const std::vector<double>* col_sq) {
  const ParamTensor& t = P.find(name);
  MINFER_CHECK(t.shape.size() == 2, "prune '{}': a matrix expected, shape has {} dims", name,
               t.shape.size());
  const int64_t O = t.shape[0], I = t.shape[1];
  MINFER_CHECK(!col_sq || int64_t(col_sq->size()) == I,
               "prune '{}': {} input statistics for {} columns", name, col_sq ? col_sq->size() : 0,
               I);
  const int64_t k = std::llround(sparsity * double(I));
  if (k <= 0) return;
  float* w = P.weights().data() + t.offset;
  float* m = P.m().empty() ? nullptr : P.m().data() + t.offset;
  float* v = P.v().empty() ? nullptr : P.v().data() + t.offset;
  std::vector<double> norm(static_cast<size_t>(I), 1.0);
  if (col_sq)
    for (int64_t j = 0; j < I; ++j) norm[size_t(j)] = std::sqrt((*col_sq)[size_t(j)]);
  std::vector<int64_t> idx(static_cast<size_t>(I));
  std::vector<double> score(static_cast<size_t>(I));
  for (int64_t o = 0; o < O; ++o) {
    float* row = w + o * I;
    for (int64_t j = 0; j < I; ++j) score[size_t(j)] = std::abs(double(row[j])) * norm[size_t(j)];
    std::iota(idx.begin(), idx.end(), int64_t(0));
    // Lowest scores first; ties by column, so the choice is deterministic.
    std::nth_element(idx.begin(), idx.begin() + (k - 1), idx.end(), [&](int64_t a, int64_t b) {
      return score[size_t(a)] < score[size_t(b)] || (score[size_t(a)] == score[size_t(b)] && a < b);
    });
    for (int64_t i = 0; i < k; ++i) {
      const int64_t j = idx[size_t(i)];
      row[j] = 0.f;
      if (m) m[o * I + j] = 0.f;
      if (v) v[o * I + j] = 0.f;
    }
  }
  P.fix_zeros(name);
}

double zero_fraction(const ParamStore& P, const std::vector<std::string>& names) {
  size_t zeros = 0, total = 0;
  for (const std::string& n : names) {
    const ParamTensor& t = P.find(n);
    const float* w = P.weights().data() + t.offset;
    zeros += size_t(std::count(w, w + t.numel, 0.f));
    total += t.numel;
  }
  return total ? double(zeros) / double(total) : 0.0;
}

}  // namespace minfer::train
