// GGML block formats kept as stored (engine/formats/ggml_blocks.h, kernels/cpu/ggml.h): the
// reference dequantization against gguf-py, the CPU kernels against the f32 matmul of those
// weights (with the stated bound of the int8-activation path), the embedding lookup, and a tiny
// GGUF model run natively against its dequantized f32 run.
#include <doctest/doctest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "engine/backend.h"
#include "engine/gguf.h"
#include "engine/half.h"
#include "engine/safetensors.h"
#include "engine/thread_pool.h"
#include "kernels/cpu/ggml.h"
#include "models/loader.h"
#include "tests/op_group_check.h"
#include "tests/test_util.h"

using namespace minfer;

namespace minfer {
std::unique_ptr<Backend> make_cuda_emu_backend(int device);
namespace cuda_emu {
void emu_set_device_count(int n);
}
}  // namespace minfer

namespace {

const std::string kFixtures = "tests/fixtures/gguf/";

std::vector<float> randn(size_t n, uint32_t seed, float scale = 1.f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.f, scale);
  std::vector<float> v(n);
  for (float& x : v) x = nd(rng);
  return v;
}

}  // namespace

TEST_CASE("ggml blocks: dequantize equals gguf-py's dequantization exactly, every block type") {
  // types.gguf / expected.safetensors: tests/fixtures/gguf/make_gguf_fixtures.py (Q4_0 ... Q5_1
  // from gguf.quants.quantize, K-quants from random block bytes; expected =
  // gguf.quants.dequantize).
  auto f = GgufFile::open(kFixtures + "types.gguf");
  auto ref = SafetensorsFile::open(kFixtures + "expected.safetensors");
  int seen = 0;
  for (const GgufTensorInfo& t : f->tensors()) {
    const auto& types = ggml_blocks_types();
    if (std::find(types.begin(), types.end(), t.type) == types.end() || t.ne.size() != 2) continue;
    CAPTURE(t.name);
    const int64_t K = t.ne[0], N = t.ne[1];
    const Linear l = make_linear(t.name, K, N, GgmlBlocks{t.type, f->bytes_view(t)});
    CHECK(linear_format(l) == [&] {
      std::string s = ggml_type_name(t.type);
      for (char& c : s) c = char(std::tolower(static_cast<unsigned char>(c)));
      return s;
    }());
    CHECK(bits_per_weight(l) ==
          doctest::Approx(8.0 * double(ggml_type_size(t.type)) / double(ggml_block_size(t.type))));
    const Tensor w = dequantize_weight(l);
    const Tensor& e = ref->get(t.name);
    REQUIRE(e.numel() == N * K);
    int diff = 0;
    for (int64_t i = 0; i < N * K; ++i)
      diff += std::memcmp(w.data<float>() + i, e.data<float>() + i, 4) != 0;
    CHECK(diff == 0);
    // The embedding lookup dequantizes exactly the rows asked for (CPU and emulated CUDA).
    auto cpu = make_cpu_backend(1);
    cuda_emu::emu_set_device_count(1);
    auto cuda = make_cuda_emu_backend(0);
    const int32_t ids[3] = {int32_t(N - 1), 0, int32_t(N - 1)};
    for (Backend* be : {cpu.get(), cuda.get()}) {
      CAPTURE(be->name());
      Linear tl = l;
      be->upload(tl);
      Tensor y = be->alloc({3, K});
      be->embedding_table(y, tl, ids, 3);
      std::vector<float> yh(size_t(3 * K));
      be->to_host(y, yh.data());
      int bad = 0;
      for (int r = 0; r < 3; ++r)
        for (int64_t k = 0; k < K; ++k)
          bad += yh[size_t(r * K + k)] != w.data<float>()[ids[r] * K + k];
      CHECK(bad == 0);
      const int32_t oob[1] = {int32_t(N)};
      Tensor y1 = be->alloc({1, K});
      CHECK_THROWS_WITH_AS(be->embedding_table(y1, tl, oob, 1), doctest::Contains("out of range"),
                           Error);
    }
    ++seen;
  }
  CHECK(seen == 10);  // Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q2_K ... Q6_K
}

