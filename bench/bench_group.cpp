// make bench: one LLaMA layer's decode projections (SmolLM2-135M shapes: q 576, k 192, v 192,
// gate 1536, up 1536 from x [1, 576]) as separate ops against the op groups and fused ops of the
// CPU backend: q, k, v then gate, up, swiglu (6 ops, 5 pool dispatches) against linear_group
// (q·k·v) and linear_swiglu (gate·up + SiLU·mul) (2 dispatches). Both variants give the same
// bits (tests/test_quant.cpp); this measures only the time. Batches of the two alternate, median
// microseconds per layer step, with other processes' CPU load.
// Usage: bench_group [--threads N] [--loops N] [--format int8|int4]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "compress/quantize.h"
#include "engine/backend.h"
#include "engine/cpu_load.h"

using namespace minfer;
using Clock = std::chrono::steady_clock;

namespace {

Linear random_linear(const std::string& fmt, int64_t N, int64_t K, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.f, 0.05f);
  Tensor w = Tensor::empty(DType::F32, {N, K});
  for (int64_t i = 0; i < N * K; ++i) w.data<float>()[i] = nd(rng);
  QuantSpec s;
  s.method = fmt == "int4" ? "int4" : "int8";
  s.group = fmt == "int4" ? 128 : 0;
  return quantize_linear(make_dense("w", w, K, N), s);
}

}  // namespace

int main(int argc, char** argv) {
  int threads = 2, loops = 300;
  std::string fmt = "int8";
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--threads") && i + 1 < argc)
      threads = std::atoi(argv[++i]);
    else if (!std::strcmp(argv[i], "--loops") && i + 1 < argc)
      loops = std::max(1, std::atoi(argv[++i]));
    else if (!std::strcmp(argv[i], "--format") && i + 1 < argc)
      fmt = argv[++i];
    else {
      std::fprintf(stderr, "usage: bench_group [--threads N] [--loops N] [--format int8|int4]\n");
      return 2;
    }
  }
  if (fmt != "int8" && fmt != "int4") {
    std::fprintf(stderr, "bench_group: --format '%s': expected int8 or int4\n", fmt.c_str());
    return 2;
  }
  const int64_t C = 576, KV = 192, F = 1536;
  const Linear q = random_linear(fmt, C, C, 1), k = random_linear(fmt, KV, C, 2),
               v = random_linear(fmt, KV, C, 3), gate = random_linear(fmt, F, C, 4),
               up = random_linear(fmt, F, C, 5);
  auto be = make_cpu_backend(threads);
  Tensor x = be->alloc({1, C});
  for (int64_t i = 0; i < C; ++i) x.data<float>()[i] = float(i % 17) * 0.1f - 0.8f;
  Tensor yq = be->alloc({1, C}), yk = be->alloc({1, KV}), yv = be->alloc({1, KV}),
         yg = be->alloc({1, F}), yu = be->alloc({1, F});
  auto separate = [&] {
    be->linear(yq, x, q);
    be->linear(yk, x, k);
    be->linear(yv, x, v);
    be->linear(yg, x, gate);
    be->linear(yu, x, up);
    be->swiglu(yg, yg, yu);
  };
  auto fused = [&] {
    Tensor* ys[3] = {&yq, &yk, &yv};
    const Linear* ws[3] = {&q, &k, &v};
    be->linear_group(ys, ws, 3, x);
    be->linear_swiglu(yg, yu, x, gate, up);
  };
  const MachineLoad load = measure_machine_load(0.5);
  std::vector<double> ts, tf;
  auto time = [&](auto& f) {
    const auto t0 = Clock::now();
    for (int i = 0; i < loops; ++i) f();
    return std::chrono::duration<double, std::micro>(Clock::now() - t0).count() / loops;
  };
  separate();
  fused();
  for (int rep = 0; rep < 9; ++rep) {
    ts.push_back(time(separate));
    tf.push_back(time(fused));
  }
  std::vector<double> ratio;
  for (size_t i = 0; i < ts.size(); ++i) ratio.push_back(tf[i] / ts[i]);
  auto median = [](std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
  };
  std::printf(
      "%s layer projections (q,k,v,gate,up of SmolLM2-135M, T = 1), %d threads: separate ops "
      "%.1f us, groups + fused SiLU %.1f us, pairwise ratio %.3f (other processes' load %.1f of "
      "%d cores%s)\n",
      fmt.c_str(), threads, median(ts), median(tf), median(ratio),
      load.measured ? load.others_busy : -1.0, load.cpus, load.busy() ? ": BUSY MACHINE" : "");
  return 0;
}
