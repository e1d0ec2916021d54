// CpuBackend: OpenBLAS for dense float GEMM, our kernels for the rest. Two kinds of parallel loop,
// one thread count: prefill-sized work (GEMMs, element-wise ops over many rows) runs on OpenMP,
// which OpenBLAS (its OpenMP build) shares; decode-sized work (matrix-vector products, attention
// for a few query rows) runs on engine/thread_pool.h, which stays fast when other processes take
// the cores (see there).
#include <cblas.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <type_traits>
#include <vector>

#include "engine/attention_check.h"
#include "engine/backend.h"
#include "engine/half.h"
#include "engine/thread_pool.h"
#include "kernels/cpu/act.h"
#include "kernels/cpu/attention_decode.h"
#include "kernels/cpu/codebook.h"
#include "kernels/cpu/dense.h"
#include "kernels/cpu/env_switch.h"
#include "kernels/cpu/ggml.h"
#include "kernels/cpu/prefill_gemm.h"
#include "kernels/cpu/quant.h"
#include "kernels/cpu/quant_act.h"
#include "kernels/cpu/softmax.h"
#include "kernels/cpu/sparse.h"
#include "kernels/cpu/sparse24.h"
#include "kernels/cpu/sparse_csr.h"

namespace minfer {

int default_threads() {
  if (const char* s = std::getenv("OMP_NUM_THREADS")) {
    int n = std::atoi(s);
    if (n > 0) return n;
  }
  return std::max(1, omp_get_num_procs());
}

namespace {

// A 2-D view: data, rows, cols, row stride (in elements). Mat: f32; MatH: fp16 bits (an F16 KV
// cache).
template <typename E>
struct View {
  E* p;
  int64_t rows, cols, ld;
};
using Mat = View<float>;
using MatH = View<uint16_t>;

Mat mat(const Tensor& t, const char* what) {
  MINFER_CHECK(t.dtype() == DType::F32, "{}: expected an F32 activation, found {}", what,
               dtype_name(t.dtype()));
  MINFER_CHECK(t.ndim() >= 1 && t.stride(-1) == 1, "{}: last dim must be contiguous", what);
  if (t.ndim() == 1) return {t.data<float>(), 1, t.dim(0), t.dim(0)};
  MINFER_CHECK(t.ndim() == 2 || t.is_contiguous(), "{}: {} must be 2-D or contiguous", what,
               t.shape_str());
  const int64_t cols = t.dim(-1);
  const int64_t rows = t.numel() / std::max<int64_t>(cols, 1);
  const int64_t ld = t.ndim() == 2 ? t.stride(0) : cols;
  return {t.data<float>(), rows, cols, ld};
}

MatH mat16(const Tensor& t, const char* what) {
  MINFER_CHECK(t.dtype() == DType::F16, "{}: expected an F16 KV cache, found {}", what,
               dtype_name(t.dtype()));
  MINFER_CHECK(t.ndim() == 2 && t.stride(-1) == 1, "{}: expected a 2-D row-major cache, found {}",
               what, t.shape_str());
  return {static_cast<uint16_t*>(t.raw()), t.dim(0), t.dim(1), t.stride(0)};
}

// A KV operand of attention (or the target of a KV-cache write): 2-D rows [R, Hkv·D], head h at
// column h·D (hs = D), or a head-major cache view [Hkv, R, D] (Backend::kv_cache_head_major):
// head h at h·stride(0), its rows stride(1) apart. E: float (F32) or uint16_t (F16 bits).
template <typename E>
struct KvView {
  E* p;
  int64_t rows, cols, ld, hs;
};
template <typename E>
KvView<E> kv_view(const Tensor& t, int64_t D, const char* what) {
  if (t.ndim() == 3) {
    constexpr DType want = std::is_same_v<E, float> ? DType::F32 : DType::F16;
    MINFER_CHECK(t.dtype() == want, "{}: expected an {} KV cache, found {}", what, dtype_name(want),
                 dtype_name(t.dtype()));
    MINFER_CHECK(
        t.stride(2) == 1 && t.dim(2) == D,
        "{}: a head-major KV cache view must be [kv heads, positions, {}] with its last dim "
        "contiguous, found {}",
        what, D, t.shape_str());
    return {static_cast<E*>(t.raw()), t.dim(1), t.dim(0) * D, t.stride(1), t.stride(0)};
  }
  View<E> m;
  if constexpr (std::is_same_v<E, float>)
    m = mat(t, what);
  else
    m = mat16(t, what);
  return {m.p, m.rows, m.cols, m.ld, D};
}

template <typename A, typename B>
void check_same(const View<A>& a, const View<B>& b, const char* op) {
  MINFER_CHECK(a.rows == b.rows && a.cols == b.cols, "{}: shape mismatch [{}, {}] vs [{}, {}]", op,
               a.rows, a.cols, b.rows, b.cols);
}

// Parallelise only when the work pays for waking the pool.
inline bool worth_threads(int64_t n) {
  return n >= 32768;
}

class CpuBackend final : public Backend {
 public:
  explicit CpuBackend(int threads) { set_threads(threads); }

  std::string name() const override { return "cpu"; }
  bool kv_cache_f16() const override { return true; }

  void set_threads(int n) override {
    threads_ = n > 0 ? n : default_threads();
    omp_set_num_threads(threads_);
    openblas_set_num_threads(threads_);
    set_pool_threads(threads_);
  }
  int threads() const override { return threads_; }

