// SparseCsr (16-bit column indices) linear on the CPU (format: engine/formats/sparse_csr.h).
// Legend: T rows of x, K = in features (<= 65536), N = out features, c_n = row n's kept count
// (row_ptr[n + 1] - row_ptr[n]), Kv = the values per row (c_n <= Kv).
//
//   T <= 4 (decode, memory bound): per row, one pass over its c_n columns and values in storage
//     order, x gathered at the columns; the work is per kept weight (the bitmask kernels' is per
//     16 or 64 inputs), so the kernel wins at high sparsity (docs/pruning.md).
//     AVX-512 (F, BW, VL): 16 kept weights per step, the columns widened to 32 bits, one
//       vgatherdps of x per token row, the values widened to f32 (f32, f16 by vcvtph2ps, bf16 by a
//       shift, int8 codes u as u - 128), one FMA; the tail under a lane mask (masked loads and
//       gathers never touch memory past the row's count).
//     AVX2 + FMA + F16C (x86-64 without those; function target attributes, chosen by cpuid): the
//       same with 8 kept weights per step; the tail (c_n % 8) copied into a zeroed 8-lane buffer
//       and gathered under a lane mask.
//     int8 values: y = row scale * Σ (u - 128) x, the scale applied once per row.
//     Rows are computed one after another in blocks over the thread pool; a row's sums do not
//     depend on the split.
//   T > 4 (prefill): at most 15 % of the weights kept: x transposed once per block of 64 token
//     rows into xᵀ [K, 64]; per weight row the kept weights scale rows of xᵀ into 64 accumulators
//     (an axpy per kept weight: the work is the kept weights times 64, not K times 64 as in a
//     dense tile + sgemm). More kept: rows scattered into f32 tiles, then sgemm
//     (kernels/cpu/prefill_gemm.h prefill_tiles_sgemm, as the fp16 and quantized prefill).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "engine/linear.h"

namespace minfer {

// y[T, N] (row stride ldy) = x[T, K] (row stride ldx) · dequant(W)ᵀ, without bias. Decode and the
// SpMM prefill read only the kept columns of x (an inf or NaN in a pruned column does not reach
// y); the tile prefill multiplies the zeros too (0 · inf = NaN, as dense). Errors: T < 0,
// ldx < K, ldy < N, W not of shape [N, K].
void sparse_csr_linear(const SparseCsr& w, const float* x, int64_t T, int64_t ldx, float* y,
                       int64_t ldy, int64_t K, int64_t N);

// One member of a SparseCsr op group: W [N, K] and its output y[T, N] (row stride ldy).
struct SparseCsrGroupItem {
  const SparseCsr* w;
  float* y;
  int64_t ldy, N;
};

// An op group (q·k·v, gate·up) of SparseCsr weights reading the same x[T, K]: T <= 4, every
// member's rows in one pool dispatch (kernels/cpu/sparse_group.h), bit-identical to one
// sparse_csr_linear per member; T > 4: one call per member. Errors: n < 0, ldx < K, a member
// without weight or with ldy < N.
void sparse_csr_linear_group(const SparseCsrGroupItem* items, int n, const float* x, int64_t T,
                             int64_t ldx, int64_t K);

// gate·up fused with SiLU·mul: y[T, F] = silu(x · gateᵀ) ⊙ (x · upᵀ), u[T, F] = x · upᵀ; one pool
// loop for T <= 4, bit-identical to two sparse_csr_linear calls then the swiglu op.
void sparse_csr_linear_swiglu(const SparseCsr& gate, const SparseCsr& up, const float* x, int64_t T,
                              int64_t ldx, float* y, int64_t ldy, float* u, int64_t ldu, int64_t K,
                              int64_t F);

// Scalar reference and test oracle: each kept value dequantized as dequantize_weight does, an f32
// dot product with x in column order.
void sparse_csr_linear_ref(const SparseCsr& w, const float* x, int64_t T, int64_t ldx, float* y,
                           int64_t ldy, int64_t K, int64_t N);

// Whether this build's SparseCsr decode kernel, on this CPU, beats the SparseBitmask decode kernel
// on the same weights at this sparsity (counted over the padded [N, Kv] layout) for these values
// (`values`: the sparse child). Measured with `bench_sparse THREADS csr` (docs/pruning.md), decode;
// prefill above 15 % kept runs the same tiles + sgemm as the bitmask's, below it the SpMM (faster):
//   AVX2 kernels: f32 values 1.28-1.55x the bitmask at 50 %, int8 values 1.41-1.71x at 80 %
//     (0.92-1.23x at 70 %), fp16 / bf16 values 11.5-23.5x from 50 % (the bitmask's are scalar);
//   AVX-512 kernels: f32 values 1.65-2.71x at 90 % (0.85-1.19x at 70 %), int8 never.
// Where the bitmask kernel that would run is scalar (fp16 / bf16 values on every ISA), CSR's SIMD
// kernel is taken from 49.5 %; where it is AVX2 (also AVX-512 builds without the bitmask's VBMI2
// kernels), the AVX2 rows apply.
bool sparse_csr_beats_bitmask(const SparseBitmask& w, int64_t in);

// At load (the CPU backend's upload of a Linear, after sparse24_upload): a SparseBitmask weight
// with at most 65536 inputs becomes SparseCsr where sparse_csr_beats_bitmask says so (e.g. a
// compressed-tensors sparse-bitmask checkpoint at 90 % with f32 values, or our own
// `--sparse-storage bitmask` folders): the columns built from the mask, the values child shared
// (the bitmask's packed [N, Kv] values are CSR's), the mask's file-mapped pages released. Returns
// whether it converted; MINFER_SPARSE_CSR_AT_LOAD=0 in the environment leaves every weight as it
// is (to time the bitmask kernel on the same weights). Errors: a bad MINFER_SPARSE_CSR_AT_LOAD.
bool sparse_csr_upload(Linear& w);

// The decode kernel sets this build holds and this CPU runs, best first, ending with "scalar".
std::vector<std::string> sparse_csr_decode_isas();
// The decode path sparse_csr_linear takes here ("avx512", "avx2", "scalar"); MINFER_SPARSE_ISA
// forces one, as for the other sparse formats (kernels/cpu/sparse.h); an unavailable one is an
// error naming it.
const char* sparse_csr_linear_isa();
// sparse_csr_linear's decode path (1 <= T <= 4) with the kernel set `isa` (one of
// sparse_csr_decode_isas()); throws naming `isa` when it is not available here.
void sparse_csr_linear_decode_isa(const SparseCsr& w, const std::string& isa, const float* x,
                                  int64_t T, int64_t ldx, float* y, int64_t ldy, int64_t K,
                                  int64_t N);

}  // namespace minfer