TEST_CASE("ggml blocks: CPU kernels equal the f32 matmul of the dequantized weights") {
  // f32 path: up to summation order (1e-5 relative to Σ|x w|). q8 path: x rounded per block of
  // 32 to dx q as llama.cpp does, with dx = d = max|x| / 127 rounded to fp16 (|dx - d| <= d 2^-11,
  // |q| <= 127): |x - dx q| <= d (1/2 + 127/2048); Q4_1 / Q5_1 add the block min mw times the fp16
  // sum term fp16(d Σq) (error <= |mw| 2^-10 · 32 max|x|). So |y_q8 - y| <= Σ_b d_b (1/2 +
  // 127/2048) Σ_{j in b} |w_j| + |mw_b| 32 max_b|x| / 1024 (+ f32).
  // K-quants: blocks of 256 with an f32 scale, |y_q8 - y| <= Σ_b d_b / 2 Σ_{j in b} |w_j| (+ f32).
  // The SIMD q8 kernel and its scalar reference share codes and integer sums: they differ only
  // in f32 combination order.
  for (uint32_t ty : ggml_blocks_types()) {
    const std::string tn = ggml_type_name(ty);
    CAPTURE(tn);
    const int64_t QK = int64_t(ggml_block_size(ty));
    const int64_t K = QK == 256 ? 512 : 160, N = 37;
    const int64_t QA = QK;  // activation block of the q8 path: 32, or 256 (Q8_K) for K-quants
    const Linear l = make_linear("w", K, N, test::random_ggml_blocks(ty, N, K, 7 + ty));
    const GgmlBlocks& g = std::get<GgmlBlocks>(l.repr);
    const Tensor wt = dequantize_weight(l);
    const float* W = wt.data<float>();
    // The fp16 min of each 32-weight block of Q4_1 / Q5_1 (bytes 2-3 of the block), else 0.
    const bool has_min = ty == uint32_t(GgmlType::Q4_1) || ty == uint32_t(GgmlType::Q5_1);
    auto block_min = [&](int64_t n, int64_t k0) {
      if (!has_min) return 0.0;
      const uint8_t* p = g.blocks.data<uint8_t>() + n * g.blocks.dim(1) +
                         (k0 / 32) * int64_t(ggml_type_size(ty)) + 2;
      return double(f16_to_f32(uint16_t(p[0] | p[1] << 8)));
    };
    for (int64_t T : {1, 3, 8, 17}) {
      CAPTURE(T);
      std::vector<float> x = randn(size_t(T * K), uint32_t(T + ty));
      x[0] = 9.f;  // an outlier feature
      std::vector<double> yr(size_t(T * N)), sa(size_t(T * N)), qb(size_t(T * N));
      for (int64_t t = 0; t < T; ++t)
        for (int64_t n = 0; n < N; ++n) {
          double s = 0, a = 0, b = 0;
          for (int64_t k0 = 0; k0 < K; k0 += QA) {
            double amax = 0, wsum = 0;
            for (int64_t k = k0; k < k0 + QA; ++k) {
              s += double(x[t * K + k]) * W[n * K + k];
              a += std::fabs(double(x[t * K + k]) * W[n * K + k]);
              amax = std::max(amax, double(std::fabs(x[t * K + k])));
              wsum += std::fabs(double(W[n * K + k]));
            }
            b += amax / 127 * (0.5 + 127.0 / 2048) * wsum +
                 std::fabs(block_min(n, k0)) * 32 * amax / 1024;
          }
          yr[size_t(t * N + n)] = s;
          sa[size_t(t * N + n)] = a;
          qb[size_t(t * N + n)] = b;
        }
      std::vector<float> y(size_t(T * N)), yq(size_t(T * N)), yqr(size_t(T * N));
      ggml_linear_f32(g, x.data(), T, K, y.data(), N, K, N);
      int bad = 0;
      for (size_t i = 0; i < y.size(); ++i)
        bad += !(std::fabs(y[i] - yr[i]) <= 1e-5 * sa[i] + 1e-6);
      CHECK(bad == 0);
      ggml_linear(g, x.data(), T, K, y.data(), N, K, N);  // the dispatching entry point
      bad = 0;
      for (size_t i = 0; i < y.size(); ++i)
        bad += !(std::fabs(y[i] - yr[i]) <= 1.01 * qb[i] + 1e-5 * sa[i] + 1e-6);
      CHECK(bad == 0);
      REQUIRE(ggml_has_q8_path(ty));  // every block type has the integer path
      ggml_linear_q8(g, x.data(), T, K, yq.data(), N, K, N);
      ggml_linear_q8_ref(g, x.data(), T, K, yqr.data(), N, K, N);
      int bad_q = 0, bad_simd = 0;
      double worst = 0;
      for (size_t i = 0; i < y.size(); ++i) {
        bad_q += !(std::fabs(yq[i] - yr[i]) <= 1.01 * qb[i] + 1e-5 * sa[i] + 1e-6);
        bad_simd += !(std::fabs(yq[i] - yqr[i]) <= 1e-5 * sa[i] + 1e-6);
        worst = std::max(worst, std::fabs(yq[i] - yr[i]) / (qb[i] + 1e-12));
      }
      CHECK(bad_q == 0);
      CHECK(bad_simd == 0);
      CHECK(worst > 0);  // the q8 path really rounds x (it is not the f32 path)
    }
  }
  // A NaN in x makes its row NaN on the q8 path, as in f32.
  const Linear l = make_linear("w", 64, 3, test::random_ggml_blocks(3, 3, 64, 1));
  std::vector<float> x(64, 0.5f), y(3);
  x[40] = std::nanf("");
  ggml_linear_q8(std::get<GgmlBlocks>(l.repr), x.data(), 1, 64, y.data(), 3, 64, 3);
  CHECK(std::isnan(y[0]));
  // The same through a K-quant (activation blocks of 256).
  const Linear lk = make_linear("w", 256, 3, test::random_ggml_blocks(12, 3, 256, 1));
  std::vector<float> xk(256, 0.5f);
  xk[200] = std::nanf("");
  ggml_linear_q8(std::get<GgmlBlocks>(lk.repr), xk.data(), 1, 256, y.data(), 3, 256, 3);
  CHECK(std::isnan(y[2]));
}