  Tensor alloc(std::initializer_list<int64_t> shape, DType dtype) override {
    return Tensor::empty(dtype, shape);
  }
  Tensor upload(const Tensor& host) override { return host; }
  // Repack at load: GGML Q4_0 / Q4_1 / Q8_0 and Quantized weights into the interleaved layouts
  // the AVX-512 decode kernels stream (kernels/cpu/ggml.h ggml_repack_for_cpu, kernels/cpu/quant.h
  // quantized_repack_for_cpu); 2:4 SparseBitmask weights into Sparse24 where its kernel wins
  // (kernels/cpu/sparse24.h sparse24_upload), other SparseBitmask weights into SparseCsr where its
  // kernel beats the bitmask's (kernels/cpu/sparse_csr.h sparse_csr_upload), and Sparse24 int8
  // values into the run layout its AVX2 kernel streams (sparse24_repack_for_cpu); everything else
  // as it is.
  void upload(Linear& w) override {
    if (GgmlBlocks* g = std::get_if<GgmlBlocks>(&w.repr)) ggml_repack_for_cpu(*g, w.in);
    if (Quantized* q = std::get_if<Quantized>(&w.repr)) quantized_repack_for_cpu(*q);
    sparse24_upload(w);
    sparse_csr_upload(w);
    if (Sparse24* s = std::get_if<Sparse24>(&w.repr)) sparse24_repack_for_cpu(*s);
  }
  void to_host(const Tensor& src, float* dst) override {
    if (src.defined() && src.dtype() == DType::F16) {  // an F16 KV cache's rows
      const MatH h = mat16(src, "to_host");
      for (int64_t r = 0; r < h.rows; ++r)
        f16_to_f32_n(h.p + r * h.ld, dst + r * h.cols, size_t(h.cols));
      return;
    }
    Mat s = mat(src, "to_host");
    for (int64_t r = 0; r < s.rows; ++r)
      std::memcpy(dst + r * s.cols, s.p + r * s.ld, size_t(s.cols) * 4);
  }

  void linear(Tensor& y, const Tensor& x, const Linear& w) override {
    Mat X = mat(x, "linear input"), Y = mat(y, "linear output");
    MINFER_CHECK(X.cols == w.in, "linear '{}': input has {} features, weight expects {}", w.name,
                 X.cols, w.in);
    MINFER_CHECK(Y.cols == w.out && Y.rows == X.rows,
                 "linear '{}': output is [{}, {}], expected [{}, {}]", w.name, Y.rows, Y.cols,
                 X.rows, w.out);
    if (observer_) observer_->observe(w, X.p, X.rows, X.ld);
    linear_mat(X, Y, w);
    add_bias(Y, w);
  }

  // Whether ws (reading X) run as one GGML q8 op group: every member GgmlBlocks of width X.cols,
  // on the q8 decode path (ggml_path(), T), all K-quants or none; gs receives the members.
  bool ggml_group(const Linear* const* ws, int n, const Mat& X,
                  std::vector<const GgmlBlocks*>& gs) {
    gs.clear();
    for (int i = 0; i < n && !observer_; ++i) {
      const auto* g = std::get_if<GgmlBlocks>(&ws[i]->repr);
      if (!g || ws[i]->in != X.cols) break;
      gs.push_back(g);
    }
    const GgmlPath path = ggml_path();
    return int(gs.size()) == n && n > 0 && path != GgmlPath::F32 &&
           !(path == GgmlPath::Auto && X.rows >= kGgmlGemmMinT) && X.rows <= kGgmlGemmMinT &&
           ggml_q8_groupable(gs.data(), n);
  }

  // Checked output matrix of member w of an op group.
  Mat group_out(Tensor& y, const Mat& X, const Linear& w) {
    Mat Y = mat(y, "linear output");
    MINFER_CHECK(X.cols == w.in, "linear '{}': input has {} features, weight expects {}", w.name,
                 X.cols, w.in);
    MINFER_CHECK(Y.cols == w.out && Y.rows == X.rows,
                 "linear '{}': output is [{}, {}], expected [{}, {}]", w.name, Y.rows, Y.cols,
                 X.rows, w.out);
    return Y;
  }

  // Runs ws as one op group of format R (run: sparse_linear_group or sparse24_linear_group) when
  // every member is R and reads X; false (nothing run) otherwise.
  template <class R, class Item, class Run>
  bool sparse_group(Tensor* const* ys, const Linear* const* ws, int n, const Mat& X, Run run) {
    for (int i = 0; i < n; ++i)
      if (!std::holds_alternative<R>(ws[i]->repr) || ws[i]->in != X.cols) return false;
    std::vector<Item> items;
    std::vector<Mat> Ys;
    for (int i = 0; i < n; ++i) {
      Ys.push_back(group_out(*ys[i], X, *ws[i]));
      items.push_back({&std::get<R>(ws[i]->repr), Ys.back().p, Ys.back().ld, Ys.back().cols});
    }
    run(items.data(), n, X.p, X.rows, X.ld, X.cols);
    for (int i = 0; i < n; ++i) add_bias(Ys[size_t(i)], *ws[i]);
    return true;
  }

  // Runs ws as one op group of float matrices (f32 / fp16 / bf16 Dense) on the decode gemv;
  // false (nothing run) where a member is another format or dense_linear_group declines.
  bool dense_group(Tensor* const* ys, const Linear* const* ws, int n, const Mat& X) {
    for (int i = 0; i < n; ++i)
      if (!std::holds_alternative<Dense>(ws[i]->repr) || ws[i]->in != X.cols) return false;
    std::vector<DenseGroupItem> items;
    std::vector<Mat> Ys;
    for (int i = 0; i < n; ++i) {
      const Dense& d = std::get<Dense>(ws[i]->repr);
      Ys.push_back(group_out(*ys[i], X, *ws[i]));
      items.push_back({&d.w, d.transposed, Ys.back().p, Ys.back().ld, Ys.back().cols});
    }
    if (!dense_linear_group(items.data(), n, X.p, X.rows, X.ld, X.cols)) return false;
    for (int i = 0; i < n; ++i) add_bias(Ys[size_t(i)], *ws[i]);
    return true;
  }

