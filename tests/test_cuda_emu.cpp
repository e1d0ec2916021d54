// The CUDA backend under the CPU emulation of the CUDA execution model (kernels/cuda/emu/,
// docs/cuda.md): every op against the CPU backend on odd shapes (sizes that are not multiples of
// a block, a warp or a tile, strided views, aliasing), every Linear representation, and the
// tiny-model fixture forwards. The same kernel sources run on a GPU with `make CUDA=1`.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <random>
#include <vector>

#include "compress/codebook.h"
#include "compress/dataaware.h"
#include "compress/quantize.h"
#include "engine/backend.h"
#include "engine/half.h"
#include "engine/safetensors.h"
#include "kernels/cpu/quant.h"
#include "models/model.h"
#include "tests/test_util.h"

namespace minfer {
std::unique_ptr<Backend> make_cuda_emu_backend(int device);
namespace cuda_emu {
void emu_set_device_count(int n);
int64_t emu_launch_count();
}  // namespace cuda_emu
}  // namespace minfer

using namespace minfer;

namespace {

Tensor randn(std::initializer_list<int64_t> shape, uint32_t seed, float scale = 1.f) {
  Tensor t = Tensor::empty(DType::F32, shape);
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.f, scale);
  for (int64_t i = 0; i < t.numel(); ++i) t.data<float>()[i] = nd(rng);
  return t;
}

// Rows x cols of a (possibly strided) 2-D tensor: host directly, device through to_host.
std::vector<float> values(Backend& be, const Tensor& t) {
  const int64_t cols = t.dim(-1), rows = t.numel() / std::max<int64_t>(cols, 1);
  std::vector<float> v(size_t(rows * cols));
  be.to_host(t, v.data());
  return v;
}

float max_diff(const std::vector<float>& a, const std::vector<float>& b) {
  REQUIRE(a.size() == b.size());
  float m = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    if (std::isnan(a[i]) || std::isnan(b[i])) {
      if (std::isnan(a[i]) != std::isnan(b[i])) return INFINITY;
      continue;
    }
    m = std::max(m, std::fabs(a[i] - b[i]));
  }
  return m;
}
float max_abs(const std::vector<float>& a) {
  float m = 0;
  for (float v : a) m = std::max(m, std::fabs(v));
  return m;
}

// The CUDA backends to check: the emulated one always; with `make CUDA=1` on a machine with a
// GPU, the real one too.
std::vector<std::pair<std::string, std::function<std::unique_ptr<Backend>()>>> gpu_backends() {
  std::vector<std::pair<std::string, std::function<std::unique_ptr<Backend>()>>> v;
  v.emplace_back("cuda-emu", [] { return make_cuda_emu_backend(0); });
  if (cuda_backend_built()) {
    try {
      make_backend("cuda");
      v.emplace_back("cuda", [] { return make_backend("cuda"); });
    } catch (const Error& e) {
      MESSAGE("real CUDA backend not checked: " << e.what());
    }
  }
  return v;
}

// One CPU and one CUDA backend, and the same host data on both.
struct Pair {
  std::unique_ptr<Backend> cpu = make_cpu_backend(1);
  std::unique_ptr<Backend> gpu;
  explicit Pair(std::unique_ptr<Backend> g) : gpu(std::move(g)) {}
  // A [rows, cols] view with row stride cols + pad (pad > 0: a slice of a wider buffer).
  std::pair<Tensor, Tensor> mat(int64_t rows, int64_t cols, uint32_t seed, int64_t pad = 0,
                                float scale = 1.f) {
    Tensor h = randn({rows, cols + pad}, seed, scale);
    Tensor d = gpu->upload(h);
    if (pad == 0) return {h, d};
    return {h.slice(1, pad, cols), d.slice(1, pad, cols)};
  }
  std::pair<Tensor, Tensor> out(int64_t rows, int64_t cols) {
    return {Tensor::empty(DType::F32, {rows, cols}), gpu->alloc({rows, cols}, DType::F32)};
  }
  float diff(const Tensor& c, const Tensor& g) {
    return max_diff(values(*cpu, c), values(*gpu, g));
  }
};

const std::pair<int64_t, int64_t> kShapes[] = {{1, 1}, {3, 67}, {33, 130}, {2, 300}};

}  // namespace

