// Data-aware round-to-nearest quantization: the per-group scale search (clipping), 3-bit codes,
// and the per-input-channel scaling of SmoothQuant and AWQ folded into the previous operation.
//
// Clip / scale search (as llama.cpp's make_qx_quants, and AWQ's clipping search): for every group
// of a row, candidate scales s = f · s_max for f in {1, 0.975, ..., 0.5} (s_max: the format's
// absmax rule) are tried, each followed by the least-squares refit s* = Σ c_k w_k v_k / Σ c_k v_k²
// of the chosen codes' values v_k; the scale whose codes give the smallest weighted error
// Σ c_k (w_k − s v_k)² is kept. c_k: the calibration inputs' Σ x_k² for input feature k (the
// diagonal of XᵀX, what llama.cpp's imatrix holds), or 1 without calibration.
//
// int4 with the search (-clip, int4-awq, int4-gptq-clip) uses all 16 codes of the container:
// q in −8..7 with the signed-max base scale s = −w_m / 8 (GGML Q4_0's rule), where plain int4
// keeps the symmetric −7..7, absmax / 7.
//
// 3-bit ("int3"): codes q in −4..3 (8 levels), w ≈ s · q with s = −w_m / 4 for the weight w_m of
// largest magnitude (so w_m is exact; s may be negative, as in GGML's Q4_0 rule). The codes are
// stored packed at 3 bits (QScheme::Int3, u = q + 4, 64 weights in 24 bytes; in the file,
// compressed-tensors' pack-quantized layout): 3 + 32/G bits per weight, with its own kernels.
//
// Channel scaling (SmoothQuant, Xiao et al. 2022, arXiv:2211.10438; AWQ, Lin et al. 2023,
// arXiv:2306.00978): Y = X W ᵀ = (X diag(1/s)) (W diag(s))ᵀ exactly. The 1/s is folded into the
// operation that produces X, so nothing is added at run time:
//   LLaMA:  input_layernorm.weight        -> q_proj, k_proj, v_proj
//           post_attention_layernorm.weight -> gate_proj, up_proj
//           v_proj rows (and bias)        -> o_proj     (attention is linear in V; with GQA one
//                                                        scale per KV channel, shared by the
//                                                        query heads that read it)
//           up_proj rows (and bias)       -> down_proj  (SiLU(gate) ⊙ up is linear in up)
//   GPT-2:  ln_1.{weight,bias}            -> attn.c_attn
//           ln_2.{weight,bias}            -> mlp.c_fc
//   BERT:   attention.self.value rows (and bias) -> attention.output.dense (the only fold: in the
//           post-norm blocks a LayerNorm's output is also the residual, and GELU separates
//           intermediate from output; those linears get the weighted scale search only).
//   SmoothQuant: s_j = max|X_j|^α / max|W_j|^(1−α) (α = 0.5 by default), W_j: the j-th input
//   column of every consumer together.
//   AWQ: s_j = mean|X_j|^α, normalized by sqrt(max s · min s); α searched over {0, 0.05, ..., 1}
//   for each site, minimizing the consumers' output error Σ tr(ΔW XᵀX ΔWᵀ), ΔW = W − Q(W diag s)
//   diag(1/s) (Q: int4 round-to-nearest, −8..7), computed from the calibration Gram matrix instead
//   of a second forward pass. α = 0 is s = 1 (plain RTN), so the search never does worse than RTN
//   on that objective. A fixed α can be given instead of the search.
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "compress/quantize.h"
#include "kernels/common/quant_math.h"

namespace minfer {

class Model;
struct ActStats;

// Round-to-nearest with the optional scale search above. spec.method: "int4" (symmetric, or
// spec.asymmetric: zero points by fit_group_asym), "int3" or "nf4" (not double-quantized);
// col_weight: [in] importance c_k per input feature (nullptr = unweighted); search = false gives
// the plain absmax rule (int4 / nf4 as quantize_linear; int3 as described above). Throws naming the
// tensor for other methods or options.
Linear quantize_rtn_search(const Linear& dense, const QuantSpec& spec, const float* col_weight,
                           bool search);

// One group's fit: codes q_k (int4/int3: −8..7 levels, nf4: table index 0..15) and the scale.
// kind: 4 = int4 (−7..7, absmax / 7), 5 = int4 with all 16 codes (−8..7, −w_m / 8), 3 = int3,
// 0 = nf4. Exposed for GPTQ (which takes only the scale) and tests.
float fit_group_scale(const double* w, const double* c, int64_t n, int kind, bool search);
// Asymmetric int4 (w = s · (u − z), u in 0..15, z in 0..15; qm::asym_params): one group's scale
// and zero point. Without the search: the min/max rule (the range widened to contain 0). With
// it: the range [p · min, p · max] for p = 1, 0.975, ..., 0.5 (GPTQ's reference quantizer's
// `mse` grid, AWQ's clipping range), each followed by the least-squares refit of s for the codes
// and zero point it chose, s* = Σ c w (u − z) / Σ c (u − z)²; the pair with the smallest
// Σ c (w − s (u − z))² wins (p = 1 is a candidate, so never worse than min/max). c: importance
// per weight (nullptr = 1).
qm::AsymParams fit_group_asym(const double* w, const double* c, int64_t n, bool search);

// The code of w for scale s in `kind` (int4: −7..7 or −8..7, int3: −4..3, nf4: 0..15), and its
// value.
int code_of(double w, float s, int kind);
double value_of(int code, float s, int kind);
// The asymmetric int4 code u in 0..15 of w (qm::quantize_asym in double precision).
int code_asym(double w, qm::AsymParams p);

// How channel scales are chosen.
struct SmoothOptions {
  enum class Rule : uint8_t { SmoothQuant, Awq } rule = Rule::SmoothQuant;
  double alpha = -1;  // SmoothQuant: -1 = 0.5; AWQ: -1 = grid search, else fixed α in [0, 1]
  int group = 128;    // AWQ: the int4 group size the search quantizes with
  bool asym = false;  // AWQ: the search's int4 has zero points (min/max), else −8..7
  // Keep each scaled linear's Gram matrix, rescaled to its new inputs (diag(1/s) XᵀX diag(1/s),
  // a new matrix, so the caller's shared ones are untouched), for GPTQ after the fold.
  bool keep_gram = false;
};

// What smoothing did, for reports and tests.
struct SmoothReport {
  int sites = 0;                             // folds done
  std::map<std::string, double> site_alpha;  // consumer name -> α used (AWQ: the one found)
  double seconds = 0;
};

// Applies channel scaling to every site of `m` (weights and norms become f32 copies), and
// rescales `stats` to match the new inputs (absmax, sumsq, sumabs divided by s; the Gram matrices
// of scaled linears are dropped, or rescaled with opt.keep_gram for GPTQ after the fold).
// AWQ reads stats.gram and stats.sumabs (calibrate with_gram); SmoothQuant reads stats.absmax.
// Throws naming the linear when a needed statistic is missing, α outside [0, 1], or a weight is
// not Dense.
SmoothReport smooth_model(Model& m, ActStats& stats, const SmoothOptions& opt);

}  // namespace minfer
