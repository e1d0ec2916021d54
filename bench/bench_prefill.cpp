// make bench: one LLaMA layer's prefill at SmolLM2-135M's shapes (x [T, 576]; q 576, k 192, v 192,
// o 576, gate 1536, up 1536, down 576 from 1536; attention of 9 query heads over 3 KV heads of 64
// dims, causal, T keys) on the CPU backend, the previous kernels against the new ones in one
// process: `old` = one threaded OpenBLAS sgemm per linear (MINFER_DENSE_PREFILL=blas) and one full
// [T, T] score matrix per head (MINFER_ATTN_PREFILL=heads); `new` = column tiles of
// single-threaded sgemm calls and causal attention in 64-row query blocks with the vectorized
// softmax (kernels/cpu/prefill_gemm.h). Batches of the two alternate; medians of the linears'
// and the attention's milliseconds per layer and of the pairwise ratios new / old, with other
// processes' CPU load before and after.
// Usage: bench_prefill [--threads N] [--tokens T] [--reps N] [--format f32|fp16|int8|int4]
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
#include "kernels/cpu/prefill_gemm.h"

using namespace minfer;
using Clock = std::chrono::steady_clock;

namespace {

Linear random_linear(const std::string& fmt, int64_t N, int64_t K, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.f, 0.05f);
  Tensor w = Tensor::empty(DType::F32, {N, K});
  for (int64_t i = 0; i < N * K; ++i) w.data<float>()[i] = nd(rng);
  Linear d = make_dense("w", w, K, N);
  if (fmt == "f32") return d;
  QuantSpec s;
  s.method = fmt;
  return quantize_linear(d, s);
}

Tensor random_act(int64_t T, int64_t C, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.f, 1.f);
  Tensor t = Tensor::empty(DType::F32, {T, C});
  for (int64_t i = 0; i < T * C; ++i) t.data<float>()[i] = nd(rng);
  return t;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  int threads = 2, reps = 9;
  int64_t T = 512;
  std::string fmt = "f32";
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--threads") && i + 1 < argc)
      threads = std::atoi(argv[++i]);
    else if (!std::strcmp(argv[i], "--tokens") && i + 1 < argc)
      T = std::max(16, std::atoi(argv[++i]));
    else if (!std::strcmp(argv[i], "--reps") && i + 1 < argc)
      reps = std::max(1, std::atoi(argv[++i]));
    else if (!std::strcmp(argv[i], "--format") && i + 1 < argc)
      fmt = argv[++i];
    else {
      std::fprintf(stderr,
                   "usage: bench_prefill [--threads N] [--tokens T] [--reps N] "
                   "[--format f32|fp16|int8|int4]\n");
      return 2;
    }
  }
  if (fmt != "f32" && fmt != "fp16" && fmt != "int8" && fmt != "int4") {
    std::fprintf(stderr, "bench_prefill: --format '%s': expected f32, fp16, int8 or int4\n",
                 fmt.c_str());
    return 2;
  }
  const int64_t C = 576, H = 9, Hkv = 3, D = 64, F = 1536;
  const Linear wq = random_linear(fmt, H * D, C, 1), wk = random_linear(fmt, Hkv * D, C, 2),
               wv = random_linear(fmt, Hkv * D, C, 3), wo = random_linear(fmt, C, H * D, 4),
               gate = random_linear(fmt, F, C, 5), up = random_linear(fmt, F, C, 6),
               down = random_linear(fmt, C, F, 7);
  auto be = make_cpu_backend(threads);
  const Tensor x = random_act(T, C, 8), q = random_act(T, H * D, 9), k = random_act(T, Hkv * D, 10),
               v = random_act(T, Hkv * D, 11), h = random_act(T, F, 12);
  Tensor yq = be->alloc({T, H * D}), yk = be->alloc({T, Hkv * D}), yv = be->alloc({T, Hkv * D}),
         yo = be->alloc({T, C}), yg = be->alloc({T, F}), yu = be->alloc({T, F}),
         yd = be->alloc({T, C}), att = be->alloc({T, H * D});
  const AttentionArgs aa{H, Hkv, D, 1, 0, true, nullptr, 0.f};
  auto linears = [&] {
    be->linear(yq, x, wq);
    be->linear(yk, x, wk);
    be->linear(yv, x, wv);
    be->linear(yo, q, wo);
    be->linear(yg, x, gate);
    be->linear(yu, x, up);
    be->linear(yd, h, down);
  };
  auto attention = [&] { be->attention(att, q, k, v, aa); };
  auto ms = [](auto&& f) {
    const auto t0 = Clock::now();
    f();
    return std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
  };
  auto use = [](bool fresh) {
    set_prefill_gemm_path(fresh ? PrefillGemm::Tiles : PrefillGemm::Blas);
    set_prefill_attention_path(fresh ? PrefillAttention::Blocks : PrefillAttention::Heads);
  };
  const MachineLoad before = measure_machine_load(0.5);
  for (bool fresh : {false, true}) {  // warm-up: buffers, OpenMP and OpenBLAS threads
    use(fresh);
    linears();
    attention();
  }
  std::vector<double> lo, ln, ao, an, rl, ra;
  for (int r = 0; r < reps; ++r) {
    // Alternate which variant goes first, so that a load change hits both alike.
    for (bool fresh : {r % 2 == 0, r % 2 != 0}) {
      use(fresh);
      const double tl = ms(linears), ta = ms(attention);
      (fresh ? ln : lo).push_back(tl);
      (fresh ? an : ao).push_back(ta);
    }
    rl.push_back(ln.back() / lo.back());
    ra.push_back(an.back() / ao.back());
  }
  const MachineLoad after = measure_machine_load(0.5);
  std::printf(
      "%s prefill layer, T = %lld, %d threads, median of %d alternated runs (ms):\n"
      "  linears   old %.2f  new %.2f  new/old %.3f\n"
      "  attention old %.2f  new %.2f  new/old %.3f\n"
      "other processes' load: %.1f (before) and %.1f (after) of %d cores, load average %.1f%s\n",
      fmt.c_str(), (long long)T, threads, reps, median(lo), median(ln), median(rl), median(ao),
      median(an), median(ra), before.measured ? before.others_busy : -1.0,
      after.measured ? after.others_busy : -1.0, before.cpus, after.loadavg1,
      before.busy() || after.busy() ? ": BUSY MACHINE" : "");
  return 0;
}
