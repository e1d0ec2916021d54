// CudaBackend: device-resident activations and weights, cuBLAS for dense float GEMM, our kernels
// (kernels.cu) for everything else. Host code only (compiled by the host compiler; nvcc sees only
// kernels.cu). Built for real with `make CUDA=1`; every build of the tests also compiles this file
// against the CPU emulation of CUDA (kernels/cuda/emu/) and compares it op by op with the CPU
// backend (tests/test_cuda_emu.cpp, docs/cuda.md).
//
// Memory: one stream per backend; device tensors come from a caching allocator (freed blocks go
// back to a per-size free list, reused in stream order, returned to the driver when the last
// tensor and the backend are gone). Weights are uploaded once by upload(Linear&) into
// Linear::device_copy, compressed formats as stored. Host arguments (token ids, key masks, RoPE
// tables) are copied asynchronously into reusable device scratch.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <mutex>
#include <unordered_map>
#include <vector>

#include "engine/attention_check.h"
#include "engine/backend.h"
#include "engine/half.h"
#include "kernels/common/quant_math.h"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/kernels.h"

namespace minfer {

namespace MINFER_CUDA_NS {

namespace {

// Sizes are rounded so that freed blocks fit later requests: powers of two up to 1 MiB, then
// whole MiB.
size_t bucket(size_t n) {
  if (n <= 256) return 256;
  if (n <= (size_t(1) << 20)) return size_t(1) << (64 - __builtin_clzll(n - 1));
  return (n + (size_t(1) << 20) - 1) >> 20 << 20;
}

class DeviceAllocator {
 public:
  void* alloc(size_t n, size_t* cap) {
    *cap = bucket(n);
    {
      std::lock_guard<std::mutex> lk(mu_);
      auto& v = free_[*cap];
      if (!v.empty()) {
        void* p = v.back();
        v.pop_back();
        return p;
      }
    }
    void* p = nullptr;
    if (cudaMalloc(&p, *cap) != cudaSuccess) {
      release_cache();  // out of memory: give the cached blocks back and retry once
      (void)cudaGetLastError();
      check_cuda(cudaMalloc(&p, *cap), "cudaMalloc");
    }
    return p;
  }
  void free(void* p, size_t cap) {
    std::lock_guard<std::mutex> lk(mu_);
    free_[cap].push_back(p);
  }
  void release_cache() {
    std::lock_guard<std::mutex> lk(mu_);
    for (auto& [cap, v] : free_)
      for (void* p : v) cudaFree(p);
    free_.clear();
  }
  ~DeviceAllocator() { release_cache(); }

 private:
  std::mutex mu_;
  std::unordered_map<size_t, std::vector<void*>> free_;
};

class DeviceStorage final : public Storage {
 public:
  DeviceStorage(std::shared_ptr<DeviceAllocator> a, void* p, size_t n, size_t cap)
      : Storage(Kind::Device, p, n), alloc_(std::move(a)), cap_(cap) {}
  ~DeviceStorage() override { alloc_->free(data_, cap_); }

