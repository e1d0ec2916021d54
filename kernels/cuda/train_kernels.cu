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

__global__ void embedding_forward_kernel(float* out, const int32_t* ids, const float* table,
                                         int64_t N, int64_t C) {
  MINFER_GRID_STRIDE(i, N * C) {
    out[i] = table[int64_t(ids[i / C]) * C + i % C];
  }
}

__global__ void rmsnorm_forward_kernel(float* out, float* rstd, const float* x, const float* w,
                                       int64_t C, float eps) {
  const int64_t r = blockIdx.x;
  const float* xr = x + r * C;
  float ss = 0;
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) ss += xr[c] * xr[c];
  ss = block_reduce<false>(ss);
  const float rs = 1.f / sqrtf(ss / float(C) + eps);
  if (threadIdx.x == 0) rstd[r] = rs;
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) out[r * C + c] = xr[c] * rs * w[c];
}

__global__ void rope_kernel(float* x, const float* cs, int64_t B, int64_t T, int64_t nh, int64_t D,
                            float sign) {
  const int64_t half = D / 2;
  MINFER_GRID_STRIDE(i, B * T * nh * half) {
    const int64_t j = i % half, row = i / half, n = row / nh;
    const float* c_s = cs + ((n % T) * half + j) * 2;
    const float c = c_s[0], sn = sign * c_s[1];
    float* p = x + row * D;
    const float a = p[j], b = p[j + half];
    p[j] = a * c - b * sn;
    p[j + half] = b * c + a * sn;
  }
}

// Block (b, h, t): one query row. Scores and probabilities go straight to probs (global memory,
// visible to the block after __syncthreads).
__global__ void attention_forward_kernel(float* out, float* probs, const float* q, const float* k,
                                         const float* v, int64_t T, int64_t H, int64_t Hkv,
                                         int64_t D) {
  const int64_t t = blockIdx.x % T, bh = blockIdx.x / T, h = bh % H, b = bh / H;
  const int64_t kh = h / (H / Hkv), qd = H * D, kvd = Hkv * D, lim = t + 1;
  const float scale = 1.f / sqrtf(float(D));
  const float* qr = q + (b * T + t) * qd + h * D;
  float* P = probs + (bh * T + t) * T;
  float mx = -INFINITY;
  for (int64_t s = threadIdx.x; s < T; s += blockDim.x) {
    if (s >= lim) {
      P[s] = 0.f;
      continue;
    }
    const float* kr = k + (b * T + s) * kvd + kh * D;
    float d = 0;
    for (int64_t i = 0; i < D; ++i) d += qr[i] * kr[i];
    P[s] = d * scale;
    mx = fmaxf(mx, P[s]);
  }
  mx = block_reduce<true>(mx);
  float sum = 0;
  for (int64_t s = threadIdx.x; s < lim; s += blockDim.x) {
    P[s] = expf(P[s] - mx);
    sum += P[s];
  }
  sum = block_reduce<false>(sum);
  const float inv = 1.f / sum;
  for (int64_t s = threadIdx.x; s < lim; s += blockDim.x) P[s] *= inv;
  __syncthreads();
  float* o = out + (b * T + t) * qd + h * D;
  for (int64_t i = threadIdx.x; i < D; i += blockDim.x) {
    float acc = 0;
    for (int64_t s = 0; s < lim; ++s) acc += P[s] * v[(b * T + s) * kvd + kh * D + i];
    o[i] = acc;
  }
}

// Block (b, h, t): dS of one query row (into ds) and dq of that row.
__global__ void attention_dq_kernel(float* dq, float* ds, const float* dout, const float* k,
                                    const float* v, const float* probs, int64_t T, int64_t H,
                                    int64_t Hkv, int64_t D) {
  const int64_t t = blockIdx.x % T, bh = blockIdx.x / T, h = bh % H, b = bh / H;
  const int64_t kh = h / (H / Hkv), qd = H * D, kvd = Hkv * D, lim = t + 1;
  const float scale = 1.f / sqrtf(float(D));
  const float* P = probs + (bh * T + t) * T;
  const float* g = dout + (b * T + t) * qd + h * D;
  float* S = ds + (bh * T + t) * T;
  float dot = 0;
  for (int64_t s = threadIdx.x; s < T; s += blockDim.x) {
    if (s >= lim) {
      S[s] = 0.f;
      continue;
    }
    const float* vr = v + (b * T + s) * kvd + kh * D;
    float d = 0;
    for (int64_t i = 0; i < D; ++i) d += g[i] * vr[i];
    S[s] = d;  // dP
    dot += P[s] * d;
  }
  dot = block_reduce<false>(dot);
  for (int64_t s = threadIdx.x; s < lim; s += blockDim.x) S[s] = P[s] * (S[s] - dot) * scale;
  __syncthreads();
  float* dqr = dq + (b * T + t) * qd + h * D;
  for (int64_t i = threadIdx.x; i < D; i += blockDim.x) {
    float acc = 0;
    for (int64_t s = 0; s < lim; ++s) acc += S[s] * k[(b * T + s) * kvd + kh * D + i];
    dqr[i] += acc;
  }
}