  void linear_group(Tensor* const* ys, const Linear* const* ws, int n, const Tensor& x) override {
    Mat X = mat(x, "linear input");
    // f32 / fp16 / bf16 on the decode path: one pool dispatch.
    if (!observer_ && n > 0 && X.rows <= 4 && dense_group(ys, ws, n, X)) return;
    // int8 / int4 / NF4 / ... Quantized on the decode path: x copied once, one pool dispatch.
    if (!observer_ && n > 0 && X.rows <= quantized_group_max_t()) {
      std::vector<QuantGroupItem> items;
      std::vector<Mat> Ys;
      for (int i = 0; i < n; ++i) {
        const auto* q = std::get_if<Quantized>(&ws[i]->repr);
        if (!q || ws[i]->in != X.cols) break;
        Ys.push_back(group_out(*ys[i], X, *ws[i]));
        items.push_back({q, Ys.back().p, Ys.back().ld, Ys.back().cols});
      }
      if (int(items.size()) == n) {
        quantized_linear_group(items.data(), n, X.p, X.rows, X.ld, X.cols);
        for (int i = 0; i < n; ++i) add_bias(Ys[size_t(i)], *ws[i]);
        return;
      }
    }
    // SparseBitmask, Sparse24 or SparseCsr (every member the same one) on the decode path: x
    // prepared once, one pool dispatch.
    if (!observer_ && n > 0 && X.rows <= 4 &&
        (sparse_group<SparseBitmask, SparseGroupItem>(ys, ws, n, X, sparse_linear_group) ||
         sparse_group<Sparse24, Sparse24GroupItem>(ys, ws, n, X, sparse24_linear_group) ||
         sparse_group<SparseCsr, SparseCsrGroupItem>(ys, ws, n, X, sparse_csr_linear_group)))
      return;
    // GGML blocks on the q8 decode path: one activation quantization, one pool dispatch.
    std::vector<const GgmlBlocks*> gs;
    if (!ggml_group(ws, n, X, gs)) return Backend::linear_group(ys, ws, n, x);
    std::vector<GgmlGroupItem> items;
    std::vector<Mat> Ys;
    for (int i = 0; i < n; ++i) {
      Mat Y = group_out(*ys[i], X, *ws[i]);
      items.push_back({gs[size_t(i)], Y.p, Y.ld, Y.cols});
      Ys.push_back(Y);
    }
    ggml_linear_q8_group(items.data(), n, X.p, X.rows, X.ld, X.cols);
    for (int i = 0; i < n; ++i) add_bias(Ys[size_t(i)], *ws[i]);
  }

  void linear_swiglu(Tensor& y, Tensor& u, const Tensor& x, const Linear& gate,
                     const Linear& up) override {
    // Fused: int8/int4/... Quantized (any T; the kernel falls back above the decode range), GGML
    // blocks on the q8 decode path, the sparse formats and f32 / fp16 / bf16 at decode.
    // Otherwise (biases, an observer, other formats, prefill of the others): unfused.
    const auto* qg = std::get_if<Quantized>(&gate.repr);
    const auto* qu = std::get_if<Quantized>(&up.repr);
    Mat X = mat(x, "linear input");
    // SparseBitmask / Sparse24 / SparseCsr gate and up (the same format) on the decode path.
    const auto* sg = std::get_if<SparseBitmask>(&gate.repr);
    const auto* su = std::get_if<SparseBitmask>(&up.repr);
    const auto* tg = std::get_if<Sparse24>(&gate.repr);
    const auto* tu = std::get_if<Sparse24>(&up.repr);
    const auto* cg = std::get_if<SparseCsr>(&gate.repr);
    const auto* cu = std::get_if<SparseCsr>(&up.repr);
    if (!observer_ && X.rows <= 4 && ((sg && su) || (tg && tu) || (cg && cu)) &&
        !gate.bias.defined() && !up.bias.defined() && gate.out == up.out) {
      Mat Y = group_out(y, X, gate), U = group_out(u, X, up);
      if (sg)
        sparse_linear_swiglu(*sg, *su, X.p, X.rows, X.ld, Y.p, Y.ld, U.p, U.ld, X.cols, Y.cols);
      else if (tg)
        sparse24_linear_swiglu(*tg, *tu, X.p, X.rows, X.ld, Y.p, Y.ld, U.p, U.ld, X.cols, Y.cols);
      else
        sparse_csr_linear_swiglu(*cg, *cu, X.p, X.rows, X.ld, Y.p, Y.ld, U.p, U.ld, X.cols, Y.cols);
      return;
    }
    // f32 / fp16 / bf16 gate and up on the decode gemv: one pool dispatch.
    const auto* dg = std::get_if<Dense>(&gate.repr);
    const auto* du = std::get_if<Dense>(&up.repr);
    if (!observer_ && X.rows <= 4 && dg && du && !dg->transposed && !du->transposed &&
        !gate.bias.defined() && !up.bias.defined() && gate.out == up.out) {
      Mat Y = group_out(y, X, gate), U = group_out(u, X, up);
      if (dense_linear_swiglu(dg->w, du->w, X.p, X.rows, X.ld, Y.p, Y.ld, U.p, U.ld, X.cols,
                              Y.cols))
        return;
    }
    const Linear* ws[2] = {&gate, &up};
    std::vector<const GgmlBlocks*> gs;
    const bool quant = qg && qu, ggml = !quant && ggml_group(ws, 2, X, gs);
    if (observer_ || !(quant || ggml) || gate.bias.defined() || up.bias.defined() ||
        gate.out != up.out)
      return Backend::linear_swiglu(y, u, x, gate, up);
    Mat Y = group_out(y, X, gate), U = group_out(u, X, up);
    if (quant)
      quantized_linear_swiglu(*qg, *qu, X.p, X.rows, X.ld, Y.p, Y.ld, U.p, U.ld, X.cols, Y.cols);
    else
      ggml_linear_q8_swiglu(*gs[0], *gs[1], X.p, X.rows, X.ld, Y.p, Y.ld, U.p, U.ld, X.cols,
                            Y.cols);
  }

