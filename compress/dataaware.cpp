#include "compress/dataaware.h"

#include <cblas.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <limits>

#include "compress/compress.h"
#include "engine/error.h"
#include "kernels/common/quant_math.h"
#include "models/model.h"

namespace minfer {

namespace {

constexpr int kSearchSteps = 21;       // f = 1, 0.975, ..., 0.5
constexpr double kSearchStep = 0.025;  // AWQ: 20 steps down to 0.5 of the range
constexpr int kAwqGrid = 20;           // α = 0, 0.05, ..., 1 (AWQ's n_grid = 20)

int kind_of(const std::string& method, const std::string& name) {
  if (method == "int4") return 4;
  if (method == "int3") return 3;
  if (method == "nf4") return 0;
  MINFER_FAIL("quantize '{}': the scale search takes int4, int3 or nf4, not '{}'", name, method);
}

// Weighted squared error of a group at scale s, and the least-squares refit of s for its codes.
struct Eval {
  double err = 0, refit = 0;
};
Eval eval_scale(const double* w, const double* c, int64_t n, float s, int kind) {
  double err = 0, num = 0, den = 0;
  for (int64_t k = 0; k < n; ++k) {
    const int q = code_of(w[k], s, kind);
    const double v1 = value_of(q, 1.f, kind), ck = c ? c[k] : 1.0;
    const double d = w[k] - double(s) * v1;
    err += ck * d * d;
    num += ck * w[k] * v1;
    den += ck * v1 * v1;
  }
  return {err, den > 0 ? num / den : 0.0};
}

}  // namespace

int code_of(double w, float s, int kind) {
  if (kind == 0) return s > 0.f ? qm::nf4_nearest(float(w / double(s))) : qm::kNF4Zero;
  if (s == 0.f) return 0;
  switch (kind) {
    case 4:
      return qm::round_clamp(w / double(s), -7, 7);
    case 5:
      return qm::round_clamp(w / double(s), -8, 7);
    default:
      return qm::round_clamp(w / double(s), -4, 3);
  }
}

int code_asym(double w, qm::AsymParams p) {
  return p.scale > 0.f ? qm::round_clamp(w / double(p.scale) + p.zero, 0, 15) : p.zero;
}

double value_of(int code, float s, int kind) {
  return kind == 0 ? double(s) * double(qm::nf4_value(code)) : double(s) * double(code);
}

float fit_group_scale(const double* w, const double* c, int64_t n, int kind, bool search) {
  double amax = 0, wm = 0;
  for (int64_t k = 0; k < n; ++k)
    if (std::fabs(w[k]) > amax) amax = std::fabs(w[k]), wm = w[k];
  if (amax == 0) return 0.f;
  const float s0 = kind == 4   ? float(amax / 7.0)
                   : kind == 5 ? float(-wm / 8.0)
                   : kind == 3 ? float(-wm / 4.0)
                               : float(amax);
  if (!search) return s0;
  float best = s0;
  double best_err = std::numeric_limits<double>::infinity();
  for (int i = 0; i < kSearchSteps; ++i) {
    const float s = float(double(s0) * (1.0 - kSearchStep * i));
    const Eval e = eval_scale(w, c, n, s, kind);
    if (e.err < best_err) best_err = e.err, best = s;
    // The refit keeps the sign convention of the base scale (nf4: positive).
    if (e.refit != 0 && (kind != 0 || e.refit > 0)) {
      const float r = float(e.refit);
      const Eval er = eval_scale(w, c, n, r, kind);
      if (er.err < best_err) best_err = er.err, best = r;
    }
  }
  return best;
}

namespace {

// Weighted squared error of an asymmetric group for (s, z), and the refit of s for its codes.
Eval eval_asym(const double* w, const double* c, int64_t n, qm::AsymParams p) {
  double err = 0, num = 0, den = 0;
  for (int64_t k = 0; k < n; ++k) {
    const int v = code_asym(w[k], p) - p.zero;
    const double ck = c ? c[k] : 1.0;
    const double d = w[k] - double(p.scale) * v;
    err += ck * d * d;
    num += ck * w[k] * v;
    den += ck * double(v) * v;
  }
  return {err, den > 0 ? num / den : 0.0};
}

}  // namespace

qm::AsymParams fit_group_asym(const double* w, const double* c, int64_t n, bool search) {
  double mn = 0, mx = 0;
  for (int64_t k = 0; k < n; ++k) mn = std::min(mn, w[k]), mx = std::max(mx, w[k]);
  const qm::AsymParams p0 = qm::asym_params(float(mn), float(mx), 15);
  if (!search || !(p0.scale > 0.f)) return p0;
  qm::AsymParams best = p0;
  double best_err = std::numeric_limits<double>::infinity();
  for (int i = 0; i < kSearchSteps; ++i) {
    const double f = 1.0 - kSearchStep * i;
    const qm::AsymParams p = qm::asym_params(float(f * mn), float(f * mx), 15);
    if (!(p.scale > 0.f)) continue;
    const Eval e = eval_asym(w, c, n, p);
    if (e.err < best_err) best_err = e.err, best = p;
    if (e.refit > 0) {
      const qm::AsymParams r{float(e.refit), p.zero};
      const Eval er = eval_asym(w, c, n, r);
      if (er.err < best_err) best_err = er.err, best = r;
    }
  }
  return best;
}

Linear quantize_rtn_search(const Linear& dense, const QuantSpec& spec, const float* col_weight,
                           bool search) {
  MINFER_CHECK(std::holds_alternative<Dense>(dense.repr),
               "quantize '{}': expected a Dense linear (quantize from the float weights)",
               dense.name);
  int kind = kind_of(spec.method, dense.name);
  if (kind == 4 && search) kind = 5;  // the search uses all 16 int4 codes
  MINFER_CHECK((!spec.asymmetric || kind == 4 || kind == 5) && !spec.double_quant,
               "quantize '{}': the scale search is for int4 (symmetric or -asym), int3 and nf4 "
               "without double quantization (got {}{}{})",
               dense.name, spec.method, spec.asymmetric ? "-asym" : "",
               spec.double_quant ? "-dq" : "");
  const bool asym = spec.asymmetric;
  const QScheme scheme = kind == 0 ? QScheme::NF4 : kind == 3 ? QScheme::Int3 : QScheme::Int4;
  const QSchemeInfo info = qscheme_info(scheme);
  const int64_t N = dense.out, K = dense.in;
  int64_t G = spec.group == 0 ? info.default_group : spec.group;
  if (G == 0 || G >= K) G = K;
  MINFER_CHECK(G == K || G % info.group_multiple == 0,
               "quantize '{}': {} group must be a multiple of {}, got {}", dense.name, spec.method,
               info.group_multiple, G);
  const Tensor wt = dequantize_weight(dense);
  const float* W = wt.data<float>();
  for (int64_t i = 0; i < N * K; ++i)
    MINFER_CHECK(std::isfinite(W[i]),
                 "quantize '{}': weight [{}, {}] is {}, expected a finite value", dense.name, i / K,
                 i % K, W[i]);
  std::vector<double> c;
  if (col_weight) {
    c.assign(col_weight, col_weight + K);
    for (int64_t k = 0; k < K; ++k)
      MINFER_CHECK(std::isfinite(c[size_t(k)]) && c[size_t(k)] >= 0,
                   "quantize '{}': importance of input {} is {}, expected finite and >= 0",
                   dense.name, k, c[size_t(k)]);
  }
  Quantized q;
  q.scheme = scheme;
  q.group = G;
  const int64_t groups = qm::ceil_div(K, G), rb = qm::row_bytes(K, info.bits), Kp = qm::padded_k(K);
  q.codes = Tensor::empty(DType::U8, {N, rb});
  q.scales = Tensor::empty(DType::F32, {N, groups});
  q.asymmetric = asym;
  if (asym) q.zeros = Tensor::empty(DType::U8, {N, groups});
  float* scales = q.scales.data<float>();
  uint8_t* codes = q.codes.data<uint8_t>();
  uint8_t* zeros = asym ? q.zeros.data<uint8_t>() : nullptr;
#pragma omp parallel for if (N * K >= (1 << 16))
  for (int64_t n = 0; n < N; ++n) {
    std::vector<double> w(W + n * K, W + (n + 1) * K);
    uint8_t* row = codes + n * rb;
    for (int64_t g = 0; g < groups; ++g) {
      const int64_t k0 = g * G, len = std::min(K, k0 + G) - k0;
      if (asym) {
        const qm::AsymParams p =
            fit_group_asym(w.data() + k0, c.empty() ? nullptr : c.data() + k0, len, search);
        scales[n * groups + g] = p.scale;
        zeros[n * groups + g] = uint8_t(p.zero);
        for (int64_t k = k0; k < k0 + len; ++k) qm::set_q4(row, k, code_asym(w[size_t(k)], p));
        continue;
      }
      const float s =
          fit_group_scale(w.data() + k0, c.empty() ? nullptr : c.data() + k0, len, kind, search);
      scales[n * groups + g] = s;
      for (int64_t k = k0; k < k0 + len; ++k) {
        const int code = code_of(w[size_t(k)], s, kind);
        if (kind == 3)
          qm::set_q3(row, k, code + 4);
        else
          qm::set_q4(row, k, kind == 0 ? code : code + 8);
      }
    }
    // Padding codes dequantize to 0: the last group's zero point when asymmetric.
    const int pad = asym ? zeros[n * groups + groups - 1] : kind == 0 ? qm::kNF4Zero : 8;
    for (int64_t k = K; k < Kp; ++k) {
      if (kind == 3)
        qm::set_q3(row, k, 4);
      else
        qm::set_q4(row, k, pad);
    }
  }
  return make_linear(dense.name, dense.in, dense.out, std::move(q), dense.bias);
}

// ---- channel scaling ---------------------------------------------------------------------

namespace {

// One place to fold: the producer of the consumers' common input (a norm's weight and bias, or a
// linear's output rows) and the consumers. `map[c]` is the site channel of consumer input c
// (identity, or GQA's query-head -> KV-head channel).
struct Site {
  std::string label;
  Tensor* norm_w = nullptr;
  Tensor* norm_b = nullptr;
  Linear* producer = nullptr;
  std::vector<Linear*> consumers;
  int64_t dim = 0;           // site channels
  std::vector<int64_t> map;  // [consumer in] -> site channel
};

Tensor f32_copy(const Tensor& t) {
  Tensor f = t.to_f32();
  Tensor o = Tensor::empty(DType::F32, {f.numel()});
  std::copy(f.data<float>(), f.data<float>() + f.numel(), o.data<float>());
  return o;
}

std::vector<Site> find_sites(Model& m) {
  std::map<std::string, Linear*> lin;
  for (Linear* l : m.linears()) lin[l->name] = l;
  std::map<std::string, Tensor*> ten;
  for (Model::NamedTensor& t : m.tensors()) ten[t.name] = t.t;
  auto L = [&](const std::string& n) -> Linear* {
    auto it = lin.find(n);
    return it == lin.end() ? nullptr : it->second;
  };
  auto T = [&](const std::string& n) -> Tensor* {
    auto it = ten.find(n);
    return it == ten.end() ? nullptr : it->second;
  };
  auto ident = [](int64_t n) {
    std::vector<int64_t> v(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) v[size_t(i)] = i;
    return v;
  };
  const ModelConfig& cfg = m.config();
  std::vector<Site> sites;
  auto add = [&](std::string label, Tensor* nw, Tensor* nb, Linear* prod, std::vector<Linear*> cons,
                 int64_t dim, std::vector<int64_t> map) {
    Site st;
    st.label = std::move(label);
    st.norm_w = nw;
    st.norm_b = nb;
    st.producer = prod;
    st.consumers = std::move(cons);
    st.dim = dim;
    st.map = std::move(map);
    sites.push_back(std::move(st));
  };
  if (cfg.arch == Arch::Llama) {
    for (int64_t l = 0; l < cfg.n_layers; ++l) {
      const std::string p = "model.layers." + std::to_string(l) + ".";
      Linear *q = L(p + "self_attn.q_proj.weight"), *k = L(p + "self_attn.k_proj.weight"),
             *v = L(p + "self_attn.v_proj.weight"), *o = L(p + "self_attn.o_proj.weight"),
             *g = L(p + "mlp.gate_proj.weight"), *u = L(p + "mlp.up_proj.weight"),
             *d = L(p + "mlp.down_proj.weight");
      Tensor *n1 = T(p + "input_layernorm.weight"), *n2 = T(p + "post_attention_layernorm.weight");
      if (q && k && v && n1)
        add(p + "input_layernorm", n1, nullptr, nullptr, {q, k, v}, q->in, ident(q->in));
      if (g && u && n2)
        add(p + "post_attention_layernorm", n2, nullptr, nullptr, {g, u}, g->in, ident(g->in));
      const int64_t H = cfg.heads_at(l), Hkv = cfg.kv_heads_at(l), D = cfg.head_dim;
      if (v && o && Hkv > 0 && H % Hkv == 0 && v->out == Hkv * D && o->in == H * D) {
        std::vector<int64_t> map(static_cast<size_t>(o->in));
        for (int64_t c = 0; c < o->in; ++c) map[size_t(c)] = (c / D) / (H / Hkv) * D + c % D;
        add(p + "v_proj->o_proj", nullptr, nullptr, v, {o}, v->out, std::move(map));
      }
      if (u && d && u->out == d->in)
        add(p + "up_proj->down_proj", nullptr, nullptr, u, {d}, d->in, ident(d->in));
    }
  } else if (cfg.arch == Arch::Bert) {
    // Post-norm blocks: each LayerNorm's output is also the residual, so it cannot take 1/s;
    // GELU stands between intermediate and output. Only value -> attention.output folds (the
    // attention probabilities mix rows of V linearly; the value bias scales with its rows).
    const std::string pre = T("bert.embeddings.word_embeddings.weight") ? "bert." : "";
    for (int64_t l = 0; l < cfg.n_layers; ++l) {
      const std::string p = pre + "encoder.layer." + std::to_string(l) + ".";
      Linear *v = L(p + "attention.self.value.weight"), *o = L(p + "attention.output.dense.weight");
      if (v && o && v->out == o->in)
        add(p + "value->attention.output", nullptr, nullptr, v, {o}, o->in, ident(o->in));
    }
  } else if (cfg.arch == Arch::GPT2) {
    const std::string pre = T("transformer.h.0.ln_1.weight") ? "transformer." : "";
    for (int64_t l = 0; l < cfg.n_layers; ++l) {
      const std::string p = pre + "h." + std::to_string(l) + ".";
      Linear *a = L(p + "attn.c_attn.weight"), *f = L(p + "mlp.c_fc.weight");
      if (a && T(p + "ln_1.weight"))
        add(p + "ln_1", T(p + "ln_1.weight"), T(p + "ln_1.bias"), nullptr, {a}, a->in,
            ident(a->in));
      if (f && T(p + "ln_2.weight"))
        add(p + "ln_2", T(p + "ln_2.weight"), T(p + "ln_2.bias"), nullptr, {f}, f->in,
            ident(f->in));
    }
  }
  return sites;
}

template <typename V>
const V& stat_of(const std::map<std::string, V>& m, const std::string& name, const char* what,
                 const char* rule) {
  auto it = m.find(name);
  MINFER_CHECK(it != m.end(),
               "{}: no calibration {} for '{}' (run a calibration pass: compress --calibrate FILE)",
               rule, what, name);
  return it->second;
}

// ΣΣ (ΔW H) ∘ ΔW = tr(ΔW H ΔWᵀ) with ΔW = W − Q(W diag s) diag(1/s), Q: int4 RTN, group G
// (asym: min/max with zero points, else −8..7 signed max).
double awq_error(const float* W, int64_t N, int64_t K, const float* s, int64_t G, const float* H,
                 bool asym) {
  std::vector<float> dw(size_t(N * K));
  const int64_t groups = qm::ceil_div(K, G);
#pragma omp parallel for if (N * K >= (1 << 16))
  for (int64_t n = 0; n < N; ++n) {
    std::vector<double> ws(static_cast<size_t>(K));
    for (int64_t k = 0; k < K; ++k) ws[size_t(k)] = double(W[n * K + k]) * s[k];
    for (int64_t g = 0; g < groups; ++g) {
      const int64_t k0 = g * G, len = std::min(K, k0 + G) - k0;
      if (asym) {
        const qm::AsymParams p = fit_group_asym(ws.data() + k0, nullptr, len, false);
        for (int64_t k = k0; k < k0 + len; ++k)
          dw[size_t(n * K + k)] =
              float(double(W[n * K + k]) -
                    double(p.scale) * (code_asym(ws[size_t(k)], p) - p.zero) / s[k]);
        continue;
      }
      const float sc = fit_group_scale(ws.data() + k0, nullptr, len, 5, false);
      for (int64_t k = k0; k < k0 + len; ++k)
        dw[size_t(n * K + k)] =
            float(double(W[n * K + k]) - value_of(code_of(ws[size_t(k)], sc, 5), sc, 5) / s[k]);
    }
  }
  std::vector<float> t(size_t(N * K));
  cblas_ssymm(CblasRowMajor, CblasRight, CblasUpper, int(N), int(K), 1.f, H, int(K), dw.data(),
              int(K), 0.f, t.data(), int(K));
  double e = 0;
  for (size_t i = 0; i < t.size(); ++i) e += double(t[i]) * double(dw[i]);
  return e;
}

}  // namespace

SmoothReport smooth_model(Model& m, ActStats& stats, const SmoothOptions& opt) {
  const auto t0 = std::chrono::steady_clock::now();
  const bool awq = opt.rule == SmoothOptions::Rule::Awq;
  const char* rule = awq ? "int4-awq" : "smoothquant";
  MINFER_CHECK(opt.alpha == -1 || (opt.alpha >= 0 && opt.alpha <= 1),
               "{}: --alpha must be in [0, 1], got {}", rule, opt.alpha);
  MINFER_CHECK(opt.group >= 1, "{}: group must be >= 1, got {}", rule, opt.group);
  SmoothReport rep;
  std::vector<Site> sites = find_sites(m);
  for (Site& site : sites) {
    // Per-site statistics: max|X_j|, mean|X_j| (over the consumers' tied channels), max|W_j|.
    std::vector<double> xmax(size_t(site.dim), 0.0), xmean(size_t(site.dim), 0.0),
        wmax(size_t(site.dim), 0.0), tied(size_t(site.dim), 0.0);
    std::vector<Tensor> ws;
    for (Linear* c : site.consumers) {
      MINFER_CHECK(std::holds_alternative<Dense>(c->repr),
                   "{}: '{}' must still be float weights (smoothing comes before quantization), "
                   "found {}",
                   rule, c->name, linear_format(*c));
      ws.push_back(dequantize_weight(*c));
      const float* W = ws.back().data<float>();
      for (int64_t r = 0; r < c->out; ++r)
        for (int64_t k = 0; k < c->in; ++k) {
          double& w = wmax[size_t(site.map[size_t(k)])];
          w = std::max(w, double(std::fabs(W[r * c->in + k])));
        }
    }
    {
      Linear* c = site.consumers[0];  // consumers of a site read the same input
      const std::vector<float>& am = stat_of(stats.absmax, c->name, "max|x|", rule);
      MINFER_CHECK(int64_t(am.size()) == c->in, "{}: statistics of '{}' have {} features, not {}",
                   rule, c->name, am.size(), c->in);
      const std::vector<double>* sa =
          awq ? &stat_of(stats.sumabs, c->name, "mean|x|", rule) : nullptr;
      for (int64_t k = 0; k < c->in; ++k) {
        const size_t j = size_t(site.map[size_t(k)]);
        xmax[j] = std::max(xmax[j], double(am[size_t(k)]));
        if (sa) xmean[j] += (*sa)[size_t(k)] / double(std::max<int64_t>(stats.tokens, 1));
        tied[j] += 1;
      }
      for (size_t j = 0; j < xmean.size(); ++j) xmean[j] /= std::max(1.0, tied[j]);
    }
    std::vector<float> s(size_t(site.dim), 1.f);
    double alpha = opt.alpha;
    auto awq_scales = [&](double a, std::vector<float>& out) {
      double mx = 0, mn = std::numeric_limits<double>::infinity();
      std::vector<double> v(size_t(site.dim));
      for (size_t j = 0; j < v.size(); ++j) {
        v[j] = std::max(std::pow(xmean[j], a), 1e-4);
        mx = std::max(mx, v[j]);
        mn = std::min(mn, v[j]);
      }
      const double norm = std::sqrt(mx * mn);
      for (size_t j = 0; j < v.size(); ++j) out[j] = float(v[j] / norm);
    };
    if (!awq) {
      if (alpha < 0) alpha = 0.5;
      for (size_t j = 0; j < s.size(); ++j) {
        if (xmax[j] > 0 && wmax[j] > 0)
          s[j] =
              float(std::clamp(std::pow(xmax[j], alpha) / std::pow(wmax[j], 1 - alpha), 1e-5, 1e5));
      }
    } else {
      std::vector<std::pair<const float*, const GramMatrix*>> terms;
      for (size_t i = 0; i < site.consumers.size(); ++i) {
        const auto& g = stat_of(stats.gram, site.consumers[i]->name, "Gram matrix XᵀX", rule);
        MINFER_CHECK(g && g->n == site.consumers[i]->in, "{}: Gram matrix of '{}' is mis-sized",
                     rule, site.consumers[i]->name);
        terms.emplace_back(ws[i].data<float>(), g.get());
      }
      std::vector<double> grid;
      if (alpha >= 0)
        grid = {alpha};
      else
        for (int i = 0; i <= kAwqGrid; ++i) grid.push_back(double(i) / kAwqGrid);
      double best = std::numeric_limits<double>::infinity();
      std::vector<float> cand(size_t(site.dim)), sk;
      for (double a : grid) {
        awq_scales(a, cand);
        double e = 0;
        for (size_t i = 0; i < site.consumers.size(); ++i) {
          const Linear* c = site.consumers[i];
          sk.resize(size_t(c->in));
          for (int64_t k = 0; k < c->in; ++k) sk[size_t(k)] = cand[size_t(site.map[size_t(k)])];
          e +=
              awq_error(terms[i].first, c->out, c->in, sk.data(),
                        std::min<int64_t>(opt.group, c->in), terms[i].second->xtx.data(), opt.asym);
        }
        if (e < best) best = e, alpha = a, s = cand;
      }
    }
    // Fold: consumers' columns times s, the producer's output channels divided by s.
    std::shared_ptr<GramMatrix> gram_in, gram_out;
    for (size_t i = 0; i < site.consumers.size(); ++i) {
      Linear* c = site.consumers[i];
      float* W = ws[i].data<float>();
      for (int64_t r = 0; r < c->out; ++r)
        for (int64_t k = 0; k < c->in; ++k) W[r * c->in + k] *= s[size_t(site.map[size_t(k)])];
      *c = make_dense(c->name, ws[i], c->in, c->out, false, c->bias);
      auto scale_stat = [&](auto& map, double p) {
        auto it = map.find(c->name);
        if (it == map.end()) return;
        for (int64_t k = 0; k < c->in; ++k)
          it->second[size_t(k)] /= std::pow(double(s[size_t(site.map[size_t(k)])]), p);
      };
      scale_stat(stats.absmax, 1.0);
      scale_stat(stats.sumabs, 1.0);
      scale_stat(stats.sumsq, 2.0);
      auto g = stats.gram.find(c->name);
      if (g != stats.gram.end() && opt.keep_gram) {
        // Consumers of a site that shared one matrix share the rescaled one.
        if (g->second != gram_in) {
          gram_in = g->second;
          const int64_t n = gram_in->n;
          MINFER_CHECK(n == c->in, "{}: Gram matrix of '{}' is mis-sized", rule, c->name);
          gram_out = std::make_shared<GramMatrix>();
          gram_out->n = n;
          gram_out->xtx.resize(size_t(n * n));
          for (int64_t a = 0; a < n; ++a)
            for (int64_t b = 0; b < n; ++b)
              gram_out->xtx[size_t(a * n + b)] =
                  float(double(gram_in->xtx[size_t(a * n + b)]) /
                        (double(s[size_t(site.map[size_t(a)])]) * s[size_t(site.map[size_t(b)])]));
        }
        g->second = gram_out;
      } else if (g != stats.gram.end()) {
        stats.gram.erase(g);
      }
      rep.site_alpha[c->name] = alpha;
    }
    auto divide = [&](Tensor* t) {
      if (!t || !t->defined()) return;
      MINFER_CHECK(t->numel() == site.dim, "{}: '{}' has {} values, expected {}", rule, site.label,
                   t->numel(), site.dim);
      Tensor o = f32_copy(*t);
      for (int64_t j = 0; j < site.dim; ++j) o.data<float>()[j] /= s[size_t(j)];
      *t = m.backend().upload(o);
    };
    divide(site.norm_w);
    divide(site.norm_b);
    if (Linear* p = site.producer) {
      MINFER_CHECK(std::holds_alternative<Dense>(p->repr),
                   "{}: '{}' must still be float weights, found {}", rule, p->name,
                   linear_format(*p));
      Tensor w = dequantize_weight(*p);
      for (int64_t r = 0; r < p->out; ++r)
        for (int64_t k = 0; k < p->in; ++k) w.data<float>()[r * p->in + k] /= s[size_t(r)];
      Tensor b;
      if (p->bias.defined()) {
        b = f32_copy(p->bias);
        for (int64_t r = 0; r < p->out; ++r) b.data<float>()[r] /= s[size_t(r)];
      }
      *p = make_dense(p->name, w, p->in, p->out, false, b);
      m.backend().upload(*p);
    }
    for (Linear* c : site.consumers) m.backend().upload(*c);
    ++rep.sites;
  }
  rep.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return rep;
}

}  // namespace minfer