// Block (b, kv head, s): dk and dv of one key row, over the group's query heads and the queries
// t >= s that see it.
__global__ void attention_dkv_kernel(float* dk, float* dv, const float* ds, const float* dout,
                                     const float* q, const float* probs, int64_t T, int64_t H,
                                     int64_t Hkv, int64_t D) {
  const int64_t s = blockIdx.x % T, bk = blockIdx.x / T, kh = bk % Hkv, b = bk / Hkv;
  const int64_t group = H / Hkv, qd = H * D, kvd = Hkv * D;
  for (int64_t i = threadIdx.x; i < D; i += blockDim.x) {
    float ak = 0, av = 0;
    for (int64_t h = kh * group; h < (kh + 1) * group; ++h)
      for (int64_t t = s; t < T; ++t) {
        const int64_t pr = ((b * H + h) * T + t) * T + s, row = (b * T + t) * qd + h * D + i;
        ak += ds[pr] * q[row];
        av += probs[pr] * dout[row];
      }
    dk[(b * T + s) * kvd + kh * D + i] += ak;
    dv[(b * T + s) * kvd + kh * D + i] += av;
  }
}

__global__ void swiglu_forward_kernel(float* out, const float* gate, const float* up, int64_t n) {
  MINFER_GRID_STRIDE(i, n) {
    const float g = gate[i];
    out[i] = g / (1.f + expf(-g)) * up[i];
  }
}

__global__ void residual_forward_kernel(float* out, const float* a, const float* b, int64_t n) {
  MINFER_GRID_STRIDE(i, n) {
    out[i] = a[i] + b[i];
  }
}

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

__global__ void sum_squares_kernel(double* partial, const float* x, int64_t n) {
  __shared__ double part[kThreads];
  double acc = 0;
  MINFER_GRID_STRIDE(i, n) {
    acc += double(x[i]) * x[i];
  }
  part[threadIdx.x] = acc;
  __syncthreads();
  for (unsigned k = blockDim.x / 2; k > 0; k >>= 1) {
    if (threadIdx.x < k) part[threadIdx.x] += part[threadIdx.x + k];
    __syncthreads();
  }
  if (threadIdx.x == 0) partial[blockIdx.x] = part[0];
}

__global__ void scale_kernel(float* x, float scale, int64_t n) {
  MINFER_GRID_STRIDE(i, n) {
    x[i] *= scale;
  }
}

