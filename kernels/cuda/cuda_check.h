// Host-side status checks shared by the CUDA backend and the CUDA training ops: a failed CUDA
// runtime or cuBLAS call becomes a minfer Error naming the call (`what`) and the status. Host
// code only (never included by a .cu file).
#pragma once
#include "engine/error.h"
#include "kernels/cuda/cuda_compat.h"

#ifndef MINFER_CUDA_EMULATION
#include <cublas_v2.h>
#endif

namespace minfer::MINFER_CUDA_NS {

inline void check_cuda(cudaError_t e, const char* what) {
  if (e != cudaSuccess) MINFER_FAIL("cuda: {}: {}", what, cudaGetErrorString(e));
}

inline void check_blas(cublasStatus_t s, const char* what) {
  if (s != CUBLAS_STATUS_SUCCESS) MINFER_FAIL("cuda: {}: cuBLAS status {}", what, int(s));
}

}  // namespace minfer::MINFER_CUDA_NS
