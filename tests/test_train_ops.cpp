// Every training op's backward against central finite differences of its forward, on odd tiny
// shapes. The ops are f32; the scalar L = Σ r∘out (r random, fixed) is accumulated in double and
// the step is 1e-2, so the differences carry ~1e-4 truncation and ~1e-5 rounding error: the
// tolerance is 5e-3 of the largest gradient.
#include <doctest/doctest.h>

#include <cmath>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "train/ops.h"

using namespace minfer::train;

namespace {

std::vector<float> randv(size_t n, uint64_t seed, float std = 1.f) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> nd(0.f, std);
  std::vector<float> v(n);
  for (float& x : v) x = nd(rng);
  return v;
}

double dot(const std::vector<float>& a, const std::vector<float>& b) {
  double s = 0;
  for (size_t i = 0; i < a.size(); ++i) s += double(a[i]) * b[i];
  return s;
}

// Compares `analytic` (∂L/∂x) with central differences of L at x; x is restored afterwards.
void check_grad(const std::string& what, std::vector<float>& x, const std::vector<float>& analytic,
                const std::function<double()>& L, float eps = 1e-2f, double tol = 5e-3) {
  REQUIRE(analytic.size() == x.size());
  double max_fd = 0, max_err = 0;
  size_t worst = 0;
  std::vector<double> fd(x.size());
  for (size_t i = 0; i < x.size(); ++i) {
    const float x0 = x[i];
    x[i] = x0 + eps;
    const double lp = L();
    x[i] = x0 - eps;
    const double lm = L();
    x[i] = x0;
    fd[i] = (lp - lm) / (2.0 * double(eps));
    max_fd = std::max(max_fd, std::abs(fd[i]));
  }
  for (size_t i = 0; i < x.size(); ++i) {
    const double e = std::abs(fd[i] - analytic[i]);
    if (e > max_err) max_err = e, worst = i;
  }
  INFO(what << ": worst element " << worst << " analytic " << analytic[worst] << " vs finite "
            << fd[worst] << " (max |grad| " << max_fd << ")");
  CHECK(max_fd > 1e-3);  // the check is not vacuous
  CHECK(max_err <= tol * std::max(max_fd, 1e-3));
}

}  // namespace

TEST_CASE("train ops: linear_backward matches finite differences") {
  const int64_t N = 3, I = 5, O = 7;
  auto x = randv(N * I, 1), W = randv(O * I, 2, 0.5f), b = randv(O, 3), r = randv(N * O, 4);
  std::vector<float> out(N * O);
  auto L = [&] {
    linear_forward(out.data(), x.data(), W.data(), b.data(), N, I, O);
    return dot(out, r);
  };
  std::vector<float> dx(N * I, 0.f), dW(O * I, 0.f), db(O, 0.f);
  linear_backward(dx.data(), dW.data(), db.data(), r.data(), x.data(), W.data(), N, I, O);
  check_grad("linear dx", x, dx, L);
  check_grad("linear dW", W, dW, L);
  check_grad("linear db", b, db, L);
}

TEST_CASE("train ops: conv1d_backward (weights stored [in, out]) matches finite differences") {
  const int64_t N = 3, I = 5, O = 7;
  auto x = randv(N * I, 31), W = randv(I * O, 32, 0.5f), b = randv(O, 33), r = randv(N * O, 34);
  std::vector<float> out(N * O);
  auto L = [&] {
    conv1d_forward(out.data(), x.data(), W.data(), b.data(), N, I, O);
    return dot(out, r);
  };
  std::vector<float> dx(N * I, 0.f), dW(I * O, 0.f), db(O, 0.f);
  conv1d_backward(dx.data(), dW.data(), db.data(), r.data(), x.data(), W.data(), N, I, O);
  check_grad("conv1d dx", x, dx, L);
  check_grad("conv1d dW", W, dW, L);
  check_grad("conv1d db", b, db, L);
}

