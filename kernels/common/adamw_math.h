// One AdamW element update (Loshchilov & Hutter 2019, "Decoupled Weight Decay Regularization"),
// written once for the CPU optimizer (train/optim.cpp through the CPU TrainOps) and the CUDA
// kernel (kernels/cuda/train_kernels.cu), so that both run the same arithmetic: torch.optim.AdamW's
// order of operations, f32 moments, the bias corrections and the update in double (torch keeps
// its coefficients as Python floats).
#pragma once
#include <cmath>

#include "kernels/common/hd.h"

namespace minfer {

// The coefficients of one step (train/optim.h: adamw_coef builds them).
struct AdamWCoef {
  float decay = 0;          // lr · weight_decay for tensors with decay, else 0
  float b1 = 0, b2 = 0;     // β1, β2
  float a1 = 0, a2 = 0;     // 1 − β1, 1 − β2 (from the double β, then rounded)
  double bc1 = 1, bc2 = 1;  // 1 − β1^t, 1 − β2^t
  double lr = 0, eps = 0;
};

// w -= decay·w; m = β1 m + (1−β1) g; v = β2 v + (1−β2) g²; w -= lr·(m/bc1) / (sqrt(v/bc2) + eps).
MINFER_HD inline void adamw_update(float& w, float& m, float& v, float g, const AdamWCoef& c) {
  w -= c.decay * w;
  m = c.b1 * m + c.a1 * g;
  v = c.b2 * v + c.a2 * g * g;
  const double mh = m / c.bc1, vh = v / c.bc2;
  w -= float(c.lr * mh / (sqrt(vh) + c.eps));
}

}  // namespace minfer
