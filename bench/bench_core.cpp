// make bench: dense f32 linear against raw OpenBLAS sgemm on GPT-2-124M shapes, read memory
// bandwidth, and forward tokens/s + peak RSS for random-init GPT-2-124M and SmolLM2-135M shapes.
// Each section runs in a forked child so its peak RSS is its own.
#include <cblas.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "app/model_hub.h"
#include "engine/backend.h"
#include "models/loader.h"
#include "models/model.h"

using namespace minfer;
using Clock = std::chrono::steady_clock;

namespace {

double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

// Best of `reps` timings of f (after one warm-up call).
double best_time(int reps, const std::function<void()>& f) {
  f();
  double best = 1e30;
  for (int i = 0; i < reps; ++i) {
    auto t0 = Clock::now();
    f();
    best = std::min(best, seconds_since(t0));
  }
  return best;
}

void run_child(const char* title, const std::function<void()>& body) {
  std::fflush(stdout);
  pid_t pid = fork();
  if (pid == 0) {
    try {
      body();
    } catch (const std::exception& e) {
      std::fprintf(stderr, "error: %s\n", e.what());
      _exit(1);
    }
    std::fflush(stdout);
    _exit(0);
  }
  int status = 0;
  struct rusage ru;
  wait4(pid, &status, 0, &ru);
  std::printf("  [%s] peak RSS %.1f MB%s\n\n", title, ru.ru_maxrss / 1024.0,
              WIFEXITED(status) && WEXITSTATUS(status) == 0 ? "" : "  (FAILED)");
}

void bench_linear(int threads) {
  auto be = make_cpu_backend(threads);
  std::printf("dense f32 linear vs raw OpenBLAS sgemm, T=512 rows, %d threads\n", threads);
  std::printf(
      "| shape (in x out) | ours GFLOP/s | sgemm GFLOP/s | ratio |\n|---|---:|---:|---:|\n");
  std::mt19937 rng(0);
  std::normal_distribution<float> nd(0, 0.02f);
  const int64_t T = 512;
  for (const auto& shape :
       {std::pair<int64_t, int64_t>{768, 768}, {768, 3072}, {3072, 768}, {768, 50257}}) {
    const int64_t K = shape.first, N = shape.second;
    Tensor w = Tensor::empty(DType::F32, {N, K});
    for (int64_t i = 0; i < w.numel(); ++i) w.data<float>()[i] = nd(rng);
    Tensor x = Tensor::empty(DType::F32, {T, K}), y = Tensor::empty(DType::F32, {T, N});
    for (int64_t i = 0; i < x.numel(); ++i) x.data<float>()[i] = nd(rng);
    Linear lin = make_dense("w", w, K, N);
    const int reps = N > 10000 ? 3 : 10;
    const double flop = 2.0 * T * K * N;
    const double ours = best_time(reps, [&] { be->linear(y, x, lin); });
    const double raw = best_time(reps, [&] {
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, int(T), int(N), int(K), 1.f,
                  x.data<float>(), int(K), w.data<float>(), int(K), 0.f, y.data<float>(), int(N));
    });
    std::printf("| %lld x %lld | %.1f | %.1f | %.2f |\n", (long long)K, (long long)N,
                flop / ours / 1e9, flop / raw / 1e9, raw / ours);
  }
}

void bench_bandwidth(int threads) {
  const size_t n = size_t(256) << 20 >> 2;  // 256 MB of floats
  std::vector<float> buf(n, 1.0f);
  double sum = 0;
  const double t = best_time(3, [&] {
    double s = 0;
#pragma omp parallel for reduction(+ : s) num_threads(threads)
    for (size_t i = 0; i < n; i += 16) s += buf[i] + buf[i + 8];  // touches every cache line
    sum += s;
  });
  std::printf("memory read bandwidth (%d threads, 256 MB): %.1f GB/s  (checksum %.0f)\n", threads,
              n * 4.0 / t / 1e9, sum > 0 ? 1.0 : 0.0);
}

void time_model(const char* title, Model* m, double load, int threads);

void bench_model(const char* title, ModelConfig c, int threads) {
  auto be = make_cpu_backend(threads);
  RandomSource src(42, 0.02f);
  auto t0 = Clock::now();
  auto m = build_model(c, src, *be);
  time_model(title, m.get(), seconds_since(t0), threads);
}