TEST_CASE("cuda-emu: no device is one clear error; host tensors are refused") {
  cuda_emu::emu_set_device_count(0);
  CHECK_THROWS_WITH_AS(make_cuda_emu_backend(0),
                       doctest::Contains("cuda: no CUDA device available (cudaGetDeviceCount: "),
                       Error);
  cuda_emu::emu_set_device_count(1);
  CHECK_THROWS_WITH_AS(make_cuda_emu_backend(3), doctest::Contains("--device 3 out of range"),
                       Error);
  auto be = make_cuda_emu_backend(0);
  CHECK(be->name() == "cuda");
  Tensor h = randn({2, 3}, 1);
  Tensor d = be->alloc({2, 3}, DType::F32);
  CHECK_THROWS_WITH_AS(be->add(d, h, d), doctest::Contains("in host memory"), Error);
  if (!cuda_backend_built()) {
    CHECK_THROWS_WITH_AS(make_backend("cuda"), doctest::Contains("rebuild with `make CUDA=1`"),
                         Error);
  }
}

TEST_CASE("cuda-emu: element-wise ops, copies and strided views equal the CPU backend") {
  for (const auto& gb : gpu_backends()) {
    CAPTURE(gb.first);
    Pair p(gb.second());
    for (auto [rows, cols] : kShapes) {
      CAPTURE_BINDING(rows);
      CAPTURE_BINDING(cols);
      auto [ha, da] = p.mat(rows, cols, 1, 3);
      auto [hb, db] = p.mat(rows, cols, 2);
      auto [hy, dy] = p.out(rows, cols);
      p.cpu->add(hy, ha, hb);
      p.gpu->add(dy, da, db);
      CHECK(p.diff(hy, dy) == 0.f);
      p.cpu->mul(hy, ha, hb);
      p.gpu->mul(dy, da, db);
      CHECK(p.diff(hy, dy) == 0.f);
      p.cpu->swiglu(hy, ha, hb);
      p.gpu->swiglu(dy, da, db);
      CHECK(p.diff(hy, dy) <= 1e-6f);
      for (bool tanh_approx : {false, true}) {
        p.cpu->gelu(hy, ha, tanh_approx);
        p.gpu->gelu(dy, da, tanh_approx);
        CHECK(p.diff(hy, dy) <= 1e-6f);
      }
      p.cpu->silu(hy, ha);
      p.gpu->silu(dy, da);
      CHECK(p.diff(hy, dy) <= 1e-6f);
      // Gemma's embedding normalizer and Gemma-2's logit soft-capping.
      p.cpu->scale(hy, ha, 5.656854f);
      p.gpu->scale(dy, da, 5.656854f);
      CHECK(p.diff(hy, dy) == 0.f);
      p.cpu->softcap(hy, ha, 1.5f);
      p.gpu->softcap(dy, da, 1.5f);
      CHECK(p.diff(hy, dy) <= 1e-6f);
      Tensor& ry = dy;  // (a lambda may not capture a structured binding: clang 14)
      const Tensor& ra = da;
      CHECK(test::error_of([&] { p.gpu->softcap(ry, ra, 0.f); }).find("cap must be positive") !=
            std::string::npos);
      // In place (y aliases a) and a strided destination.
      auto [hc, dc] = p.mat(rows, cols, 3, 5);
      p.cpu->add(hc, hc, hb);
      p.gpu->add(dc, dc, db);
      CHECK(p.diff(hc, dc) == 0.f);
      p.cpu->copy(hc, ha);
      p.gpu->copy(dc, da);
      CHECK(p.diff(hc, dc) == 0.f);
      CHECK(values(*p.gpu, dc) == values(*p.cpu, ha));
    }
  }
}

