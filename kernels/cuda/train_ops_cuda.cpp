// The CUDA TrainOps (kernels/train_ops.h): cuBLAS sgemm for the linear GEMMs, the kernels of
// kernels/cuda/train_kernels.h for the rest (the loss, global-norm clipping and AdamW included),
// on one stream. Buffers are CUDA managed memory (cudaMallocManaged): the trainer's host steps
// (the teacher's logits, masks, checkpoints) touch them after synchronize(). Host code only;
// built for real with `make CUDA=1` and, in every build of the tests, against the CPU emulation
// of CUDA (tests/test_cuda_emu_train.cpp).
#include <cstring>
#include <memory>
#include <memory_resource>

#include "engine/error.h"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/train_kernels.h"
#include "kernels/train_ops.h"

namespace minfer {

namespace MINFER_CUDA_NS {

namespace {

// Managed allocations (256-byte aligned, which covers every alignment a vector of floats asks).
class ManagedMemory final : public std::pmr::memory_resource {
  void* do_allocate(size_t bytes, size_t) override {
    void* p = nullptr;
    check_cuda(cudaMallocManaged(&p, bytes == 0 ? 1 : bytes, cudaMemAttachGlobal),
               "cudaMallocManaged");
    return p;
  }
  void do_deallocate(void* p, size_t, size_t) override { cudaFree(p); }
  bool do_is_equal(const std::pmr::memory_resource& o) const noexcept override {
    return this == &o;
  }
};

class CudaTrainOps final : public train::TrainOps {
 public:
  explicit CudaTrainOps(int device) {
    check_cuda(cudaSetDevice(device), "cudaSetDevice");
    check_cuda(cudaStreamCreate(&stream_), "cudaStreamCreate");
    check_blas(cublasCreate(&blas_), "cublasCreate");
    check_blas(cublasSetStream(blas_, stream_), "cublasSetStream");
  }
  ~CudaTrainOps() override {
    cudaStreamSynchronize(stream_);
    if (ds_) cudaFree(ds_);
    if (partial_) cudaFree(partial_);
    if (rows_) cudaFree(rows_);
    cublasDestroy(blas_);
    cudaStreamDestroy(stream_);
  }
  std::string name() const override { return "cuda"; }
  std::pmr::memory_resource* memory() override { return &mem_; }
  bool host() const override { return false; }
  void synchronize() override { check_cuda(cudaStreamSynchronize(stream_), "synchronize"); }

