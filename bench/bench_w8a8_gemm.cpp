// The W8A8 integer GEMM (w8a8_linear: per-token int8 activations x int8 weights, exact int32
// sums) against OpenBLAS sgemm on SmolLM2-135M's linear shapes at T tokens, one thread by default
// (OMP_NUM_THREADS). Times are the thread's CPU time (CLOCK_THREAD_CPUTIME_ID), best of `reps`:
// on a shared machine wall time mostly measures the time slices other processes take, CPU time
// of a single-threaded call does not (cache contention still counts). GOP/s counts 2 T K N
// operations (int8 multiply-adds for W8A8, f32 FMAs for sgemm).
// Usage: bench_w8a8_gemm [T=512] [reps=6]. Prints the load average beside the figures.
#include <cblas.h>
#include <omp.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "compress/quantize.h"
#include "engine/backend.h"
#include "kernels/cpu/quant_act.h"

using namespace minfer;

namespace {

double cpu_seconds() {
  timespec ts;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return double(ts.tv_sec) + 1e-9 * double(ts.tv_nsec);
}

std::string loadavg() {
  std::ifstream f("/proc/loadavg");
  std::string a, b, c;
  f >> a >> b >> c;
  return a + " " + b + " " + c;
}

}  // namespace

int main(int argc, char** argv) {
  const int64_t T = argc > 1 ? std::atoll(argv[1]) : 512;
  const int reps = argc > 2 ? std::atoi(argv[2]) : 6;
  if (T < 1 || reps < 1) {
    std::fprintf(stderr, "usage: bench_w8a8_gemm [T >= 1] [reps >= 1]\n");
    return 1;
  }
  std::printf(
      "# W8A8 integer GEMM vs sgemm: path %s, %d thread(s), T = %lld, best of %d (thread "
      "CPU time), load %s\n\n",
      act_linear_isa(), omp_get_max_threads(), (long long)T, reps, loadavg().c_str());
  std::printf(
      "| in x out | per layer | w8a8 ms | w8a8 GOP/s | sgemm ms | sgemm GFLOP/s | w8a8 x sgemm "
      "|\n");
  std::printf("|---|---:|---:|---:|---:|---:|---:|\n");
  struct Shape {
    int64_t K, N;
    int count;  // matrices of this shape per layer (q, k, v, o, gate, up, down); 0: lm_head
  };
  std::mt19937 rng(1);
  std::normal_distribution<float> nd;
  double layer_w = 0, layer_f = 0;
  for (const Shape s : {Shape{576, 576, 2}, Shape{576, 192, 2}, Shape{576, 1536, 2},
                        Shape{1536, 576, 1}, Shape{576, 49152, 0}}) {
    std::vector<float> w(size_t(s.K * s.N)), x(size_t(T * s.K)), y(size_t(T * s.N));
    for (auto& v : w) v = nd(rng) * 0.05f;
    for (auto& v : x) v = nd(rng);
    Tensor t = Tensor::empty(DType::F32, {s.N, s.K});
    std::memcpy(t.data<float>(), w.data(), w.size() * 4);
    const Linear l = quantize_w8a8(make_dense("w", t, s.K, s.N), ActScale::Dynamic);
    const W8A8& q = std::get<W8A8>(l.repr);
    double bw = 1e30, bf = 1e30;
    const int nr = s.N > 10000 ? std::max(2, reps / 3) : reps;
    for (int r = 0; r < nr; ++r) {  // alternated, so that a load change hits both
      const double t0 = cpu_seconds();
      w8a8_linear(q, x.data(), T, s.K, y.data(), s.N, s.K, s.N);
      const double t1 = cpu_seconds();
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, int(T), int(s.N), int(s.K), 1.f,
                  x.data(), int(s.K), w.data(), int(s.K), 0.f, y.data(), int(s.N));
      const double t2 = cpu_seconds();
      bw = std::min(bw, t1 - t0);
      bf = std::min(bf, t2 - t1);
    }
    const double ops = 2.0 * double(T) * double(s.K) * double(s.N);
    std::printf("| %lld x %lld | %s | %.3f | %.1f | %.3f | %.1f | %.2f |\n", (long long)s.K,
                (long long)s.N, s.count ? std::to_string(s.count).c_str() : "lm_head", bw * 1e3,
                ops / bw * 1e-9, bf * 1e3, ops / bf * 1e-9, bf / bw);
    layer_w += s.count * bw;
    layer_f += s.count * bf;
  }
  std::printf("\none layer's 7 linears: w8a8 %.2f ms, sgemm %.2f ms (%.2fx); load at the end %s\n",
              layer_w * 1e3, layer_f * 1e3, layer_f / layer_w, loadavg().c_str());
  return 0;
}
