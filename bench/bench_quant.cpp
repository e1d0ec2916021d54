// make bench: quantized linear kernels against dense f32 / f16 on SmolLM2-135M's matrix shapes,
// including the activation-quantized W8A8 (dynamic per-token scales) and LLM.int8() (without and
// with two outlier features in the input), whose prefill is integer GEMM: GFLOP/s there counts
// int8 operations (GOP/s), against sgemm's f32 GFLOP/s in the f32 row.
//   decode  (T = 1):   ms per call and GB/s of weight bytes read. Each call reads a different copy
//                      of the matrix (copies totalling >= 96 MB, more than the L3), as a model pass
//                      does, so the number is DRAM bandwidth, not cache bandwidth.
//   prefill (T = 512): ms per call and GFLOP/s (2 T K N / time) on one cache-warm matrix.
// Decode times are the median over all calls (see below), prefill times the best of a few runs.
// Last section: a whole SmolLM2-135M-shaped model (random weights) converted per format, decode
// tok/s (64 single-token forwards after a 16-token prompt, best of a few runs) with the GB/s of
// weight bytes it reads per token, and prefill tok/s of a 512-token prompt.
// Usage: bench_quant [threads] [--quick] [--model-only[=int8,nf4,...]]. The machine may be
// shared: the load average is printed.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "compress/compress.h"
#include "compress/quantize.h"
#include "engine/backend.h"
#include "kernels/cpu/quant.h"
#include "models/model.h"

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
void deep_copy_q(Quantized& q) {
  q.codes = copy_of(q.codes);
  q.scales = copy_of(q.scales);
  q.zeros = copy_of(q.zeros);
  q.scale_codes = copy_of(q.scale_codes);
  q.scale_scales = copy_of(q.scale_scales);
}
Linear deep_copy(const Linear& l) {
  Linear c = l;
  if (auto* d = std::get_if<Dense>(&c.repr)) {
    d->w = copy_of(d->w);
  } else if (auto* q = std::get_if<Quantized>(&c.repr)) {
    deep_copy_q(*q);
  } else if (auto* a = std::get_if<W8A8>(&c.repr)) {
    deep_copy_q(a->w);
  } else {
    auto& o = std::get<Int8WithOutliers>(c.repr);
    deep_copy_q(o.w);
    o.outlier_cols = copy_of(o.outlier_cols);
    o.outlier_w = copy_of(o.outlier_w);
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

// act: 0 = quantize_linear(spec), 1 = W8A8 dynamic, 2 = LLM.int8(), 3 = LLM.int8() with two
// input features at |x| = 8 (> the 6.0 threshold) in every 4th token, so the f32 outlier path runs.
struct Fmt {
  const char* label;
  QuantSpec spec;
  int act = 0;
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
  return {{"f32 (dense)", s("f32")},     {"f16 (dense)", s("fp16")},
          {"int8 per-row", s("int8")},   {"int4 g32", s("int4", 32)},
          {"int4 g128", s("int4", 128)}, {"int4 g128 asym", asym},
          {"nf4 b64", s("nf4", 64)},     {"nf4 b64 dq", dq},
          {"ternary", s("ternary")},     {"binary", s("binary")},
          {"w8a8 dynamic", {}, 1},       {"llm-int8", {}, 2},
          {"llm-int8 2 outliers", {}, 3}};
}

// Prefill ms per format summed over a SmolLM2 layer's linears (count = matrices of the shape).
std::map<std::string, double> prefill_ms;

void bench_shape(Backend& be, int64_t K, int64_t N, int count, bool quick) {
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
  // The same input with two outlier features (LLM.int8()'s f32 path).
  Tensor xo = xp.clone(), x1o = x1.clone();
  for (int64_t t = 0; t < TP; t += 4)
    for (int64_t k : {int64_t(3), K / 2}) xo.data<float>()[t * K + k] = (t & 4) ? -8.f : 8.f;
  std::memcpy(x1o.data<float>(), xo.data<float>(), size_t(K) * 4);
  for (const Fmt& f : formats()) {
    const Linear l = f.act == 1   ? quantize_w8a8(dense, ActScale::Dynamic)
                     : f.act >= 2 ? quantize_llm_int8(dense)
                                  : quantize_linear(dense, f.spec);
    const Tensor& xd = f.act == 3 ? x1o : x1;
    const Tensor& xpre = f.act == 3 ? xo : xp;
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
        be.linear(y1, xd, c);
        times.push_back(std::chrono::duration<double>(Clock::now() - t0).count());
      }
    std::nth_element(times.begin(), times.begin() + times.size() / 2, times.end());
    const double dec = times[times.size() / 2];
    copies.clear();
    const double pre = best_time(quick ? 1 : 3, [&] { be.linear(yp, xpre, l); });
    prefill_ms[f.label] += pre * 1e3 * double(count);
    if (f32_dec == 0) f32_dec = dec, f32_pre = pre;
    const double flop = 2.0 * double(TP) * double(K) * double(N);
    std::printf("| %s | %.3f | %.2f | %.4f | %.1f | %.2f | %.2f | %.1f | %.2f |\n", f.label,
                bits_per_weight(l), bytes / 1e6, dec * 1e3, bytes / dec / 1e9, f32_dec / dec,
                pre * 1e3, flop / pre / 1e9, f32_pre / pre);
    std::fflush(stdout);
  }
}

// True when `list` (comma separated) is empty or names `m`.
bool listed(const std::string& list, const std::string& m) {
  if (list.empty()) return true;
  for (size_t p = 0; p <= list.size();) {
    const size_t e = std::min(list.find(',', p), list.size());
    if (list.compare(p, e - p, m) == 0 && e - p == m.size()) return true;
    p = e + 1;
  }
  return false;
}

ModelConfig smollm2_shape() {
  ModelConfig c;
  c.arch = Arch::Llama;
  c.model_type = "llama";
  c.vocab_size = 49152, c.hidden = 576, c.n_layers = 30, c.n_heads = 9, c.n_kv_heads = 3;
  c.head_dim = 64, c.ffn = 1536, c.max_pos = 8192, c.rope_theta = 100000.f;
  c.tie_embeddings = true;
  return c;
}

// Whole-model decode and prefill per compression method (compress_model's defaults: the tied
// LM head becomes int8 per channel for the integer methods, the embedding table fp16).
// GB/s = bytes of every Linear (the head included, the embedding table not: decode reads one
// row of it) per decode step.
void bench_model(int threads, bool quick, const std::string& only) {
  const ModelConfig c = smollm2_shape();
  const int64_t P = 16, ndec = 64, PP = 512;
  std::vector<int32_t> ids(static_cast<size_t>(PP));
  for (size_t i = 0; i < ids.size(); ++i) ids[i] = int32_t((i * 7919) % size_t(c.vocab_size));
  std::printf(
      "\n### SmolLM2-135M shape (random weights): decode tok/s and GB/s per format, prefill 512 "
      "tok/s (%d threads)\n\n",
      threads);
  std::printf(
      "| format | linear MB / token | decode tok/s (best) | decode tok/s (median) | decode GB/s | "
      "prefill 512 tok/s | load |\n|---|---:|---:|---:|---:|---:|---|\n");
  for (const char* method : {"f32", "int8", "int4", "nf4", "nf4-dq", "ternary", "binary"}) {
    if (!listed(only, method)) continue;
    auto be = make_cpu_backend(threads);
    RandomSource src(42, 0.02f);
    auto m = build_model(c, src, *be);
    if (std::string(method) != "f32")
      compress_model(*m, compress_spec_from_name(method), nullptr, false);
    double bytes = 0;
    for (const Linear* w : m->linears()) bytes += double(w->weight_bytes());
    RunState s = m->new_state(PP + 8, PP, 1);
    std::vector<double> rates;
    for (int rep = 0; rep < (quick ? 2 : 5); ++rep) {
      s.reset();
      m->forward(s, ids.data(), P, false);
      const auto t0 = Clock::now();
      for (int64_t i = 0; i < ndec; ++i) m->forward(s, ids.data() + P + i, 1, false);
      rates.push_back(double(ndec) / std::chrono::duration<double>(Clock::now() - t0).count());
    }
    std::sort(rates.begin(), rates.end());
    const double best = rates.back(), median = rates[rates.size() / 2];
    const double pre = best_time(quick ? 1 : 2, [&] {
      s.reset();
      m->forward(s, ids.data(), PP, false);
    });
    std::printf("| %s | %.1f | %.1f | %.1f | %.1f | %.0f | %s |\n", method, bytes / 1e6, best,
                median, bytes * best / 1e9, double(PP) / pre, loadavg().c_str());
    std::fflush(stdout);
  }
}

}  // namespace