  void add_bias(const Mat& Y, const Linear& w) {
    if (w.bias.defined()) {
      const float* b = w.bias.data<float>();
#pragma omp parallel for if (worth_threads(Y.rows * Y.cols))
      for (int64_t r = 0; r < Y.rows; ++r) {
        float* yr = Y.p + r * Y.ld;
        for (int64_t c = 0; c < Y.cols; ++c) yr[c] += b[c];
      }
    }
  }

  // Y = X · Wᵀ without the bias: the kernel of W's format (one overload per format of the table
  // in engine/linear.h; a format without one here does not compile).
  void linear_mat(const Mat& X, const Mat& Y, const Linear& w) {
    std::visit(
        overloaded{
            [&](const Dense& r) {
              dense_linear(r.w, r.transposed, X.p, X.rows, X.ld, Y.p, Y.ld, w.in, w.out, scratch_);
            },
            [&](const Quantized& r) {
              quantized_linear(r, X.p, X.rows, X.ld, Y.p, Y.ld, w.in, w.out);
            },
            [&](const Int8WithOutliers& r) {
              llm_int8_linear(r, X.p, X.rows, X.ld, Y.p, Y.ld, w.in, w.out);
            },
            [&](const W8A8& r) { w8a8_linear(r, X.p, X.rows, X.ld, Y.p, Y.ld, w.in, w.out); },
            [&](const LowRank& r) {
              // x · Vᵀ into a [T, rank] buffer kept across calls, then · Uᵀ. Factors are never
              // LowRank themselves (FormatTraits<LowRank>::check), so one buffer suffices.
              const int64_t rank = r.v->out;
              if (lowrank_tmp_.size() < size_t(X.rows * rank))
                lowrank_tmp_.resize(size_t(X.rows * rank));
              const Mat H{lowrank_tmp_.data(), X.rows, rank, rank};
              linear_mat(X, H, *r.v);
              linear_mat(H, Y, *r.u);
            },
            [&](const SparseBitmask& r) {
              sparse_linear(r, X.p, X.rows, X.ld, Y.p, Y.ld, w.in, w.out);
            },
            [&](const Sparse24& r) {
              sparse24_linear(r, X.p, X.rows, X.ld, Y.p, Y.ld, w.in, w.out);
            },
            [&](const SparseCsr& r) {
              sparse_csr_linear(r, X.p, X.rows, X.ld, Y.p, Y.ld, w.in, w.out);
            },
            [&](const GgmlBlocks& r) { ggml_linear(r, X.p, X.rows, X.ld, Y.p, Y.ld, w.in, w.out); },
            [&](const Codebook& r) {
              codebook_linear(r, X.p, X.rows, X.ld, Y.p, Y.ld, w.in, w.out);
            },
        },
        w.repr);
  }

  void embedding(Tensor& y, const Tensor& table, const int32_t* ids, int64_t n,
                 bool accumulate) override {
    Mat Y = mat(y, "embedding output");
    MINFER_CHECK(table.ndim() == 2 && table.is_contiguous(), "embedding table must be 2-D");
    const int64_t V = table.dim(0), C = table.dim(1);
    MINFER_CHECK(Y.rows == n && Y.cols == C, "embedding: output [{}, {}], expected [{}, {}]",
                 Y.rows, Y.cols, n, C);
    for (int64_t t = 0; t < n; ++t)
      MINFER_CHECK(ids[t] >= 0 && ids[t] < V, "token id {} at position {} out of range [0, {})",
                   ids[t], t, V);
    emb_row_.resize(size_t(C));  // reused: no allocation per forward
    for (int64_t t = 0; t < n; ++t) {
      float* yr = Y.p + t * Y.ld;
      float* dst = accumulate ? emb_row_.data() : yr;
      const size_t off = size_t(ids[t]) * size_t(C);
      switch (table.dtype()) {
        case DType::F32:
          std::memcpy(dst, table.data<float>() + off, size_t(C) * 4);
          break;
        case DType::F16:
          f16_to_f32_n(table.data<uint16_t>() + off, dst, size_t(C));
          break;
        case DType::BF16:
          bf16_to_f32_n(table.data<uint16_t>() + off, dst, size_t(C));
          break;
        default:
          MINFER_FAIL("embedding table dtype {} not supported", dtype_name(table.dtype()));
      }
      if (accumulate)
        for (int64_t c = 0; c < C; ++c) yr[c] += dst[c];
    }
  }

