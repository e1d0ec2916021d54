// CUDA kernels of the CudaBackend (declarations and legend: kernels.h). The same source runs on a
// GPU (nvcc) and under the test-only CPU emulation (compiled as C++, kernels/cuda/emu/emu.h).
// Quantized formats use the packing and dequantization math of kernels/common/quant_math.h, so
// they agree with the CPU kernels on every code and every activation rounding.
//
// Patterns: element-wise kernels are grid-stride loops; row kernels (norms, softmax) give one
// block to a row and reduce across it (warp shuffles, then one value per warp in shared memory);
// matrix-vector kernels give one warp to an output row and a tile of up to kTT tokens, the lanes
// striding along K and the dequantized weights living only in registers.
#include <cfloat>
#include <cmath>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "kernels/common/codebook_math.h"
#include "kernels/common/ggml_quants.h"
#include "kernels/common/quant_math.h"
#include "kernels/cuda/kernels.h"
#include "kernels/cuda/reduce.h"

#ifdef MINFER_CUDA_EMULATION
#include "engine/half.h"
#else
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#endif

namespace minfer::MINFER_CUDA_NS {

namespace {

constexpr int kElemThreads = 256;
constexpr int64_t kMaxElemBlocks = 1024;
constexpr int kRowThreads = 128;  // norms, softmax
constexpr int kAttnThreads = 64;  // attention: one block per (query, head, sequence)
constexpr int kWarps = 4;         // matrix-vector kernels: output rows per block
constexpr int kTT = 4;            // tokens per warp in the matrix-vector kernels

__device__ __forceinline__ float h2f(uint16_t b) {
#ifdef MINFER_CUDA_EMULATION
  return f16_to_f32(b);
#else
  return __half2float(__ushort_as_half(b));
#endif
}
__device__ __forceinline__ float bf2f(uint16_t b) {
#ifdef MINFER_CUDA_EMULATION
  return bf16_to_f32(b);
#else
  return __bfloat162float(__ushort_as_bfloat16(b));
#endif
}
__device__ __forceinline__ uint16_t f2h(float f) {
#ifdef MINFER_CUDA_EMULATION
  return f32_to_f16(f);
#else
  return __half_as_ushort(__float2half_rn(f));
#endif
}
__device__ __forceinline__ uint16_t f2bf(float f) {
#ifdef MINFER_CUDA_EMULATION
  return f32_to_bf16(f);
#else
  return __bfloat16_as_ushort(__float2bfloat16_rn(f));
#endif
}

int grid_for(int64_t n, int threads) {
  int64_t b = (n + threads - 1) / threads;
  return int(b < 1 ? 1 : b > kMaxElemBlocks ? kMaxElemBlocks : b);
}

// ---- Element-wise.

__device__ __forceinline__ float silu(float v) {
  return v / (1.f + expf(-v));
}

__global__ void binary_kernel(BinOp op, DMat y, DMat a, DMat b) {
  const int64_t n = y.rows * y.cols;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t r = i / y.cols, c = i % y.cols;
    const float u = a.p[r * a.ld + c], v = b.p[r * b.ld + c];
    y.p[r * y.ld + c] = op == BinOp::Add ? u + v : op == BinOp::Mul ? u * v : silu(u) * v;
  }
}

__global__ void unary_kernel(UnOp op, DMat y, DMat x, float p) {
  const int64_t n = y.rows * y.cols;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t r = i / y.cols, c = i % y.cols;
    const float v = x.p[r * x.ld + c];
    float o;
    if (op == UnOp::GeluTanh)  // GPT-2's gelu_new
      o = 0.5f * v * (1.f + tanhf(0.7978845608028654f * (v + 0.044715f * v * v * v)));
    else if (op == UnOp::GeluErf)
      o = 0.5f * v * (1.f + erff(v * 0.70710678f));
    else if (op == UnOp::Scale)
      o = v * p;
    else if (op == UnOp::Softcap)
      o = tanhf(v / p) * p;
    else
      o = silu(v);
    y.p[r * y.ld + c] = o;
  }
}

__global__ void copy_kernel(DMat y, DMat x) {
  const int64_t n = y.rows * y.cols;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t r = i / y.cols, c = i % y.cols;
    y.p[r * y.ld + c] = x.p[r * x.ld + c];
  }
}

__global__ void bias_kernel(DMat y, const float* bias) {
  const int64_t n = y.rows * y.cols;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t r = i / y.cols, c = i % y.cols;
    y.p[r * y.ld + c] += bias[c];
  }
}

// ---- Rows.

// y may alias x: every element is read and written by the same thread.
__global__ void layernorm_kernel(DMat y, DMat x, const float* w, const float* b, float eps) {
  const int64_t r = blockIdx.x;
  const float* xr = x.p + r * x.ld;
  float* yr = y.p + r * y.ld;
  float s = 0;
  for (int64_t c = threadIdx.x; c < x.cols; c += blockDim.x) s += xr[c];
  const float mean = block_reduce<false>(s) / float(x.cols);
  float v = 0;
  for (int64_t c = threadIdx.x; c < x.cols; c += blockDim.x) v += (xr[c] - mean) * (xr[c] - mean);
  const float inv = 1.f / sqrtf(block_reduce<false>(v) / float(x.cols) + eps);
  for (int64_t c = threadIdx.x; c < x.cols; c += blockDim.x)
    yr[c] = (xr[c] - mean) * inv * w[c] + b[c];
}

