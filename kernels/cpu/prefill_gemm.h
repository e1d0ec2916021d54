// Prefill GEMMs on the CPU: y[T, N] = x[T, K] · Wᵀ for many rows of x, cut into column tiles
// (blocks of output features) that the threads take one at a time, each tile one single-threaded
// OpenBLAS sgemm. Legend: T rows of x (tokens), K in features, N out features.
//
// Why: OpenBLAS's own threading splits one sgemm of SmolLM2's sizes (T = 512, K = 576,
// N = 192 .. 1536: 1-2 ms of work) between the threads and synchronises them several times inside
// it; independent tiles need one join per GEMM and no shared packing buffer. The tiles run on
// OpenMP threads inside one parallel region (OpenBLAS's OpenMP build runs a call made inside a
// region on the calling thread), as many threads as the thread pool's load back-off lets take
// part (engine/thread_pool.h pool_active_threads). Every output element is one sgemm's dot
// product over the full K; which tile it falls in (sgemm's edge kernels round differently) depends
// on the configured thread count only, never on the active one: results are the same on an idle
// and a busy machine, and may differ in the last bits between thread counts (tests/test_ops.cpp
// compares those with a tolerance).
//
// MINFER_DENSE_PREFILL=blas keeps the previous path (one OpenBLAS sgemm on all threads) for A/B
// timing; MINFER_ATTN_PREFILL=heads the previous prefill attention (one full [T, S] score matrix
// per head, kernels/cpu/cpu_backend.cpp). Both default to the tiled paths.
#pragma once
#include <omp.h>

#include <cstdint>

#include "engine/thread_pool.h"

namespace minfer {

enum class PrefillGemm { Blas, Tiles };
enum class PrefillAttention { Heads, Blocks };
// The paths in use: from MINFER_DENSE_PREFILL (blas | tiles) and MINFER_ATTN_PREFILL
// (heads | blocks) at first use, or the last set_ call (benchmarks switch them in one process).
PrefillGemm prefill_gemm_path();
void set_prefill_gemm_path(PrefillGemm p);
PrefillAttention prefill_attention_path();
void set_prefill_attention_path(PrefillAttention p);

// Sets OpenBLAS to one thread for its lifetime (restores the previous count after): a loop the
// back-off leaves to one thread must not let a BLAS call inside it start a team of its own.
class BlasOneThread {
 public:
  BlasOneThread();
  ~BlasOneThread();
  BlasOneThread(const BlasOneThread&) = delete;
  BlasOneThread& operator=(const BlasOneThread&) = delete;

 private:
  int prev_blas_, prev_omp_;
};

// The threads a prefill loop over n items uses now: min(n, pool_active_threads()), at least 1.
inline int prefill_threads(int64_t n) {
  const int a = pool_active_threads();
  return n < a ? int(n < 1 ? 1 : n) : a;
}

// fn(i, thread) for every item i in [0, n), items taken one at a time (dynamic schedule) by nt
// OpenMP threads (nt from prefill_threads; the caller sizes per-thread scratch by it, thread is
// in [0, nt)). BLAS calls inside fn run single-threaded. Nothing here may throw out of fn.
template <class F>
void prefill_for(int64_t n, int nt, F&& fn) {
  if (n <= 0) return;
  if (nt <= 1) {
    BlasOneThread one;
    for (int64_t i = 0; i < n; ++i) fn(i, 0);
    return;
  }
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1)
  for (int64_t i = 0; i < n; ++i) fn(i, omp_get_thread_num());
}

// y[T, N] (row stride ldy) = x[T, K] (row stride ldx) · Wᵀ, W f32 [N, K] (row stride K) or, when
// transposed, [K, N] (row stride N). Column tiles on the active threads (MINFER_DENSE_PREFILL=
// blas: one threaded OpenBLAS sgemm). Requires T, K, N > 0 and ldx >= K, ldy >= N.
void prefill_sgemm(const float* x, int64_t T, int64_t ldx, const float* w, bool transposed,
                   float* y, int64_t ldy, int64_t K, int64_t N);

// The same with W made one tile at a time: fill(ctx, n0, nr, dst) writes W's rows n0 .. n0+nr-1
// as f32 [nr, K] into dst (a dequantized or converted copy), then one single-threaded sgemm per
// tile. Tiles of prefill_tile_rows(N, K, pool_threads()) rows. Used by the F16/BF16 and quantized
// formats' prefill.
//
// Why these tiles: every sgemm call packs all of x ([T, K], 1.2 MB at T = 512, K = 576; 3.1 MB at
// K = 1536) once, so a tile's cost has a part proportional to T·K whatever its row count; small
// tiles (the previous 256 KB, 32 rows at K = 1536) paid it 18 times for SmolLM2's down projection
// against 2 for the f32 column tiles. And unequal shares leave one thread waiting (N = 576 on 2
// threads: 5 tiles of 112 rows and one of 16, i.e. ~336 rows on one thread and ~240 on the other).
// Measured in docs/performance.md ("fp16 prefill: one weight tile per thread").
using TileFill = void (*)(const void* ctx, int64_t n0, int64_t nr, float* dst);
// At most this many bytes of f32 per tile (4 L2s of this Zen 3, 1/16 of its L3), unless 16 rows
// are larger.
constexpr int64_t kPrefillTileBytes = int64_t(2) << 20;
// Rows per tile for N output rows of K inputs on `threads` configured threads (< 1: 1): each
// thread's share ceil(N / threads) cut into the fewest tiles of <= kPrefillTileBytes (at least 16
// rows), rounded up to a multiple of 16 (the sgemm kernels' widths). So each thread gets the same
// number m of tiles, all of one size but the last (which the rounding may shorten or leave out).
// Requires N, K > 0.
int64_t prefill_tile_rows(int64_t N, int64_t K, int threads);
void prefill_tiles_sgemm(const float* x, int64_t T, int64_t ldx, TileFill fill, const void* ctx,
                         float* y, int64_t ldy, int64_t K, int64_t N);

}  // namespace minfer