 private:
  std::shared_ptr<DeviceAllocator> alloc_;
  size_t cap_;
};

// Device scratch that only grows (reused by every call of one purpose).
struct Scratch {
  Tensor t;
};

// A weight as the device holds it. `magic` tells our copies from another backend's.
constexpr uint64_t kMagic = 0x6d696e6665724355ull ^ sizeof(QWeight);
enum class LKind {
  Dense,
  Quantized,
  LlmInt8,
  W8A8,
  LowRank,
  Sparse,
  Sparse24,
  SparseCsr,
  Ggml,
  Codebook
};
struct DeviceLinear {
  uint64_t magic = kMagic;
  LKind kind = LKind::Dense;
  Tensor w;  // Dense: F32/F16/BF16 as stored
  bool transposed = false;
  QWeight q;  // Quantized / LlmInt8 / W8A8 (int8 per row)
  Tensor codes, scales, zeros, scale_codes, scale_scales;
  float threshold = 6.f;             // LlmInt8
  Tensor col_index;                  // LlmInt8: I32 [K], index into outlier_cols or -1
  Tensor outlier_w;                  // LlmInt8: F16 [N, m]
  int64_t m = 0;                     // LlmInt8: listed outlier features
  ActScale act = ActScale::Dynamic;  // W8A8
  float act_scale = 0.f;             // W8A8
  Tensor bias;                       // F32 [N] or undefined
  // LowRank: the factors' own device copies (V: in -> rank, U: rank -> out).
  std::shared_ptr<DeviceLinear> lr_v, lr_u;
  int64_t rank = 0;
  // Sparse: the mask and the packed values (or codes) with their scales, as on the host.
  SWeight sw;
  Tensor mask, vals, vscales;
  Tensor row_ptr;  // SparseCsr (its columns in `mask`)
  // Ggml: the blocks as stored.
  GWeight gw;
  Tensor gblocks;
  // Codebook: the packed indices and the f16 centroid tables, as stored.
  CWeight cw;
  Tensor cindices, ccentroids;
};

// A 2-D f32 device view (the CPU backend's Mat, on the device).
DMat dmat(const Tensor& t, const char* what) {
  MINFER_CHECK(t.defined(), "cuda {}: undefined tensor", what);
  MINFER_CHECK(t.dtype() == DType::F32, "cuda {}: expected an F32 activation, found {}", what,
               dtype_name(t.dtype()));
  MINFER_CHECK(t.on_device(),
               "cuda {}: tensor {} is in host memory; allocate it with Backend::alloc or upload "
               "it",
               what, t.shape_str());
  MINFER_CHECK(t.ndim() >= 1 && t.stride(-1) == 1, "cuda {}: last dim must be contiguous", what);
  if (t.ndim() == 1) return {t.data<float>(), 1, t.dim(0), t.dim(0)};
  MINFER_CHECK(t.ndim() == 2 || t.is_contiguous(), "cuda {}: {} must be 2-D or contiguous", what,
               t.shape_str());
  const int64_t cols = t.dim(-1);
  const int64_t rows = t.numel() / std::max<int64_t>(cols, 1);
  return {t.data<float>(), rows, cols, t.ndim() == 2 ? t.stride(0) : cols};
}

// A 2-D device view of an F16 tensor (a KV cache or a view of its rows).
DMat16 dmat16(const Tensor& t, const char* what) {
  MINFER_CHECK(
      t.defined() && t.dtype() == DType::F16 && t.on_device() && t.ndim() == 2 && t.stride(-1) == 1,
      "cuda {}: expected a 2-D F16 device tensor with contiguous rows, found {} {}", what,
      t.defined() ? dtype_name(t.dtype()) : "undefined", t.defined() ? t.shape_str() : "");
  return {t.data<uint16_t>(), t.dim(0), t.dim(1), t.stride(0)};
}

template <typename A, typename B>
void check_same(const A& a, const B& b, const char* op) {
  MINFER_CHECK(a.rows == b.rows && a.cols == b.cols, "cuda {}: shape mismatch [{}, {}] vs [{}, {}]",
               op, a.rows, a.cols, b.rows, b.cols);
}

const float* dvec(const Tensor& t, int64_t n, const char* what) {
  MINFER_CHECK(t.defined() && t.dtype() == DType::F32 && t.numel() == n && t.is_contiguous(),
               "cuda {}: expected a contiguous F32 vector of {} values, found {}", what, n,
               t.defined() ? t.shape_str() : "undefined");
  MINFER_CHECK(t.on_device(), "cuda {}: weight vector is in host memory (upload it first)", what);
  return t.data<float>();
}

bool fits_int(int64_t v) {
  return v >= 0 && v <= INT32_MAX;
}

}  // namespace

class CudaBackend final : public Backend {
 public:
  explicit CudaBackend(int device) : device_(device) {
    check_cuda(cudaSetDevice(device), "cudaSetDevice");
    cudaDeviceProp p;
    check_cuda(cudaGetDeviceProperties(&p, device), "cudaGetDeviceProperties");
    name_ = p.name;
    max_shared_ = p.sharedMemPerBlockOptin;
    check_cuda(cudaStreamCreate(&stream_), "cudaStreamCreate");
    check_blas(cublasCreate(&blas_), "cublasCreate");
    check_blas(cublasSetStream(blas_, stream_), "cublasSetStream");
  }
  ~CudaBackend() override {
    cudaStreamSynchronize(stream_);
    cublasDestroy(blas_);
    cudaStreamDestroy(stream_);
  }

  std::string name() const override { return "cuda"; }
  void set_threads(int n) override { threads_ = n > 0 ? n : 1; }
  int threads() const override { return threads_; }
  void synchronize() override { check_cuda(cudaStreamSynchronize(stream_), "synchronize"); }

  // ---- Memory.

  Tensor device_tensor(DType dt, const int64_t* shape, int ndim) {
    int64_t n = 1;
    for (int i = 0; i < ndim; ++i) n *= shape[i];
    const size_t bytes = size_t(n) * dtype_size(dt);
    size_t cap = 0;
    void* p = alloc_->alloc(bytes, &cap);
    auto st = std::make_shared<DeviceStorage>(alloc_, p, bytes, cap);
    return Tensor(st, 0, dt, shape, ndim);
  }