__global__ void rmsnorm_kernel(DMat y, DMat x, const float* w, float eps) {
  const int64_t r = blockIdx.x;
  const float* xr = x.p + r * x.ld;
  float* yr = y.p + r * y.ld;
  float s = 0;
  for (int64_t c = threadIdx.x; c < x.cols; c += blockDim.x) s += xr[c] * xr[c];
  const float inv = 1.f / sqrtf(block_reduce<false>(s) / float(x.cols) + eps);
  for (int64_t c = threadIdx.x; c < x.cols; c += blockDim.x) yr[c] = xr[c] * inv * w[c];
}

// A row whose values are all -inf (every key masked) becomes all 0, as on the CPU.
__global__ void softmax_kernel(DMat y, DMat x) {
  const int64_t r = blockIdx.x;
  const float* xr = x.p + r * x.ld;
  float* yr = y.p + r * y.ld;
  float mx = -INFINITY;
  for (int64_t c = threadIdx.x; c < x.cols; c += blockDim.x) mx = fmaxf(mx, xr[c]);
  mx = block_reduce<true>(mx);
  if (mx == -INFINITY) {
    for (int64_t c = threadIdx.x; c < x.cols; c += blockDim.x) yr[c] = 0.f;
    return;
  }
  float s = 0;
  for (int64_t c = threadIdx.x; c < x.cols; c += blockDim.x) {
    const float e = expf(xr[c] - mx);
    yr[c] = e;
    s += e;
  }
  const float inv = 1.f / block_reduce<false>(s);
  for (int64_t c = threadIdx.x; c < x.cols; c += blockDim.x) yr[c] *= inv;
}

// HF rotate_half layout: the pairs are (i, i + D/2).
__global__ void rope_kernel(DMat x, const float* cs, int64_t n_heads, int64_t head_dim) {
  const int64_t half = head_dim / 2, n = x.rows * n_heads * half;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t t = i / (n_heads * half), h = i / half % n_heads, j = i % half;
    float* p = x.p + t * x.ld + h * head_dim;
    const float c = cs[(t * half + j) * 2], s = cs[(t * half + j) * 2 + 1];
    const float a = p[j], b = p[j + half];
    p[j] = a * c - b * s;
    p[j + half] = b * c + a * s;
  }
}

__global__ void embedding_kernel(DMat y, const void* table, int dtype, const int32_t* ids,
                                 bool accumulate) {
  const int64_t n = y.rows * y.cols, C = y.cols;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t t = i / C, c = i % C, e = int64_t(ids[t]) * C + c;
    const float v = dtype == 0   ? static_cast<const float*>(table)[e]
                    : dtype == 1 ? h2f(static_cast<const uint16_t*>(table)[e])
                                 : bf2f(static_cast<const uint16_t*>(table)[e]);
    float* o = y.p + t * y.ld + c;
    *o = accumulate ? *o + v : v;
  }
}

// ---- Attention: one block per (query t, head h, sequence b). Scores of the S keys live in
// dynamic shared memory after the query vector: D + S floats.
__global__ void attention_kernel(AttnParams a) {
  MINFER_DYN_SHARED(float, shm);
  float* sq = shm;
  float* sc = shm + a.D;
  const int64_t t = blockIdx.x, h = blockIdx.y, b = blockIdx.z;
  const int64_t kh = h / (a.H / a.Hkv);
  const float* qp = a.q + (b * a.T + t) * a.ldq + h * a.D;
  // Element i of this head's keys / values (i = j * ld + d), from an F32 or an F16 cache.
  const int64_t ko = b * a.S * a.ldk + kh * a.D, vo = b * a.S * a.ldv + kh * a.D;
  auto kat = [&](int64_t i) { return a.k16 ? h2f(a.k16[ko + i]) : a.k[ko + i]; };
  auto vat = [&](int64_t i) { return a.v16 ? h2f(a.v16[vo + i]) : a.v[vo + i]; };
  float* op = a.out + (b * a.T + t) * a.ldo + h * a.D;
  for (int64_t d = threadIdx.x; d < a.D; d += blockDim.x) sq[d] = qp[d];
  __syncthreads();
  const int64_t limit = a.causal ? (a.pos0 + t + 1 < a.S ? a.pos0 + t + 1 : a.S) : a.S;
  // Sliding window (Gemma-2's local layers): the first key this query sees.
  const int64_t first =
      a.window > 0 && a.causal && a.pos0 + t - a.window + 1 > 0 ? a.pos0 + t - a.window + 1 : 0;
  float mx = -INFINITY;
  for (int64_t j = threadIdx.x; j < a.S; j += blockDim.x) {
    float s = -INFINITY;
    if (j >= first && j < limit && (!a.key_mask || a.key_mask[b * a.S + j] != 0)) {
      float dot = 0;
      for (int64_t d = 0; d < a.D; ++d) dot += sq[d] * kat(j * a.ldk + d);
      s = dot * a.scale;
      if (a.softcap > 0) s = tanhf(s / a.softcap) * a.softcap;  // Gemma-2, before the mask
    }
    sc[j] = s;
    mx = fmaxf(mx, s);
  }
  mx = block_reduce<true>(mx);
  if (mx == -INFINITY) {  // every key masked: attend to nothing
    for (int64_t d = threadIdx.x; d < a.D; d += blockDim.x) op[d] = 0.f;
    return;
  }
  float sum = 0;
  for (int64_t j = threadIdx.x; j < a.S; j += blockDim.x) {
    const float e = sc[j] == -INFINITY ? 0.f : expf(sc[j] - mx);
    sc[j] = e;
    sum += e;
  }
  const float inv = 1.f / block_reduce<false>(sum);
  for (int64_t j = threadIdx.x; j < a.S; j += blockDim.x) sc[j] *= inv;
  __syncthreads();
  for (int64_t d = threadIdx.x; d < a.D; d += blockDim.x) {
    float acc = 0;
    for (int64_t j = 0; j < a.S; ++j) acc += sc[j] * vat(j * a.ldv + d);
    op[d] = acc;
  }
}

