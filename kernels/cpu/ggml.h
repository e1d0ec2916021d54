// GGML block-format linears on the CPU (struct: engine/formats/ggml_blocks.h; block math:
// kernels/common/ggml_quants.h). Legend: T rows of x (tokens), K = in features, N = out features,
// nb = K / 32 blocks per row, QK weights per block.
//
// Two paths, as llama.cpp (ggml-cpu's vec_dot_q*_q8_* and its "dequantize, then sgemm" route):
//   q8 (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0; T < kGgmlGemmMinT, i.e. decode): x is quantized per block of
//     32 to int8 as llama.cpp's CPU backend does (ggml-cpu quantize_row_q8_0 / q8_1, x86 path):
//     d = max|x| / 127 rounded to fp16, q = round-half-even(x · 127 / max|x|), s = Σ q, and for
//     Q4_1 / Q5_1 the sum term m = fp16(d_f32 · s). Each weight block is an integer dot product:
//       y[t, n] = Σ_b dx[t, b] dw[n, b] (Σ_j u[n, b, j] q[t, b, j] - o s[t, b]) + mw[n, b] m[t, b]
//     with u the stored unsigned code (nibble, 5-bit code, or int8 + 128), o its offset (8, 16,
//     128; 0 with a min mw for Q4_1 / Q5_1). AVX-512 VNNI: one vpdpbusd per block of 32. AVX2
//     (kernels/cpu/ggml_avx2.cpp): vpmaddubsw + vpmaddwd, the signed codes u - o of Q4_0 / Q5_0 /
//     Q8_0 through the sign trick so that no int16 pair saturates: the same integer block sums.
//   q8 for the K-quants (Q2_K .. Q6_K; T < kGgmlGemmMinT): x quantized per block of 256 as ggml's
//     quantize_row_q8_K_ref (d = 1 / iscale, iscale = -127 / max with max the signed element of
//     largest |x|, q = round-half-even(iscale x), plus the sums of each group of 16 codes); a
//     weight super-block is w_j = D sc[g] (u_j - o) - Dmin m[g] for j in group g of 16 (integer
//     sub-block scales sc and mins m, unsigned codes u, offset o: 32 for Q6_K, 4 for Q3_K, else 0),
//     so
//       y[t, n] += dx (D Σ_g sc[g] (Σ_{j in g} u_j q_j - o s_g) - Dmin Σ_g m[g] s_g)
//     AVX-512 VNNI: four vpdpbusd per super-block, the group scales applied to the int32 lanes;
//     AVX2: per 32 codes vpmaddubsw, then vpmaddwd by the two groups' int16 scales.
//   f32 (every type; T >= kGgmlGemmMinT): one tile of 64 rows
//     dequantized to f32 at a time (dequantize_row, bit-exact), then sgemm against x: the result
//     is the f32 matmul of dequantize_weight up to summation order.
// llama.cpp instead runs every T on quantized activations: with MINFER_GGML_PATH=q8 the
// Q4_0..Q8_0 and Q2_K..Q6_K linears equal its arithmetic up to f32 summation order (the Q8_K
// activation blocks are bit-identical to quantize_row_q8_K_ref's: tests/test_ggml_blocks.cpp;
// docs/engine.md, greedy generation against llama.cpp).
// Error of the q8 path against the f32 matmul of the dequantized weights: per block of 32, with
// |dx - d| <= 2^-11 d (fp16) and |q| <= 127, |x_j - dx q_j| <= d (1/2 + 127 · 2^-11), and the
// fp16 sum term adds at most |mw| · 2^-10 · 32 · max|x|, so
//   |y_q8 - y_f32| <= Σ_b (d_b (1/2 + 127/2048) Σ_{j in b} |w_j| + |mw_b| 32 max_b|x| / 1024)
//   (+ f32 rounding); per block of 256 (K-quants, f32 scale) |y_q8 - y_f32| <= Σ_b d_b / 2
//   Σ_{j in b} |w_j|; which tests assert. Parallel: the thread pool over output rows (q8),
//   OpenMP over row tiles (f32).
#pragma once
#include <cstdint>

#include "engine/linear.h"
#include "kernels/common/ggml_quants.h"