  Tensor alloc(std::initializer_list<int64_t> shape, DType dtype) override {
    Tensor t = device_tensor(dtype, shape.begin(), int(shape.size()));
    check_cuda(cudaMemsetAsync(t.raw(), 0, t.nbytes(), stream_), "alloc (memset)");
    return t;
  }

  Tensor upload(const Tensor& host) override {
    if (!host.defined() || host.on_device()) return host;
    const Tensor src = host.is_contiguous() ? host : host.clone();
    Tensor t = device_tensor(src.dtype(), src.shape(), src.ndim());
    check_cuda(cudaMemcpyAsync(t.raw(), src.raw(), src.nbytes(), cudaMemcpyHostToDevice, stream_),
               "upload");
    return t;
  }

  void upload(Linear& w) override {
    if (w.device_copy && static_cast<const DeviceLinear*>(w.device_copy.get())->magic == kMagic)
      return;
    w.device_copy = make_device_linear(w);
  }

  void to_host(const Tensor& src, float* dst) override {
    if (src.defined() && src.dtype() == DType::F16) {  // an F16 KV cache's rows, widened here
      const DMat16 h = dmat16(src, "to_host");
      std::vector<uint16_t> bits(size_t(h.rows * h.cols));
      check_cuda(
          cudaMemcpy2DAsync(bits.data(), size_t(h.cols) * 2, h.p, size_t(h.ld) * 2,
                            size_t(h.cols) * 2, size_t(h.rows), cudaMemcpyDeviceToHost, stream_),
          "to_host");
      synchronize();
      f16_to_f32_n(bits.data(), dst, bits.size());
      return;
    }
    DMat s = dmat(src, "to_host");
    check_cuda(cudaMemcpy2DAsync(dst, size_t(s.cols) * 4, s.p, size_t(s.ld) * 4, size_t(s.cols) * 4,
                                 size_t(s.rows), cudaMemcpyDeviceToHost, stream_),
               "to_host");
    synchronize();
  }

  template <typename T>
  T* scratch(Scratch& s, size_t n) {
    const size_t bytes = std::max<size_t>(n * sizeof(T), 1);
    if (!s.t.defined() || s.t.nbytes() < bytes) {
      const int64_t shape[1] = {int64_t(bytes)};
      s.t = device_tensor(DType::U8, shape, 1);
    }
    return s.t.data<T>();
  }
  template <typename T>
  T* to_device(Scratch& s, const T* host, size_t n) {
    T* d = scratch<T>(s, n);
    check_cuda(cudaMemcpyAsync(d, host, n * sizeof(T), cudaMemcpyHostToDevice, stream_),
               "host argument upload");
    return d;
  }

  // ---- Linear.