  void embedding_table(Tensor& y, const Linear& table, const int32_t* ids, int64_t n) override {
    auto unsupported = [&](const char* f) {
      throw NotImplemented(fmt::format("embedding table '{}' stored as {}", table.name, f));
    };
    std::visit(overloaded{
                   [&](const Dense& r) {
                     MINFER_CHECK(!r.transposed, "embedding table '{}' must be [V, C]", table.name);
                     embedding(y, r.w, ids, n, false);
                   },
                   [&](const Quantized&) { unsupported("quantized"); },
                   [&](const Int8WithOutliers&) { unsupported("llm-int8"); },
                   [&](const W8A8&) { unsupported("w8a8"); },
                   [&](const LowRank&) { unsupported("lowrank"); },
                   [&](const SparseBitmask&) { unsupported("sparse"); },
                   [&](const Sparse24&) { unsupported("sparse-24"); },
                   [&](const SparseCsr&) { unsupported("sparse-csr"); },
                   [&](const Codebook&) { unsupported("codebook"); },
                   [&](const GgmlBlocks& r) {
                     Mat Y = mat(y, "embedding output");
                     MINFER_CHECK(Y.rows == n && Y.cols == table.in,
                                  "embedding: output [{}, {}], expected [{}, {}]", Y.rows, Y.cols,
                                  n, table.in);
                     for (int64_t t = 0; t < n; ++t)
                       MINFER_CHECK(ids[t] >= 0 && ids[t] < table.out,
                                    "token id {} at position {} out of range [0, {})", ids[t], t,
                                    table.out);
                     ggml_blocks_rows(r, table.in, ids, n, Y.p, Y.ld);
                   },
               },
               table.repr);
  }

  void copy(Tensor& dst, const Tensor& src) override {
    if (dst.ndim() == 3) return kv_write(dst, src, "copy");
    if (dst.dtype() == DType::F16) {  // a KV-cache write: rounded to fp16
      MatH D = mat16(dst, "copy dst");
      Mat S = mat(src, "copy src");
      check_same(D, S, "copy");
      for (int64_t r = 0; r < D.rows; ++r)
        f32_to_f16_n(S.p + r * S.ld, D.p + r * D.ld, size_t(D.cols));
      return;
    }
    Mat D = mat(dst, "copy dst"), S = mat(src, "copy src");
    check_same(D, S, "copy");
    for (int64_t r = 0; r < D.rows; ++r)
      std::memcpy(D.p + r * D.ld, S.p + r * S.ld, size_t(D.cols) * 4);
  }

  // Head-major caches unless MINFER_KV_LAYOUT=rows (A/B timing: docs/performance.md).
  bool kv_cache_head_major() const override {
    static const bool heads = env_switch("MINFER_KV_LAYOUT", "heads", {"heads", "rows"}) == "heads";
    return heads;
  }

  // src [T, Hkv·D] into a head-major KV-cache slice dst [Hkv, T, D]: dst[h, t, :] = src[t, h·D:]
  // (an F16 cache: rounded to nearest even).
  static void kv_write(Tensor& dst, const Tensor& src, const char* op) {
    const Mat S = mat(src, op);
    MINFER_CHECK(dst.dtype() == DType::F32 || dst.dtype() == DType::F16,
                 "{}: a KV cache is F32 or F16, found {}", op, dtype_name(dst.dtype()));
    const int64_t Hkv = dst.dim(0), T = dst.dim(1), D = dst.dim(2);
    MINFER_CHECK(dst.stride(2) == 1 && S.rows == T && S.cols == Hkv * D,
                 "{}: rows [{}, {}] do not match the head-major cache slice {} ([kv heads, rows, "
                 "dim], last dim contiguous)",
                 op, S.rows, S.cols, dst.shape_str());
    const int64_t ld = dst.stride(1), hs = dst.stride(0);
    for (int64_t h = 0; h < Hkv; ++h)
      for (int64_t t = 0; t < T; ++t) {
        const float* s = S.p + t * S.ld + h * D;
        if (dst.dtype() == DType::F16)
          f32_to_f16_n(s, static_cast<uint16_t*>(dst.raw()) + h * hs + t * ld, size_t(D));
        else
          std::memcpy(dst.data<float>() + h * hs + t * ld, s, size_t(D) * 4);
      }
  }

  template <typename F>
  void binary(Tensor& y, const Tensor& a, const Tensor& b, const char* op, F f) {
    Mat Y = mat(y, op), A = mat(a, op), B = mat(b, op);
    check_same(Y, A, op);
    check_same(Y, B, op);
#pragma omp parallel for if (worth_threads(Y.rows * Y.cols))
    for (int64_t r = 0; r < Y.rows; ++r)
      for (int64_t c = 0; c < Y.cols; ++c)
        Y.p[r * Y.ld + c] = f(A.p[r * A.ld + c], B.p[r * B.ld + c]);
  }
  void add(Tensor& y, const Tensor& a, const Tensor& b) override {
    binary(y, a, b, "add", [](float u, float v) { return u + v; });
  }
  void mul(Tensor& y, const Tensor& a, const Tensor& b) override {
    binary(y, a, b, "mul", [](float u, float v) { return u * v; });
  }
  void swiglu(Tensor& y, const Tensor& gate, const Tensor& up) override {
    binary(y, gate, up, "swiglu", [](float g, float u) { return silu_mul(g, u); });
  }

  template <typename F>
  void unary(Tensor& y, const Tensor& x, const char* op, F f) {
    Mat Y = mat(y, op), X = mat(x, op);
    check_same(Y, X, op);
#pragma omp parallel for if (worth_threads(Y.rows * Y.cols))
    for (int64_t r = 0; r < Y.rows; ++r)
      for (int64_t c = 0; c < Y.cols; ++c) Y.p[r * Y.ld + c] = f(X.p[r * X.ld + c]);
  }
  void gelu(Tensor& y, const Tensor& x, bool tanh_approx) override {
    if (tanh_approx) {
      // GPT-2's gelu_new: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
      unary(y, x, "gelu", [](float v) {
        return 0.5f * v * (1.f + std::tanh(0.7978845608028654f * (v + 0.044715f * v * v * v)));
      });
    } else {
      unary(y, x, "gelu", [](float v) { return 0.5f * v * (1.f + std::erf(v * 0.70710678f)); });
    }
  }
  void scale(Tensor& y, const Tensor& x, float sc) override {
    unary(y, x, "scale", [sc](float v) { return v * sc; });
  }
  void softcap(Tensor& y, const Tensor& x, float cap) override {
    MINFER_CHECK(cap > 0 && std::isfinite(cap), "softcap: cap must be positive, found {}", cap);
    unary(y, x, "softcap", [cap](float v) { return std::tanh(v / cap) * cap; });
  }
  void silu(Tensor& y, const Tensor& x) override {
    unary(y, x, "silu", [](float v) { return v / (1.f + std::exp(-v)); });
  }

