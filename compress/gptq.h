// GPTQ (Frantar et al. 2022, arXiv:2210.17323, Algorithm 1): weight-only quantization that
// rounds W [out, in] one input column at a time and spreads each column's rounding error over the
// columns not yet rounded, weighted by the inverse Hessian of the layer's output error
// H = XᵀX (X: calibration inputs [tokens, in]), so that ||(W - Ŵ) Xᵀ||_F, not ||W - Ŵ||_F, is
// what the rounding keeps small. Writes the same Quantized representation round-to-nearest does
// (engine/formats/quantized.h): the kernels run it unchanged.
//
// As the paper: dampening λ = 0.01 · mean(diag H) added to the diagonal, H⁻¹ through its upper
// Cholesky factor, lazy batch updates (the error of a block of 128 columns reaches the later
// columns in one GEMM), dead inputs (H_ii = 0) get W[:, i] = 0. A group's scale is chosen from the
// group's weights as they stand when the first column of the group is reached (the paper's
// "static groups" off), with the format's own rule (int4: absmax / 7, int8: absmax / 127, int3:
// the signed-max rule of compress/dataaware.h, codes −4..3 packed at 3 bits).
//
// Options beyond the paper's defaults:
//   act_order (AutoGPTQ desc_act): columns are rounded in descending order of diag(H), the
//     inputs with the most energy first, while the error still has many columns to go to. The
//     group scales are then fixed before the pass from the original weights of each contiguous
//     group (AutoGPTQ's static_groups = True), so the stored layout stays contiguous groups with
//     no per-column group index.
//   clip_search (int4 / int3): a group's scale is the weighted scale search of
//     compress/dataaware.h with weights diag(H) instead of the absmax rule.
//   true-sequential (-seq, compress_model's SequentialCalibration, compress/compress.h): H of
//     each transformer block from the calibration windows run through the earlier blocks as
//     already quantized, not through the float model (the paper's §"true-sequential" at the
//     block level); the per-Linear algorithm here is unchanged.
//   refit_scales (-refit): after the sweep the codes stay and each row's group scales are
//     refitted jointly by least squares on the same objective (refit_group_scales below);
//     -refit<R>: R rounds, each later round a new sweep from the original weights with the
//     refitted scales fixed, then a refit (alternating minimization; the best round is kept).
#pragma once
#include <vector>

#include "compress/quantize.h"

namespace minfer {

struct GptqOptions {
  double damp = 0.01;         // λ / mean(diag H) (paper: 1 %)
  int64_t block = 128;        // lazy-batch columns (paper: 128); rounded to a multiple of the group
  bool act_order = false;     // columns by descending diag(H), static group scales
  bool clip_search = false;   // group scales by the weighted scale search (int4 / int3)
  bool refit_scales = false;  // after the sweep, each row's group scales by least squares
  int refit_rounds = 1;       // with refit_scales: sweep + refit rounds, later sweeps with the
                              // refitted scales fixed; the round of least objective is kept
};

// Least-squares refit of the group scales to fixed codes (GPTQ `-refit`): for each row n, the
// scales s_g of its groups minimizing the layer's output error on the calibration,
//   (w_n − ŵ_n) H (w_n − ŵ_n)ᵀ,  ŵ_n[j] = s_{g(j)} · q_nj,
// i.e. the normal equations A s = b with A_gh = Σ_{i∈g, j∈h} q_ni H_ij q_nj and
// b_g = Σ_{i∈g} q_ni (w_n H)_i (the GPTQ objective with its codes fixed and the scales free;
// "MSE-optimal scales after GPTQ", a least-squares step as GPTQ's reference `mse` grid and
// llama.cpp's make_qx_quants do per group, here joint over a row's groups and weighted by the
// full H, not its diagonal). q is the signed code the value is s · q of (asymmetric: u − z, z
// kept). A group whose codes are all 0, a row whose system is not positive definite, or a
// solution that does not lower the objective (rounding) keeps its scales, so the objective never
// rises.
// w: [N, K] original weights, h: [K, K] symmetric (GPTQ passes XᵀX + λI), codes: [N, K],
// scales: [N, ceil(K / G)] in and out. Throws on mismatched sizes.
void refit_group_scales(const std::vector<double>& w, const std::vector<double>& h,
                        const std::vector<int>& codes, int64_t N, int64_t K, int64_t G,
                        std::vector<float>& scales);

// `dense`: a Dense Linear [out, in]; spec.method "int4" / "int3" (symmetric, group 32/64/128/...)
// or "int8"
// (per row or group); xtx: [in, in] symmetric f32 XᵀX of the calibration inputs. Throws for
// other methods or options (asymmetric, per-tensor, nf4), a non-Dense weight, a mis-sized or
// non-finite Gram matrix.
Linear quantize_gptq(const Linear& dense, const QuantSpec& spec, const std::vector<float>& xtx,
                     const GptqOptions& opt = {});

}  // namespace minfer