// ---- Dense half-precision weights, few rows.

__global__ void dense_half_gemv_kernel(HalfType ht, const uint16_t* w, bool transposed,
                                       const float* x, int64_t T, int64_t ldx, float* y,
                                       int64_t ldy, int64_t K, int64_t N) {
  const int lane = threadIdx.x % 32;
  const int64_t n = int64_t(blockIdx.x) * kWarps + threadIdx.x / 32;
  const int64_t t0 = int64_t(blockIdx.y) * kTT;
  if (n >= N) return;  // whole warps leave together; no block barrier follows
  const int64_t nt = T - t0 < kTT ? T - t0 : kTT;
  float acc[kTT] = {};
  for (int64_t k = lane; k < K; k += 32) {
    const uint16_t bits = transposed ? w[k * N + n] : w[n * K + k];
    const float wv = ht == HalfType::F16 ? h2f(bits) : bf2f(bits);
    for (int64_t i = 0; i < nt; ++i) acc[i] += wv * x[(t0 + i) * ldx + k];
  }
  for (int64_t i = 0; i < kTT; ++i) {
    const float s = warp_sum(acc[i]);
    if (lane == 0 && i < nt) y[(t0 + i) * ldy + n] = s;
  }
}

__global__ void to_half_kernel(HalfType ht, const float* x, int64_t T, int64_t ldx, int64_t K,
                               uint16_t* out, int64_t ldo) {
  const int64_t n = T * K;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    const float v = x[(i / K) * ldx + i % K];
    out[(i / K) * ldo + i % K] = ht == HalfType::F16 ? f2h(v) : f2bf(v);
  }
}

// ---- Quantized.

// One thread per (row, block): the shared quantizers, sequential within a block.
__global__ void quantize_act_kernel(const float* x, int64_t T, int64_t ldx, int64_t K, int64_t QA,
                                    float static_scale, int8_t* q, float* d, int32_t* sums) {
  const int64_t Kp = qm::padded_k(K), nb = qm::ceil_div(Kp, QA);
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < T * nb;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t t = i / nb, b = i % nb, k0 = b * QA;
    const int64_t len = Kp - k0 < QA ? Kp - k0 : QA;
    const int64_t n = K - k0 < 0 ? 0 : K - k0 < len ? K - k0 : len;
    if (static_scale > 0.f)
      qm::quantize_act_static(x + t * ldx + k0, int(n), int(len), static_scale, q + t * Kp + k0,
                              d + i, sums + i);
    else
      qm::quantize_act_block(x + t * ldx + k0, int(n), int(len), q + t * Kp + k0, d + i, sums + i);
  }
}

// Signed weight value u - z of 4 consecutive codes k..k+3 (k a multiple of 4, inside one group).
template <QScheme S>
__device__ __forceinline__ void codes4(const uint8_t* row, int64_t k, int z, int* wi) {
  for (int j = 0; j < 4; ++j) {
    int u;
    if (S == QScheme::Int8) u = row[k + j];
    if (S == QScheme::Int4) u = qm::get_q4(row, k + j);
    if (S == QScheme::Int3) u = qm::get_q3(row, k + j);
    if (S == QScheme::Binary) u = 2 * qm::get_q1(row, k + j);
    if (S == QScheme::Ternary) u = qm::get_q2(row, k + j);
    wi[j] = u - z;
  }
}

// S: 0 Int8, 1 Int4, 3 Binary, 4 Ternary, 5 Int3 (QScheme values). The integer sums are exact; each
// 4-weight slice adds float(Σ (u - z) q) * s_w * d_x to the f32 accumulator.
template <QScheme S>
__global__ void int_linear_kernel(QWeight w, const int8_t* q, const float* d, int64_t QA, int64_t T,
                                  float* y, int64_t ldy) {
  const int lane = threadIdx.x % 32;
  const int64_t n = int64_t(blockIdx.x) * kWarps + threadIdx.x / 32;
  const int64_t t0 = int64_t(blockIdx.y) * kTT;
  if (n >= w.N) return;
  const int64_t nt = T - t0 < kTT ? T - t0 : kTT;
  const int64_t Kp = qm::padded_k(w.K), nb = qm::ceil_div(Kp, QA);
  const uint8_t* row = w.codes + n * w.rb;
  const int zc = S == QScheme::Int8   ? 128
                 : S == QScheme::Int4 ? 8
                 : S == QScheme::Int3 ? 4
                                      : 1;  // zero code of the symmetric formats
  float acc[kTT] = {};
  for (int64_t k = int64_t(lane) * 4; k < Kp; k += 128) {
    const int64_t b = k / QA;
    // Activation block b lies in weight group b * QA / G (QA divides G or G = K); padding past
    // the last group uses the last group, as on the CPU.
    int64_t g = w.per_tensor ? 0 : b * QA / w.group;
    if (g > w.groups - 1) g = w.groups - 1;
    const int64_t si = w.per_tensor ? 0 : n * w.groups + g;
    const int z = w.zeros ? w.zeros[si] : zc;
    const float sw = w.scales[si];
    if (S == QScheme::Int8) {
      // int8: u ^ 0x80 is the signed code u - 128 in each byte, ready for dp4a.
      const int wq = int(*reinterpret_cast<const uint32_t*>(row + k) ^ 0x80808080u);
      for (int64_t i = 0; i < nt; ++i) {
        const int xq = *reinterpret_cast<const int*>(q + (t0 + i) * Kp + k);
        acc[i] += float(__dp4a(wq, xq, 0)) * (sw * d[(t0 + i) * nb + b]);
      }
    } else {
      int wi[4];
      codes4<S>(row, k, z, wi);
      for (int64_t i = 0; i < nt; ++i) {
        const int8_t* xq = q + (t0 + i) * Kp + k;
        const int dot = wi[0] * xq[0] + wi[1] * xq[1] + wi[2] * xq[2] + wi[3] * xq[3];
        acc[i] += float(dot) * (sw * d[(t0 + i) * nb + b]);
      }
    }
  }
  for (int64_t i = 0; i < kTT; ++i) {
    const float s = warp_sum(acc[i]);
    if (lane == 0 && i < nt) y[(t0 + i) * ldy + n] = s;
  }
}

