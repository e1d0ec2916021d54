#include "engine/tensor.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>

#include "engine/half.h"

namespace minfer {

size_t dtype_size(DType t) {
  switch (t) {
    case DType::F32:
      return 4;
    case DType::F16:
      return 2;
    case DType::BF16:
      return 2;
    case DType::F64:
      return 8;
    case DType::I8:
      return 1;
    case DType::U8:
      return 1;
    case DType::I16:
    case DType::U16:
      return 2;
    case DType::I32:
      return 4;
    case DType::I64:
      return 8;
    case DType::BOOL:
      return 1;
  }
  return 0;
}

namespace {
constexpr std::pair<DType, std::string_view> kNames[] = {
    {DType::F32, "F32"}, {DType::F16, "F16"},   {DType::BF16, "BF16"}, {DType::F64, "F64"},
    {DType::I8, "I8"},   {DType::U8, "U8"},     {DType::I16, "I16"},   {DType::I32, "I32"},
    {DType::I64, "I64"}, {DType::BOOL, "BOOL"}, {DType::U16, "U16"},
};
}  // namespace

std::string_view dtype_name(DType t) {
  for (auto& [d, n] : kNames)
    if (d == t) return n;
  return "?";
}

bool dtype_from_name(std::string_view name, DType* out) {
  for (auto& [d, n] : kNames)
    if (n == name) {
      *out = d;
      return true;
    }
  return false;
}

namespace {
class HostStorage : public Storage {
 public:
  explicit HostStorage(size_t n) : Storage(Kind::Host, nullptr, n) {
    const size_t rounded = (n + 63) / 64 * 64;
    data_ = std::aligned_alloc(64, rounded ? rounded : 64);
    MINFER_CHECK(data_ != nullptr, "out of memory allocating {} bytes", n);
    std::memset(data_, 0, rounded ? rounded : 64);
  }
  ~HostStorage() override { std::free(data_); }
};
}  // namespace

std::shared_ptr<Storage> host_storage(size_t bytes) {
  return std::make_shared<HostStorage>(bytes);
}

namespace {
class BorrowedStorage : public Storage {
 public:
  BorrowedStorage(const void* d, size_t n) : Storage(Kind::Host, const_cast<void*>(d), n) {}
};
}  // namespace

std::shared_ptr<Storage> borrowed_storage(const void* data, size_t bytes) {
  return std::make_shared<BorrowedStorage>(data, bytes);
}

MmapFile::MmapFile(const std::string& path) : Storage(Kind::Mmap, nullptr, 0), path_(path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  MINFER_CHECK(fd >= 0, "{}: cannot open: {}", path, std::strerror(errno));
  struct stat st;
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    MINFER_FAIL("{}: not a regular file", path);
  }
  size_ = size_t(st.st_size);
  if (size_ > 0) {
    void* p = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED) {
      ::close(fd);
      MINFER_FAIL("{}: mmap failed: {}", path, std::strerror(errno));
    }
    data_ = p;
  }
  ::close(fd);
}

MmapFile::~MmapFile() {
  if (data_) ::munmap(data_, size_);
}

void release_mapped_pages(const Tensor& t) {
#if defined(__linux__)
  if (!t.defined() || t.storage()->kind() != Storage::Kind::Mmap || t.nbytes() == 0) return;
  const uintptr_t page = uintptr_t(::sysconf(_SC_PAGESIZE));
  const uintptr_t b = reinterpret_cast<uintptr_t>(t.raw()), e = b + t.nbytes();
  const uintptr_t b0 = (b + page - 1) / page * page, e0 = e / page * page;
  // Advice only: a failure leaves the pages resident, which is what happened before.
  if (e0 > b0) (void)::madvise(reinterpret_cast<void*>(b0), e0 - b0, MADV_DONTNEED);
#else
  (void)t;
#endif
}

Tensor::Tensor(std::shared_ptr<Storage> storage, size_t offset, DType dtype,
               std::initializer_list<int64_t> shape)
    : Tensor(std::move(storage), offset, dtype, shape.begin(), int(shape.size())) {}

