// The trainable parameters of a model: one f32 allocation each for the weights, their gradients
// and the optimizer's two moments, carved by one size table (llm.c's ParameterTensors), so a
// single walker visits a weight together with its gradient and optimizer state.
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "engine/tensor.h"
#include "kernels/train_ops.h"

namespace minfer {
class WeightSource;
struct Linear;
}  // namespace minfer

namespace minfer::train {

// One named tensor of the table (its Hugging Face name, e.g. "model.layers.0.mlp.up_proj.weight").
struct ParamTensor {
  std::string name;
  std::vector<int64_t> shape;
  size_t offset = 0;   // first element in the flat arrays
  size_t numel = 0;    // product of shape
  bool decay = false;  // AdamW applies weight decay (matrices yes; norm weights no)
};

class ParamStore {
 public:
  // The arrays live in `mem` (host memory by default; a TrainOps' memory: kernels/train_ops.h).
  explicit ParamStore(std::pmr::memory_resource* mem = std::pmr::new_delete_resource())
      : w_(mem), g_(mem), m_(mem), v_(mem) {}
  // Adds a tensor to the table; allocate() lays the table out. Names must be unique.
  void add(const std::string& name, std::vector<int64_t> shape, bool decay);
  // Sizes w and g (zeros; g only when `grads`: a frozen store has none); m and v are sized by
  // the optimizer on first use (allocate_moments).
  void allocate(bool grads = true);
  void allocate_moments();

  const std::vector<ParamTensor>& table() const { return table_; }
  size_t numel() const { return total_; }
  // The tensor named `name`; throws naming it when absent.
  const ParamTensor& find(const std::string& name) const;
  bool has(const std::string& name) const;
  float* w(const std::string& name) { return w_.data() + find(name).offset; }
  float* g(const std::string& name) { return g_.data() + find(name).offset; }

  FloatVec& weights() { return w_; }
  FloatVec& grads() { return g_; }
  FloatVec& m() { return m_; }
  FloatVec& v() { return v_; }
  const FloatVec& weights() const { return w_; }
  const FloatVec& grads() const { return g_; }
  const FloatVec& m() const { return m_; }
  const FloatVec& v() const { return v_; }

  void zero_grad();

  // Fixed sparsity (a pruned student: masks kept fixed): records the zeros of tensor `name` as
  // it is now; mask_grads() then zeroes the gradient there, so with AdamW (zero gradient and
  // zero moments give a zero update, decay of a zero is zero) those weights stay exactly 0.
  // Returns the number of zeros recorded (a tensor without zeros gets no mask).
  size_t fix_zeros(const std::string& name);
  // g <- g * mask for every fixed tensor (before clipping and the optimizer step).
  void mask_grads();
  // Tensors with a fixed mask (name -> number of zeros).
  std::vector<std::pair<std::string, size_t>> fixed_zeros() const;

  // The walker: f(tensor, w, g, m, v) for every tensor in table order (a pointer is null while
  // its buffer is unallocated: m, v before allocate_moments(); offsetting a null pointer is UB).
  template <typename F>
  void walk(F&& f) {
    for (const ParamTensor& p : table_)
      f(p, w_.empty() ? nullptr : w_.data() + p.offset, g_.empty() ? nullptr : g_.data() + p.offset,
        m_.empty() ? nullptr : m_.data() + p.offset, v_.empty() ? nullptr : v_.data() + p.offset);
  }

 private:
  std::vector<ParamTensor> table_;
  size_t total_ = 0;
  FloatVec w_, g_, m_, v_;  // [total_] each
  struct Mask {
    size_t offset = 0, zeros = 0;
    std::string name;
    std::vector<uint8_t> keep;  // [numel] 1 = trainable, 0 = fixed at zero
  };
  std::vector<Mask> masks_;
};

// Fills the weights with N(0, std²) (1-D tensors, the norm weights: 1; names ending in ".bias":
// 0), deterministically from seed, in table order.
void init_params_random(ParamStore& p, uint64_t seed, float std);
// Copies every tensor of the table from `src` (f32/f16/bf16, same HF names); the shape is checked.
void load_params(ParamStore& p, const WeightSource& src);
// Copies src (any float dtype, shape equal to p's) into dst; `from` names the source in errors.
void copy_param(const ParamTensor& p, float* dst, const Tensor& src, const std::string& from);
// Student init from a source model (`distill --student init[:layers=...]`), the steps every
// architecture's load_from_model shares:
// The source's name of student tensor `name` when student block l is source block layer_map[l]
// (an empty map: the same blocks). `blocks` is the block list's prefix ("model.layers.",
// "transformer.h.", "encoder.layer."); other names come back unchanged. Errors: a mapped block
// outside [0, source_layers).
std::string source_block_name(const std::string& name, const std::string& blocks,
                              const std::vector<int64_t>& layer_map, int64_t source_layers);
// Fills parameter p (values dst) from source tensor `s` that is not a Linear's weight: a Linear's
// bias ("<linear>.bias" where `linears` holds "<linear>.weight") or any f32/f16/bf16 tensor of
// `tensors`. Errors name s and p: no such tensor, a linear without a bias, another dtype, a shape
// that differs.
void copy_bias_or_tensor(const ParamTensor& p, float* dst, const std::string& s,
                         const std::map<std::string, const Linear*>& linears,
                         const std::map<std::string, Tensor>& tensors);
// The source model's Linear `s` that student tensor `name` starts from (a LoRA target keeps it in
// its own format: NF4 stays NF4, QLoRA). Errors name both when `linears` has no `s`.
const Linear& source_linear(const std::map<std::string, const Linear*>& linears,
                            const std::string& s, const std::string& name);
// The weights as (HF name, f32 host tensor) pairs in table order, for safetensors.
std::vector<std::pair<std::string, Tensor>> named_params(const ParamStore& p);

}  // namespace minfer::train
