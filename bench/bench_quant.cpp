// make bench: quantized linear kernels against dense f32 / f16 on SmolLM2-135M's matrix shapes.
//   decode  (T = 1):   ms per call and GB/s of weight bytes read. Each call reads a different copy
//                      of the matrix (copies totalling >= 96 MB, more than the L3), as a model pass
//                      does, so the number is DRAM bandwidth, not cache bandwidth.
//   prefill (T = 512): ms per call and GFLOP/s (2 T K N / time) on one cache-warm matrix.
// Decode times are the median over all calls (see below), prefill times the best of a few runs.
// Usage: bench_quant [threads] [--quick]. The machine may be shared: the load average is printed.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "engine/backend.h"
#include "engine/quantize.h"
#include "kernels/cpu/quant.h"

using namespace minfer;
using Clock = std::chrono::steady_clock;

namespace {

double best_time(int reps, const std::function<void()>& f) {
  f();
  double best = 1e30;
  for (int i = 0; i < reps; ++i) {
    auto t0 = Clock::now();
    f();
    best = std::min(best, std::chrono::duration<double>(Clock::now() - t0).count());
  }
  return best;
}

std::string loadavg() {
  std::ifstream f("/proc/loadavg");
  std::string a, b, c;
  f >> a >> b >> c;
  return a + " " + b + " " + c;
}

// A deep copy of a Linear's weight tensors (so copies live at different addresses).
Tensor copy_of(const Tensor& t) {
  return t.defined() ? t.clone() : t;
}
Linear deep_copy(const Linear& l) {
  Linear c = l;
  if (auto* d = std::get_if<Dense>(&c.repr)) {
    d->w = copy_of(d->w);
  } else {
    auto& q = std::get<Quantized>(c.repr);
    q.codes = copy_of(q.codes);
    q.scales = copy_of(q.scales);
    q.zeros = copy_of(q.zeros);
    q.scale_codes = copy_of(q.scale_codes);
    q.scale_scales = copy_of(q.scale_scales);
  }
  return c;
}

// Streams 256 MB, touching every cache line: what DRAM delivers right now (the machine may be
// shared), the ceiling for decode GB/s.
double read_bandwidth(int threads) {
  const size_t n = size_t(256) << 20 >> 2;
  std::vector<float> buf(n, 1.0f);
  volatile double sink = 0;
  const double t = best_time(3, [&] {
    double s = 0;
#pragma omp parallel for reduction(+ : s) num_threads(threads)
    for (size_t i = 0; i < n; i += 16) s += buf[i];
    sink = sink + s;
  });
  return double(n) * 4 / t / 1e9;
}

struct Fmt {
  const char* label;
  QuantSpec spec;
};

std::vector<Fmt> formats() {
  auto s = [](const char* m, int g = 0) {
    QuantSpec q;
    q.method = m;
    q.group = g;
    return q;
  };
  QuantSpec asym = s("int4", 128), dq = s("nf4", 64);
  asym.asymmetric = true;
  dq.double_quant = true;
  return {{"f32 (dense)", s("f32")},     {"f16 (dense)", s("f16")},
          {"int8 per-row", s("int8")},   {"int4 g32", s("int4", 32)},
          {"int4 g128", s("int4", 128)}, {"int4 g128 asym", asym},
          {"nf4 b64", s("nf4", 64)},     {"nf4 b64 dq", dq},
          {"ternary", s("ternary")},     {"binary", s("binary")}};
}

void bench_shape(Backend& be, int64_t K, int64_t N, bool quick) {
  std::mt19937 rng(uint32_t(K * 131 + N));
  std::normal_distribution<float> nd(0.f, 0.02f);
  Tensor w = Tensor::empty(DType::F32, {N, K});
  for (int64_t i = 0; i < w.numel(); ++i) w.data<float>()[i] = nd(rng);
  const Linear dense = make_dense("w", w, K, N);
  const int64_t TP = 512;
  Tensor x1 = Tensor::empty(DType::F32, {1, K}), y1 = Tensor::empty(DType::F32, {1, N});
  Tensor xp = Tensor::empty(DType::F32, {TP, K}), yp = Tensor::empty(DType::F32, {TP, N});
  for (int64_t i = 0; i < xp.numel(); ++i) xp.data<float>()[i] = nd(rng) * 50;
  std::memcpy(x1.data<float>(), xp.data<float>(), size_t(K) * 4);

  std::printf("\n### in %lld x out %lld (T = 1 decode, T = %lld prefill, %d threads)\n\n",
              (long long)K, (long long)N, (long long)TP, be.threads());
  std::printf(
      "| format | bits/w | MB | decode ms | decode GB/s | decode x f32 | prefill ms | "
      "prefill GFLOP/s | prefill x f32 |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|\n");
  double f32_dec = 0, f32_pre = 0;
  for (const Fmt& f : formats()) {
    const Linear l = quantize_linear(dense, f.spec);
    const double bytes = double(l.weight_bytes());
    // Decode: rotate over copies so every call streams its weights from DRAM.
    const int64_t ncopy = std::min<int64_t>(512, std::max<int64_t>(1, int64_t(96e6 / bytes) + 1));
    std::vector<Linear> copies;
    copies.reserve(size_t(ncopy));
    copies.push_back(l);
    for (int64_t i = 1; i < ncopy; ++i) copies.push_back(deep_copy(l));
    // Median over every call of several passes: robust to the preemptions of a shared machine
    // (one descheduled OpenMP thread stalls a whole parallel region for a time slice).
    const int passes = quick ? 2 : 6;
    std::vector<double> times;
    for (int p = 0; p < passes; ++p)
      for (const Linear& c : copies) {
        const auto t0 = Clock::now();
        be.linear(y1, x1, c);
        times.push_back(std::chrono::duration<double>(Clock::now() - t0).count());
      }
    std::nth_element(times.begin(), times.begin() + times.size() / 2, times.end());
    const double dec = times[times.size() / 2];
    copies.clear();
    const double pre = best_time(quick ? 1 : 3, [&] { be.linear(yp, xp, l); });
    if (f32_dec == 0) f32_dec = dec, f32_pre = pre;
    const double flop = 2.0 * double(TP) * double(K) * double(N);
    std::printf("| %s | %.3f | %.2f | %.4f | %.1f | %.2f | %.2f | %.1f | %.2f |\n", f.label,
                bits_per_weight(l), bytes / 1e6, dec * 1e3, bytes / dec / 1e9, f32_dec / dec,
                pre * 1e3, flop / pre / 1e9, f32_pre / pre);
    std::fflush(stdout);
  }
}

}  // namespace

int main(int argc, char** argv) {
  int threads = default_threads();
  bool quick = false;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--quick") == 0)
      quick = true;
    else
      threads = std::atoi(argv[i]);
  }
  try {
    auto be = make_cpu_backend(threads);
    std::printf("# quantized linear benchmark: kernel path %s, %d threads, load average %s\n",
                quantized_linear_isa(), be->threads(), loadavg().c_str());
    std::printf(
        "memory read bandwidth now (%d threads, 256 MB, one load per cache line): %.1f GB/s\n",
        be->threads(), read_bandwidth(be->threads()));
    struct Shape {
      int64_t K, N;
    };
    // SmolLM2-135M: q/o proj 576x576, gate/up 576 -> 1536, down 1536 -> 576, lm_head 576 -> 49152.
    for (Shape s : {Shape{576, 576}, Shape{576, 1536}, Shape{1536, 576}, Shape{576, 49152}})
      bench_shape(*be, s.K, s.N, quick);
    std::printf("\nload average at the end: %s\n", loadavg().c_str());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
