// The CUDA execution-model emulation (tests only; header: emu.h, design: docs/cuda.md).
// Threads of a block are ucontext fibers on the launching OS thread; a barrier is a counter plus
// a generation, and a waiting fiber yields back to the block's scheduler loop until the
// generation moves. Runtime stand-ins keep a table of live "device" allocations so that a copy or
// a GEMM given a host pointer where a device pointer belongs fails here, as it would on a GPU.
#include "kernels/cuda/emu/emu.h"

#include <cblas.h>
#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <memory>
#include <mutex>
#include <new>
#include <vector>

#include "engine/half.h"

// GCC defines __SANITIZE_ADDRESS__ under -fsanitize=address; clang (before 18) only answers
// __has_feature(address_sanitizer).
#if defined(__SANITIZE_ADDRESS__)
#define MINFER_EMU_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define MINFER_EMU_ASAN 1
#endif
#endif
#ifdef MINFER_EMU_ASAN
#include <sanitizer/common_interface_defs.h>
#endif

namespace minfer::cuda_emu {

namespace {

[[noreturn]] void emu_abort(const char* what) {
  std::fprintf(stderr, "cuda emulation: %s\n", what);
  std::abort();
}

// ASan keeps its own notion of the current stack; tell it about every switch (fiber API of
// sanitizer/common_interface_defs.h) so that stack accesses on a fiber are not false reports.
void asan_start(void** save, const void* bottom, size_t size) {
#ifdef MINFER_EMU_ASAN
  __sanitizer_start_switch_fiber(save, bottom, size);
#endif
}
void asan_finish(void* save, const void** bottom, size_t* size) {
#ifdef MINFER_EMU_ASAN
  __sanitizer_finish_switch_fiber(save, bottom, size);
#endif
}

// Fiber stack size. Device code is shallow (the deepest measured: ~4 KiB, every emulated test
// under ASan; MINFER_EMU_STACK_REPORT=1 prints it at thread exit). Under ASan it is kept small on
// purpose: ASan's swapcontext interceptor clears the shadow of the whole target stack on every
// switch, with an mmap once that shadow exceeds 64 KiB (a 512 KiB stack made the emulated tests
// spend ~90% of their time in the kernel).
#ifdef MINFER_EMU_ASAN
constexpr size_t kStack = 64 * 1024;
#else
constexpr size_t kStack = 128 * 1024;
#endif
constexpr int kMaxThreads = 1024;

// Fiber stacks, kept per launching OS thread and reused by every later launch: a launch of n
// threads needs n stacks, and allocating them per launch made the emulation spend its time in
// mmap/munmap (and, under ASan, in poisoning their shadow). Each stack has a PROT_NONE guard page
// below it, so an overflow is a clean SIGSEGV rather than a write into a neighbouring allocation.
class StackPool {
 public:
  StackPool() = default;
  StackPool(const StackPool&) = delete;
  StackPool& operator=(const StackPool&) = delete;
  ~StackPool() {
    if (std::getenv("MINFER_EMU_STACK_REPORT")) {
      size_t deepest = 0;
      for (char* s : stacks_) {
        size_t i = 0;
        while (i < kStack && s[i] == 0) ++i;
        deepest = std::max(deepest, kStack - i);
      }
      std::fprintf(stderr, "cuda emulation: deepest fiber stack use %zu of %zu bytes\n", deepest,
                   kStack);
    }
    for (char* s : stacks_) munmap(s - page(), kStack + page());
  }
  // The stack of thread i of a block, [result, result + kStack).
  char* get(size_t i) {
    while (stacks_.size() <= i) {
      void* p = mmap(nullptr, kStack + page(), PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
      if (p == MAP_FAILED) emu_abort("out of memory for fiber stacks");
      if (mprotect(p, page(), PROT_NONE) != 0) emu_abort("mprotect of a fiber stack guard failed");
      stacks_.push_back(static_cast<char*>(p) + page());
    }
    return stacks_[i];
  }

 private:
  static size_t page() { return size_t(sysconf(_SC_PAGESIZE)); }
  std::vector<char*> stacks_;
};

thread_local StackPool tl_stacks;

struct Fiber {
  ucontext_t ctx;
  char* stack = nullptr;  // from tl_stacks
  uint3 tid;
  int linear = 0;
  bool done = false;
  void* fake = nullptr;  // ASan fake stack of this fiber while switched out
};

struct Block {
  dim3 grid, block;
  uint3 bidx;
  int n = 0;  // threads
  const std::function<void()>* body = nullptr;
  std::vector<unsigned char> dyn;
  ucontext_t main_ctx;
  const void* main_bottom = nullptr;
  size_t main_size = 0;
  std::vector<Fiber> fibers;
  int cur = -1;
  int n_done = 0;
  int64_t progress = 0;  // barrier arrivals and exits: a pass without any means deadlock
  // __syncthreads
  int bar_count = 0;
  unsigned bar_gen = 0;
  // warps
  std::vector<int> warp_count;
  std::vector<unsigned> warp_gen;
  std::vector<uint64_t> slots;  // one deposit per thread
  std::vector<uint64_t> out;    // the warp's deposits, copied at release
};

thread_local Block* tl_block = nullptr;
int g_device_count = 1;
std::atomic<int64_t> g_launches{0};

Fiber& cur_fiber() {
  if (!tl_block || tl_block->cur < 0) emu_abort("device code called outside a kernel launch");
  return tl_block->fibers[size_t(tl_block->cur)];
}

// Back to the scheduler; returns when the scheduler resumes this fiber.
void yield_to_main() {
  Block& b = *tl_block;
  Fiber& f = b.fibers[size_t(b.cur)];
  asan_start(&f.fake, b.main_bottom, b.main_size);
  swapcontext(&f.ctx, &b.main_ctx);
  asan_finish(f.fake, &b.main_bottom, &b.main_size);
}

int warp_size_of(const Block& b, int warp) {
  return std::min(32, b.n - warp * 32);
}

void fiber_entry() {
  Block& b = *tl_block;
  asan_finish(nullptr, &b.main_bottom, &b.main_size);
  (*b.body)();
  Fiber& f = b.fibers[size_t(b.cur)];
  f.done = true;
  ++b.n_done;
  ++b.progress;
  if (b.bar_count > 0) emu_abort("a thread left the kernel while others wait at __syncthreads()");
  if (b.warp_count[size_t(f.linear / 32)] > 0)
    emu_abort("a thread left the kernel while its warp waits in a warp-synchronous operation");
  asan_start(nullptr, b.main_bottom, b.main_size);  // this fiber's stack dies here
  setcontext(&b.main_ctx);
}

void run_block(Block& b) {
  b.n_done = 0;
  b.cur = -1;
  b.bar_count = 0;
  std::fill(b.warp_count.begin(), b.warp_count.end(), 0);
  for (int i = 0; i < b.n; ++i) {
    Fiber& f = b.fibers[size_t(i)];
    f.done = false;
    f.fake = nullptr;
    f.linear = i;
    f.tid = {unsigned(i) % b.block.x, unsigned(i) / b.block.x % b.block.y,
             unsigned(i) / (b.block.x * b.block.y)};
    if (!f.stack) f.stack = tl_stacks.get(size_t(i));
    getcontext(&f.ctx);
    f.ctx.uc_stack.ss_sp = f.stack;
    f.ctx.uc_stack.ss_size = kStack;
    f.ctx.uc_link = nullptr;
    makecontext(&f.ctx, fiber_entry, 0);
  }
  while (b.n_done < b.n) {
    const int64_t before = b.progress;
    for (int i = 0; i < b.n; ++i) {
      Fiber& f = b.fibers[size_t(i)];
      if (f.done) continue;
      b.cur = i;
      void* save = nullptr;
      asan_start(&save, f.stack, kStack);
      swapcontext(&b.main_ctx, &f.ctx);
      asan_finish(save, nullptr, nullptr);
    }
    if (b.progress == before && b.n_done < b.n)
      emu_abort(
          "deadlock: threads wait at different barriers (divergent __syncthreads or warp op)");
  }
  b.cur = -1;
}

// Live device allocations: start -> size.
std::mutex g_mem_mu;
std::map<uintptr_t, size_t> g_mem;
size_t g_mem_bytes = 0;

bool is_device(const void* p, size_t n) {
  std::lock_guard<std::mutex> lk(g_mem_mu);
  const uintptr_t a = uintptr_t(p);
  auto it = g_mem.upper_bound(a);
  if (it == g_mem.begin()) return false;
  --it;
  return a >= it->first && a + n <= it->first + it->second;
}

void check_side(const void* p, size_t n, bool device, const char* what) {
  if (n == 0) return;
  if (is_device(p, n) != device) {
    std::fprintf(stderr, "cuda emulation: %s: %p (+%zu bytes) is %s memory, expected %s\n", what, p,
                 n, device ? "host" : "device", device ? "device" : "host");
    std::abort();
  }
}

void check_kind(void* dst, const void* src, size_t n, cudaMemcpyKind k) {
  if (k == cudaMemcpyDefault) return;
  check_side(dst, n, k == cudaMemcpyHostToDevice || k == cudaMemcpyDeviceToDevice, "copy dst");
  check_side(src, n, k == cudaMemcpyDeviceToHost || k == cudaMemcpyDeviceToDevice, "copy src");
}

}  // namespace

// ---- Execution model.

const uint3& emu_thread_idx() {
  return cur_fiber().tid;
}
const uint3& emu_block_idx() {
  cur_fiber();
  return tl_block->bidx;
}
const dim3& emu_block_dim() {
  cur_fiber();
  return tl_block->block;
}
const dim3& emu_grid_dim() {
  cur_fiber();
  return tl_block->grid;
}
void* emu_dynamic_shared() {
  cur_fiber();
  return tl_block->dyn.empty() ? nullptr : tl_block->dyn.data();
}
int emu_lane() {
  return cur_fiber().linear % 32;
}

void emu_syncthreads() {
  Block& b = *tl_block;
  cur_fiber();
  ++b.progress;
  const unsigned gen = b.bar_gen;
  if (++b.bar_count == b.n) {
    b.bar_count = 0;
    ++b.bar_gen;
    return;
  }
  while (b.bar_gen == gen) yield_to_main();
}

void emu_warp_exchange(unsigned mask, uint64_t bits, uint64_t* lanes, unsigned* present) {
  Block& b = *tl_block;
  Fiber& f = cur_fiber();
  const int w = f.linear / 32, size = warp_size_of(b, w);
  const unsigned live = size == 32 ? 0xffffffffu : (1u << size) - 1;
  if ((mask & live) != live)
    emu_abort("warp operation with a mask that leaves out live lanes of the warp");
  ++b.progress;
  b.slots[size_t(f.linear)] = bits;
  const unsigned gen = b.warp_gen[size_t(w)];
  if (++b.warp_count[size_t(w)] == size) {
    // Release: snapshot the deposits so that a lane running ahead into the next warp operation
    // cannot overwrite a value another lane has not read yet.
    for (int i = 0; i < 32; ++i)
      b.out[size_t(w * 32 + i)] = i < size ? b.slots[size_t(w * 32 + i)] : 0;
    b.warp_count[size_t(w)] = 0;
    ++b.warp_gen[size_t(w)];
  } else {
    while (b.warp_gen[size_t(w)] == gen) yield_to_main();
  }
  // Every lane of the warp reads the snapshot before any of them can release the next one: the
  // next release needs this lane's deposit, which it makes only after this copy.
  std::memcpy(lanes, &b.out[size_t(w * 32)], 32 * sizeof(uint64_t));
  *present = live;
}

void emu_launch(dim3 grid, dim3 block, size_t shmem, const std::function<void()>& body) {
  const uint64_t nthreads = uint64_t(block.x) * block.y * block.z;
  // The hardware limits (CUDA C++ Programming Guide, "Compute Capabilities").
  if (nthreads == 0 || nthreads > kMaxThreads || block.z > 64 || grid.x == 0 || grid.y == 0 ||
      grid.z == 0 || grid.y > 65535 || grid.z > 65535 || shmem > 227 * 1024)
    emu_abort("invalid launch configuration");
  if (tl_block) emu_abort("kernel launched from device code");
  ++g_launches;
  Block b;
  b.grid = grid;
  b.block = block;
  b.n = int(nthreads);
  b.body = &body;
  b.dyn.assign(shmem, 0xA5);  // not zero: a kernel must not rely on shared memory being cleared
  b.fibers.resize(size_t(b.n));
  const int warps = (b.n + 31) / 32;
  b.warp_count.assign(size_t(warps), 0);
  b.warp_gen.assign(size_t(warps), 0);
  b.slots.assign(size_t(warps * 32), 0);
  b.out.assign(size_t(warps * 32), 0);
  tl_block = &b;
  for (unsigned z = 0; z < grid.z; ++z)
    for (unsigned y = 0; y < grid.y; ++y)
      for (unsigned x = 0; x < grid.x; ++x) {
        b.bidx = {x, y, z};
        run_block(b);
      }
  tl_block = nullptr;
}

// ---- Runtime.

const char* cudaGetErrorString(cudaError_t e) {
  switch (e) {
    case cudaSuccess:
      return "no error";
    case cudaErrorInvalidValue:
      return "invalid argument";
    case cudaErrorMemoryAllocation:
      return "out of memory";
    case cudaErrorInvalidConfiguration:
      return "invalid configuration argument";
    case cudaErrorNoDevice:
      return "no CUDA-capable device is detected";
    case cudaErrorInvalidDevice:
      return "invalid device ordinal";
  }
  return "unknown error";
}

cudaError_t cudaGetDeviceCount(int* n) {
  *n = g_device_count;
  return g_device_count > 0 ? cudaSuccess : cudaErrorNoDevice;
}
cudaError_t cudaSetDevice(int d) {
  return d >= 0 && d < g_device_count ? cudaSuccess : cudaErrorInvalidDevice;
}
cudaError_t cudaGetDeviceProperties(cudaDeviceProp* p, int d) {
  if (d < 0 || d >= g_device_count) return cudaErrorInvalidDevice;
  std::memset(p, 0, sizeof *p);
  std::snprintf(p->name, sizeof p->name, "CUDA emulation on the CPU");
  p->totalGlobalMem = size_t(1) << 32;
  p->sharedMemPerBlockOptin = 227 * 1024;
  p->major = 9;
  p->multiProcessorCount = 1;
  return cudaSuccess;
}

cudaError_t cudaMalloc(void** p, size_t n) {
  if (n == 0) n = 1;
  void* q = ::operator new(n, std::align_val_t(256), std::nothrow);
  if (!q) return cudaErrorMemoryAllocation;
  std::lock_guard<std::mutex> lk(g_mem_mu);
  g_mem[uintptr_t(q)] = n;
  g_mem_bytes += n;
  *p = q;
  return cudaSuccess;
}
cudaError_t cudaMallocManaged(void** p, size_t n, unsigned) {
  return cudaMalloc(p, n);
}
cudaError_t cudaFree(void* p) {
  if (!p) return cudaSuccess;
  {
    std::lock_guard<std::mutex> lk(g_mem_mu);
    auto it = g_mem.find(uintptr_t(p));
    if (it == g_mem.end()) return cudaErrorInvalidValue;
    g_mem_bytes -= it->second;
    g_mem.erase(it);
  }
  ::operator delete(p, std::align_val_t(256));
  return cudaSuccess;
}
cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t n, cudaMemcpyKind k, cudaStream_t) {
  check_kind(dst, src, n, k);
  if (n) std::memmove(dst, src, n);
  return cudaSuccess;
}
cudaError_t cudaMemcpy2DAsync(void* dst, size_t dpitch, const void* src, size_t spitch,
                              size_t width, size_t height, cudaMemcpyKind k, cudaStream_t) {
  if (width > dpitch || width > spitch) return cudaErrorInvalidValue;
  for (size_t r = 0; r < height; ++r) {
    char* d = static_cast<char*>(dst) + r * dpitch;
    const char* s = static_cast<const char*>(src) + r * spitch;
    check_kind(d, s, width, k);
    std::memmove(d, s, width);
  }
  return cudaSuccess;
}
cudaError_t cudaMemsetAsync(void* p, int v, size_t n, cudaStream_t) {
  check_side(p, n, true, "memset");
  std::memset(p, v, n);
  return cudaSuccess;
}
struct EmuStream {};
cudaError_t cudaStreamCreate(cudaStream_t* s) {
  *s = new EmuStream;
  return cudaSuccess;
}
cudaError_t cudaStreamDestroy(cudaStream_t s) {
  delete s;
  return cudaSuccess;
}
cudaError_t cudaStreamSynchronize(cudaStream_t) {
  return cudaSuccess;
}
cudaError_t cudaGetLastError() {
  return cudaSuccess;  // an invalid launch aborts in emu_launch
}

void emu_set_device_count(int n) {
  g_device_count = n;
}
int64_t emu_launch_count() {
  return g_launches.load();
}
size_t emu_device_bytes() {
  std::lock_guard<std::mutex> lk(g_mem_mu);
  return g_mem_bytes;
}

// ---- cuBLAS.

struct EmuCublas {};
cublasStatus_t cublasCreate(cublasHandle_t* h) {
  *h = new EmuCublas;
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasDestroy(cublasHandle_t h) {
  delete h;
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasSetStream(cublasHandle_t, cudaStream_t) {
  return CUBLAS_STATUS_SUCCESS;
}

namespace {
// Column-major operand of `rows` x `cols` (as op() sees it) with leading dimension ld: the bytes
// it spans, for the device-pointer check.
size_t span(cublasOperation_t t, int rows, int cols, int ld, size_t elem) {
  const int64_t r = t == CUBLAS_OP_N ? rows : cols, c = t == CUBLAS_OP_N ? cols : rows;
  return c == 0 || r == 0 ? 0 : size_t((c - 1) * int64_t(ld) + r) * elem;
}
bool gemm_args_ok(cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k, int lda, int ldb,
                  int ldc) {
  return m >= 0 && n >= 0 && k >= 0 && lda >= std::max(1, ta == CUBLAS_OP_N ? m : k) &&
         ldb >= std::max(1, tb == CUBLAS_OP_N ? k : n) && ldc >= std::max(1, m);
}
CBLAS_TRANSPOSE tr(cublasOperation_t t) {
  return t == CUBLAS_OP_N ? CblasNoTrans : CblasTrans;
}
}  // namespace

cublasStatus_t cublasSgemm(cublasHandle_t, cublasOperation_t ta, cublasOperation_t tb, int m, int n,
                           int k, const float* alpha, const float* A, int lda, const float* B,
                           int ldb, const float* beta, float* C, int ldc) {
  if (!gemm_args_ok(ta, tb, m, n, k, lda, ldb, ldc)) return CUBLAS_STATUS_INVALID_VALUE;
  check_side(A, span(ta, m, k, lda, 4), true, "cublasSgemm A");
  check_side(B, span(tb, k, n, ldb, 4), true, "cublasSgemm B");
  check_side(C, span(CUBLAS_OP_N, m, n, ldc, 4), true, "cublasSgemm C");
  if (m == 0 || n == 0) return CUBLAS_STATUS_SUCCESS;
  cblas_sgemm(CblasColMajor, tr(ta), tr(tb), m, n, k, *alpha, A, lda, B, ldb, *beta, C, ldc);
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasGemmEx(cublasHandle_t, cublasOperation_t ta, cublasOperation_t tb, int m,
                            int n, int k, const void* alpha, const void* A, cudaDataType at,
                            int lda, const void* B, cudaDataType bt, int ldb, const void* beta,
                            void* C, cudaDataType ct, int ldc, cublasComputeType_t compute,
                            cublasGemmAlgo_t) {
  if (!gemm_args_ok(ta, tb, m, n, k, lda, ldb, ldc) || at != bt || ct != CUDA_R_32F ||
      compute != CUBLAS_COMPUTE_32F || (at != CUDA_R_16F && at != CUDA_R_16BF))
    return CUBLAS_STATUS_INVALID_VALUE;
  const size_t na = span(ta, m, k, lda, 2), nb = span(tb, k, n, ldb, 2);
  check_side(A, na, true, "cublasGemmEx A");
  check_side(B, nb, true, "cublasGemmEx B");
  check_side(C, span(CUBLAS_OP_N, m, n, ldc, 4), true, "cublasGemmEx C");
  if (m == 0 || n == 0) return CUBLAS_STATUS_SUCCESS;
  // Products of 16-bit inputs are exact in f32; only the order of the f32 sums differs from the
  // tensor cores.
  std::vector<float> fa(na / 2), fb(nb / 2);
  auto widen = [&](const void* src, std::vector<float>& dst) {
    const uint16_t* s = static_cast<const uint16_t*>(src);
    for (size_t i = 0; i < dst.size(); ++i)
      dst[i] = at == CUDA_R_16F ? f16_to_f32(s[i]) : bf16_to_f32(s[i]);
  };
  widen(A, fa);
  widen(B, fb);
  cblas_sgemm(CblasColMajor, tr(ta), tr(tb), m, n, k, *static_cast<const float*>(alpha), fa.data(),
              lda, fb.data(), ldb, *static_cast<const float*>(beta), static_cast<float*>(C), ldc);
  return CUBLAS_STATUS_SUCCESS;
}

}  // namespace minfer::cuda_emu
