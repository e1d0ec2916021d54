// The CPU thread pool for decode-sized work (matrix-vector products, attention over the KV cache
// for a few query rows): one dispatch per op, the op's rows cut into chunks sized to the matrix,
// chunks claimed dynamically so that a worker the OS has not scheduled never holds the caller up.
//
// Why not OpenMP for these: a decode step runs ~250 parallel loops per token, each ending in a
// barrier. When other processes take the cores, libgomp's spinning threads and its barriers make
// every loop wait for a thread that is not running (one scheduler time slice, milliseconds, per
// loop): SmolLM2 int8 decode fell from 121 to 0.7 tok/s with two competing processes. Here:
//   - the calling thread works too and claims chunks like the workers: a loop never waits for a
//     thread that has not started, only for chunks already running;
//   - workers spin for a bounded time (kSpinUs) after each dispatch, then sleep (futex through
//     std::atomic::wait), so an idle pool costs no CPU;
//   - the number of threads that take part backs off when other processes keep the cores busy:
//     every ~200 ms the caller reads /proc/stat (all CPUs' busy time) and /proc/self/stat (ours)
//     and lets only round(cores - others' busy cores) threads (>= 1, <= threads()) join.
// Results do not depend on which thread ran a chunk, nor on how many took part: the chunking
// depends only on the loop's size and the configured thread count, and every chunk writes its own
// outputs. OpenBLAS (its OpenMP build) keeps libgomp's pool for the prefill GEMMs; the two never
// run at once (a dispatch returns when its last chunk is done, and the workers then sleep).
//
// Not reentrant: a parallel_for called from inside a chunk, or from a second thread while one runs,
// runs serially on the calling thread (same results).
#pragma once
#include <cstdint>
#include <type_traits>

namespace minfer {

// Snapshot of the pool's load back-off, for reports and tests.
struct PoolStats {
  int threads = 1;         // configured (set_pool_threads)
  int active = 1;          // taking part now (threads, or fewer while the cores are busy)
  double others_busy = 0;  // CPU cores other processes kept busy over the last sample window
  int64_t dispatches = 0;  // parallel loops run on more than one thread
};

namespace pool_detail {
using ChunkFn = void (*)(const void* ctx, int64_t begin, int64_t end);
// Runs fn over [0, n) cut into `chunks` contiguous ranges of near-equal size.
void run(int64_t n, int64_t chunks, ChunkFn fn, const void* ctx);
int64_t chunks_for(int64_t n, int64_t work_per_item, int64_t min_work_per_chunk);
// For tests: n > 0 stops the load back-off's sampling and pins the active thread count to n
// (clamped to [1, threads]), as if other processes took the rest of the cores; n <= 0 restores the
// back-off's on/off setting from before the pin.
void pin_active_for_testing(int n);
}  // namespace pool_detail

// Sets the pool's thread count (the caller included); n <= 0: the number of online CPUs. Starts or
// stops workers; call it between dispatches.
void set_pool_threads(int n);
int pool_threads();
// Load back-off on or off (on by default; MINFER_POOL_BACKOFF=0 in the environment turns it off).
void set_pool_backoff(bool on);
PoolStats pool_stats();
// The threads a loop should use now: pool_threads(), or fewer while other processes keep the cores
// busy (the same back-off the pool's own dispatches follow; the CPU counters are re-read when the
// last reading is older than the sampling period). For work that runs outside the pool (the
// prefill GEMM tiles and attention blocks on OpenMP threads, kernels/cpu/prefill_gemm.h).
int pool_active_threads();

// fn(begin, end) over the items [0, n): each item costs about work_per_item units (bytes read,
// multiply-adds); a chunk gets at least min_work units, and there are at most 8 chunks per thread.
// Small loops (one chunk) run inline without waking anyone.
template <class F>
void parallel_for(int64_t n, int64_t work_per_item, int64_t min_work, F&& fn) {
  if (n <= 0) return;
  using Fn = std::remove_reference_t<F>;
  const int64_t chunks = pool_detail::chunks_for(n, work_per_item, min_work);
  if (chunks <= 1) {
    fn(int64_t(0), n);
    return;
  }
  pool_detail::run(
      n, chunks,
      [](const void* ctx, int64_t b, int64_t e) {
        (*static_cast<Fn*>(const_cast<void*>(ctx)))(b, e);
      },
      &fn);
}

}  // namespace minfer
