// Unstructured and N:M semi-structured pruning of one weight matrix: a float Linear in, the same
// float Linear out with the pruned weights set to 0 (the mask is "w != 0"). How the result is
// stored (dense with zeros, or the sparse bitmask format engine/formats/sparse.h) is decided
// afterwards by compress_linear (compress/compress.h), so a prune step composes with any
// quantizer that follows it in a chain ("wanda-50+int8").
//
// Scores (compared within the scope below; the lowest are pruned):
//   magnitude  |W_ij|
//   wanda      |W_ij| * ||X_j||_2, X_j the j-th input feature over the calibration tokens
//              (Sun et al. 2023, "A Simple and Effective Pruning Approach for Large Language
//              Models", arXiv:2306.11695, eq. 1; compared per output row, section 3).
// Scopes (unstructured):
//   row     every output row loses floor(p * in) weights (Wanda's comparison group; default)
//   layer   the matrix loses floor(p * in * out) weights
//   global  all pruned matrices together lose floor(p * total) weights (magnitude only): one
//           threshold over the whole model, ties at it pruned in model order
// N:M (Mishra et al. 2021, arXiv:2104.08378): in every group of M consecutive input features of
// a row the M - N lowest scores are pruned (2:4, 4:8). Ties: the lower index goes first
// (torch.sort(stable=True), as the Wanda reference code does).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "engine/linear.h"

namespace minfer {

enum class PruneScore : uint8_t { Magnitude, Wanda };
enum class PruneScope : uint8_t { Row, Layer, Global };

struct PruneSpec {
  PruneScore score = PruneScore::Magnitude;
  double sparsity = 0.5;  // fraction removed, [0, 1); unused when m > 0
  int n = 0, m = 0;       // N:M when m > 0: keep n of every m consecutive inputs, 1 <= n < m
  PruneScope scope = PruneScope::Row;
  // Global scope: the number of weights this matrix loses, decided over the whole model by
  // global_prune_counts (negative: not computed yet).
  int64_t global_count = -1;
};

// Throws naming the argument for sparsity outside [0, 1), n >= m, n < 1, m > 64, or a scope that
// the score does not take.
void validate_prune_spec(const PruneSpec& s, const std::string& method);

// The prune mask of W [out, in] (row-major f32): keep[i] = 1 for kept weights. `feat_norm` [in]
// (||X_j||_2) is required for Wanda and ignored by magnitude. Throws naming `name` when an N:M
// pattern does not divide the row or Wanda lacks its statistics.
std::vector<uint8_t> prune_mask(const float* w, int64_t out, int64_t in, const PruneSpec& s,
                                const float* feat_norm, const std::string& name);

// The float Linear `l` (Dense F32/F16/BF16) with its pruned weights set to 0, [out, in] in its
// own dtype (Conv1D layouts transposed);
// bias and name carry over. Throws naming the tensor for a non-float weight.
Linear prune_linear(const Linear& l, const PruneSpec& s, const float* feat_norm);

// Global magnitude scope: how many weights each matrix loses so that floor(p * total) weights
// with the smallest |w| over all `ws` go (one exact threshold found by a radix select over the
// float bits, O(1) extra memory; ties at the threshold pruned in the order of `ws`).
std::vector<int64_t> global_prune_counts(const std::vector<const Linear*>& ws, double sparsity);

}  // namespace minfer