namespace minfer {

// Below this many rows of x the integer q8 path runs (types that have it).
constexpr int64_t kGgmlGemmMinT = 8;

// y[T, N] (row stride ldy) = x[T, K] (row stride ldx) · Wᵀ, by the path described above.
void ggml_linear(const GgmlBlocks& w, const float* x, int64_t T, int64_t ldx, float* y, int64_t ldy,
                 int64_t K, int64_t N);

// x[K] (K a multiple of 256) as Q8_K blocks y[K / 256], exactly as the q8 path of the K-quants
// quantizes its activations: llama.cpp's quantize_row_q8_K_ref (ggml-quants.c), bit for bit
// (d = 1 / iscale with iscale = -127 / max, max the signed first element of largest |x|; codes
// round-half-even(iscale x) capped at 127; bsums the sums of each 16 codes). A block with a NaN
// or inf gets d = NaN and zero codes. Throws if K is not a multiple of 256.
void ggml_quantize_row_q8_K(const float* x, int64_t K, ggml::BlockQ8_K* y);

// Which path ggml_linear takes, from the environment variable MINFER_GGML_PATH (read once):
// auto (default: as described above), f32 (always the f32 path: exact up to summation order), q8
// (the q8 path at every T where the type has it: measures its perplexity cost).
enum class GgmlPath { Auto, F32, Q8 };
GgmlPath ggml_path();

// Whether the type has the integer q8 path (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K .. Q6_K).
bool ggml_has_q8_path(uint32_t type);
// The q8 path at any T (SIMD where compiled), and its scalar reference (the same codes and
// integer sums, f32 combination in block order). Throws for types without the path.
void ggml_linear_q8(const GgmlBlocks& w, const float* x, int64_t T, int64_t ldx, float* y,
                    int64_t ldy, int64_t K, int64_t N);
void ggml_linear_q8_ref(const GgmlBlocks& w, const float* x, int64_t T, int64_t ldx, float* y,
                        int64_t ldy, int64_t K, int64_t N);
// An op group on the q8 path (decode): y_i[T, N_i] = x[T, K] · W_iᵀ for n matrices that read the
// same x (q·k·v, gate·up). x is quantized once and all matrices' rows go to the thread pool in one
// dispatch; each row is computed exactly as ggml_linear_q8 computes it (bit-identical results).
// Needs every W_i on the q8 path (ggml_has_q8_path) and all of them K-quants or none (one
// activation layout); throws otherwise.
struct GgmlGroupItem {
  const GgmlBlocks* w;
  float* y;
  int64_t ldy, N;
};
bool ggml_q8_groupable(const GgmlBlocks* const* ws, int n);
void ggml_linear_q8_group(const GgmlGroupItem* items, int n, const float* x, int64_t T, int64_t ldx,
                          int64_t K);

// The LLaMA MLP's gating on the q8 path: y[T, F] = silu(x · gateᵀ) ⊙ (x · upᵀ), u[T, F]
// receiving x · upᵀ. With SIMD (VNNI or AVX2) and T <= kGgmlGemmMinT one pool loop computes each
// block of 16 gate rows and the same block of up rows from x quantized once, then silu_mul
// (kernels/cpu/act.h) on that block: bit-identical to ggml_linear_q8_group over {gate, up}
// followed by the element-wise op, which is what runs otherwise. Same conditions and errors as
// ggml_linear_q8_group.
void ggml_linear_q8_swiglu(const GgmlBlocks& gate, const GgmlBlocks& up, const float* x, int64_t T,
                           int64_t ldx, float* y, int64_t ldy, float* u, int64_t ldu, int64_t K,
                           int64_t F);

// The f32 path at any T: row tiles dequantized, then sgemm.
void ggml_linear_f32(const GgmlBlocks& w, const float* x, int64_t T, int64_t ldx, float* y,
                     int64_t ldy, int64_t K, int64_t N);

// Repack at load (the CPU backend's upload of a Linear): where this build's q8 kernel reads the
// interleaved layout (AVX-512 VNNI only: the AVX2 kernels read the row layout; types Q4_0, Q4_1,
// Q8_0; N a multiple of 4), w becomes a host
// copy with its rows interleaved by 4 (GgmlBlocks::interleave, engine/formats/ggml_blocks.h), and
// the resident pages of a file-mapped original are released (release_mapped_pages), so the copy
// replaces the mmap'd view in memory. Decode then streams one contiguous run of 4 rows' blocks
// and loads each activation block once for those 4 rows (q8_rows_x4); prefill and every other
// reader take the same bytes through ggml_block_ptr / ggml_blocks_row. Returns whether it
// repacked; anything else (scalar builds, aarch64, other types, already interleaved, N % 4 != 0,
// or MINFER_GGML_REPACK=0 in the environment) is left as it is.
bool ggml_repack_for_cpu(GgmlBlocks& w, int64_t K);

// Which SIMD the q8 path uses in this build (chosen at compile time by -march): "avx512-vnni",
// "avx2" (AVX2 + FMA + F16C without AVX-512 VNNI) or "scalar".
const char* ggml_linear_isa();

}  // namespace minfer
