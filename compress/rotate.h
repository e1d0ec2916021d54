// Rotation before quantization (QuaRot, Ashkboos et al. 2024, arXiv:2404.00456; SpinQuant, Liu
// et al. 2024, arXiv:2405.16406): an orthogonal change of basis of a LLaMA-family model that
// leaves its function unchanged (up to f32 rounding) and spreads the weights' outlier input
// channels over all channels, so that a per-group quantizer that comes after it (int4, GPTQ,
// AWQ, NF4...) loses less. Nothing is added at run time: every rotation is folded into weights.
//
//   R1, the residual stream: h' = h Q for a random orthogonal Q [C, C] (QR of a Gaussian matrix,
//   signs fixed so Q is Haar-distributed; fixed seed). RMSNorm is invariant under it once each
//   norm's weight γ is folded into the linears that read the norm (‖h Q‖ = ‖h‖). So the norms
//   (input_layernorm γ1, post_attention_layernorm γ2, model.norm γf) become all ones, and:
//   - q_proj, k_proj, v_proj (γ = γ1), gate_proj, up_proj (γ2), lm_head (γf): W ← W diag(γ) Q;
//   - o_proj, down_proj (their outputs are added to the stream): W ← Qᵀ W, b ← Qᵀ b;
//   - the token embedding table: E ← E Q.
//   A tied head becomes its own lm_head.weight (E diag(γf) Q); the table keeps E Q.
//   R2, per attention head (with heads = true): v = x W_vᵀ is turned into v R per KV head and
//   o_proj reads att R per query head, with R = H_D diag(±1) / √D (a Walsh–Hadamard matrix with
//   random signs; D a power of two, else a random orthogonal matrix):
//     W_v ← blockdiag(Rᵀ) W_v, b_v ← blockdiag(Rᵀ) b_v,  W_o ← W_o blockdiag(R)
//   (attention mixes rows of V linearly, so it commutes with R; RoPE touches only q and k).
// QuaRot's online Hadamard before down_proj (R4) needs a run-time transform and is not done.
//
// The calibration of a later data-aware step (GPTQ, AWQ, Wanda) runs on the rotated model.
#pragma once
#include <cstdint>
#include <vector>

namespace minfer {

class Model;
struct CompressSpec;

struct RotateReport {
  int64_t dim = 0;       // C when the residual stream was rotated, else 0
  int64_t head_dim = 0;  // D when the heads were rotated, else 0
  int linears = 0;       // linears rewritten (the head counted)
  bool untied = false;   // a tied head became its own lm_head.weight
  double seconds = 0;
};

// A random orthogonal [n, n] matrix, row-major, f64: Q of the QR factorization of an n x n
// matrix of standard normal draws (Box–Muller over a splitmix64 stream from `seed`, so the same
// on every platform), columns scaled by sign(diag R) (Mezzadri 2007: then Q is Haar-distributed).
// Throws for n < 1.
std::vector<double> random_orthogonal(int64_t n, uint64_t seed);

// A Walsh–Hadamard matrix of order n (a power of two) with random column signs, / √n: orthogonal,
// every entry ±1/√n. Throws when n is not a power of two.
std::vector<double> random_hadamard(int64_t n, uint64_t seed);

// Rotates `m` in place as above (R1, and R2 with heads = true). The model must be a LLaMA-family
// decoder with f32 or 16-bit float Dense weights and a float embedding table (what compress
// loads); throws naming the model type or the tensor for Gemma's (1 + w) or sandwich norms, a
// block-format table, a linear already compressed, or a missing projection.
RotateReport rotate_model(Model& m, uint64_t seed, bool stream, bool heads);

// The rotation seed every tool uses (the results are reproducible, and the same in bench).
constexpr uint64_t kRotateSeed = 0x5eed;

// Runs the chain's rotate step on `m` (after prune_structured, before calibration) if it has one;
// a report with dim 0 otherwise.
RotateReport rotate_for_spec(Model& m, const CompressSpec& spec);

}  // namespace minfer
