// make bench: SparseBitmask against dense at the same value format (f32, int8), decode (T = 1)
// and prefill (T = 128), over sparsity, on SmolLM2-135M's projection shapes. The decode crossover
// it prints is what compress/compress.cpp's sparse_storage_wins table holds (docs/pruning.md).
// Dense and sparse passes alternate; the speed-ups are medians of the per-pass ratios, so a
// shared machine's load hits both sides alike (the absolute times stay noisy).
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "compress/compress.h"
#include "engine/backend.h"

using namespace minfer;
using Clock = std::chrono::steady_clock;

namespace {

Linear random_dense(int64_t out, int64_t in, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.f, 0.05f);
  Tensor t = Tensor::empty(DType::F32, {out, in});
  for (int64_t i = 0; i < t.numel(); ++i) t.data<float>()[i] = nd(rng);
  return make_dense("model.layers.0.mlp.up_proj.weight", t, in, out);
}

// A copy that owns new storage (Linear copies share their tensors).
Linear deep_copy(const Linear& w) {
  std::vector<std::pair<std::string, Tensor>> ts;
  TensorSink sink{ts};
  const json meta = save_linear(w, w.name, sink);
  struct Src final : TensorSource {
    std::map<std::string, Tensor> m;
    bool has(const std::string& n) const override { return m.count(n) > 0; }
    Tensor get(const std::string& n) const override { return m.at(n); }
  } src;
  for (auto& [n, t] : ts) src.m[n] = t.clone();
  return load_linear(src, w.name, meta, w.in, w.out);
}

// Median seconds per call of y = x · Wᵀ with T rows for A and for B, and the median of the
// per-pass ratios A / B: passes of A and B alternate (A B, B A, ...) so that a change of machine
// load hits both alike. Decode streams weights from memory in a real model, so for T <= 4 the
// calls cycle through enough copies of each weight (>= 64 MB of them) that no copy is still in
// cache when its turn comes again; prefill is compute bound and uses 4 copies.
struct Pair {
  double a = 0, b = 0, ratio = 0;
};

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.size() % 2 ? v[v.size() / 2] : 0.5 * (v[v.size() / 2 - 1] + v[v.size() / 2]);
}

Pair time_pair(Backend& be, const Linear& A, const Linear& B, int64_t T, int reps) {
  auto copies_of = [&](const Linear& w) {
    const size_t n =
        T <= 4 ? std::max<size_t>(1, (size_t(64) << 20) / std::max<size_t>(1, w.weight_bytes()))
               : 4;
    std::vector<Linear> ws(n);
    for (Linear& c : ws) c = deep_copy(w);
    return ws;
  };
  const std::vector<Linear> wa = copies_of(A), wb = copies_of(B);
  Tensor x = Tensor::empty(DType::F32, {T, A.in}), y = Tensor::empty(DType::F32, {T, A.out});
  for (int64_t i = 0; i < x.numel(); ++i) x.data<float>()[i] = float(i % 13) * 0.01f - 0.05f;
  auto pass = [&](const std::vector<Linear>& ws) {
    const auto t0 = Clock::now();
    for (const Linear& c : ws) be.linear(y, x, c);
    return std::chrono::duration<double>(Clock::now() - t0).count() / double(ws.size());
  };
  pass(wa);
  pass(wb);
  std::vector<double> ta, tb, r;
  for (int i = 0; i < reps; ++i) {
    double a, b;
    if (i % 2) {
      b = pass(wb);
      a = pass(wa);
    } else {
      a = pass(wa);
      b = pass(wb);
    }
    ta.push_back(a);
    tb.push_back(b);
    r.push_back(a / b);
  }
  return {median(ta), median(tb), median(r)};
}

}  // namespace

