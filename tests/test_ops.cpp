// CPU backend ops against naive double-precision references written here, on odd sizes.
#include <doctest/doctest.h>

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstring>
#include <random>
#include <tuple>
#include <vector>

#include "engine/backend.h"
#include "engine/half.h"
#include "engine/thread_pool.h"
#include "kernels/cpu/dense.h"
#include "kernels/cpu/prefill_gemm.h"
#include "kernels/cpu/softmax.h"
#include "tests/op_group_check.h"
#include "tests/test_util.h"

using namespace minfer;

namespace {

Tensor randn(std::initializer_list<int64_t> shape, uint64_t seed, float std = 1.f,
             DType dt = DType::F32) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> nd(0.f, std);
  Tensor t = Tensor::empty(dt, shape);
  for (int64_t i = 0; i < t.numel(); ++i) {
    float v = nd(rng);
    if (dt == DType::F32) t.data<float>()[i] = v;
    if (dt == DType::F16) t.data<uint16_t>()[i] = f32_to_f16(v);
    if (dt == DType::BF16) t.data<uint16_t>()[i] = f32_to_bf16(v);
  }
  return t;
}

float max_abs_diff(const float* a, const float* b, int64_t n) {
  float m = 0;
  for (int64_t i = 0; i < n; ++i) m = std::max(m, std::fabs(a[i] - b[i]));
  return m;
}

}  // namespace

TEST_CASE("half: f16 and bf16 conversions are exact and the bulk paths agree with scalar") {
  // Every f16 bit pattern round-trips through f32 (NaNs stay NaN).
  for (uint32_t h = 0; h < 65536; ++h) {
    const float f = f16_to_f32(uint16_t(h));
    if (std::isnan(f)) {
      CHECK(std::isnan(f16_to_f32(f32_to_f16(f))));
      continue;
    }
    REQUIRE(f32_to_f16(f) == h);
  }
  CHECK(f16_to_f32(0x3c00) == 1.0f);
  CHECK(f16_to_f32(0xc000) == -2.0f);
  CHECK(f16_to_f32(0x0001) == std::ldexp(1.0f, -24));         // smallest subnormal
  CHECK(f32_to_f16(65520.f) == 0x7c00);                       // rounds to inf
  CHECK(f32_to_f16(1.0f + std::ldexp(1.0f, -11)) == 0x3c00);  // tie -> even
  CHECK(f32_to_bf16(1.0f) == 0x3f80);
  CHECK(bf16_to_f32(0xc040) == -3.0f);
  CHECK(f32_to_bf16(bits_to_f32(0x3f808000u)) == 0x3f80);  // tie -> even
  CHECK(f32_to_bf16(bits_to_f32(0x3f818000u)) == 0x3f82);

  std::vector<float> src(1003), a(1003), b(1003);
  std::vector<uint16_t> h(1003), h2(1003);
  std::mt19937 rng(1);
  std::normal_distribution<float> nd(0, 100);
  for (auto& v : src) v = nd(rng);
  src[5] = 0.f;
  src[6] = -0.f;
  src[7] = 1e-7f;  // f16 subnormal
  f32_to_f16_n(src.data(), h.data(), src.size());
  for (size_t i = 0; i < src.size(); ++i) CHECK(h[i] == f32_to_f16(src[i]));
  f16_to_f32_n(h.data(), a.data(), h.size());
  for (size_t i = 0; i < src.size(); ++i) CHECK(a[i] == f16_to_f32(h[i]));
  f32_to_bf16_n(src.data(), h2.data(), src.size());
  bf16_to_f32_n(h2.data(), b.data(), h2.size());
  for (size_t i = 0; i < src.size(); ++i) CHECK(b[i] == bf16_to_f32(f32_to_bf16(src[i])));
}

TEST_CASE("ops: dense linear f32/f16/bf16, both layouts, matches the scalar reference") {
  auto be = make_cpu_backend(2);
  for (DType dt : {DType::F32, DType::F16, DType::BF16})
    for (bool tr : {false, true})
      // T = 1..4: the gemv with 4 / 2 / 1 accumulators per row; K = 300: its unrolled loop, one
      // single vector and a scalar tail.
      for (int64_t T : {1, 2, 3, 4, 5, 17})
        for (auto [K, N] : {std::pair<int64_t, int64_t>{37, 29}, {64, 96}, {129, 7}, {300, 13}}) {
          CAPTURE(dtype_name(dt));
          CAPTURE(tr);
          CAPTURE(T);
          CAPTURE_BINDING(K);
          CAPTURE_BINDING(N);
          Tensor w = tr ? randn({K, N}, 7, 0.5f, dt) : randn({N, K}, 7, 0.5f, dt);
          Tensor bias = randn({N}, 8);
          Linear lin = make_dense("w", w, K, N, tr, bias);
          Tensor x = randn({T, K}, 9);
          Tensor y = Tensor::empty(DType::F32, {T, N});
          be->linear(y, x, lin);
          std::vector<float> ref(size_t(T * N));
          dense_linear_ref(w, tr, x.data<float>(), T, ref.data(), K, N);
          for (int64_t t = 0; t < T; ++t)
            for (int64_t n = 0; n < N; ++n) ref[size_t(t * N + n)] += bias.data<float>()[n];
          CHECK(max_abs_diff(y.data<float>(), ref.data(), T * N) < 1e-4f);
        }
}

TEST_CASE("ops: linear rejects mismatched shapes with a clear message") {
  auto be = make_cpu_backend(1);
  Linear lin = make_dense("blk.w", randn({4, 6}, 1), 6, 4);
  Tensor x = randn({2, 5}, 2), y = Tensor::empty(DType::F32, {2, 4});
  CHECK_THROWS_WITH_AS(be->linear(y, x, lin), doctest::Contains("input has 5 features"), Error);
  CHECK_THROWS_WITH_AS(make_dense("w", randn({4, 6}, 1), 4, 6),
                       doctest::Contains("expected shape [6, 4]"), Error);
}