TEST_CASE("cuda-emu: layernorm, rmsnorm and softmax equal the CPU backend") {
  for (const auto& gb : gpu_backends()) {
    CAPTURE(gb.first);
    Pair p(gb.second());
    for (auto [rows, cols] : kShapes) {
      CAPTURE_BINDING(rows);
      CAPTURE_BINDING(cols);
      auto [hx, dx] = p.mat(rows, cols, 11, 2, 3.f);
      Tensor hw = randn({cols}, 12), hb = randn({cols}, 13);
      Tensor dw = p.gpu->upload(hw), db = p.gpu->upload(hb);
      auto [hy, dy] = p.out(rows, cols);
      p.cpu->layernorm(hy, hx, hw, hb, 1e-5f);
      p.gpu->layernorm(dy, dx, dw, db, 1e-5f);
      CHECK(p.diff(hy, dy) <= 2e-5f);
      p.cpu->rmsnorm(hy, hx, hw, 1e-6f);
      p.gpu->rmsnorm(dy, dx, dw, 1e-6f);
      CHECK(p.diff(hy, dy) <= 2e-5f);
      p.cpu->softmax(hy, hx);
      p.gpu->softmax(dy, dx);
      CHECK(p.diff(hy, dy) <= 1e-6f);
      // In place.
      p.cpu->rmsnorm(hx, hx, hw, 1e-6f);
      p.gpu->rmsnorm(dx, dx, dw, 1e-6f);
      CHECK(p.diff(hx, dx) <= 2e-5f);
    }
    // A fully masked row (all -inf) is all zeros on both.
    Tensor h = Tensor::empty(DType::F32, {2, 5});
    for (int i = 0; i < 10; ++i) h.data<float>()[i] = i < 5 ? -INFINITY : float(i);
    Tensor d = p.gpu->upload(h);
    auto [hy, dy] = p.out(2, 5);
    p.cpu->softmax(hy, h);
    p.gpu->softmax(dy, d);
    CHECK(p.diff(hy, dy) <= 1e-6f);
    const std::vector<float> g = values(*p.gpu, dy);
    CHECK(std::all_of(g.begin(), g.begin() + 5, [](float v) { return v == 0.f; }));
  }
}

TEST_CASE("cuda-emu: rope and embedding equal the CPU backend") {
  for (const auto& gb : gpu_backends()) {
    CAPTURE(gb.first);
    Pair p(gb.second());
    for (int64_t T : {1, 5}) {
      const int64_t H = 3, D = 10;
      auto [hx, dx] = p.mat(T, H * D, 21, 7);
      // default and yarn (non-uniform frequencies, attention scaling 1.16)
      RopeScaling yarn;
      yarn.type = RopeType::Yarn, yarn.factor = 4, yarn.original_max_pos = 8;
      for (const RopeScaling& rs : {RopeScaling{}, yarn}) {
        const RopeTable rt = rope_table(10000.f, D, rs);
        p.cpu->rope(hx, 6, H, rt);
        p.gpu->rope(dx, 6, H, rt);
        CHECK(p.diff(hx, dx) <= 1e-6f);
      }
    }
    const int64_t V = 9, C = 67;
    Tensor t32 = randn({V, C}, 22);
    Tensor t16 = Tensor::empty(DType::F16, {V, C}), tb = Tensor::empty(DType::BF16, {V, C});
    for (int64_t i = 0; i < V * C; ++i) {
      t16.data<uint16_t>()[i] = f32_to_f16(t32.data<float>()[i]);
      tb.data<uint16_t>()[i] = f32_to_bf16(t32.data<float>()[i]);
    }
    const int32_t ids[4] = {8, 0, 3, 8};
    for (const Tensor& table : {t32, t16, tb}) {
      CAPTURE(dtype_name(table.dtype()));
      Tensor dt = p.gpu->upload(table);
      auto [hy, dy] = p.mat(4, C, 23, 1);
      p.cpu->embedding(hy, table, ids, 4, true);
      p.gpu->embedding(dy, dt, ids, 4, true);
      CHECK(p.diff(hy, dy) == 0.f);
      p.cpu->embedding(hy, table, ids, 4);
      p.gpu->embedding(dy, dt, ids, 4);
      CHECK(p.diff(hy, dy) == 0.f);
    }
    Tensor dt = p.gpu->upload(t32);
    auto [hy, dy] = p.out(1, C);
    const int32_t bad = 9;
    CHECK_THROWS_WITH_AS(p.gpu->embedding(dy, dt, &bad, 1), doctest::Contains("token id 9"), Error);
  }
}

