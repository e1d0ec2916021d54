// QAT and LoRA block projections shared by the three trainers (projections.h).
#include "train/projections.h"

#include <cblas.h>

#include <cmath>
#include <cstring>
#include <random>

#include "engine/error.h"
#include "engine/weights.h"
#include "train/ops.h"

namespace minfer::train {

namespace {
// dst[c, r] = src[r, c] for src [R, C].
void transpose(float* dst, const float* src, int64_t R, int64_t C) {
  for (int64_t r = 0; r < R; ++r)
    for (int64_t c = 0; c < C; ++c) dst[c * R + r] = src[r * C + c];
}
}  // namespace

Projections::Projections(const TrainMods& mods, Arch arch, ParamStore& params, ParamStore& frozen)
    : mods_(mods), params_(params), frozen_(frozen) {
  const bool lora = mods.lora.rank != 0;
  if (lora && mods.qat)
    throw NotImplemented("QAT together with LoRA (use one of --qat, --lora-rank)");
  MINFER_CHECK(mods.lora.rank >= 0, "--lora-rank {} must be >= 1", mods.lora.rank);
  if (!lora) return;
  MINFER_CHECK(std::isfinite(mods.lora.alpha) && mods.lora.alpha > 0.f,
               "--lora-alpha {} must be > 0", mods.lora.alpha);
  targets_ = mods.lora.targets.empty() ? default_lora_targets(arch) : mods.lora.targets;
  for (const std::string& t : targets_) {
    std::string m(1, '.');  // built by appends: GCC 12 warns (-Wrestrict) on "." + string&&
    m += lora_module(arch, t);
    target_modules_.push_back(std::move(m));
  }
}

bool Projections::is_lora_target(const std::string& name) const {
  if (!lora()) return false;
  for (const std::string& m : target_modules_) {
    const std::string w = m + ".weight";
    if (name.size() > w.size() && name.compare(name.size() - w.size(), w.size(), w) == 0)
      return true;
  }
  return false;
}

bool Projections::handles(const std::string& name) const {
  auto it = proj_.find(name);
  return it != proj_.end() && (qat() || it->second.lora);
}

bool Projections::conv1d() const {
  for (const auto& kv : proj_)
    if (kv.second.conv1d) return true;
  return false;
}

void Projections::add(const std::string& name, int64_t O, int64_t I, bool conv1d) {
  MINFER_CHECK(!proj_.count(name), "projection '{}' laid out twice", name);
  Proj& p = proj_[name];
  p.O = O, p.I = I, p.conv1d = conv1d, p.lora = is_lora_target(name);
  order_.push_back(name);
  const std::vector<int64_t> stored =
      conv1d ? std::vector<int64_t>{I, O} : std::vector<int64_t>{O, I};
  if (p.lora) {
    const int64_t r = mods_.lora.rank;
    MINFER_CHECK(r <= std::min(I, O),
                 "--lora-rank {} exceeds min(in, out) = {} of '{}' [{}, {}]: a rank-r update "
                 "of this matrix needs r <= {}",
                 r, std::min(I, O), name, O, I, std::min(I, O));
    params_.add(module(name) + ".lora_A.weight", {r, I}, true);
    params_.add(module(name) + ".lora_B.weight", {O, r}, true);
    return;
  }
  base_store().add(name, stored, true);
  if (mods_.qat) {
    p.lay = qat_layout(*mods_.qat, O, I, name);
    if (mods_.qat->lsq)
      params_.add(name + "_scale",
                  p.lay.per_tensor ? std::vector<int64_t>{1}
                                   : std::vector<int64_t>{p.lay.rows, p.lay.groups},
                  false);
  }
}

float* Projections::W(const std::string& name) {
  return params_.has(name) ? params_.w(name) : frozen_.w(name);
}
const float* Projections::W(const std::string& name) const {
  const ParamStore& s = params_.has(name) ? params_ : frozen_;
  return s.weights().data() + s.find(name).offset;
}
float* Projections::G(const std::string& name) {
  return params_.has(name) ? params_.g(name) : nullptr;
}

void Projections::load(const std::function<void(const ParamTensor&, float*)>& fill,
                       const std::function<Linear(const std::string&)>& base) {
  if (!lora()) {
    params_.walk([&](const ParamTensor& t, float* w, float*, float*, float*) {
      const size_t n = t.name.size();
      if (n > 6 && t.name.compare(n - 6, 6, "_scale") == 0 && proj_.count(t.name.substr(0, n - 6)))
        return;  // an LSQ scale: after_load()
      fill(t, w);
    });
  } else {
    frozen_.walk([&](const ParamTensor& t, float* w, float*, float*, float*) { fill(t, w); });
    for (const std::string& name : order_) {
      const Proj& p = proj_.at(name);
      if (!p.lora) continue;
      Linear l = base(name);
      MINFER_CHECK(l.in == p.I && l.out == p.O,
                   "LoRA base '{}': the source is [{}, {}] (out, in), the student needs [{}, {}]",
                   name, l.out, l.in, p.O, p.I);
      l.name = name;
      l.device_copy.reset();
      l.bias = Tensor{};  // the model keeps the bias as a frozen tensor
      base_[name] = std::move(l);
    }
  }
  after_load();
}

void Projections::load(const WeightSource& src) {
  auto fill = [&](const ParamTensor& t, float* w) {
    MINFER_CHECK(src.has(t.name), "{}: missing tensor '{}'", src.describe(), t.name);
    const Tensor v = t.shape.size() == 1 ? src.tensor(t.name, {t.shape[0]})
                                         : src.tensor(t.name, {t.shape[0], t.shape[1]});
    copy_param(t, w, v, src.describe());
  };
  auto base = [&](const std::string& name) {
    const Proj& p = proj_.at(name);
    MINFER_CHECK(src.has(name), "{}: missing tensor '{}'", src.describe(), name);
    const std::vector<int64_t> stored =
        p.conv1d ? std::vector<int64_t>{p.I, p.O} : std::vector<int64_t>{p.O, p.I};
    ParamTensor t{name, stored, 0, size_t(p.O * p.I), true};
    Tensor s = Tensor::empty(DType::F32, {stored[0], stored[1]});
    copy_param(t, s.data<float>(), src.tensor(name, {stored[0], stored[1]}), src.describe());
    if (!p.conv1d) return make_dense(name, s, p.I, p.O);
    Tensor w = Tensor::empty(DType::F32, {p.O, p.I});
    transpose(w.data<float>(), s.data<float>(), p.I, p.O);
    return make_dense(name, w, p.I, p.O);
  };
  load(fill, base);
}

const float* Projections::latent_oi(const std::string& name, const Proj& p) const {
  return p.conv1d ? p.wt.data() : W(name);
}

void Projections::after_load() {
  if (mods_.qat) {
    for (auto& [name, p] : proj_) {
      if (p.conv1d) {
        p.wt.resize(size_t(p.O * p.I));
        transpose(p.wt.data(), W(name), p.I, p.O);
      }
      if (mods_.qat->lsq)
        qat_init_scales(params_.w(name + "_scale"), latent_oi(name, p), p.O, p.I, p.lay);
    }
  }
  if (lora()) {
    // A: Kaiming-uniform, bound 1/sqrt(in) (PEFT: kaiming_uniform_(a=sqrt(5))); B: 0.
    std::mt19937_64 rng(mods_.seed * 0x9E3779B97F4A7C15ull + 0x10A);
    params_.walk([&](const ParamTensor& p, float* w, float*, float*, float*) {
      const bool is_a = p.name.find(".lora_A.") != std::string::npos;
      const double bound = 1.0 / std::sqrt(double(p.shape[1]));
      for (size_t i = 0; i < p.numel; ++i)
        w[i] = is_a ? float((double(rng() >> 11) * 0x1.0p-53 * 2.0 - 1.0) * bound) : 0.f;
    });
  }
}

void Projections::refresh() {
  if (!mods_.qat) return;
  for (auto& [name, p] : proj_) {
    if (p.conv1d) {
      p.wt.resize(size_t(p.O * p.I));
      transpose(p.wt.data(), W(name), p.I, p.O);
    }
    const float* w = latent_oi(name, p);
    p.wq.resize(size_t(p.O * p.I));
    const float* s;
    if (mods_.qat->lsq) {
      s = params_.w(name + "_scale");
    } else {
      p.stat.resize(size_t(p.lay.count()));
      qat_init_scales(p.stat.data(), w, p.O, p.I, p.lay);
      s = p.stat.data();
    }
    qat_fake_quant(p.wq.data(), w, s, p.O, p.I, p.lay);
  }
}

void Projections::forward(const std::string& name, float* out, const float* inp, int64_t N) {
  const Proj& p = proj_.at(name);
  if (mods_.qat) {
    linear_forward(out, inp, p.wq.data(), nullptr, N, p.I, p.O);
    return;
  }
  const Tensor w0 = dequantize_weight(base_.at(name));  // QLoRA: dequantized for this product
  linear_forward(out, inp, w0.data<float>(), nullptr, N, p.I, p.O);
  const int64_t r = mods_.lora.rank;
  lh_.resize(size_t(N * r));
  lora_forward(out, lh_.data(), inp, W(module(name) + ".lora_A.weight"),
               W(module(name) + ".lora_B.weight"), mods_.lora.scaling(), N, p.I, p.O, r);
}

void Projections::backward(const std::string& name, float* dinp, const float* dout,
                           const float* inp, int64_t N) {
  const Proj& p = proj_.at(name);
  const int64_t O = p.O, I = p.I;
  if (mods_.qat) {
    dwq_.assign(size_t(O * I), 0.f);
    linear_backward(dinp, dwq_.data(), nullptr, dout, inp, p.wq.data(), N, I, O);
    const bool lsq = mods_.qat->lsq;
    const float* s = lsq ? params_.w(name + "_scale") : p.stat.data();
    float* ds = lsq ? params_.g(name + "_scale") : nullptr;
    if (!p.conv1d) {
      qat_fake_quant_backward(G(name), ds, dwq_.data(), W(name), s, O, I, p.lay);
      return;
    }
    // Conv1D: the STE on the [O, I] view, added to the stored [I, O] gradient.
    dwt_.assign(size_t(O * I), 0.f);
    qat_fake_quant_backward(dwt_.data(), ds, dwq_.data(), p.wt.data(), s, O, I, p.lay);
    float* g = G(name);
    for (int64_t o = 0; o < O; ++o)
      for (int64_t i = 0; i < I; ++i) g[i * O + o] += dwt_[size_t(o * I + i)];
    return;
  }
  // LoRA: the frozen base passes the activation gradient through its (dequantized) weight only.
  const Tensor w0 = dequantize_weight(base_.at(name));
  linear_backward(dinp, nullptr, nullptr, dout, inp, w0.data<float>(), N, I, O);
  const std::string mod = module(name);
  const int64_t r = mods_.lora.rank;
  lh_.resize(size_t(N * r));
  ldh_.resize(size_t(N * r));
  lora_backward(dinp, G(mod + ".lora_A.weight"), G(mod + ".lora_B.weight"), lh_.data(), ldh_.data(),
                dout, inp, W(mod + ".lora_A.weight"), W(mod + ".lora_B.weight"),
                mods_.lora.scaling(), N, I, O, r);
}

std::vector<Linear> Projections::qat_linears() const {
  std::vector<Linear> out;
  if (!mods_.qat) return out;
  for (const std::string& name : order_) {
    const Proj& p = proj_.at(name);
    std::vector<float> wt;
    const float* w = W(name);
    if (p.conv1d) {  // the current latent weight (not the last refresh's copy)
      wt.resize(size_t(p.O * p.I));
      transpose(wt.data(), w, p.I, p.O);
      w = wt.data();
    }
    std::vector<float> stat;
    const float* s;
    if (mods_.qat->lsq) {
      s = W(name + "_scale");
    } else {
      stat.resize(size_t(p.lay.count()));
      qat_init_scales(stat.data(), w, p.O, p.I, p.lay);
      s = stat.data();
    }
    out.push_back(qat_export(name, w, s, p.O, p.I, *mods_.qat));
  }
  return out;
}

std::vector<std::pair<std::string, Tensor>> Projections::lora_adapters() const {
  std::vector<std::pair<std::string, Tensor>> out;
  for (auto& [n, t] : named_params(params_))
    if (n.find(".lora_") != std::string::npos) out.emplace_back("base_model.model." + n, t);
  return out;
}

std::vector<std::string> Projections::lora_modules() const {
  std::vector<std::string> out;
  for (const std::string& name : order_)
    if (proj_.at(name).lora) out.push_back(module(name));
  return out;
}

std::vector<std::pair<std::string, Tensor>> Projections::full_weights(bool merge) const {
  if (!lora()) return named_params(params_);
  std::vector<std::pair<std::string, Tensor>> out = named_params(frozen_);
  for (const std::string& name : order_) {
    const Proj& p = proj_.at(name);
    if (!p.lora) continue;
    // The base in f32 [O, I] (+ α/r · B · A), then in the stored layout.
    const Tensor w0 = dequantize_weight(base_.at(name));
    Tensor w = Tensor::empty(DType::F32, {p.O, p.I});
    std::memcpy(w.data<float>(), w0.data<float>(), size_t(p.O * p.I) * sizeof(float));
    if (merge) {
      const std::string mod = module(name);
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, int(p.O), int(p.I),
                  int(mods_.lora.rank), mods_.lora.scaling(), W(mod + ".lora_B.weight"),
                  int(mods_.lora.rank), W(mod + ".lora_A.weight"), int(p.I), 1.f, w.data<float>(),
                  int(p.I));
    }
    if (!p.conv1d) {
      out.emplace_back(name, w);
      continue;
    }
    Tensor s = Tensor::empty(DType::F32, {p.I, p.O});
    transpose(s.data<float>(), w.data<float>(), p.O, p.I);
    out.emplace_back(name, s);
  }
  return out;
}

}  // namespace minfer::train
