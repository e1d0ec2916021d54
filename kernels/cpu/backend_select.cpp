// Backend choice by name. The only translation unit whose object differs between the CPU build
// and `make CUDA=1` (it is compiled with -DMINFER_CUDA=1 there, into its own object path), so a
// CUDA build reuses every other object of the CPU build (Makefile: OBJBUILD).
#include <memory>
#include <string>

#include "engine/backend.h"
#include "engine/error.h"

namespace minfer {

namespace train {
class TrainOps;
}

#ifdef MINFER_CUDA
std::unique_ptr<Backend> make_cuda_backend(int device);
train::TrainOps* new_cuda_train_ops(int device);  // kernels/cuda/train_ops_cuda.cpp
#endif

// The CUDA training ops (kernels/train_ops.h) of a `make CUDA=1` build; null in a CPU build.
train::TrainOps* new_cuda_train_ops_if_built(int device) {
#ifdef MINFER_CUDA
  return new_cuda_train_ops(device);
#else
  (void)device;
  return nullptr;
#endif
}

bool cuda_backend_built() {
#ifdef MINFER_CUDA
  return true;
#else
  return false;
#endif
}

std::unique_ptr<Backend> make_backend(const std::string& name, int threads, int device) {
  if (name == "cpu") return make_cpu_backend(threads);
  if (name == "cuda") {
#ifdef MINFER_CUDA
    return make_cuda_backend(device);
#else
    MINFER_FAIL("backend 'cuda' is not built into this binary: rebuild with `make CUDA=1`");
#endif
  }
  MINFER_FAIL("unknown backend '{}' (expected cpu or cuda)", name);
}

}  // namespace minfer