TEST_CASE("cuda-emu: attention (KV cache, GQA, causal, key mask, batch) equals the CPU backend") {
  for (const auto& gb : gpu_backends()) {
    CAPTURE(gb.first);
    Pair p(gb.second());
    struct Case {
      int64_t H, Hkv, D, B, T, S, pos0;
      bool causal, mask;
      float softcap = 0.f;
      int64_t window = 0;
    };
    const Case cases[] = {
        {4, 2, 8, 1, 3, 7, 4, true, false},     // prefill chunk after 4 cached positions, GQA
        {3, 3, 5, 1, 1, 33, 32, true, false},   // decode
        {2, 1, 16, 1, 67, 67, 0, true, false},  // more keys than a block has threads
        {2, 2, 6, 3, 5, 5, 0, false, true},     // BERT-style padded batch
        // Gemma-2: soft-capped scores, a sliding window (prefill, decode, a chunk after a cache)
        {4, 2, 16, 1, 40, 40, 0, true, false, 1.5f, 8},
        {4, 2, 16, 1, 1, 40, 39, true, false, 1.5f, 8},
        {4, 2, 16, 1, 3, 13, 10, true, false, 0.f, 5},
        {2, 1, 8, 1, 9, 9, 0, true, false, 0.7f, 0},
    };
    for (const Case& c : cases) {
      CAPTURE(c.T);
      CAPTURE(c.S);
      CAPTURE(c.B);
      // q, k, v as column slices of one fused buffer, as the models pass them.
      const int64_t qd = c.H * c.D, kd = c.Hkv * c.D;
      auto [hq, dq] = p.mat(c.B * c.T, qd, 31, 2 * kd);
      auto [hk, dk] = p.mat(c.B * c.S, kd, 32, kd + 1);
      auto [hv, dv] = p.mat(c.B * c.S, kd, 33, 3);
      std::vector<int32_t> mask(size_t(c.B * c.S), 1);
      if (c.mask) {
        for (int64_t j = 3; j < c.S; ++j) mask[size_t(j)] = 0;        // sequence 0: 3 tokens
        for (int64_t j = 0; j < c.S; ++j) mask[size_t(c.S + j)] = 0;  // sequence 1: all padding
      }
      AttentionArgs a{c.H, c.Hkv, c.D, c.B, c.pos0, c.causal, c.mask ? mask.data() : nullptr, 0.f};
      a.softcap = c.softcap;
      a.window = c.window;
      CAPTURE(c.softcap);
      CAPTURE(c.window);
      auto [ho, dout] = p.out(c.B * c.T, qd);
      p.cpu->attention(ho, hq, hk, hv, a);
      p.gpu->attention(dout, dq, dk, dv, a);
      CHECK(p.diff(ho, dout) <= 1e-5f);
      // The same keys and values in F16 caches: copy rounds them in on each backend (to the same
      // bits: to_host widens exactly), attention reads them widened.
      Tensor hk16 = Tensor::empty(DType::F16, {c.B * c.S, kd});
      Tensor hv16 = Tensor::empty(DType::F16, {c.B * c.S, kd});
      Tensor dk16 = p.gpu->alloc({c.B * c.S, kd}, DType::F16);
      Tensor dv16 = p.gpu->alloc({c.B * c.S, kd}, DType::F16);
      p.cpu->copy(hk16, hk);
      p.cpu->copy(hv16, hv);
      p.gpu->copy(dk16, dk);
      p.gpu->copy(dv16, dv);
      CHECK(values(*p.cpu, hk16) == values(*p.gpu, dk16));
      CHECK(values(*p.cpu, hv16) == values(*p.gpu, dv16));
      p.cpu->attention(ho, hq, hk16, hv16, a);
      p.gpu->attention(dout, dq, dk16, dv16, a);
      CHECK(p.diff(ho, dout) <= 1e-5f);
    }
  }
}

TEST_CASE("cuda-emu: a write into an F16 KV cache rounds as the CPU backend does") {
  for (const auto& gb : gpu_backends()) {
    CAPTURE(gb.first);
    Pair p(gb.second());
    // Ties to even (1 + 2^-11 lies halfway between 1 and 1 + 2^-10), the largest finite half,
    // overflow to inf past it, subnormal halves, signed zero and a value that flushes to zero.
    // Under the emulation the kernel's f2h is the CPU's f32_to_f16, so this checks the write's
    // dispatch, shape and strides; on a GPU (__float2half_rn) it checks the rounding too.
    const std::vector<float> xs = {
        0.f,   -0.f,    1.f,   1.00048828125f, 1.00146484375f, 65504.f,   65520.f, -70000.f,
        1e30f, 6.1e-5f, 3e-7f, -6e-8f,         1e-9f,          -3.14159f, 0.1f,    2.71828f};
    const int64_t n = int64_t(xs.size());
    Tensor h = Tensor::empty(DType::F32, {2, n / 2});
    std::copy(xs.begin(), xs.end(), h.data<float>());
    Tensor d = p.gpu->upload(h);
    Tensor h16 = Tensor::empty(DType::F16, {2, n / 2});
    Tensor d16 = p.gpu->alloc({2, n / 2}, DType::F16);
    p.cpu->copy(h16, h);
    p.gpu->copy(d16, d);
    for (int64_t i = 0; i < n; ++i) {
      CAPTURE(xs[size_t(i)]);
      CHECK(h16.data<uint16_t>()[i] == f32_to_f16(xs[size_t(i)]));
    }
    const std::vector<float> got = values(*p.gpu, d16);
    for (int64_t i = 0; i < n; ++i) {
      CAPTURE(xs[size_t(i)]);
      CHECK(std::signbit(got[size_t(i)]) == std::signbit(f16_to_f32(f32_to_f16(xs[size_t(i)]))));
      CHECK(got[size_t(i)] == f16_to_f32(f32_to_f16(xs[size_t(i)])));
    }
    // Only F32 sources and F16 destinations of the same shape.
    Tensor wrong = p.gpu->alloc({2, n / 2 + 1}, DType::F16);
    CHECK_THROWS_WITH(p.gpu->copy(wrong, d), doctest::Contains("shape mismatch"));
  }
}

