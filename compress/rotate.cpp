#include "compress/rotate.h"

#include <cblas.h>
#include <lapacke.h>

#include <chrono>
#include <cmath>
#include <map>
#include <string>

#include "compress/compress.h"
#include "engine/backend.h"
#include "engine/error.h"
#include "engine/linear.h"
#include "models/model.h"

namespace minfer {

namespace {

// splitmix64 (Steele et al. 2014): a portable stream, unlike std::normal_distribution.
struct SplitMix {
  uint64_t s;
  uint64_t next() {
    uint64_t z = (s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  double uniform() { return (double(next() >> 11) + 0.5) * 0x1.0p-53; }  // (0, 1)
};

// f32 [rows, cols] weights of a float Dense linear (a copy); throws naming it otherwise.
Tensor float_weights(const Linear& l) {
  const Dense* d = std::get_if<Dense>(&l.repr);
  MINFER_CHECK(d != nullptr,
               "rotate: '{}' is already compressed ({}); rotation comes first in the chain and "
               "needs float weights",
               l.name, linear_format(l));
  return dequantize_weight(l);
}

// An f32 copy of a vector of n values (a norm weight or a bias); throws naming it otherwise.
Tensor f32_vector(const Tensor& t, int64_t n, const std::string& name) {
  MINFER_CHECK(t.defined() && t.numel() == n, "rotate: '{}' has {} values, expected {}", name,
               t.defined() ? t.numel() : 0, n);
  return t.to_f32();  // always a fresh copy
}

// c [m, n] = op(a) · op(b), all row-major f32 with the given leading dimensions.
void gemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, const float* a, int64_t lda,
          const float* b, int64_t ldb, float* c, int64_t ldc) {
  cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, int(m),
              int(n), int(k), 1.f, a, int(lda), b, int(ldb), 0.f, c, int(ldc));
}

}  // namespace

std::vector<double> random_orthogonal(int64_t n, uint64_t seed) {
  MINFER_CHECK(n >= 1, "random_orthogonal: order must be >= 1, got {}", n);
  SplitMix rng{seed};
  std::vector<double> a(size_t(n * n));
  for (size_t i = 0; i < a.size(); i += 2) {  // Box–Muller: two normals per pair of uniforms
    const double r = std::sqrt(-2.0 * std::log(rng.uniform())), t = 2.0 * M_PI * rng.uniform();
    a[i] = r * std::cos(t);
    if (i + 1 < a.size()) a[i + 1] = r * std::sin(t);
  }
  std::vector<double> tau(static_cast<size_t>(n));
  lapack_int info = LAPACKE_dgeqrf(LAPACK_ROW_MAJOR, lapack_int(n), lapack_int(n), a.data(),
                                   lapack_int(n), tau.data());
  MINFER_CHECK(info == 0, "random_orthogonal: LAPACKE_dgeqrf failed (info {}) at order {}", info,
               n);
  std::vector<double> sign(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) sign[size_t(i)] = a[size_t(i * n + i)] < 0 ? -1.0 : 1.0;
  info = LAPACKE_dorgqr(LAPACK_ROW_MAJOR, lapack_int(n), lapack_int(n), lapack_int(n), a.data(),
                        lapack_int(n), tau.data());
  MINFER_CHECK(info == 0, "random_orthogonal: LAPACKE_dorgqr failed (info {}) at order {}", info,
               n);
  for (int64_t r = 0; r < n; ++r)
    for (int64_t c = 0; c < n; ++c) a[size_t(r * n + c)] *= sign[size_t(c)];
  return a;
}

std::vector<double> random_hadamard(int64_t n, uint64_t seed) {
  MINFER_CHECK(n >= 1 && (n & (n - 1)) == 0,
               "random_hadamard: order must be a power of two, got {}", n);
  SplitMix rng{seed};
  std::vector<double> sign(static_cast<size_t>(n));
  for (double& s : sign) s = (rng.next() >> 63) ? -1.0 : 1.0;
  const double scale = 1.0 / std::sqrt(double(n));
  std::vector<double> h(size_t(n * n));
  // Sylvester's construction: H[r][c] = (-1)^popcount(r & c).
  for (int64_t r = 0; r < n; ++r)
    for (int64_t c = 0; c < n; ++c)
      h[size_t(r * n + c)] =
          (__builtin_popcountll(uint64_t(r & c)) & 1 ? -scale : scale) * sign[size_t(c)];
  return h;
}

RotateReport rotate_model(Model& m, uint64_t seed, bool stream, bool heads) {
  const auto t0 = std::chrono::steady_clock::now();
  const ModelConfig& cfg = m.config();
  MINFER_CHECK(cfg.arch == Arch::Llama,
               "rotate: a '{}' model; rotation folds RMSNorm weights into the next linears, which "
               "only the LLaMA family (pre-norm RMSNorm blocks) allows",
               cfg.model_type);
  MINFER_CHECK(!cfg.norm_unit_offset && !cfg.sandwich_norms,
               "rotate: '{}' has {} norms, which cannot be folded into a linear", cfg.model_type,
               cfg.sandwich_norms ? "sandwich (post-attention / post-FFN)" : "Gemma's (1 + w)");
  const int64_t C = cfg.hidden, D = cfg.head_dim;
  std::map<std::string, Linear*> lin;
  for (Linear* l : m.linears()) lin[l->name] = l;
  std::map<std::string, Tensor*> ten;
  Tensor* table = nullptr;
  for (Model::NamedTensor& t : m.tensors()) {
    ten[t.name] = t.t;
    if (t.embedding && t.name == "model.embed_tokens.weight") table = t.t;
  }
  MINFER_CHECK(table != nullptr,
               "rotate: the model has no float embedding table 'model.embed_tokens.weight' (a "
               "table kept in a GGUF block format cannot be rotated; load it as f32)");
  auto L = [&](const std::string& n) -> Linear& {
    auto it = lin.find(n);
    MINFER_CHECK(it != lin.end(), "rotate: the model has no linear '{}'", n);
    return *it->second;
  };
  auto T = [&](const std::string& n) -> Tensor& {
    auto it = ten.find(n);
    MINFER_CHECK(it != ten.end(), "rotate: the model has no tensor '{}'", n);
    return *it->second;
  };

  std::vector<float> q(size_t(C * C));
  {
    const std::vector<double> qd = random_orthogonal(C, seed);
    for (size_t i = 0; i < q.size(); ++i) q[i] = float(qd[i]);
  }
  Backend& be = m.backend();
  RotateReport rep;
  rep.dim = stream ? C : 0;
  Tensor ones = Tensor::empty(DType::F32, {C});
  for (int64_t i = 0; i < C; ++i) ones.data<float>()[i] = 1.f;

  // W ← W diag(γ) Q for a linear reading the residual stream through a norm of weight γ.
  // (The head is renamed lm_head.weight: when tied it carried the table's name.)
  auto rotate_input = [&](Linear& l, const float* gamma, const std::string& rename = "") {
    MINFER_CHECK(l.in == C, "rotate: '{}' reads {} features, expected the stream's {}", l.name,
                 l.in, C);
    Tensor w = float_weights(l);
    float* p = w.data<float>();
    for (int64_t r = 0; r < l.out; ++r)
      for (int64_t k = 0; k < C; ++k) p[r * C + k] *= gamma[k];
    Tensor o = Tensor::empty(DType::F32, {l.out, C});
    gemm(false, false, l.out, C, C, p, C, q.data(), C, o.data<float>(), C);
    l = make_dense(rename.empty() ? l.name : rename, o, C, l.out, false, l.bias);
    be.upload(l);
    ++rep.linears;
  };
  // W ← Qᵀ W, b ← Qᵀ b for a linear whose output is added to the residual stream.
  auto rotate_output = [&](Linear& l) {
    MINFER_CHECK(l.out == C, "rotate: '{}' writes {} features, expected the stream's {}", l.name,
                 l.out, C);
    Tensor w = float_weights(l);
    Tensor o = Tensor::empty(DType::F32, {C, l.in});
    gemm(true, false, C, l.in, C, q.data(), C, w.data<float>(), l.in, o.data<float>(), l.in);
    Tensor b;
    if (l.bias.defined()) {
      const Tensor bf = f32_vector(l.bias, C, l.name + " bias");
      b = Tensor::empty(DType::F32, {C});
      cblas_sgemv(CblasRowMajor, CblasTrans, int(C), int(C), 1.f, q.data(), int(C),
                  bf.data<float>(), 1, 0.f, b.data<float>(), 1);
    }
    l = make_dense(l.name, o, l.in, C, false, b);
    be.upload(l);
    ++rep.linears;
  };
  auto fold_norm = [&](const std::string& name) {
    Tensor& t = T(name);
    Tensor g = f32_vector(t, C, name);
    t = be.upload(ones.clone());
    return g;
  };

  // The head first: while tied it still shares the unrotated table E.
  Linear& head = *m.linears().back();
  if (stream) {
    const Dense* hd = std::get_if<Dense>(&head.repr);
    rep.untied = hd && hd->w.raw() == table->raw();
    const Tensor gf = fold_norm("model.norm.weight");
    rotate_input(head, gf.data<float>(), "lm_head.weight");
    // E ← E Q
    const Tensor e = table->to_f32();
    MINFER_CHECK(e.ndim() == 2 && e.dim(1) == C,
                 "rotate: 'model.embed_tokens.weight' is not [V, {}]", C);
    Tensor o = Tensor::empty(DType::F32, {e.dim(0), C});
    gemm(false, false, e.dim(0), C, C, e.data<float>(), C, q.data(), C, o.data<float>(), C);
    *table = be.upload(o);
  }
  std::vector<float> r;  // R2, [D, D]
  if (heads) {
    const std::vector<double> rd =
        (D & (D - 1)) == 0 ? random_hadamard(D, seed + 1) : random_orthogonal(D, seed + 1);
    r.assign(rd.begin(), rd.end());
    rep.head_dim = D;
  }
  for (int64_t l = 0; l < cfg.n_layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    if (stream) {
      const Tensor g1 = fold_norm(p + "input_layernorm.weight");
      for (const char* n : {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"})
        rotate_input(L(p + n + ".weight"), g1.data<float>());
      const Tensor g2 = fold_norm(p + "post_attention_layernorm.weight");
      for (const char* n : {"mlp.gate_proj", "mlp.up_proj"})
        rotate_input(L(p + n + ".weight"), g2.data<float>());
    }
    Linear& o = L(p + "self_attn.o_proj.weight");
    if (heads) {
      const int64_t H = cfg.heads_at(l), Hkv = cfg.kv_heads_at(l);
      Linear& v = L(p + "self_attn.v_proj.weight");
      MINFER_CHECK(v.out == Hkv * D && o.in == H * D,
                   "rotate: '{}' / '{}' are not [{} x {}] / [{} x {}] heads", v.name, o.name, Hkv,
                   D, H, D);
      Tensor wv = float_weights(v), nv = Tensor::empty(DType::F32, {v.out, C});
      for (int64_t h = 0; h < Hkv; ++h)  // block h of W_v ← Rᵀ block h
        gemm(true, false, D, C, D, r.data(), D, wv.data<float>() + h * D * C, C,
             nv.data<float>() + h * D * C, C);
      Tensor bv;
      if (v.bias.defined()) {
        const Tensor b = f32_vector(v.bias, v.out, v.name + " bias");
        bv = Tensor::empty(DType::F32, {v.out});
        for (int64_t h = 0; h < Hkv; ++h)
          cblas_sgemv(CblasRowMajor, CblasTrans, int(D), int(D), 1.f, r.data(), int(D),
                      b.data<float>() + h * D, 1, 0.f, bv.data<float>() + h * D, 1);
      }
      v = make_dense(v.name, nv, C, v.out, false, bv);
      be.upload(v);
      Tensor wo = float_weights(o), no = Tensor::empty(DType::F32, {C, o.in});
      for (int64_t h = 0; h < H; ++h)  // columns of head h of W_o ← (columns) R
        gemm(false, false, C, D, D, wo.data<float>() + h * D, o.in, r.data(), D,
             no.data<float>() + h * D, o.in);
      o = make_dense(o.name, no, o.in, C, false, o.bias);
      be.upload(o);
      if (!stream) rep.linears += 2;  // else counted by the stream's rotation
    }
    if (stream) {
      rotate_output(o);
      rotate_output(L(p + "mlp.down_proj.weight"));
    }
  }
  m.set_rotated();
  rep.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return rep;
}

RotateReport rotate_for_spec(Model& m, const CompressSpec& spec) {
  for (const MethodSpec& step : spec.steps)
    if (step.info().kind == MethodKind::Rotate)
      return rotate_model(m, kRotateSeed, step.rotate_stream, step.rotate_heads);
  return {};
}

}  // namespace minfer