TEST_CASE("ggml blocks: the SIMD q8 kernels keep exact integer sums at extreme codes") {
  // The AVX2 kernels multiply bytes with vpmaddubsw, which saturates a pair sum past int16: Q8_0
  // codes -128 against x codes 127 would give 2 · 255 · 127 in the unsigned (u = w + 128) form.
  // Every code and sub-block scale byte set to one pattern (all fp16 scale fields kept), x
  // constant (every activation code +127 or -127) or alternating in sign: the SIMD kernel must
  // equal the scalar reference, whose integer sums are exact, up to f32 summation order.
  INFO("q8 kernel ISA: ", ggml_linear_isa());
#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__) && !defined(__AVX512VNNI__)
  CHECK(std::string(ggml_linear_isa()) == "avx2");  // an AVX2 build runs the AVX2 kernels
#endif
  const int64_t K = 512, N = 6;
  for (uint32_t ty : ggml_blocks_types()) {
    if (!ggml_has_q8_path(ty)) continue;
    const std::string tn = ggml_type_name(ty);
    CAPTURE(tn);
    // Byte offsets of the fp16 fields (d, and the min / dmin where the block has one).
    std::vector<int> f16;
    switch (GgmlType(ty)) {
      case GgmlType::Q4_1:
      case GgmlType::Q5_1:
      case GgmlType::Q4_K:
      case GgmlType::Q5_K:
        f16 = {0, 2};
        break;
      case GgmlType::Q2_K:
        f16 = {80, 82};
        break;
      case GgmlType::Q3_K:
        f16 = {108};
        break;
      case GgmlType::Q6_K:
        f16 = {208};
        break;
      default:
        f16 = {0};
    }
    const int64_t bs = int64_t(ggml_type_size(ty));
    for (int pattern : {0x80, 0xff, 0x7f, 0x00}) {
      CAPTURE(pattern);
      GgmlBlocks g = test::random_ggml_blocks(ty, N, K, 5 + ty);
      uint8_t* p = g.blocks.data<uint8_t>();
      for (int64_t i = 0; i < g.blocks.numel(); ++i) {
        bool keep = false;
        for (int o : f16) keep = keep || (i % bs == o || i % bs == o + 1);
        if (!keep) p[i] = uint8_t(pattern);
      }
      const Linear l = make_linear("w", K, N, g);
      const Tensor wt = dequantize_weight(l);
      for (int sign_mode = 0; sign_mode < 3; ++sign_mode) {
        CAPTURE(sign_mode);
        const int64_t T = 2;
        std::vector<float> x(size_t(T * K));
        for (int64_t i = 0; i < T * K; ++i)
          x[size_t(i)] = sign_mode == 0 ? 1.f : sign_mode == 1 ? -1.f : (i % 2 ? -1.f : 1.f);
        std::vector<float> yq(size_t(T * N)), yr(size_t(T * N));
        const GgmlBlocks& gl = std::get<GgmlBlocks>(l.repr);
        ggml_linear_q8(gl, x.data(), T, K, yq.data(), N, K, N);
        ggml_linear_q8_ref(gl, x.data(), T, K, yr.data(), N, K, N);
        int bad = 0;
        for (int64_t t = 0; t < T; ++t)
          for (int64_t n = 0; n < N; ++n) {
            double sa = 0;
            for (int64_t k = 0; k < K; ++k)
              sa += std::fabs(double(x[size_t(t * K + k)]) * wt.data<float>()[n * K + k]);
            const size_t i = size_t(t * N + n);
            bad += !(std::fabs(double(yq[i]) - yr[i]) <= 1e-5 * sa + 1e-6);
          }
        CHECK(bad == 0);
      }
    }
  }
}