__device__ __forceinline__ float nf4_scale(const QWeight& w, int64_t n, int64_t g) {
  const int64_t i = n * w.groups + g;
  return w.scale_codes ? qm::dq_block_scale(w.scale_codes[i], w.scale_scales[i / qm::kDqBlock],
                                            w.scale_offset)
                       : w.scales[i];
}

// Weight-only formats against f32 activations, as the CPU kernels compute them: each weight is
// dequantized in registers to exactly dequantize_weight's value, s * (u - z) or NF4's
// s * kNF4[u]. S: QScheme value (0 Int8, 1 Int4, 2 NF4, 3 Binary, 4 Ternary, 5 Int3: its 3-bit
// codes read from the packed bit stream, qm::get_q3).
template <QScheme S>
__global__ void wq_linear_kernel(QWeight w, const float* x, int64_t T, int64_t ldx, float* y,
                                 int64_t ldy) {
  const int lane = threadIdx.x % 32;
  const int64_t n = int64_t(blockIdx.x) * kWarps + threadIdx.x / 32;
  const int64_t t0 = int64_t(blockIdx.y) * kTT;
  if (n >= w.N) return;
  const int64_t nt = T - t0 < kTT ? T - t0 : kTT;
  const uint8_t* row = w.codes + n * w.rb;
  float acc[kTT] = {};
  for (int64_t k = lane; k < w.K; k += 32) {
    const int64_t g = k / w.group;
    float wv;
    if (S == QScheme::NF4) {
      wv = nf4_scale(w, n, g) * qm::nf4_value(qm::get_q4(row, k));
    } else {
      const int64_t si = w.per_tensor ? 0 : n * w.groups + g;
      const int u = S == QScheme::Int8     ? int(row[k])
                    : S == QScheme::Int4   ? qm::get_q4(row, k)
                    : S == QScheme::Int3   ? qm::get_q3(row, k)
                    : S == QScheme::Binary ? 2 * qm::get_q1(row, k)
                                           : qm::get_q2(row, k);
      const int z = w.zeros              ? int(w.zeros[si])
                    : S == QScheme::Int8 ? 128
                    : S == QScheme::Int4 ? 8
                    : S == QScheme::Int3 ? 4
                                         : 1;
      wv = qm::dequant_uz(u, z, w.scales[si]);
    }
    for (int64_t i = 0; i < nt; ++i) acc[i] += wv * x[(t0 + i) * ldx + k];
  }
  for (int64_t i = 0; i < kTT; ++i) {
    const float s = warp_sum(acc[i]);
    if (lane == 0 && i < nt) y[(t0 + i) * ldy + n] = s;
  }
}

__device__ __forceinline__ int popc8(unsigned v) {
  v = v - ((v >> 1) & 0x55u);
  v = (v & 0x33u) + ((v >> 2) & 0x33u);
  return int((v + (v >> 4)) & 0x0fu);
}

__device__ __forceinline__ float sparse_value(const SWeight& w, int64_t n, int64_t j) {
  switch (w.vkind) {
    case 0:
      return static_cast<const float*>(w.vals)[n * w.ld + j];
    case 1:
      return h2f(static_cast<const uint16_t*>(w.vals)[n * w.ld + j]);
    case 2:
      return bf2f(static_cast<const uint16_t*>(w.vals)[n * w.ld + j]);
    default:
      return qm::dequant_uz(static_cast<const uint8_t*>(w.vals)[n * w.ld + j], 128,
                            w.per_tensor ? w.scales[0] : w.scales[n]);
  }
}

// SparseBitmask: one warp per output row n and up to kTT tokens; per chunk of 32 mask bytes each
// lane takes one byte (8 inputs), and an inclusive warp scan of the bytes' popcounts gives the
// index of the lane's first kept value in the row's packed values.
__global__ void sparse_linear_kernel(SWeight w, const float* x, int64_t T, int64_t ldx, float* y,
                                     int64_t ldy) {
  const int lane = threadIdx.x % 32;
  const int64_t n = int64_t(blockIdx.x) * kWarps + threadIdx.x / 32;
  const int64_t t0 = int64_t(blockIdx.y) * kTT;
  if (n >= w.N) return;
  const int64_t nt = T - t0 < kTT ? T - t0 : kTT;
  const uint8_t* mrow = w.mask + n * w.kb;
  float acc[kTT] = {};
  int64_t base = 0;  // kept values in the chunks before this one
  for (int64_t b0 = 0; b0 < w.kb; b0 += 32) {
    const int64_t b = b0 + lane;
    const unsigned byte = b < w.kb ? mrow[b] : 0u;
    const int c = popc8(byte);
    int incl = c;
    for (int d = 1; d < 32; d <<= 1) {
      const int o = __shfl_sync(kFull, incl, lane >= d ? lane - d : lane);
      if (lane >= d) incl += o;
    }
    const int chunk = __shfl_sync(kFull, incl, 31);
    int64_t j = base + incl - c;
    for (int i = 0; i < 8; ++i) {
      if (!((byte >> i) & 1u)) continue;
      const int64_t k = b * 8 + i;
      const float wv = sparse_value(w, n, j++);
      for (int64_t t = 0; t < nt; ++t) acc[t] += wv * x[(t0 + t) * ldx + k];
    }
    base += chunk;
  }
  for (int64_t i = 0; i < kTT; ++i) {
    const float s = warp_sum(acc[i]);
    if (lane == 0 && i < nt) y[(t0 + i) * ldy + n] = s;
  }
}

