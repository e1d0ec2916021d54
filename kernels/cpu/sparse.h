// SparseBitmask linear on the CPU (format: engine/formats/sparse.h).
// Legend: T rows of x, K = in features, N = out features, Kb = ceil(K / 8) mask bytes per row,
// Kv = values per row of the packed child.
//
//   T <= 4 (decode, memory bound): one pass over the mask and the packed values in storage order,
//     so the bytes read are the mask plus the kept values. AVX-512 (F, BW, VBMI2):
//     - f32 values: per 16 inputs the kept values are expanded into their lanes (vexpandps) and
//       multiplied with x loaded under the same mask;
//     - int8 values (+ VNNI): x is rounded to 16-bit codes per token row (step max|x| / 32639,
//       |error| <= half a step per element; a row with an inf or NaN gives NaN outputs, as W8A8),
//       held as two signed byte planes; per 64 inputs the kept codes are expanded into their lanes
//       with w = 0 in the pruned ones (one vpexpandb) and two vpdpbusd accumulate exact integer
//       sums; y = float(sum) * (row scale * x step). Two vector instructions per 64 weights keep
//       the kernel under the memory time of the 0.625 bytes per weight it reads at 50 %.
//     AVX2 + FMA (x86-64 without AVX-512; compiled with function target attributes on every
//     x86-64 build and chosen at run time by cpuid):
//     - f32 values: per 8 inputs the mask byte's kept values (a masked load of the next popcount
//       values) are permuted into their lanes (vpermd by a 256-entry expand table) and
//       multiplied with x loaded under the same lane mask;
//     - int8 values: x rounded to the same 16-bit codes as above (one int16 plane); per 16
//       inputs one pshufb places the kept codes into their lanes (0 in the pruned ones), vpmaddwd
//       adds exact int32 pairs: the same integer sums, so the same y, as the AVX-512 kernel.
//     f16 / bf16 values and other ISAs take the scalar path.
//   T > 4 (prefill, compute bound): 64 rows at a time dequantized into an f32 tile, then sgemm;
//     tiles spread over the threads. The matrix is never dequantized as a whole.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "engine/linear.h"

namespace minfer {

// y[T, N] (row stride ldy) = x[T, K] (row stride ldx) · dequant(W)ᵀ, without bias.
void sparse_linear(const SparseBitmask& w, const float* x, int64_t T, int64_t ldx, float* y,
                   int64_t ldy, int64_t K, int64_t N);

// One member of a SparseBitmask op group: W [N, K] and its output y[T, N] (row stride ldy).
struct SparseGroupItem {
  const SparseBitmask* w;
  float* y;
  int64_t ldy, N;
};

// An op group (q·k·v, gate·up): y_i = x · dequant(W_i)ᵀ for n SparseBitmask weights that read the
// same x[T, K]. For T <= 4 (decode) x is prepared once (rounded to 16-bit codes where int8 values
// are read) and every member's rows go to the thread pool in one dispatch, each row computed by the
// same kernel as sparse_linear: bit-identical to n calls of it. T > 4: one sparse_linear per
// member. Errors: n < 0, ldx < K, a member without weight or with ldy < N.
void sparse_linear_group(const SparseGroupItem* items, int n, const float* x, int64_t T,
                         int64_t ldx, int64_t K);

// The LLaMA MLP's gating fused into gate·up (Shazeer 2020, "GLU Variants Improve Transformer"):
// y[T, F] = silu(x · gateᵀ) ⊙ (x · upᵀ), with u[T, F] receiving x · upᵀ. T <= 4: one pool loop
// computes a block of gate rows and of up rows, then silu_mul (kernels/cpu/act.h) on that block;
// bit-identical to sparse_linear twice then the swiglu op. Errors: bad strides.
void sparse_linear_swiglu(const SparseBitmask& gate, const SparseBitmask& up, const float* x,
                          int64_t T, int64_t ldx, float* y, int64_t ldy, float* u, int64_t ldu,
                          int64_t K, int64_t F);

// Scalar reference and test oracle: each kept value dequantized as dequantize_weight does, an f32
// dot product with x in index order.
void sparse_linear_ref(const SparseBitmask& w, const float* x, int64_t T, int64_t ldx, float* y,
                       int64_t ldy, int64_t K, int64_t N);

// Which decode path sparse_linear takes in this build, on this CPU, for w's value format:
// "avx512", "avx2" or "scalar". The environment variable MINFER_SPARSE_ISA (one of
// sparse_decode_isas()) forces a kernel set, for timing one against another; an unavailable one
// is an error naming it.
const char* sparse_linear_isa(const SparseBitmask& w);

// The decode (T <= 4) kernel sets this build holds and this CPU runs, best first, ending with
// "scalar": e.g. {"avx512", "avx2", "scalar"} on an AVX-512 machine.
std::vector<std::string> sparse_decode_isas();

// sparse_linear's decode path (1 <= T <= 4) with the kernel set `isa` (one of
// sparse_decode_isas(); value formats without a kernel there run the scalar reference), so
// tests and bench_sparse can run every set the machine supports. Throws naming `isa` when it is
// not available here.
void sparse_linear_decode_isa(const SparseBitmask& w, const std::string& isa, const float* x,
                              int64_t T, int64_t ldx, float* y, int64_t ldy, int64_t K, int64_t N);

}  // namespace minfer
