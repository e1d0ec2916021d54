// Low-rank factorization of one weight matrix W [out, in] into a LowRank Linear
// (engine/formats/low_rank.h): W ≈ U · V with U [out, r], V [r, in].
//
//   plain (truncated SVD, Eckart–Young): W = P Σ Qᵀ, U = P_r, V = Σ_r Q_rᵀ. Minimizes ||W - UV||_F.
//   activation-aware (SVD-LLM, Wang et al. 2024, arXiv:2403.07378, "truncation-aware data
//   whitening"): with the calibration inputs' Gram matrix XᵀX = S Sᵀ (S lower triangular,
//   Cholesky), W S = P Σ Qᵀ, U = P_r, V = Σ_r Q_rᵀ S⁻¹. Since ||(W - UV) Xᵀ||_F = ||(W - UV) S||_F,
//   this minimizes the output error on the calibration tokens instead of the weight error.
//
// The singular values are folded into V (row i of V scaled by σ_i): a row- or group-wise
// quantizer of the factors (lowrank-20+int8) absorbs that scale exactly, and U keeps orthonormal
// columns whose entries share one range.
#pragma once
#include <cstdint>
#include <vector>

#include "engine/linear.h"

namespace minfer {

// How the rank of each matrix is chosen: exactly one of percent / rank / energy is set.
struct LowRankSpec {
  int percent = 0;    // 1..99: each matrix loses >= percent % of its in*out parameters
  int64_t rank = 0;   // >= 1: this rank for every matrix (at most min(in, out))
  double energy = 0;  // (0, 1]: smallest rank keeping this fraction of Σ σ_i² (per matrix)
  bool activation_aware = false;  // SVD-LLM whitening (needs XᵀX)
};

// The largest rank r with r (in + out) <= (1 - percent/100) in out, i.e. the factors hold at most
// (100 - percent) % of the matrix's parameters (SVD-LLM's per-matrix compression ratio). Throws
// when that rank is 0 (percent too high for the shape) or percent is outside 1..99.
int64_t lowrank_rank_for_percent(int64_t in, int64_t out, int percent);

// The smallest r with σ_1² + ... + σ_r² >= energy * Σ σ_i² (sigma sorted descending, energy in
// (0, 1]); at least 1.
int64_t lowrank_rank_for_energy(const std::vector<float>& sigma, double energy);

// Factorizes a Dense Linear (any float dtype, transposed or not) into a LowRank Linear with f32
// Dense factors named `<name>.v` / `<name>.u`; the bias stays on the LowRank Linear.
//   xtx: [in, in] symmetric f32 Gram matrix XᵀX of the calibration inputs (required when
//        spec.activation_aware, ignored otherwise); a tiny ridge (1e-6 of the mean diagonal,
//        raised tenfold while the Cholesky factorization fails) keeps a rank-deficient XᵀX
//        (dead features) factorizable.
// Throws for a non-Dense input, a rank of 0 or above min(in, out), non-finite weights, or a
// missing/mis-sized Gram matrix; a LAPACK failure names the routine and its info code.
// An energy rank that would not save parameters (r (in + out) >= in out) still factorizes: the
// caller asked for that accuracy.
Linear lowrank_factorize(const Linear& dense, const LowRankSpec& spec,
                         const std::vector<float>* xtx = nullptr);

}  // namespace minfer
