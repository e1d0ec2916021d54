// make bench: SparseBitmask and SparseCsr against dense at the same value format (f32, int8),
// decode (T = 1) and prefill (T = 128), over sparsity, on SmolLM2-135M's projection shapes. The
// decode crossovers it prints are what compress/compress.cpp's sparse_storage_wins and
// sparse_csr_storage_wins tables hold (docs/pruning.md). 2:4 rows (sparsity "2:4", in the default
// list): dense vs SparseBitmask vs Sparse24 (2-bit indices) on the same 2:4 weights, what
// sparse24_storage_wins holds. CSR rows (50-95 %, after the others in the default run; alone with
// `bench_sparse THREADS csr [FORMATS] [SPARSITIES]`): dense vs SparseBitmask vs SparseCsr.
//
// Dense and sparse passes alternate; the speed-ups are medians of the per-pass ratios, so a
// shared machine's load hits both sides alike (the absolute times stay noisy). Dense Quantized
// weights go through the backend's upload first (rows interleaved by 4, as the model runs them).
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "compress/compress.h"
#include "engine/backend.h"
#include "engine/thread_pool.h"
#include "kernels/cpu/sparse_csr.h"

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
    for (Linear& c : ws) {
      c = deep_copy(w);
      // Dense Quantized and Sparse24 weights as the model runs them: repacked at upload (rows
      // interleaved by 4 for the one-token kernels; Sparse24 int8 values in the run layout where
      // its kernel reads it, MINFER_SPARSE_REPACK=0 to time the row layout). SparseBitmask stays
      // in the format asked for (upload would turn a 2:4 bitmask into Sparse24).
      if (std::holds_alternative<Quantized>(c.repr) || std::holds_alternative<Sparse24>(c.repr))
        be.upload(c);
    }
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

// "a,b,c" -> {"a", "b", "c"}.
std::vector<std::string> split(const char* s) {
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
}

// SparseCsr (16-bit columns) against dense at the same value format and against SparseBitmask,
// the same pruned weights; decode (T = 1) and prefill (T = 128); the decode crossover printed is
// what compress/compress.cpp's sparse_csr_storage_wins holds.
void csr_rows(Backend& be_ref, int threads, const std::vector<std::string>& formats,
              const std::vector<int>& pcts) {
  Backend* be = &be_ref;
  std::printf(
      "SparseCsr vs dense and vs SparseBitmask, %d threads, csr decode kernel %s; medians of 11 "
      "alternating passes (decode) / 5 (prefill); ms per call; speedup = median of other / "
      "csr\n",
      threads, sparse_csr_linear_isa());
  std::printf("%-10s %-6s %9s %8s %10s %10s %10s %8s %8s %11s %11s %8s\n", "shape", "values",
              "sparsity", "chosen", "dense T=1", "bitmsk T=1", "csr T=1", "vs dense", "vs bitm",
              "dense T=128", "csr T=128", "vs dense");
  for (const std::string& vf : formats) {
    double crossover = -1;
    for (const int pct : pcts) {
      double dd = 0, dc = 0;
      for (auto [out, in] : {std::pair<int64_t, int64_t>{1536, 576}, {576, 1536}, {576, 576}}) {
        const Linear l = random_dense(out, in, uint32_t(out + in));
        const std::string prune = "magnitude-" + std::to_string(pct);
        const std::string chain = vf == "f32" ? prune : prune + "+" + vf;
        const Linear pruned = prune_linear(l, method_spec_from_name(prune).prune, nullptr);
        const Linear dense =
            vf == "f32" ? pruned : compress_linear(pruned, compress_spec_from_name(vf));
        CompressSpec bs = compress_spec_from_name(chain), cs = bs;
        bs.sparse_storage = CompressSpec::SparseStorage::Bitmask;
        cs.sparse_storage = CompressSpec::SparseStorage::Csr;
        const Linear bm = compress_linear(l, bs), csr = compress_linear(l, cs);
        const Linear chosen = compress_linear(l, compress_spec_from_name(chain));
        const Pair a = time_pair(*be, dense, csr, 1, 11);
        const Pair b = time_pair(*be, bm, csr, 1, 11);
        const Pair pre = time_pair(*be, dense, csr, 128, 5);
        dd += a.a;
        dc += a.b;
        const char* ch = std::holds_alternative<SparseCsr>(chosen.repr)       ? "csr"
                         : std::holds_alternative<SparseBitmask>(chosen.repr) ? "bitmask"
                                                                              : "dense";
        std::printf(
            "%4lldx%-5lld %-6s %8d%% %8s %10.4f %10.4f %10.4f %7.2fx %7.2fx %11.3f %11.3f "
            "%7.2fx\n",
            (long long)out, (long long)in, vf.c_str(), pct, ch, a.a * 1e3, b.a * 1e3, a.b * 1e3,
            a.ratio, b.ratio, pre.a * 1e3, pre.b * 1e3, pre.ratio);
      }
      // As for the bitmask rows: the lowest sparsity from which every measured one decodes
      // >= 1.1x faster as CSR (summed over the shapes).
      if (dd >= 1.1 * dc) {
        if (crossover < 0) crossover = pct / 100.0;
      } else {
        crossover = -1;
      }
    }
    if (crossover < 0)
      std::printf("%s values: CSR decodes >= 1.1x dense at no measured sparsity up to the last\n",
                  vf.c_str());
    else
      std::printf("%s values: CSR decodes >= 1.1x dense from %.0f %% sparsity on\n", vf.c_str(),
                  crossover * 100);
  }
}

}  // namespace

