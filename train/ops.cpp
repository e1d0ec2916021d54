// Training ops: forward and backward pairs (see ops.h for the legend and the conventions).
#include "train/ops.h"

#include <cblas.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "engine/error.h"

namespace minfer::train {

namespace {

// Work below this many multiply-adds stays on one thread (OpenMP start-up costs more).
bool worth_threads(int64_t work) {
  return work >= (1 << 15);
}

}  // namespace

void linear_forward(float* out, const float* inp, const float* W, const float* bias, int64_t N,
                    int64_t I, int64_t O) {
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, int(N), int(O), int(I), 1.f, inp, int(I), W,
              int(I), 0.f, out, int(O));
  if (bias)
#pragma omp parallel for if (worth_threads(N * O))
    for (int64_t n = 0; n < N; ++n)
      for (int64_t o = 0; o < O; ++o) out[n * O + o] += bias[o];
}

void linear_backward(float* dinp, float* dW, float* dbias, const float* dout, const float* inp,
                     const float* W, int64_t N, int64_t I, int64_t O) {
  if (dinp)  // [N, O] · [O, I]
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, int(N), int(I), int(O), 1.f, dout,
                int(O), W, int(I), 1.f, dinp, int(I));
  if (dW)  // [O, N] · [N, I]
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, int(O), int(I), int(N), 1.f, dout, int(O),
                inp, int(I), 1.f, dW, int(I));
  if (dbias)
    for (int64_t n = 0; n < N; ++n)
      for (int64_t o = 0; o < O; ++o) dbias[o] += dout[n * O + o];
}

void bias_forward(float* out, const float* bias, int64_t N, int64_t O) {
  for (int64_t n = 0; n < N; ++n)
    for (int64_t o = 0; o < O; ++o) out[n * O + o] += bias[o];
}

void bias_backward(float* dbias, const float* dout, int64_t N, int64_t O) {
  if (!dbias) return;
  for (int64_t n = 0; n < N; ++n)
    for (int64_t o = 0; o < O; ++o) dbias[o] += dout[n * O + o];
}

void conv1d_forward(float* out, const float* inp, const float* W, const float* bias, int64_t N,
                    int64_t I, int64_t O) {
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, int(N), int(O), int(I), 1.f, inp, int(I),
              W, int(O), 0.f, out, int(O));
  if (bias)
#pragma omp parallel for if (worth_threads(N * O))
    for (int64_t n = 0; n < N; ++n)
      for (int64_t o = 0; o < O; ++o) out[n * O + o] += bias[o];
}

void conv1d_backward(float* dinp, float* dW, float* dbias, const float* dout, const float* inp,
                     const float* W, int64_t N, int64_t I, int64_t O) {
  if (dinp)  // [N, O] · [O, I]
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, int(N), int(I), int(O), 1.f, dout, int(O),
                W, int(O), 1.f, dinp, int(I));
  if (dW)  // [I, N] · [N, O]
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, int(I), int(O), int(N), 1.f, inp, int(I),
                dout, int(O), 1.f, dW, int(O));
  if (dbias)
    for (int64_t n = 0; n < N; ++n)
      for (int64_t o = 0; o < O; ++o) dbias[o] += dout[n * O + o];
}

void embedding_forward(float* out, const int32_t* ids, const float* table, int64_t N, int64_t C,
                       int64_t V) {
  for (int64_t n = 0; n < N; ++n) {
    MINFER_CHECK(ids[n] >= 0 && ids[n] < V, "embedding: token id {} at row {} outside [0, {})",
                 ids[n], n, V);
    std::copy(table + int64_t(ids[n]) * C, table + int64_t(ids[n] + 1) * C, out + n * C);
  }
}

void embedding_backward(float* dtable, const float* dout, const int32_t* ids, int64_t N,
                        int64_t C) {
  if (!dtable) return;  // a frozen table
  // Sequential over rows: two rows with the same id add into the same table row.
  for (int64_t n = 0; n < N; ++n) {
    float* d = dtable + int64_t(ids[n]) * C;
    for (int64_t c = 0; c < C; ++c) d[c] += dout[n * C + c];
  }
}

