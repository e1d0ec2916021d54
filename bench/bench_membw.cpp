// make bench: the machine's memory bandwidth, the roof of a decode step (every weight byte read
// once per token). Two kernels after STREAM (McCalpin, https://www.cs.virginia.edu/stream/):
// read (sum of a 256 MB array, what a matrix-vector product does) and triad (a = b + s·c over three
// 128 MB arrays, STREAM's figure: 3 x 4 bytes moved per element, write-allocate traffic not
// counted). Threads on the engine's pool, best of 5 after a warm-up. Prints one line per kernel,
// or with --json one JSON object (read_gbps, triad_gbps, threads, load_cores).
// Usage: bench_membw [--threads N] [--json]
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "engine/cpu_load.h"
#include "engine/thread_pool.h"

using namespace minfer;
using Clock = std::chrono::steady_clock;

namespace {

template <class F>
double best_seconds(int reps, F&& f) {
  f();
  double best = 1e30;
  for (int i = 0; i < reps; ++i) {
    const auto t0 = Clock::now();
    f();
    best = std::min(best, std::chrono::duration<double>(Clock::now() - t0).count());
  }
  return best;
}

}  // namespace

int main(int argc, char** argv) {
  int threads = 0;
  bool json = false;
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--threads") && i + 1 < argc) {
      threads = std::atoi(argv[++i]);
    } else if (!std::strcmp(argv[i], "--json")) {
      json = true;
    } else {
      std::fprintf(stderr, "usage: bench_membw [--threads N] [--json]\n");
      return 2;
    }
  }
  set_pool_threads(threads);
  set_pool_backoff(false);  // measure with the threads asked for
  const MachineLoad load = measure_machine_load(0.5);

  const int64_t n = int64_t(64) << 20;  // 64 Mi floats = 256 MB
  std::vector<float> a(size_t(n), 1.f);
  std::vector<double> partial(size_t(n / 4096 + 1));
  const double tr = best_seconds(5, [&] {
    parallel_for(n / 4096, 4096 * 4, int64_t(1) << 20, [&](int64_t b, int64_t e) {
      for (int64_t blk = b; blk < e; ++blk) {
        float acc[16] = {};
        const float* p = a.data() + blk * 4096;
        for (int64_t i = 0; i < 4096; i += 16)
          for (int l = 0; l < 16; ++l) acc[l] += p[i + l];
        double s = 0;
        for (float v : acc) s += v;
        partial[size_t(blk)] = s;
      }
    });
  });
  double check = 0;
  for (double v : partial) check += v;
  a.clear();
  a.shrink_to_fit();

  const int64_t m = int64_t(32) << 20;  // 3 arrays of 32 Mi floats = 3 x 128 MB
  std::vector<float> x(size_t(m), 0.f), y(size_t(m), 1.f), z(size_t(m), 2.f);
  const float s = 3.f;
  const double tt = best_seconds(5, [&] {
    parallel_for(m, 12, int64_t(1) << 20, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) x[size_t(i)] = y[size_t(i)] + s * z[size_t(i)];
    });
  });
  const double read_gbps = double(n) * 4 / tr / 1e9, triad_gbps = double(m) * 12 / tt / 1e9;
  const bool ok = check == double(n) && x[size_t(m / 2)] == 7.f;
  if (json) {
    std::printf(
        "{\"read_gbps\": %.2f, \"triad_gbps\": %.2f, \"threads\": %d, \"load_cores\": %.2f, "
        "\"checked\": %s}\n",
        read_gbps, triad_gbps, pool_threads(), load.measured ? load.others_busy : -1.0,
        ok ? "true" : "false");
  } else {
    std::printf(
        "memory bandwidth, %d threads: read %.1f GB/s (256 MB), triad %.1f GB/s (3 x 128 MB)%s\n",
        pool_threads(), read_gbps, triad_gbps, ok ? "" : "  [CHECKSUM WRONG]");
    if (load.busy())
      std::printf("busy machine: other processes kept %.1f of %d cores busy; figures are low\n",
                  load.others_busy, load.cpus);
  }
  return ok ? 0 : 1;
}