// Sparse24: one warp per output row n and up to kTT tokens; lane l takes index bytes b = l,
// l + 32, ...: byte b holds the codes of groups 2b and 2b + 1 (8 inputs), whose 4 kept values are
// values[n, 4b .. 4b + 3] (no scan: every group keeps exactly 2).
__global__ void sparse24_linear_kernel(SWeight w, const float* x, int64_t T, int64_t ldx, float* y,
                                       int64_t ldy) {
  const int lane = threadIdx.x % 32;
  const int64_t n = int64_t(blockIdx.x) * kWarps + threadIdx.x / 32;
  const int64_t t0 = int64_t(blockIdx.y) * kTT;
  if (n >= w.N) return;
  const int64_t nt = T - t0 < kTT ? T - t0 : kTT;
  const uint8_t* ib = w.mask + n * w.kb;
  const int64_t groups = w.K / 4;
  float acc[kTT] = {};
  for (int64_t b = lane; b < w.kb; b += 32) {
    const unsigned byte = ib[b];
    for (int j = 0; j < 4; ++j) {
      const int64_t g = 2 * b + j / 2;
      if (g >= groups) break;
      const int64_t k = 4 * g + ((byte >> (2 * j)) & 3u);
      const float wv = sparse_value(w, n, 4 * b + j);
      for (int64_t t = 0; t < nt; ++t) acc[t] += wv * x[(t0 + t) * ldx + k];
    }
  }
  for (int64_t i = 0; i < kTT; ++i) {
    const float s = warp_sum(acc[i]);
    if (lane == 0 && i < nt) y[(t0 + i) * ldy + n] = s;
  }
}

// SparseCsr: one warp per output row n and up to kTT tokens; lane l takes the row's kept weights
// j = l, l + 32, ... (consecutive lanes read consecutive columns and values).
__global__ void sparse_csr_linear_kernel(SWeight w, const float* x, int64_t T, int64_t ldx,
                                         float* y, int64_t ldy) {
  const int lane = threadIdx.x % 32;
  const int64_t n = int64_t(blockIdx.x) * kWarps + threadIdx.x / 32;
  const int64_t t0 = int64_t(blockIdx.y) * kTT;
  if (n >= w.N) return;
  const int64_t nt = T - t0 < kTT ? T - t0 : kTT;
  const int64_t c = w.row_ptr[n + 1] - w.row_ptr[n];
  const uint16_t* col = w.col + n * w.kb;
  float acc[kTT] = {};
  for (int64_t j = lane; j < c; j += 32) {
    const int64_t k = col[j];
    const float wv = sparse_value(w, n, j);
    for (int64_t t = 0; t < nt; ++t) acc[t] += wv * x[(t0 + t) * ldx + k];
  }
  for (int64_t i = 0; i < kTT; ++i) {
    const float s = warp_sum(acc[i]);
    if (lane == 0 && i < nt) y[(t0 + i) * ldy + n] = s;
  }
}

// Codebook: one warp per output row n and up to kTT tokens; lane l takes weights k = l, l + 32,
// ... (coalesced x reads; the index bytes of a 32-weight step are 4 b consecutive bytes).
__global__ void codebook_linear_kernel(CWeight w, const float* x, int64_t T, int64_t ldx, float* y,
                                       int64_t ldy) {
  const int lane = threadIdx.x % 32;
  const int64_t n = int64_t(blockIdx.x) * kWarps + threadIdx.x / 32;
  const int64_t t0 = int64_t(blockIdx.y) * kTT;
  if (n >= w.N) return;
  const int64_t nt = T - t0 < kTT ? T - t0 : kTT;
  const uint8_t* row = w.indices + n * w.rb;
  const int64_t nc = int64_t(1) << w.bits;
  float acc[kTT] = {};
  for (int64_t k = lane; k < w.K; k += 32) {
    const unsigned i = cb::index_at(row, k, w.bits);
    const float wv = h2f(w.centroids[(n * w.ng + k / w.group) * nc + i]);
    for (int64_t t = 0; t < nt; ++t) acc[t] += wv * x[(t0 + t) * ldx + k];
  }
  for (int64_t i = 0; i < kTT; ++i) {
    const float s = warp_sum(acc[i]);
    if (lane == 0 && i < nt) y[(t0 + i) * ldy + n] = s;
  }
}

// One thread per feature k: flag it, and copy its column with outliers zeroed.
__global__ void outlier_split_kernel(const float* x, int64_t T, int64_t ldx, int64_t K,
                                     float threshold, const int32_t* col_index, uint8_t* flags,
                                     float* xm) {
  for (int64_t k = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; k < K;
       k += int64_t(gridDim.x) * blockDim.x) {
    bool out = col_index[k] >= 0;
    for (int64_t t = 0; t < T && !out; ++t) out = fabsf(x[t * ldx + k]) >= threshold;
    flags[k] = out ? 1 : 0;
    for (int64_t t = 0; t < T; ++t) xm[t * K + k] = out ? 0.f : x[t * ldx + k];
  }
}

