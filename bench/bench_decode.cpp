// make bench: the decode matrix-vector product (T = 1) per weight format at SmolLM2-135M's shapes
// (q/o 576x576, gate/up 576 -> 1536, down 1536 -> 576, the tied LM head 576 -> 49152), in two
// regimes:
//   hot   one matrix called again and again: its bytes stay in cache (the head excepted, 28 MB
//         and more), so the figure is the kernel's arithmetic speed;
//   dram  each call reads a different copy of the matrix (copies totalling >= 128 MB, four
//         times this machine's L3), as a model's decode step does: the figure is bound by DRAM.
// Per row: µs per call (median over every call of several passes, robust to a shared machine's
// preemptions), GB/s of weight bytes read, and that as a share of the read bandwidth measured
// at the start (a 256 MB sum, one load per cache line: the decode roof).
// --ab: for formats with the 8-bit-activation path (kernels/cpu/quant.h, quantized_linear_q8)
// A = the default path and B = f32 activations (MINFER_QUANT_ACT=f32), interleaved in rounds
// (A, B, A, B, ...) so that a change in the machine's load hits both; the ratio B / A of their
// medians is printed (> 1: A faster).
// Weights go through the backend's upload first, as a model's do (Quantized rows interleaved by 4).
// Usage: bench_decode [threads] [--ab] [--quick]. Prints the load average before and after.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "compress/quantize.h"
#include "engine/backend.h"
#include "kernels/cpu/quant.h"

using namespace minfer;
using Clock = std::chrono::steady_clock;

namespace {

std::string loadavg() {
  std::ifstream f("/proc/loadavg");
  std::string a, b, c;
  f >> a >> b >> c;
  return a + " " + b + " " + c;
}

// Read bandwidth now: the best of 3 sums over 256 MB, one load per cache line.
double read_gbps(int threads) {
  const size_t n = size_t(256) << 20 >> 2;
  std::vector<float> buf(n, 1.0f);
  volatile double sink = 0;
  double best = 1e30;
  for (int rep = 0; rep < 4; ++rep) {
    const auto t0 = Clock::now();
    double s = 0;
#pragma omp parallel for reduction(+ : s) num_threads(threads)
    for (size_t i = 0; i < n; i += 16) s += buf[i];
    sink = sink + s;
    if (rep > 0) best = std::min(best, std::chrono::duration<double>(Clock::now() - t0).count());
  }
  return double(n) * 4 / best / 1e9;
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
  QuantSpec asym = s("int4", 128), asym32 = s("int4", 32), dq = s("nf4", 64);
  asym.asymmetric = true;
  asym32.asymmetric = true;
  dq.double_quant = true;
  return {{"f32", s("f32")},           {"fp16", s("fp16")},
          {"int8 per-row", s("int8")}, {"int4 g128", s("int4", 128)},
          {"int4 g128 asym", asym},    {"int4 g32", s("int4", 32)},
          {"int4 g32 asym", asym32},   {"nf4 b64", s("nf4", 64)},
          {"nf4 b64 dq", dq}};
}

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

// Median µs of one call over `passes` passes through `mats` (each call on the next matrix).
double median_us(Backend& be, const std::vector<Linear>& mats, const Tensor& x, Tensor& y,
                 int passes) {
  std::vector<double> t;
  t.reserve(mats.size() * size_t(passes));
  for (int p = 0; p < passes; ++p)
    for (const Linear& m : mats) {
      const auto t0 = Clock::now();
      be.linear(y, x, m);
      t.push_back(std::chrono::duration<double>(Clock::now() - t0).count() * 1e6);
    }
  std::nth_element(t.begin(), t.begin() + t.size() / 2, t.end());
  return t[t.size() / 2];
}

struct Timing {
  double a_us = 0, b_us = 0;  // b: the f32-activation path (--ab), else 0
};

// A (default path) and, with ab, B (f32 activations) interleaved over `rounds` rounds; medians.
Timing time_ab(Backend& be, const std::vector<Linear>& mats, const Tensor& x, Tensor& y, bool ab,
               int rounds, int passes) {
  std::vector<double> a, b;
  const QuantActPath saved = quantized_act_path();
  for (int r = 0; r < rounds; ++r) {
    set_quantized_act_path(saved);
    a.push_back(median_us(be, mats, x, y, passes));
    if (ab) {
      set_quantized_act_path(QuantActPath::F32);
      b.push_back(median_us(be, mats, x, y, passes));
    }
  }
  set_quantized_act_path(saved);
  auto med = [](std::vector<double>& v) {
    std::sort(v.begin(), v.end());
    return v.empty() ? 0.0 : v[v.size() / 2];
  };
  return {med(a), med(b)};
}

}  // namespace