TEST_CASE(
    "ggml blocks: Q8_K activation blocks equal llama.cpp's quantize_row_q8_K_ref bit for bit") {
  // q8k_reference.safetensors (make_q8k_reference.py): a numpy reimplementation of
  // quantize_row_q8_K_ref (which equals the function of a llama.cpp build on them) on 32 blocks:
  // noise at several scales, outliers of either sign, +amax and -amax in both orders, exact
  // half-way products (max 127), all zero, tiny values. Scale bits, codes and group sums equal.
  auto ref = SafetensorsFile::open(kFixtures + "q8k_reference.safetensors");
  const Tensor& x = ref->get("x");
  const Tensor& qs = ref->get("qs");
  const Tensor& d = ref->get("d");
  const Tensor& bs = ref->get("bsums");
  REQUIRE(x.dtype() == DType::F32);
  REQUIRE(qs.dtype() == DType::I8);
  REQUIRE(bs.dtype() == DType::I16);
  const int64_t nb = x.dim(0);
  REQUIRE(x.dim(1) == ggml::QK_K);
  std::vector<ggml::BlockQ8_K> y(static_cast<size_t>(nb));
  ggml_quantize_row_q8_K(x.data<float>(), nb * ggml::QK_K, y.data());
  int bad_d = 0, bad_q = 0, bad_s = 0, negative_d = 0;
  for (int64_t b = 0; b < nb; ++b) {
    uint32_t got, want;
    std::memcpy(&got, &y[size_t(b)].d, 4);
    std::memcpy(&want, d.data<float>() + b, 4);
    bad_d += got != want;
    negative_d += y[size_t(b)].d < 0;
    for (int64_t j = 0; j < ggml::QK_K; ++j)
      bad_q += y[size_t(b)].qs[j] != qs.data<int8_t>()[b * ggml::QK_K + j];
    for (int64_t g = 0; g < 16; ++g)
      bad_s += y[size_t(b)].bsums[g] != bs.data<int16_t>()[b * 16 + g];
  }
  CHECK(bad_d == 0);
  CHECK(bad_q == 0);
  CHECK(bad_s == 0);
  CHECK(negative_d > 0);  // llama.cpp's sign convention (d = -max / 127 when max > 0) is kept
  // A non-finite value makes its block's scale NaN (the linear's row is NaN, as in f32).
  std::vector<float> xn(512, 0.25f);
  xn[300] = std::numeric_limits<float>::infinity();
  ggml_quantize_row_q8_K(xn.data(), 512, y.data());
  CHECK(y[0].d == doctest::Approx(-0.25 / 127));
  CHECK(std::isnan(y[1].d));
  CHECK(test::error_of([&] {
          ggml_quantize_row_q8_K(xn.data(), 300, y.data());
        }).find("not a multiple of 256") != std::string::npos);
}

