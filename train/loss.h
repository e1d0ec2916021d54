// The distillation loss (Hinton et al. 2015, "Distilling the Knowledge in a Neural Network"):
//   loss = α · τ² · mean_rows KL(softmax(teacher/τ) ‖ softmax(student/τ)) + (1 − α) · CE(labels)
// The τ² keeps the soft-target gradients' scale independent of τ (the paper, section 2).
// Reverse KL, KL(student ‖ teacher), is MiniLLM's choice (Gu et al. 2023).
#pragma once
#include <cstdint>

#include "kernels/train_ops.h"

namespace minfer::train {

struct DistillLossArgs {
  float alpha = 0.5f;    // weight of the KD term, in [0, 1]; 0 = plain cross-entropy
  float tau = 1.f;       // temperature τ > 0
  bool reverse = false;  // KL(student ‖ teacher) instead of KL(teacher ‖ student)
};

struct LossParts {
  double kd = 0;     // mean KL over rows (before α τ²); 0 when alpha == 0
  double ce = 0;     // mean cross-entropy over the rows with a target
  double total = 0;  // α τ² kd + (1 − α) ce
  int64_t rows = 0, scored = 0;
};

// Loss of student logits [N, V] against teacher logits [N, V] (null when α = 0) and targets [N]
// (< 0 = not scored). When dlogits is not null, adds grad_scale · ∂total/∂student into it
// (grad_scale = 1/K for K accumulation steps). Throws for α outside [0, 1], τ <= 0, a missing
// teacher with α > 0, or no scored row with α < 1. `ops` computes it where the arrays live
// (null: the CPU; a CUDA TrainOps: kernels on the device, every array in its memory, returning
// when dlogits is complete).
LossParts distill_loss(const float* student, const float* teacher, const int32_t* targets,
                       int64_t N, int64_t V, const DistillLossArgs& a, float* dlogits,
                       float grad_scale = 1.f, TrainOps* ops = nullptr);

}  // namespace minfer::train