void rmsnorm_forward(float* out, float* rstd, const float* x, const float* w, int64_t N, int64_t C,
                     float eps) {
#pragma omp parallel for if (worth_threads(N * C))
  for (int64_t n = 0; n < N; ++n) {
    const float* xr = x + n * C;
    double ss = 0;
    for (int64_t c = 0; c < C; ++c) ss += double(xr[c]) * xr[c];
    const float r = float(1.0 / std::sqrt(ss / double(C) + double(eps)));
    rstd[n] = r;
    for (int64_t c = 0; c < C; ++c) out[n * C + c] = xr[c] * r * w[c];
  }
}

void rmsnorm_backward(float* dx, float* dw, const float* dout, const float* x, const float* w,
                      const float* rstd, int64_t N, int64_t C) {
#pragma omp parallel for if (worth_threads(N * C))
  for (int64_t n = 0; n < N; ++n) {
    const float *xr = x + n * C, *g = dout + n * C;
    const double r = rstd[n];
    double dot = 0;  // Σ_c x·w·dout
    for (int64_t c = 0; c < C; ++c) dot += double(xr[c]) * w[c] * g[c];
    const double k = r * r * r * dot / double(C);
    for (int64_t c = 0; c < C; ++c) dx[n * C + c] += float(r * w[c] * g[c] - k * xr[c]);
  }
  if (!dw) return;  // a frozen norm weight
    // dw: a reduction over rows, kept sequential per column so results are run-to-run identical.
#pragma omp parallel for if (worth_threads(N * C))
  for (int64_t c = 0; c < C; ++c) {
    double s = 0;
    for (int64_t n = 0; n < N; ++n) s += double(dout[n * C + c]) * x[n * C + c] * rstd[n];
    dw[c] += float(s);
  }
}

void layernorm_forward(float* out, float* mean, float* rstd, const float* x, const float* w,
                       const float* b, int64_t N, int64_t C, float eps) {
#pragma omp parallel for if (worth_threads(N * C))
  for (int64_t n = 0; n < N; ++n) {
    const float* xr = x + n * C;
    double m = 0;
    for (int64_t c = 0; c < C; ++c) m += xr[c];
    m /= double(C);
    double var = 0;
    for (int64_t c = 0; c < C; ++c) var += (xr[c] - m) * (xr[c] - m);
    const double r = 1.0 / std::sqrt(var / double(C) + double(eps));
    mean[n] = float(m);
    rstd[n] = float(r);
    for (int64_t c = 0; c < C; ++c) out[n * C + c] = float((xr[c] - m) * r) * w[c] + b[c];
  }
}

void layernorm_backward(float* dx, float* dw, float* db, const float* dout, const float* x,
                        const float* w, const float* mean, const float* rstd, int64_t N,
                        int64_t C) {
#pragma omp parallel for if (worth_threads(N * C))
  for (int64_t n = 0; n < N; ++n) {
    const float *xr = x + n * C, *g = dout + n * C;
    const double m = mean[n], r = rstd[n];
    double sg = 0, sgx = 0;  // Σ w·dout, Σ w·dout·x̂
    for (int64_t c = 0; c < C; ++c) {
      const double gw = double(g[c]) * w[c];
      sg += gw;
      sgx += gw * (xr[c] - m) * r;
    }
    sg /= double(C);
    sgx /= double(C);
    for (int64_t c = 0; c < C; ++c) {
      const double xh = (xr[c] - m) * r;
      dx[n * C + c] += float(r * (double(g[c]) * w[c] - sg - xh * sgx));
    }
  }
  if (!dw && !db) return;  // a frozen norm (LoRA)
#pragma omp parallel for if (worth_threads(N * C))
  for (int64_t c = 0; c < C; ++c) {
    double sw = 0, sb = 0;
    for (int64_t n = 0; n < N; ++n) {
      sw += double(dout[n * C + c]) * (x[n * C + c] - mean[n]) * rstd[n];
      sb += dout[n * C + c];
    }
    if (dw) dw[c] += float(sw);
    if (db) db[c] += float(sb);
  }
}

std::vector<float> rope_cos_sin(int64_t T, int64_t D, float theta) {
  const int64_t half = D / 2;
  std::vector<float> cs(size_t(T * half * 2));
  for (int64_t t = 0; t < T; ++t)
    for (int64_t i = 0; i < half; ++i) {
      const float inv_freq = 1.0f / std::pow(theta, float(2 * i) / float(D));
      const float ang = float(t) * inv_freq;
      cs[size_t((t * half + i) * 2)] = std::cos(ang);
      cs[size_t((t * half + i) * 2 + 1)] = std::sin(ang);
    }
  return cs;
}