TEST_CASE("ggml blocks: a Q8_0 GGUF run natively equals its dequantized f32 run") {
  // tiny_llama_q8_0.gguf (make_tiny_llama_gguf.py): every projection and the embedding Q8_0.
  // Prefill (T >= 8) runs the f32 path: equal up to summation order. Decode (T = 1) runs the
  // int8-activation path: on this random model (wide weights, every layer's rounding compounds)
  // its logits differ by up to 6.1 % of the logit range of the f32 run (measured; 4.2 % before
  // the activation scale was rounded to fp16 as llama.cpp does, which widens each element's
  // rounding bound from d/2 to d (1/2 + 127/2048)); checked against 8 %. Each linear's error is
  // bounded exactly in the kernel test above.
  auto be = make_cpu_backend(2);
  LoadedModel nat = open_model(kFixtures + "tiny_llama_q8_0.gguf", *be, false);
  LoadedModel f32 = open_model(kFixtures + "tiny_llama_q8_0.gguf", *be, false, GgufWeights::F32);
  CHECK(nat.weights_summary.find("x Q8_0 (native)") != std::string::npos);
  CHECK(f32.weights_summary.find("(dequantized to f32 at load)") != std::string::npos);
  for (Linear* w : nat.model->linears()) CHECK(linear_format(*w) == "q8_0");
  for (Linear* w : f32.model->linears()) CHECK(linear_format(*w) == "f32");
  CHECK(nat.model->weight_bytes() < f32.model->weight_bytes() / 3);
  const std::vector<int32_t> ids = {1, 5, 9, 33, 70, 2, 99, 14, 8, 41, 3, 60};
  const int64_t T = int64_t(ids.size()), V = nat.model->config().vocab_size;
  RunState sn = nat.model->new_state(T + 4, T), sf = f32.model->new_state(T + 4, T);
  Tensor ln = nat.model->forward(sn, ids.data(), T, true);
  Tensor lf = f32.model->forward(sf, ids.data(), T, true);
  float worst = 0, range = 0;
  for (int64_t i = 0; i < T * V; ++i) {
    worst = std::max(worst, std::fabs(ln.data<float>()[i] - lf.data<float>()[i]));
    range = std::max(range, std::fabs(lf.data<float>()[i]));
  }
  MESSAGE("prefill native vs f32: max |diff| = " << worst << " (max |logit| " << range << ")");
  CHECK(worst <= 1e-4f * std::max(1.f, range));
  for (int step = 0; step < 4; ++step) {
    const int32_t id = 7 + 11 * step;
    Tensor dn = nat.model->forward(sn, &id, 1, false);
    Tensor df = f32.model->forward(sf, &id, 1, false);
    float w1 = 0, r1 = 0;
    for (int64_t i = 0; i < V; ++i) {
      w1 = std::max(w1, std::fabs(dn.data<float>()[i] - df.data<float>()[i]));
      r1 = std::max(r1, std::fabs(df.data<float>()[i]));
    }
    MESSAGE("decode step " << step << ": max |diff| = " << w1 << " (max |logit| " << r1 << ")");
    CHECK(w1 > 0);
    CHECK(w1 <= 0.08f * r1);
  }
}

