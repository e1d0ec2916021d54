#include "compress/lowrank.h"

#include <cblas.h>
#include <lapacke.h>

#include <algorithm>
#include <cmath>

#include "engine/error.h"

namespace minfer {

namespace {

Linear dense_factor(const std::string& name, std::vector<float>&& w, int64_t in, int64_t out) {
  Tensor t = Tensor::empty(DType::F32, {out, in});
  std::copy(w.begin(), w.end(), t.data<float>());
  return make_dense(name, std::move(t), in, out);
}

// W = P Σ Qᵀ (LAPACKE sgesdd, thin): a [m, n] row-major (destroyed), p [m, k], s [k], qt [k, n].
void svd(std::vector<float>& a, int64_t m, int64_t n, std::vector<float>& p, std::vector<float>& s,
         std::vector<float>& qt, const std::string& name) {
  const int64_t k = std::min(m, n);
  p.assign(size_t(m * k), 0.f);
  s.assign(size_t(k), 0.f);
  qt.assign(size_t(k * n), 0.f);
  const lapack_int info =
      LAPACKE_sgesdd(LAPACK_ROW_MAJOR, 'S', lapack_int(m), lapack_int(n), a.data(), lapack_int(n),
                     s.data(), p.data(), lapack_int(k), qt.data(), lapack_int(n));
  MINFER_CHECK(info == 0, "lowrank '{}': LAPACKE_sgesdd failed (info {}) on a [{}, {}] matrix",
               name, int(info), m, n);
}

// Lower Cholesky factor S of XᵀX + λI (f64, LAPACKE dpotrf), λ from 1e-6 of the mean diagonal up.
std::vector<double> cholesky_lower(const std::vector<float>& xtx, int64_t n,
                                   const std::string& name) {
  double mean_diag = 0;
  for (int64_t i = 0; i < n; ++i) mean_diag += xtx[size_t(i * n + i)];
  mean_diag /= double(n);
  MINFER_CHECK(std::isfinite(mean_diag) && mean_diag > 0,
               "lowrank-aw '{}': the calibration Gram matrix XᵀX is zero or not finite (mean "
               "diagonal {})",
               name, mean_diag);
  for (double ridge = 1e-6; ridge <= 1.0; ridge *= 10) {
    std::vector<double> s(size_t(n * n), 0.0);
    for (int64_t i = 0; i < n; ++i)
      for (int64_t j = 0; j <= i; ++j) s[size_t(i * n + j)] = xtx[size_t(i * n + j)];
    for (int64_t i = 0; i < n; ++i) s[size_t(i * n + i)] += ridge * mean_diag;
    if (LAPACKE_dpotrf(LAPACK_ROW_MAJOR, 'L', lapack_int(n), s.data(), lapack_int(n)) == 0)
      return s;
  }
  MINFER_FAIL("lowrank-aw '{}': XᵀX + λI is not positive definite even with λ = mean diagonal",
              name);
}

}  // namespace

int64_t lowrank_rank_for_percent(int64_t in, int64_t out, int percent) {
  MINFER_CHECK(percent >= 1 && percent <= 99,
               "lowrank: the parameter reduction must be 1..99 %, got {}", percent);
  // r (in + out) <= (100 - p) / 100 * in * out, in integers.
  const int64_t r = (100 - percent) * in * out / (100 * (in + out));
  MINFER_CHECK(r >= 1,
               "lowrank: a [{}, {}] matrix cannot lose {} % of its parameters (rank 1 already "
               "keeps {:.1f} %)",
               out, in, percent, 100.0 * double(in + out) / double(in * out));
  return r;
}

int64_t lowrank_rank_for_energy(const std::vector<float>& sigma, double energy) {
  MINFER_CHECK(energy > 0 && energy <= 1, "lowrank: energy must be in (0, 1], got {}", energy);
  double total = 0;
  for (float s : sigma) total += double(s) * s;
  double kept = 0;
  for (size_t r = 0; r < sigma.size(); ++r) {
    kept += double(sigma[r]) * sigma[r];
    if (kept >= energy * total * (1 - 1e-12)) return int64_t(r) + 1;
  }
  return std::max<int64_t>(int64_t(sigma.size()), 1);
}

Linear lowrank_factorize(const Linear& l, const LowRankSpec& spec, const std::vector<float>* xtx) {
  MINFER_CHECK(std::holds_alternative<Dense>(l.repr),
               "lowrank '{}': factorizes float weights, but the weight is {}", l.name,
               linear_format(l));
  const int64_t in = l.in, out = l.out, k = std::min(in, out);
  const int set = (spec.percent != 0) + (spec.rank != 0) + (spec.energy != 0);
  MINFER_CHECK(set == 1,
               "lowrank '{}': give exactly one of a parameter reduction, a rank or an energy",
               l.name);
  if (spec.rank != 0)
    MINFER_CHECK(
        spec.rank >= 1 && spec.rank <= k,
        "lowrank '{}': rank must be in [1, min(in, out) = {}] for a [{}, {}] weight, got {}",
        l.name, k, out, in, spec.rank);
  const Tensor wt = dequantize_weight(l);  // [out, in] f32
  const float* w = wt.data<float>();
  for (int64_t i = 0; i < in * out; ++i)
    MINFER_CHECK(std::isfinite(w[i]), "lowrank '{}': weight [{}, {}] is not finite ({})", l.name,
                 i / in, i % in, w[i]);

  std::vector<double> chol;  // S [in, in] lower, XᵀX + λI = S Sᵀ
  std::vector<float> a(w, w + in * out);
  if (spec.activation_aware) {
    MINFER_CHECK(xtx != nullptr,
                 "lowrank-aw '{}': no calibration Gram matrix XᵀX (run a calibration pass)",
                 l.name);
    MINFER_CHECK(int64_t(xtx->size()) == in * in,
                 "lowrank-aw '{}': Gram matrix has {} values, expected [{}, {}]", l.name,
                 xtx->size(), in, in);
    chol = cholesky_lower(*xtx, in, l.name);
    // a = W S (f64 product, rounded to f32 for the SVD).
    std::vector<double> ws(size_t(in * out));
    for (int64_t i = 0; i < in * out; ++i) ws[size_t(i)] = w[i];
    cblas_dtrmm(CblasRowMajor, CblasRight, CblasLower, CblasNoTrans, CblasNonUnit, int(out),
                int(in), 1.0, chol.data(), int(in), ws.data(), int(in));
    for (int64_t i = 0; i < in * out; ++i) a[size_t(i)] = float(ws[size_t(i)]);
  }
  std::vector<float> p, s, qt;
  svd(a, out, in, p, s, qt, l.name);
  const int64_t r = spec.percent ? lowrank_rank_for_percent(in, out, spec.percent)
                    : spec.rank  ? spec.rank
                                 : lowrank_rank_for_energy(s, spec.energy);

  std::vector<float> u(size_t(out * r)), v(size_t(r * in));
  for (int64_t o = 0; o < out; ++o)
    for (int64_t j = 0; j < r; ++j) u[size_t(o * r + j)] = p[size_t(o * k + j)];
  if (spec.activation_aware) {
    // V = Σ_r Q_rᵀ S⁻¹: solve Y S = Q_rᵀ (f64 triangular solve).
    std::vector<double> y(size_t(r * in));
    for (int64_t i = 0; i < r * in; ++i) y[size_t(i)] = qt[size_t(i)];
    cblas_dtrsm(CblasRowMajor, CblasRight, CblasLower, CblasNoTrans, CblasNonUnit, int(r), int(in),
                1.0, chol.data(), int(in), y.data(), int(in));
    for (int64_t j = 0; j < r; ++j)
      for (int64_t i = 0; i < in; ++i)
        v[size_t(j * in + i)] = float(double(s[size_t(j)]) * y[size_t(j * in + i)]);
  } else {
    for (int64_t j = 0; j < r; ++j)
      for (int64_t i = 0; i < in; ++i)
        v[size_t(j * in + i)] = s[size_t(j)] * qt[size_t(j * in + i)];
  }
  for (float x : v)
    MINFER_CHECK(std::isfinite(x), "lowrank-aw '{}': the whitened factor is not finite", l.name);
  LowRank lr;
  lr.v = Box<Linear>(dense_factor(l.name + ".v", std::move(v), in, r));
  lr.u = Box<Linear>(dense_factor(l.name + ".u", std::move(u), r, out));
  return make_linear(l.name, in, out, std::move(lr), l.bias);
}

}  // namespace minfer
