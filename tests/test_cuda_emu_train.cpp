// The CUDA training kernels (kernels/cuda/train_kernels.cu) under the CPU emulation of the CUDA
// execution model, each against its CPU op in train/ops.h on odd shapes (rows and widths that are
// not multiples of a warp or a block, repeated ids, ignored targets), accumulating into non-zero
// gradients as the CPU ops do. The same kernel source builds with nvcc (make CUDA=1).
#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

#include "engine/backend.h"
#include "engine/safetensors.h"
#include "kernels/train_ops.h"
#include "models/loader.h"
#include "tests/test_util.h"
#include "tests/train_test_util.h"
#include "train/distill.h"
#include "train/loss.h"
#include "train/ops.h"
#include "train/optim.h"

// The emulated kernels' host functions (kernels/cuda/train_kernels.h in the cuda_emu namespace;
// its stream type is the emulation's EmuStream*, streams are no-ops there).
namespace minfer::cuda_emu {
struct EmuStream;
int64_t emu_launch_count();
void launch_embedding_backward(float*, const float*, const int32_t*, int64_t, int64_t, EmuStream*);
void launch_rmsnorm_backward(float*, float*, const float*, const float*, const float*, const float*,
                             int64_t, int64_t, EmuStream*);
void launch_swiglu_backward(float*, float*, const float*, const float*, const float*, int64_t,
                            EmuStream*);
void launch_gelu_backward(float*, const float*, const float*, int64_t, bool, EmuStream*);
void launch_residual_backward(float*, float*, const float*, int64_t, EmuStream*);
void launch_cross_entropy_backward(float*, const float*, const int32_t*, int64_t, int64_t, float,
                                   EmuStream*);
void launch_kl_backward(float*, const float*, const float*, int64_t, int64_t, float, bool, float,
                        EmuStream*);
}  // namespace minfer::cuda_emu
namespace minfer {
// The CUDA TrainOps (kernels/cuda/train_ops_cuda.cpp) built against the emulation.
train::TrainOps* new_cuda_emu_train_ops(int device);
}  // namespace minfer

namespace cu = minfer::cuda_emu;
namespace tr = minfer::train;

namespace {

std::vector<float> randn(size_t n, uint32_t seed, float scale = 1.f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.f, scale);
  std::vector<float> v(n);
  for (float& x : v) x = nd(rng);
  return v;
}

// max |a − b| / max(max |b|, 1e-30): relative to the reference's scale.
double rel(const std::vector<float>& a, const std::vector<float>& b) {
  REQUIRE(a.size() == b.size());
  double d = 0, m = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    REQUIRE(std::isfinite(a[i]));
    d = std::max(d, std::abs(double(a[i]) - b[i]));
    m = std::max(m, std::abs(double(b[i])));
  }
  return d / std::max(m, 1e-30);
}

}  // namespace