  std::shared_ptr<DeviceLinear> make_device_linear(const Linear& w) {
    auto d = std::make_shared<DeviceLinear>();
    if (w.bias.defined()) {
      MINFER_CHECK(w.bias.dtype() == DType::F32 && w.bias.numel() == w.out,
                   "linear '{}': bias must be F32 [{}], found {} {}", w.name, w.out,
                   dtype_name(w.bias.dtype()), w.bias.shape_str());
      d->bias = upload(w.bias);
    }
    auto quantized = [&](const Quantized& q0) {
      // The device kernels read the row layout (a CPU-repacked weight is de-interleaved here).
      const Quantized q = quantized_row_major(q0);
      d->codes = upload(q.codes);
      d->scales = upload(q.scales);
      d->zeros = upload(q.zeros);
      d->scale_codes = upload(q.scale_codes);
      d->scale_scales = upload(q.scale_scales);
      QWeight& g = d->q;
      g.scheme = q.scheme;
      g.codes = d->codes.data<uint8_t>();
      g.rb = q.codes.dim(1);
      g.scales = d->scales.defined() ? d->scales.data<float>() : nullptr;
      g.zeros = d->zeros.defined() ? d->zeros.data<uint8_t>() : nullptr;
      g.scale_codes = d->scale_codes.defined() ? d->scale_codes.data<int8_t>() : nullptr;
      g.scale_scales = d->scale_scales.defined() ? d->scale_scales.data<float>() : nullptr;
      g.scale_offset = q.scale_offset;
      g.group = q.group;
      g.groups = qm::ceil_div(w.in, q.group);
      g.K = w.in;
      g.N = w.out;
      g.per_tensor = q.per_tensor;
    };
    // SparseBitmask and Sparse24: the per-row metadata bytes (bitmask or 2-bit index bytes,
    // [N, kb]) in sw.mask and the packed values (f32/f16/bf16, or int8 per row / per tensor).
    auto upload_sparse = [&](LKind kind, const Tensor& meta, const Linear& v) {
      d->kind = kind;
      d->mask = upload(meta);
      SWeight& sw = d->sw;
      sw.mask = d->mask.data<uint8_t>();
      sw.kb = meta.dim(1);
      sw.K = w.in;
      sw.N = w.out;
      sw.ld = v.in;
      if (const Dense* dv = std::get_if<Dense>(&v.repr)) {
        d->vals = upload(dv->w);
        sw.vkind = dv->w.dtype() == DType::F32 ? 0 : dv->w.dtype() == DType::F16 ? 1 : 2;
      } else {  // Quantized int8, per row or per tensor (checked by the format)
        const Quantized& q = std::get<Quantized>(v.repr);
        d->vals = upload(q.codes);
        d->vscales = upload(q.scales);
        sw.vkind = 3;
        sw.ld = q.codes.dim(1);
        sw.scales = d->vscales.data<float>();
        sw.per_tensor = q.per_tensor;
      }
      sw.vals = d->vals.raw();
    };
    // One overload per format of the table (engine/linear.h); the format's invariants were
    // checked when the Linear was made or loaded, and are checked again here (once per upload).
    check_linear(w);
    std::visit(
        overloaded{
            [&](const Dense& r) {
              d->kind = LKind::Dense;
              d->w = upload(r.w);  // a weight already on the device (tied embedding) is shared
              d->transposed = r.transposed;
            },
            [&](const Quantized& r) {
              d->kind = LKind::Quantized;
              quantized(r);
            },
            [&](const Int8WithOutliers& r) {
              d->kind = LKind::LlmInt8;
              quantized(r.w);
              d->threshold = r.threshold;
              std::vector<int32_t> ci(size_t(w.in), -1);
              d->m = r.outlier_cols.defined() ? r.outlier_cols.numel() : 0;
              for (int64_t j = 0; j < d->m; ++j)
                ci[size_t(r.outlier_cols.template data<int32_t>()[j])] = int32_t(j);
              Tensor h = Tensor::empty(DType::I32, {w.in});
              std::memcpy(h.raw(), ci.data(), ci.size() * 4);
              d->col_index = upload(h);
              if (d->m > 0) d->outlier_w = upload(r.outlier_w);
            },
            [&](const W8A8& r) {
              d->kind = LKind::W8A8;
              quantized(r.w);
              d->act = r.act;
              d->act_scale = r.act_scale;
            },
            [&](const LowRank& r) {
              d->kind = LKind::LowRank;
              d->rank = r.v->out;
              d->lr_v = make_device_linear(*r.v);
              d->lr_u = make_device_linear(*r.u);
            },
            [&](const SparseBitmask& r) { upload_sparse(LKind::Sparse, r.bitmask, *r.values); },
            [&](const Sparse24& r) {
              // The index bytes in sw.mask ([N, kb], two group codes per byte) and the values.
              upload_sparse(LKind::Sparse24, r.idx, *r.values);
            },
            [&](const SparseCsr& r) {
              // The columns ([N, Kv] u16, in mask) and values as for the bitmask, plus row_ptr.
              upload_sparse(LKind::SparseCsr, r.col, *r.values);
              d->row_ptr = upload(r.row_ptr);
              d->sw.row_ptr = d->row_ptr.data<int64_t>();
              d->sw.col = d->mask.data<uint16_t>();  // [N, kb = Kv]
            },
            [&](const GgmlBlocks& r) {
              d->kind = LKind::Ggml;
              // The device kernels read the ggml row layout (a CPU-repacked weight is
              // de-interleaved once here).
              d->gblocks = upload(ggml_blocks_row_major(r, w.in));
              d->gw = GWeight{r.type, d->gblocks.data<uint8_t>(), r.blocks.dim(1), w.in, w.out};
            },
            [&](const Codebook& r) {
              d->kind = LKind::Codebook;
              d->cindices = upload(r.indices);
              d->ccentroids = upload(r.centroids);
              d->cw = CWeight{d->cindices.data<uint8_t>(),
                              d->ccentroids.data<uint16_t>(),
                              r.indices.dim(1),
                              r.centroids.dim(1),
                              r.group,
                              r.bits,
                              w.in,
                              w.out};
            },
        },
        w.repr);
    // The host-side index vector above is copied before it goes out of scope.
    synchronize();
    return d;
  }