TEST_CASE("train ops: embedding_backward adds repeated ids") {
  const int64_t V = 7, C = 3, N = 5;
  std::vector<int32_t> ids{4, 1, 4, 6, 0};
  auto table = randv(V * C, 5), r = randv(N * C, 6);
  std::vector<float> out(N * C);
  auto L = [&] {
    embedding_forward(out.data(), ids.data(), table.data(), N, C, V);
    return dot(out, r);
  };
  std::vector<float> dt(V * C, 0.f);
  embedding_backward(dt.data(), r.data(), ids.data(), N, C);
  check_grad("embedding dtable", table, dt, L);
  std::vector<int32_t> bad{7};
  CHECK_THROWS_WITH(embedding_forward(out.data(), bad.data(), table.data(), 1, C, V),
                    doctest::Contains("token id 7 at row 0 outside [0, 7)"));
}

TEST_CASE("train ops: rmsnorm and layernorm backward match finite differences") {
  const int64_t N = 3, C = 7;
  auto x = randv(N * C, 7), w = randv(C, 8), b = randv(C, 9), r = randv(N * C, 10);
  std::vector<float> out(N * C), mean(N), rstd(N);
  auto Lr = [&] {
    rmsnorm_forward(out.data(), rstd.data(), x.data(), w.data(), N, C, 1e-5f);
    return dot(out, r);
  };
  Lr();
  std::vector<float> dx(N * C, 0.f), dw(C, 0.f), db(C, 0.f);
  rmsnorm_backward(dx.data(), dw.data(), r.data(), x.data(), w.data(), rstd.data(), N, C);
  check_grad("rmsnorm dx", x, dx, Lr);
  check_grad("rmsnorm dw", w, dw, Lr);

  auto Ll = [&] {
    layernorm_forward(out.data(), mean.data(), rstd.data(), x.data(), w.data(), b.data(), N, C,
                      1e-5f);
    return dot(out, r);
  };
  Ll();
  std::fill(dx.begin(), dx.end(), 0.f);
  std::fill(dw.begin(), dw.end(), 0.f);
  layernorm_backward(dx.data(), dw.data(), db.data(), r.data(), x.data(), w.data(), mean.data(),
                     rstd.data(), N, C);
  check_grad("layernorm dx", x, dx, Ll);
  check_grad("layernorm dw", w, dw, Ll);
  check_grad("layernorm db", b, db, Ll);
}

TEST_CASE("train ops: rope_backward matches finite differences") {
  const int64_t B = 2, T = 5, nh = 3, D = 6;
  auto x = randv(B * T * nh * D, 11), r = randv(B * T * nh * D, 12);
  std::vector<float> y;
  auto L = [&] {
    y = x;
    rope_forward(y.data(), B, T, nh, D, 10000.f);
    return dot(y, r);
  };
  std::vector<float> dx = r;
  rope_backward(dx.data(), B, T, nh, D, 10000.f);
  check_grad("rope dx", x, dx, L);
}

TEST_CASE("train ops: causal GQA attention backward matches finite differences") {
  const int64_t B = 2, T = 5, H = 6, Hkv = 2, D = 3;
  auto q = randv(B * T * H * D, 13), k = randv(B * T * Hkv * D, 14), v = randv(B * T * Hkv * D, 15),
       r = randv(B * T * H * D, 16);
  std::vector<float> out(B * T * H * D), probs(B * H * T * T);
  auto L = [&] {
    attention_forward(out.data(), probs.data(), q.data(), k.data(), v.data(), B, T, H, Hkv, D);
    return dot(out, r);
  };
  L();
  // Causality: the first query of each sequence sees only its own key.
  CHECK(probs[0] == doctest::Approx(1.0));
  std::vector<float> dq(q.size(), 0.f), dk(k.size(), 0.f), dv(v.size(), 0.f);
  attention_backward(dq.data(), dk.data(), dv.data(), r.data(), q.data(), k.data(), v.data(),
                     probs.data(), B, T, H, Hkv, D);
  check_grad("attention dq", q, dq, L);
  check_grad("attention dk", k, dk, L);
  check_grad("attention dv", v, dv, L);
}