TEST_CASE("cuda emu train: embedding, rmsnorm, swiglu, gelu, residual backward equal the CPU ops") {
  const int64_t N = 37, C = 45, V = 11;
  const auto dout = randn(size_t(N * C), 1), x = randn(size_t(N * C), 2), w = randn(size_t(C), 3),
             g0 = randn(size_t(N * C), 4, 0.1f), t0 = randn(size_t(V * C), 5, 0.1f),
             w0 = randn(size_t(C), 6, 0.1f);
  SUBCASE("embedding (repeated ids accumulate)") {
    std::vector<int32_t> ids(static_cast<size_t>(N));
    for (int64_t n = 0; n < N; ++n) ids[size_t(n)] = int32_t((n * 7) % V);
    auto a = t0, b = t0;
    tr::embedding_backward(a.data(), dout.data(), ids.data(), N, C);
    cu::launch_embedding_backward(b.data(), dout.data(), ids.data(), N, C, nullptr);
    CHECK(rel(b, a) <= 1e-6);
  }
  SUBCASE("rmsnorm") {
    std::vector<float> y(static_cast<size_t>(N * C)), rstd(static_cast<size_t>(N));
    tr::rmsnorm_forward(y.data(), rstd.data(), x.data(), w.data(), N, C, 1e-5f);
    auto dxa = g0, dxb = g0, dwa = w0, dwb = w0;
    tr::rmsnorm_backward(dxa.data(), dwa.data(), dout.data(), x.data(), w.data(), rstd.data(), N,
                         C);
    cu::launch_rmsnorm_backward(dxb.data(), dwb.data(), dout.data(), x.data(), w.data(),
                                rstd.data(), N, C, nullptr);
    CHECK(rel(dxb, dxa) <= 1e-5);
    CHECK(rel(dwb, dwa) <= 1e-5);
  }
  SUBCASE("swiglu") {
    const auto up = randn(size_t(N * C), 7);
    auto dga = g0, dgb = g0, dua = g0, dub = g0;
    tr::swiglu_backward(dga.data(), dua.data(), dout.data(), x.data(), up.data(), N * C);
    cu::launch_swiglu_backward(dgb.data(), dub.data(), dout.data(), x.data(), up.data(), N * C,
                               nullptr);
    CHECK(rel(dgb, dga) <= 1e-6);
    CHECK(rel(dub, dua) <= 1e-6);
  }
  SUBCASE("gelu, both forms") {
    for (bool tanh_approx : {false, true}) {
      CAPTURE(tanh_approx);
      auto a = g0, b = g0;
      tr::gelu_backward(a.data(), dout.data(), x.data(), N * C, tanh_approx);
      cu::launch_gelu_backward(b.data(), dout.data(), x.data(), N * C, tanh_approx, nullptr);
      CHECK(rel(b, a) <= 1e-5);
    }
  }
  SUBCASE("residual") {
    auto da = g0, db = g0, ea = g0, eb = g0;
    tr::residual_backward(da.data(), ea.data(), dout.data(), N * C);
    cu::launch_residual_backward(db.data(), eb.data(), dout.data(), N * C, nullptr);
    CHECK(rel(db, da) == 0);
    CHECK(rel(eb, ea) == 0);
  }
}

TEST_CASE("cuda emu train: cross-entropy and KL backward equal the CPU ops") {
  const int64_t N = 9, V = 301;  // V not a multiple of the block
  const auto s = randn(size_t(N * V), 11, 3.f), t = randn(size_t(N * V), 12, 3.f),
             d0 = randn(size_t(N * V), 13, 0.01f);
  std::vector<int32_t> tg(static_cast<size_t>(N));
  for (int64_t n = 0; n < N; ++n) tg[size_t(n)] = n == 4 ? -1 : int32_t((n * 37) % V);
  {
    auto a = d0, b = d0;
    tr::cross_entropy_backward(a.data(), s.data(), tg.data(), N, V, 0.25f);
    cu::launch_cross_entropy_backward(b.data(), s.data(), tg.data(), N, V, 0.25f, nullptr);
    CHECK(rel(b, a) <= 1e-5);
    for (int64_t c = 0; c < V; ++c) CHECK(b[size_t(4 * V + c)] == d0[size_t(4 * V + c)]);
  }
  for (bool reverse : {false, true})
    for (float tau : {0.5f, 2.f}) {
      CAPTURE(reverse);
      CAPTURE(tau);
      auto a = d0, b = d0;
      tr::kl_backward(a.data(), s.data(), t.data(), N, V, tau, reverse, 0.5f);
      cu::launch_kl_backward(b.data(), s.data(), t.data(), N, V, tau, reverse, 0.5f, nullptr);
      CHECK(rel(b, a) <= 1e-4);
    }
}

namespace {

// A buffer in `ops`' memory holding v.
tr::FloatVec buf(tr::TrainOps& ops, const std::vector<float>& v) {
  return tr::FloatVec(v.begin(), v.end(), ops.memory());
}
std::vector<float> host(const tr::FloatVec& v) {
  return std::vector<float>(v.begin(), v.end());
}

}  // namespace