  void linear(Tensor& y, const Tensor& x, const Linear& w) override {
    DMat X = dmat(x, "linear input"), Y = dmat(y, "linear output");
    MINFER_CHECK(X.cols == w.in, "linear '{}': input has {} features, weight expects {}", w.name,
                 X.cols, w.in);
    MINFER_CHECK(Y.cols == w.out && Y.rows == X.rows,
                 "linear '{}': output is [{}, {}], expected [{}, {}]", w.name, Y.rows, Y.cols,
                 X.rows, w.out);
    MINFER_CHECK(
        fits_int(X.rows) && fits_int(X.ld) && fits_int(Y.ld) && fits_int(w.in) && fits_int(w.out),
        "linear '{}': dimensions beyond 2^31", w.name);
    if (observer_) {
      std::vector<float> hx(size_t(X.rows * X.cols));
      to_host(x, hx.data());
      observer_->observe(w, hx.data(), X.rows, X.cols);
    }
    if (X.rows == 0) return;
    std::shared_ptr<DeviceLinear> tmp;
    const DeviceLinear* d = nullptr;
    if (w.device_copy && static_cast<const DeviceLinear*>(w.device_copy.get())->magic == kMagic) {
      d = static_cast<const DeviceLinear*>(w.device_copy.get());
    } else {  // not uploaded: a one-off copy (Model uploads every weight once at load)
      tmp = make_device_linear(w);
      d = tmp.get();
    }
    run_linear(*d, X, Y, w.in, w.out);
  }

  // Y = X · Wᵀ (+ bias) for one device Linear.
  void run_linear(const DeviceLinear& dl, DMat X, DMat Y, int64_t K, int64_t N) {
    const DeviceLinear* d = &dl;
    const int64_t T = X.rows;
    switch (d->kind) {
      case LKind::Dense:
        dense(*d, X, Y, K, N);
        break;
      case LKind::Quantized:
        launch_wq_linear(d->q, X.p, T, X.ld, Y.p, Y.ld, stream_);
        break;
      case LKind::W8A8:
        int_linear(*d, X, Y, qm::padded_k(K), d->act == ActScale::Static);
        break;
      case LKind::LlmInt8: {
        uint8_t* flags = scratch<uint8_t>(flags_, size_t(K));
        float* xm = scratch<float>(xm_, size_t(T * K));
        launch_outlier_split(X.p, T, X.ld, K, d->threshold, d->col_index.data<int32_t>(), flags, xm,
                             stream_);
        int_linear(*d, DMat{xm, T, K, K}, Y, qm::padded_k(K), false);
        launch_outlier_add(d->q, X.p, T, X.ld, flags, d->col_index.data<int32_t>(),
                           d->m ? d->outlier_w.data<uint16_t>() : nullptr, d->m, Y.p, Y.ld,
                           stream_);
        break;
      }
      case LKind::LowRank: {
        // x · Vᵀ into a [T, rank] device buffer, then · Uᵀ (factors are never LowRank).
        float* h = scratch<float>(lowrank_, size_t(T * d->rank));
        const DMat H{h, T, d->rank, d->rank};
        run_linear(*d->lr_v, X, H, K, d->rank);
        run_linear(*d->lr_u, H, Y, d->rank, N);
        break;
      }
      case LKind::Sparse:
        launch_sparse_linear(d->sw, X.p, T, X.ld, Y.p, Y.ld, stream_);
        break;
      case LKind::Sparse24:
        launch_sparse24_linear(d->sw, X.p, T, X.ld, Y.p, Y.ld, stream_);
        break;
      case LKind::SparseCsr:
        launch_sparse_csr_linear(d->sw, X.p, T, X.ld, Y.p, Y.ld, stream_);
        break;
      case LKind::Ggml:
        launch_ggml_linear(d->gw, X.p, T, X.ld, Y.p, Y.ld, stream_);
        break;
      case LKind::Codebook:
        launch_codebook_linear(d->cw, X.p, T, X.ld, Y.p, Y.ld, stream_);
        break;
    }
    if (d->bias.defined()) launch_add_bias(Y, d->bias.data<float>(), stream_);
  }

  // Activations -> int8 codes per block of QA (QA = Kp: per row, static scale if asked), then
  // the integer kernel.
  void int_linear(const DeviceLinear& d, DMat X, DMat Y, int64_t QA, bool static_scale) {
    const int64_t T = X.rows, K = X.cols, Kp = qm::padded_k(K), nb = qm::ceil_div(Kp, QA);
    int8_t* q = scratch<int8_t>(actq_, size_t(T * Kp));
    float* dd = scratch<float>(actd_, size_t(T * nb));
    int32_t* s = scratch<int32_t>(acts_, size_t(T * nb));
    if (static_scale)
      launch_quantize_act_static(X.p, T, X.ld, K, d.act_scale, q, dd, s, stream_);
    else
      launch_quantize_act(X.p, T, X.ld, K, QA, q, dd, s, stream_);
    launch_int_linear(d.q, q, dd, QA, T, Y.p, Y.ld, stream_);
  }

