// make bench: SparseBitmask against dense at the same value format (f32, int8), decode (T = 1)
// and prefill (T = 128), over sparsity, on SmolLM2-135M's projection shapes. The decode crossover
// it prints is what compress/compress.cpp's sparse_storage_wins table holds (docs/pruning.md).
// 2:4 rows (sparsity "2:4", in the default list): dense vs SparseBitmask vs Sparse24 (2-bit
// indices) on the same 2:4 weights, what sparse24_storage_wins holds. `bench_sparse THREADS csr
// [50,70,90]`: CSR with 16-bit columns (a measured candidate, not a registered format) against
// SparseBitmask.
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

#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif

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

// ---- CSR with 16-bit column indices: a candidate measured here, not a registered format ----
// (docs/pruning.md: it reads (1 - p) * (2 + b/8) bytes per weight against the bitmask's 1/8 +
// (1 - p) b/8, more at every sparsity below 93.75 %, so it is kept only if its kernel wins.)
// Row n's kept values are vals[rowptr[n] .. rowptr[n + 1]) at inputs col[...]; int8 values are
// codes u (w = s_n (u - 128)), f32 values are stored as they are.
struct Csr {
  int64_t K = 0, N = 0;
  std::vector<int64_t> rowptr;  // [N + 1]
  std::vector<uint16_t> col;    // [nnz]
  std::vector<uint8_t> codes;   // int8: [nnz] (+ 32 bytes of slack for full-vector loads)
  std::vector<float> vals;      // f32: [nnz]
  std::vector<float> scales;    // int8: [N]
  bool i8 = false;
  size_t bytes() const {
    return rowptr.size() * 8 + col.size() * 2 +
           (i8 ? codes.size() + scales.size() * 4 : vals.size() * 4);
  }
};

// From a SparseBitmask (f32 or per-row int8 values): the same weights.
Csr csr_of(const Linear& l) {
  const SparseBitmask& sb = std::get<SparseBitmask>(l.repr);
  Csr c;
  c.K = l.in;
  c.N = l.out;
  const int64_t kb = sb.bitmask.dim(1);
  const uint8_t* m = sb.bitmask.data<uint8_t>();
  const Quantized* q = std::get_if<Quantized>(&sb.values->repr);
  c.i8 = q != nullptr;
  const Tensor dv = c.i8 ? Tensor() : std::get<Dense>(sb.values->repr).w;
  const int64_t kv = sb.values->in;
  c.rowptr.push_back(0);
  for (int64_t n = 0; n < l.out; ++n) {
    int64_t j = 0;
    for (int64_t k = 0; k < l.in; ++k)
      if ((m[n * kb + k / 8] >> (k % 8)) & 1) {
        c.col.push_back(uint16_t(k));
        if (c.i8)
          c.codes.push_back(q->codes.data<uint8_t>()[n * q->codes.dim(1) + j]);
        else
          c.vals.push_back(dv.data<float>()[n * kv + j]);
        ++j;
      }
    c.rowptr.push_back(int64_t(c.col.size()));
    if (c.i8) c.scales.push_back(q->scales.data<float>()[q->per_tensor ? 0 : n]);
  }
  c.col.resize(c.col.size() + 16, 0);  // slack: 16-wide loads past the last row stay inside
  c.codes.resize(c.codes.size() + 16, 128);
  c.vals.resize(c.vals.size() + 16, 0.f);
  return c;
}

// Scalar reference, T = 1.
void csr_ref(const Csr& c, const float* x, float* y) {
  for (int64_t n = 0; n < c.N; ++n) {
    float s = 0.f;
    for (int64_t i = c.rowptr[size_t(n)]; i < c.rowptr[size_t(n + 1)]; ++i)
      s += (c.i8 ? float(int(c.codes[size_t(i)]) - 128) : c.vals[size_t(i)]) * x[c.col[size_t(i)]];
    y[n] = c.i8 ? s * c.scales[size_t(n)] : s;
  }
}

