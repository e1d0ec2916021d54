// Optimizer: AdamW over f32 master weights, a warmup + cosine learning-rate schedule, global
// gradient-norm clipping. All reductions run in a fixed order, so a run is bit-reproducible for
// a given thread count.
#pragma once
#include <cstdint>

#include "train/params.h"

namespace minfer::train {

// AdamW (Loshchilov & Hutter 2019, "Decoupled Weight Decay Regularization"), as torch.optim.AdamW
// computes it: w -= lr·wd·w (tensors with decay only); m = β1 m + (1−β1) g; v = β2 v + (1−β2) g²;
// w -= lr · (m / (1−β1^t)) / (sqrt(v / (1−β2^t)) + eps).
// Coefficients are doubles, as torch keeps them (Python floats): 1 − β2 computed from an f32
// 0.999 is off by 1.3e-5 relative.
struct AdamWConfig {
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
  double weight_decay = 0.0;
};

// The element update's coefficients for learning rate lr at step t (kernels/common/adamw_math.h);
// `decay`: the tensor has weight decay.
AdamWCoef adamw_coef(const AdamWConfig& c, float lr, int64_t t, bool decay);

// One update with learning rate lr at step t (1-based: the bias corrections use t), computed by
// `ops` where the store's arrays live (null: the CPU; a CUDA TrainOps runs it as a kernel per
// tensor on the device and returns when it is done). Allocates the moments on first use.
void adamw_step(ParamStore& p, const AdamWConfig& c, float lr, int64_t t, TrainOps* ops = nullptr);

// Linear warmup over `warmup` steps to `peak`, then cosine decay to peak·min_ratio at `total`
// (the schedule of Loshchilov & Hutter 2017, SGDR, without restarts, as most LLM recipes use).
// step is 0-based (the step about to run).
float lr_at(int64_t step, int64_t warmup, int64_t total, float peak, float min_ratio);

// ‖g‖₂ over every gradient (sum of squares in double, table order). When max_norm > 0 and the
// norm exceeds it, scales every gradient by max_norm / norm (torch.nn.utils.clip_grad_norm_).
// Returns the norm before clipping. Throws when the norm is not finite (a diverged step).
// ops: as adamw_step (the sum of squares and the scaling on the device, the norm on the host).
double clip_grad_norm(ParamStore& p, double max_norm, TrainOps* ops = nullptr);

}  // namespace minfer::train