  void layernorm(Tensor& y, const Tensor& x, const Tensor& w, const Tensor& b, float eps) override {
    Mat Y = mat(y, "layernorm"), X = mat(x, "layernorm");
    check_same(Y, X, "layernorm");
    MINFER_CHECK(w.numel() == X.cols && b.numel() == X.cols, "layernorm: weight size mismatch");
    const float *pw = w.data<float>(), *pb = b.data<float>();
#pragma omp parallel for if (worth_threads(Y.rows * Y.cols))
    for (int64_t r = 0; r < X.rows; ++r) {
      const float* xr = X.p + r * X.ld;
      float* yr = Y.p + r * Y.ld;
      double mean = 0, var = 0;
      for (int64_t c = 0; c < X.cols; ++c) mean += xr[c];
      mean /= double(X.cols);
      for (int64_t c = 0; c < X.cols; ++c) var += (xr[c] - mean) * (xr[c] - mean);
      var /= double(X.cols);
      const float inv = float(1.0 / std::sqrt(var + double(eps)));
      const float m = float(mean);
      for (int64_t c = 0; c < X.cols; ++c) yr[c] = (xr[c] - m) * inv * pw[c] + pb[c];
    }
  }

  void rmsnorm(Tensor& y, const Tensor& x, const Tensor& w, float eps) override {
    Mat Y = mat(y, "rmsnorm"), X = mat(x, "rmsnorm");
    check_same(Y, X, "rmsnorm");
    MINFER_CHECK(w.numel() == X.cols, "rmsnorm: weight has {} values, rows have {}", w.numel(),
                 X.cols);
    const float* pw = w.data<float>();
#pragma omp parallel for if (worth_threads(Y.rows * Y.cols))
    for (int64_t r = 0; r < X.rows; ++r) {
      const float* xr = X.p + r * X.ld;
      float* yr = Y.p + r * Y.ld;
      double ss = 0;
      for (int64_t c = 0; c < X.cols; ++c) ss += double(xr[c]) * xr[c];
      const float inv = float(1.0 / std::sqrt(ss / double(X.cols) + double(eps)));
      for (int64_t c = 0; c < X.cols; ++c) yr[c] = xr[c] * inv * pw[c];
    }
  }

  void softmax(Tensor& y, const Tensor& x) override {
    Mat Y = mat(y, "softmax"), X = mat(x, "softmax");
    check_same(Y, X, "softmax");
#pragma omp parallel for if (worth_threads(Y.rows * Y.cols))
    for (int64_t r = 0; r < X.rows; ++r) softmax_row(X.p + r * X.ld, Y.p + r * Y.ld, X.cols);
  }

  // Checked [T, n_heads * D] view of x for RoPE.
  static Mat rope_mat(const Tensor& x, int64_t n_heads, const RopeTable& rt, const char* what) {
    Mat X = mat(x, what);
    const int64_t head_dim = rt.head_dim();
    MINFER_CHECK(X.cols == n_heads * head_dim && head_dim > 0,
                 "{}: row of {} values, expected {} heads x {} dims (the rope table's)", what,
                 X.cols, n_heads, head_dim);
    return X;
  }
  // cos/sin of angle = pos * inv_freq in float32, times the attention scaling, as HF's
  // LlamaRotaryEmbedding computes them, for positions pos0 .. pos0 + T - 1 into rope_cs_.
  void rope_table(int64_t T, int64_t pos0, const RopeTable& rt) {
    const int64_t half = rt.head_dim() / 2;
    rope_cs_.resize(size_t(T * half * 2));
    const float sc = rt.attention_scaling;
    for (int64_t t = 0; t < T; ++t)
      for (int64_t i = 0; i < half; ++i) {
        const float ang = float(pos0 + t) * rt.inv_freq[size_t(i)];
        rope_cs_[size_t((t * half + i) * 2)] = std::cos(ang) * sc;
        rope_cs_[size_t((t * half + i) * 2 + 1)] = std::sin(ang) * sc;
      }
  }
  // D = rt.head_dim(): Y = X rotated with the table in rope_cs_ (Y may be X). Y's head h starts
  // h·yhs after its row (yhs = 0: D, rows of heads; else a head-major cache's head stride).
  void rope_apply(const Mat& Y, const Mat& X, int64_t n_heads, const RopeTable& rt,
                  int64_t yhs = 0) {
    const int64_t head_dim = rt.head_dim(), half = head_dim / 2, ys = yhs ? yhs : head_dim;
#pragma omp parallel for if (worth_threads(X.rows * X.cols))
    for (int64_t t = 0; t < X.rows; ++t) {
      const float* cs = rope_cs_.data() + t * half * 2;
      for (int64_t h = 0; h < n_heads; ++h) {
        const float* p = X.p + t * X.ld + h * head_dim;
        float* o = Y.p + t * Y.ld + h * ys;
        for (int64_t i = 0; i < half; ++i) {
          const float c = cs[2 * i], s = cs[2 * i + 1];
          const float a = p[i], b = p[i + half];
          o[i] = a * c - b * s;
          o[i + half] = b * c + a * s;
        }
      }
    }
  }

  void rope(Tensor& x, int64_t pos0, int64_t n_heads, const RopeTable& rt) override {
    Mat X = rope_mat(x, n_heads, rt, "rope");
    rope_table(X.rows, pos0, rt);
    rope_apply(X, X, n_heads, rt);
  }

