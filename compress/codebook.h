// Weight sharing by k-means (engine/formats/codebook.h): each row of W [out, in], or each group
// of G weights along a row, gets a table of 2^b centroids found by 1-D k-means (Lloyd's
// algorithm; Han et al. 2016 "Deep Compression" share weights this way), and every weight is
// stored as the index of its nearest centroid.
//
//   init: Lloyd runs from two starts and keeps the lower objective: the (weighted) quantiles
//         (j + 1/2) / 2^b of the group's values, j = 0 .. 2^b - 1 (equal mass per cluster), and
//         the uniform grid of 2^b points from the group's minimum to its maximum (so the result
//         is never worse than that uniform quantizer, and isolated extremes keep a centroid the
//         quantile start can miss); deterministic, no random restarts;
//   Lloyd: assign each weight to its nearest centroid, move each centroid to the (weighted) mean
//         of its weights; an empty cluster keeps its centroid. In 1-D the clusters are ranges of
//         the sorted values, so an iteration costs O(2^b log G) with prefix sums. Stops when the
//         assignment no longer changes (a fixed point) or the objective falls by less than
//         `tol` relative, at most `max_iter` iterations.
//   weighted (SqueezeLLM, Kim et al. 2023, arXiv 2306.07629, "sensitivity-based k-means"):
//         weight w[n, k] counts with s_k = mean over calibration tokens of x_k², the diagonal of
//         the layer's XᵀX / tokens, so the clusters minimize Σ_k s_k (w_k - c(w_k))², the
//         diagonal approximation of the output error ||(W - Ŵ) Xᵀ||² (SqueezeLLM weighs by the
//         Fisher information; the activations' second moment is the data-only form of it).
//   pruned weights: a group at least 1/2^b exact zeros (after "wanda-50+kmeans4") keeps one
//         centroid at exactly 0 and clusters the rest with 2^b - 1, so the zeros stay zeros.
// Finally the centroids are rounded to f16 (the stored type) and every weight takes the nearest
// rounded centroid.
#pragma once
#include <cstdint>
#include <vector>

#include "engine/linear.h"

namespace minfer {

struct CodebookSpec {
  int bits = 4;           // 2..8: 2^bits centroids per table
  int64_t group = 0;      // weights per table along a row; 0 (or >= in) = one table per row
  bool weighted = false;  // weigh input k by the calibration mean x_k² (needs col_weight)
  int max_iter = 100;     // Lloyd iterations at most
  double tol = 1e-7;      // stop when the objective falls by less than tol * objective
};

// 1-D weighted k-means of n values.
struct KMeans1d {
  std::vector<float> centroids;   // [k], ascending
  std::vector<double> objective;  // Σ s_i (v_i - c(v_i))² after each iteration's update
  int iterations = 0;
  bool converged = false;  // a fixed point or the tolerance was reached before max_iter
};
// v: [n] values, s: [n] non-negative weights or nullptr (all 1; an all-zero s counts as all 1).
// k >= 1. Throws for n < 1, k < 1, non-finite values or weights.
KMeans1d kmeans_1d(const float* v, const float* s, int64_t n, int k, int max_iter, double tol);

// A Codebook Linear from a Dense one (any float dtype, transposed or not); the bias is kept.
// col_weight: [in] non-negative input weights s_k (required when spec.weighted, else ignored).
// Throws naming the tensor for bits outside 2..8, a group that is not a multiple of 16,
// non-finite weights, a missing or mis-sized col_weight, or a non-Dense input.
Linear quantize_codebook(const Linear& dense, const CodebookSpec& spec,
                         const std::vector<float>* col_weight = nullptr);

}  // namespace minfer
