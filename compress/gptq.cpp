#include "compress/gptq.h"

#include <cblas.h>
#include <lapacke.h>

#include <algorithm>
#include <cmath>

#include "compress/dataaware.h"
#include "engine/error.h"
#include "kernels/common/quant_math.h"

namespace minfer {

void refit_group_scales(const std::vector<double>& w, const std::vector<double>& h,
                        const std::vector<int>& codes, int64_t N, int64_t K, int64_t G,
                        std::vector<float>& scales) {
  const int64_t groups = qm::ceil_div(K, G);
  MINFER_CHECK(int64_t(w.size()) == N * K && int64_t(h.size()) == K * K &&
                   int64_t(codes.size()) == N * K && int64_t(scales.size()) == N * groups,
               "refit_group_scales: sizes W {}, H {}, codes {}, scales {} do not match [{}, {}] "
               "with groups of {}",
               w.size(), h.size(), codes.size(), scales.size(), N, K, G);
  std::vector<double> C(size_t(N * K));
  for (size_t i = 0; i < C.size(); ++i) C[i] = double(codes[i]);
  // b[n, g] = Σ_{j∈g} c_nj (w_n H)_j;  A[n, g, h] = Σ_{j∈g} c_nj (C[:, h] H[h, :])_nj.
  std::vector<double> P(size_t(N * K));
  std::vector<double> A(size_t(N * groups * groups)), b(size_t(N * groups));
  auto accumulate = [&](int64_t h) {  // from P (h < 0: b, else column h of A)
#pragma omp parallel for if (N * K >= (1 << 16))
    for (int64_t n = 0; n < N; ++n)
      for (int64_t g = 0; g < groups; ++g) {
        double acc = 0;
        for (int64_t j = g * G; j < std::min(K, (g + 1) * G); ++j)
          acc += C[size_t(n * K + j)] * P[size_t(n * K + j)];
        if (h < 0)
          b[size_t(n * groups + g)] = acc;
        else
          A[size_t((n * groups + g) * groups + h)] = acc;
      }
  };
  cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, int(N), int(K), int(K), 1.0, w.data(),
              int(K), h.data(), int(K), 0.0, P.data(), int(K));
  accumulate(-1);
  for (int64_t hg = 0; hg < groups; ++hg) {
    const int64_t k0 = hg * G, len = std::min(K, k0 + G) - k0;
    cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, int(N), int(K), int(len), 1.0,
                C.data() + k0, int(K), h.data() + k0 * K, int(K), 0.0, P.data(), int(K));
    accumulate(hg);
  }
#pragma omp parallel for if (N * K >= (1 << 16))
  for (int64_t n = 0; n < N; ++n) {
    // Groups whose codes are all 0 have no say (A_gg = 0): their scale stays.
    std::vector<int64_t> idx;
    for (int64_t g = 0; g < groups; ++g)
      if (A[size_t((n * groups + g) * groups + g)] > 0) idx.push_back(g);
    const int64_t m = int64_t(idx.size());
    if (m == 0) continue;
    std::vector<double> Am(size_t(m * m)), s(static_cast<size_t>(m));
    for (int64_t a = 0; a < m; ++a) {
      s[size_t(a)] = b[size_t(n * groups + idx[size_t(a)])];
      for (int64_t c = 0; c < m; ++c)
        Am[size_t(a * m + c)] = A[size_t((n * groups + idx[size_t(a)]) * groups + idx[size_t(c)])];
    }
    const std::vector<double> Acopy = Am;
    if (LAPACKE_dposv(LAPACK_ROW_MAJOR, 'U', lapack_int(m), 1, Am.data(), lapack_int(m), s.data(),
                      1) != 0)
      continue;  // not positive definite in floating point: keep the scales
    // Keep the solution only if it lowers sᵀAs − 2bᵀs (it must, up to rounding).
    auto objective = [&](auto scale_of) {
      double v = 0;
      for (int64_t a = 0; a < m; ++a) {
        double r = 0;
        for (int64_t c = 0; c < m; ++c) r += Acopy[size_t(a * m + c)] * scale_of(c);
        v += scale_of(a) * (r - 2 * b[size_t(n * groups + idx[size_t(a)])]);
      }
      return v;
    };
    const double before =
        objective([&](int64_t a) { return double(scales[size_t(n * groups + idx[size_t(a)])]); });
    const double after = objective([&](int64_t a) { return double(float(s[size_t(a)])); });
    bool finite = true;
    for (double v : s) finite = finite && std::isfinite(float(v));
    if (!finite || !(after < before)) continue;
    for (int64_t a = 0; a < m; ++a)
      scales[size_t(n * groups + idx[size_t(a)])] = float(s[size_t(a)]);
  }
}