__global__ void outlier_add_kernel(QWeight w, const float* x, int64_t T, int64_t ldx,
                                   const uint8_t* flags, const int32_t* col_index,
                                   const uint16_t* outlier_w, int64_t m, float* y, int64_t ldy) {
  const int lane = threadIdx.x % 32;
  const int64_t n = int64_t(blockIdx.x) * kWarps + threadIdx.x / 32;
  const int64_t t0 = int64_t(blockIdx.y) * kTT;
  if (n >= w.N) return;
  const int64_t nt = T - t0 < kTT ? T - t0 : kTT;
  const uint8_t* row = w.codes + n * w.rb;
  const float sw = w.scales[n];
  float acc[kTT] = {};
  for (int64_t k = lane; k < w.K; k += 32) {
    if (!flags[k]) continue;
    const int32_t ci = col_index[k];
    const float wv = ci >= 0 ? h2f(outlier_w[n * m + ci]) : qm::dequant_uz(row[k], 128, sw);
    for (int64_t i = 0; i < nt; ++i) acc[i] += x[(t0 + i) * ldx + k] * wv;
  }
  for (int64_t i = 0; i < kTT; ++i) {
    const float s = warp_sum(acc[i]);
    if (lane == 0 && i < nt) y[(t0 + i) * ldy + n] += s;
  }
}

// GgmlBlocks: one warp per output row n and up to kTT tokens; lane l takes blocks l, l + 32, ...
// of the row, dequantizes each (the host's ggml::dequant_block) and dots it with x.
template <typename Block, int QK>
__global__ void ggml_linear_kernel(GWeight w, const float* x, int64_t T, int64_t ldx, float* y,
                                   int64_t ldy) {
  const int lane = threadIdx.x % 32;
  const int64_t n = int64_t(blockIdx.x) * kWarps + threadIdx.x / 32;
  const int64_t t0 = int64_t(blockIdx.y) * kTT;
  if (n >= w.N) return;
  const int64_t nt = T - t0 < kTT ? T - t0 : kTT, nb = w.K / QK;
  const Block* row = reinterpret_cast<const Block*>(w.blocks + n * w.rb);
  float acc[kTT] = {};
  float v[QK];
  for (int64_t b = lane; b < nb; b += 32) {
    ggml::dequant_block(row[b], v);
    for (int64_t i = 0; i < nt; ++i) {
      const float* xr = x + (t0 + i) * ldx + b * QK;
      float a = 0.f;
      for (int j = 0; j < QK; ++j) a += v[j] * xr[j];
      acc[i] += a;
    }
  }
  for (int64_t i = 0; i < kTT; ++i) {
    const float s = warp_sum(acc[i]);
    if (lane == 0 && i < nt) y[(t0 + i) * ldy + n] = s;
  }
}

// GgmlBlocks embedding rows: one thread per (token, block).
template <typename Block, int QK>
__global__ void ggml_rows_kernel(GWeight w, const int32_t* ids, DMat y, bool accumulate) {
  const int64_t nb = w.K / QK, n = y.rows * nb;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t t = i / nb, b = i % nb;
    const Block* row = reinterpret_cast<const Block*>(w.blocks + int64_t(ids[t]) * w.rb);
    float v[QK];
    ggml::dequant_block(row[b], v);
    float* o = y.p + t * y.ld + b * QK;
    for (int j = 0; j < QK; ++j) o[j] = accumulate ? o[j] + v[j] : v[j];
  }
}

dim3 rows_grid(int64_t N, int64_t T) {
  return dim3(unsigned((N + kWarps - 1) / kWarps), unsigned((T + kTT - 1) / kTT));
}

}  // namespace

// ---- Launchers.

void launch_binary(BinOp op, DMat y, DMat a, DMat b, cudaStream_t s) {
  MINFER_LAUNCH(binary_kernel, grid_for(y.rows * y.cols, kElemThreads), kElemThreads, 0, s)
  (op, y, a, b);
}
void launch_unary(UnOp op, DMat y, DMat x, cudaStream_t s, float p) {
  MINFER_LAUNCH(unary_kernel, grid_for(y.rows * y.cols, kElemThreads), kElemThreads, 0, s)
  (op, y, x, p);
}
void launch_copy(DMat y, DMat x, cudaStream_t s) {
  MINFER_LAUNCH(copy_kernel, grid_for(y.rows * y.cols, kElemThreads), kElemThreads, 0, s)(y, x);
}
void launch_add_bias(DMat y, const float* bias, cudaStream_t s) {
  MINFER_LAUNCH(bias_kernel, grid_for(y.rows * y.cols, kElemThreads), kElemThreads, 0, s)
  (y, bias);
}
void launch_layernorm(DMat y, DMat x, const float* w, const float* b, float eps, cudaStream_t s) {
  MINFER_LAUNCH(layernorm_kernel, unsigned(x.rows), kRowThreads, 0, s)(y, x, w, b, eps);
}
void launch_rmsnorm(DMat y, DMat x, const float* w, float eps, cudaStream_t s) {
  MINFER_LAUNCH(rmsnorm_kernel, unsigned(x.rows), kRowThreads, 0, s)(y, x, w, eps);
}
void launch_softmax(DMat y, DMat x, cudaStream_t s) {
  MINFER_LAUNCH(softmax_kernel, unsigned(x.rows), kRowThreads, 0, s)(y, x);
}
void launch_rope(DMat x, const float* cs, int64_t n_heads, int64_t head_dim, cudaStream_t s) {
  MINFER_LAUNCH(rope_kernel, grid_for(x.rows * n_heads * head_dim / 2, kElemThreads), kElemThreads,
                0, s)
  (x, cs, n_heads, head_dim);
}
void launch_embedding(DMat y, const void* table, int dtype, const int32_t* ids, bool accumulate,
                      cudaStream_t s) {
  MINFER_LAUNCH(embedding_kernel, grid_for(y.rows * y.cols, kElemThreads), kElemThreads, 0, s)
  (y, table, dtype, ids, accumulate);
}

