// CUDA kernels of the training ops' backward passes (declarations: train_kernels.h). The same
// source runs on a GPU (nvcc) and under the CPU emulation (tests/test_cuda_emu_train.cpp checks
// each against train/ops.h).
#include <cmath>

#include "kernels/cuda/reduce.h"
#include "kernels/cuda/train_kernels.h"

namespace minfer::MINFER_CUDA_NS {

namespace {

constexpr int kThreads = 256;     // element-wise and per-column kernels
constexpr int kRowThreads = 128;  // one block per row
constexpr int64_t kMaxBlocks = 1024;

int grid(int64_t n, int threads) {
  const int64_t b = (n + threads - 1) / threads;
  return int(b < 1 ? 1 : b > kMaxBlocks ? kMaxBlocks : b);
}

#define MINFER_GRID_STRIDE(i, n)                                            \
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < (n); \
       i += int64_t(gridDim.x) * blockDim.x)

__global__ void embedding_backward_kernel(float* dtable, const float* dout, const int32_t* ids,
                                          int64_t N, int64_t C) {
  MINFER_GRID_STRIDE(c, C) {
    for (int64_t n = 0; n < N; ++n) dtable[int64_t(ids[n]) * C + c] += dout[n * C + c];
  }
}

__global__ void rmsnorm_dx_kernel(float* dx, const float* dout, const float* x, const float* w,
                                  const float* rstd, int64_t C) {
  const int64_t r = blockIdx.x;
  const float *xr = x + r * C, *g = dout + r * C;
  float dot = 0;
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) dot += xr[c] * w[c] * g[c];
  dot = block_reduce<false>(dot);
  const float rs = rstd[r], k = rs * rs * rs * dot / float(C);
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x)
    dx[r * C + c] += rs * w[c] * g[c] - k * xr[c];
}

__global__ void rmsnorm_dw_kernel(float* dw, const float* dout, const float* x, const float* rstd,
                                  int64_t N, int64_t C) {
  MINFER_GRID_STRIDE(c, C) {
    float s = 0;
    for (int64_t n = 0; n < N; ++n) s += dout[n * C + c] * x[n * C + c] * rstd[n];
    dw[c] += s;
  }
}

__global__ void swiglu_backward_kernel(float* dgate, float* dup, const float* dout,
                                       const float* gate, const float* up, int64_t n) {
  MINFER_GRID_STRIDE(i, n) {
    const float g = gate[i], sg = 1.f / (1.f + expf(-g));
    dgate[i] += dout[i] * up[i] * sg * (1.f + g * (1.f - sg));
    dup[i] += dout[i] * g * sg;
  }
}

__global__ void gelu_backward_kernel(float* dx, const float* dout, const float* x, int64_t n,
                                     bool tanh_approx) {
  const float kS2Pi = 0.7978845608028654f, kInvSqrt2 = 0.70710678118654752f,
              kInvSqrt2Pi = 0.3989422804014327f;
  MINFER_GRID_STRIDE(i, n) {
    const float v = x[i];
    float d;
    if (tanh_approx) {
      const float th = tanhf(kS2Pi * (v + 0.044715f * v * v * v));
      d = 0.5f * (1.f + th) + 0.5f * v * (1.f - th * th) * kS2Pi * (1.f + 3.f * 0.044715f * v * v);
    } else {
      d = 0.5f * (1.f + erff(v * kInvSqrt2)) + v * expf(-0.5f * v * v) * kInvSqrt2Pi;
    }
    dx[i] += d * dout[i];
  }
}

__global__ void residual_backward_kernel(float* da, float* db, const float* dout, int64_t n) {
  MINFER_GRID_STRIDE(i, n) {
    if (da) da[i] += dout[i];
    if (db) db[i] += dout[i];
  }
}

// log Σ exp(row / τ), the row's max subtracted first (block-wide).
__device__ float row_lse(const float* row, int64_t V, float it) {
  float mx = -INFINITY;
  for (int64_t c = threadIdx.x; c < V; c += blockDim.x) mx = fmaxf(mx, row[c] * it);
  mx = block_reduce<true>(mx);
  float s = 0;
  for (int64_t c = threadIdx.x; c < V; c += blockDim.x) s += expf(row[c] * it - mx);
  return mx + logf(block_reduce<false>(s));
}