Linear quantize_gptq(const Linear& l, const QuantSpec& spec, const std::vector<float>& xtx,
                     const GptqOptions& opt) {
  MINFER_CHECK(std::holds_alternative<Dense>(l.repr),
               "gptq '{}': quantizes float weights, but the weight is {}", l.name,
               linear_format(l));
  MINFER_CHECK(spec.method == "int4" || spec.method == "int3" || spec.method == "int8",
               "gptq '{}': {} is not a GPTQ target (int4, int3, int8)", l.name, spec.method);
  MINFER_CHECK(!opt.clip_search || spec.method != "int8",
               "gptq '{}': the scale search is an int4 / int3 option", l.name);
  MINFER_CHECK(!spec.double_quant && spec.per_channel,
               "gptq '{}': per-row / per-group scales only (no double quantization)", l.name);
  MINFER_CHECK(!spec.asymmetric || spec.method == "int4",
               "gptq '{}': zero points (-asym) are an int4 option, not {}", l.name, spec.method);
  const bool asym = spec.asymmetric;
  MINFER_CHECK(opt.damp > 0 && std::isfinite(opt.damp) && opt.block >= 1,
               "gptq '{}': damp must be > 0 and block >= 1 (got {}, {})", l.name, opt.damp,
               opt.block);
  const int64_t N = l.out, K = l.in;
  MINFER_CHECK(int64_t(xtx.size()) == K * K,
               "gptq '{}': Gram matrix has {} values, expected [{}, {}]", l.name, xtx.size(), K, K);
  const QScheme scheme = spec.method == "int8"   ? QScheme::Int8
                         : spec.method == "int3" ? QScheme::Int3
                                                 : QScheme::Int4;
  // int4 with the search uses all 16 codes (−8..7, compress/dataaware.h); without, the paper's
  // symmetric −7..7.
  const int kind = spec.method == "int4"   ? (opt.clip_search ? 5 : 4)
                   : spec.method == "int3" ? 3
                                           : 8;
  const QSchemeInfo info = qscheme_info(scheme);
  int64_t G = spec.group == 0 ? info.default_group : spec.group;
  if (G == 0 || G >= K) G = K;
  MINFER_CHECK(G == K || G % info.group_multiple == 0,
               "gptq '{}': {} group must be a multiple of {}, got {}", l.name, spec.method,
               info.group_multiple, G);
  // Group starts must meet updated columns: a block is a multiple of the group (or one group
  // per row, whose only start is column 0). With act-order the scales are fixed beforehand.
  const int64_t B = G == K || opt.act_order ? opt.block : G * std::max<int64_t>(1, opt.block / G);

  const Tensor wt = dequantize_weight(l);
  std::vector<double> W(size_t(N * K));
  for (int64_t i = 0; i < N * K; ++i) {
    W[size_t(i)] = wt.data<float>()[i];
    MINFER_CHECK(std::isfinite(W[size_t(i)]), "gptq '{}': weight [{}, {}] is not finite", l.name,
                 i / K, i % K);
  }
  std::vector<double> H(size_t(K * K));
  double mean_diag = 0;
  for (int64_t i = 0; i < K * K; ++i) {
    H[size_t(i)] = xtx[size_t(i)];
    MINFER_CHECK(std::isfinite(H[size_t(i)]), "gptq '{}': Gram matrix is not finite", l.name);
  }
  for (int64_t i = 0; i < K; ++i) {
    if (H[size_t(i * K + i)] == 0) {  // a dead input: its weights never matter
      H[size_t(i * K + i)] = 1;
      for (int64_t n = 0; n < N; ++n) W[size_t(n * K + i)] = 0;
    }
    mean_diag += H[size_t(i * K + i)];
  }
  mean_diag /= double(K);
  // The refit (-refit) scores scales on the original weights and the damped H, in the original
  // column order: both are overwritten below.
  std::vector<double> W0, H0;
  if (opt.refit_scales) {
    W0 = W;
    H0 = H;
    for (int64_t i = 0; i < K; ++i) H0[size_t(i * K + i)] += opt.damp * mean_diag;
  }
  std::vector<double> diag(static_cast<size_t>(K));
  for (int64_t i = 0; i < K; ++i) diag[size_t(i)] = H[size_t(i * K + i)];
  // perm[i]: the original column rounded i-th (act-order: descending diag H, stable).
  std::vector<int64_t> perm(static_cast<size_t>(K));
  for (int64_t i = 0; i < K; ++i) perm[size_t(i)] = i;
  const int64_t groups = qm::ceil_div(K, G);
  std::vector<float> scales(size_t(N * groups), 0.f);
  std::vector<int> zeros(asym ? size_t(N * groups) : 0, 0);
  auto group_scale = [&](const double* w, int64_t k0, int64_t len) -> float {
    if (kind == 8) {
      double amax = 0;
      for (int64_t k = 0; k < len; ++k) amax = std::max(amax, std::fabs(w[k]));
      return float(amax) / 127.f;
    }
    return fit_group_scale(w, opt.clip_search ? diag.data() + k0 : nullptr, len, kind,
                           opt.clip_search);
  };
  // The scale (asymmetric: and zero point) of group g of row n from weights w[0..len) (original
  // column order k0..).
  auto fit_group = [&](const double* w, int64_t n, int64_t g, int64_t k0, int64_t len) {
    const size_t at = size_t(n * groups + g);
    if (asym) {
      const qm::AsymParams p =
          fit_group_asym(w, opt.clip_search ? diag.data() + k0 : nullptr, len, opt.clip_search);
      scales[at] = p.scale;
      zeros[at] = p.zero;
    } else {
      scales[at] = group_scale(w, k0, len);
    }
  };
  if (opt.act_order) {
    std::stable_sort(perm.begin(), perm.end(),
                     [&](int64_t a, int64_t b) { return diag[size_t(a)] > diag[size_t(b)]; });
    for (int64_t n = 0; n < N; ++n)
      for (int64_t g = 0; g < groups; ++g)
        fit_group(W.data() + n * K + g * G, n, g, g * G, std::min(K, (g + 1) * G) - g * G);
    std::vector<double> Wp(W.size()), Hp(H.size());
    for (int64_t n = 0; n < N; ++n)
      for (int64_t i = 0; i < K; ++i) Wp[size_t(n * K + i)] = W[size_t(n * K + perm[size_t(i)])];
    for (int64_t i = 0; i < K; ++i)
      for (int64_t j = 0; j < K; ++j)
        Hp[size_t(i * K + j)] = H[size_t(perm[size_t(i)] * K + perm[size_t(j)])];
    W.swap(Wp);
    H.swap(Hp);
  }
  for (int64_t i = 0; i < K; ++i) H[size_t(i * K + i)] += opt.damp * mean_diag;
  // R: upper Cholesky factor of H⁻¹ (H⁻¹ = Rᵀ R); row i of R carries column i's error onward.
  lapack_int info_c = LAPACKE_dpotrf(LAPACK_ROW_MAJOR, 'U', lapack_int(K), H.data(), lapack_int(K));
  MINFER_CHECK(info_c == 0, "gptq '{}': H + λI is not positive definite (dpotrf info {})", l.name,
               int(info_c));
  info_c = LAPACKE_dpotri(LAPACK_ROW_MAJOR, 'U', lapack_int(K), H.data(), lapack_int(K));
  MINFER_CHECK(info_c == 0, "gptq '{}': dpotri failed (info {})", l.name, int(info_c));
  info_c = LAPACKE_dpotrf(LAPACK_ROW_MAJOR, 'U', lapack_int(K), H.data(), lapack_int(K));
  MINFER_CHECK(info_c == 0, "gptq '{}': H⁻¹ is not positive definite (dpotrf info {})", l.name,
               int(info_c));
  const std::vector<double>& R = H;

  std::vector<int> codes(size_t(N * K));
  std::vector<double> err(size_t(N * B));
  const int rounds = opt.refit_scales ? opt.refit_rounds : 1;
  MINFER_CHECK(rounds >= 1 && rounds <= 16, "gptq '{}': refit rounds must be in 1..16, got {}",
               l.name, rounds);
  const std::vector<double> Wstart = rounds > 1 ? W : std::vector<double>();
  // The refit's objective (w0 − ŵ)(XᵀX + λI)(w0 − ŵ)ᵀ summed over rows, of codes and scales.
  auto objective = [&]() {
    std::vector<double> D(size_t(N * K)), P(size_t(N * K));
    for (int64_t n = 0; n < N; ++n)
      for (int64_t k = 0; k < K; ++k)
        D[size_t(n * K + k)] = W0[size_t(n * K + k)] - double(scales[size_t(n * groups + k / G)]) *
                                                           double(codes[size_t(n * K + k)]);
    cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, int(N), int(K), int(K), 1.0, D.data(),
                int(K), H0.data(), int(K), 0.0, P.data(), int(K));
    double e = 0;
    for (size_t i = 0; i < D.size(); ++i) e += D[i] * P[i];
    return e;
  };
  std::vector<int> best_codes;
  std::vector<float> best_scales;
  double best = 0;
  for (int round = 0; round < rounds; ++round) {
    // Later rounds sweep again from the original weights with the refitted scales held fixed
    // (and the zero points of round 0), then refit again: alternating minimization of the
    // objective over codes (GPTQ's greedy sweep) and scales (least squares); the best round is
    // kept, so more rounds never end above one.
    if (round > 0) W = Wstart;
    const bool fit_in_sweep = round == 0 && !opt.act_order;
    for (int64_t i1 = 0; i1 < K; i1 += B) {
      const int64_t i2 = std::min(K, i1 + B), nb = i2 - i1;
#pragma omp parallel for if (N * K >= (1 << 16))
      for (int64_t n = 0; n < N; ++n) {
        double* w = W.data() + n * K;
        for (int64_t i = i1; i < i2; ++i) {
          const int64_t col = perm[size_t(i)];
          if (fit_in_sweep && i % G == 0) fit_group(w + i, n, i / G, i, std::min(K, i + G) - i);
          const size_t at = size_t(n * groups + col / G);
          const float s = scales[at];
          // q: the signed code (asymmetric: u − z), so that the value is s · q in every case.
          const int q = asym        ? code_asym(w[i], qm::AsymParams{s, zeros[at]}) - zeros[at]
                        : kind == 8 ? qm::quantize_sym(float(w[i]), s, 127)
                                    : code_of(w[i], s, kind);
          codes[size_t(n * K + col)] = q;
          const double e = (w[i] - double(s) * double(q)) / R[size_t(i * K + i)];
          for (int64_t j = i + 1; j < i2; ++j) w[j] -= e * R[size_t(i * K + j)];
          err[size_t(n * nb + (i - i1))] = e;
        }
      }
      if (i2 < K)  // lazy batch: W[:, i2:] -= Err · R[i1:i2, i2:]
        cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, int(N), int(K - i2), int(nb), -1.0,
                    err.data(), int(nb), R.data() + i1 * K + i2, int(K), 1.0, W.data() + i2,
                    int(K));
    }
    if (opt.refit_scales) refit_group_scales(W0, H0, codes, N, K, G, scales);
    if (rounds > 1) {
      const double e = objective();
      if (round == 0 || e < best) {
        best = e;
        best_codes = codes;
        best_scales = scales;
      }
    }
  }
  if (rounds > 1) {
    codes.swap(best_codes);
    scales.swap(best_scales);
  }

  Quantized q;
  q.scheme = scheme;
  q.group = G;
  const int64_t rb = qm::row_bytes(K, info.bits), Kp = qm::padded_k(K);
  q.codes = Tensor::empty(DType::U8, {N, rb});
  q.scales = Tensor::empty(DType::F32, {N, groups});
  std::copy(scales.begin(), scales.end(), q.scales.data<float>());
  q.asymmetric = asym;
  if (asym) {
    q.zeros = Tensor::empty(DType::U8, {N, groups});
    for (size_t i = 0; i < zeros.size(); ++i) q.zeros.data<uint8_t>()[i] = uint8_t(zeros[i]);
  }
  for (int64_t n = 0; n < N; ++n) {
    uint8_t* row = q.codes.data<uint8_t>() + n * rb;
    if (scheme == QScheme::Int8) {
      std::fill(row, row + rb, uint8_t(128));
      for (int64_t k = 0; k < K; ++k) row[k] = uint8_t(codes[size_t(n * K + k)] + 128);
    } else if (scheme == QScheme::Int3) {
      for (int64_t k = 0; k < Kp; ++k) qm::set_q3(row, k, k < K ? codes[size_t(n * K + k)] + 4 : 4);
    } else {
      // Stored u = q + z (symmetric: z = 8); padding is the value 0, the last group's z.
      auto z = [&](int64_t g) { return asym ? zeros[size_t(n * groups + g)] : 8; };
      for (int64_t k = 0; k < Kp; ++k)
        qm::set_q4(row, k, k < K ? codes[size_t(n * K + k)] + z(k / G) : z(groups - 1));
    }
  }
  return make_linear(l.name, l.in, l.out, std::move(q), l.bias);
}

}  // namespace minfer