TEST_CASE(
    "ggml blocks: an op group (one activation quantization, one dispatch) equals its linears") {
  // Backend::linear_group on the CPU runs GGML blocks on the q8 decode path as one pool loop;
  // every row is computed by the same kernel as a single linear(): results are bit-identical.
  // Groups it cannot fuse (K-quants mixed with 32-weight types, T >= 8, a dense member) fall back
  // to one linear() each.
  auto be = make_cpu_backend(2);
  const int64_t K = 512;
  auto blocks = [&](uint32_t ty, int64_t N, uint32_t seed) {
    return make_linear("w", K, N, test::random_ggml_blocks(ty, N, K, seed));
  };
  const std::vector<std::vector<uint32_t>> groups = {
      {3, 8, 6},  // Q4_1, Q8_0, Q5_0 (q, k, v of different widths)
      {12, 14},   // Q4_K, Q6_K
      {2, 2},     // Q4_0 gate, up
      {12, 8},    // a K-quant with a 32-weight type: not fusable, falls back
  };
  for (const auto& types : groups) {
    std::vector<Linear> ls;
    for (size_t i = 0; i < types.size(); ++i)
      ls.push_back(blocks(types[i], int64_t(40 + 24 * i), uint32_t(100 + i + 10 * types[i])));
    ls[0].bias = Tensor::empty(DType::F32, {ls[0].out});
    for (int64_t j = 0; j < ls[0].out; ++j) ls[0].bias.data<float>()[j] = 0.25f * float(j % 7);
    // A dense member makes the group unfusable too.
    for (bool with_dense : {false, true}) {
      std::vector<Linear> g = ls;
      if (with_dense) g.push_back(make_linear("d", K, 9, Dense{Tensor::empty(DType::F32, {9, K})}));
      if (with_dense)
        for (int64_t j = 0; j < 9 * K; ++j)
          std::get<Dense>(g.back().repr).w.data<float>()[j] = float(j % 13) * 0.01f;
      for (int64_t T : {1, 3, 8, 17}) {
        CAPTURE(types.size());
        CAPTURE(with_dense);
        CAPTURE(T);
        std::vector<float> xv = randn(size_t(T * K), uint32_t(T * 31 + types[0]));
        Tensor x = Tensor::empty(DType::F32, {T, K});
        std::copy(xv.begin(), xv.end(), x.data<float>());
        CHECK(test::group_mismatches(*be, g, x) == 0);
      }
    }
  }
  // gate·up + SiLU·mul fused (Backend::linear_swiglu): the same bits as two linears and swiglu.
  set_pool_backoff(false);  // both threads take chunks even while the machine is busy
  for (const auto& types : std::vector<std::vector<uint32_t>>{{3, 3}, {2, 8}, {12, 14}, {12, 8}}) {
    const int64_t F = 200;
    const Linear gate = blocks(types[0], F, 301 + types[0]), up = blocks(types[1], F, 302);
    for (int64_t T : {1, 3, 8, 17}) {
      CAPTURE(types[0]);
      CAPTURE(types[1]);
      CAPTURE(T);
      std::vector<float> xv = randn(size_t(T * K), uint32_t(T * 13 + types[1]));
      Tensor x = Tensor::empty(DType::F32, {T, K});
      std::copy(xv.begin(), xv.end(), x.data<float>());
      const auto [y_same, u_same] = test::swiglu_matches(*be, x, gate, up, F);
      CHECK(y_same);
      CHECK(u_same);
    }
  }
  set_pool_backoff(true);
  // The kernel entry point refuses a group it cannot run as one.
  const Linear a = blocks(12, 16, 1), b = blocks(8, 16, 2);
  std::vector<float> x(K, 1.f), y(32);
  const GgmlGroupItem items[2] = {{&std::get<GgmlBlocks>(a.repr), y.data(), 16, 16},
                                  {&std::get<GgmlBlocks>(b.repr), y.data() + 16, 16, 16}};
  CHECK_THROWS_WITH_AS(ggml_linear_q8_group(items, 2, x.data(), 1, K, K),
                       doctest::Contains("all K-quants or none"), Error);
}

