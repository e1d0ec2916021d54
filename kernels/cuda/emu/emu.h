// A CPU emulation of the CUDA execution model, for tests only (docs/cuda.md). The .cu kernels and
// the CudaBackend are compiled as plain C++ with MINFER_CUDA_EMULATION and this header stands in
// for the CUDA headers: threadIdx / blockIdx / blockDim / gridDim, __syncthreads(), per-block
// __shared__ memory, warp shuffles and votes, atomics, __dp4a, the runtime calls the backend makes
// (cudaMalloc -> host allocation, cudaMemcpyAsync -> memcpy, streams as no-ops) and the two cuBLAS
// calls it uses (backed by OpenBLAS).
//
// Execution: a launch runs its blocks one after another; the threads of a block are fibers
// (ucontext) on the launching OS thread, switched cooperatively at every barrier. __syncthreads()
// waits for every thread of the block, warp operations for every lane of the warp (lane = linear
// thread id % 32, as on hardware), so a kernel that relies on an unsynchronised order of threads
// or diverges around a barrier fails here: a thread leaving while others wait at a barrier, or
// threads waiting at different barriers, aborts with a message. __shared__ variables are
// function-level statics (one instance, reused by the blocks that run one after another).
// Everything lives in namespace minfer::cuda_emu so that a test binary built with the real CUDA
// backend (make CUDA=1) links both without clashing with libcudart / libcublas.
#pragma once
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <tuple>
#include <utility>

namespace minfer::cuda_emu {

struct dim3 {
  unsigned x = 1, y = 1, z = 1;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
struct uint3 {
  unsigned x = 0, y = 0, z = 0;
};

// ---- Execution model.
const uint3& emu_thread_idx();
const uint3& emu_block_idx();
const dim3& emu_block_dim();
const dim3& emu_grid_dim();
void* emu_dynamic_shared();
void emu_syncthreads();
// Every lane of the calling thread's warp deposits `bits`; returns the deposits of all 32 lanes
// (lanes past the end of the block read 0). `mask` must name every lane the warp has.
void emu_warp_exchange(unsigned mask, uint64_t bits, uint64_t* lanes, unsigned* present);
int emu_lane();

// Runs body() once per thread of every block: blocks in order, threads as fibers.
void emu_launch(dim3 grid, dim3 block, size_t shmem, const std::function<void()>& body);

// Launch object behind MINFER_LAUNCH(kernel, grid, block, shmem, stream)(args...).
template <typename F>
struct Launcher {
  F* kernel;
  dim3 grid, block;
  size_t shmem;
  template <typename... A>
  void operator()(A&&... args) const {
    auto params = std::make_tuple(args...);  // kernel parameters are copied, as on a launch
    F* k = kernel;
    emu_launch(grid, block, shmem, [&] { std::apply(k, params); });
  }
};
template <typename F, typename S>
Launcher<F> make_launcher(F* k, dim3 g, dim3 b, size_t shmem, S) {
  return {k, g, b, shmem};
}

template <typename T>
uint64_t emu_bits(T v) {
  static_assert(sizeof(T) <= 8, "warp shuffles of values up to 8 bytes");
  uint64_t u = 0;
  std::memcpy(&u, &v, sizeof(T));
  return u;
}
template <typename T>
T emu_from_bits(uint64_t u) {
  T v;
  std::memcpy(&v, &u, sizeof(T));
  return v;
}

// Shuffles (CUDA C++ Programming Guide, "Warp Shuffle Functions"): a source lane outside the
// caller's `width` segment leaves the caller's own value.
template <typename T>
T __shfl_sync(unsigned mask, T v, int src, int width = 32) {
  uint64_t lanes[32];
  unsigned present;
  emu_warp_exchange(mask, emu_bits(v), lanes, &present);
  const int lane = emu_lane(), base = lane - lane % width;
  return emu_from_bits<T>(lanes[base + ((src % width) + width) % width]);
}
template <typename T>
T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32) {
  uint64_t lanes[32];
  unsigned present;
  emu_warp_exchange(mask, emu_bits(v), lanes, &present);
  const int lane = emu_lane(), src = lane ^ lane_mask;
  return src / width == lane / width ? emu_from_bits<T>(lanes[src]) : v;
}
template <typename T>
T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32) {
  uint64_t lanes[32];
  unsigned present;
  emu_warp_exchange(mask, emu_bits(v), lanes, &present);
  const int lane = emu_lane();
  return lane % width + int(delta) < width ? emu_from_bits<T>(lanes[lane + int(delta)]) : v;
}
inline unsigned __ballot_sync(unsigned mask, int pred) {
  uint64_t lanes[32];
  unsigned present;
  emu_warp_exchange(mask, pred ? 1 : 0, lanes, &present);
  unsigned r = 0;
  for (int i = 0; i < 32; ++i)
    if ((mask >> i) & 1 && lanes[i]) r |= 1u << i;
  return r;
}
inline int __any_sync(unsigned mask, int pred) {
  return __ballot_sync(mask, pred) != 0;
}
inline int __all_sync(unsigned mask, int pred) {
  uint64_t lanes[32];
  unsigned present;
  emu_warp_exchange(mask, pred ? 1 : 0, lanes, &present);
  for (int i = 0; i < 32; ++i)
    if ((mask & present) >> i & 1 && !lanes[i]) return 0;
  return 1;
}