TEST_CASE("ops: norms, activations and softmax match their formulas") {
  auto be = make_cpu_backend(2);
  const int64_t R = 3, C = 45;
  Tensor x = randn({R, C}, 3, 2.f), w = randn({C}, 4), b = randn({C}, 5);
  Tensor y = Tensor::empty(DType::F32, {R, C});
  const float* px = x.data<float>();
  be->layernorm(y, x, w, b, 1e-5f);
  for (int64_t r = 0; r < R; ++r) {
    double m = 0, v = 0;
    for (int64_t c = 0; c < C; ++c) m += px[r * C + c];
    m /= C;
    for (int64_t c = 0; c < C; ++c) v += (px[r * C + c] - m) * (px[r * C + c] - m);
    v /= C;
    for (int64_t c = 0; c < C; ++c) {
      double e =
          (px[r * C + c] - m) / std::sqrt(v + 1e-5) * w.data<float>()[c] + b.data<float>()[c];
      CHECK(y.data<float>()[r * C + c] == doctest::Approx(e).epsilon(1e-5));
    }
  }
  be->rmsnorm(y, x, w, 1e-6f);
  for (int64_t r = 0; r < R; ++r) {
    double ss = 0;
    for (int64_t c = 0; c < C; ++c) ss += double(px[r * C + c]) * px[r * C + c];
    for (int64_t c = 0; c < C; ++c) {
      double e = px[r * C + c] / std::sqrt(ss / C + 1e-6) * w.data<float>()[c];
      CHECK(y.data<float>()[r * C + c] == doctest::Approx(e).epsilon(1e-5));
    }
  }
  be->gelu(y, x, false);
  for (int64_t i = 0; i < R * C; ++i)
    CHECK(y.data<float>()[i] ==
          doctest::Approx(0.5 * px[i] * (1 + std::erf(px[i] / std::sqrt(2.0)))).epsilon(1e-5));
  be->gelu(y, x, true);
  for (int64_t i = 0; i < R * C; ++i) {
    double v = px[i];
    double e = 0.5 * v * (1 + std::tanh(std::sqrt(2 / M_PI) * (v + 0.044715 * v * v * v)));
    CHECK(y.data<float>()[i] == doctest::Approx(e).epsilon(1e-5));
  }
  be->silu(y, x);
  for (int64_t i = 0; i < R * C; ++i)
    CHECK(y.data<float>()[i] ==
          doctest::Approx(px[i] / (1 + std::exp(-double(px[i])))).epsilon(1e-5));
  be->softmax(y, x);
  for (int64_t r = 0; r < R; ++r) {
    double mx = -1e30, s = 0;
    for (int64_t c = 0; c < C; ++c) mx = std::max(mx, double(px[r * C + c]));
    for (int64_t c = 0; c < C; ++c) s += std::exp(px[r * C + c] - mx);
    for (int64_t c = 0; c < C; ++c)
      CHECK(y.data<float>()[r * C + c] ==
            doctest::Approx(std::exp(px[r * C + c] - mx) / s).epsilon(1e-5));
  }
}

TEST_CASE("ops: rope rotates pairs (i, i + D/2) by pos * theta^(-2i/D)") {
  auto be = make_cpu_backend(1);
  const int64_t T = 4, H = 3, D = 8, pos0 = 5;
  const float theta = 500000.f;
  Tensor x = randn({T, H * D}, 11), ref = x.clone();
  be->rope(x, pos0, H, rope_table(theta, D, RopeScaling{}));
  for (int64_t t = 0; t < T; ++t)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t i = 0; i < D / 2; ++i) {
        const double ang = double(pos0 + t) * std::pow(double(theta), -2.0 * double(i) / D);
        const float* r = ref.data<float>() + t * H * D + h * D;
        const double a = r[i], b = r[i + D / 2];
        const float* o = x.data<float>() + t * H * D + h * D;
        CHECK(o[i] == doctest::Approx(a * std::cos(ang) - b * std::sin(ang)).epsilon(1e-4));
        CHECK(o[i + D / 2] == doctest::Approx(b * std::cos(ang) + a * std::sin(ang)).epsilon(1e-4));
      }
}

TEST_CASE("ops: rope_kv equals rope, rope and the two cache copies, bit for bit") {
  // The fused op rotates q in place and writes the rotated k straight into the cache slice
  // (views with row strides, as the LLaMA forward passes them: q, k, v columns of one qkv row).
  for (int threads : {1, 2}) {
    auto be = make_cpu_backend(threads);
    const int64_t H = 6, Hkv = 2, D = 16, pos0 = 9;
    const RopeTable rt = rope_table(10000.f, D, RopeScaling{});
    for (int64_t T : {1, 3, 70}) {
      CAPTURE(threads);
      CAPTURE(T);
      const int64_t qd = H * D, kvd = Hkv * D;
      Tensor qkv = randn({T, qd + 2 * kvd}, uint64_t(21 + T)), qkv2 = qkv.clone();
      Tensor kc = randn({pos0 + T + 4, kvd}, 5), vc = randn({pos0 + T + 4, kvd}, 6);
      Tensor kc2 = kc.clone(), vc2 = vc.clone();
      Tensor q = qkv.slice(1, 0, qd), k = qkv.slice(1, qd, kvd), v = qkv.slice(1, qd + kvd, kvd);
      Tensor kn = kc.slice(0, pos0, T), vn = vc.slice(0, pos0, T);
      be->rope_kv(q, k, v, kn, vn, pos0, H, Hkv, rt);
      Tensor q2 = qkv2.slice(1, 0, qd), k2 = qkv2.slice(1, qd, kvd);
      Tensor v2 = qkv2.slice(1, qd + kvd, kvd);
      Tensor kn2 = kc2.slice(0, pos0, T), vn2 = vc2.slice(0, pos0, T);
      be->rope(q2, pos0, H, rt);
      be->rope(k2, pos0, Hkv, rt);
      be->copy(kn2, k2);
      be->copy(vn2, v2);
      CHECK(std::memcmp(kc.raw(), kc2.raw(), kc.nbytes()) == 0);  // untouched rows included
      CHECK(std::memcmp(vc.raw(), vc2.raw(), vc.nbytes()) == 0);
      int qdiff = 0;
      for (int64_t t = 0; t < T; ++t)
        qdiff += std::memcmp(qkv.data<float>() + t * (qd + 2 * kvd),
                             qkv2.data<float>() + t * (qd + 2 * kvd), size_t(qd) * 4) != 0;
      CHECK(qdiff == 0);
    }
    // Mismatched shapes are refused by name.
    Tensor q = randn({2, H * D}, 1), k = randn({2, Hkv * D}, 2), v = randn({2, Hkv * D}, 3);
    Tensor kd = randn({3, Hkv * D}, 4), vd = randn({2, Hkv * D}, 5);
    CHECK_THROWS_WITH_AS(be->rope_kv(q, k, v, kd, vd, 0, H, Hkv, rt), doctest::Contains("rope_kv"),
                         Error);
  }
}

