#include "engine/weights.h"

namespace minfer {

Linear WeightSource::linear(const std::string& prefix, int64_t in, int64_t out, bool bias,
                            bool transposed) const {
  const std::string wn = prefix + ".weight";
  Tensor w = transposed ? tensor(wn, {in, out}) : tensor(wn, {out, in});
  Tensor b = bias ? vec(prefix + ".bias", out) : Tensor();
  return make_dense(wn, std::move(w), in, out, transposed, std::move(b));
}

Linear WeightSource::table(const std::string& name, int64_t rows, int64_t cols) const {
  return make_dense(name, tensor(name, {rows, cols}), cols, rows);
}

Tensor WeightSource::vec(const std::string& name, int64_t n) const {
  Tensor t = tensor(name, {n});
  return t.dtype() == DType::F32 ? t : t.to_f32();
}

Tensor float_tensor(const WeightStore& store, const std::string& name,
                    std::initializer_list<int64_t> shape) {
  const Tensor& t = store.get(name, shape);
  MINFER_CHECK(t.dtype() == DType::F32 || t.dtype() == DType::F16 || t.dtype() == DType::BF16,
               "{}: tensor '{}': expected a float dtype (F32, F16, BF16), found {}",
               store.file_of(name), name, dtype_name(t.dtype()));
  return t;
}

Tensor SafetensorsSource::tensor(const std::string& name,
                                 std::initializer_list<int64_t> shape) const {
  return float_tensor(store_, name, shape);
}

}  // namespace minfer

#include <random>

#include "engine/half.h"

namespace minfer {

bool RandomSource::has(const std::string& name) const {
  // Untied heads are opt-in: a random model ties its LM head like the configs it mimics.
  return name.rfind("lm_head", 0) != 0 && name.find("transformer.") != 0 && name.find("bert.") != 0;
}

Tensor RandomSource::tensor(const std::string& name, std::initializer_list<int64_t> shape) const {
  uint64_t h = seed_ ^ 0x9e3779b97f4a7c15ull;
  for (char ch : name) h = (h ^ uint8_t(ch)) * 0x100000001b3ull;
  std::mt19937_64 rng(h);
  std::normal_distribution<float> nd(0.f, std_);
  const bool is_norm = shape.size() == 1 && name.find("bias") == std::string::npos;
  const bool vec = shape.size() == 1;
  Tensor t = Tensor::empty(vec ? DType::F32 : dtype_, shape);
  const int64_t n = t.numel();
  for (int64_t i = 0; i < n; ++i) {
    const float v = (is_norm ? 1.f : 0.f) + nd(rng);
    if (t.dtype() == DType::F32)
      t.data<float>()[i] = v;
    else if (t.dtype() == DType::F16)
      t.data<uint16_t>()[i] = f32_to_f16(v);
    else
      t.data<uint16_t>()[i] = f32_to_bf16(v);
  }
  return t;
}

}  // namespace minfer