  // Row-major Y[T, N] = X[T, K] · Wᵀ is column-major Yᵀ[N, T] = op(W) · Xᵀ, with op(W) = Wᵀ for
  // W stored [N, K] (column-major [K, N], ld K) and op(W) = W for Conv1D's [K, N] (ld N).
  void dense(const DeviceLinear& d, DMat X, DMat Y, int64_t K, int64_t N) {
    const int64_t T = X.rows;
    const cublasOperation_t op = d.transposed ? CUBLAS_OP_N : CUBLAS_OP_T;
    const int lda = int(d.transposed ? N : K);
    const float one = 1.f, zero = 0.f;
    if (d.w.dtype() == DType::F32) {
      check_blas(cublasSgemm(blas_, op, CUBLAS_OP_N, int(N), int(T), int(K), &one,
                             d.w.data<float>(), lda, X.p, int(X.ld), &zero, Y.p, int(Y.ld)),
                 "cublasSgemm");
      return;
    }
    const HalfType ht = d.w.dtype() == DType::F16 ? HalfType::F16 : HalfType::BF16;
    if (T <= kHalfGemvRows) {  // decode: f32 activations against the 16-bit weights as stored
      launch_dense_half_gemv(ht, d.w.data<uint16_t>(), d.transposed, X.p, T, X.ld, Y.p, Y.ld, K, N,
                             stream_);
      return;
    }
    // Prefill: activations rounded to the weight's 16-bit type, tensor cores, f32 accumulation.
    uint16_t* xh = scratch<uint16_t>(xh_, size_t(T * K));
    launch_to_half(ht, X.p, T, X.ld, K, xh, K, stream_);
    const cudaDataType dt = ht == HalfType::F16 ? CUDA_R_16F : CUDA_R_16BF;
    check_blas(cublasGemmEx(blas_, op, CUBLAS_OP_N, int(N), int(T), int(K), &one, d.w.raw(), dt,
                            lda, xh, dt, int(K), &zero, Y.p, CUDA_R_32F, int(Y.ld),
                            CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
               "cublasGemmEx");
  }

  // ---- Other ops.

  void embedding_table(Tensor& y, const Linear& table, const int32_t* ids, int64_t n) override {
    auto unsupported = [&](const char* f) {
      throw NotImplemented(fmt::format("cuda: embedding table '{}' stored as {}", table.name, f));
    };
    std::visit(
        overloaded{
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
            [&](const GgmlBlocks&) {
              DMat Y = dmat(y, "embedding output");
              MINFER_CHECK(Y.rows == n && Y.cols == table.in,
                           "embedding: output [{}, {}], expected [{}, {}]", Y.rows, Y.cols, n,
                           table.in);
              for (int64_t t = 0; t < n; ++t)
                MINFER_CHECK(ids[t] >= 0 && ids[t] < table.out,
                             "token id {} at position {} out of range [0, {})", ids[t], t,
                             table.out);
              std::shared_ptr<DeviceLinear> tmp;
              const DeviceLinear* d = nullptr;
              if (table.device_copy &&
                  static_cast<const DeviceLinear*>(table.device_copy.get())->magic == kMagic) {
                d = static_cast<const DeviceLinear*>(table.device_copy.get());
              } else {
                tmp = make_device_linear(table);
                d = tmp.get();
              }
              const int32_t* did = to_device(ids_, ids, size_t(n));
              launch_ggml_rows(d->gw, did, Y, false, stream_);
            },
        },
        table.repr);
  }

  void embedding(Tensor& y, const Tensor& table, const int32_t* ids, int64_t n,
                 bool accumulate) override {
    DMat Y = dmat(y, "embedding output");
    MINFER_CHECK(table.ndim() == 2 && table.is_contiguous(), "cuda embedding: table must be 2-D");
    MINFER_CHECK(table.on_device(), "cuda embedding: table {} is in host memory (upload it)",
                 table.shape_str());
    const int64_t V = table.dim(0), C = table.dim(1);
    MINFER_CHECK(Y.rows == n && Y.cols == C, "embedding: output [{}, {}], expected [{}, {}]",
                 Y.rows, Y.cols, n, C);
    for (int64_t t = 0; t < n; ++t)
      MINFER_CHECK(ids[t] >= 0 && ids[t] < V, "token id {} at position {} out of range [0, {})",
                   ids[t], t, V);
    const int dt = table.dtype() == DType::F32    ? 0
                   : table.dtype() == DType::F16  ? 1
                   : table.dtype() == DType::BF16 ? 2
                                                  : -1;
    MINFER_CHECK(dt >= 0, "embedding table dtype {} not supported", dtype_name(table.dtype()));
    if (n == 0) return;
    const int32_t* did = to_device(ids_, ids, size_t(n));
    launch_embedding(Y, table.raw(), dt, did, accumulate, stream_);
  }

  // F16 KV caches (Model::set_kv_cache_dtype): copy rounds into them (rope_kv is Backend's:
  // rope, rope, copy), attention reads them widened.
  bool kv_cache_f16() const override { return true; }

  void copy(Tensor& dst, const Tensor& src) override {
    if (dst.defined() && dst.dtype() == DType::F16) {  // a KV-cache write, rounded to fp16
      const DMat16 D = dmat16(dst, "copy dst");
      const DMat S = dmat(src, "copy src");
      check_same(D, S, "copy");
      if (D.rows > 0 && D.cols > 0)
        launch_to_half(HalfType::F16, S.p, S.rows, S.ld, S.cols, D.p, D.ld, stream_);
      return;
    }
    DMat D = dmat(dst, "copy dst"), S = dmat(src, "copy src");
    check_same(D, S, "copy");
    if (D.rows > 0 && D.cols > 0) launch_copy(D, S, stream_);
  }

  void binary(Tensor& y, const Tensor& a, const Tensor& b, const char* op, BinOp o) {
    DMat Y = dmat(y, op), A = dmat(a, op), B = dmat(b, op);
    check_same(Y, A, op);
    check_same(Y, B, op);
    if (Y.rows > 0 && Y.cols > 0) launch_binary(o, Y, A, B, stream_);
  }
  void add(Tensor& y, const Tensor& a, const Tensor& b) override {
    binary(y, a, b, "add", BinOp::Add);
  }
  void mul(Tensor& y, const Tensor& a, const Tensor& b) override {
    binary(y, a, b, "mul", BinOp::Mul);
  }
  void scale(Tensor& y, const Tensor& x, float s) override { unary(y, x, "scale", UnOp::Scale, s); }
  void softcap(Tensor& y, const Tensor& x, float cap) override {
    MINFER_CHECK(cap > 0 && std::isfinite(cap), "softcap: cap must be positive, found {}", cap);
    unary(y, x, "softcap", UnOp::Softcap, cap);
  }
  void swiglu(Tensor& y, const Tensor& gate, const Tensor& up) override {
    binary(y, gate, up, "swiglu", BinOp::SwiGLU);
  }

  void unary(Tensor& y, const Tensor& x, const char* op, UnOp o, float p = 0.f) {
    DMat Y = dmat(y, op), X = dmat(x, op);
    check_same(Y, X, op);
    if (Y.rows > 0 && Y.cols > 0) launch_unary(o, Y, X, stream_, p);
  }
  void gelu(Tensor& y, const Tensor& x, bool tanh_approx) override {
    unary(y, x, "gelu", tanh_approx ? UnOp::GeluTanh : UnOp::GeluErf);
  }
  void silu(Tensor& y, const Tensor& x) override { unary(y, x, "silu", UnOp::Silu); }

  void layernorm(Tensor& y, const Tensor& x, const Tensor& w, const Tensor& b, float eps) override {
    DMat Y = dmat(y, "layernorm"), X = dmat(x, "layernorm");
    check_same(Y, X, "layernorm");
    const float* pw = dvec(w, X.cols, "layernorm weight");
    const float* pb = dvec(b, X.cols, "layernorm bias");
    if (X.rows) launch_layernorm(Y, X, pw, pb, eps, stream_);
  }
  void rmsnorm(Tensor& y, const Tensor& x, const Tensor& w, float eps) override {
    DMat Y = dmat(y, "rmsnorm"), X = dmat(x, "rmsnorm");
    check_same(Y, X, "rmsnorm");
    const float* pw = dvec(w, X.cols, "rmsnorm weight");
    if (X.rows) launch_rmsnorm(Y, X, pw, eps, stream_);
  }
  void softmax(Tensor& y, const Tensor& x) override {
    DMat Y = dmat(y, "softmax"), X = dmat(x, "softmax");
    check_same(Y, X, "softmax");
    if (X.rows) launch_softmax(Y, X, stream_);
  }

  void rope(Tensor& x, int64_t pos0, int64_t n_heads, const RopeTable& rt) override {
    DMat X = dmat(x, "rope");
    const int64_t head_dim = rt.head_dim();
    MINFER_CHECK(X.cols == n_heads * head_dim && head_dim > 0,
                 "rope: row of {} values, expected {} heads x {} dims (the rope table's)", X.cols,
                 n_heads, head_dim);
    const int64_t half = head_dim / 2;
    if (X.rows == 0) return;
    // cos/sin of angle = pos * inv_freq in float32, times the attention scaling, as HF's
    // LlamaRotaryEmbedding computes them; on the host with the CPU backend's arithmetic, so both
    // backends rotate by bit-identical angles.
    rope_cs_.resize(size_t(X.rows * half * 2));
    const float sc = rt.attention_scaling;
    for (int64_t t = 0; t < X.rows; ++t)
      for (int64_t i = 0; i < half; ++i) {
        const float ang = float(pos0 + t) * rt.inv_freq[size_t(i)];
        rope_cs_[size_t((t * half + i) * 2)] = std::cos(ang) * sc;
        rope_cs_[size_t((t * half + i) * 2 + 1)] = std::sin(ang) * sc;
      }
    const float* cs = to_device(cs_, rope_cs_.data(), rope_cs_.size());
    launch_rope(X, cs, n_heads, head_dim, stream_);
  }

  void attention(Tensor& out, const Tensor& q, const Tensor& k, const Tensor& v,
                 const AttentionArgs& a) override {
    // K and V: F32, or both F16 (an F16 KV cache's rows).
    MINFER_CHECK(k.defined() && v.defined() && k.dtype() == v.dtype(),
                 "cuda attention: k and v must have one dtype, found {} and {}",
                 k.defined() ? dtype_name(k.dtype()) : "undefined",
                 v.defined() ? dtype_name(v.dtype()) : "undefined");
    const bool f16 = k.dtype() == DType::F16;
    DMat O = dmat(out, "attention out"), Q = dmat(q, "attention q"), K, Vm;
    DMat16 K16, V16;
    if (f16) {
      K16 = dmat16(k, "attention k");
      V16 = dmat16(v, "attention v");
      K = {nullptr, K16.rows, K16.cols, K16.ld};
      Vm = {nullptr, V16.rows, V16.cols, V16.ld};
    } else {
      K = dmat(k, "attention k");
      Vm = dmat(v, "attention v");
    }
    const int64_t H = a.n_heads, Hkv = a.n_kv_heads, D = a.head_dim, B = a.batch;
    const std::pair<int64_t, int64_t> ts =
        check_attention_args(O.rows, O.cols, Q.rows, Q.cols, K.rows, K.cols, Vm.rows, Vm.cols, a);
    const int64_t T = ts.first, S = ts.second;
    MINFER_CHECK(H <= 65535 && B <= 65535,
                 "cuda attention: {} heads x {} sequences exceed the grid", H, B);
    if (T == 0) return;
    const size_t shmem = attention_shared_bytes(D, S);
    if (shmem > max_shared_)
      throw NotImplemented(fmt::format(
          "cuda: attention over {} keys (scores need {} bytes of shared memory, the device has {})",
          S, shmem, max_shared_));
    AttnParams p;
    p.q = Q.p;
    p.k = K.p;
    p.v = Vm.p;
    p.k16 = f16 ? K16.p : nullptr;
    p.v16 = f16 ? V16.p : nullptr;
    p.out = O.p;
    p.ldq = Q.ld;
    p.ldk = K.ld;
    p.ldv = Vm.ld;
    p.ldo = O.ld;
    p.H = H;
    p.Hkv = Hkv;
    p.D = D;
    p.B = B;
    p.T = T;
    p.S = S;
    p.pos0 = a.pos0;
    p.causal = a.causal;
    p.key_mask = a.key_mask ? to_device(mask_, a.key_mask, size_t(B * S)) : nullptr;
    p.scale = a.scale > 0 ? a.scale : 1.f / std::sqrt(float(D));
    p.softcap = a.softcap;
    p.window = a.window;
    launch_attention(p, stream_);
  }

 private:
  static constexpr int64_t kHalfGemvRows = 8;
  int device_ = 0;
  int threads_ = 1;
  std::string name_;
  size_t max_shared_ = 48 * 1024;
  cudaStream_t stream_ = nullptr;
  cublasHandle_t blas_ = nullptr;
  std::shared_ptr<DeviceAllocator> alloc_ = std::make_shared<DeviceAllocator>();
  Scratch ids_, mask_, cs_, actq_, actd_, acts_, xh_, flags_, xm_, lowrank_;
  std::vector<float> rope_cs_;
};

}  // namespace MINFER_CUDA_NS

#ifdef MINFER_CUDA_EMULATION
// The emulated backend (tests only): same source, kernels run by the CPU emulation.
std::unique_ptr<Backend> make_cuda_emu_backend(int device) {
#else
std::unique_ptr<Backend> make_cuda_backend(int device) {
#endif
  using namespace MINFER_CUDA_NS;
  int n = 0;
  const cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess || n == 0)
    MINFER_FAIL("cuda: no CUDA device available (cudaGetDeviceCount: {})",
                e != cudaSuccess ? cudaGetErrorString(e) : "0 devices");
  MINFER_CHECK(device >= 0 && device < n, "cuda: --device {} out of range: {} device{} available",
               device, n, n == 1 ? "" : "s");
  return std::make_unique<CudaBackend>(device);
}

}  // namespace minfer