namespace {
// Naive attention in double: out[b, t, h] = Σ_j softmax_j(q·k_j * scale + mask) v_j.
std::vector<float> naive_attention(const Tensor& q, const Tensor& k, const Tensor& v,
                                   const AttentionArgs& a) {
  const int64_t H = a.n_heads, Hkv = a.n_kv_heads, D = a.head_dim, B = a.batch;
  const int64_t T = q.dim(0) / B, S = k.dim(0) / B;
  std::vector<float> out(size_t(q.dim(0) * H * D));
  const float* Q = q.data<float>();
  const float* K = k.data<float>();
  const float* V = v.data<float>();
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < T; ++t)
      for (int64_t h = 0; h < H; ++h) {
        const int64_t kh = h / (H / Hkv);
        std::vector<double> s(size_t(S), -INFINITY);
        double mx = -INFINITY;
        for (int64_t j = 0; j < S; ++j) {
          if (a.causal && j > a.pos0 + t) continue;
          if (a.causal && a.window > 0 && j <= a.pos0 + t - a.window) continue;
          if (a.key_mask && a.key_mask[b * S + j] == 0) continue;
          double d = 0;
          for (int64_t e = 0; e < D; ++e)
            d += double(Q[(b * T + t) * H * D + h * D + e]) * K[(b * S + j) * Hkv * D + kh * D + e];
          d *= a.scale > 0 ? a.scale : 1 / std::sqrt(double(D));
          if (a.softcap > 0) d = a.softcap * std::tanh(d / a.softcap);
          s[size_t(j)] = d;
          mx = std::max(mx, s[size_t(j)]);
        }
        double z = 0;
        for (auto& e : s) z += (e = std::isinf(e) ? 0 : std::exp(e - mx));
        if (z == 0) z = 1;  // every key masked: the row attends to nothing (zeros)
        for (int64_t e = 0; e < D; ++e) {
          double acc = 0;
          for (int64_t j = 0; j < S; ++j)
            acc += s[size_t(j)] / z * V[(b * S + j) * Hkv * D + kh * D + e];
          out[size_t((b * T + t) * H * D + h * D + e)] = float(acc);
        }
      }
  return out;
}

// One attention test configuration, and its AttentionArgs over the key mask (used when c.mask).
struct AttnCase {
  const char* name;
  int64_t H, Hkv, D, B, T, pos0, window;
  bool causal, mask;
  float softcap;
};
AttentionArgs attn_args(const AttnCase& c, const std::vector<int32_t>& mask) {
  AttentionArgs a{c.H, c.Hkv, c.D, c.B, c.pos0, c.causal, c.mask ? mask.data() : nullptr, 0.f};
  a.window = c.window;
  a.softcap = c.softcap;
  return a;
}
}  // namespace

TEST_CASE("ops: attention (causal + cache offset + GQA, and bidirectional with padding)") {
  auto be = make_cpu_backend(2);
  SUBCASE("causal GQA with earlier positions in the cache") {
    const int64_t H = 6, Hkv = 2, D = 5, T = 3, pos0 = 4, S = pos0 + T;
    AttentionArgs a{H, Hkv, D, 1, pos0, true, nullptr, 0.f};
    Tensor q = randn({T, H * D}, 1), k = randn({S, Hkv * D}, 2), v = randn({S, Hkv * D}, 3);
    Tensor out = Tensor::empty(DType::F32, {T, H * D});
    be->attention(out, q, k, v, a);
    auto ref = naive_attention(q, k, v, a);
    CHECK(max_abs_diff(out.data<float>(), ref.data(), T * H * D) < 1e-5f);
  }
  SUBCASE("bidirectional batch with a padding mask") {
    const int64_t H = 4, D = 7, B = 3, T = 5;
    std::vector<int32_t> mask = {1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 1, 1, 1, 1, 0};
    AttentionArgs a{H, H, D, B, 0, false, mask.data(), 0.f};
    Tensor q = randn({B * T, H * D}, 4), k = randn({B * T, H * D}, 5), v = randn({B * T, H * D}, 6);
    Tensor out = Tensor::empty(DType::F32, {B * T, H * D});
    be->attention(out, q, k, v, a);
    auto ref = naive_attention(q, k, v, a);
    CHECK(max_abs_diff(out.data<float>(), ref.data(), B * T * H * D) < 1e-5f);
  }
}

TEST_CASE("softmax: the vectorized exp is within 4 ulp of std::exp, 0 below ln(FLT_MIN)") {
  // Every path at once: exp_shift_sum runs the SIMD lanes of this build and the scalar tail.
  std::vector<float> x;
  for (float v = -120.f; v <= 89.f; v += 0.0137f) x.push_back(v);
  for (float v : {0.f, -0.f, -1e-30f, 1e-30f, -87.33f, -87.34f, -87.3365f, 88.72f, 88.73f, -1e6f,
                  -INFINITY, INFINITY, -3.4e38f})
    x.push_back(v);
  std::vector<float> y(x.size());
  exp_shift_sum(x.data(), y.data(), int64_t(x.size()), 0.f);
  int bad = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    CAPTURE(x[i]);
    const double ref = std::exp(double(x[i]));
    const float e = exp_f32(x[i]);  // SIMD lanes and the scalar twin: the same operations
    CHECK(std::memcmp(&y[i], &e, 4) == 0);
    if (ref < 1.0001 * double(FLT_MIN)) {  // the denormal range and -inf: 0 (at most FLT_MIN off)
      CHECK(y[i] >= 0.f);
      CHECK(y[i] <= 2 * FLT_MIN);
    } else if (ref > double(FLT_MAX)) {
      CHECK(y[i] == INFINITY);
    } else {
      const double ulp = std::nextafter(float(ref), INFINITY) - float(ref);
      if (std::fabs(double(y[i]) - ref) > 4 * ulp) ++bad;
    }
  }
  CHECK(bad == 0);
  CHECK(exp_f32(-INFINITY) == 0.f);
  CHECK(std::isnan(exp_f32(NAN)));
  float nan_row[20];
  std::fill(nan_row, nan_row + 20, NAN);
  exp_shift_sum(nan_row, nan_row, 20, 0.f);
  for (float v : nan_row) CHECK(std::isnan(v));
  // softmax_row: sums to 1, a row of -inf gives zeros.
  std::vector<float> r = {1.f, -INFINITY, 3.f, 0.5f, -2.f, 7.f, 7.f, -INFINITY, 0.f, 1.f, 2.f};
  softmax_row(r.data(), r.data(), int64_t(r.size()));
  double sum = 0;
  for (float v : r) sum += v;
  CHECK(sum == doctest::Approx(1.0).epsilon(1e-6));
  CHECK(r[1] == 0.f);
  std::vector<float> masked(19, -INFINITY);
  softmax_row(masked.data(), masked.data(), 19);
  for (float v : masked) CHECK(v == 0.f);
}

