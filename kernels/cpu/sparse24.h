// Sparse24 (2:4 values + 2-bit indices) linear on the CPU (format: engine/formats/sparse24.h).
// Legend: T rows of x, K = in features (a multiple of 4), N = out features, Kb = ceil(K / 8)
// index bytes per row; kept value j of a row sits at input 4 (j / 2) + (2-bit field j of the
// row's index bits, LSB first).
//
//   T <= 4 (decode, memory bound): the kernels read the index bytes and the packed values once, in
//     storage order, and gather x at the indexed inputs (no mask expansion, no popcounts: every
//     group holds exactly 2 values, so value j is at a fixed place).
//     AVX-512 (F, BW, VBMI, VNNI), int8 values: x rounded to 16-bit codes per token row as the
//     SparseBitmask kernel does (step d = max|x| / 32639, q = round(x / d); a row with an inf or
//     NaN gives NaN outputs), held as two unsigned byte planes of q + 32768 = 256 H + L. Per 128
//     inputs: the 16 index bytes become 64 byte positions (vpmovzxwq, vpmultishiftqb, one
//     vpternlogd with the group bases), one vpermt2b per plane gathers the 64 kept inputs' H and
//     L bytes out of 128, and two vpdpbusd with the 64 signed codes w = u - 128 add exact
//     integer sums; Σ w q = 256 Σ w H + Σ w L - 32768 Σ w. y = float(Σ w q) * (row scale * d):
//     the same integers, so the same y, as the SparseBitmask VNNI kernel for the same weights.
//     AVX-512, f32 values: per 32 inputs one vpermt2ps gathers the 16 kept inputs of x; one FMA.
//     AVX2 + FMA (x86-64 without those; function target attributes, chosen by cpuid):
//     - f32 values: per 16 inputs two vpermps gather the 8 kept inputs, one FMA;
//     - int8 values: x as one int16 plane of the same codes; per 32 inputs two pshufb (control
//       from a 256-entry table of index bytes) gather the 16 kept codes of x, vpmaddwd with the
//       16 widened weight codes adds exact int32 pairs: the same y as the AVX-512 kernel. Where
//       the CPU backend built the run layout (SparseRun, sparse24_repack_for_cpu), 4 rows at a
//       time from one stream, each x vector loaded once for them: the same integers again.
//     f16 / bf16 values and other ISAs take the scalar reference.
//   T > 4 (prefill, compute bound): 64 rows at a time dequantized into an f32 tile, then sgemm.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "engine/linear.h"