__global__ void cross_entropy_backward_kernel(float* dlogits, const float* logits,
                                              const int32_t* targets, int64_t V, float scale) {
  const int64_t r = blockIdx.x;
  if (targets[r] < 0) return;  // the whole block leaves together
  const float* row = logits + r * V;
  float* d = dlogits + r * V;
  const float lse = row_lse(row, V, 1.f);
  for (int64_t c = threadIdx.x; c < V; c += blockDim.x) d[c] += scale * expf(row[c] - lse);
  if (threadIdx.x == 0) d[targets[r]] -= scale;
}

__global__ void kl_backward_kernel(float* dstudent, const float* student, const float* teacher,
                                   int64_t V, float tau, bool reverse, float scale) {
  const int64_t r = blockIdx.x;
  const float *s = student + r * V, *t = teacher + r * V;
  float* d = dstudent + r * V;
  const float it = 1.f / tau, ls = row_lse(s, V, it), lt = row_lse(t, V, it);
  if (!reverse) {
    for (int64_t c = threadIdx.x; c < V; c += blockDim.x)
      d[c] += scale * (expf(s[c] * it - ls) - expf(t[c] * it - lt)) * it;
    return;
  }
  // KL(q ‖ p) of the row, then q∘(log q − log p − KL)/τ.
  float kl = 0;
  for (int64_t c = threadIdx.x; c < V; c += blockDim.x) {
    const float lq = s[c] * it - ls, lp = t[c] * it - lt;
    kl += expf(lq) * (lq - lp);
  }
  kl = block_reduce<false>(kl);
  for (int64_t c = threadIdx.x; c < V; c += blockDim.x) {
    const float lq = s[c] * it - ls, lp = t[c] * it - lt;
    d[c] += scale * expf(lq) * (lq - lp - kl) * it;
  }
}

#undef MINFER_GRID_STRIDE

}  // namespace

void launch_embedding_backward(float* dtable, const float* dout, const int32_t* ids, int64_t N,
                               int64_t C, cudaStream_t s) {
  MINFER_LAUNCH(embedding_backward_kernel, grid(C, kThreads), kThreads, 0, s)
  (dtable, dout, ids, N, C);
}
void launch_rmsnorm_backward(float* dx, float* dw, const float* dout, const float* x,
                             const float* w, const float* rstd, int64_t N, int64_t C,
                             cudaStream_t s) {
  MINFER_LAUNCH(rmsnorm_dx_kernel, unsigned(N), kRowThreads, 0, s)(dx, dout, x, w, rstd, C);
  MINFER_LAUNCH(rmsnorm_dw_kernel, grid(C, kThreads), kThreads, 0, s)(dw, dout, x, rstd, N, C);
}
void launch_swiglu_backward(float* dgate, float* dup, const float* dout, const float* gate,
                            const float* up, int64_t n, cudaStream_t s) {
  MINFER_LAUNCH(swiglu_backward_kernel, grid(n, kThreads), kThreads, 0, s)
  (dgate, dup, dout, gate, up, n);
}
void launch_gelu_backward(float* dx, const float* dout, const float* x, int64_t n, bool tanh_approx,
                          cudaStream_t s) {
  MINFER_LAUNCH(gelu_backward_kernel, grid(n, kThreads), kThreads, 0, s)
  (dx, dout, x, n, tanh_approx);
}
void launch_residual_backward(float* da, float* db, const float* dout, int64_t n, cudaStream_t s) {
  MINFER_LAUNCH(residual_backward_kernel, grid(n, kThreads), kThreads, 0, s)(da, db, dout, n);
}
void launch_cross_entropy_backward(float* dlogits, const float* logits, const int32_t* targets,
                                   int64_t N, int64_t V, float scale, cudaStream_t s) {
  MINFER_LAUNCH(cross_entropy_backward_kernel, unsigned(N), kRowThreads, 0, s)
  (dlogits, logits, targets, V, scale);
}
void launch_kl_backward(float* dstudent, const float* student, const float* teacher, int64_t N,
                        int64_t V, float tau, bool reverse, float scale, cudaStream_t s) {
  MINFER_LAUNCH(kl_backward_kernel, unsigned(N), kRowThreads, 0, s)
  (dstudent, student, teacher, V, tau, reverse, scale);
}

}  // namespace minfer::MINFER_CUDA_NS