  void rope_kv(Tensor& q, Tensor& k, const Tensor& v, Tensor& k_dst, Tensor& v_dst, int64_t pos0,
               int64_t n_heads, int64_t n_kv_heads, const RopeTable& rt) override {
    // An F16 cache: rope, rope, then copy rounds k and v into it (Backend::rope_kv).
    if (k_dst.dtype() == DType::F16)
      return Backend::rope_kv(q, k, v, k_dst, v_dst, pos0, n_heads, n_kv_heads, rt);
    Mat Q = rope_mat(q, n_heads, rt, "rope_kv q"), K = rope_mat(k, n_kv_heads, rt, "rope_kv k");
    Mat Kd{};
    int64_t khs = 0;
    if (k_dst.ndim() == 3) {  // a head-major cache slice [Hkv, T, D]
      const KvView<float> v = kv_view<float>(k_dst, rt.head_dim(), "rope_kv k_dst");
      MINFER_CHECK(k_dst.dim(0) == n_kv_heads, "rope_kv k_dst: {} kv heads, expected {}",
                   k_dst.dim(0), n_kv_heads);
      Kd = {v.p, v.rows, v.cols, v.ld};
      khs = v.hs;
    } else {
      Kd = rope_mat(k_dst, n_kv_heads, rt, "rope_kv k_dst");
    }
    MINFER_CHECK(Q.rows == K.rows && Kd.rows == K.rows,
                 "rope_kv: q has {} rows, k {}, the cache slice {}", Q.rows, K.rows, Kd.rows);
    rope_table(Q.rows, pos0, rt);  // once for q and k
    rope_apply(Q, Q, n_heads, rt);
    rope_apply(Kd, K, n_kv_heads, rt, khs);  // rotated k written straight into the cache
    copy(v_dst, v);
  }

  // Rows of x at or under which attention runs on the thread pool (attention_decode); above,
  // per head sgemm calls or query blocks on OpenMP threads (prefill).
  static constexpr int64_t kFewRows = 4;