// Decode, T = 1: AVX-512 (16 kept values per step: vpgatherdd of x at the 16 columns, the values
// widened to f32, one FMA) or AVX2 (8 per step, vgatherdps), rows over the thread pool; the
// scalar reference elsewhere.
void csr_decode(const Csr& c, const float* x, float* y) {
#if defined(__AVX512F__)
  parallel_for(c.N, c.K, int64_t(1) << 15, [&](int64_t n0, int64_t n1) {
    for (int64_t n = n0; n < n1; ++n) {
      const int64_t b = c.rowptr[size_t(n)], e = c.rowptr[size_t(n + 1)];
      __m512 acc = _mm512_setzero_ps();
      for (int64_t i = b; i < e; i += 16) {
        const __mmask16 mk = e - i >= 16 ? __mmask16(0xffff) : __mmask16((1u << (e - i)) - 1);
        const __m512i idx = _mm512_cvtepu16_epi32(
            _mm256_loadu_si256(reinterpret_cast<const __m256i*>(c.col.data() + i)));
        const __m512 xv = _mm512_mask_i32gather_ps(_mm512_setzero_ps(), mk, idx, x, 4);
        __m512 wv;
        if (c.i8)
          wv = _mm512_cvtepi32_ps(_mm512_sub_epi32(
              _mm512_cvtepu8_epi32(
                  _mm_loadu_si128(reinterpret_cast<const __m128i*>(c.codes.data() + i))),
              _mm512_set1_epi32(128)));
        else
          wv = _mm512_loadu_ps(c.vals.data() + i);
        acc = _mm512_fmadd_ps(_mm512_maskz_mov_ps(mk, wv), xv, acc);
      }
      const float s = _mm512_reduce_add_ps(acc);
      y[n] = c.i8 ? s * c.scales[size_t(n)] : s;
    }
  });
#elif defined(__AVX2__) && defined(__FMA__)
  // AVX2: 8 kept values per step (vgatherdps of x at the 8 columns under a lane mask).
  parallel_for(c.N, c.K, int64_t(1) << 15, [&](int64_t n0, int64_t n1) {
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    for (int64_t n = n0; n < n1; ++n) {
      const int64_t b = c.rowptr[size_t(n)], e = c.rowptr[size_t(n + 1)];
      __m256 acc = _mm256_setzero_ps();
      for (int64_t i = b; i < e; i += 8) {
        const __m256i mk =
            _mm256_cmpgt_epi32(_mm256_set1_epi32(int(std::min<int64_t>(8, e - i))), lane);
        const __m256i idx = _mm256_cvtepu16_epi32(
            _mm_loadu_si128(reinterpret_cast<const __m128i*>(c.col.data() + i)));
        const __m256 xv =
            _mm256_mask_i32gather_ps(_mm256_setzero_ps(), x, idx, _mm256_castsi256_ps(mk), 4);
        __m256 wv;
        if (c.i8)
          wv = _mm256_cvtepi32_ps(_mm256_sub_epi32(
              _mm256_cvtepu8_epi32(
                  _mm_loadl_epi64(reinterpret_cast<const __m128i*>(c.codes.data() + i))),
              _mm256_set1_epi32(128)));
        else
          wv = _mm256_loadu_ps(c.vals.data() + i);
        acc = _mm256_fmadd_ps(_mm256_and_ps(wv, _mm256_castsi256_ps(mk)), xv, acc);
      }
      __m128 h = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
      h = _mm_add_ps(h, _mm_movehl_ps(h, h));
      h = _mm_add_ss(h, _mm_movehdup_ps(h));
      const float s = _mm_cvtss_f32(h);
      y[n] = c.i8 ? s * c.scales[size_t(n)] : s;
    }
  });
#else
  csr_ref(c, x, y);
#endif
}