// The real SmolLM2-135M-Instruct (Q4_1 GGUF dequantized to f32 at load), when installed.
void bench_real(int threads) {
  std::string path;
  try {
    path = resolve_model("smollm2", /*fetch_if_missing=*/false);
  } catch (const std::exception& e) {
    std::printf("SmolLM2-135M-Instruct: skipped (%s; run `make models`)\n", e.what());
    return;
  }
  auto be = make_cpu_backend(threads);
  LoadedModel lm = open_named_model(path, *be, /*with_tokenizer=*/false);
  time_model("SmolLM2-135M-Instruct (GGUF Q4_1 -> f32)", lm.model.get(), lm.load_seconds, threads);
}

void time_model(const char* title, Model* m, double load, int threads) {
  const ModelConfig& c = m->config();
  const int64_t P = 512, ndec = 32;
  std::vector<int32_t> ids(size_t(P + ndec));
  for (size_t i = 0; i < ids.size(); ++i) ids[i] = int32_t((i * 7919) % size_t(c.vocab_size));
  RunState s = m->new_state(P + ndec, P, 1);
  // Prefill: best of 3.
  const double tp = best_time(2, [&] {
    s.reset();
    m->forward(s, ids.data(), P, false);
  });
  // Decode: ndec single tokens after the prompt.
  s.reset();
  m->forward(s, ids.data(), P, false);
  auto t1 = Clock::now();
  for (int64_t i = 0; i < ndec; ++i) m->forward(s, ids.data() + P + i, 1, false);
  const double td = seconds_since(t1) / double(ndec);
  const double wmb = m->weight_bytes() / 1e6;
  const double kvmb = double(2 * c.n_layers * (P + ndec) * c.n_kv_heads * c.head_dim * 4) / 1e6;
  std::printf("%s: %.1f MB f32 weights (init %.1f s), %d threads\n", title, wmb, load, threads);
  std::printf("  prefill %lld tokens: %.1f tok/s\n", (long long)P, double(P) / tp);
  std::printf("  decode (1 token at pos %lld): %.1f tok/s = %.1f GB/s of weight reads\n",
              (long long)P, 1.0 / td, wmb / 1e3 / td);
  std::printf("  RSS budget: weights + KV %.1f MB + 64 MB = %.1f MB\n", kvmb, wmb + kvmb + 64);
}

ModelConfig gpt2_124m() {
  ModelConfig c;
  c.arch = Arch::GPT2;
  c.model_type = "gpt2";
  c.vocab_size = 50257, c.hidden = 768, c.n_layers = 12, c.n_heads = 12, c.n_kv_heads = 12;
  c.head_dim = 64, c.ffn = 3072, c.max_pos = 1024, c.act = Act::GeluTanh, c.norm = Norm::LayerNorm;
  c.tie_embeddings = true, c.attn_bias = c.mlp_bias = true;
  return c;
}

ModelConfig smollm2_135m() {
  ModelConfig c;
  c.arch = Arch::Llama;
  c.model_type = "llama";
  c.vocab_size = 49152, c.hidden = 576, c.n_layers = 30, c.n_heads = 9, c.n_kv_heads = 3;
  c.head_dim = 64, c.ffn = 1536, c.max_pos = 8192, c.rope_theta = 100000.f;
  c.tie_embeddings = true;
  return c;
}

}  // namespace

int main(int argc, char** argv) {
  const int threads = argc > 1 ? std::atoi(argv[1]) : default_threads();
  std::printf("# minfer core benchmark (%d threads)\n\n", threads);
  run_child("bandwidth", [&] { bench_bandwidth(threads); });
  run_child("linear", [&] { bench_linear(threads); });
  run_child("gpt2-124m",
            [&] { bench_model("GPT-2 124M (random init, f32)", gpt2_124m(), threads); });
  run_child("smollm2-135m shape",
            [&] { bench_model("SmolLM2-135M shape (random init, f32)", smollm2_135m(), threads); });
  run_child("smollm2-135m real", [&] { bench_real(threads); });
  std::printf(
      "reference on this 2-core machine (llama.cpp, SmolLM2-135M shape, f32): "
      "prefill 371 tok/s, decode 60 tok/s\n");
  return 0;
}
