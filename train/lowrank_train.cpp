// Low-rank students (lowrank_train.h).
#include "train/lowrank_train.h"

#include <cblas.h>

#include <cmath>

#include "engine/error.h"

namespace minfer::train {

void FactoredLinears::add(const std::string& name, int64_t out, int64_t rank, int64_t in,
                          std::vector<float> U, std::vector<float> V) {
  MINFER_CHECK(params_.numel() == 0, "factors of '{}' added after build()", name);
  MINFER_CHECK(rank >= 1 && size_t(out * rank) == U.size() && size_t(rank * in) == V.size(),
               "factors of '{}': U has {} values for [{}, {}], V {} for [{}, {}]", name, U.size(),
               out, rank, V.size(), rank, in);
  items_.push_back({name, out, rank, in, std::move(U), std::move(V)});
}

void FactoredLinears::build() {
  for (const Item& it : items_) {
    params_.add(it.name + ".u", {it.out, it.rank}, true);
    params_.add(it.name + ".v", {it.rank, it.in}, true);
  }
  params_.allocate();
  for (Item& it : items_) {
    std::copy(it.u0.begin(), it.u0.end(), params_.w(it.name + ".u"));
    std::copy(it.v0.begin(), it.v0.end(), params_.w(it.name + ".v"));
    it.u0 = {};
    it.v0 = {};
  }
}

void FactoredLinears::materialize(ParamStore& student) {
  for (const Item& it : items_) {
    const ParamTensor& w = student.find(it.name);
    MINFER_CHECK(w.shape.size() == 2 && w.shape[0] == it.out && w.shape[1] == it.in,
                 "factored weight '{}': the student's tensor is not [{}, {}]", it.name, it.out,
                 it.in);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, int(it.out), int(it.in), int(it.rank),
                1.f, params_.w(it.name + ".u"), int(it.rank), params_.w(it.name + ".v"), int(it.in),
                0.f, student.w(it.name), int(it.in));
  }
}

void FactoredLinears::pull_grads(ParamStore& student) {
  for (const Item& it : items_) {
    float* dW = student.g(it.name);
    const int out = int(it.out), r = int(it.rank), in = int(it.in);
    // dU [out, r] += dW [out, in] · Vᵀ
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, out, r, in, 1.f, dW, in,
                params_.w(it.name + ".v"), in, 1.f, params_.g(it.name + ".u"), r);
    // dV [r, in] += Uᵀ · dW
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, r, in, out, 1.f, params_.w(it.name + ".u"),
                r, dW, in, 1.f, params_.g(it.name + ".v"), in);
    std::fill(dW, dW + it.out * it.in, 0.f);
  }
}

double clip_grad_norm(ParamStore& a, ParamStore& b, double max_norm) {
  double ss = 0;
  for (float g : a.grads()) ss += double(g) * g;
  for (float g : b.grads()) ss += double(g) * g;
  const double norm = std::sqrt(ss);
  MINFER_CHECK(std::isfinite(norm), "gradient norm is {}: the step diverged (lower --lr?)", norm);
  if (max_norm > 0 && norm > max_norm) {
    const float s = float(max_norm / norm);
    for (float& g : a.grads()) g *= s;
    for (float& g : b.grads()) g *= s;
  }
  return norm;
}

}  // namespace minfer::train
