// make bench: the k-means codebook linear (kernels/cpu/codebook.h) at SmolLM2-135M's gate_proj
// shape (N = 1536 out, K = 576 in; --shape down: N = 576, K = 1536) for each index width, against
// f32 (sgemm) and int4 g128 of the same weights through the CPU backend, in decode (T = 1) and
// prefill (T = --prefill). Decode also times the scalar reference codebook_linear_ref (one
// thread: it is not threaded), the loop every kmeans model ran before a SIMD path existed for
// the CPU. The variants alternate within each of 7 rounds; medians in microseconds per call, with
// the build's codebook path (avx512 | avx2 | scalar) and other processes' CPU load.
// --cpu-time times by this process's CPU time instead of the wall clock: with --threads 1 on a
// busy machine it leaves out the time other processes hold the core (the kernels' own cost).
// Usage: bench_codebook [--threads N] [--prefill T] [--bits 2,3,4,8] [--shape gate|down]
//        [--cpu-time]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <random>
#include <string>
#include <vector>

#include "compress/codebook.h"
#include "compress/quantize.h"
#include "engine/backend.h"
#include "engine/cpu_load.h"
#include "kernels/cpu/codebook.h"

using namespace minfer;
using Clock = std::chrono::steady_clock;

namespace {

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

bool g_cpu_time = false;  // --cpu-time

double now_us() {
  if (!g_cpu_time)
    return std::chrono::duration<double, std::micro>(Clock::now().time_since_epoch()).count();
  timespec ts;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return double(ts.tv_sec) * 1e6 + double(ts.tv_nsec) * 1e-3;
}

// Microseconds per call of f, over enough calls to fill ~20 ms (at least one).
template <class F>
double time_us(F&& f) {
  f();
  int n = 0;
  const double t0 = now_us();
  double us = 0;
  do {
    f();
    ++n;
    us = now_us() - t0;
  } while (us < 2e4);
  return us / n;
}

}  // namespace

int main(int argc, char** argv) {
  int threads = 2;
  int64_t prefill = 512;
  std::string bits_list = "2,3,4,5,6,8", shape = "gate";
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--threads") && i + 1 < argc)
      threads = std::atoi(argv[++i]);
    else if (!std::strcmp(argv[i], "--prefill") && i + 1 < argc)
      prefill = std::max(5, std::atoi(argv[++i]));
    else if (!std::strcmp(argv[i], "--bits") && i + 1 < argc)
      bits_list = argv[++i];
    else if (!std::strcmp(argv[i], "--shape") && i + 1 < argc)
      shape = argv[++i];
    else if (!std::strcmp(argv[i], "--cpu-time"))
      g_cpu_time = true;
    else {
      std::fprintf(stderr,
                   "usage: bench_codebook [--threads N] [--prefill T] [--bits 2,3,4,8] "
                   "[--shape gate|down] [--cpu-time]\n");
      return 2;
    }
  }
  if (shape != "gate" && shape != "down") {
    std::fprintf(stderr, "bench_codebook: --shape '%s': expected gate or down\n", shape.c_str());
    return 2;
  }
  std::vector<int> bits;
  for (size_t p = 0; p < bits_list.size();) {
    const size_t q = std::min(bits_list.find(',', p), bits_list.size());
    const int b = std::atoi(bits_list.substr(p, q - p).c_str());
    if (b < 2 || b > 8) {
      std::fprintf(stderr, "bench_codebook: --bits '%s': widths must be in 2..8\n",
                   bits_list.c_str());
      return 2;
    }
    bits.push_back(b);
    p = q + 1;
  }
  const int64_t N = shape == "gate" ? 1536 : 576, K = shape == "gate" ? 576 : 1536;

  std::mt19937 rng(1);
  std::normal_distribution<float> nd(0.f, 0.05f);
  Tensor w = Tensor::empty(DType::F32, {N, K});
  for (int64_t i = 0; i < N * K; ++i) w.data<float>()[i] = nd(rng);
  const Linear dense = make_dense("w", w, K, N);
  QuantSpec qs;
  qs.method = "int4";
  qs.group = 128;
  const Linear int4 = quantize_linear(dense, qs);
  std::vector<Linear> cbs;
  for (int b : bits) {
    CodebookSpec cs;
    cs.bits = b;
    cbs.push_back(quantize_codebook(dense, cs));
  }

  auto be = make_cpu_backend(threads);
  const int64_t T = prefill;
  Tensor x = be->alloc({T, K}), y = be->alloc({T, N});
  for (int64_t i = 0; i < T * K; ++i) x.data<float>()[i] = nd(rng) * 20.f;
  Tensor x1 = be->alloc({1, K}), y1 = be->alloc({1, N});
  std::memcpy(x1.data<float>(), x.data<float>(), size_t(K) * sizeof(float));

  const MachineLoad load = measure_machine_load(0.5);
  const size_t V = 2 + cbs.size();  // f32, int4, then each width
  std::vector<std::vector<double>> dec(V), pre(V), ref(cbs.size());
  auto lin = [&](size_t v) -> const Linear& { return v == 0 ? dense : v == 1 ? int4 : cbs[v - 2]; };
  for (int round = 0; round < 7; ++round)
    for (size_t v = 0; v < V; ++v) {
      dec[v].push_back(time_us([&] { be->linear(y1, x1, lin(v)); }));
      pre[v].push_back(time_us([&] { be->linear(y, x, lin(v)); }));
      if (v >= 2) {
        const Codebook& c = std::get<Codebook>(lin(v).repr);
        ref[v - 2].push_back(time_us(
            [&] { codebook_linear_ref(c, x1.data<float>(), 1, K, y1.data<float>(), N, K, N); }));
      }
    }

  std::printf(
      "codebook linear, N = %lld, K = %lld (SmolLM2 %s_proj), path %s, %d threads, %s time; other "
      "processes' load %.1f of %d cores, loadavg %.2f%s\n",
      (long long)N, (long long)K, shape.c_str(), codebook_linear_isa(), threads,
      g_cpu_time ? "CPU" : "wall", load.measured ? load.others_busy : -1.0, load.cpus,
      load.loadavg1, load.busy() ? ": BUSY MACHINE" : "");
  std::printf(
      "| weights | decode T=1 us | x f32 | prefill T=%lld us | x f32 | scalar ref T=1, 1 thread us "
      "|\n",
      (long long)T);
  std::printf("|---|---|---|---|---|---|\n");
  const double d0 = median(dec[0]), p0 = median(pre[0]);
  for (size_t v = 0; v < V; ++v) {
    const std::string name = v == 0   ? "f32"
                             : v == 1 ? "int4 g128"
                                      : "kmeans" + std::to_string(bits[v - 2]);
    const double d = median(dec[v]), p = median(pre[v]);
    if (v >= 2)
      std::printf("| %s | %.1f | %.2f | %.0f | %.2f | %.1f |\n", name.c_str(), d, d / d0, p, p / p0,
                  median(ref[v - 2]));
    else
      std::printf("| %s | %.1f | %.2f | %.0f | %.2f | |\n", name.c_str(), d, d / d0, p, p / p0);
  }
  return 0;
}
