// MINFER_HD marks math written once for the CPU and the CUDA backends: __host__ __device__ under
// nvcc, nothing in a host-only build.
#pragma once

#ifdef __CUDACC__
#define MINFER_HD __host__ __device__
#else
#define MINFER_HD
#endif