void rope_apply(float* x, const float* cs, int64_t B, int64_t T, int64_t nh, int64_t D,
                float sign) {
  MINFER_CHECK(D % 2 == 0, "rope: head dim {} must be even", D);
  const int64_t half = D / 2;
#pragma omp parallel for if (worth_threads(B * T * nh * D))
  for (int64_t n = 0; n < B * T; ++n) {
    const float* c_s = cs + (n % T) * half * 2;
    for (int64_t h = 0; h < nh; ++h) {
      float* p = x + (n * nh + h) * D;
      for (int64_t i = 0; i < half; ++i) {
        const float c = c_s[2 * i], s = sign * c_s[2 * i + 1];
        const float a = p[i], b = p[i + half];
        p[i] = a * c - b * s;
        p[i + half] = b * c + a * s;
      }
    }
  }
}

void rope_forward(float* x, int64_t B, int64_t T, int64_t nh, int64_t D, float theta) {
  rope_apply(x, rope_cos_sin(T, D, theta).data(), B, T, nh, D, 1.f);
}

void rope_backward(float* dx, int64_t B, int64_t T, int64_t nh, int64_t D, float theta) {
  rope_apply(dx, rope_cos_sin(T, D, theta).data(), B, T, nh, D, -1.f);
}

void attention_forward(float* out, float* probs, const float* q, const float* k, const float* v,
                       int64_t B, int64_t T, int64_t H, int64_t Hkv, int64_t D, bool causal,
                       const int32_t* key_mask) {
  MINFER_CHECK(Hkv > 0 && H % Hkv == 0, "attention: {} query heads not a multiple of {} kv heads",
               H, Hkv);
  const int64_t group = H / Hkv, qd = H * D, kvd = Hkv * D;
  const float scale = 1.f / std::sqrt(float(D));
#pragma omp parallel for collapse(2) schedule(dynamic) if (B * H > 1 && worth_threads(T * T * D))
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h) {
      const int64_t kh = h / group;
      const float* qp = q + b * T * qd + h * D;
      const float* kp = k + b * T * kvd + kh * D;
      const float* vp = v + b * T * kvd + kh * D;
      float* P = probs + (b * H + h) * T * T;
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, int(T), int(T), int(D), scale, qp,
                  int(qd), kp, int(kvd), 0.f, P, int(T));
      const int32_t* km = key_mask ? key_mask + b * T : nullptr;
      for (int64_t t = 0; t < T; ++t) {
        float* row = P + t * T;
        const int64_t limit = causal ? t + 1 : T;
        for (int64_t s = limit; s < T; ++s) row[s] = -INFINITY;
        if (km)
          for (int64_t s = 0; s < limit; ++s)
            if (km[s] == 0) row[s] = -INFINITY;
        float mx = -INFINITY;
        for (int64_t s = 0; s < limit; ++s) mx = std::max(mx, row[s]);
        if (mx == -INFINITY) {  // no visible key: attend to nothing
          std::fill(row, row + T, 0.f);
          continue;
        }
        double sum = 0;
        for (int64_t s = 0; s < T; ++s) {
          row[s] = row[s] == -INFINITY ? 0.f : std::exp(row[s] - mx);
          sum += row[s];
        }
        const float inv = float(1.0 / sum);
        for (int64_t s = 0; s < T; ++s) row[s] *= inv;
      }
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, int(T), int(D), int(T), 1.f, P, int(T),
                  vp, int(kvd), 0.f, out + b * T * qd + h * D, int(qd));
    }
}

