// Linear: how one weight matrix is stored and multiplied. Models hold every projection as a
// Linear and call Backend::linear(y, x, W); the backend dispatches on W's representation in one
// place. Compression transforms map Linear -> Linear (later issues add Quantized,
// Int8WithOutliers, Sparse, LowRank and Codebook representations to `LinearRepr`).
#pragma once
#include <memory>
#include <string>
#include <variant>

#include "engine/tensor.h"

namespace minfer {

// Plain float matrix: F32, F16 or BF16.
//   transposed == false: w is [out, in] (torch nn.Linear layout)
//   transposed == true:  w is [in, out] (GPT-2 Conv1D layout), read without copying
struct Dense {
  Tensor w;
  bool transposed = false;
};

using LinearRepr = std::variant<Dense>;

struct Linear {
  std::string name;  // HF tensor name of the weight, for messages and per-layer overrides
  int64_t in = 0;    // input features
  int64_t out = 0;   // output features
  LinearRepr repr;
  Tensor bias;  // [out] f32 (optional)
  // Backend-owned copy on a device (uploaded once; compressed formats stay compressed).
  std::shared_ptr<void> device_copy;

  // Bytes the weights occupy (codes, scales, ...), not counting the bias.
  size_t weight_bytes() const;
};

// Builds a Dense Linear from a weight tensor, checking its shape against (out, in).
Linear make_dense(const std::string& name, Tensor w, int64_t in, int64_t out,
                  bool transposed = false, Tensor bias = {});

}  // namespace minfer