namespace {

// y = x · Wᵀ (+ bias) on both backends; returns the max |diff| and the CPU result's magnitude.
std::pair<float, float> linear_diff(Pair& p, const Linear& l, int64_t T, uint32_t seed,
                                    float xscale = 1.f, bool pad = true) {
  auto [hx, dx] = p.mat(T, l.in, seed, pad ? 5 : 0, xscale);
  auto [hy, dy] = p.mat(T, l.out, seed + 1, pad ? 2 : 0);
  p.cpu->linear(hy, hx, l);
  Linear g = l;
  p.gpu->upload(g);
  p.gpu->linear(dy, dx, g);
  const auto c = values(*p.cpu, hy);
  return {max_diff(c, values(*p.gpu, dy)), max_abs(c)};
}

Linear dense_linear(int64_t in, int64_t out, uint32_t seed, bool bias, bool transposed = false) {
  Tensor w = transposed ? randn({in, out}, seed, 0.2f) : randn({out, in}, seed, 0.2f);
  return make_dense("w", w, in, out, transposed, bias ? randn({out}, seed + 7) : Tensor{});
}

const int64_t kLinShapes[][3] = {{1, 67, 33}, {3, 130, 67}, {33, 200, 5}, {9, 64, 1}};

}  // namespace

TEST_CASE("cuda-emu: dense linear (cuBLAS f32, f16/bf16 gemv and tensor-core GEMM)") {
  for (const auto& gb : gpu_backends()) {
    CAPTURE(gb.first);
    Pair p(gb.second());
    for (auto& s : kLinShapes) {
      const int64_t T = s[0], K = s[1], N = s[2];
      CAPTURE(T);
      CAPTURE(K);
      CAPTURE(N);
      for (bool transposed : {false, true}) {
        Linear l = dense_linear(K, N, uint32_t(K + N), true, transposed);
        auto [d, m] = linear_diff(p, l, T, 41);
        CHECK(d <= 1e-5f * (1 + m));
      }
      for (const char* method : {"fp16", "bf16"}) {
        CAPTURE(method);
        QuantSpec spec;
        spec.method = method;
        Linear l = quantize_linear(dense_linear(K, N, uint32_t(K * N), false), spec);
        // Few rows: f32 activations against the stored weights, as on the CPU. Many rows (> 8):
        // activations rounded to the 16-bit type for the tensor cores (f16: 2^-11, bf16: 2^-8).
        auto [d, m] = linear_diff(p, l, T, 42);
        const float tol = T <= 8 ? 1e-5f : std::string(method) == "fp16" ? 3e-3f : 2e-2f;
        CHECK(d <= tol * (1 + m));
      }
    }
  }
}