void attention_backward(float* dq, float* dk, float* dv, const float* dout, const float* q,
                        const float* k, const float* v, const float* probs, int64_t B, int64_t T,
                        int64_t H, int64_t Hkv, int64_t D, bool causal) {
  const int64_t group = H / Hkv, qd = H * D, kvd = Hkv * D;
  const float scale = 1.f / std::sqrt(float(D));
  // One task per (sequence, kv head): the query heads of a group add into the same dk/dv rows, so
  // they run one after another inside the task (no races, a fixed order of additions).
  const int nt = omp_get_max_threads();
  std::vector<float> scratch(size_t(nt) * size_t(T * T));
#pragma omp parallel for collapse(2) schedule(dynamic) if (B * Hkv > 1 && worth_threads(T * T * D))
  for (int64_t b = 0; b < B; ++b)
    for (int64_t kh = 0; kh < Hkv; ++kh) {
      float* dS = scratch.data() + size_t(omp_get_thread_num()) * size_t(T * T);
      const float* kp = k + b * T * kvd + kh * D;
      const float* vp = v + b * T * kvd + kh * D;
      float* dkp = dk + b * T * kvd + kh * D;
      float* dvp = dv + b * T * kvd + kh * D;
      for (int64_t h = kh * group; h < (kh + 1) * group; ++h) {
        const float* P = probs + (b * H + h) * T * T;
        const float* dop = dout + b * T * qd + h * D;
        const float* qp = q + b * T * qd + h * D;
        float* dqp = dq + b * T * qd + h * D;
        // dv += Pᵀ · dO
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, int(T), int(D), int(T), 1.f, P, int(T),
                    dop, int(qd), 1.f, dvp, int(kvd));
        // dP = dO · Vᵀ
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, int(T), int(T), int(D), 1.f, dop,
                    int(qd), vp, int(kvd), 0.f, dS, int(T));
        // dS = P ∘ (dP − Σ_s P dP) · scale (masked entries have P = 0)
        for (int64_t t = 0; t < T; ++t) {
          const float* pr = P + t * T;
          float* dr = dS + t * T;
          const int64_t limit = causal ? t + 1 : T;
          double dot = 0;
          for (int64_t s = 0; s < limit; ++s) dot += double(pr[s]) * dr[s];
          for (int64_t s = 0; s < limit; ++s) dr[s] = pr[s] * (dr[s] - float(dot)) * scale;
          for (int64_t s = limit; s < T; ++s) dr[s] = 0.f;
        }
        // dq += dS · K ; dk += dSᵀ · Q
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, int(T), int(D), int(T), 1.f, dS,
                    int(T), kp, int(kvd), 1.f, dqp, int(qd));
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, int(T), int(D), int(T), 1.f, dS,
                    int(T), qp, int(qd), 1.f, dkp, int(kvd));
      }
    }
}

void swiglu_forward(float* out, const float* gate, const float* up, int64_t n) {
#pragma omp parallel for if (worth_threads(n))
  for (int64_t i = 0; i < n; ++i) {
    const float g = gate[i];
    out[i] = g / (1.f + std::exp(-g)) * up[i];
  }
}

void swiglu_backward(float* dgate, float* dup, const float* dout, const float* gate,
                     const float* up, int64_t n) {
#pragma omp parallel for if (worth_threads(n))
  for (int64_t i = 0; i < n; ++i) {
    const float g = gate[i], sg = 1.f / (1.f + std::exp(-g));
    dgate[i] += dout[i] * up[i] * sg * (1.f + g * (1.f - sg));
    dup[i] += dout[i] * g * sg;
  }
}

namespace {
constexpr float kSqrt2OverPi = 0.7978845608028654f;  // √(2/π), GPT-2's gelu_new
}

void gelu_forward(float* out, const float* x, int64_t n, bool tanh_approx) {
#pragma omp parallel for if (worth_threads(n))
  for (int64_t i = 0; i < n; ++i) {
    const float v = x[i];
    out[i] = tanh_approx ? 0.5f * v * (1.f + std::tanh(kSqrt2OverPi * (v + 0.044715f * v * v * v)))
                         : 0.5f * v * (1.f + std::erf(v * 0.70710678118654752f));
  }
}

void gelu_backward(float* dx, const float* dout, const float* x, int64_t n, bool tanh_approx) {
#pragma omp parallel for if (worth_threads(n))
  for (int64_t i = 0; i < n; ++i) {
    const double v = x[i];
    double d;
    if (tanh_approx) {
      const double u = kSqrt2OverPi * (v + 0.044715 * v * v * v);
      const double th = std::tanh(u);
      d = 0.5 * (1 + th) + 0.5 * v * (1 - th * th) * kSqrt2OverPi * (1 + 3 * 0.044715 * v * v);
    } else {
      d = 0.5 * (1 + std::erf(v / std::sqrt(2.0))) +
          v * std::exp(-0.5 * v * v) / std::sqrt(2 * M_PI);
    }
    dx[i] += float(d * dout[i]);
  }
}