TEST_CASE("cuda emu train ops: linear, embedding, rmsnorm, rope, attention, swiglu equal the CPU") {
  std::unique_ptr<tr::TrainOps> cu_ops(minfer::new_cuda_emu_train_ops(0));
  tr::TrainOps& g = *cu_ops;
  auto cpu = tr::cpu_train_ops();
  tr::TrainOps& c = *cpu;
  CHECK(g.name() == "cuda");
  CHECK(!g.host());
  // Odd shapes: 2 sequences of 7 positions, 6 query heads over 2 kv heads of dim 6.
  const int64_t B = 2, T = 7, N = B * T, H = 6, Hkv = 2, D = 6, I = 37, O = 45, V = 11;
  SUBCASE("linear forward and backward (cuBLAS on device memory)") {
    const auto x = randn(size_t(N * I), 1), w = randn(size_t(O * I), 2),
               dy = randn(size_t(N * O), 3), dx0 = randn(size_t(N * I), 4, 0.1f),
               dw0 = randn(size_t(O * I), 5, 0.1f);
    std::vector<float> ya(size_t(N * O)), dxa = dx0, dwa = dw0;
    c.linear_forward(ya.data(), x.data(), w.data(), N, I, O);
    c.linear_backward(dxa.data(), dwa.data(), dy.data(), x.data(), w.data(), N, I, O);
    auto xg = buf(g, x), wg = buf(g, w), dyg = buf(g, dy), dxg = buf(g, dx0), dwg = buf(g, dw0),
         yg = buf(g, std::vector<float>(size_t(N * O)));
    g.linear_forward(yg.data(), xg.data(), wg.data(), N, I, O);
    g.linear_backward(dxg.data(), dwg.data(), dyg.data(), xg.data(), wg.data(), N, I, O);
    g.synchronize();
    CHECK(rel(host(yg), ya) <= 1e-6);
    CHECK(rel(host(dxg), dxa) <= 1e-6);
    CHECK(rel(host(dwg), dwa) <= 1e-6);
  }
  SUBCASE("embedding forward, rmsnorm forward, swiglu forward, residual forward") {
    const int64_t C = 45;
    const auto table = randn(size_t(V * C), 6), x = randn(size_t(N * C), 7),
               w = randn(size_t(C), 8), u = randn(size_t(N * C), 9);
    tr::IntVec ids(g.memory());
    for (int64_t n = 0; n < N; ++n) ids.push_back(int32_t((n * 5) % V));
    std::vector<float> ea(size_t(N * C)), ra(size_t(N * C)), rsa(static_cast<size_t>(N)),
        sa(size_t(N * C)), aa(size_t(N * C));
    c.embedding_forward(ea.data(), ids.data(), table.data(), N, C, V);
    c.rmsnorm_forward(ra.data(), rsa.data(), x.data(), w.data(), N, C, 1e-5f);
    c.swiglu_forward(sa.data(), x.data(), u.data(), N * C);
    c.residual_forward(aa.data(), x.data(), u.data(), N * C);
    auto tg = buf(g, table), xg = buf(g, x), wg = buf(g, w), ug = buf(g, u), eg = buf(g, ea),
         rg = buf(g, ra), rsg = buf(g, rsa), sg = buf(g, sa), ag = buf(g, aa);
    g.embedding_forward(eg.data(), ids.data(), tg.data(), N, C, V);
    g.rmsnorm_forward(rg.data(), rsg.data(), xg.data(), wg.data(), N, C, 1e-5f);
    g.swiglu_forward(sg.data(), xg.data(), ug.data(), N * C);
    g.residual_forward(ag.data(), xg.data(), ug.data(), N * C);
    g.synchronize();
    CHECK(host(eg) == ea);
    CHECK(rel(host(rg), ra) <= 1e-6);
    CHECK(rel(host(rsg), rsa) <= 1e-6);
    CHECK(rel(host(sg), sa) <= 1e-6);
    CHECK(host(ag) == aa);
    ids[3] = int32_t(V);  // out of range: a clear error, no kernel
    CHECK_THROWS_WITH(g.embedding_forward(eg.data(), ids.data(), tg.data(), N, C, V),
                      doctest::Contains("token id 11 at row 3"));
  }
  SUBCASE("rope forward and backward") {
    const auto x = randn(size_t(N * H * D), 10);
    const std::vector<float> cs = tr::rope_cos_sin(T, D, 10000.f);
    std::vector<float> a = x;
    c.rope(a.data(), cs.data(), B, T, H, D, 1.f);
    auto xg = buf(g, x), csg = buf(g, cs);
    g.rope(xg.data(), csg.data(), B, T, H, D, 1.f);
    g.synchronize();
    CHECK(rel(host(xg), a) <= 1e-6);
    c.rope(a.data(), cs.data(), B, T, H, D, -1.f);
    g.rope(xg.data(), csg.data(), B, T, H, D, -1.f);
    g.synchronize();
    CHECK(rel(host(xg), a) <= 1e-6);
    CHECK(rel(a, x) <= 1e-5);  // the backward rotation undoes the forward one
  }
  SUBCASE("causal GQA attention forward and backward") {
    const auto q = randn(size_t(N * H * D), 11), k = randn(size_t(N * Hkv * D), 12),
               v = randn(size_t(N * Hkv * D), 13), dout = randn(size_t(N * H * D), 14),
               dq0 = randn(size_t(N * H * D), 15, 0.1f), dk0 = randn(size_t(N * Hkv * D), 16, 0.1f),
               dv0 = randn(size_t(N * Hkv * D), 17, 0.1f);
    std::vector<float> oa(size_t(N * H * D)), pa(size_t(B * H * T * T)), dqa = dq0, dka = dk0,
                                                                         dva = dv0;
    c.attention_forward(oa.data(), pa.data(), q.data(), k.data(), v.data(), B, T, H, Hkv, D);
    c.attention_backward(dqa.data(), dka.data(), dva.data(), dout.data(), q.data(), k.data(),
                         v.data(), pa.data(), B, T, H, Hkv, D);
    auto qg = buf(g, q), kg = buf(g, k), vg = buf(g, v), dog = buf(g, dout), dqg = buf(g, dq0),
         dkg = buf(g, dk0), dvg = buf(g, dv0), og = buf(g, std::vector<float>(oa.size(), 9.f)),
         pg = buf(g, std::vector<float>(pa.size(), 9.f));
    g.attention_forward(og.data(), pg.data(), qg.data(), kg.data(), vg.data(), B, T, H, Hkv, D);
    g.attention_backward(dqg.data(), dkg.data(), dvg.data(), dog.data(), qg.data(), kg.data(),
                         vg.data(), pg.data(), B, T, H, Hkv, D);
    g.synchronize();
    CHECK(rel(host(og), oa) <= 1e-5);
    CHECK(rel(host(pg), pa) <= 1e-5);  // masked entries written 0, as the CPU op
    CHECK(rel(host(dqg), dqa) <= 1e-5);
    CHECK(rel(host(dkg), dka) <= 1e-5);
    CHECK(rel(host(dvg), dva) <= 1e-5);
  }
}