TEST_CASE("train ops: padded bidirectional attention backward matches finite differences") {
  const int64_t B = 2, T = 5, H = 2, Hkv = 2, D = 3;
  const std::vector<int32_t> mask{1, 1, 1, 0, 0, 1, 1, 1, 1, 1};  // sequence 0 padded after 3
  auto q = randv(B * T * H * D, 41), k = randv(B * T * Hkv * D, 42), v = randv(B * T * Hkv * D, 43),
       r = randv(B * T * H * D, 44);
  std::vector<float> out(B * T * H * D), probs(B * H * T * T);
  auto L = [&] {
    attention_forward(out.data(), probs.data(), q.data(), k.data(), v.data(), B, T, H, Hkv, D,
                      false, mask.data());
    return dot(out, r);
  };
  L();
  CHECK(probs[4] == 0.f);  // sequence 0, head 0, query 0 never sees padded key 4
  CHECK(probs[T * T - 1] == 0.f);
  CHECK(probs[1] > 0.f);  // ... and does see later real keys (bidirectional)
  std::vector<float> dq(q.size(), 0.f), dk(k.size(), 0.f), dv(v.size(), 0.f);
  attention_backward(dq.data(), dk.data(), dv.data(), r.data(), q.data(), k.data(), v.data(),
                     probs.data(), B, T, H, Hkv, D, false);
  check_grad("padded attention dq", q, dq, L);
  check_grad("padded attention dk", k, dk, L);
  check_grad("padded attention dv", v, dv, L);
}

TEST_CASE("train ops: swiglu, gelu (erf and tanh) and residual backward") {
  const int64_t n = 11;
  auto g = randv(n, 17, 2.f), u = randv(n, 18), r = randv(n, 19);
  std::vector<float> out(n);
  auto Ls = [&] {
    swiglu_forward(out.data(), g.data(), u.data(), n);
    return dot(out, r);
  };
  std::vector<float> dg(n, 0.f), du(n, 0.f);
  swiglu_backward(dg.data(), du.data(), r.data(), g.data(), u.data(), n);
  check_grad("swiglu dgate", g, dg, Ls);
  check_grad("swiglu dup", u, du, Ls);
  for (bool tanh_approx : {false, true}) {
    auto Lg = [&] {
      gelu_forward(out.data(), g.data(), n, tanh_approx);
      return dot(out, r);
    };
    std::vector<float> dx(n, 0.f);
    gelu_backward(dx.data(), r.data(), g.data(), n, tanh_approx);
    check_grad(tanh_approx ? "gelu tanh" : "gelu erf", g, dx, Lg);
  }
  auto La = [&] {
    residual_forward(out.data(), g.data(), u.data(), n);
    return dot(out, r);
  };
  std::vector<float> da(n, 0.f), db(n, 0.f);
  residual_backward(da.data(), db.data(), r.data(), n);
  check_grad("residual da", g, da, La);
  check_grad("residual db", u, db, La);
}

TEST_CASE("train ops: cross-entropy and temperature KL (forward, reverse) backward") {
  const int64_t N = 3, V = 9;
  auto s = randv(N * V, 20, 2.f), t = randv(N * V, 21, 2.f);
  std::vector<int32_t> targets{3, -1, 8};  // row 1 ignored
  auto Lc = [&] { return cross_entropy_forward(s.data(), targets.data(), N, V); };
  std::vector<float> ds(N * V, 0.f);
  cross_entropy_backward(ds.data(), s.data(), targets.data(), N, V, 1.f);
  for (int64_t i = 0; i < V; ++i) CHECK(ds[size_t(V + i)] == 0.f);
  check_grad("cross-entropy", s, ds, Lc);
  // Uniform logits: loss = log V per scored row.
  std::vector<float> flat(N * V, 0.5f);
  CHECK(cross_entropy_forward(flat.data(), targets.data(), N, V) ==
        doctest::Approx(2 * std::log(double(V))));
  for (bool reverse : {false, true}) {
    auto Lk = [&] { return kl_forward(s.data(), t.data(), N, V, 2.f, reverse); };
    CHECK(Lk() > 0);
    CHECK(kl_forward(t.data(), t.data(), N, V, 2.f, reverse) == doctest::Approx(0.0).epsilon(1e-9));
    std::fill(ds.begin(), ds.end(), 0.f);
    kl_backward(ds.data(), s.data(), t.data(), N, V, 2.f, reverse, 1.f);
    check_grad(reverse ? "reverse KL" : "forward KL", s, ds, Lk);
  }
}