void residual_forward(float* out, const float* a, const float* b, int64_t n) {
#pragma omp parallel for if (worth_threads(n))
  for (int64_t i = 0; i < n; ++i) out[i] = a[i] + b[i];
}

void residual_backward(float* da, float* db, const float* dout, int64_t n) {
#pragma omp parallel for if (worth_threads(n))
  for (int64_t i = 0; i < n; ++i) {
    da[i] += dout[i];
    db[i] += dout[i];
  }
}

namespace {

// log Σ exp(x[i]·inv_tau) over a row, in double.
double log_sum_exp(const float* x, int64_t V, double inv_tau) {
  float mx = -INFINITY;
  for (int64_t i = 0; i < V; ++i) mx = std::max(mx, x[i]);
  double s = 0;
  for (int64_t i = 0; i < V; ++i) s += std::exp((double(x[i]) - mx) * inv_tau);
  return double(mx) * inv_tau + std::log(s);
}

}  // namespace

double cross_entropy_forward(const float* logits, const int32_t* targets, int64_t N, int64_t V) {
  double total = 0;
  for (int64_t n = 0; n < N; ++n)
    MINFER_CHECK(targets[n] < V, "cross-entropy: target {} at row {} >= vocab {}", targets[n], n,
                 V);
#pragma omp parallel for reduction(+ : total) schedule(static) if (worth_threads(N * V))
  for (int64_t n = 0; n < N; ++n) {
    if (targets[n] < 0) continue;
    const float* row = logits + n * V;
    total += log_sum_exp(row, V, 1.0) - double(row[targets[n]]);
  }
  return total;
}

void cross_entropy_backward(float* dlogits, const float* logits, const int32_t* targets, int64_t N,
                            int64_t V, float scale) {
#pragma omp parallel for schedule(static) if (worth_threads(N * V))
  for (int64_t n = 0; n < N; ++n) {
    if (targets[n] < 0) continue;
    const float* row = logits + n * V;
    float* d = dlogits + n * V;
    const double lse = log_sum_exp(row, V, 1.0);
    for (int64_t i = 0; i < V; ++i) d[i] += scale * float(std::exp(double(row[i]) - lse));
    d[targets[n]] -= scale;
  }
}

double kl_forward(const float* student, const float* teacher, int64_t N, int64_t V, float tau,
                  bool reverse) {
  MINFER_CHECK(tau > 0, "kl: temperature {} must be > 0", tau);
  const double it = 1.0 / tau;
  double total = 0;
#pragma omp parallel for reduction(+ : total) schedule(static) if (worth_threads(N * V))
  for (int64_t n = 0; n < N; ++n) {
    const float *s = student + n * V, *t = teacher + n * V;
    const double ls = log_sum_exp(s, V, it), lt = log_sum_exp(t, V, it);
    double kl = 0;
    for (int64_t i = 0; i < V; ++i) {
      const double lq = s[i] * it - ls, lp = t[i] * it - lt;
      kl += reverse ? std::exp(lq) * (lq - lp) : std::exp(lp) * (lp - lq);
    }
    total += kl;
  }
  return total;
}

void kl_backward(float* dstudent, const float* student, const float* teacher, int64_t N, int64_t V,
                 float tau, bool reverse, float scale) {
  const double it = 1.0 / tau;
#pragma omp parallel for schedule(static) if (worth_threads(N * V))
  for (int64_t n = 0; n < N; ++n) {
    const float *s = student + n * V, *t = teacher + n * V;
    float* d = dstudent + n * V;
    const double ls = log_sum_exp(s, V, it), lt = log_sum_exp(t, V, it);
    if (!reverse) {
      for (int64_t i = 0; i < V; ++i)
        d[i] += float(scale * (std::exp(s[i] * it - ls) - std::exp(t[i] * it - lt)) * it);
    } else {
      double kl = 0;
      for (int64_t i = 0; i < V; ++i) {
        const double lq = s[i] * it - ls, lp = t[i] * it - lt;
        kl += std::exp(lq) * (lq - lp);
      }
      for (int64_t i = 0; i < V; ++i) {
        const double lq = s[i] * it - ls, lp = t[i] * it - lt;
        d[i] += float(scale * std::exp(lq) * (lq - lp - kl) * it);
      }
    }
  }
}

}  // namespace minfer::train