  void attention(Tensor& out, const Tensor& q, const Tensor& k, const Tensor& v,
                 const AttentionArgs& a) override {
    Mat O = mat(out, "attention out"), Q = mat(q, "attention q");
    const int64_t H = a.n_heads, Hkv = a.n_kv_heads, D = a.head_dim, B = a.batch;
    const float scale = a.scale > 0 ? a.scale : 1.f / std::sqrt(float(D));
    const int64_t group = H / Hkv;
    // An F16 KV cache (both k and v): decode reads it as stored, prefill widens the S cached rows
    // to f32 once and runs the f32 paths below. k, v: rows [B*S, Hkv*D] or head-major [Hkv, S, D].
    const bool f16 = k.dtype() == DType::F16 || v.dtype() == DType::F16;
    MINFER_CHECK(k.ndim() == v.ndim() && (k.ndim() != 3 || B == 1),
                 "attention: k {} and v {} must both be rows [B*S, Hkv*D] or both head-major "
                 "[Hkv, S, D] views of batch 1 (batch {})",
                 k.shape_str(), v.shape_str(), B);
    KvView<float> K{}, Vm{};
    KvView<uint16_t> Kh{}, Vh{};
    if (f16) {
      Kh = kv_view<uint16_t>(k, D, "attention k");
      Vh = kv_view<uint16_t>(v, D, "attention v");
    } else {
      K = kv_view<float>(k, D, "attention k");
      Vm = kv_view<float>(v, D, "attention v");
    }
    const std::pair<int64_t, int64_t> ts =
        f16 ? check_attention_args(O.rows, O.cols, Q.rows, Q.cols, Kh.rows, Kh.cols, Vh.rows,
                                   Vh.cols, a)
            : check_attention_args(O.rows, O.cols, Q.rows, Q.cols, K.rows, K.cols, Vm.rows, Vm.cols,
                                   a);
    const int64_t T = ts.first, S = ts.second;
    if (T <= kFewRows)
      return f16 ? attention_decode(O.p, O.ld, Q.p, Q.ld, Kh.p, Kh.ld, Kh.hs, Vh.p, Vh.ld, Vh.hs, T,
                                    S, a, scale, decode_scratch_)
                 : attention_decode(O.p, O.ld, Q.p, Q.ld, K.p, K.ld, K.hs, Vm.p, Vm.ld, Vm.hs, T, S,
                                    a, scale, decode_scratch_);
    if (f16) {  // widened into rows [B*S, Hkv*D] whichever layout the cache has
      const int64_t rows = Kh.rows, cols = Kh.cols, Hkv = a.n_kv_heads;
      kv_wide_.resize(size_t(2 * rows * cols));
      K = {kv_wide_.data(), rows, cols, cols, D};
      Vm = {kv_wide_.data() + rows * cols, rows, cols, cols, D};
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t h = 0; h < Hkv; ++h) {
          f16_to_f32_n(Kh.p + r * Kh.ld + h * Kh.hs, K.p + r * cols + h * D, size_t(D));
          f16_to_f32_n(Vh.p + r * Vh.ld + h * Vh.hs, Vm.p + r * cols + h * D, size_t(D));
        }
    }
    if (prefill_attention_path() == PrefillAttention::Blocks)
      return attention_blocks(O, Q, K, Vm, a, T, S, scale);
    const int nt = threads_;
    attn_scratch_.resize(size_t(nt) * size_t(T * S));
#pragma omp parallel for collapse(2) schedule(dynamic) if (B * H > 1 && T * S * D >= 4096)
    for (int64_t b = 0; b < B; ++b)
      for (int64_t h = 0; h < H; ++h) {
        float* sc = attn_scratch_.data() + size_t(omp_get_thread_num()) * size_t(T * S);
        const int64_t kh = h / group;
        const float* qp = Q.p + b * T * Q.ld + h * D;
        const float* kp = K.p + b * S * K.ld + kh * K.hs;
        const float* vp = Vm.p + b * S * Vm.ld + kh * Vm.hs;
        float* op = O.p + b * T * O.ld + h * D;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, int(T), int(S), int(D), scale, qp,
                    int(Q.ld), kp, int(K.ld), 0.f, sc, int(S));
        for (int64_t t = 0; t < T; ++t) {
          float* row = sc + t * S;
          const int64_t limit = a.causal ? a.pos0 + t + 1 : S;
          if (a.softcap > 0) cap_attention_scores(row, limit, a.softcap);
          for (int64_t j = 0, first = attention_window_first(a, t); j < first; ++j)
            row[j] = -INFINITY;
          for (int64_t j = limit; j < S; ++j) row[j] = -INFINITY;
          if (a.key_mask)
            for (int64_t j = 0; j < limit; ++j)
              if (a.key_mask[b * S + j] == 0) row[j] = -INFINITY;
          softmax_row(row, row, S);
        }
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, int(T), int(D), int(S), 1.f, sc,
                    int(S), vp, int(Vm.ld), 0.f, op, int(O.ld));
      }
  }

  // Query rows per block of the prefill attention: a block's scores ([64, keys] f32, 128 KB at
  // 512 keys) stay in L2 between the two GEMMs.
  static constexpr int64_t kQueryBlock = 64;

  // Prefill attention in blocks of kQueryBlock query rows per (sequence, head): scores =
  // q_blk kᵀ · scale over the keys the block's rows can see (causal: up to its last row's
  // position; a sliding window: from its first row's first key), so the masked upper triangle is
  // neither multiplied nor exponentiated; softcap, masks and softmax row by row over each row's
  // own keys; then o_blk = p v over the same keys. Blocks go to the active threads (largest
  // first), each block's two sgemm calls single-threaded. Same arithmetic per output as the
  // per-head path up to the order of the softmax sum.
  void attention_blocks(const Mat& O, const Mat& Q, const KvView<float>& K, const KvView<float>& Vm,
                        const AttentionArgs& a, int64_t T, int64_t S, float scale) {
    const int64_t H = a.n_heads, D = a.head_dim, B = a.batch, group = H / a.n_kv_heads;
    const int64_t nb = (T + kQueryBlock - 1) / kQueryBlock;
    const int nt = prefill_threads(B * H * nb);
    attn_scratch_.resize(size_t(nt) * size_t(kQueryBlock * S));
    float* scratch = attn_scratch_.data();
    prefill_for(B * H * nb, nt, [&](int64_t i, int thread) {
      // Items in order of decreasing cost: the last query block (most keys) first.
      const int64_t blk = nb - 1 - i / (B * H), bh = i % (B * H), b = bh / H, h = bh % H;
      const int64_t kh = h / group, t0 = blk * kQueryBlock, t1 = std::min(T, t0 + kQueryBlock);
      const int64_t rows = t1 - t0;
      const int64_t kend = a.causal ? std::min(S, a.pos0 + t1) : S;
      const int64_t kbeg = std::min(attention_window_first(a, t0), kend);
      const int64_t L = kend - kbeg;
      float* sc = scratch + size_t(thread) * size_t(kQueryBlock * S);
      const float* qp = Q.p + (b * T + t0) * Q.ld + h * D;
      const float* kp = K.p + (b * S + kbeg) * K.ld + kh * K.hs;
      const float* vp = Vm.p + (b * S + kbeg) * Vm.ld + kh * Vm.hs;
      float* op = O.p + (b * T + t0) * O.ld + h * D;
      if (L <= 0) {  // no key visible to any row of the block
        for (int64_t t = 0; t < rows; ++t) std::fill(op + t * O.ld, op + t * O.ld + D, 0.f);
        return;
      }
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, int(rows), int(L), int(D), scale, qp,
                  int(Q.ld), kp, int(K.ld), 0.f, sc, int(L));
      for (int64_t t = t0; t < t1; ++t) {
        float* row = sc + (t - t0) * L;
        // This row's keys: [first, limit) in the block's [kbeg, kend).
        const int64_t limit = (a.causal ? std::min(S, a.pos0 + t + 1) : S) - kbeg;
        const int64_t first =
            std::min(attention_window_first(a, t) - kbeg, std::max<int64_t>(limit, 0));
        std::fill(row, row + first, 0.f);
        if (limit > first) {
          if (a.softcap > 0) cap_attention_scores(row + first, limit - first, a.softcap);
          if (a.key_mask)
            for (int64_t j = first; j < limit; ++j)
              if (a.key_mask[b * S + kbeg + j] == 0) row[j] = -INFINITY;
          softmax_row(row + first, row + first, limit - first);
        }
        std::fill(row + std::max(limit, first), row + L, 0.f);
      }
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, int(rows), int(D), int(L), 1.f, sc,
                  int(L), vp, int(Vm.ld), 0.f, op, int(O.ld));
    });
  }

 private:
  int threads_ = 1;
  std::vector<float> scratch_;
  std::vector<float> attn_scratch_;
  std::vector<float> decode_scratch_;  // attention_decode's per-chunk partial results
  std::vector<float> kv_wide_;         // an F16 KV cache's rows widened for prefill attention
  std::vector<float> rope_cs_;
  std::vector<float> emb_row_;
  std::vector<float> lowrank_tmp_;  // [T, rank] between the two factors of a LowRank weight
};

}  // namespace

std::unique_ptr<Backend> make_cpu_backend(int threads) {
  return std::make_unique<CpuBackend>(threads);
}

}  // namespace minfer
