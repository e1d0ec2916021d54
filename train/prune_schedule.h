// Gradual pruning during training (Zhu & Gupta 2017, "To prune, or not to prune", arXiv
// 1710.01878): the sparsity of every block projection rises from s_i to s_f along a cubic
// schedule,
//   s_t = s_f + (s_i − s_f)·(1 − (t − t0)/(t1 − t0))³   for t0 <= t <= t1,
// with a pruning update every Δt optimizer steps (and at t1). An update prunes, in every output
// row, the lowest-scoring weights up to round(s_t·in) zeros: score |w| (magnitude) or
// |w|·‖x_j‖₂ (Wanda, Sun et al. 2023, arXiv 2306.11695, with x the projection's inputs in the
// micro-batches of that step). Between updates the masks are fixed: the pruned weights' gradients
// and AdamW moments are zero (ParamStore::fix_zeros), so they stay exactly 0. A weight already
// zero scores 0, the lowest, so each mask contains the previous one.
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "train/params.h"

namespace minfer::train {

struct PruneSchedule {
  std::string method;         // "" (off), "magnitude" or "wanda"
  double initial = 0;         // s_i, in [0, 1)
  double final_sparsity = 0;  // s_f, in (s_i, 1)
  int64_t start = 1;          // t0: first update (optimizer step, 1-based)
  int64_t end = 0;            // t1: last update (0: 3/4 of the run's steps)
  int64_t every = 0;          // Δt (0: (t1 − t0)/8, at least 1)

  bool active() const { return !method.empty(); }
  // Fills the defaults for a run of `steps` steps and checks the ranges; throws naming the
  // option (--prune-schedule, --prune-to, --prune-from, --prune-start, --prune-end,
  // --prune-every).
  void resolve(int64_t steps);
  // True when optimizer step t (1-based) prunes.
  bool due(int64_t t) const;
  // s_t (the cubic schedule; s_i before t0, s_f after t1).
  double target(int64_t t) const;
};

// Per input column j of a projection: Σ over rows of x_j² (Wanda's ‖x_j‖₂²), by weight name.
using InputSqSums = std::map<std::string, std::vector<double>>;

// Prunes tensor `name` of P ([O, I]) to `sparsity` per row (round(sparsity·I) zeros in each
// row): zeroes the lowest-scoring weights and their AdamW moments, and fixes the tensor's zeros
// (fix_zeros). col_sq: Wanda's Σx² per input column (I values), null for magnitude.
void prune_rows(ParamStore& P, const std::string& name, double sparsity,
                const std::vector<double>* col_sq);

// Fraction of exactly-zero weights over the tensors `names` of P.
double zero_fraction(const ParamStore& P, const std::vector<std::string>& names);

}  // namespace minfer::train
