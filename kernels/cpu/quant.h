// Quantized linear on the CPU, weight-only: W is dequantized on the fly (x stays f32) or, on the
// q8 path, multiplied as integer codes with 8-bit activations.
// Legend: T rows of x, K = in features, N = out features, Kp = K rounded up to 64.
//
// Every format (int8, int4 sym/asym, NF4, binary, ternary) multiplies f32 activations by the
// weights dequantized in registers, exactly the values dequantize_weight gives; only the order of
// the f32 additions (and, for int8, the group scale applied once per group instead of per weight)
// differ from "dequantize, then f32 matmul". Exceptions, where activations are quantized to int8:
// int4 and NF4 decode by default, and int8 decode on AVX2 builds (the q8 path below: per-block
// int8 activations, llama.cpp's q8_0 partner type, +0.18% SmolLM2-135M WikiText-2 perplexity for
// int4 and +0.77% for int8 when forced on every linear; NF4 also rounds its levels to int8, see
// docs/performance.md), and the opt-ins MINFER_QUANT_ACT=q8 (every T) and MINFER_QUANT_PREFILL=int8
// (quantized_linear_int8_act below). The f32 path:
//   T <= 4 (decode): one pass over W in storage order, each weight byte read once; one thread
//     below 64K weights, else every thread on a contiguous block of rows.
//   4 < T < 16: tiles of 16 rows kept in cache while every group of 4 x rows passes over them.
//   T >= 16 (prefill): W dequantized one tile of rows (<= 2 MB of f32, an equal share per
//     thread; kernels/cpu/prefill_gemm.h) at a time into f32, then sgemm.
// The matrix is never dequantized as a whole.
// Files: quant.cpp (dispatch, scalar path, prefill), quant_avx512.cpp, quant_avx2.cpp,
// quant_impl.h.
#pragma once
#include <cstdint>

#include "engine/linear.h"