size_t attention_shared_bytes(int64_t D, int64_t S) {
  return size_t(D + S) * sizeof(float);
}
void launch_attention(const AttnParams& a, cudaStream_t s) {
  const size_t shmem = attention_shared_bytes(a.D, a.S);
#ifndef MINFER_CUDA_EMULATION
  // Beyond the default 48 KB of dynamic shared memory a kernel must opt in.
  if (shmem > 48 * 1024)
    cudaFuncSetAttribute(attention_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(shmem));
#endif
  MINFER_LAUNCH(attention_kernel, dim3(unsigned(a.T), unsigned(a.H), unsigned(a.B)), kAttnThreads,
                shmem, s)
  (a);
}

void launch_dense_half_gemv(HalfType ht, const uint16_t* w, bool transposed, const float* x,
                            int64_t T, int64_t ldx, float* y, int64_t ldy, int64_t K, int64_t N,
                            cudaStream_t s) {
  MINFER_LAUNCH(dense_half_gemv_kernel, rows_grid(N, T), kWarps * 32, 0, s)
  (ht, w, transposed, x, T, ldx, y, ldy, K, N);
}
void launch_to_half(HalfType ht, const float* x, int64_t T, int64_t ldx, int64_t K, uint16_t* out,
                    int64_t ldo, cudaStream_t s) {
  MINFER_LAUNCH(to_half_kernel, grid_for(T * K, kElemThreads), kElemThreads, 0, s)
  (ht, x, T, ldx, K, out, ldo);
}

void launch_quantize_act(const float* x, int64_t T, int64_t ldx, int64_t K, int64_t QA, int8_t* q,
                         float* d, int32_t* sums, cudaStream_t s) {
  const int64_t nb = qm::ceil_div(qm::padded_k(K), QA);
  MINFER_LAUNCH(quantize_act_kernel, grid_for(T * nb, 64), 64, 0, s)
  (x, T, ldx, K, QA, 0.f, q, d, sums);
}
void launch_quantize_act_static(const float* x, int64_t T, int64_t ldx, int64_t K, float scale,
                                int8_t* q, float* d, int32_t* sums, cudaStream_t s) {
  MINFER_LAUNCH(quantize_act_kernel, grid_for(T, 64), 64, 0, s)
  (x, T, ldx, K, qm::padded_k(K), scale, q, d, sums);
}

void launch_int_linear(const QWeight& w, const int8_t* q, const float* d, int64_t QA, int64_t T,
                       float* y, int64_t ldy, cudaStream_t s) {
  const dim3 g = rows_grid(w.N, T);
  switch (w.scheme) {
    case QScheme::Int8:
      MINFER_LAUNCH(int_linear_kernel<QScheme::Int8>, g, kWarps * 32, 0, s)
      (w, q, d, QA, T, y, ldy);
      return;
    case QScheme::Int4:
      MINFER_LAUNCH(int_linear_kernel<QScheme::Int4>, g, kWarps * 32, 0, s)
      (w, q, d, QA, T, y, ldy);
      return;
    case QScheme::Int3:
      MINFER_LAUNCH(int_linear_kernel<QScheme::Int3>, g, kWarps * 32, 0, s)
      (w, q, d, QA, T, y, ldy);
      return;
    case QScheme::Binary:
      MINFER_LAUNCH(int_linear_kernel<QScheme::Binary>, g, kWarps * 32, 0, s)
      (w, q, d, QA, T, y, ldy);
      return;
    case QScheme::Ternary:
      MINFER_LAUNCH(int_linear_kernel<QScheme::Ternary>, g, kWarps * 32, 0, s)
      (w, q, d, QA, T, y, ldy);
      return;
    case QScheme::NF4:  // a table lookup, not an integer code: no integer dot product
      break;
  }
  throw std::invalid_argument(std::string("launch_int_linear: no integer kernel for scheme ") +
                              qscheme_info(w.scheme).name);
}
void launch_wq_linear(const QWeight& w, const float* x, int64_t T, int64_t ldx, float* y,
                      int64_t ldy, cudaStream_t s) {
  const dim3 g = rows_grid(w.N, T);
  switch (w.scheme) {
    case QScheme::Int8:
      MINFER_LAUNCH(wq_linear_kernel<QScheme::Int8>, g, kWarps * 32, 0, s)(w, x, T, ldx, y, ldy);
      return;
    case QScheme::Int4:
      MINFER_LAUNCH(wq_linear_kernel<QScheme::Int4>, g, kWarps * 32, 0, s)(w, x, T, ldx, y, ldy);
      return;
    case QScheme::Int3:
      MINFER_LAUNCH(wq_linear_kernel<QScheme::Int3>, g, kWarps * 32, 0, s)(w, x, T, ldx, y, ldy);
      return;
    case QScheme::NF4:
      MINFER_LAUNCH(wq_linear_kernel<QScheme::NF4>, g, kWarps * 32, 0, s)(w, x, T, ldx, y, ldy);
      return;
    case QScheme::Binary:
      MINFER_LAUNCH(wq_linear_kernel<QScheme::Binary>, g, kWarps * 32, 0, s)
      (w, x, T, ldx, y, ldy);
      return;
    case QScheme::Ternary:
      MINFER_LAUNCH(wq_linear_kernel<QScheme::Ternary>, g, kWarps * 32, 0, s)
      (w, x, T, ldx, y, ldy);
      return;
  }
  throw std::invalid_argument("launch_wq_linear: invalid scheme value " +
                              std::to_string(int(w.scheme)));
}