TEST_CASE("cuda-emu: every Quantized scheme equals the CPU kernels") {
  // The CUDA kernels keep f32 activations: the CPU's int4 decode default (8-bit activations, the
  // q8 path of kernels/cpu/quant.h, tested in tests/test_quant_q8.cpp) is off for the comparison.
  const QuantActPath saved_act = quantized_act_path();
  set_quantized_act_path(QuantActPath::F32);
  for (const auto& gb : gpu_backends()) {
    CAPTURE(gb.first);
    Pair p(gb.second());
    struct Q {
      const char* method;
      int group;
      bool per_channel, asym, dq, tern_row;
    };
    const Q qs[] = {
        {"int8", 0, true, false, false, false},    {"int8", 0, false, false, false, false},
        {"int8", 32, true, false, false, false},   {"int4", 32, true, false, false, false},
        {"int4", 64, true, true, false, false},    {"int4", 128, true, false, false, false},
        {"int3", 32, true, false, false, false},   {"int3", 96, true, false, false, false},
        {"int3", 128, true, false, false, false},  {"nf4", 64, true, false, false, false},
        {"nf4", 64, true, false, true, false},     {"binary", 0, true, false, false, false},
        {"ternary", 0, true, false, false, false}, {"ternary", 0, true, false, false, true},
    };
    for (const Q& q : qs) {
      QuantSpec spec;
      spec.method = q.method;
      spec.group = q.group;
      spec.per_channel = q.per_channel;
      spec.asymmetric = q.asym;
      spec.double_quant = q.dq;
      spec.ternary_per_row = q.tern_row;
      for (auto& s : kLinShapes) {
        const int64_t T = s[0], K = s[1], N = s[2];
        if (q.group > 0 && q.group > K) continue;
        CAPTURE(q.method);
        CAPTURE(q.group);
        CAPTURE(q.asym);
        CAPTURE(q.dq);
        CAPTURE(T);
        CAPTURE(K);
        CAPTURE(N);
        Linear l = quantize_linear(dense_linear(K, N, uint32_t(3 * K + N), true), spec);
        // f32 activations times the same dequantized weights; only the f32 summation order differs.
        auto [d, m] = linear_diff(p, l, T, 43);
        CHECK(d <= 2e-5f * (1 + m));
      }
    }
    // int3 with the scale search (compress/dataaware.h): packed codes -4..3, negative scales.
    for (auto& s : kLinShapes) {
      const int64_t T = s[0], K = s[1], N = s[2];
      if (K < 32) continue;
      CAPTURE(T);
      CAPTURE(K);
      CAPTURE(N);
      QuantSpec spec;
      spec.method = "int3";
      spec.group = 32;
      Linear l =
          quantize_rtn_search(dense_linear(K, N, uint32_t(5 * K + N), true), spec, nullptr, true);
      auto [d, m] = linear_diff(p, l, T, 47);
      CHECK(d <= 2e-5f * (1 + m));
    }
  }
  set_quantized_act_path(saved_act);
}

TEST_CASE("cuda-emu: Codebook (k-means weight sharing) equals the CPU kernels at every width") {
  for (const auto& gb : gpu_backends()) {
    CAPTURE(gb.first);
    Pair p(gb.second());
    for (int bits = 2; bits <= 8; ++bits)
      for (int64_t group : {int64_t(0), int64_t(32)})
        for (auto& s : kLinShapes) {
          const int64_t T = s[0], K = s[1], N = s[2];
          CAPTURE(bits);
          CAPTURE(group);
          CAPTURE(T);
          CAPTURE(K);
          CodebookSpec spec;
          spec.bits = bits;
          spec.group = group;
          const Linear l =
              quantize_codebook(dense_linear(K, N, uint32_t(5 * K + N + bits), true), spec);
          // f32 activations times the same looked-up weights; only the summation order differs.
          auto [d, m] = linear_diff(p, l, T, 47);
          CHECK(d <= 2e-5f * (1 + m));
        }
  }
}

namespace {
// Independent reference for the activation-quantized formats: f32 x times the weight their
// kernels use (dequantize_weight), within the int8 activation rounding (|x| / 254 per element).
float act_quant_bound_diff(Pair& p, const Linear& l, const Tensor& hx, std::vector<float>& gpu_y) {
  const Tensor W = dequantize_weight(l);
  const int64_t T = hx.dim(0), K = l.in, N = l.out;
  float worst = 0;
  for (int64_t t = 0; t < T; ++t) {
    const float* x = hx.data<float>() + t * hx.stride(0);
    float amax = 0;
    for (int64_t k = 0; k < K; ++k) amax = std::max(amax, std::fabs(x[k]));
    for (int64_t n = 0; n < N; ++n) {
      double ref = 0, bound = 0;
      for (int64_t k = 0; k < K; ++k) {
        const float w = W.data<float>()[n * K + k];
        ref += double(x[k]) * w;
        bound += std::fabs(w) * amax / 254.0;
      }
      if (l.bias.defined()) ref += l.bias.data<float>()[n];
      worst = std::max(worst, float(std::fabs(ref - gpu_y[size_t(t * N + n)]) / (bound + 1e-6)));
    }
  }
  return worst;  // <= 1: within the activation rounding
}
}  // namespace

