#include "train/params.h"

#include <algorithm>
#include <cstring>
#include <random>

#include "engine/error.h"
#include "engine/linear.h"
#include "engine/weights.h"

namespace minfer::train {

void ParamStore::add(const std::string& name, std::vector<int64_t> shape, bool decay) {
  MINFER_CHECK(!has(name), "parameter '{}' added twice", name);
  MINFER_CHECK(w_.empty(), "parameter '{}' added after allocate()", name);
  size_t n = 1;
  for (int64_t d : shape) {
    MINFER_CHECK(d > 0, "parameter '{}': dimension {} must be > 0", name, d);
    n *= size_t(d);
  }
  table_.push_back({name, std::move(shape), total_, n, decay});
  total_ += n;
}

void ParamStore::allocate(bool grads) {
  w_.assign(total_, 0.f);
  g_.assign(grads ? total_ : 0, 0.f);
}

void ParamStore::allocate_moments() {
  if (m_.size() != total_) m_.assign(total_, 0.f);
  if (v_.size() != total_) v_.assign(total_, 0.f);
}

bool ParamStore::has(const std::string& name) const {
  return std::any_of(table_.begin(), table_.end(),
                     [&](const ParamTensor& p) { return p.name == name; });
}

const ParamTensor& ParamStore::find(const std::string& name) const {
  for (const ParamTensor& p : table_)
    if (p.name == name) return p;
  MINFER_FAIL("no trainable parameter named '{}'", name);
}

void ParamStore::zero_grad() {
  std::fill(g_.begin(), g_.end(), 0.f);
}

size_t ParamStore::fix_zeros(const std::string& name) {
  const ParamTensor& p = find(name);
  MINFER_CHECK(!w_.empty(), "fix_zeros('{}') before allocate()", name);
  Mask m{p.offset, 0, name, std::vector<uint8_t>(p.numel)};
  for (size_t i = 0; i < p.numel; ++i) {
    m.keep[i] = w_[p.offset + i] != 0.f;
    m.zeros += !m.keep[i];
  }
  const size_t z = m.zeros;
  if (z == 0) return 0;  // nothing to keep fixed
  masks_.erase(
      std::remove_if(masks_.begin(), masks_.end(), [&](const Mask& x) { return x.name == name; }),
      masks_.end());
  masks_.push_back(std::move(m));
  return z;
}

void ParamStore::mask_grads() {
  for (const Mask& m : masks_) {
    float* g = g_.data() + m.offset;
    for (size_t i = 0; i < m.keep.size(); ++i)
      if (!m.keep[i]) g[i] = 0.f;
  }
}

std::vector<std::pair<std::string, size_t>> ParamStore::fixed_zeros() const {
  std::vector<std::pair<std::string, size_t>> out;
  for (const Mask& m : masks_) out.emplace_back(m.name, m.zeros);
  return out;
}

void init_params_random(ParamStore& p, uint64_t seed, float std) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> nd(0.f, std);
  p.walk([&](const ParamTensor& t, float* w, float*, float*, float*) {
    const bool bias = t.name.size() > 5 && t.name.compare(t.name.size() - 5, 5, ".bias") == 0;
    for (size_t i = 0; i < t.numel; ++i) w[i] = bias ? 0.f : t.shape.size() == 1 ? 1.f : nd(rng);
  });
}

void copy_param(const ParamTensor& p, float* dst, const Tensor& src, const std::string& from) {
  MINFER_CHECK(src.defined(), "{}: missing tensor for '{}'", from, p.name);
  const bool same = size_t(src.ndim()) == p.shape.size() &&
                    std::equal(p.shape.begin(), p.shape.end(), src.shape());
  MINFER_CHECK(same, "{}: tensor for '{}' has shape {}, the student needs [{}]", from, p.name,
               src.shape_str(), fmt::join(p.shape, ", "));
  Tensor f = src.to_f32();
  std::memcpy(dst, f.data<float>(), p.numel * sizeof(float));
}

void load_params(ParamStore& p, const WeightSource& src) {
  p.walk([&](const ParamTensor& t, float* w, float*, float*, float*) {
    MINFER_CHECK(src.has(t.name), "{}: missing tensor '{}'", src.describe(), t.name);
    Tensor v = t.shape.size() == 1 ? src.tensor(t.name, {t.shape[0]})
                                   : src.tensor(t.name, {t.shape[0], t.shape[1]});
    copy_param(t, w, v, src.describe());
  });
}

std::string source_block_name(const std::string& name, const std::string& blocks,
                              const std::vector<int64_t>& layer_map, int64_t source_layers) {
  if (layer_map.empty() || name.rfind(blocks, 0) != 0) return name;
  const size_t a = blocks.size(), b = name.find('.', a);
  const int64_t l = std::stoll(name.substr(a, b - a));
  MINFER_CHECK(l >= 0 && l < int64_t(layer_map.size()), "student layer {}: the layer map has {}", l,
               layer_map.size());
  MINFER_CHECK(layer_map[size_t(l)] >= 0 && layer_map[size_t(l)] < source_layers,
               "student layer {} maps to source layer {}, the source has {} layers", l,
               layer_map[size_t(l)], source_layers);
  return blocks + std::to_string(layer_map[size_t(l)]) + name.substr(b);
}

const Linear& source_linear(const std::map<std::string, const Linear*>& linears,
                            const std::string& s, const std::string& name) {
  auto li = linears.find(s);
  MINFER_CHECK(li != linears.end(), "source model has no linear '{}' (for student '{}')", s, name);
  return *li->second;
}

void copy_bias_or_tensor(const ParamTensor& p, float* dst, const std::string& s,
                         const std::map<std::string, const Linear*>& linears,
                         const std::map<std::string, Tensor>& tensors) {
  const std::string bias = ".bias";
  if (s.size() > bias.size() && s.compare(s.size() - bias.size(), bias.size(), bias) == 0) {
    auto lw = linears.find(s.substr(0, s.size() - bias.size()) + ".weight");
    if (lw != linears.end()) {  // a Linear's bias
      MINFER_CHECK(lw->second->bias.defined(), "source model: linear '{}' has no bias", lw->first);
      copy_param(p, dst, lw->second->bias, "source model");
      return;
    }
  }
  auto ti = tensors.find(s);
  MINFER_CHECK(ti != tensors.end(), "source model has no tensor '{}' (for student '{}')", s,
               p.name);
  MINFER_CHECK(ti->second.dtype() == DType::F32 || ti->second.dtype() == DType::F16 ||
                   ti->second.dtype() == DType::BF16,
               "source tensor '{}' is {}, expected f32/f16/bf16", s,
               dtype_name(ti->second.dtype()));
  copy_param(p, dst, ti->second, "source model");
}

std::vector<std::pair<std::string, Tensor>> named_params(const ParamStore& p) {
  std::vector<std::pair<std::string, Tensor>> out;
  for (const ParamTensor& t : p.table()) {
    Tensor v = t.shape.size() == 1 ? Tensor::empty(DType::F32, {t.shape[0]})
                                   : Tensor::empty(DType::F32, {t.shape[0], t.shape[1]});
    std::memcpy(v.data<float>(), p.weights().data() + t.offset, t.numel * sizeof(float));
    out.emplace_back(t.name, v);
  }
  return out;
}

}  // namespace minfer::train
