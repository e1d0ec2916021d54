// What the CUDA sources need from "CUDA": the real headers under nvcc / the CUDA toolkit, or the
// test-only CPU emulation (kernels/cuda/emu/emu.h) when compiled as C++ with
// MINFER_CUDA_EMULATION. Both builds share every kernel and every launch site:
//   MINFER_LAUNCH(kernel, grid, block, shmem, stream)(args...)   a kernel launch
//   MINFER_DYN_SHARED(T, name)                                   T* name = dynamic shared memory
//   MINFER_CUDA_NS                                               cuda | cuda_emu
// The namespace differs so that a test binary of `make CUDA=1` links the real backend and the
// emulated one side by side.
#pragma once
#include <cstdint>

#ifdef MINFER_CUDA_EMULATION
#include "kernels/cuda/emu/emu.h"
#define MINFER_CUDA_NS cuda_emu
#define MINFER_LAUNCH(kernel, grid, block, shmem, stream) \
  ::minfer::cuda_emu::make_launcher(kernel, grid, block, shmem, stream)
#define MINFER_DYN_SHARED(T, name) \
  T* name = static_cast<T*>(::minfer::cuda_emu::emu_dynamic_shared())
#else
#include <cuda_runtime.h>
#define MINFER_CUDA_NS cuda
#define MINFER_LAUNCH(kernel, grid, block, shmem, stream) kernel<<<grid, block, shmem, stream>>>
#define MINFER_DYN_SHARED(T, name)                               \
  extern __shared__ __align__(16) unsigned char name##_bytes_[]; \
  T* name = reinterpret_cast<T*>(name##_bytes_)
#endif
