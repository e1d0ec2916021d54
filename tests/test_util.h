// Helpers shared by the test files.
#pragma once
#include <doctest/doctest.h>
#include <stdlib.h>

#include <cmath>
#include <filesystem>
#include <memory>
#include <string>
#include <system_error>
#include <vector>

#include "engine/formats/format.h"
#include "engine/safetensors.h"

namespace minfer::test {

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

}  // namespace minfer::test