TEST_CASE("cuda emu train: distill on the CUDA ops gives the CPU run's losses and weights") {
  using namespace minfer;
  auto be = make_cpu_backend(1);
  auto teacher = load_model("tests/fixtures/parity/llama", *be);
  const auto ids = test::random_ids(300, 101, 1);
  tr::DistillOptions o = test::tiny_distill("init:layers=1,0", 3, 2, 2, 1, 5);
  test::TempDir tmp("cuda-distill");
  const tr::DistillResult a = tr::distill(*teacher, nullptr, ids, "ids", {}, o, tmp / "cpu");
  o.ops = std::shared_ptr<tr::TrainOps>(minfer::new_cuda_emu_train_ops(0));
  const int64_t launches0 = cu::emu_launch_count();
  auto st = tr::make_student(o, *teacher);
  CHECK(st->ops().name() == "cuda");
  const tr::DistillResult b = tr::distill(*teacher, nullptr, ids, "ids", {}, o, tmp / "cuda");
  CHECK(cu::emu_launch_count() > launches0 + 100);  // the student ran as kernels
  REQUIRE(a.steps.size() == 3);
  REQUIRE(b.steps.size() == 3);
  for (size_t i = 0; i < 3; ++i) {
    CAPTURE(i);
    CHECK(b.steps[i].loss == doctest::Approx(a.steps[i].loss).epsilon(1e-5));
    CHECK(b.steps[i].kd == doctest::Approx(a.steps[i].kd).epsilon(1e-5));
    CHECK(b.steps[i].ce == doctest::Approx(a.steps[i].ce).epsilon(1e-5));
    CHECK(b.steps[i].grad_norm == doctest::Approx(a.steps[i].grad_norm).epsilon(1e-4));
  }
  // The trained weights. AdamW normalises each gradient by its own running RMS, so a weight whose
  // gradient is rounding noise in both runs (an embedding row of a token seen once) steps by up
  // to lr in a direction the noise picks; how far depends on the compiler's summation and
  // contraction (g++ -O3: 4.0e-4 absolute, clang -O1 under ASan: 9.6e-4, both in the
  // embedding). The bound is a quarter of one lr step, absolute: a wrong gradient moves weights by
  // whole steps; the losses and gradient norms above are the tight checks.
  auto wa = SafetensorsFile::open(tmp / "cpu/model.safetensors");
  auto wb = SafetensorsFile::open(tmp / "cuda/model.safetensors");
  REQUIRE(wa->tensors().size() == wb->tensors().size());
  double worst = 0, worst_abs = 0;
  for (const auto& kv : wa->tensors()) {
    const std::string& n = kv.first;
    CAPTURE(n);
    const Tensor &x = kv.second, &y = wb->get(n);
    REQUIRE(x.numel() == y.numel());
    const std::vector<float> xv(x.data<float>(), x.data<float>() + x.numel()),
        yv(y.data<float>(), y.data<float>() + y.numel());
    worst = std::max(worst, rel(yv, xv));
    for (size_t i = 0; i < xv.size(); ++i)
      worst_abs = std::max(worst_abs, std::abs(double(yv[i]) - xv[i]));
  }
  CHECK(worst_abs <= 0.25 * o.lr);
  MESSAGE("CUDA (emulated) vs CPU student after 3 steps: worst weight difference "
          << worst_abs << " absolute (lr " << o.lr << "), " << worst
          << " of the tensor's largest weight");
}

