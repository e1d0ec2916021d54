// make bench: the decode matrix-vector product (T = 1) of the GGML block formats (GGUF weights
// run as stored; kernels/cpu/ggml.h) at SmolLM2-135M's shapes (q/o 576x576, gate/up 576 -> 1536,
// down 1536 -> 576, the tied LM head 576 -> 49152; K-quants only where K is a multiple of 256).
// Per type, interleaved in rounds so that a change in the machine's load hits every column:
//   q8     ggml_linear (the default: the integer q8 path on this build's SIMD, ggml_linear_isa)
//   ref    ggml_linear_q8_ref, the scalar reference of the same arithmetic (what a build without
//          SIMD kernels runs); skipped for the head (slow)
//   f32    ggml_linear_f32, dequantize 64-row tiles + sgemm (the prefill path) at T = 1
// One matrix called again and again (its bytes stay in cache, the head excepted): µs per call
// (median), GB/s of weight bytes, and the ratios ref / q8 and f32 / q8 (> 1: q8 faster).
// Weights: random code bytes with fp16 scales of a realistic size (the timing does not depend on
// the values). Usage: bench_ggml [threads] [--quick]. Prints the load average before and after.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "engine/backend.h"
#include "engine/gguf.h"
#include "engine/half.h"
#include "engine/thread_pool.h"
#include "kernels/cpu/ggml.h"

using namespace minfer;
using Clock = std::chrono::steady_clock;