TEST_CASE("cuda-emu: W8A8 and LLM.int8() equal the CPU backend (or the reference)") {
  for (const auto& gb : gpu_backends()) {
    CAPTURE(gb.first);
    Pair p(gb.second());
    for (auto& s : kLinShapes) {
      const int64_t T = s[0], K = s[1], N = s[2];
      CAPTURE(T);
      CAPTURE(K);
      CAPTURE(N);
      const Linear dense = dense_linear(K, N, uint32_t(5 * K + N), true);
      std::vector<float> absmax(size_t(K), 1.f);
      absmax[1] = 9.f;  // feature 1 listed as an outlier (kept in f16)
      std::vector<Linear> ls = {quantize_w8a8(dense, ActScale::Dynamic),
                                quantize_w8a8(dense, ActScale::Static, 4.f / 127.f),
                                quantize_llm_int8(dense, 6.f, &absmax), quantize_llm_int8(dense)};
      for (Linear& l : ls) {
        CAPTURE(l.repr.index());
        // x with a few large features: runtime outliers for LLM.int8(), clamping for static W8A8.
        Tensor hx = randn({T, K}, 51);
        hx.data<float>()[0] = 8.f;
        if (K > 3) hx.data<float>()[(T - 1) * K + 3] = -7.f;
        Tensor dx = p.gpu->upload(hx);
        Linear g = l;
        p.gpu->upload(g);
        Tensor dy = p.gpu->alloc({T, N}, DType::F32);
        p.gpu->linear(dy, dx, g);
        std::vector<float> gy = values(*p.gpu, dy);
        Tensor hy = Tensor::empty(DType::F32, {T, N});
        try {
          p.cpu->linear(hy, hx, l);
          std::vector<float> cy = values(*p.cpu, hy);
          CHECK(max_diff(cy, gy) <= 2e-5f * (1 + max_abs(cy)));
        } catch (const NotImplemented&) {
          MESSAGE("CPU kernel for this representation not available: reference only");
        }
        if (l.repr.index() == 3 && std::get<W8A8>(l.repr).act == ActScale::Static) continue;
        CHECK(act_quant_bound_diff(p, l, hx, gy) <= 1.f);
      }
    }
  }
}