TEST_CASE(
    "cuda emu train: AdamW and global-norm clipping on the device equal the CPU optimizer "
    "step for step") {
  using namespace minfer;
  auto ops = std::shared_ptr<tr::TrainOps>(new_cuda_emu_train_ops(0));
  // The same table in host memory and in the device's managed memory. Odd sizes (not multiples
  // of a block); b.weight has more elements than the sum's 64 blocks × 256 threads, so every
  // thread strides more than once.
  auto layout = [](tr::ParamStore& p) {
    p.add("a.weight", {37, 53}, true);
    p.add("a.bias", {53}, false);
    p.add("b.weight", {301, 701}, true);
    p.allocate();
  };
  tr::ParamStore cpu, dev(ops->memory());
  layout(cpu);
  layout(dev);
  const size_t n = cpu.numel();
  const std::vector<float> w0 = randn(n, 11, 0.05f);
  std::copy(w0.begin(), w0.end(), cpu.weights().begin());
  std::copy(w0.begin(), w0.end(), dev.weights().begin());
  tr::AdamWConfig cfg;
  cfg.weight_decay = 0.1;
  auto bits_equal = [](const tr::FloatVec& a, const tr::FloatVec& b) {
    return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
  };
  const int64_t launches0 = cu::emu_launch_count();
  int clipped = 0;
  for (int64_t t = 1; t <= 6; ++t) {
    CAPTURE(t);
    // Gradients of a changing scale; steps 2, 4, 6 clip (‖g‖ ~ 0.3·√n ≫ 1), 1, 3, 5 do not.
    const std::vector<float> g = randn(n, uint32_t(100 + t), 0.3f);
    std::copy(g.begin(), g.end(), cpu.grads().begin());
    std::copy(g.begin(), g.end(), dev.grads().begin());
    const double max_norm = t % 2 == 0 ? 1.0 : 0.0;
    const double nc = tr::clip_grad_norm(cpu, max_norm);
    const double nd = tr::clip_grad_norm(dev, max_norm, ops.get());
    // Per-block partial sums in double, then in order: the CPU's sequential sum up to double
    // rounding.
    CHECK(nd == doctest::Approx(nc).epsilon(1e-12));
    if (max_norm > 0 && nc > max_norm) ++clipped;
    const std::vector<float> gc(cpu.grads().begin(), cpu.grads().end()),
        gd(dev.grads().begin(), dev.grads().end());
    CHECK(rel(gd, gc) <= 1e-7);
    const float lr = tr::lr_at(t - 1, 2, 6, 1e-2f, 0.1f);
    tr::adamw_step(cpu, cfg, lr, t);
    tr::adamw_step(dev, cfg, lr, t, ops.get());
    if (max_norm == 0 && t == 1) {
      // Same gradients in, the same arithmetic (kernels/common/adamw_math.h): the same bits out.
      CHECK(bits_equal(cpu.weights(), dev.weights()));
      CHECK(bits_equal(cpu.m(), dev.m()));
      CHECK(bits_equal(cpu.v(), dev.v()));
    }
    const std::vector<float> wc(cpu.weights().begin(), cpu.weights().end()),
        wd(dev.weights().begin(), dev.weights().end());
    CHECK(rel(wd, wc) <= 1e-6);
    // The step moved every weight (lr ~ 1e-2 against weights ~ 0.05).
    CHECK(rel(wc, w0) > 1e-2);
  }
  CHECK(clipped == 3);
  CHECK(cu::emu_launch_count() >= launches0 + 6 * (1 + 3) + 3);  // sums, AdamW per tensor, scales
}

