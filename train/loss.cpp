#include "train/loss.h"

#include "engine/error.h"
#include "train/ops.h"

namespace minfer::train {

LossParts distill_loss(const float* student, const float* teacher, const int32_t* targets,
                       int64_t N, int64_t V, const DistillLossArgs& a, float* dlogits,
                       float grad_scale, TrainOps* ops) {
  TrainOps& o = ops ? *ops : *cpu_train_ops();
  MINFER_CHECK(a.alpha >= 0.f && a.alpha <= 1.f, "--alpha {} outside [0, 1]", a.alpha);
  MINFER_CHECK(a.tau > 0.f, "--temperature {} must be > 0", a.tau);
  MINFER_CHECK(a.alpha == 0.f || teacher != nullptr, "distill loss: alpha {} needs teacher logits",
               a.alpha);
  LossParts r;
  r.rows = N;
  for (int64_t n = 0; n < N; ++n) r.scored += targets[n] >= 0;
  MINFER_CHECK(a.alpha == 1.f || r.scored > 0, "distill loss: no row has a target");
  if (a.alpha < 1.f) r.ce = o.cross_entropy_forward(student, targets, N, V) / double(r.scored);
  if (a.alpha > 0.f) r.kd = o.kl_forward(student, teacher, N, V, a.tau, a.reverse) / double(N);
  const double t2 = double(a.tau) * a.tau;
  r.total = a.alpha * t2 * r.kd + (1.0 - a.alpha) * r.ce;
  if (dlogits) {
    if (a.alpha < 1.f)
      o.cross_entropy_backward(dlogits, student, targets, N, V,
                               float(grad_scale * (1.0 - a.alpha) / double(r.scored)));
    if (a.alpha > 0.f)
      o.kl_backward(dlogits, student, teacher, N, V, a.tau, a.reverse,
                    float(grad_scale * a.alpha * t2 / double(N)));
    o.synchronize();
  }
  return r;
}

}  // namespace minfer::train