__global__ void adamw_kernel(float* w, float* m, float* v, const float* g, int64_t n, AdamWCoef c) {
  MINFER_GRID_STRIDE(i, n) {
    adamw_update(w[i], m[i], v[i], g[i], c);
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

__global__ void cross_entropy_forward_kernel(float* loss, const float* logits,
                                             const int32_t* targets, int64_t V) {
  const int64_t r = blockIdx.x;
  if (targets[r] < 0) {  // the whole block leaves together
    if (threadIdx.x == 0) loss[r] = 0.f;
    return;
  }
  const float* row = logits + r * V;
  const float lse = row_lse(row, V, 1.f);
  if (threadIdx.x == 0) loss[r] = lse - row[targets[r]];
}

__global__ void kl_forward_kernel(float* loss, const float* student, const float* teacher,
                                  int64_t V, float tau, bool reverse) {
  const int64_t r = blockIdx.x;
  const float *s = student + r * V, *t = teacher + r * V;
  const float it = 1.f / tau, ls = row_lse(s, V, it), lt = row_lse(t, V, it);
  float kl = 0;
  for (int64_t c = threadIdx.x; c < V; c += blockDim.x) {
    const float lq = s[c] * it - ls, lp = t[c] * it - lt;
    kl += reverse ? expf(lq) * (lq - lp) : expf(lp) * (lp - lq);
  }
  kl = block_reduce<false>(kl);
  if (threadIdx.x == 0) loss[r] = kl;
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

void launch_embedding_forward(float* out, const int32_t* ids, const float* table, int64_t N,
                              int64_t C, cudaStream_t s) {
  MINFER_LAUNCH(embedding_forward_kernel, grid(N * C, kThreads), kThreads, 0, s)
  (out, ids, table, N, C);
}
void launch_rmsnorm_forward(float* out, float* rstd, const float* x, const float* w, int64_t N,
                            int64_t C, float eps, cudaStream_t s) {
  MINFER_LAUNCH(rmsnorm_forward_kernel, unsigned(N), kRowThreads, 0, s)(out, rstd, x, w, C, eps);
}
void launch_rope(float* x, const float* cs, int64_t B, int64_t T, int64_t nh, int64_t D, float sign,
                 cudaStream_t s) {
  MINFER_LAUNCH(rope_kernel, grid(B * T * nh * (D / 2), kThreads), kThreads, 0, s)
  (x, cs, B, T, nh, D, sign);
}
void launch_attention_forward(float* out, float* probs, const float* q, const float* k,
                              const float* v, int64_t B, int64_t T, int64_t H, int64_t Hkv,
                              int64_t D, cudaStream_t s) {
  MINFER_LAUNCH(attention_forward_kernel, unsigned(B * H * T), kRowThreads, 0, s)
  (out, probs, q, k, v, T, H, Hkv, D);
}
void launch_attention_backward(float* dq, float* dk, float* dv, float* ds, const float* dout,
                               const float* q, const float* k, const float* v, const float* probs,
                               int64_t B, int64_t T, int64_t H, int64_t Hkv, int64_t D,
                               cudaStream_t s) {
  MINFER_LAUNCH(attention_dq_kernel, unsigned(B * H * T), kRowThreads, 0, s)
  (dq, ds, dout, k, v, probs, T, H, Hkv, D);
  MINFER_LAUNCH(attention_dkv_kernel, unsigned(B * Hkv * T), kRowThreads / 2, 0, s)
  (dk, dv, ds, dout, q, probs, T, H, Hkv, D);
}
void launch_swiglu_forward(float* out, const float* gate, const float* up, int64_t n,
                           cudaStream_t s) {
  MINFER_LAUNCH(swiglu_forward_kernel, grid(n, kThreads), kThreads, 0, s)(out, gate, up, n);
}
void launch_residual_forward(float* out, const float* a, const float* b, int64_t n,
                             cudaStream_t s) {
  MINFER_LAUNCH(residual_forward_kernel, grid(n, kThreads), kThreads, 0, s)(out, a, b, n);
}
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
void launch_cross_entropy_forward(float* loss, const float* logits, const int32_t* targets,
                                  int64_t N, int64_t V, cudaStream_t s) {
  MINFER_LAUNCH(cross_entropy_forward_kernel, unsigned(N), kRowThreads, 0, s)
  (loss, logits, targets, V);
}
void launch_kl_forward(float* loss, const float* student, const float* teacher, int64_t N,
                       int64_t V, float tau, bool reverse, cudaStream_t s) {
  MINFER_LAUNCH(kl_forward_kernel, unsigned(N), kRowThreads, 0, s)
  (loss, student, teacher, V, tau, reverse);
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

void launch_sum_squares(double* partial, const float* x, int64_t n, cudaStream_t s) {
  MINFER_LAUNCH(sum_squares_kernel, kSumSquaresBlocks, kThreads, 0, s)(partial, x, n);
}
void launch_scale(float* x, float scale, int64_t n, cudaStream_t s) {
  MINFER_LAUNCH(scale_kernel, grid(n, kThreads), kThreads, 0, s)(x, scale, n);
}
void launch_adamw(float* w, float* m, float* v, const float* g, int64_t n, const AdamWCoef& c,
                  cudaStream_t s) {
  MINFER_LAUNCH(adamw_kernel, grid(n, kThreads), kThreads, 0, s)(w, m, v, g, n, c);
}

}  // namespace minfer::MINFER_CUDA_NS
