// Codebook linear on the CPU (format: engine/formats/codebook.h; index packing:
// kernels/common/codebook_math.h).
// Legend: T rows of x, K = in features, N = out features, b = index bits, G = group,
// C = 2^b centroids per table.
//
//   T <= 4 (decode, memory bound): one pass over the packed indices in storage order, the
//     group's table converted to f32 once per group. AVX-512 (F, BW): per 16 weights the 2 b
//     index bytes are loaded, broadcast to the four 128-bit lanes, and each 32-bit lane picks its
//     two bytes with vpshufb, shifts them (vpsrlvd) and masks b bits; the centroids are gathered
//     from registers by index: vpermps for C <= 16 (b <= 4), vpermt2ps for C = 32, a vgatherdps
//     from the L1-resident f32 table for b >= 6. Then an f32 FMA with x, one accumulator per row
//     of x. Rows of W on the thread pool (engine/thread_pool.h). AVX2 (+ FMA, F16C): the same
//     unpack on 8 lanes, 16 weights per step (two vpshufb controls over one 16-byte load);
//     vpermps picks from 8 centroids (b <= 3), four joined by vblendvps on index bits 3 and 4 for
//     b = 5, vgatherdps for b >= 6; b = 4 skips the unpack: vpshufb looks 16 nibbles up in the f16
//     table's low- and high-byte planes, vcvtph2ps widens. Two accumulators per row of x.
//   T > 4 (prefill, compute bound): 64 rows at a time dequantized (the same unpack + lookup) into
//     an f32 tile, then sgemm; tiles spread over the threads. Never the whole matrix at once.
#pragma once
#include <cstdint>

#include "engine/linear.h"

namespace minfer {

// y[T, N] (row stride ldy) = x[T, K] (row stride ldx) · dequant(W)ᵀ, without bias.
void codebook_linear(const Codebook& w, const float* x, int64_t T, int64_t ldx, float* y,
                     int64_t ldy, int64_t K, int64_t N);

// Scalar reference and test oracle: each weight looked up as dequantize_weight does, an f32 dot
// product with x in index order.
void codebook_linear_ref(const Codebook& w, const float* x, int64_t T, int64_t ldx, float* y,
                         int64_t ldy, int64_t K, int64_t N);

// Which path codebook_linear takes in this build: "avx512", "avx2" or "scalar".
const char* codebook_linear_isa();

}  // namespace minfer