Tensor::Tensor(std::shared_ptr<Storage> storage, size_t offset, DType dtype, const int64_t* shape,
               int ndim)
    : storage_(std::move(storage)), offset_(offset), dtype_(dtype), ndim_(ndim) {
  MINFER_CHECK(ndim >= 0 && ndim <= kMaxDims, "tensor rank {} not supported (max {})", ndim,
               kMaxDims);
  int64_t s = 1;
  for (int i = ndim - 1; i >= 0; --i) {
    MINFER_CHECK(shape[i] >= 0, "negative dimension {}", shape[i]);
    shape_[i] = shape[i];
    stride_[i] = s;
    s *= shape[i];
  }
  MINFER_CHECK(!storage_ || offset_ + size_t(s) * dtype_size(dtype) <= storage_->size(),
               "tensor of {} bytes at offset {} exceeds storage of {} bytes",
               size_t(s) * dtype_size(dtype), offset_, storage_->size());
}

Tensor Tensor::empty(DType dtype, std::initializer_list<int64_t> shape) {
  return empty(dtype, shape.begin(), int(shape.size()));
}

Tensor Tensor::empty(DType dtype, const int64_t* shape, int ndim) {
  int64_t n = 1;
  for (int i = 0; i < ndim; ++i) n *= shape[i];
  return Tensor(host_storage(size_t(n) * dtype_size(dtype)), 0, dtype, shape, ndim);
}

int64_t Tensor::numel() const {
  int64_t n = 1;
  for (int i = 0; i < ndim_; ++i) n *= shape_[i];
  return n;
}

bool Tensor::is_contiguous() const {
  int64_t s = 1;
  for (int i = ndim_ - 1; i >= 0; --i) {
    if (shape_[i] != 1 && stride_[i] != s) return false;
    s *= shape_[i];
  }
  return true;
}

std::string Tensor::shape_str() const {
  std::string s = "[";
  for (int i = 0; i < ndim_; ++i) s += (i ? ", " : "") + std::to_string(shape_[i]);
  return s + "]";
}

Tensor Tensor::view(std::initializer_list<int64_t> shape) const {
  MINFER_CHECK(is_contiguous(), "view of a non-contiguous tensor {}", shape_str());
  int64_t known = 1;
  int infer = -1, nd = 0;
  int64_t dims[kMaxDims];
  for (int64_t d : shape) {
    MINFER_CHECK(nd < kMaxDims, "view rank too large");
    if (d == -1) {
      MINFER_CHECK(infer < 0, "view: more than one -1");
      infer = nd;
    } else {
      known *= d;
    }
    dims[nd++] = d;
  }
  if (infer >= 0) dims[infer] = known ? numel() / known : 0;
  int64_t n = 1;
  for (int i = 0; i < nd; ++i) n *= dims[i];
  MINFER_CHECK(n == numel(), "view: cannot view {} as {} elements", shape_str(), n);
  Tensor t = *this;
  t.ndim_ = nd;
  int64_t s = 1;
  for (int i = nd - 1; i >= 0; --i) {
    t.shape_[i] = dims[i];
    t.stride_[i] = s;
    s *= dims[i];
  }
  return t;
}

Tensor Tensor::slice(int d, int64_t start, int64_t len) const {
  if (d < 0) d += ndim_;
  MINFER_CHECK(d >= 0 && d < ndim_, "slice dim {} out of range for {}", d, shape_str());
  MINFER_CHECK(start >= 0 && len >= 0 && start + len <= shape_[d],
               "slice [{}, {}) out of range for dim {} of {}", start, start + len, d, shape_str());
  Tensor t = *this;
  t.offset_ += size_t(start * stride_[d]) * dtype_size(dtype_);
  t.shape_[d] = len;
  return t;
}

Tensor Tensor::clone() const {
  MINFER_CHECK(is_contiguous(), "clone of non-contiguous tensor");
  Tensor t = empty(dtype_, shape_.data(), ndim_);
  std::memcpy(t.raw(), raw(), nbytes());
  return t;
}

Tensor Tensor::to_f32() const {
  MINFER_CHECK(is_contiguous(), "to_f32 of non-contiguous tensor");
  Tensor t = empty(DType::F32, shape_.data(), ndim_);
  const size_t n = size_t(numel());
  float* out = t.data<float>();
  switch (dtype_) {
    case DType::F32:
      std::memcpy(out, raw(), n * 4);
      break;
    case DType::F16:
      f16_to_f32_n(data<uint16_t>(), out, n);
      break;
    case DType::BF16:
      bf16_to_f32_n(data<uint16_t>(), out, n);
      break;
    case DType::F64:
      for (size_t i = 0; i < n; ++i) out[i] = float(data<double>()[i]);
      break;
    default:
      MINFER_FAIL("to_f32: unsupported dtype {}", dtype_name(dtype_));
  }
  return t;
}

}  // namespace minfer
