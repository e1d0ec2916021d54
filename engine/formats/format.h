// What every weight format (Linear representation) provides, and the pieces its save/load uses.
//
// A format is one struct R (engine/formats/<name>.h) and one specialization FormatTraits<R>:
//   static constexpr const char* repr;   the "repr" tag in a compressed folder's config.json
//   check(r, in, out, name)              invariants; throws naming the tensor and the field
//   bytes(r)                             stored bytes (codes, scales, ... children included)
//   dequantize(r, in, out, name, w)      reference f32 weights w [out, in] (what kernels compute)
//   format(r, in)                        canonical format name, e.g. "int4-g128", "fp16"
//   save(r, name, sink, meta)            tensors as `<name>` / `<name>.<field>` + JSON fields
//   load(src, name, meta, in, out)       the inverse; runs check()
//   children(r)                          child Linears it owns (LowRank's U and V), may be empty
// The registry (engine/formats/registry.h) lists the formats in one std::variant; every dispatch
// visits it with one overload per alternative, so a site that misses a format fails to compile.
#pragma once
#include <cstdint>
#include <memory>
#include <nlohmann/json_fwd.hpp>
#include <string>
#include <utility>
#include <vector>

#include "engine/tensor.h"

namespace minfer {

struct Linear;
using json = nlohmann::json;

template <typename R>
struct FormatTraits;  // specialized once per format, next to its struct

// An owning pointer that copies what it points to (a Linear's child Linears are values).
template <typename T>
class Box {
 public:
  Box() = default;
  explicit Box(T v) : p_(std::make_unique<T>(std::move(v))) {}
  Box(const Box& o) : p_(o.p_ ? std::make_unique<T>(*o.p_) : nullptr) {}
  Box(Box&&) noexcept = default;
  Box& operator=(const Box& o) {
    if (this != &o) p_ = o.p_ ? std::make_unique<T>(*o.p_) : nullptr;
    return *this;
  }
  Box& operator=(Box&&) noexcept = default;
  T& operator*() const { return *p_; }
  T* operator->() const { return p_.get(); }
  T* get() const { return p_.get(); }
  explicit operator bool() const { return p_ != nullptr; }

 private:
  std::unique_ptr<T> p_;
};

// Where save() puts tensors: (name, tensor) pairs for one safetensors file.
struct TensorSink {
  std::vector<std::pair<std::string, Tensor>>& out;
  // Adds t (made contiguous) under `name`; an undefined t is skipped.
  void put(const std::string& name, const Tensor& t) {
    if (t.defined()) out.emplace_back(name, t.is_contiguous() ? t : t.clone());
  }
};

// Where load() reads tensors from (a compressed folder's safetensors files).
class TensorSource {
 public:
  virtual ~TensorSource() = default;
  virtual bool has(const std::string& name) const = 0;
  // The stored tensor, any dtype and shape (load() checks them); throws naming the file if absent.
  virtual Tensor get(const std::string& name) const = 0;
  // get(name) if present, else an undefined tensor.
  Tensor maybe(const std::string& name) const { return has(name) ? get(name) : Tensor(); }
};

// Throws "<where>: <what>" (an Error with this file's location).
[[noreturn]] void throw_meta_error(const std::string& where, const std::string& what);

}  // namespace minfer