TEST_CASE("ops: prefill attention in query blocks matches the reference and the per-head path") {
  // T > 64 spans several query blocks; sizes are odd so blocks end mid-way.
  const AttnCase cases[] = {
      {"causal GQA", 6, 2, 16, 1, 150, 0, 0, true, false, 0.f},
      {"causal GQA after a cache", 4, 2, 8, 1, 133, 37, 0, true, false, 0.f},
      {"causal sliding window + softcap", 3, 1, 8, 1, 141, 5, 40, true, false, 30.f},
      {"bidirectional batch with padding", 2, 2, 7, 2, 70, 0, 0, false, true, 0.f},
  };
  for (const AttnCase& c : cases) {
    CAPTURE(c.name);
    const int64_t S = c.pos0 + c.T;
    std::vector<int32_t> mask;
    if (c.mask)
      for (int64_t i = 0; i < c.B * S; ++i) mask.push_back(i % S < S - 9 - 5 * (i / S) ? 1 : 0);
    const AttentionArgs a = attn_args(c, mask);
    Tensor q = randn({c.B * c.T, c.H * c.D}, 11), k = randn({c.B * S, c.Hkv * c.D}, 12),
           v = randn({c.B * S, c.Hkv * c.D}, 13);
    const std::vector<float> ref = naive_attention(q, k, v, a);
    const int64_t n = c.B * c.T * c.H * c.D;
    std::vector<float> blocks1;
    for (int threads : {1, 2, 3}) {
      CAPTURE(threads);
      auto be = make_cpu_backend(threads);
      Tensor out = Tensor::empty(DType::F32, {c.B * c.T, c.H * c.D});
      set_prefill_attention_path(PrefillAttention::Blocks);
      be->attention(out, q, k, v, a);
      CHECK(max_abs_diff(out.data<float>(), ref.data(), n) < 2e-5f);
      if (threads == 1) blocks1.assign(out.data<float>(), out.data<float>() + n);
      // Each block is computed by the same calls whichever thread runs it.
      CHECK(std::memcmp(out.data<float>(), blocks1.data(), size_t(n) * 4) == 0);
      if (c.window == 0) {  // the per-head path predates windows in prefill blocks: compare
        Tensor old = Tensor::empty(DType::F32, {c.B * c.T, c.H * c.D});
        set_prefill_attention_path(PrefillAttention::Heads);
        be->attention(old, q, k, v, a);
        CHECK(max_abs_diff(out.data<float>(), old.data<float>(), n) < 2e-5f);
      }
      set_prefill_attention_path(PrefillAttention::Blocks);
    }
  }
}

TEST_CASE(
    "ops: decode attention (split over key chunks) matches the reference on every thread count") {
  // T <= 4 query rows take attention_decode: keys in chunks of kDecodeKeyChunk merged by their
  // maxima. S spans several chunks and ends mid-chunk; D = 64 and 24 run the 8-key score blocks
  // and register sums, D = 20 adds 4 leftover columns and D = 5 only the plain loops. Windows,
  // soft-capping, a padding mask that empties whole chunks, and a window + cache that leaves a
  // row no key (zeros).
  const AttnCase cases[] = {
      {"one token, GQA 3:1, D 64", 9, 3, 64, 1, 1, 300, 0, true, false, 0.f},
      {"four tokens, GQA 2:1, D 20", 4, 2, 20, 1, 4, 200, 0, true, false, 0.f},
      {"MQA, D 24, sliding window + softcap", 6, 1, 24, 1, 3, 250, 70, true, false, 30.f},
      {"batch of 2 with padding, D 5", 2, 2, 5, 2, 2, 150, 0, false, true, 0.f},
      {"one key chunk, D 64", 2, 1, 64, 1, 2, 7, 0, true, false, 0.f},
  };
  for (const AttnCase& c : cases) {
    CAPTURE(c.name);
    const int64_t S = c.pos0 + c.T;
    std::vector<int32_t> mask;
    if (c.mask)  // sequence 1 masks keys 0..99: whole chunks of it see nothing
      for (int64_t i = 0; i < c.B * S; ++i) mask.push_back(i / S == 1 && i % S < 100 ? 0 : 1);
    const AttentionArgs a = attn_args(c, mask);
    Tensor q = randn({c.B * c.T, c.H * c.D}, 21), k = randn({c.B * S, c.Hkv * c.D}, 22),
           v = randn({c.B * S, c.Hkv * c.D}, 23);
    const std::vector<float> ref = naive_attention(q, k, v, a);
    const int64_t n = c.B * c.T * c.H * c.D;
    std::vector<float> one;
    for (int threads : {1, 2, 3}) {
      CAPTURE(threads);
      auto be = make_cpu_backend(threads);
      set_pool_backoff(false);
      Tensor out = Tensor::empty(DType::F32, {c.B * c.T, c.H * c.D});
      be->attention(out, q, k, v, a);
      CHECK(max_abs_diff(out.data<float>(), ref.data(), n) < 2e-5f);
      if (threads == 1) one.assign(out.data<float>(), out.data<float>() + n);
      CHECK(std::memcmp(out.data<float>(), one.data(), size_t(n) * 4) == 0);
    }
  }
  // A window shorter than the tokens' distance to every cached key of a masked sequence: the row
  // sees no key and attends to nothing.
  std::vector<int32_t> mask(40, 1);
  for (int i = 0; i < 40; ++i) mask[size_t(i)] = i < 39 ? 1 : 0;
  AttentionArgs a{2, 1, 8, 1, 39, true, mask.data(), 0.f};
  a.window = 1;  // token 39 sees only key 39, which the mask removes
  Tensor q = randn({1, 16}, 31), k = randn({40, 8}, 32), v = randn({40, 8}, 33);
  Tensor out = Tensor::empty(DType::F32, {1, 16});
  make_cpu_backend(2)->attention(out, q, k, v, a);
  for (int i = 0; i < 16; ++i) CHECK(out.data<float>()[i] == 0.f);
}