TEST_CASE("cuda-emu: the tiny-model fixtures' forwards equal the CPU backend") {
  const std::string fix = "tests/fixtures/parity/";
  auto cpu = make_cpu_backend(1);
  for (const auto& gb : gpu_backends()) {
    CAPTURE(gb.first);
    auto gpu = gb.second();
    // tests/fixtures/arch: scaled RoPE tables, phi3's fused projections split into row views,
    // Gemma, on their 40-token sequence (past the scaled models' original context of 16). Gemma (1
    // + w norms, embedding scale, GeGLU) and Gemma-2 (sandwich norms, soft-capped scores and
    // logits, sliding-window layers: its window of 8 is shorter than the sequence).
    for (std::string name :
         {"gpt2", "llama", "llama_untied", "../arch/rope_yarn", "../arch/rope_llama3",
          "../arch/phi3", "../arch/qwen2", "../arch/gemma", "../arch/gemma2"}) {
      CAPTURE(name);
      auto mc = load_model(fix + name, *cpu);
      auto mg = load_model(fix + name, *gpu);
      auto exp = SafetensorsFile::open(fix + name + "/expected.safetensors");
      const std::string k = name.rfind("../arch/", 0) == 0 ? "2" : "0";
      const Tensor& ids = exp->get("input_ids_" + k);
      const Tensor& hf = exp->get("logits_" + k);
      const int64_t T = ids.numel(), V = hf.dim(1);
      RunState sc = mc->new_state(T, T), sg = mg->new_state(T, T);
      Tensor lc = mc->forward(sc, ids.data<int32_t>(), T, true);
      Tensor lg = mg->forward(sg, ids.data<int32_t>(), T, true);
      REQUIRE(lg.on_device());
      const std::vector<float> gv = values(*gpu, lg);
      CHECK(max_diff(values(*cpu, lc), gv) <= 1e-4f);
      CHECK(max_diff(std::vector<float>(hf.data<float>(), hf.data<float>() + T * V), gv) <= 1e-4f);
      // Decoding through the device KV cache, one token at a time.
      RunState sd = mg->new_state(T, 1);
      float worst = 0;
      for (int64_t t = 0; t < T; ++t) {
        Tensor l1 = mg->forward(sd, ids.data<int32_t>() + t, 1, false);
        std::vector<float> v = values(*gpu, l1);
        for (int64_t c = 0; c < V; ++c)
          worst = std::max(worst, std::fabs(v[size_t(c)] - hf.data<float>()[t * V + c]));
      }
      CHECK(worst <= 1e-4f);
      // An F16 KV cache (keys and values rounded to fp16 when written, widened when read): the
      // device's decode equals the CPU backend's with the same cache type, token by token (the
      // same rounded values; only the order of the f32 sums differs), and moves away from the
      // F32 reference, so the rounding did reach the cache.
      mc->set_kv_cache_dtype(DType::F16);
      mg->set_kv_cache_dtype(DType::F16);
      RunState sc16 = mc->new_state(T, 1), sg16 = mg->new_state(T, 1);
      float worst16 = 0, moved = 0;
      for (int64_t t = 0; t < T; ++t) {
        const std::vector<float> c16 =
            values(*cpu, mc->forward(sc16, ids.data<int32_t>() + t, 1, false));
        const std::vector<float> g16 =
            values(*gpu, mg->forward(sg16, ids.data<int32_t>() + t, 1, false));
        worst16 = std::max(worst16, max_diff(c16, g16));
        moved = std::max(moved, max_diff(std::vector<float>(hf.data<float>() + t * V,
                                                            hf.data<float>() + (t + 1) * V),
                                         g16));
      }
      // The two backends' f32 keys and values differ in their last bits (the order of their
      // sums); a value near the midpoint of two halves then rounds the other way, and the next
      // layers and tokens carry that on: up to ~3e-4 on these fixtures' logits, where the F16
      // cache itself moves them 10-600 times as far from the F32 reference. (The op test above
      // shows that the same f32 values give the same cache bits.)
      CHECK(worst16 <= 1e-3f);
      CHECK(worst16 * 4 < moved);
      mc->set_kv_cache_dtype(DType::F32);
      mg->set_kv_cache_dtype(DType::F32);
    }
    // BERT: a padded batch (key mask) through the encoder.
    auto mc = load_model(fix + "bert", *cpu);
    auto mg = load_model(fix + "bert", *gpu);
    auto exp = SafetensorsFile::open(fix + "bert/expected.safetensors");
    const Tensor& ids = exp->get("batch_ids");
    const Tensor& mask = exp->get("batch_mask");
    const int64_t B = ids.dim(0), T = ids.dim(1);
    RunState sc = mc->new_state(0, B * T), sg = mg->new_state(0, B * T);
    Tensor hc = mc->encode(sc, ids.data<int32_t>(), B, T, mask.data<int32_t>());
    Tensor hg = mg->encode(sg, ids.data<int32_t>(), B, T, mask.data<int32_t>());
    CHECK(max_diff(values(*cpu, hc), values(*gpu, hg)) <= 1e-4f);
  }
}

TEST_CASE("cuda-emu: a quantized llama forward equals the CPU backend") {
  const std::string fix = "tests/fixtures/parity/llama";
  auto cpu = make_cpu_backend(1);
  for (const auto& gb : gpu_backends()) {
    CAPTURE(gb.first);
    auto gpu = gb.second();
    auto mc = load_model(fix, *cpu);
    auto mg = load_model(fix, *gpu);
    QuantSpec spec;
    spec.method = "int4";
    spec.group = 32;
    auto lc = mc->linears(), lg = mg->linears();
    for (size_t i = 0; i < lc.size(); ++i) {
      if (lc[i]->in % 32) continue;
      spec.method = i % 2 ? "nf4" : "int4";
      spec.group = i % 2 ? 64 : 32;
      if (lc[i]->in < spec.group) continue;
      *lc[i] = quantize_linear(*lc[i], spec);
      // The device model's weights come from the host copy the CPU model quantized.
      *lg[i] = *lc[i];
      gpu->upload(*lg[i]);
    }
    auto exp = SafetensorsFile::open(fix + "/expected.safetensors");
    const Tensor& ids = exp->get("input_ids_0");
    const int64_t T = ids.numel();
    RunState sc = mc->new_state(T, T), sg = mg->new_state(T, T);
    Tensor yc = mc->forward(sc, ids.data<int32_t>(), T, true);
    Tensor yg = mg->forward(sg, ids.data<int32_t>(), T, true);
    const auto c = values(*cpu, yc);
    CHECK(max_diff(c, values(*gpu, yg)) <= 1e-4f * (1 + max_abs(c)));
  }
}
