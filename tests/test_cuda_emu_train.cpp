// The CUDA training kernels (kernels/cuda/train_kernels.cu) under the CPU emulation of the CUDA
// execution model, each against its CPU op in train/ops.h on odd shapes (rows and widths that are
// not multiples of a warp or a block, repeated ids, ignored targets), accumulating into non-zero
// gradients as the CPU ops do. The same kernel source builds with nvcc (make CUDA=1).
#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "train/ops.h"

// The emulated kernels' host functions (kernels/cuda/train_kernels.h in the cuda_emu namespace;
// its stream type is the emulation's EmuStream*, streams are no-ops there).
namespace minfer::cuda_emu {
struct EmuStream;
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