int main(int argc, char** argv) {
  int threads = default_threads();
  bool ab = false, quick = false;
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--ab"))
      ab = true;
    else if (!std::strcmp(argv[i], "--quick"))
      quick = true;
    else if (argv[i][0] >= '0' && argv[i][0] <= '9')
      threads = std::atoi(argv[i]);
    else {
      std::fprintf(stderr, "usage: bench_decode [threads] [--ab] [--quick]\n");
      return 2;
    }
  }
  try {
    auto be = make_cpu_backend(threads);
    const double bw = read_gbps(be->threads());
    std::printf(
        "# decode gemv (T = 1): kernel path %s, %d threads, load average %s\n"
        "read bandwidth now: %.1f GB/s (256 MB, one load per cache line)\n",
        quantized_linear_isa(), be->threads(), loadavg().c_str(), bw);
    struct Shape {
      int64_t K, N;
    };
    const int rounds = quick ? 3 : 7;
    for (Shape sh : {Shape{576, 576}, Shape{576, 1536}, Shape{1536, 576}, Shape{576, 49152}}) {
      const int64_t K = sh.K, N = sh.N;
      std::mt19937 rng(uint32_t(K * 131 + N));
      std::normal_distribution<float> nd(0.f, 0.02f);
      Tensor w = Tensor::empty(DType::F32, {N, K});
      for (int64_t i = 0; i < w.numel(); ++i) w.data<float>()[i] = nd(rng);
      const Linear dense = make_dense("w", w, K, N);
      Tensor x = Tensor::empty(DType::F32, {1, K}), y = Tensor::empty(DType::F32, {1, N});
      for (int64_t k = 0; k < K; ++k) x.data<float>()[k] = nd(rng) * 50;
      std::printf("\n### in %lld x out %lld\n\n", (long long)K, (long long)N);
      std::printf(
          "| format | MB | hot µs | hot GB/s | dram µs | dram GB/s | dram %% of %.1f GB/s |%s\n",
          bw, ab ? " hot f32-act / default | dram f32-act / default |" : "");
      std::printf("|---|---:|---:|---:|---:|---:|---:|%s\n", ab ? "---:|---:|" : "");
      for (const Fmt& f : formats()) {
        // As a model runs it: through the backend's upload (Quantized rows interleaved by 4 where
        // the kernels read that layout; MINFER_QUANT_REPACK=0 keeps the row layout, for an A/B).
        Linear l = quantize_linear(dense, f.spec);
        be->upload(l);
        const Quantized* q = std::get_if<Quantized>(&l.repr);
        const bool has_ab = ab && q && quantized_has_q8_path(*q, K);
        const double bytes = double(l.weight_bytes());
        // hot: one matrix, enough calls for ~20 ms per pass.
        std::vector<Linear> hot(size_t(std::clamp<int64_t>(int64_t(2e8 / bytes), 4, 4096)), l);
        const Timing th = time_ab(*be, hot, x, y, has_ab, rounds, 1);
        hot.clear();
        const int64_t ncopy = std::min<int64_t>(1024, int64_t(128e6 / bytes) + 1);
        std::vector<Linear> cold;
        cold.reserve(size_t(ncopy));
        cold.push_back(l);
        for (int64_t i = 1; i < ncopy; ++i) cold.push_back(deep_copy(l));
        const Timing td = time_ab(*be, cold, x, y, has_ab, rounds, quick ? 1 : 2);
        std::printf("| %s | %.2f | %.1f | %.1f | %.1f | %.1f | %.0f %% |", f.label, bytes / 1e6,
                    th.a_us, bytes / th.a_us / 1e3, td.a_us, bytes / td.a_us / 1e3,
                    100 * bytes / td.a_us / 1e3 / bw);
        if (ab) {
          if (has_ab)
            std::printf(" %.2f | %.2f |", th.b_us / th.a_us, td.b_us / td.a_us);
          else
            std::printf(" - | - |");
        }
        std::printf("\n");
        std::fflush(stdout);
      }
    }
    std::printf("\nload average at the end: %s\n", loadavg().c_str());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
