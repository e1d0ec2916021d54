// Tensor: a cheap view (storage, byte offset, dtype, shape, strides in elements) over memory that
// lives in a Storage: an mmap'd file region, an owned host buffer, or device memory.
//
// Legend used across the engine: T tokens in a batch, C model width, H heads, Hkv kv heads,
// D head dim, F ffn width, V vocab, L layers, S positions in the KV cache.
#pragma once
#include <array>
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <string>
#include <string_view>

#include "engine/error.h"

namespace minfer {

enum class DType : uint8_t {
  F32,
  F16,
  BF16,
  F64,
  I8,
  U8,
  I16,
  I32,
  I64,
  BOOL,
  U16,  // sparse-csr's 16-bit column indices
  // Packed formats (codes of quantized representations) are stored as U8 byte tensors; their
  // meaning is carried by the Linear representation that owns them.
};

size_t dtype_size(DType t);
std::string_view dtype_name(DType t);  // "F32", "BF16", ... (safetensors spelling)
bool dtype_from_name(std::string_view name, DType* out);

// Where the bytes live. Storage is shared by the tensors viewing it.
class Storage {
 public:
  enum class Kind { Host, Mmap, Device };
  virtual ~Storage() = default;
  Kind kind() const { return kind_; }
  void* data() const { return data_; }
  size_t size() const { return size_; }

 protected:
  Storage(Kind k, void* d, size_t n) : kind_(k), data_(d), size_(n) {}
  Kind kind_;
  void* data_;
  size_t size_;
};

// 64-byte aligned owned host memory.
std::shared_ptr<Storage> host_storage(size_t bytes);
// `bytes` bytes at `data`, owned by the caller, who keeps them valid and unchanged while any
// tensor views them (a model image an application holds in memory). Read-only by contract.
std::shared_ptr<Storage> borrowed_storage(const void* data, size_t bytes);

// Read-only private mapping of a whole file. Throws with the path on failure.
class MmapFile : public Storage {
 public:
  explicit MmapFile(const std::string& path);
  ~MmapFile() override;
  const std::string& path() const { return path_; }
  const uint8_t* bytes() const { return static_cast<const uint8_t*>(data_); }

 private:
  std::string path_;
};

constexpr int kMaxDims = 4;
using Shape = std::array<int64_t, kMaxDims>;

class Tensor {
 public:
  Tensor() = default;
  // A contiguous tensor over `storage` starting at byte `offset`.
  Tensor(std::shared_ptr<Storage> storage, size_t offset, DType dtype,
         std::initializer_list<int64_t> shape);
  Tensor(std::shared_ptr<Storage> storage, size_t offset, DType dtype, const int64_t* shape,
         int ndim);

  // Allocate a contiguous zero-filled host tensor.
  static Tensor empty(DType dtype, std::initializer_list<int64_t> shape);
  static Tensor empty(DType dtype, const int64_t* shape, int ndim);

  bool defined() const { return storage_ != nullptr; }
  DType dtype() const { return dtype_; }
  int ndim() const { return ndim_; }
  int64_t dim(int i) const {
    MINFER_DCHECK(i >= -ndim_ && i < ndim_, "dim {} out of range for {}-d tensor", i, ndim_);
    return shape_[i < 0 ? i + ndim_ : i];
  }
  int64_t stride(int i) const { return stride_[i < 0 ? i + ndim_ : i]; }
  const int64_t* shape() const { return shape_.data(); }
  int64_t numel() const;
  size_t nbytes() const { return defined() ? size_t(numel()) * dtype_size(dtype_) : 0; }
  bool is_contiguous() const;
  std::string shape_str() const;  // "[2, 3]"
  const std::shared_ptr<Storage>& storage() const { return storage_; }
  size_t offset() const { return offset_; }
  bool on_device() const { return storage_ && storage_->kind() == Storage::Kind::Device; }

  void* raw() const { return static_cast<uint8_t*>(storage_->data()) + offset_; }
  template <typename T>
  T* data() const {
    return static_cast<T*>(raw());
  }

  // Views (no copies).
  Tensor view(std::initializer_list<int64_t> shape) const;  // contiguous reshape; -1 infers
  Tensor slice(int d, int64_t start, int64_t len) const;    // sub-range along dim d
  Tensor row(int64_t i) const { return slice(0, i, 1); }

  // Copy into a fresh contiguous host tensor (converting dtype where asked).
  Tensor to_f32() const;
  Tensor clone() const;

 private:
  std::shared_ptr<Storage> storage_;
  size_t offset_ = 0;
  DType dtype_ = DType::F32;
  int ndim_ = 0;
  Shape shape_{};
  Shape stride_{};
};

// Drops the resident pages of a file-mapped tensor's bytes from this process (Linux
// madvise(MADV_DONTNEED) on the whole pages inside its byte range; the page cache keeps them).
// For a weight whose bytes were copied elsewhere (a repacked layout), so that peak RSS does not
// hold both. The mapping stays valid: a later read faults the same bytes back in from the file.
// No effect on host or device storage, or off Linux.
void release_mapped_pages(const Tensor& t);

}  // namespace minfer