TEST_CASE("cuda emu train: the distillation loss on the device equals the CPU loss") {
  using namespace minfer;
  auto ops = std::shared_ptr<tr::TrainOps>(new_cuda_emu_train_ops(0));
  // 7 rows (two without a target) of 45 logits: not multiples of a warp or a block.
  const int64_t N = 7, V = 45;
  const std::vector<float> s = randn(size_t(N * V), 21, 2.f), t = randn(size_t(N * V), 22, 2.f);
  const std::vector<int32_t> tg{3, -100, 44, 0, 17, -100, 9};
  const std::vector<float> d0 = randn(size_t(N * V), 23, 0.1f);  // gradients accumulate into it
  tr::FloatVec ds(s.begin(), s.end(), ops->memory()), dt(t.begin(), t.end(), ops->memory()),
      dd(d0.begin(), d0.end(), ops->memory());
  tr::IntVec dtg(tg.begin(), tg.end(), ops->memory());
  for (const float alpha : {0.f, 0.5f, 1.f})
    for (const bool reverse : {false, true}) {
      CAPTURE(alpha);
      CAPTURE(reverse);
      const tr::DistillLossArgs a{alpha, 2.f, reverse};
      std::vector<float> dc = d0;
      std::copy(d0.begin(), d0.end(), dd.begin());
      const int64_t launches0 = cu::emu_launch_count();
      const tr::LossParts c =
          tr::distill_loss(s.data(), t.data(), tg.data(), N, V, a, dc.data(), 0.5f);
      const tr::LossParts g =
          tr::distill_loss(ds.data(), dt.data(), dtg.data(), N, V, a, dd.data(), 0.5f, ops.get());
      CHECK(cu::emu_launch_count() > launches0);  // computed by the kernels
      CHECK(g.scored == 5);
      CHECK(g.ce == doctest::Approx(c.ce).epsilon(1e-6));
      CHECK(g.kd == doctest::Approx(c.kd).epsilon(1e-6));
      CHECK(g.total == doctest::Approx(c.total).epsilon(1e-6));
      CHECK(rel(std::vector<float>(dd.begin(), dd.end()), dc) <= 1e-6);
    }
  // A target outside the vocabulary names its row, as on the CPU.
  dtg[4] = int32_t(V);
  CHECK_THROWS_WITH(tr::distill_loss(ds.data(), dt.data(), dtg.data(), N, V, {0.f, 1.f, false},
                                     nullptr, 1.f, ops.get()),
                    doctest::Contains("target 45 at row 4 >= vocab 45"));
}