// CSR against SparseBitmask (same weights, same value format), T = 1, weights streamed from
// memory (>= 64 MB of copies each), alternating passes; returns {bitmask s, csr s, median ratio
// bitmask / csr}. Checks the CSR kernel against its scalar reference first.
Pair time_csr(Backend& be, const Linear& bm, int reps) {
  const Csr c0 = csr_of(bm);
  std::vector<float> x(size_t(bm.in)), y0(size_t(bm.out)), y1(size_t(bm.out));
  for (size_t i = 0; i < x.size(); ++i) x[i] = float(i % 13) * 0.01f - 0.05f;
  csr_ref(c0, x.data(), y0.data());
  csr_decode(c0, x.data(), y1.data());
  for (size_t i = 0; i < y0.size(); ++i)
    if (!(std::fabs(y0[i] - y1[i]) <= 1e-4f * (1.f + std::fabs(y0[i])))) {
      std::fprintf(stderr, "csr kernel disagrees with its reference at row %zu\n", i);
      std::exit(1);
    }
  const size_t nc = std::max<size_t>(1, (size_t(64) << 20) / c0.bytes());
  const size_t nb = std::max<size_t>(1, (size_t(64) << 20) / bm.weight_bytes());
  std::vector<Csr> cs(nc, c0);
  std::vector<Linear> bs(nb);
  for (Linear& b : bs) b = deep_copy(bm);
  Tensor xt = Tensor::empty(DType::F32, {1, bm.in}), yt = Tensor::empty(DType::F32, {1, bm.out});
  std::copy(x.begin(), x.end(), xt.data<float>());
  auto pass_b = [&] {
    const auto t0 = Clock::now();
    for (const Linear& b : bs) be.linear(yt, xt, b);
    return std::chrono::duration<double>(Clock::now() - t0).count() / double(bs.size());
  };
  auto pass_c = [&] {
    const auto t0 = Clock::now();
    for (const Csr& c : cs) csr_decode(c, x.data(), y1.data());
    return std::chrono::duration<double>(Clock::now() - t0).count() / double(cs.size());
  };
  pass_b();
  pass_c();
  std::vector<double> ta, tb, r;
  for (int i = 0; i < reps; ++i) {
    double a, b;
    if (i % 2) {
      b = pass_c();
      a = pass_b();
    } else {
      a = pass_b();
      b = pass_c();
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
  if (argc > 2 && std::string(argv[2]) == "csr") {
    // bench_sparse THREADS csr [SPARSITIES]: the CSR candidate against SparseBitmask, decode.
    std::printf(
        "CSR (16-bit columns) vs SparseBitmask, %d threads, T = 1; ms per call; "
        "speedup = median of bitmask / csr over 11 alternating passes\n",
        threads);
    std::printf("%-10s %-6s %9s %11s %9s %8s\n", "shape", "values", "sparsity", "bitmask T=1",
                "csr T=1", "speedup");
    const char* sps = argc > 3 ? argv[3] : "50,70,90";
    for (const char* vf : {"int8", "f32"})
      for (const char* p = sps; *p;) {
        const int pct = std::atoi(p);
        while (*p && *p != ',') ++p;
        if (*p) ++p;
        for (auto [out, in] : {std::pair<int64_t, int64_t>{1536, 576}, {576, 1536}, {576, 576}}) {
          const std::string prune = "magnitude-" + std::to_string(pct);
          CompressSpec spec =
              compress_spec_from_name(std::string(vf) == "f32" ? prune : prune + "+" + vf);
          spec.sparse_storage = CompressSpec::SparseStorage::Bitmask;
          const Linear bm = compress_linear(random_dense(out, in, uint32_t(out + in)), spec);
          const Pair r = time_csr(*be, bm, 11);
          std::printf("%4lldx%-5lld %-6s %8d%% %11.4f %9.4f %7.2fx\n", (long long)out,
                      (long long)in, vf, pct, r.a * 1e3, r.b * 1e3, r.ratio);
        }
      }
    return 0;
  }
  // SmolLM2-135M: d_model 576, d_ff 1536 (q/o 576x576, k/v 192x576, gate/up 1536x576, down
  // 576x1536). The FFN shapes hold 3/4 of the block weights.
  const std::pair<int64_t, int64_t> shapes[] = {{1536, 576}, {576, 1536}, {576, 576}};
  // argv[2]: value formats (comma separated, default f32,int8); argv[3]: sparsities in percent
  // (default 10,20,...,70) and/or "2:4" (dense vs SparseBitmask vs Sparse24 on 2:4 weights).
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
    if (sparsities.empty()) continue;
    if (crossover < 0)
      std::printf("%s values: sparse decode never beat dense here\n", vf.c_str());
    else
      std::printf(
          "%s values: sparse decodes >= 1.1x faster (three shapes summed) from %.0f %% on\n",
          vf.c_str(), crossover * 100);
  }
  return 0;
}