TEST_CASE("ops: decode attention gives a query head the same bits alone and beside its GQA group") {
  // attention_decode scores and sums the heads of a kv head together (up to 4 at a time, so 5 and
  // 9 heads per kv head split into passes of 4 + 1 and 4 + 4 + 1); each head's bits must be those
  // of the same head run alone (H = Hkv = 1) on its kv head's keys and values. D = 40 leaves a
  // partial block of value columns for every group size, S = 77 a partial chunk and key block.
  auto be = make_cpu_backend(2);
  for (const int64_t G : {2, 3, 4, 5, 9}) {
    CAPTURE(G);
    const int64_t Hkv = 2, H = G * Hkv, D = 40, T = 2, S = 77;
    const AttentionArgs a{H, Hkv, D, 1, S - T, true, nullptr, 0.f};
    Tensor q = randn({T, H * D}, 41), k = randn({S, Hkv * D}, 42), v = randn({S, Hkv * D}, 43);
    Tensor out = Tensor::empty(DType::F32, {T, H * D});
    be->attention(out, q, k, v, a);
    const AttentionArgs one{1, 1, D, 1, S - T, true, nullptr, 0.f};
    for (int64_t h = 0; h < H; ++h) {
      CAPTURE(h);
      const int64_t kh = h / G;
      Tensor qh = Tensor::empty(DType::F32, {T, D}), oh = Tensor::empty(DType::F32, {T, D});
      Tensor kk = Tensor::empty(DType::F32, {S, D}), vk = Tensor::empty(DType::F32, {S, D});
      for (int64_t t = 0; t < T; ++t)
        std::memcpy(qh.data<float>() + t * D, q.data<float>() + t * H * D + h * D, size_t(D) * 4);
      for (int64_t j = 0; j < S; ++j) {
        std::memcpy(kk.data<float>() + j * D, k.data<float>() + j * Hkv * D + kh * D,
                    size_t(D) * 4);
        std::memcpy(vk.data<float>() + j * D, v.data<float>() + j * Hkv * D + kh * D,
                    size_t(D) * 4);
      }
      be->attention(oh, qh, kk, vk, one);
      bool same = true;
      for (int64_t t = 0; t < T; ++t)
        same = same && std::memcmp(oh.data<float>() + t * D, out.data<float>() + t * H * D + h * D,
                                   size_t(D) * 4) == 0;
      CHECK(same);
    }
  }
}

namespace {
// An F16 copy of an F32 [rows, cols] tensor (rounded to nearest even) and the F32 tensor of
// exactly those rounded values.
std::pair<Tensor, Tensor> f16_and_rounded(const Tensor& x) {
  Tensor h = Tensor::empty(DType::F16, {x.dim(0), x.dim(1)});
  Tensor r = Tensor::empty(DType::F32, {x.dim(0), x.dim(1)});
  uint16_t* hp = static_cast<uint16_t*>(h.raw());
  for (int64_t i = 0; i < x.numel(); ++i) {
    hp[i] = f32_to_f16(x.data<float>()[i]);
    r.data<float>()[i] = f16_to_f32(hp[i]);
  }
  return {h, r};
}

// Attention of q over (k1, v1) and over (k2, v2), the same values in other storage, gives the
// same bits on both prefill paths (and on the decode path where T <= 4).
void check_same_attention_bits(Backend& be, const Tensor& q, const Tensor& k1, const Tensor& v1,
                               const Tensor& k2, const Tensor& v2, const AttentionArgs& a) {
  Tensor o1 = Tensor::empty(DType::F32, {q.dim(0), q.dim(1)}), o2 = o1.clone();
  for (PrefillAttention path : {PrefillAttention::Blocks, PrefillAttention::Heads}) {
    set_prefill_attention_path(path);
    be.attention(o1, q, k1, v1, a);
    be.attention(o2, q, k2, v2, a);
    CHECK(std::memcmp(o1.raw(), o2.raw(), o1.nbytes()) == 0);
  }
  set_prefill_attention_path(PrefillAttention::Blocks);
}
}  // namespace

TEST_CASE("ops: F16 KV-cache writes store the F32 path's values rounded; mixed dtypes refused") {
  // (Reads: "KV caches in F16 and head-major..." below.)
  auto be = make_cpu_backend(2);
  {  // A cache of mixed dtypes is refused by name.
    AttentionArgs a{4, 2, 20, 1, 70, true, nullptr, 0.f};
    Tensor q = randn({3, 80}, 41), k = randn({73, 40}, 42), v = randn({73, 40}, 43);
    Tensor o16 = Tensor::empty(DType::F32, {3, 80});
    CHECK_THROWS_WITH_AS(
        be->attention(o16, q, f16_and_rounded(k).first, f16_and_rounded(v).second, a),
        doctest::Contains("attention v"), Error);
  }
  // Cache writes: rope_kv and copy into F16 slices store the F32 path's values rounded.
  const int64_t H = 6, Hkv = 2, D = 16, pos0 = 5, T = 3, qd = H * D, kvd = Hkv * D;
  const RopeTable rt = rope_table(10000.f, D, RopeScaling{});
  Tensor qkv = randn({T, qd + 2 * kvd}, 44), qkv2 = qkv.clone();
  Tensor kc = Tensor::empty(DType::F16, {pos0 + T, kvd}), vc = kc.clone();
  Tensor kf = randn({pos0 + T, kvd}, 45), vf = randn({pos0 + T, kvd}, 46);
  Tensor q = qkv.slice(1, 0, qd), k = qkv.slice(1, qd, kvd), v = qkv.slice(1, qd + kvd, kvd);
  Tensor q2 = qkv2.slice(1, 0, qd), k2 = qkv2.slice(1, qd, kvd), v2 = qkv2.slice(1, qd + kvd, kvd);
  Tensor kn = kc.slice(0, pos0, T), vn = vc.slice(0, pos0, T);
  Tensor kfn = kf.slice(0, pos0, T), vfn = vf.slice(0, pos0, T);
  be->rope_kv(q, k, v, kn, vn, pos0, H, Hkv, rt);
  be->rope_kv(q2, k2, v2, kfn, vfn, pos0, H, Hkv, rt);
  int bad = 0;
  for (int64_t t = 0; t < T; ++t)
    for (int64_t i = 0; i < kvd; ++i) {
      const int64_t e = (pos0 + t) * kvd + i;
      bad += static_cast<const uint16_t*>(kc.raw())[e] != f32_to_f16(kf.data<float>()[e]);
      bad += static_cast<const uint16_t*>(vc.raw())[e] != f32_to_f16(vf.data<float>()[e]);
    }
  CHECK(bad == 0);
  for (int64_t t = 0; t < T; ++t)  // q rotated in place as with an F32 cache
    CHECK(std::memcmp(qkv.data<float>() + t * (qd + 2 * kvd),
                      qkv2.data<float>() + t * (qd + 2 * kvd), size_t(qd) * 4) == 0);
  Tensor src = randn({2, kvd}, 47), dst = Tensor::empty(DType::F16, {2, kvd});
  be->copy(dst, src);
  for (int64_t i = 0; i < 2 * kvd; ++i)
    CHECK(static_cast<const uint16_t*>(dst.raw())[i] == f32_to_f16(src.data<float>()[i]));
}