namespace {

std::string loadavg() {
  std::ifstream f("/proc/loadavg");
  std::string a, b, c;
  f >> a >> b >> c;
  return a + " " + b + " " + c;
}

// N x K weights of `type`: random bytes, then every fp16 field (d, and the min / dmin) set to a
// random value of magnitude ~1e-3 (the byte offsets of ggml-common.h's block structs).
GgmlBlocks random_blocks(uint32_t type, int64_t N, int64_t K, std::mt19937& rng) {
  GgmlBlocks g;
  g.type = type;
  const int64_t rb = ggml_row_bytes(type, K), bs = int64_t(ggml_type_size(type));
  g.blocks = Tensor::empty(DType::U8, {N, rb});
  uint8_t* p = g.blocks.data<uint8_t>();
  for (int64_t i = 0; i < N * rb; ++i) p[i] = uint8_t(rng());
  std::vector<int> f16;
  switch (GgmlType(type)) {
    case GgmlType::Q4_1:
    case GgmlType::Q5_1:
    case GgmlType::Q4_K:
    case GgmlType::Q5_K:
      f16 = {0, 2};
      break;
    case GgmlType::Q2_K:
      f16 = {80, 82};
      break;
    case GgmlType::Q3_K:
      f16 = {108};
      break;
    case GgmlType::Q6_K:
      f16 = {208};
      break;
    default:
      f16 = {0};
  }
  std::uniform_real_distribution<float> u(0.5e-3f, 2e-3f);
  for (int64_t b = 0; b < N * rb / bs; ++b)
    for (int o : f16) {
      const uint16_t h = f32_to_f16(u(rng));
      std::memcpy(p + b * bs + o, &h, 2);
    }
  return g;
}

using Fn = void (*)(const GgmlBlocks&, const float*, int64_t, int64_t, float*, int64_t, int64_t,
                    int64_t);

// Median µs of one call over `calls` calls.
double median_us(Fn fn, const GgmlBlocks& g, const std::vector<float>& x, std::vector<float>& y,
                 int64_t K, int64_t N, int calls) {
  std::vector<double> t;
  for (int c = 0; c < calls; ++c) {
    const auto t0 = Clock::now();
    fn(g, x.data(), 1, K, y.data(), N, K, N);
    t.push_back(std::chrono::duration<double>(Clock::now() - t0).count() * 1e6);
  }
  std::nth_element(t.begin(), t.begin() + t.size() / 2, t.end());
  return t[t.size() / 2];
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0.0 : v[v.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  int threads = default_threads();
  bool quick = false;
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--quick"))
      quick = true;
    else if (argv[i][0] >= '0' && argv[i][0] <= '9')
      threads = std::atoi(argv[i]);
    else {
      std::fprintf(stderr, "usage: bench_ggml [threads] [--quick]\n");
      return 2;
    }
  }
  try {
    set_pool_threads(threads);
    std::printf("# GGML decode gemv (T = 1): q8 kernels %s, %d threads, load average %s\n",
                ggml_linear_isa(), pool_threads(), loadavg().c_str());
    const int rounds = quick ? 3 : 7;
    const uint32_t types[] = {2, 3, 6, 7, 8, 10, 11, 12, 13, 14};  // Q4_0 .. Q8_0, Q2_K .. Q6_K
    struct Shape {
      int64_t K, N;
    };
    for (Shape sh : {Shape{576, 576}, Shape{576, 1536}, Shape{1536, 576}, Shape{576, 49152}}) {
      const int64_t K = sh.K, N = sh.N;
      const bool head = N > 4096;
      std::printf("\n### in %lld x out %lld\n\n", (long long)K, (long long)N);
      std::printf("| type | MB | q8 µs | q8 GB/s | ref µs | f32 path µs | ref / q8 | f32 / q8 |\n");
      std::printf("|---|---:|---:|---:|---:|---:|---:|---:|\n");
      std::mt19937 rng(uint32_t(K * 131 + N));
      std::normal_distribution<float> nd(0.f, 1.f);
      std::vector<float> x(static_cast<size_t>(K)), y(static_cast<size_t>(N));
      for (float& v : x) v = nd(rng);
      for (uint32_t ty : types) {
        if (K % int64_t(ggml_block_size(ty)) != 0) continue;
        const GgmlBlocks g = random_blocks(ty, N, K, rng);
        const double bytes = double(g.blocks.nbytes());
        // ~10 ms of q8 calls per round (at ~10 GB/s), at least 5.
        const int calls = int(std::clamp<double>(1e8 / bytes, 5, 2000));
        std::vector<double> q8, ref, f32;
        for (int r = 0; r < rounds; ++r) {
          q8.push_back(median_us(ggml_linear, g, x, y, K, N, calls));
          if (!head) ref.push_back(median_us(ggml_linear_q8_ref, g, x, y, K, N, 3));
          f32.push_back(median_us(ggml_linear_f32, g, x, y, K, N, std::max(3, calls / 8)));
        }
        const double a = median(q8), b = median(ref), c = median(f32);
        std::printf("| %s | %.2f | %.1f | %.1f | ", ggml_type_name(ty).c_str(), bytes / 1e6, a,
                    bytes / a / 1e3);
        if (head)
          std::printf("- | %.1f | - | %.2f |\n", c, c / a);
        else
          std::printf("%.1f | %.1f | %.2f | %.2f |\n", b, c, b / a, c / a);
        std::fflush(stdout);
      }
    }
    // Several rows of x (T >= kGgmlGemmMinT takes the f32 path by default): the q8 path forced
    // (ggml_linear_q8) against the f32 path, gate/up's shape for the 32-weight types, down's for
    // the K-quants; ratio f32 / q8 (> 1: the q8 path would be faster at that T).
    std::printf("\n### several tokens: q8 path vs f32 path (µs per call, median)\n\n");
    std::printf(
        "| type | in x out | T | q8 µs | f32 path µs | f32 / q8 "
        "|\n|---|---|---:|---:|---:|---:|\n");
    for (uint32_t ty : types) {
      const int64_t K = ggml_block_size(ty) == 256 ? 1536 : 576, N = K == 576 ? 1536 : 576;
      std::mt19937 rng{ty};
      const GgmlBlocks g = random_blocks(ty, N, K, rng);
      for (int64_t T : {int64_t(4), int64_t(8), int64_t(16), int64_t(64)}) {
        std::normal_distribution<float> nd(0.f, 1.f);
        std::vector<float> x(static_cast<size_t>(T * K)), y(static_cast<size_t>(T * N));
        for (float& v : x) v = nd(rng);
        auto time = [&](Fn fn) {
          std::vector<double> t;
          for (int c = 0; c < (quick ? 5 : 15); ++c) {
            const auto t0 = Clock::now();
            fn(g, x.data(), T, K, y.data(), N, K, N);
            t.push_back(std::chrono::duration<double>(Clock::now() - t0).count() * 1e6);
          }
          return median(t);
        };
        std::vector<double> a, b;
        for (int r = 0; r < rounds; ++r) {
          a.push_back(time(ggml_linear_q8));
          b.push_back(time(ggml_linear_f32));
        }
        std::printf("| %s | %lld x %lld | %lld | %.1f | %.1f | %.2f |\n",
                    ggml_type_name(ty).c_str(), (long long)K, (long long)N, (long long)T, median(a),
                    median(b), median(b) / median(a));
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