// Atomics: fibers switch only at barriers, so a read-modify-write is never interleaved.
template <typename T>
T atomicAdd(T* p, T v) {
  T old = *p;
  *p = old + v;
  return old;
}
template <typename T>
T atomicMax(T* p, T v) {
  T old = *p;
  *p = old > v ? old : v;
  return old;
}
inline unsigned atomicOr(unsigned* p, unsigned v) {
  unsigned old = *p;
  *p = old | v;
  return old;
}

// Device math the kernels use that C++ does not have.
inline float rsqrtf(float x) {
  return 1.f / std::sqrt(x);
}
// Four signed byte products summed into c (PTX dp4a.s32.s32).
inline int __dp4a(int a, int b, int c) {
  for (int i = 0; i < 4; ++i) c += int(int8_t(a >> (8 * i))) * int(int8_t(b >> (8 * i)));
  return c;
}

// ---- Runtime stand-ins (the calls the backend makes).
enum cudaError_t {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorMemoryAllocation = 2,
  cudaErrorInvalidConfiguration = 9,
  cudaErrorNoDevice = 100,
  cudaErrorInvalidDevice = 101,
};
enum cudaMemcpyKind {
  cudaMemcpyHostToHost = 0,
  cudaMemcpyHostToDevice = 1,
  cudaMemcpyDeviceToHost = 2,
  cudaMemcpyDeviceToDevice = 3,
  cudaMemcpyDefault = 4,  // either side host or device (unified addressing): not checked
};
struct EmuStream;
using cudaStream_t = EmuStream*;
struct cudaDeviceProp {
  char name[256];
  size_t totalGlobalMem;
  size_t sharedMemPerBlockOptin;
  int major, minor, multiProcessorCount;
};

const char* cudaGetErrorString(cudaError_t e);
cudaError_t cudaGetDeviceCount(int* n);
cudaError_t cudaSetDevice(int d);
cudaError_t cudaGetDeviceProperties(cudaDeviceProp* p, int d);
cudaError_t cudaMalloc(void** p, size_t n);
// Managed memory (host and device see one address): a device allocation here, as every emulated
// allocation is host memory.
constexpr unsigned cudaMemAttachGlobal = 1;
cudaError_t cudaMallocManaged(void** p, size_t n, unsigned flags = cudaMemAttachGlobal);
cudaError_t cudaFree(void* p);
cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t n, cudaMemcpyKind k, cudaStream_t s);
cudaError_t cudaMemcpy2DAsync(void* dst, size_t dpitch, const void* src, size_t spitch,
                              size_t width, size_t height, cudaMemcpyKind k, cudaStream_t s);
cudaError_t cudaMemsetAsync(void* p, int v, size_t n, cudaStream_t s);
cudaError_t cudaStreamCreate(cudaStream_t* s);
cudaError_t cudaStreamDestroy(cudaStream_t s);
cudaError_t cudaStreamSynchronize(cudaStream_t s);
cudaError_t cudaGetLastError();

// Test hooks: how many devices cudaGetDeviceCount reports (default 1), and the launches so far.
void emu_set_device_count(int n);
int64_t emu_launch_count();
// Bytes of emulated device memory currently allocated.
size_t emu_device_bytes();

// ---- cuBLAS stand-ins: column-major GEMM as cuBLAS defines it, computed by OpenBLAS sgemm.
struct EmuCublas;
using cublasHandle_t = EmuCublas*;
enum cublasStatus_t { CUBLAS_STATUS_SUCCESS = 0, CUBLAS_STATUS_INVALID_VALUE = 7 };
enum cublasOperation_t { CUBLAS_OP_N = 0, CUBLAS_OP_T = 1 };
enum cudaDataType { CUDA_R_32F = 0, CUDA_R_16F = 2, CUDA_R_16BF = 14 };
enum cublasComputeType_t { CUBLAS_COMPUTE_32F = 68 };
enum cublasGemmAlgo_t { CUBLAS_GEMM_DEFAULT = -1 };

cublasStatus_t cublasCreate(cublasHandle_t* h);
cublasStatus_t cublasDestroy(cublasHandle_t h);
cublasStatus_t cublasSetStream(cublasHandle_t h, cudaStream_t s);
cublasStatus_t cublasSgemm(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m,
                           int n, int k, const float* alpha, const float* A, int lda,
                           const float* B, int ldb, const float* beta, float* C, int ldc);
// A and B 16F or 16BF (same type), C 32F, compute 32F: the tensor-core path of the backend.
cublasStatus_t cublasGemmEx(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m,
                            int n, int k, const void* alpha, const void* A, cudaDataType at,
                            int lda, const void* B, cudaDataType bt, int ldb, const void* beta,
                            void* C, cudaDataType ct, int ldc, cublasComputeType_t compute,
                            cublasGemmAlgo_t algo);

}  // namespace minfer::cuda_emu

// The CUDA keywords and built-in variables.
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static thread_local
#define threadIdx (::minfer::cuda_emu::emu_thread_idx())
#define blockIdx (::minfer::cuda_emu::emu_block_idx())
#define blockDim (::minfer::cuda_emu::emu_block_dim())
#define gridDim (::minfer::cuda_emu::emu_grid_dim())
#define __syncthreads() ::minfer::cuda_emu::emu_syncthreads()