int main(int argc, char** argv) {
  int threads = default_threads();
  bool quick = false, model_only = false;
  std::string only;  // --model-only=int8,int4: those formats only
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--quick") == 0)
      quick = true;
    else if (std::strncmp(argv[i], "--model-only", 12) == 0)
      model_only = true, only = argv[i][12] == '=' ? argv[i] + 13 : "";
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
    if (model_only) {
      bench_model(be->threads(), quick, only);
      return 0;
    }
    struct Shape {
      int64_t K, N;
      int count;  // matrices of this shape per layer
    };
    // SmolLM2-135M: q/o proj 576x576, k/v proj 576 -> 192, gate/up 576 -> 1536, down 1536 -> 576,
    // lm_head 576 -> 49152 (once per model, not per layer).
    for (Shape s : {Shape{576, 576, 2}, Shape{576, 192, 2}, Shape{576, 1536, 2},
                    Shape{1536, 576, 1}, Shape{576, 49152, 0}})
      bench_shape(*be, s.K, s.N, s.count, quick);
    // The linears of the 30 layers only (no attention, norms, embedding or lm_head): an upper
    // bound on a whole-model prefill of 512 tokens.
    std::printf(
        "\n### SmolLM2-135M prefill, 512 tokens, the 30 layers' linears only\n\n"
        "| format | ms | tok/s |\n|---|---:|---:|\n");
    for (const auto& [label, ms] : prefill_ms)
      std::printf("| %s | %.1f | %.0f |\n", label.c_str(), 30 * ms, 512 / (30 * ms * 1e-3));
    bench_model(be->threads(), quick, only);
    std::printf("\nload average at the end: %s\n", loadavg().c_str());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