int main(int argc, char** argv) {
  // Threads: argv[1], default 2 (the setting). On a loaded machine 1 thread gives the
  // steadier numbers (no waiting for a descheduled partner at the OpenMP barrier).
  const int threads = argc > 1 ? std::max(1, std::atoi(argv[1])) : 2;
  auto be = make_cpu_backend(threads);
  // SmolLM2-135M: d_model 576, d_ff 1536 (q/o 576x576, k/v 192x576, gate/up 1536x576, down
  // 576x1536). The FFN shapes hold 3/4 of the block weights.
  const std::pair<int64_t, int64_t> shapes[] = {{1536, 576}, {576, 1536}, {576, 576}};
  std::printf(
      "SparseBitmask vs dense, %d threads; medians of 11 alternating passes (decode, over >= 64 MB "
      "of weight copies) / 5 (prefill); ms per call; speedup = median of dense / sparse\n",
      threads);
  std::printf("%-10s %-6s %9s %8s %10s %10s %8s %10s %10s %8s\n", "shape", "values", "sparsity",
              "chosen", "dense T=1", "sparse T=1", "speedup", "dense T=128", "sparse T=128",
              "speedup");
  // argv[2]: value formats (comma separated, default f32,int8); argv[3]: sparsities in percent
  // (default 10,20,...,70).
  auto split = [](const char* s) {
    std::vector<std::string> v;
    std::string cur;
    for (const char* p = s; *p; ++p)
      if (*p == ',') {
        v.push_back(cur);
        cur.clear();
      } else {
        cur += *p;
      }
    if (!cur.empty()) v.push_back(cur);
    return v;
  };
  const std::vector<std::string> formats = split(argc > 2 ? argv[2] : "f32,int8");
  std::vector<double> sparsities;
  for (const std::string& p : split(argc > 3 ? argv[3] : "10,20,30,40,50,60,70"))
    sparsities.push_back(std::atof(p.c_str()) / 100.0);
  for (const std::string& vf : formats) {
    double crossover = -1;
    for (double p : sparsities) {
      double dec_dense = 0, dec_sparse = 0;
      for (auto [out, in] : shapes) {
        const Linear l = random_dense(out, in, uint32_t(out + in));
        const std::string prune = "magnitude-" + std::to_string(int(p * 100));
        const std::string chain = vf == "f32" ? prune : prune + "+" + vf;
        const Linear pruned = prune_linear(l, method_spec_from_name(prune).prune, nullptr);
        // Dense at the same value format, and the sparse format forced (whatever the table says).
        const Linear dense =
            vf == "f32" ? pruned : compress_linear(pruned, compress_spec_from_name(vf));
        const Tensor w = dequantize_weight(pruned);
        SparseBitmask sb = sparse_bitmask_from_dense(w.data<float>(), in, out, l.name);
        if (vf != "f32")
          sb.values = Box<Linear>(compress_linear(*sb.values, compress_spec_from_name(vf)));
        const Linear sparse = make_linear(l.name, in, out, std::move(sb));
        const Linear chosen = compress_linear(l, compress_spec_from_name(chain));
        const Pair dec = time_pair(*be, dense, sparse, 1, 11);
        const Pair pre = time_pair(*be, dense, sparse, 128, 5);
        const double d1 = dec.a, s1 = dec.b, d128 = pre.a, s128 = pre.b;
        dec_dense += d1;
        dec_sparse += s1;
        std::printf("%4lldx%-5lld %-6s %8.0f%% %8s %10.4f %10.4f %7.2fx %11.3f %12.3f %7.2fx\n",
                    (long long)out, (long long)in, vf.c_str(), p * 100,
                    std::holds_alternative<SparseBitmask>(chosen.repr) ? "sparse" : "dense",
                    d1 * 1e3, s1 * 1e3, dec.ratio, d128 * 1e3, s128 * 1e3, pre.ratio);
      }
      // The crossover: the lowest sparsity from which every measured one decodes >= 1.1x faster
      // sparse (summed over the shapes), so noise at one point does not make it.
      if (dec_dense >= 1.1 * dec_sparse) {
        if (crossover < 0) crossover = p;
      } else {
        crossover = -1;
      }
    }
    if (crossover < 0)
      std::printf("%s values: sparse decode never beat dense here\n", vf.c_str());
    else
      std::printf(
          "%s values: sparse decodes >= 1.1x faster (three shapes summed) from %.0f %% on\n",
          vf.c_str(), crossover * 100);
  }
  return 0;
}