namespace {
// The rows [S, Hkv*D] of a KV cache (F32, or F16 bits where dt is F16: the values rounded) placed
// in a head-major cache [Hkv, cap, D] of capacity cap > S (so the head stride is not S*D), and the
// [Hkv, S, D] view of its first S positions, as Model::new_state and kv_positions make them.
Tensor head_major_view(const Tensor& rows, int64_t Hkv, int64_t D, int64_t cap, DType dt) {
  const int64_t S = rows.dim(0);
  Tensor c = Tensor::empty(dt, {Hkv, cap, D});
  std::memset(c.raw(), 0xff, c.nbytes());  // NaN everywhere past S: reading it would show
  for (int64_t h = 0; h < Hkv; ++h)
    for (int64_t j = 0; j < S; ++j)
      for (int64_t d = 0; d < D; ++d) {
        const float x = rows.data<float>()[j * Hkv * D + h * D + d];
        const int64_t e = (h * cap + j) * D + d;
        if (dt == DType::F16)
          static_cast<uint16_t*>(c.raw())[e] = f32_to_f16(x);
        else
          c.data<float>()[e] = x;
      }
  return c.slice(1, 0, S);
}
}  // namespace

TEST_CASE("ops: KV caches in F16 and head-major give the bits of the F32 row cache") {
  // fp16 -> f32 is exact, so an F16 cache (decode: F16C loads or the scalar widening; prefill: the
  // rows widened once) must reproduce the arithmetic of an F32 cache holding the rounded values
  // bit for bit. The CPU backend's caches are [Hkv, max_ctx, D] (kv_cache_head_major): one KV
  // head's keys one contiguous run; attention over such views must do the row cache's arithmetic
  // exactly (decode with 1 and 3 tokens, both prefill paths, F32 and F16), and the writes (rope_kv,
  // copy) must store exactly what they store in rows.
  auto be = make_cpu_backend(2);
  REQUIRE(be->kv_cache_head_major());
  struct Case {
    int64_t H, Hkv, D, T, pos0;
  };
  for (DType dt : {DType::F32, DType::F16})
    for (const Case& c : {Case{9, 3, 64, 1, 300}, Case{4, 2, 20, 3, 70}, Case{2, 1, 5, 2, 40},
                          Case{6, 2, 16, 70, 9}}) {
      CAPTURE(dtype_name(dt));
      CAPTURE(c.D);
      CAPTURE(c.T);
      const int64_t S = c.pos0 + c.T;
      AttentionArgs a{c.H, c.Hkv, c.D, 1, c.pos0, true, nullptr, 0.f};
      Tensor q = randn({c.T, c.H * c.D}, 51), k = randn({S, c.Hkv * c.D}, 52),
             v = randn({S, c.Hkv * c.D}, 53);
      Tensor kr = k, vr = v;
      if (dt == DType::F16) {
        auto [kh16, kround] = f16_and_rounded(k);
        auto [vh16, vround] = f16_and_rounded(v);
        check_same_attention_bits(*be, q, kh16, vh16, kround, vround, a);
        kr = kh16;
        vr = vh16;
      }
      Tensor kh = head_major_view(k, c.Hkv, c.D, S + 13, dt);
      Tensor vh = head_major_view(v, c.Hkv, c.D, S + 13, dt);
      check_same_attention_bits(*be, q, kr, vr, kh, vh, a);
    }
  // Writes: rope_kv (F32: rotated k written straight into the cache; F16: rope, rope, copy) and
  // copy, into head-major slices at positions pos0.. of a cache of capacity 11.
  const int64_t H = 6, Hkv = 2, D = 16, pos0 = 5, T = 3, cap = 11, qd = H * D, kvd = Hkv * D;
  const RopeTable rt = rope_table(10000.f, D, RopeScaling{});
  for (DType dt : {DType::F32, DType::F16}) {
    CAPTURE(dtype_name(dt));
    Tensor qkv = randn({T, qd + 2 * kvd}, 54), qkv2 = qkv.clone();
    Tensor krow = Tensor::empty(dt, {cap, kvd}), vrow = krow.clone();
    Tensor khm = Tensor::empty(dt, {Hkv, cap, D}), vhm = khm.clone();
    Tensor q = qkv.slice(1, 0, qd), k = qkv.slice(1, qd, kvd), v = qkv.slice(1, qd + kvd, kvd);
    Tensor q2 = qkv2.slice(1, 0, qd), k2 = qkv2.slice(1, qd, kvd),
           v2 = qkv2.slice(1, qd + kvd, kvd);
    Tensor kn = krow.slice(0, pos0, T), vn = vrow.slice(0, pos0, T);
    Tensor khn = khm.slice(1, pos0, T), vhn = vhm.slice(1, pos0, T);
    be->rope_kv(q, k, v, kn, vn, pos0, H, Hkv, rt);
    be->rope_kv(q2, k2, v2, khn, vhn, pos0, H, Hkv, rt);
    const size_t es = dt == DType::F16 ? 2 : 4;
    int bad = 0;
    for (int64_t h = 0; h < Hkv; ++h)
      for (int64_t t = pos0; t < pos0 + T; ++t) {
        const size_t row = size_t(t * kvd + h * D) * es, hm = size_t((h * cap + t) * D) * es;
        bad += std::memcmp(static_cast<const char*>(krow.raw()) + row,
                           static_cast<const char*>(khm.raw()) + hm, size_t(D) * es) != 0;
        bad += std::memcmp(static_cast<const char*>(vrow.raw()) + row,
                           static_cast<const char*>(vhm.raw()) + hm, size_t(D) * es) != 0;
      }
    CHECK(bad == 0);
    CHECK(std::memcmp(q.raw(), q2.raw(), size_t(qd) * 4) == 0);  // q rotated alike (row 0)
  }
  // Refused by name: a head-major view with batch 2, k and v in different layouts, a last dim
  // that is not the head dim, and a write whose rows do not fill the slice.
  Tensor q = randn({2, 2 * 8}, 55), k = randn({20, 8}, 56);
  Tensor kh = head_major_view(k, 1, 8, 24, DType::F32), vh = kh;
  Tensor out = Tensor::empty(DType::F32, {2, 16});
  AttentionArgs b2{2, 1, 8, 2, 0, false, nullptr, 0.f};
  CHECK_THROWS_WITH_AS(be->attention(out, q, kh, vh, b2), doctest::Contains("head-major"), Error);
  AttentionArgs a{2, 1, 8, 1, 18, true, nullptr, 0.f};
  CHECK_THROWS_WITH_AS(be->attention(out, q, kh, k, a), doctest::Contains("head-major"), Error);
  Tensor wide = head_major_view(randn({20, 8}, 57), 2, 4, 24, DType::F32);
  CHECK_THROWS_WITH_AS(be->attention(out, q, wide, wide, a), doctest::Contains("head-major KV"),
                       Error);
  Tensor dst = Tensor::empty(DType::F32, {1, 24, 8}).slice(1, 0, 3);
  CHECK_THROWS_WITH_AS(be->copy(dst, randn({2, 8}, 58)), doctest::Contains("head-major cache"),
                       Error);
}

