// WeightSource: where a model's named weights come from (safetensors folder, GGUF file,
// compressed minfer folder). Models ask for tensors by their Hugging Face names with the shape
// config.json implies; the source checks the shape and returns a zero-copy view when the stored
// format needs no conversion.
#pragma once
#include <initializer_list>
#include <memory>
#include <string>

#include "engine/linear.h"
#include "engine/safetensors.h"

namespace minfer {

class WeightSource {
 public:
  virtual ~WeightSource() = default;
  virtual bool has(const std::string& name) const = 0;
  // A float tensor (F32/F16/BF16) of exactly `shape`; errors name the file and tensor.
  virtual Tensor tensor(const std::string& name, std::initializer_list<int64_t> shape) const = 0;
  // The projection `<prefix>.weight` (+ `<prefix>.bias` when `bias`). [out, in] unless
  // `transposed` ([in, out], GPT-2 Conv1D).
  virtual Linear linear(const std::string& prefix, int64_t in, int64_t out, bool bias,
                        bool transposed = false) const;
  // The lookup table `name` [rows, cols] as a Linear (in = cols, out = rows): Dense over
  // tensor(), unless the source keeps it in a block format (a GGUF token_embd as GgmlBlocks).
  virtual Linear table(const std::string& name, int64_t rows, int64_t cols) const;
  // An f32 vector of n values (norm weights, biases), converted if stored in half precision.
  Tensor vec(const std::string& name, int64_t n) const;
  virtual std::string describe() const = 0;
};

// The float tensor (F32/F16/BF16) `name` of exactly `shape` from `store`; errors name the file
// and the tensor. What SafetensorsSource and CompressedSource hand out.
Tensor float_tensor(const WeightStore& store, const std::string& name,
                    std::initializer_list<int64_t> shape);

// Hugging Face safetensors checkpoint (single file or sharded).
class SafetensorsSource : public WeightSource {
 public:
  explicit SafetensorsSource(WeightStore store) : store_(std::move(store)) {}
  bool has(const std::string& name) const override { return store_.has(name); }
  Tensor tensor(const std::string& name, std::initializer_list<int64_t> shape) const override;
  std::string describe() const override { return store_.describe(); }
  const WeightStore& store() const { return store_; }

 private:
  WeightStore store_;
};

}  // namespace minfer

namespace minfer {

// Random-init weights for benchmarks and tests: every tensor is N(0, std²) in `dtype` (norm
// weights are 1 + N(0, std²)), generated deterministically from the seed and the tensor name.
class RandomSource : public WeightSource {
 public:
  RandomSource(uint64_t seed, float std, DType dtype = DType::F32)
      : seed_(seed), std_(std), dtype_(dtype) {}
  bool has(const std::string& name) const override;
  Tensor tensor(const std::string& name, std::initializer_list<int64_t> shape) const override;
  std::string describe() const override { return "random weights"; }

 private:
  uint64_t seed_;
  float std_;
  DType dtype_;
};

}  // namespace minfer
