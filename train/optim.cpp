#include "train/optim.h"

#include <cmath>

#include "engine/error.h"

namespace minfer::train {

AdamWCoef adamw_coef(const AdamWConfig& c, float lr, int64_t t, bool decay) {
  AdamWCoef k;
  k.decay = decay ? float(lr * c.weight_decay) : 0.f;
  k.b1 = float(c.beta1), k.b2 = float(c.beta2);
  k.a1 = float(1.0 - c.beta1), k.a2 = float(1.0 - c.beta2);
  k.bc1 = 1.0 - std::pow(c.beta1, double(t)), k.bc2 = 1.0 - std::pow(c.beta2, double(t));
  k.lr = lr, k.eps = c.eps;
  return k;
}

void adamw_step(ParamStore& p, const AdamWConfig& c, float lr, int64_t t, TrainOps* ops) {
  MINFER_CHECK(t >= 1, "adamw: step {} must be >= 1", t);
  p.allocate_moments();
  TrainOps& o = ops ? *ops : *cpu_train_ops();
  p.walk([&](const ParamTensor& pt, float* w, float* g, float* m, float* v) {
    o.adamw(w, m, v, g, int64_t(pt.numel), adamw_coef(c, lr, t, pt.decay));
  });
  o.synchronize();
}

float lr_at(int64_t step, int64_t warmup, int64_t total, float peak, float min_ratio) {
  if (warmup > 0 && step < warmup) return peak * float(step + 1) / float(warmup);
  if (total <= warmup) return peak;
  const double progress = std::min(1.0, double(step - warmup) / double(total - warmup));
  const double cosine = 0.5 * (1.0 + std::cos(M_PI * progress));
  return float(peak * (min_ratio + (1.0 - min_ratio) * cosine));
}

double clip_grad_norm(ParamStore& p, double max_norm, TrainOps* ops) {
  TrainOps& o = ops ? *ops : *cpu_train_ops();
  FloatVec& g = p.grads();
  const double norm = std::sqrt(o.sum_squares(g.data(), int64_t(g.size())));
  MINFER_CHECK(std::isfinite(norm), "gradient norm is {}: the step diverged (lower --lr?)", norm);
  if (max_norm > 0 && norm > max_norm) {
    o.scale(g.data(), float(max_norm / norm), int64_t(g.size()));
    o.synchronize();
  }
  return norm;
}

}  // namespace minfer::train
