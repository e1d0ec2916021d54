// Warp and block reductions shared by the CUDA kernel files (kernels.cu, train_kernels.cu), for
// the GPU and the CPU emulation alike.
#pragma once
#include <cmath>

#include "kernels/cuda/cuda_compat.h"

namespace minfer::MINFER_CUDA_NS {

constexpr unsigned kFull = 0xffffffffu;

__device__ __forceinline__ float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(kFull, v, o);
  return v;
}
__device__ __forceinline__ float warp_max(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(kFull, v, o));
  return v;
}

// Sum (or max) over the block; every thread gets the result. blockDim.x a multiple of 32.
template <bool kMax>
__device__ float block_reduce(float v) {
  __shared__ float part[32];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, nw = blockDim.x / 32;
  v = kMax ? warp_max(v) : warp_sum(v);
  if (lane == 0) part[warp] = v;
  __syncthreads();
  float r = part[0];
  for (int i = 1; i < nw; ++i) r = kMax ? fmaxf(r, part[i]) : r + part[i];
  __syncthreads();  // part is reused by the next reduction
  return r;
}

}  // namespace minfer::MINFER_CUDA_NS
