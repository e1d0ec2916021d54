#include "train/optim.h"

#include <cmath>

#include "engine/error.h"

namespace minfer::train {

void adamw_step(ParamStore& p, const AdamWConfig& c, float lr, int64_t t) {
  MINFER_CHECK(t >= 1, "adamw: step {} must be >= 1", t);
  p.allocate_moments();
  const double bc1 = 1.0 - std::pow(c.beta1, double(t)), bc2 = 1.0 - std::pow(c.beta2, double(t));
  const float b1 = float(c.beta1), b2 = float(c.beta2), a1 = float(1.0 - c.beta1),
              a2 = float(1.0 - c.beta2);
  p.walk([&](const ParamTensor& pt, float* w, float* g, float* m, float* v) {
    const float decay = pt.decay ? float(lr * c.weight_decay) : 0.f;
#pragma omp parallel for schedule(static) if (pt.numel >= (1u << 16))
    for (size_t i = 0; i < pt.numel; ++i) {
      w[i] -= decay * w[i];
      m[i] = b1 * m[i] + a1 * g[i];
      v[i] = b2 * v[i] + a2 * g[i] * g[i];
      const double mh = m[i] / bc1, vh = v[i] / bc2;
      w[i] -= float(lr * mh / (std::sqrt(vh) + c.eps));
    }
  });
}

float lr_at(int64_t step, int64_t warmup, int64_t total, float peak, float min_ratio) {
  if (warmup > 0 && step < warmup) return peak * float(step + 1) / float(warmup);
  if (total <= warmup) return peak;
  const double progress = std::min(1.0, double(step - warmup) / double(total - warmup));
  const double cosine = 0.5 * (1.0 + std::cos(M_PI * progress));
  return float(peak * (min_ratio + (1.0 - min_ratio) * cosine));
}

double clip_grad_norm(ParamStore& p, double max_norm) {
  double ss = 0;
  for (float g : p.grads()) ss += double(g) * g;
  const double norm = std::sqrt(ss);
  MINFER_CHECK(std::isfinite(norm), "gradient norm is {}: the step diverged (lower --lr?)", norm);
  if (max_norm > 0 && norm > max_norm) {
    const float s = float(max_norm / norm);
    for (float& g : p.grads()) g *= s;
  }
  return norm;
}

}  // namespace minfer::train