// Calls f(Block{}, QK) for the block type of w; throws for another type.
template <typename F>
void ggml_dispatch(uint32_t type, F f) {
  using ggml::BlockType;
  switch (BlockType(type)) {
    case BlockType::Q4_0:
      return f(ggml::BlockQ4_0{}, std::integral_constant<int, ggml::QK4_0>{});
    case BlockType::Q4_1:
      return f(ggml::BlockQ4_1{}, std::integral_constant<int, ggml::QK4_1>{});
    case BlockType::Q5_0:
      return f(ggml::BlockQ5_0{}, std::integral_constant<int, ggml::QK5_0>{});
    case BlockType::Q5_1:
      return f(ggml::BlockQ5_1{}, std::integral_constant<int, ggml::QK5_1>{});
    case BlockType::Q8_0:
      return f(ggml::BlockQ8_0{}, std::integral_constant<int, ggml::QK8_0>{});
    case BlockType::Q2_K:
      return f(ggml::BlockQ2_K{}, std::integral_constant<int, ggml::QK_K>{});
    case BlockType::Q3_K:
      return f(ggml::BlockQ3_K{}, std::integral_constant<int, ggml::QK_K>{});
    case BlockType::Q4_K:
      return f(ggml::BlockQ4_K{}, std::integral_constant<int, ggml::QK_K>{});
    case BlockType::Q5_K:
      return f(ggml::BlockQ5_K{}, std::integral_constant<int, ggml::QK_K>{});
    case BlockType::Q6_K:
      return f(ggml::BlockQ6_K{}, std::integral_constant<int, ggml::QK_K>{});
  }
  throw std::invalid_argument("ggml kernels: unsupported GGML type " + std::to_string(type));
}

void launch_ggml_linear(const GWeight& w, const float* x, int64_t T, int64_t ldx, float* y,
                        int64_t ldy, cudaStream_t s) {
  ggml_dispatch(w.type, [&](auto blk, auto qk) {
    auto* k = ggml_linear_kernel<decltype(blk), decltype(qk)::value>;
    MINFER_LAUNCH(k, rows_grid(w.N, T), kWarps * 32, 0, s)(w, x, T, ldx, y, ldy);
  });
}

void launch_ggml_rows(const GWeight& w, const int32_t* ids, DMat y, bool accumulate,
                      cudaStream_t s) {
  ggml_dispatch(w.type, [&](auto blk, auto qk) {
    auto* k = ggml_rows_kernel<decltype(blk), decltype(qk)::value>;
    MINFER_LAUNCH(k, grid_for(y.rows * (w.K / decltype(qk)::value), kElemThreads), kElemThreads, 0,
                  s)
    (w, ids, y, accumulate);
  });
}

void launch_codebook_linear(const CWeight& w, const float* x, int64_t T, int64_t ldx, float* y,
                            int64_t ldy, cudaStream_t s) {
  if (T == 0 || w.N == 0) return;
  MINFER_LAUNCH(codebook_linear_kernel, rows_grid(w.N, T), kWarps * 32, 0, s)(w, x, T, ldx, y, ldy);
}

void launch_sparse_linear(const SWeight& w, const float* x, int64_t T, int64_t ldx, float* y,
                          int64_t ldy, cudaStream_t s) {
  MINFER_LAUNCH(sparse_linear_kernel, rows_grid(w.N, T), kWarps * 32, 0, s)(w, x, T, ldx, y, ldy);
}

void launch_sparse24_linear(const SWeight& w, const float* x, int64_t T, int64_t ldx, float* y,
                            int64_t ldy, cudaStream_t s) {
  if (T == 0 || w.N == 0) return;
  MINFER_LAUNCH(sparse24_linear_kernel, rows_grid(w.N, T), kWarps * 32, 0, s)(w, x, T, ldx, y, ldy);
}

void launch_sparse_csr_linear(const SWeight& w, const float* x, int64_t T, int64_t ldx, float* y,
                              int64_t ldy, cudaStream_t s) {
  if (T == 0 || w.N == 0) return;
  MINFER_LAUNCH(sparse_csr_linear_kernel, rows_grid(w.N, T), kWarps * 32, 0, s)
  (w, x, T, ldx, y, ldy);
}

void launch_outlier_split(const float* x, int64_t T, int64_t ldx, int64_t K, float threshold,
                          const int32_t* col_index, uint8_t* flags, float* xm, cudaStream_t s) {
  MINFER_LAUNCH(outlier_split_kernel, grid_for(K, 64), 64, 0, s)
  (x, T, ldx, K, threshold, col_index, flags, xm);
}
void launch_outlier_add(const QWeight& w, const float* x, int64_t T, int64_t ldx,
                        const uint8_t* flags, const int32_t* col_index, const uint16_t* outlier_w,
                        int64_t m, float* y, int64_t ldy, cudaStream_t s) {
  MINFER_LAUNCH(outlier_add_kernel, rows_grid(w.N, T), kWarps * 32, 0, s)
  (w, x, T, ldx, flags, col_index, outlier_w, m, y, ldy);
}

}  // namespace minfer::MINFER_CUDA_NS