namespace minfer {

// y[T, N] (row stride ldy) = x[T, K] (row stride ldx) · dequant(W)ᵀ. SIMD where compiled for it
// (AVX-512, else AVX2), otherwise the scalar path below. OpenMP over output rows.
void quantized_linear(const Quantized& w, const float* x, int64_t T, int64_t ldx, float* y,
                      int64_t ldy, int64_t K, int64_t N);

// Integer prefill of an int8 weight with one scale per row or per tensor (AVX-512 VNNI and AVX2
// builds, T >= 8): every x row quantized to int8 with its own absmax scale d[t] = max|x[t]| / 127
// (quantize_act_rows, kernels/cpu/quant_act.h), the exact int32 sums Σ_k xq[t, k] (u[n, k] - 128)
// from the GEMM tiles W8A8 uses (VNNI: 6 tokens x 64 rows in registers, vpdpbusd; AVX2: 6 tokens
// x 16 rows, int16 vpmaddwd), then y = float(sum) * (d[t] * s[n]): the W8A8 dynamic-activation
// product on a weight-only format. Any code layout (row or interleaved). Returns false, writing
// nothing, where it does not apply (other schemes, group scales, T < 8, builds with neither).
// quantized_linear takes it at T >= 16 when MINFER_QUANT_PREFILL=int8 (default f32:
// dequantize-tile + sgemm, exact f32 activations).
bool quantized_linear_int8_act(const Quantized& w, const float* x, int64_t T, int64_t ldx, float* y,
                               int64_t ldy, int64_t K, int64_t N);

// The q8 path (int8 and int4 weights, symmetric or asymmetric, and NF4, plain or double-quantized
// scales, with one scale per row or tensor or groups a multiple of 32): x quantized per block of
// 32 to int8 as llama.cpp's q8_0 partner type does (qm::quantize_act_block: d = max|x| / 127 in
// f32, q = round-half-even(x / d); an inf or NaN makes its block's d NaN), once per call or op
// group; each weight chunk of 64 is integer dot products per token (AVX-512 VNNI: vpdpbusd of the
// unsigned codes u with q, started from -z Σ q; AVX2: vpmaddubsw + vpmaddwd of |w| and q carrying
// w's sign), the int32 sums of each block of 32 times its d accumulate in f32, times the weight
// scale once per group:
//   y[t, n] = f Σ_g s[n, g] Σ_{b in g} d[t, b] Σ_{j in b} w[n, j] q[t, j],
// w = u - z[n, g] with f = 1 (int8, int4), or w = qm::nf4_level(u) = round(8192 · NF4 value)
// with f = 2^-13 (NF4: integer levels looked up per nibble by vpshufb, as llama.cpp's IQ4_NL
// does with int8 ones; here split as 128 · hi + lo into two int8 operands, since int8 levels
// round an NF4 value by up to 3.8 %, measured +1.8 % perplexity).
// Error against the f32 product of the dequantized weights: |x_j - d q_j| <= d / 2, so
// |y_q8 - y_f32| <= Σ_b d_b / 2 Σ_{j in b} |w_j| (+ f32 rounding); NF4 adds Σ_j |x_j| |w_j| δ,
// δ < 0.026 % the largest relative rounding of an NF4 level. Cost on SmolLM2-135M: see
// docs/performance.md. quantized_linear (and its op groups, the fused gate·up) takes it by
// default at T <= 4 (decode) for int4 on AVX2 builds (every group size; g32 has its own kernel)
// and on AVX-512 VNNI builds (groups on whole 64-weight chunks only: g32 / g96 have no AVX-512
// kernel and keep f32 activations there), and for NF4 and int8 on AVX2 builds (the AVX-512 file
// has no NF4 q8 kernel; int8 decode there is memory-bound and measured no faster on it, where on
// AVX2 the f32-activation int8 kernel is arithmetic-bound); MINFER_QUANT_ACT=f32 turns
// it off, =q8 forces it for int8, int4 and NF4 at every T and on every build (the reference runs
// where no SIMD kernel is), to measure its perplexity cost. quantized_linear_q8 runs it at any T
// (T > 4: tiles of 16 rows kept in cache while every group of 4 tokens passes; each row computed
// as in decode); the reference computes the same codes and exact block sums, combining them in f32
// in block order. Both throw for weights without the path (quantized_has_q8_path false).
bool quantized_has_q8_path(const Quantized& w, int64_t K);
// The q8 path's activation quantizer (SIMD where built): q [T, Kp] codes (zero past K), d [T,
// Kp / 32] block scales; bit for bit qm::quantize_act_block(x block, n, 32, ...) per block.
void quantize_q8_activations(const float* x, int64_t T, int64_t ldx, int64_t K, int8_t* q,
                             float* d);
void quantized_linear_q8(const Quantized& w, const float* x, int64_t T, int64_t ldx, float* y,
                         int64_t ldy, int64_t K, int64_t N);
void quantized_linear_q8_ref(const Quantized& w, const float* x, int64_t T, int64_t ldx, float* y,
                             int64_t ldy, int64_t K, int64_t N);
// Which activations quantized_linear, its op groups and the fused gate·up use for int8 / int4 /
// NF4: Auto (q8 at T <= 4 for int4 on AVX2 builds and, groups on 64-weight chunks, on AVX-512
// VNNI builds; for NF4 and int8 on AVX2), F32
// (never), Q8 (every T). Read once from
// MINFER_QUANT_ACT (auto | f32 | q8; anything else is an error naming the variable);
// set_quantized_act_path overrides it for the whole process (tests, A/B in one binary).
enum class QuantActPath { Auto, F32, Q8 };
QuantActPath quantized_act_path();
void set_quantized_act_path(QuantActPath p);

// Portable scalar path and test oracle: each row of W dequantized with the qm:: functions (the
// values dequantize_weight gives), then an f32 dot product with x in index order.
void quantized_linear_ref(const Quantized& w, const float* x, int64_t T, int64_t ldx, float* y,
                          int64_t ldy, int64_t K, int64_t N);

// An op group (q·k·v, gate·up): y_i[T, N_i] = x[T, K] · dequant(W_i)ᵀ for n matrices that read
// the same x. On the decode path (T <= quantized_group_max_t()) x is copied (padded) once and the
// rows of all matrices go to the thread pool in one dispatch; each row is computed by the same
// kernel as quantized_linear's, so the results are bit-identical to n quantized_linear calls. At
// larger T it is those n calls.
struct QuantGroupItem {
  const Quantized* w;
  float* y;
  int64_t ldy, N;
};
void quantized_linear_group(const QuantGroupItem* items, int n, const float* x, int64_t T,
                            int64_t ldx, int64_t K);
// The largest T the group runs as one dispatch: 4 with the SIMD kernels, 15 on the scalar path.
int64_t quantized_group_max_t();

// The LLaMA MLP's gating fused into gate·up: y[T, F] = silu(x · gateᵀ) ⊙ (x · upᵀ), with
// u[T, F] receiving x · upᵀ (scratch; F = gate.out = up.out). On the decode path one pool loop
// computes a block of gate rows and the same block of up rows, then applies silu_mul
// (kernels/cpu/act.h) to that block while it is in cache: bit-identical to the two linears followed
// by Backend::swiglu. At larger T: the two quantized_linear calls, then the same element-wise op.
void quantized_linear_swiglu(const Quantized& gate, const Quantized& up, const float* x, int64_t T,
                             int64_t ldx, float* y, int64_t ldy, float* u, int64_t ldu, int64_t K,
                             int64_t F);

// Repack at load (the CPU backend's upload of a Linear): where this build's kernels stream the
// interleaved layout (AVX-512: every scheme; AVX2: int8, int4 and NF4 with groups of whole
// 64-weight chunks or one scale per row or tensor), w becomes a host copy with its rows
// interleaved by 4 (Quantized::interleave, engine/formats/quantized.h; int8 codes stored as
// u - 128) and the resident pages of a file-mapped original are released (release_mapped_pages),
// so the copy replaces the mmap'd view in memory. Decode then streams one contiguous run per 4 rows
// and loads each activation vector once for those 4 rows, with per-row arithmetic identical to the
// row kernel (bit-identical results); prefill tiles and every other reader take the same bytes
// through the layout-aware paths. Returns whether it repacked; anything else (other schemes or
// groups on AVX2, scalar builds, aarch64, already interleaved, out % 4 != 0, or
// MINFER_QUANT_REPACK=0 in the environment) is left as it is.
bool quantized_repack_for_cpu(Quantized& w);

// Which path quantized_linear takes in this build: "avx512", "avx2" or "scalar".
const char* quantized_linear_isa();

}  // namespace minfer