namespace minfer {

// y[T, N] (row stride ldy) = x[T, K] (row stride ldx) · dequant(W)ᵀ, without bias.
void sparse24_linear(const Sparse24& w, const float* x, int64_t T, int64_t ldx, float* y,
                     int64_t ldy, int64_t K, int64_t N);

// One member of a Sparse24 op group: W [N, K] and its output y[T, N] (row stride ldy).
struct Sparse24GroupItem {
  const Sparse24* w;
  float* y;
  int64_t ldy, N;
};

// An op group (q·k·v, gate·up) of Sparse24 weights reading the same x[T, K], as
// sparse_linear_group (kernels/cpu/sparse.h) does for SparseBitmask: T <= 4, x prepared once and
// one pool dispatch over every member's rows, bit-identical to one sparse24_linear per member;
// T > 4: one call per member. Errors: n < 0, ldx < K, a member without weight or ldy < N.
void sparse24_linear_group(const Sparse24GroupItem* items, int n, const float* x, int64_t T,
                           int64_t ldx, int64_t K);

// gate·up fused with SiLU·mul: y[T, F] = silu(x · gateᵀ) ⊙ (x · upᵀ), u[T, F] = x · upᵀ; one pool
// loop for T <= 4, bit-identical to two sparse24_linear calls then the swiglu op.
void sparse24_linear_swiglu(const Sparse24& gate, const Sparse24& up, const float* x, int64_t T,
                            int64_t ldx, float* y, int64_t ldy, float* u, int64_t ldu, int64_t K,
                            int64_t F);

// Scalar reference and test oracle: each kept value dequantized as dequantize_weight does, an f32
// dot product with x in index order. int8 values: a row of x with an inf or NaN gives NaN outputs
// (as the SIMD kernels, which round x to 16-bit codes).
void sparse24_linear_ref(const Sparse24& w, const float* x, int64_t T, int64_t ldx, float* y,
                         int64_t ldy, int64_t K, int64_t N);

// Whether this build's Sparse24 decode kernel is the measured winner over the SparseBitmask kernel
// on the same 2:4 weights, for these values: the AVX-512 (VBMI + VNNI) kernels with f32 or int8
// (per row / per tensor) values (docs/pruning.md: level with the bitmask or ahead, 0.67-1.43x
// int8, 1.07-1.70x f32); the AVX2 kernel with int8 values in the run layout (2.5-3.3x). Against
// dense storage compress's sparse24_storage_wins decides. `values`: the sparse child.
bool sparse24_decode_wins(const Linear& values);

// At load (the CPU backend's upload of a Linear): a SparseBitmask weight that keeps exactly 2 of
// every 4 inputs (sparse_is_2of4: e.g. a compressed-tensors sparse-24-bitmask tensor written by
// the Python package, whose folder names no minfer representation) becomes Sparse24 where
// sparse24_decode_wins says so: index bytes built from the bitmask (sparse24_from_bitmask), the
// values shared, the mask's file-mapped pages released. A 2:4 bitmask whose mask lost exact-zero
// kept weights (groups with fewer than 2 bits, sparse_is_at_most_2of4: e.g. our own
// `--sparse-storage bitmask` folders of weights read from a quantized GGUF) converts too, its
// values re-packed with zeros in the free slots (sparse24_from_bitmask_repacked, the same W; the
// old values' file pages released). Returns whether it converted; anything
// else, or MINFER_SPARSE24_AT_LOAD=0 in the environment (to time the bitmask kernel on the same
// weights), is left as it is. Errors: a bad MINFER_SPARSE24_AT_LOAD value.
bool sparse24_upload(Linear& w);

// Repack at load (the CPU backend's upload of a Linear), after sparse24_upload: where this build's
// decode path reads the run layout (sparse24_run_reader), a Sparse24 with int8 values and
// out % 4 == 0 gains w.run (SparseRun, engine/formats/sparse24.h: rows in groups of 4, one
// contiguous stream per group, codes unpadded and already signed) and the resident pages of its
// file-mapped index bytes and codes are released. The decode kernel then streams one buffer for 4
// rows and loads each x vector once for them; the integer sums are the same, so y is bit for bit
// the row layout's (tested); prefill tiles read the run too. Returns whether it repacked; anything
// else, an existing run, or MINFER_SPARSE_REPACK=0 in the environment (A/B timing) is left as it
// is. Errors: a bad MINFER_SPARSE_REPACK value.
bool sparse24_repack_for_cpu(Sparse24& w);
// Whether the decode kernel sparse24_linear takes here reads SparseRun: the AVX2 int8 kernel (an
// x86-64 build without the AVX-512 VBMI + VNNI kernels, on an AVX2 CPU, or MINFER_SPARSE_ISA=avx2).
// The AVX-512 kernel reads the row layout.
bool sparse24_run_reader();

// The decode kernel sets this build holds and this CPU runs, best first, ending with "scalar".
std::vector<std::string> sparse24_decode_isas();
// The decode path sparse24_linear takes here for w's value format ("avx512", "avx2", "scalar");
// MINFER_SPARSE_ISA forces one (as for SparseBitmask, kernels/cpu/sparse.h).
const char* sparse24_linear_isa(const Sparse24& w);
// sparse24_linear's decode path (1 <= T <= 4) with the kernel set `isa` (one of
// sparse24_decode_isas()); throws naming `isa` when it is not available here.
void sparse24_linear_decode_isa(const Sparse24& w, const std::string& isa, const float* x,
                                int64_t T, int64_t ldx, float* y, int64_t ldy, int64_t K,
                                int64_t N);

}  // namespace minfer