int main(int argc, char** argv) {
  // Threads: argv[1], default 2 (the setting). On a loaded machine 1 thread gives the
  // steadier numbers (no waiting for a descheduled partner at the OpenMP barrier).
  const int threads = argc > 1 ? std::max(1, std::atoi(argv[1])) : 2;
  auto be = make_cpu_backend(threads);
  // bench_sparse THREADS csr [FORMATS] [SPARSITIES]: the CSR rows alone (csr_rows).
  if (argc > 2 && std::string(argv[2]) == "csr") {
    std::vector<int> pcts;
    for (const std::string& p : split(argc > 4 ? argv[4] : "50,70,80,90,95"))
      pcts.push_back(std::atoi(p.c_str()));
    csr_rows(*be, threads, split(argc > 3 ? argv[3] : "f32,int8"), pcts);
    return 0;
  }
  // SmolLM2-135M: d_model 576, d_ff 1536 (q/o 576x576, k/v 192x576, gate/up 1536x576, down
  // 576x1536). The FFN shapes hold 3/4 of the block weights.
  const std::pair<int64_t, int64_t> shapes[] = {{1536, 576}, {576, 1536}, {576, 576}};
  // argv[2]: value formats (comma separated, default f32,int8); argv[3]: sparsities in percent
  // (default 10,20,...,70) and/or "2:4" (dense vs SparseBitmask vs Sparse24 on 2:4 weights).

  const std::vector<std::string> formats = split(argc > 2 ? argv[2] : "f32,int8");
  std::vector<double> sparsities;
  for (const std::string& p : split(argc > 3 ? argv[3] : "10,20,30,40,50,60,70,2:4"))
    if (p != "2:4") sparsities.push_back(std::atof(p.c_str()) / 100.0);
  // 2:4 rows ("2:4" among the sparsities): dense, SparseBitmask and Sparse24 (2-bit indices) at
  // the same value format, the same pruned weights.
  const std::vector<std::string> sp_names = split(argc > 3 ? argv[3] : "10,20,30,40,50,60,70,2:4");
  if (std::find(sp_names.begin(), sp_names.end(), "2:4") != sp_names.end()) {
    std::printf("%-10s %-6s %8s %10s %10s %10s %9s %9s %11s %11s %9s\n", "shape", "values",
                "pattern", "dense T=1", "bitmsk T=1", "s24 T=1", "s24/dense", "s24/bitm",
                "dense T=128", "s24 T=128", "s24/dense");
    for (const std::string& vf : formats)
      for (auto [out, in] : shapes) {
        const Linear l = random_dense(out, in, uint32_t(out + in));
        const Linear pruned =
            prune_linear(l, method_spec_from_name("magnitude-2:4").prune, nullptr);
        const Linear dense =
            vf == "f32" ? pruned : compress_linear(pruned, compress_spec_from_name(vf));
        const std::string chain = vf == "f32" ? "magnitude-2:4" : "magnitude-2:4+" + vf;
        CompressSpec bs = compress_spec_from_name(chain), ss = bs;
        bs.sparse_storage = CompressSpec::SparseStorage::Bitmask;
        ss.sparse_storage = CompressSpec::SparseStorage::Sparse;
        const Linear bitmask = compress_linear(l, bs), s24 = compress_linear(l, ss);
        const Pair a = time_pair(*be, dense, s24, 1, 11);
        const Pair b = time_pair(*be, bitmask, s24, 1, 11);
        const Pair pre = time_pair(*be, dense, s24, 128, 5);
        std::printf(
            "%4lldx%-5lld %-6s %8s %10.4f %10.4f %10.4f %8.2fx %8.2fx %11.3f %11.3f %8.2fx\n",
            (long long)out, (long long)in, vf.c_str(), "2:4", a.a * 1e3, b.a * 1e3, a.b * 1e3,
            a.ratio, b.ratio, pre.a * 1e3, pre.b * 1e3, pre.ratio);
      }
  }
  if (!sparsities.empty()) {
    std::printf(
        "SparseBitmask vs dense, %d threads; medians of 11 alternating passes (decode, over "
        ">= 64 MB of weight copies) / 5 (prefill); ms per call; speedup = median of dense / "
        "sparse\n",
        threads);
    std::printf("%-10s %-6s %9s %8s %10s %10s %8s %10s %10s %8s\n", "shape", "values", "sparsity",
                "chosen", "dense T=1", "sparse T=1", "speedup", "dense T=128", "sparse T=128",
                "speedup");
  }
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
                    std::holds_alternative<SparseBitmask>(chosen.repr) ? "bitmask"
                    : std::holds_alternative<SparseCsr>(chosen.repr)   ? "csr"
                                                                       : "dense",
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
    if (sparsities.empty()) continue;
    if (crossover < 0)
      std::printf("%s values: sparse decode never beat dense here\n", vf.c_str());
    else
      std::printf(
          "%s values: sparse decodes >= 1.1x faster (three shapes summed) from %.0f %% on\n",
          vf.c_str(), crossover * 100);
  }
  // The CSR rows with the default formats, over the sparsities where it can win.
  if (argc <= 2) csr_rows(*be, threads, formats, {50, 70, 80, 90, 95});
  return 0;
}
