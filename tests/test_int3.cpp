// int3 as a true 3-bit format: the packed code layout (kernels/common/quant_math.h get_q3 /
// set_q3), the signed-max encoder, bits per weight, and the file layout against compressed-tensors'
// pack_to_int32 for num_bits = 3 (tests/fixtures/int3/make_int3_pack_fixture.py). The kernels are
// tested with every other format in tests/test_quant.cpp, tests/test_formats.cpp and
// tests/test_cuda_emu.cpp.
#include <doctest/doctest.h>
#include <fmt/format.h>

#include <cmath>
#include <cstring>
#include <map>
#include <nlohmann/json.hpp>
#include <random>

#include "compress/compress.h"
#include "engine/linear.h"
#include "engine/safetensors.h"
#include "kernels/common/quant_math.h"
#include "test_util.h"

using namespace minfer;

namespace {

const std::string kPack = "tests/fixtures/int3/int3_pack.safetensors";

// Tensors by name, for load_linear.
struct MapSource : TensorSource {
  std::map<std::string, Tensor> m;
  bool has(const std::string& n) const override { return m.count(n) > 0; }
  Tensor get(const std::string& n) const override { return m.at(n); }
};

// An int3 Linear [out, in] with one unit scale per row holding the signed codes q (I8 [out, in]).
Linear int3_of(const Tensor& q, int64_t out, int64_t in) {
  Quantized r;
  r.scheme = QScheme::Int3;
  r.group = in;
  const int64_t rb = qm::row_bytes(in, 3);
  r.codes = Tensor::empty(DType::U8, {out, rb});
  r.scales = Tensor::empty(DType::F32, {out, 1});
  for (int64_t n = 0; n < out; ++n) {
    r.scales.data<float>()[n] = 1.f;
    for (int64_t k = 0; k < qm::padded_k(in); ++k)
      qm::set_q3(r.codes.data<uint8_t>() + n * rb, k,
                 k < in ? q.data<int8_t>()[n * in + k] + 4 : 4);
  }
  return make_linear("blk.w", in, out, std::move(r));
}

}  // namespace

TEST_CASE("int3: codes are one LSB-first 3-bit stream per row, 64 weights in 24 bytes") {
  const int64_t K = 192;
  CHECK(qm::row_bytes(K, 3) == 72);
  CHECK(qm::row_bytes(100, 3) == 48);  // padded to 128 weights
  std::vector<uint8_t> row(size_t(qm::row_bytes(K, 3)), 0);
  std::mt19937 rng(3);
  std::vector<int> c(static_cast<size_t>(K));
  for (int64_t k = 0; k < K; ++k) {
    c[size_t(k)] = int(rng() & 7);
    qm::set_q3(row.data(), k, c[size_t(k)]);
  }
  // Bit i of code k is bit 3k + i of the stream: bit (3k + i) % 8 of byte (3k + i) / 8.
  for (int64_t k = 0; k < K; ++k) {
    CAPTURE(k);
    CHECK(qm::get_q3(row.data(), k) == c[size_t(k)]);
    for (int i = 0; i < 3; ++i) {
      const int64_t b = 3 * k + i;
      CHECK(((row[size_t(b / 8)] >> (b % 8)) & 1) == ((c[size_t(k)] >> i) & 1));
    }
  }
  // Rewriting a straddling code (k = 2: bits 6..8) leaves its neighbours alone.
  qm::set_q3(row.data(), 2, 7 - c[2]);
  CHECK(qm::get_q3(row.data(), 2) == 7 - c[2]);
  for (int64_t k : {0, 1, 3, 4, 5}) CHECK(qm::get_q3(row.data(), k) == c[size_t(k)]);
}

TEST_CASE("int3: signed-max codes, s = -w_m / 4, and 3 + 32 / G bits per weight") {
  const int64_t N = 5, K = 200;
  std::mt19937 rng(7);
  std::normal_distribution<float> nd(0.f, 1.f);
  Tensor w = Tensor::empty(DType::F32, {N, K});
  for (int64_t i = 0; i < N * K; ++i) w.data<float>()[i] = nd(rng);
  w.data<float>()[K + 3] = 9.f;  // a positive extreme: a negative scale
  for (int64_t G : {32, 64, 96, 128}) {
    CAPTURE(G);
    QuantSpec s;
    s.method = "int3";
    s.group = int(G);
    const Linear l = quantize_linear(make_dense("w", w, K, N), s);
    CHECK(linear_format(l) == "int3-g" + std::to_string(G));
    const Tensor d = dequantize_weight(l);
    const int64_t groups = (K + G - 1) / G;
    int bad = 0;
    for (int64_t n = 0; n < N; ++n)
      for (int64_t g = 0; g < groups; ++g) {
        const int64_t k0 = g * G, k1 = std::min(K, k0 + G);
        double wm = 0;
        for (int64_t k = k0; k < k1; ++k)
          if (std::fabs(w.data<float>()[n * K + k]) > std::fabs(wm))
            wm = w.data<float>()[n * K + k];
        const float sc = float(-wm / 4);
        for (int64_t k = k0; k < k1; ++k) {
          double q = std::nearbyint(double(w.data<float>()[n * K + k]) / double(sc));
          q = std::min(3.0, std::max(-4.0, q));
          if (d.data<float>()[n * K + k] != float(sc * float(q))) ++bad;
        }
      }
    CHECK(bad == 0);
    // Codes padded to 256 weights (96 bytes) + one f32 scale per group, over 200 weights.
    CHECK(bits_per_weight(l) == doctest::Approx((96.0 + 4.0 * double(groups)) * 8 / 200));
  }
  QuantSpec s;
  s.method = "int3";
  Tensor w2 = Tensor::empty(DType::F32, {4, 256});
  CHECK(bits_per_weight(quantize_linear(make_dense("w", w2, 256, 4), s)) == 3.25);
  Tensor w3 = Tensor::empty(DType::F32, {4, 576});  // SmolLM2's width: 5 groups of 128 per row
  CHECK(bits_per_weight(quantize_linear(make_dense("w", w3, 576, 4), s)) ==
        doctest::Approx((216.0 + 20.0) * 8 / 576));
}

