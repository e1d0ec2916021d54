// The CPU TrainOps (train/ops.h on host memory) and the choice of ops by device name.
#include "kernels/train_ops.h"

#include <cstring>

#include "engine/backend.h"
#include "engine/error.h"
#include "train/ops.h"

namespace minfer {
// kernels/cpu/backend_select.cpp: the CUDA TrainOps of a `make CUDA=1` build (null otherwise).
train::TrainOps* new_cuda_train_ops_if_built(int device);
}  // namespace minfer

namespace minfer::train {

namespace {

class CpuTrainOps final : public TrainOps {
 public:
  std::string name() const override { return "cpu"; }
  std::pmr::memory_resource* memory() override { return std::pmr::new_delete_resource(); }
  bool host() const override { return true; }
  void zero(float* p, int64_t n) override { std::memset(p, 0, size_t(n) * sizeof(float)); }
  void linear_forward(float* out, const float* inp, const float* W, int64_t N, int64_t I,
                      int64_t O) override {
    train::linear_forward(out, inp, W, nullptr, N, I, O);
  }
  void linear_backward(float* dinp, float* dW, const float* dout, const float* inp, const float* W,
                       int64_t N, int64_t I, int64_t O) override {
    train::linear_backward(dinp, dW, nullptr, dout, inp, W, N, I, O);
  }
  void embedding_forward(float* out, const int32_t* ids, const float* table, int64_t N, int64_t C,
                         int64_t V) override {
    train::embedding_forward(out, ids, table, N, C, V);
  }
  void embedding_backward(float* dtable, const float* dout, const int32_t* ids, int64_t N,
                          int64_t C) override {
    train::embedding_backward(dtable, dout, ids, N, C);
  }
  void rmsnorm_forward(float* out, float* rstd, const float* x, const float* w, int64_t N,
                       int64_t C, float eps) override {
    train::rmsnorm_forward(out, rstd, x, w, N, C, eps);
  }
  void rmsnorm_backward(float* dx, float* dw, const float* dout, const float* x, const float* w,
                        const float* rstd, int64_t N, int64_t C) override {
    train::rmsnorm_backward(dx, dw, dout, x, w, rstd, N, C);
  }
  void rope(float* x, const float* cs, int64_t B, int64_t T, int64_t nh, int64_t D,
            float sign) override {
    rope_apply(x, cs, B, T, nh, D, sign);
  }
  void attention_forward(float* out, float* probs, const float* q, const float* k, const float* v,
                         int64_t B, int64_t T, int64_t H, int64_t Hkv, int64_t D) override {
    train::attention_forward(out, probs, q, k, v, B, T, H, Hkv, D);
  }
  void attention_backward(float* dq, float* dk, float* dv, const float* dout, const float* q,
                          const float* k, const float* v, const float* probs, int64_t B, int64_t T,
                          int64_t H, int64_t Hkv, int64_t D) override {
    train::attention_backward(dq, dk, dv, dout, q, k, v, probs, B, T, H, Hkv, D);
  }
  void swiglu_forward(float* out, const float* gate, const float* up, int64_t n) override {
    train::swiglu_forward(out, gate, up, n);
  }
  void swiglu_backward(float* dgate, float* dup, const float* dout, const float* gate,
                       const float* up, int64_t n) override {
    train::swiglu_backward(dgate, dup, dout, gate, up, n);
  }
  void residual_forward(float* out, const float* a, const float* b, int64_t n) override {
    train::residual_forward(out, a, b, n);
  }
  double sum_squares(const float* x, int64_t n) override {
    double ss = 0;
    for (int64_t i = 0; i < n; ++i) ss += double(x[i]) * x[i];
    return ss;
  }
  void scale(float* x, float s, int64_t n) override {
    for (int64_t i = 0; i < n; ++i) x[i] *= s;
  }
  double cross_entropy_forward(const float* logits, const int32_t* targets, int64_t N,
                               int64_t V) override {
    return train::cross_entropy_forward(logits, targets, N, V);
  }
  void cross_entropy_backward(float* dlogits, const float* logits, const int32_t* targets,
                              int64_t N, int64_t V, float scale) override {
    train::cross_entropy_backward(dlogits, logits, targets, N, V, scale);
  }
  double kl_forward(const float* student, const float* teacher, int64_t N, int64_t V, float tau,
                    bool reverse) override {
    return train::kl_forward(student, teacher, N, V, tau, reverse);
  }
  void kl_backward(float* dstudent, const float* student, const float* teacher, int64_t N,
                   int64_t V, float tau, bool reverse, float scale) override {
    train::kl_backward(dstudent, student, teacher, N, V, tau, reverse, scale);
  }
  void copy(float* dst, const float* src, int64_t n) override {
    if (n > 0 && dst != src) std::memmove(dst, src, size_t(n) * sizeof(float));
  }
  void adamw(float* w, float* m, float* v, const float* g, int64_t n, const AdamWCoef& c) override {
#pragma omp parallel for schedule(static) if (n >= (1 << 16))
    for (int64_t i = 0; i < n; ++i) adamw_update(w[i], m[i], v[i], g[i], c);
  }
};

}  // namespace

std::shared_ptr<TrainOps> cpu_train_ops() {
  static const std::shared_ptr<TrainOps> ops = std::make_shared<CpuTrainOps>();
  return ops;
}

std::shared_ptr<TrainOps> make_train_ops(const std::string& name, int device) {
  if (name == "cpu") return cpu_train_ops();
  if (name == "cuda") {
    MINFER_CHECK(cuda_backend_built(),
                 "--backend cuda: this binary is built without the CUDA backend (rebuild with "
                 "`make CUDA=1`)");
    return std::shared_ptr<TrainOps>(new_cuda_train_ops_if_built(device));
  }
  MINFER_FAIL("unknown training device '{}' (expected cpu or cuda)", name);
}

}  // namespace minfer::train