TEST_CASE(
    "ops: f32 / fp16 / bf16 op groups and the fused gate·up + SiLU·mul: one dispatch, the same "
    "bits") {
  // At decode (T <= 4) the CPU backend runs a group of float matrices (q·k·v) as one pool loop over
  // all their rows, and gate·up + SiLU·mul as one loop, each row by dense_linear's own gemv: the
  // results must be the separate ops' bits for every dtype mix, T and thread count. T = 5, a
  // transposed member and a biased gate take the separate ops (same bits trivially).
  const int64_t K = 576, F = 300;
  set_pool_backoff(false);  // every thread takes chunks even while the machine is busy
  for (int threads : {1, 2, 3}) {
    auto be = make_cpu_backend(threads);
    for (DType dt : {DType::F32, DType::F16, DType::BF16}) {
      const DType dt2 = dt == DType::F32 ? DType::F16 : DType::F32;  // a second dtype in the group
      std::vector<Linear> g;
      g.push_back(make_dense("q", randn({200, K}, 61, 0.5f, dt), K, 200));
      g.push_back(make_dense("k", randn({128, K}, 62, 0.5f, dt2), K, 128));
      g.push_back(make_dense("v", randn({130, K}, 63, 0.5f, dt), K, 130));
      g[0].bias = randn({200}, 64);
      const Linear gate = make_dense("gate", randn({F, K}, 65, 0.5f, dt), K, F);
      const Linear up = make_dense("up", randn({F, K}, 66, 0.5f, dt), K, F);
      for (int64_t T : {1, 2, 4, 5}) {
        CAPTURE(threads);
        CAPTURE(dtype_name(dt));
        CAPTURE(T);
        Tensor x = randn({T, K}, uint64_t(67 + T));
        CHECK(test::group_mismatches(*be, g, x) == 0);
        const std::pair<bool, bool> sw = test::swiglu_matches(*be, x, gate, up, F);
        CHECK(sw.first);
        CHECK(sw.second);
        if (threads > 1 && T <= 4) {  // one pool dispatch each (separately: 3 and 2, every
                                      // member being large enough for several chunks)
          std::vector<Tensor> ys;
          std::vector<Tensor*> yp;
          std::vector<const Linear*> wp;
          for (const Linear& l : g) {
            ys.push_back(be->alloc({T, l.out}));
            wp.push_back(&l);
          }
          for (Tensor& y : ys) yp.push_back(&y);
          int64_t d0 = pool_stats().dispatches;
          be->linear_group(yp.data(), wp.data(), 3, x);
          CHECK(pool_stats().dispatches - d0 == 1);
          Tensor y = be->alloc({T, F}), u = be->alloc({T, F});
          d0 = pool_stats().dispatches;
          be->linear_swiglu(y, u, x, gate, up);
          CHECK(pool_stats().dispatches - d0 == 1);
        }
      }
    }
  }
  set_pool_backoff(true);
  // Declined: a transposed member, a biased gate (the separate ops, still the same bits).
  auto be = make_cpu_backend(2);
  std::vector<Linear> g;
  g.push_back(make_dense("q", randn({40, K}, 71), K, 40));
  Tensor wt = randn({K, 30}, 72);
  g.push_back(make_dense("t", wt, K, 30, true));
  Tensor x = randn({1, K}, 73);
  CHECK(test::group_mismatches(*be, g, x) == 0);
  Linear gate = make_dense("gate", randn({F, K}, 74), K, F);
  gate.bias = randn({F}, 75);
  const std::pair<bool, bool> sw =
      test::swiglu_matches(*be, x, gate, make_dense("up", randn({F, K}, 76), K, F), F);
  CHECK(sw.first);
  CHECK(sw.second);
}