  void zero(float* p, int64_t n) override {
    check_cuda(cudaMemsetAsync(p, 0, size_t(n) * sizeof(float), stream_), "memset");
  }
  // Row-major out[N, O] = inp[N, I]·W[O, I]ᵀ is column-major outᵀ = W·inpᵀ (cuBLAS: op(W) = T).
  void linear_forward(float* out, const float* inp, const float* W, int64_t N, int64_t I,
                      int64_t O) override {
    const float one = 1.f, zero = 0.f;
    check_blas(cublasSgemm(blas_, CUBLAS_OP_T, CUBLAS_OP_N, int(O), int(N), int(I), &one, W, int(I),
                           inp, int(I), &zero, out, int(O)),
               "linear forward");
  }
  // dinp[N, I] += dout·W (column-major dinpᵀ += Wᵀ·doutᵀ); dW[O, I] += doutᵀ·inp (column-major
  // dWᵀ += inpᵀ·dout).
  void linear_backward(float* dinp, float* dW, const float* dout, const float* inp, const float* W,
                       int64_t N, int64_t I, int64_t O) override {
    const float one = 1.f;
    if (dinp)
      check_blas(cublasSgemm(blas_, CUBLAS_OP_N, CUBLAS_OP_N, int(I), int(N), int(O), &one, W,
                             int(I), dout, int(O), &one, dinp, int(I)),
                 "linear backward (input)");
    if (dW)
      check_blas(cublasSgemm(blas_, CUBLAS_OP_N, CUBLAS_OP_T, int(I), int(O), int(N), &one, inp,
                             int(I), dout, int(O), &one, dW, int(I)),
                 "linear backward (weight)");
  }
  void embedding_forward(float* out, const int32_t* ids, const float* table, int64_t N, int64_t C,
                         int64_t V) override {
    for (int64_t n = 0; n < N; ++n)  // managed memory: the ids are host-readable
      MINFER_CHECK(ids[n] >= 0 && ids[n] < V, "embedding: token id {} at row {} outside [0, {})",
                   ids[n], n, V);
    launch_embedding_forward(out, ids, table, N, C, stream_);
  }
  void embedding_backward(float* dtable, const float* dout, const int32_t* ids, int64_t N,
                          int64_t C) override {
    if (dtable) launch_embedding_backward(dtable, dout, ids, N, C, stream_);
  }
  void rmsnorm_forward(float* out, float* rstd, const float* x, const float* w, int64_t N,
                       int64_t C, float eps) override {
    launch_rmsnorm_forward(out, rstd, x, w, N, C, eps, stream_);
  }
  void rmsnorm_backward(float* dx, float* dw, const float* dout, const float* x, const float* w,
                        const float* rstd, int64_t N, int64_t C) override {
    MINFER_CHECK(dw, "cuda training: RMSNorm backward with a frozen weight (not implemented)");
    launch_rmsnorm_backward(dx, dw, dout, x, w, rstd, N, C, stream_);
  }
  void rope(float* x, const float* cs, int64_t B, int64_t T, int64_t nh, int64_t D,
            float sign) override {
    MINFER_CHECK(D % 2 == 0, "rope: head dim {} must be even", D);
    launch_rope(x, cs, B, T, nh, D, sign, stream_);
  }
  void attention_forward(float* out, float* probs, const float* q, const float* k, const float* v,
                         int64_t B, int64_t T, int64_t H, int64_t Hkv, int64_t D) override {
    MINFER_CHECK(Hkv > 0 && H % Hkv == 0, "attention: {} query heads not a multiple of {} kv heads",
                 H, Hkv);
    launch_attention_forward(out, probs, q, k, v, B, T, H, Hkv, D, stream_);
  }
  void attention_backward(float* dq, float* dk, float* dv, const float* dout, const float* q,
                          const float* k, const float* v, const float* probs, int64_t B, int64_t T,
                          int64_t H, int64_t Hkv, int64_t D) override {
    const size_t need = size_t(B * H * T * T);
    if (need > ds_cap_) {
      synchronize();
      if (ds_) cudaFree(ds_);
      ds_ = nullptr;
      check_cuda(cudaMalloc(reinterpret_cast<void**>(&ds_), need * sizeof(float)), "cudaMalloc");
      ds_cap_ = need;
    }
    launch_attention_backward(dq, dk, dv, ds_, dout, q, k, v, probs, B, T, H, Hkv, D, stream_);
  }
  void swiglu_forward(float* out, const float* gate, const float* up, int64_t n) override {
    launch_swiglu_forward(out, gate, up, n, stream_);
  }
  void swiglu_backward(float* dgate, float* dup, const float* dout, const float* gate,
                       const float* up, int64_t n) override {
    launch_swiglu_backward(dgate, dup, dout, gate, up, n, stream_);
  }
  void residual_forward(float* out, const float* a, const float* b, int64_t n) override {
    launch_residual_forward(out, a, b, n, stream_);
  }
  double sum_squares(const float* x, int64_t n) override {
    if (!partial_)
      check_cuda(cudaMallocManaged(reinterpret_cast<void**>(&partial_),
                                   kSumSquaresBlocks * sizeof(double), cudaMemAttachGlobal),
                 "cudaMallocManaged");
    launch_sum_squares(partial_, x, n, stream_);
    synchronize();
    double ss = 0;
    for (int b = 0; b < kSumSquaresBlocks; ++b) ss += partial_[b];
    return ss;
  }
  void scale(float* x, float s, int64_t n) override { launch_scale(x, s, n, stream_); }
  double cross_entropy_forward(const float* logits, const int32_t* targets, int64_t N,
                               int64_t V) override {
    for (int64_t n = 0; n < N; ++n)  // managed memory: the targets are host-readable
      MINFER_CHECK(targets[n] < V, "cross-entropy: target {} at row {} >= vocab {}", targets[n], n,
                   V);
    launch_cross_entropy_forward(row_losses(N), logits, targets, N, V, stream_);
    return sum_rows(N);
  }
  void cross_entropy_backward(float* dlogits, const float* logits, const int32_t* targets,
                              int64_t N, int64_t V, float scale) override {
    launch_cross_entropy_backward(dlogits, logits, targets, N, V, scale, stream_);
  }
  double kl_forward(const float* student, const float* teacher, int64_t N, int64_t V, float tau,
                    bool reverse) override {
    MINFER_CHECK(tau > 0, "kl: temperature {} must be > 0", tau);
    launch_kl_forward(row_losses(N), student, teacher, N, V, tau, reverse, stream_);
    return sum_rows(N);
  }
  void kl_backward(float* dstudent, const float* student, const float* teacher, int64_t N,
                   int64_t V, float tau, bool reverse, float scale) override {
    launch_kl_backward(dstudent, student, teacher, N, V, tau, reverse, scale, stream_);
  }
  void copy(float* dst, const float* src, int64_t n) override {
    if (n > 0 && dst != src)
      check_cuda(cudaMemcpyAsync(dst, src, size_t(n) * sizeof(float), cudaMemcpyDefault, stream_),
                 "copy");
  }
  void adamw(float* w, float* m, float* v, const float* g, int64_t n, const AdamWCoef& c) override {
    launch_adamw(w, m, v, g, n, c, stream_);
  }

