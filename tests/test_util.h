// Helpers shared by the test files.
#pragma once
#include <doctest/doctest.h>
#include <stdlib.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <functional>
#include <memory>
#include <random>
#include <string>
#include <system_error>
#include <vector>

#include "engine/formats/format.h"
#include "engine/formats/ggml_blocks.h"
#include "engine/gguf.h"
#include "engine/half.h"
#include "engine/safetensors.h"

// CAPTURE for a structured binding (`for (auto [N, K] : shapes) CAPTURE_BINDING(K);`): doctest's
// CAPTURE reads its argument through a lambda, and lambdas capturing structured bindings are
// C++20 that clang before 16 rejects; this copies a reference to a plain variable first.
#define MINFER_TEST_CAT2(a, b) a##b
#define MINFER_TEST_CAT(a, b) MINFER_TEST_CAT2(a, b)
#define CAPTURE_BINDING(x)                                      \
  const auto& MINFER_TEST_CAT(captured_binding_, __LINE__) = x; \
  INFO(#x " := ", MINFER_TEST_CAT(captured_binding_, __LINE__))

namespace minfer::test {

// n token ids uniform in [0, V), from a fixed seed.
inline std::vector<int32_t> random_ids(size_t n, int32_t V, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<int32_t> v(n);
  for (int32_t& x : v) x = int32_t(rng() % uint64_t(V));
  return v;
}

inline std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const std::exception& e) {
    return e.what();
  }
  return "(no error)";
}

// A fresh folder under the system temp dir, removed with everything in it at scope exit.
struct TempDir {
  std::filesystem::path path;
  explicit TempDir(const std::string& tag = "test") {
    std::string t =
        (std::filesystem::temp_directory_path() / ("minfer-" + tag + "-XXXXXX")).string();
    REQUIRE(::mkdtemp(t.data()) != nullptr);
    path = t;
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  std::string operator/(const std::string& name) const { return (path / name).string(); }
};

// One safetensors file as a TensorSource (load_linear reads formats from it).
class FileTensors final : public TensorSource {
 public:
  explicit FileTensors(std::shared_ptr<SafetensorsFile> f) : f_(std::move(f)) {}
  bool has(const std::string& n) const override { return f_->has(n); }
  Tensor get(const std::string& n) const override { return f_->get(n); }

 private:
  std::shared_ptr<SafetensorsFile> f_;
};

// XᵀX of x [T, in] in f64, rounded to f32 [in, in]: the calibration Gram matrix, computed
// independently of the library's ssyrk.
inline std::vector<float> gram_of(const Tensor& x) {
  const int64_t t = x.dim(0), in = x.dim(1);
  std::vector<float> g(size_t(in * in));
  for (int64_t i = 0; i < in; ++i)
    for (int64_t j = 0; j < in; ++j) {
      double s = 0;
      for (int64_t r = 0; r < t; ++r)
        s += double(x.data<float>()[r * in + i]) * x.data<float>()[r * in + j];
      g[size_t(i * in + j)] = float(s);
    }
  return g;
}

// ||(W - Ŵ) Xᵀ||_F in f64: the output error of Ŵ [out, in] on the tokens x [T, in].
inline double output_error(const Tensor& w, const Tensor& wh, const Tensor& x) {
  const int64_t out = w.dim(0), in = w.dim(1), t = x.dim(0);
  double e = 0;
  for (int64_t r = 0; r < t; ++r)
    for (int64_t o = 0; o < out; ++o) {
      double y = 0;
      for (int64_t i = 0; i < in; ++i)
        y += (double(w.data<float>()[o * in + i]) - wh.data<float>()[o * in + i]) *
             x.data<float>()[r * in + i];
      e += y * y;
    }
  return std::sqrt(e);
}

// Random GgmlBlocks [N, K] of a GGML block type: random quant bytes, with every fp16 scale field
// set to a finite value (d in [0.002, 0.02), mins in (-0.05, 0.05)); not a quantization of any
// matrix, only valid blocks to dequantize and run.
inline GgmlBlocks random_ggml_blocks(uint32_t type, int64_t N, int64_t K, uint32_t seed) {
  GgmlBlocks g;
  g.type = type;
  const int64_t rb = ggml_row_bytes(type, K), bs = int64_t(ggml_type_size(type));
  g.blocks = Tensor::empty(DType::U8, {N, rb});
  uint8_t* p = g.blocks.data<uint8_t>();
  uint32_t st = seed * 2654435761u + 12345u;
  auto next = [&] {
    st = st * 1664525u + 1013904223u;
    return st >> 8;
  };
  for (int64_t i = 0; i < N * rb; ++i) p[i] = uint8_t(next());
  // Byte offsets of the fp16 scale (d) and min/dmin (m, -1 when none) fields of each block.
  int d_off = 0, m_off = -1;
  switch (GgmlType(type)) {
    case GgmlType::Q4_1:
    case GgmlType::Q5_1:
    case GgmlType::Q4_K:
    case GgmlType::Q5_K:
      m_off = 2;
      break;
    case GgmlType::Q2_K:
      d_off = 80;
      m_off = 82;
      break;
    case GgmlType::Q3_K:
      d_off = 108;
      break;
    case GgmlType::Q6_K:
      d_off = 208;
      break;
    default:
      break;
  }
  for (int64_t b = 0; b < N * rb / bs; ++b) {
    uint8_t* blk = p + b * bs;
    const uint16_t d = f32_to_f16(0.002f + 0.018f * float(next() % 1000) / 1000.f);
    std::memcpy(blk + d_off, &d, 2);
    if (m_off >= 0) {
      const uint16_t m = f32_to_f16(0.05f * (float(next() % 2001) / 1000.f - 1.f));
      std::memcpy(blk + m_off, &m, 2);
    }
  }
  return g;
}

// Every tensor of every .safetensors file of folder a equals folder b's (same names, same
// bytes; doctest checks, CAPTUREing the file and tensor); returns the number of tensors compared.
inline int same_folder_tensors(const std::filesystem::path& a, const std::filesystem::path& b) {
  int compared = 0;
  for (const auto& e : std::filesystem::directory_iterator(a)) {
    if (e.path().extension() != ".safetensors") continue;
    CAPTURE(e.path().string());
    auto fa = SafetensorsFile::open(e.path().string());
    auto fb = SafetensorsFile::open((b / e.path().filename()).string());
    REQUIRE(fa->tensors().size() == fb->tensors().size());
    for (const auto& kv : fa->tensors()) {
      CAPTURE(kv.first);
      const Tensor& u = fb->get(kv.first);
      REQUIRE(u.nbytes() == kv.second.nbytes());
      CHECK(std::memcmp(u.raw(), kv.second.raw(), kv.second.nbytes()) == 0);
      ++compared;
    }
  }
  return compared;
}

}  // namespace minfer::test