TEST_CASE("int3: the file holds compressed-tensors' pack-quantized words and loads them back") {
  auto fx = SafetensorsFile::open(kPack);
  for (int i = 0; i < 5; ++i) {
    CAPTURE(i);
    const std::string base = fmt::format("s{}", i);
    const Tensor q = fx->get(base + ".q");
    const Tensor packed = fx->get(base + ".packed");
    REQUIRE(q.dtype() == DType::I8);
    REQUIRE(packed.dtype() == DType::I32);
    const int64_t out = q.dim(0), in = q.dim(1), words = (in * 3 + 31) / 32;
    CAPTURE(in);
    REQUIRE(packed.dim(1) == words);
    const Linear l = int3_of(q, out, in);
    // Save: exactly the package's words.
    std::vector<std::pair<std::string, Tensor>> tensors;
    TensorSink sink{tensors};
    const json meta = save_linear(l, "blk.w", sink);
    CHECK(meta["packing"] == "pack-quantized");
    const Tensor* codes = nullptr;
    for (auto& [name, t] : tensors)
      if (name == "blk.w.codes") codes = &t;
    REQUIRE(codes != nullptr);
    CHECK(codes->dtype() == DType::I32);
    CHECK(codes->shape_str() == packed.shape_str());
    CHECK(std::memcmp(codes->raw(), packed.raw(), packed.nbytes()) == 0);
    // Load the package's words: the same codes (dequantized with unit scales, the values q).
    MapSource src;
    src.m["blk.w.codes"] = packed;
    for (auto& [name, t] : tensors)
      if (name == "blk.w.scales") src.m[name] = t;
    const Linear back = load_linear(src, "blk.w", meta, in, out);
    const Tensor d = dequantize_weight(back);
    int bad = 0;
    for (int64_t k = 0; k < out * in; ++k)
      if (d.data<float>()[k] != float(q.data<int8_t>()[k])) ++bad;
    CHECK(bad == 0);
    // Widths that are a multiple of 64 are used in place (zero copy); others are repacked.
    const Quantized& bq = std::get<Quantized>(back.repr);
    CHECK((bq.codes.storage() == packed.storage()) == (in % 64 == 0));
    CHECK(back.weight_bytes() == l.weight_bytes());
  }
}

TEST_CASE("int3: a wrong code tensor or packing name is a clear error naming the tensor") {
  auto fx = SafetensorsFile::open(kPack);
  const Tensor q = fx->get("s1.q");  // [5, 200]
  const Linear l = int3_of(q, 5, 200);
  std::vector<std::pair<std::string, Tensor>> tensors;
  TensorSink sink{tensors};
  const json meta = save_linear(l, "blk.w", sink);
  MapSource src;
  for (auto& [name, t] : tensors) src.m[name] = t;
  json bad = meta;
  bad["packing"] = "gptq-int32";
  CHECK_THROWS_WITH_AS(load_linear(src, "blk.w", bad, 200, 5),
                       doctest::Contains("unknown code packing 'gptq-int32'"), Error);
  bad.erase("packing");
  CHECK_THROWS_WITH_AS(load_linear(src, "blk.w", bad, 200, 5), doctest::Contains("lacks 'packing'"),
                       Error);
  // The in-memory U8 rows instead of the file's I32 words.
  src.m["blk.w.codes"] = std::get<Quantized>(l.repr).codes;
  CHECK_THROWS_WITH_AS(load_linear(src, "blk.w", meta, 200, 5),
                       doctest::Contains("'blk.w.codes' must be I32 [5, 19]"), Error);
  // A truncated row.
  src.m["blk.w.codes"] = Tensor::empty(DType::I32, {5, 18});
  CHECK_THROWS_WITH_AS(load_linear(src, "blk.w", meta, 200, 5),
                       doctest::Contains("found I32 [5, 18]"), Error);
}