 private:
  // A managed buffer of at least n per-row values.
  float* row_losses(int64_t n) {
    if (size_t(n) > rows_cap_) {
      synchronize();
      if (rows_) cudaFree(rows_);
      rows_ = nullptr;
      check_cuda(cudaMallocManaged(reinterpret_cast<void**>(&rows_), size_t(n) * sizeof(float),
                                   cudaMemAttachGlobal),
                 "cudaMallocManaged");
      rows_cap_ = size_t(n);
    }
    return rows_;
  }
  // Waits for the per-row values, then adds them in order in double.
  double sum_rows(int64_t n) {
    synchronize();
    double s = 0;
    for (int64_t i = 0; i < n; ++i) s += rows_[i];
    return s;
  }

  ManagedMemory mem_;
  cudaStream_t stream_ = nullptr;
  cublasHandle_t blas_ = nullptr;
  float* ds_ = nullptr;    // attention backward's dS [B, H, T, T]
  float* rows_ = nullptr;  // [rows_cap_] per-row losses (managed)
  size_t rows_cap_ = 0;
  double* partial_ = nullptr;  // [kSumSquaresBlocks] sum_squares' per-block sums (managed)
  size_t ds_cap_ = 0;
};

}  // namespace

}  // namespace MINFER_CUDA_NS

#ifdef MINFER_CUDA_EMULATION
// The emulated training ops (tests only): same source, kernels run by the CPU emulation.
train::TrainOps* new_cuda_emu_train_ops(int device) {
#else
train::TrainOps* new_cuda_train_ops(int device) {
#endif
  using namespace MINFER_CUDA_NS;
  int n = 0;
  const cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess || n == 0)
    MINFER_FAIL("cuda: no CUDA device available (cudaGetDeviceCount: {})",
                e != cudaSuccess ? cudaGetErrorString(e) : "0 devices");
  MINFER_CHECK(device >= 0 && device < n, "cuda: --device {} out of range: {} device{} available",
               device, n, n == 1 ? "" : "s");
  return new CudaTrainOps(device);
}

}  // namespace minfer