// The load back-off lets fewer threads take part when other processes keep the cores busy; the
// results must not change with it (a model saved and reloaded on a busy machine must give the same
// logits as the one in memory). Bits compared, dense f32 (column tiles) and f16 (dequantized
// tiles).
TEST_CASE("ops: prefill GEMMs give the same bits whatever number of threads the load leaves") {
  for (DType dt : {DType::F32, DType::F16})
    for (auto [T, K, N] : {std::tuple<int64_t, int64_t, int64_t>{37, 64, 64},
                           {24, 70, 203},
                           {9, 576, 193},
                           {16, 32, 100}}) {
      CAPTURE(dtype_name(dt));
      CAPTURE_BINDING(T);
      CAPTURE_BINDING(K);
      CAPTURE_BINDING(N);
      const Linear lin = make_dense("w", randn({N, K}, 31, 0.5f, dt), K, N, false);
      Tensor x = randn({T, K}, 32);
      auto be = make_cpu_backend(3);
      set_prefill_gemm_path(PrefillGemm::Tiles);
      Tensor all = Tensor::empty(DType::F32, {T, N});
      be->linear(all, x, lin);
      for (int active : {1, 2}) {
        CAPTURE(active);
        pool_detail::pin_active_for_testing(active);
        REQUIRE(pool_active_threads() == active);
        Tensor y = Tensor::empty(DType::F32, {T, N});
        be->linear(y, x, lin);
        pool_detail::pin_active_for_testing(0);
        CHECK(std::memcmp(y.data<float>(), all.data<float>(), size_t(T * N) * 4) == 0);
      }
    }
}

// Tiles of converted / dequantized rows (F16, BF16, quantized formats): one per thread where it
// fits in kPrefillTileBytes (2 MB of f32), so x is packed as few times as by the f32 column tiles
// and the threads get equal work; more where not. Expected counts worked out by hand.
TEST_CASE("ops: prefill weight tiles are one per thread for SmolLM2's shapes, equal shares else") {
  auto tiles = [](int64_t N, int64_t K, int threads) {
    const int64_t rows = prefill_tile_rows(N, K, threads);
    CHECK(rows % 16 == 0);
    CHECK(rows * K * 4 <= kPrefillTileBytes);
    return (N + rows - 1) / rows;
  };
  // SmolLM2-135M on 2 threads: q / o 576 x 576, k / v 192 x 576, gate / up 1536 x 576 (768 rows
  // of 2304 B = 1.77 MB per thread), down 576 x 1536 (288 rows of 6144 B = 1.77 MB).
  for (auto [N, K] : {std::pair<int64_t, int64_t>{576, 576}, {192, 576}, {1536, 576}, {576, 1536}})
    CHECK(tiles(N, K, 2) == 2);
  CHECK(prefill_tile_rows(576, 576, 2) == 288);
  CHECK(tiles(1536, 576, 3) == 3);
  CHECK(prefill_tile_rows(1536, 576, 3) == 512);
  // Its tied head, 49152 x 576: 24576 rows per thread, <= 910 rows per 2 MB tile -> 28 tiles of
  // 878 rows each, rounded to 880: 56 tiles, 28 per thread.
  CHECK(prefill_tile_rows(49152, 576, 2) == 880);
  CHECK(tiles(49152, 576, 2) == 56);
  // 600 x 2048 (<= 256 rows per tile): 1 thread 3 tiles of 200 -> 208 rows; 2 threads 2 x 2 of 160.
  CHECK(prefill_tile_rows(600, 2048, 1) == 208);
  CHECK(prefill_tile_rows(600, 2048, 2) == 160);
  // Tiny or huge: at least 16 rows; fewer rows than threads still one tile.
  CHECK(prefill_tile_rows(5, 64, 4) == 16);
  CHECK(prefill_tile_rows(40, 1 << 20, 2) == 16);
}

// Several tiles per thread, the last one short (600 x 2048: 208 + 208 + 184 rows on 1 thread,
// 3 x 160 + 120 on 2): every tile's rows land in their own columns of y.
TEST_CASE("ops: prefill weight tiles, several per thread, match the reference") {
  const int64_t T = 9, K = 2048, N = 600;
  for (DType dt : {DType::F16, DType::BF16}) {
    CAPTURE(dtype_name(dt));
    Tensor w = randn({N, K}, 41, 0.5f, dt);
    Tensor x = randn({T, K}, 42);
    std::vector<float> ref(size_t(T * N));
    dense_linear_ref(w, false, x.data<float>(), T, ref.data(), K, N);
    const Linear lin = make_dense("w", w, K, N, false);
    for (int threads : {1, 2}) {
      CAPTURE(threads);
      auto be = make_cpu_backend(threads);
      set_prefill_gemm_path(PrefillGemm::Tiles);
      Tensor y = Tensor::empty(DType::F32, {T, N});
      be->linear(y, x, lin);
      CHECK(max_abs_diff(y.data<float>(), ref.data(), T * N) < 1e-3f);
    }
  }
}

TEST_CASE("ops: prefill GEMM column tiles match the reference and one OpenBLAS sgemm") {
  for (DType dt : {DType::F32, DType::F16})
    for (bool tr : {false, true})
      for (auto [T, K, N] : {std::tuple<int64_t, int64_t, int64_t>{64, 70, 203}, {9, 576, 193}}) {
        CAPTURE(dtype_name(dt));
        CAPTURE(tr);
        CAPTURE_BINDING(T);
        Tensor w = tr ? randn({K, N}, 21, 0.5f, dt) : randn({N, K}, 21, 0.5f, dt);
        Tensor x = randn({T, K}, 22);
        std::vector<float> ref(size_t(T * N));
        dense_linear_ref(w, tr, x.data<float>(), T, ref.data(), K, N);
        const Linear lin = make_dense("w", w, K, N, tr);
        for (int threads : {1, 2, 3}) {
          CAPTURE(threads);
          auto be = make_cpu_backend(threads);
          Tensor y = Tensor::empty(DType::F32, {T, N}), yb = Tensor::empty(DType::F32, {T, N});
          set_prefill_gemm_path(PrefillGemm::Tiles);
          be->linear(y, x, lin);
          set_prefill_gemm_path(PrefillGemm::Blas);
          be->linear(yb, x, lin);
          set_prefill_gemm_path(PrefillGemm::Tiles);
          CHECK(max_abs_diff(y.data<float>(), ref.data(), T * N) < 1e-4f);
          CHECK(max_abs_diff(y.data<float>(), yb.data<float>(), T * N) < 1e-4f);
        }
      }
}