TEST_CASE("ggml blocks: the repacked layout (rows interleaved by 4) gives the same results") {
  // GgmlBlocks::interleave = 4 stores each group of 4 rows block index first. Every reader
  // (dequantize, embedding rows, the f32 path, the scalar q8 reference, save) must see the same
  // matrix: bit-identical to the row layout. The SIMD q8 kernel of the repacked layout
  // (Q4_0 / Q4_1 / Q8_0, q8_rows_x4) shares the reference's codes and integer block sums and
  // differs from it only in f32 summation order; the other types fall back to the reference.
  for (uint32_t ty : ggml_blocks_types()) {
    const std::string tn = ggml_type_name(ty);
    CAPTURE(tn);
    const int64_t QK = int64_t(ggml_block_size(ty));
    for (int64_t K : {QK, QK == 256 ? int64_t(768) : int64_t(160), int64_t(1536)})
      for (int64_t N : {int64_t(4), int64_t(36), int64_t(200)}) {
        CAPTURE(K);
        CAPTURE(N);
        const GgmlBlocks g = test::random_ggml_blocks(ty, N, K, uint32_t(11 + ty + K + N));
        const GgmlBlocks r = ggml_blocks_interleave(g, K, 4);
        CHECK(r.interleave == 4);
        if (K > QK)  // really reordered (one block per row is the same order in both layouts)
          CHECK(std::memcmp(r.blocks.data<uint8_t>(), g.blocks.data<uint8_t>(),
                            size_t(g.blocks.nbytes())) != 0);
        const Linear lg = make_linear("w", K, N, g), lr = make_linear("w", K, N, r);
        const Tensor wg = dequantize_weight(lg), wr = dequantize_weight(lr);
        CHECK(std::memcmp(wg.data<float>(), wr.data<float>(), size_t(wg.nbytes())) == 0);
        const Tensor back = ggml_blocks_row_major(r, K);  // what save() writes
        CHECK(std::memcmp(back.data<uint8_t>(), g.blocks.data<uint8_t>(),
                          size_t(g.blocks.nbytes())) == 0);
        const int32_t ids[3] = {int32_t(N - 1), 0, int32_t(N / 2 + 1) % int32_t(N)};
        std::vector<float> eg(size_t(3 * K)), er(size_t(3 * K));
        ggml_blocks_rows(g, K, ids, 3, eg.data(), K);
        ggml_blocks_rows(r, K, ids, 3, er.data(), K);
        CHECK(eg == er);
        for (int64_t T : {1, 3, 8, 9, 17}) {
          CAPTURE(T);
          const std::vector<float> x = randn(size_t(T * K), uint32_t(T * 7 + ty));
          std::vector<float> a(size_t(T * N)), b(size_t(T * N)), sa(size_t(T * N), 0.f);
          for (int64_t t = 0; t < T; ++t)
            for (int64_t n = 0; n < N; ++n)
              for (int64_t k = 0; k < K; ++k)
                sa[size_t(t * N + n)] +=
                    std::fabs(x[size_t(t * K + k)] * wg.data<float>()[n * K + k]);
          ggml_linear_f32(g, x.data(), T, K, a.data(), N, K, N);
          ggml_linear_f32(r, x.data(), T, K, b.data(), N, K, N);
          CHECK(a == b);
          ggml_linear_q8_ref(g, x.data(), T, K, a.data(), N, K, N);
          ggml_linear_q8_ref(r, x.data(), T, K, b.data(), N, K, N);
          CHECK(a == b);
          ggml_linear_q8(r, x.data(), T, K, b.data(), N, K, N);
          int bad = 0;
          for (size_t i = 0; i < a.size(); ++i)
            bad += !(std::fabs(a[i] - b[i]) <= 1e-5 * sa[i] + 1e-6);
          CHECK(bad == 0);
        }
      }
  }
  // Interleaving needs N a multiple of R, from the row layout; check() rejects a bad factor.
  const GgmlBlocks g = test::random_ggml_blocks(3, 6, 64, 5);
  CHECK_THROWS_WITH_AS(ggml_blocks_interleave(g, 64, 4), doctest::Contains("cannot be interleaved"),
                       Error);
  GgmlBlocks bad = ggml_blocks_interleave(g, 64, 3);
  bad.interleave = 4;
  CHECK_THROWS_WITH_AS(make_linear("w", 64, 6, bad), doctest::Contains("interleaved by 4"), Error);

  // The CPU backend repacks at upload where its kernel reads the layout (AVX-512 VNNI builds:
  // Q4_0 / Q4_1 / Q8_0 with N % 4 == 0); elsewhere weights stay as they are.
  auto be = make_cpu_backend(2);
  const bool vnni = std::string(ggml_linear_isa()) == "avx512-vnni";
  for (uint32_t ty : {2u, 3u, 8u, 6u, 12u}) {
    for (int64_t N : {int64_t(40), int64_t(42)}) {
      Linear l = make_linear("w", 256, N, test::random_ggml_blocks(ty, N, 256, ty + 3));
      be->upload(l);
      const bool want = vnni && (ty == 2 || ty == 3 || ty == 8) && N % 4 == 0;
      CAPTURE(ty);
      CAPTURE(N);
      CHECK(std::get<GgmlBlocks>(l.repr).interleave == (want ? 4 : 1));
      be->upload(l);  // idempotent
      CHECK(std::get<GgmlBlocks>(l.repr).interleave == (want ? 4 : 1));
    }
  }
  // Op groups and the fused gate·up + SiLU·mul on repacked weights: the same bits as one
  // linear() per member (the same row kernel).
  set_pool_backoff(false);
  const int64_t K = 384, F = 96;
  std::vector<Linear> ls;
  for (uint32_t ty : {3u, 8u, 2u}) {
    ls.push_back(make_linear("w", K, F, test::random_ggml_blocks(ty, F, K, ty * 5)));
    be->upload(ls.back());
  }
  for (int64_t T : {1, 2, 5, 8}) {
    CAPTURE(T);
    const std::vector<float> xv = randn(size_t(T * K), uint32_t(T + 99));
    Tensor x = Tensor::empty(DType::F32, {T, K});
    std::copy(xv.begin(), xv.end(), x.data<float>());
    Tensor ya[3] = {be->alloc({T, F}), be->alloc({T, F}), be->alloc({T, F})};
    Tensor* yp[3] = {&ya[0], &ya[1], &ya[2]};
    const Linear* wp[3] = {&ls[0], &ls[1], &ls[2]};
    be->linear_group(yp, wp, 3, x);
    int diff = 0;
    for (int i = 0; i < 3; ++i) {
      Tensor yb = be->alloc({T, F});
      be->linear(yb, x, ls[size_t(i)]);
      diff += std::memcmp(yb.data<float>(), ya[i].data<float>(), size_t(yb.nbytes())) != 0;
    }
    CHECK(diff == 0);
    Tensor y = be->alloc({T, F}), u = be->alloc({T, F}), g2 = be->alloc({T, F}),
           u2 = be->alloc({T, F}), s2 = be->alloc({T, F});
    be->linear_swiglu(y, u, x, ls[0], ls[1]);
    be->linear(g2, x, ls[0]);
    be->linear(u2, x, ls[1]);
    be->swiglu(s2, g2, u2);
    CHECK(std::memcmp(y.data<float>(), s2.data<float>(), size_t(y.nbytes())) == 0);
  }
  set_pool_backoff(true);
}

TEST_CASE("release_mapped_pages: the bytes of a file mapping read back unchanged") {
  test::TempDir dir("pages");
  const std::string path = dir / "release_pages.bin";
  std::vector<uint8_t> data(size_t(3 * 4096 + 100));
  for (size_t i = 0; i < data.size(); ++i) data[i] = uint8_t(i * 7 + 1);
  {
    FILE* f = std::fopen(path.c_str(), "wb");
    REQUIRE(f);
    REQUIRE(std::fwrite(data.data(), 1, data.size(), f) == data.size());
    std::fclose(f);
  }
  auto m = std::make_shared<MmapFile>(path);
  const Tensor t(m, 50, DType::U8, {int64_t(data.size() - 60)});
  release_mapped_pages(t);
  CHECK(std::memcmp(t.data<uint8_t>(), data.data() + 50, data.size() - 60) == 0);
  release_mapped_pages(Tensor::empty(DType::U8, {16}));  // host storage: nothing to do
}
