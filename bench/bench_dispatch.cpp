// make bench: what one parallel loop costs, the engine's thread pool against an OpenMP
// `parallel for`, on decode-sized work (a 576 x 576 int8-sized row split: 2 x 64K multiply-adds
// here, ~10 us on one core) — a decode step of SmolLM2 runs ~250 such loops per token. Reports
// microseconds per loop (median of 5 batches of N loops) and other processes' CPU load, so the
// figure under load can be read next to the idle one.
// Usage: bench_dispatch [--threads N] [--loops N]
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "engine/cpu_load.h"
#include "engine/thread_pool.h"

using namespace minfer;
using Clock = std::chrono::steady_clock;

namespace {

// The work of rows [b, e): K multiply-adds per row on a row of its own.
void rows(const float* w, const float* x, float* y, int64_t K, int64_t b, int64_t e) {
  for (int64_t n = b; n < e; ++n) {
    float acc[16] = {};
    for (int64_t k = 0; k < K; k += 16)
      for (int l = 0; l < 16; ++l) acc[l] += w[n * K + k + l] * x[k + l];
    float s = 0;
    for (float a : acc) s += a;
    y[n] = s;
  }
}

template <class F>
double median_us_per_loop(int loops, F&& f) {
  std::vector<double> t;
  for (int rep = 0; rep < 5; ++rep) {
    const auto t0 = Clock::now();
    for (int i = 0; i < loops; ++i) f();
    t.push_back(std::chrono::duration<double, std::micro>(Clock::now() - t0).count() / loops);
  }
  std::sort(t.begin(), t.end());
  return t[2];
}

}  // namespace

int main(int argc, char** argv) {
  int threads = 2, loops = 1000;
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--threads") && i + 1 < argc)
      threads = std::atoi(argv[++i]);
    else if (!std::strcmp(argv[i], "--loops") && i + 1 < argc)
      loops = std::max(1, std::atoi(argv[++i]));
    else {
      std::fprintf(stderr, "usage: bench_dispatch [--threads N] [--loops N]\n");
      return 2;
    }
  }
  const int64_t N = 256, K = 512;  // 128K multiply-adds per loop
  std::vector<float> w(static_cast<size_t>(N * K), 0.5f), x(static_cast<size_t>(K), 1.f),
      y(static_cast<size_t>(N));
  set_pool_threads(threads);
  omp_set_num_threads(threads);
  const MachineLoad load = measure_machine_load(0.5);

  const double one =
      median_us_per_loop(loops, [&] { rows(w.data(), x.data(), y.data(), K, 0, N); });
  const double pool = median_us_per_loop(loops, [&] {
    parallel_for(N, K, int64_t(1) << 15,
                 [&](int64_t b, int64_t e) { rows(w.data(), x.data(), y.data(), K, b, e); });
  });
  const double omp = median_us_per_loop(loops, [&] {
#pragma omp parallel
    {
      const int64_t id = omp_get_thread_num(), nt = omp_get_num_threads();
      rows(w.data(), x.data(), y.data(), K, N * id / nt, N * (id + 1) / nt);
    }
  });
  std::printf(
      "one parallel loop of %lld x %lld multiply-adds, %d threads: one thread %.1f us, "
      "thread pool %.1f us, OpenMP %.1f us (other processes' load %.1f of %d cores%s)\n",
      static_cast<long long>(N), static_cast<long long>(K), threads, one, pool, omp,
      load.measured ? load.others_busy : -1.0, load.cpus, load.busy() ? ": BUSY MACHINE" : "");
  return y[0] == 0.5f * float(K) ? 0 : 1;
}
