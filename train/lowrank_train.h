// Low-rank students: a Linear stored as W [out, in] = U [out, r] · V [r, in] (compress's lowrank
// format, engine/formats/low_rank.h) trains its two factors, not W. The trainer keeps running
// the dense W (materialized from the factors before every forward); after backward the factor
// gradients follow from W's by the chain rule, dU = dW·Vᵀ and dV = Uᵀ·dW, and W's own gradient is
// dropped, so W never leaves the rank-r set: W = U·V exactly after every step.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "train/params.h"

namespace minfer::train {

class FactoredLinears {
 public:
  // Registers the factors of the student's weight `name` ([out, in]): U [out, r] and V [r, in],
  // row-major f32 (copied). Before build().
  void add(const std::string& name, int64_t out, int64_t rank, int64_t in, std::vector<float> U,
           std::vector<float> V);
  // Lays out the factor parameters "<name>.u" and "<name>.v" (AdamW decay on, as matrices).
  void build();
  bool empty() const { return items_.empty(); }
  size_t size() const { return items_.size(); }
  ParamStore& params() { return params_; }
  const ParamStore& params() const { return params_; }
  // W <- U·V for every factored weight of `student` (sgemm).
  void materialize(ParamStore& student);
  // dU += dW·Vᵀ, dV += Uᵀ·dW from the student's accumulated dW, then dW <- 0.
  void pull_grads(ParamStore& student);

 private:
  struct Item {
    std::string name;
    int64_t out = 0, rank = 0, in = 0;
    std::vector<float> u0, v0;  // initial values until build()
  };
  std::vector<Item> items_;
  ParamStore params_;
};

// clip_grad_norm (train/optim.h) over the gradients of two stores together: ‖(g_a, g_b)‖₂, both
// scaled by max_norm / norm when it exceeds max_norm. Returns the norm before clipping.
double clip_grad_norm(ParamStore& a, ParamStore& b, double max_norm);

}  // namespace minfer::train
