#include "kernels/cpu/prefill_gemm.h"

#include <cblas.h>

#include <algorithm>
#include <atomic>
#include <vector>

#include "kernels/cpu/env_switch.h"

namespace minfer {

namespace {

std::atomic<int>& gemm_path() {
  static std::atomic<int> p{
      env_switch("MINFER_DENSE_PREFILL", "tiles", {"tiles", "blas"}) == "blas" ? 0 : 1};
  return p;
}
std::atomic<int>& attention_path() {
  static std::atomic<int> p{
      env_switch("MINFER_ATTN_PREFILL", "blocks", {"blocks", "heads"}) == "heads" ? 0 : 1};
  return p;
}

int64_t round_up(int64_t v, int64_t m) {
  return (v + m - 1) / m * m;
}

}  // namespace

PrefillGemm prefill_gemm_path() {
  return gemm_path().load(std::memory_order_relaxed) == 0 ? PrefillGemm::Blas : PrefillGemm::Tiles;
}
void set_prefill_gemm_path(PrefillGemm p) {
  gemm_path().store(p == PrefillGemm::Blas ? 0 : 1);
}
PrefillAttention prefill_attention_path() {
  return attention_path().load(std::memory_order_relaxed) == 0 ? PrefillAttention::Heads
                                                               : PrefillAttention::Blocks;
}
void set_prefill_attention_path(PrefillAttention p) {
  attention_path().store(p == PrefillAttention::Heads ? 0 : 1);
}

BlasOneThread::BlasOneThread()
    : prev_blas_(openblas_get_num_threads()), prev_omp_(omp_get_max_threads()) {
  if (prev_blas_ != 1) openblas_set_num_threads(1);
}
BlasOneThread::~BlasOneThread() {
  // OpenBLAS's OpenMP build sets OpenMP's thread count with its own: restore both.
  if (prev_blas_ != 1) openblas_set_num_threads(prev_blas_);
  omp_set_num_threads(prev_omp_);
}

void prefill_sgemm(const float* x, int64_t T, int64_t ldx, const float* w, bool transposed,
                   float* y, int64_t ldy, int64_t K, int64_t N) {
  const CBLAS_TRANSPOSE tw = transposed ? CblasNoTrans : CblasTrans;
  const int ldw = transposed ? int(N) : int(K);
  if (prefill_gemm_path() == PrefillGemm::Blas) {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, tw, int(T), int(N), int(K), 1.f, x, int(ldx), w, ldw,
                0.f, y, int(ldy));
    return;
  }
  // One tile per configured thread, columns in multiples of 16 (the sgemm kernels' widths). The
  // tiles follow the configured count, not the active one, so that results never depend on the
  // machine's load: the back-off only lets fewer threads share the same tiles.
  const int nt = pool_threads();
  const int64_t cols = round_up((N + nt - 1) / nt, 16);
  const int64_t tiles = (N + cols - 1) / cols;
  prefill_for(tiles, prefill_threads(tiles), [&](int64_t i, int) {
    const int64_t n0 = i * cols, nc = std::min(cols, N - n0);
    const float* wt = transposed ? w + n0 : w + n0 * K;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, tw, int(T), int(nc), int(K), 1.f, x, int(ldx), wt, ldw,
                0.f, y + n0, int(ldy));
  });
}

int64_t prefill_tile_rows(int64_t N, int64_t K, int threads) {
  const int64_t nt = std::max(1, threads);
  const int64_t cap = std::max<int64_t>(16, kPrefillTileBytes / 4 / K / 16 * 16);
  const int64_t per = (N + nt - 1) / nt;    // one thread's rows
  const int64_t m = (per + cap - 1) / cap;  // tiles per thread
  return round_up((per + m - 1) / m, 16);
}

void prefill_tiles_sgemm(const float* x, int64_t T, int64_t ldx, TileFill fill, const void* ctx,
                         float* y, int64_t ldy, int64_t K, int64_t N) {
  // Configured threads, not active: the tiles (and so the results) must not follow the load.
  const int64_t rows = prefill_tile_rows(N, K, pool_threads());
  const int64_t tiles = (N + rows - 1) / rows;
  prefill_for(tiles, prefill_threads(tiles), [&](int64_t i, int) {
    thread_local std::vector<float> tile;
    const int64_t n0 = i * rows, nr = std::min(rows, N - n0);
    tile.resize(size_t(rows * K));
    fill(ctx, n0, nr, tile.data());
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, int(T), int(nr), int(K), 1.f, x, int(ldx),
                tile.data(), int(K), 0.f, y + n0, int(ldy));
  });
}

}  // namespace minfer
