// QAT and LoRA for GPT-2 and BERT students (train/projections.h: the same block-projection code
// the LLaMA trainer uses): the adapter gradients against central differences (through GPT-2's
// Conv1D transposes), the LoRA base frozen, the loss falling, the merged and the kept adapters
// giving the trainer's outputs in the inference engine, and the QAT export (a compressed folder in
// the real format) giving the fake-quantized training forward.
#include <doctest/doctest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <tuple>
#include <type_traits>
#include <vector>

#include "engine/backend.h"
#include "engine/config.h"
#include "engine/linear.h"
#include "engine/safetensors.h"
#include "engine/weights.h"
#include "models/loader.h"
#include "tests/test_util.h"
#include "tests/train_test_util.h"
#include "train/bert_train.h"
#include "train/distill.h"
#include "train/gpt2_train.h"
#include "train/loss.h"
#include "train/optim.h"
#include "train/qat.h"

using namespace minfer;
using namespace minfer::train;
namespace fs = std::filesystem;

namespace {

const char* kGpt2 = "tests/fixtures/parity/gpt2";  // V 97, C 32, F 128, 2 layers
const char* kBert = "tests/fixtures/parity/bert";  // V 103, C 32, 2 layers

// A scalar loss of the student's output and its gradient: next-token CE for a causal student,
// Σ out · R (a fixed random projection of the last hidden state) for the encoder.
struct Objective {
  std::vector<int32_t> ids, tg;
  std::vector<float> R;
  int64_t B = 2, T = 9;
  double loss(Student& st, std::vector<float>* dout) const {
    const int64_t N = B * T;
    const float* o = st.forward(ids.data(), B, T);
    if (st.config().causal()) {
      const int64_t V = st.config().vocab_size;
      std::vector<float> d(size_t(N * V), 0.f);
      const double l =
          distill_loss(o, nullptr, tg.data(), N, V, {0.f, 1.f, false}, d.data(), 1.f).total;
      if (dout) *dout = std::move(d);
      return l;
    }
    double l = 0;
    for (size_t i = 0; i < R.size(); ++i) l += double(o[i]) * R[i];
    if (dout) *dout = R;
    return l;
  }
};

Objective objective(const Student& st, uint64_t seed) {
  Objective ob;
  const int64_t V = st.config().vocab_size, N = ob.B * ob.T;
  ob.ids = test::random_ids(size_t(N), int32_t(V), seed);
  ob.tg.assign(ob.ids.begin() + 1, ob.ids.end());
  ob.tg.push_back(-100);
  if (!st.config().causal()) {
    std::mt19937_64 rng(seed);
    std::normal_distribution<float> nd(0.f, 1.f);
    ob.R.resize(size_t(N * st.config().hidden));
    for (float& r : ob.R) r = nd(rng);
  }
  return ob;
}

// One AdamW step on the objective; returns the loss before it.
double train_step(Student& st, const Objective& ob, float lr = 1e-2f) {
  st.params().zero_grad();
  std::vector<float> d;
  const double l = ob.loss(st, &d);
  st.backward(d.data());
  AdamWConfig cfg;
  adamw_step(st.params(), cfg, lr, 1);
  return l;
}

// The student's output for one sequence next to the model folder's (logits, or the encoder's
// hidden states): max |Δ| and max |student|.
std::pair<double, double> folder_diff(const std::string& folder, Backend& be, Student& st,
                                      const std::vector<int32_t>& one) {
  LoadedModel m = open_model(folder, be, false);
  const int64_t T = int64_t(one.size());
  const bool causal = st.config().causal();
  const int64_t W = causal ? st.config().vocab_size : st.config().hidden;
  RunState rs = causal ? m.model->new_state(T, T) : m.model->new_state(0, T);
  Tensor out =
      causal ? m.model->forward(rs, one.data(), T, true) : m.model->encode(rs, one.data(), 1, T);
  const float* s = st.forward(one.data(), 1, T);
  double md = 0, mx = 0;
  for (int64_t i = 0; i < T * W; ++i) {
    md = std::max(md, double(std::abs(out.data<float>()[i] - s[i])));
    mx = std::max(mx, double(std::abs(s[i])));
  }
  return {md, mx};
}

std::unique_ptr<Student> student_of(Model& teacher, const DistillOptions& o) {
  return build_student(o, teacher);
}

std::vector<float> tensor_values(const Student& st, const std::string& name) {
  for (auto& [n, t] : st.projections().full_weights(false))
    if (n == name) return std::vector<float>(t.data<float>(), t.data<float>() + t.numel());
  FAIL("no tensor " << name);
  return {};
}

// Central differences of the objective against the gradients of a few entries of `names`.
void check_fd(Student& st, const Objective& ob, const std::vector<std::string>& names) {
  st.params().zero_grad();
  std::vector<float> d;
  ob.loss(st, &d);
  st.backward(d.data());
  const std::vector<float> g(st.params().grads().begin(), st.params().grads().end());
  int checked = 0;
  for (const std::string& name : names) {
    const ParamTensor& p = st.params().find(name);
    double gmax = 0;
    for (size_t i = 0; i < p.numel; ++i) gmax = std::max(gmax, double(std::abs(g[p.offset + i])));
    REQUIRE(gmax > 0);
    for (size_t i = 0; i < p.numel; i += std::max<size_t>(1, p.numel / 9)) {
      float* w = st.params().w(name) + i;
      const float w0 = *w, h = 1e-2f;
      *w = w0 + h;
      const double up = ob.loss(st, nullptr);
      *w = w0 - h;
      const double dn = ob.loss(st, nullptr);
      *w = w0;
      CAPTURE(name);
      CAPTURE(i);
      CHECK(std::abs((up - dn) / (2.0 * h) - g[p.offset + i]) <= 5e-3 * gmax + 1e-7);
      ++checked;
    }
  }
  CHECK(checked >= 4 * int(names.size()));
}

struct Arch2 {
  const char* path;
  std::vector<std::string> targets;
  std::vector<std::string> fd;  // adapter tensors checked by finite differences
  std::string frozen_proj;      // a targeted projection weight (its base stays fixed)
  std::string frozen_other;     // a frozen tensor that is not a projection
  int64_t (*per_layer)(int64_t C, int64_t F);  // Σ (in + out) over the targets
};

std::vector<Arch2> archs() {
  return {
      {kGpt2,
       {"qkv", "o", "up", "down"},
       {"transformer.h.0.attn.c_attn.lora_A.weight", "transformer.h.1.attn.c_attn.lora_B.weight",
        "transformer.h.0.mlp.c_proj.lora_B.weight"},
       "transformer.h.0.attn.c_attn.weight",
       "transformer.h.0.attn.c_attn.bias",
       [](int64_t C, int64_t F) { return (C + 3 * C) + (C + C) + (C + F) + (F + C); }},
      {kBert,
       {"q", "k", "v", "o", "up", "down"},
       {"encoder.layer.0.attention.self.query.lora_A.weight",
        "encoder.layer.1.attention.self.value.lora_B.weight",
        "encoder.layer.0.intermediate.dense.lora_B.weight"},
       "encoder.layer.0.attention.self.query.weight",
       "embeddings.LayerNorm.weight",
       [](int64_t C, int64_t F) { return 3 * (C + C) + (C + C) + (C + F) + (F + C); }},
  };
}

}  // namespace

TEST_CASE(
    "train lora gpt2/bert: adapter gradients, frozen base, loss falls, merge and kept "
    "adapters on export") {
  auto be = make_cpu_backend(1);
  for (const Arch2& a : archs()) {
    CAPTURE(a.path);
    LoadedModel t = open_model(a.path, *be, false);
    DistillOptions o;
    o.student = "init";
    o.lora.rank = 2;
    o.lora.alpha = 4;
    o.lora.targets = a.targets;
    auto st = student_of(*t.model, o);
    // Only the adapters are parameters: r · (in + out) per targeted projection.
    CHECK(int64_t(st->trainable_params()) ==
          2 * 2 * a.per_layer(st->config().hidden, st->config().ffn));
    const Objective ob = objective(*st, 3);
    const std::vector<int32_t> one(ob.ids.begin(), ob.ids.begin() + 9);
    // B = 0: the adapted student is the base model.
    {
      const auto [md, mx] = folder_diff(a.path, *be, *st, one);
      CHECK(md <= 1e-4 * std::max(1.0, mx));
    }
    const std::vector<float> base0 = tensor_values(*st, a.frozen_proj);
    const std::vector<float> other0 = tensor_values(*st, a.frozen_other);
    const double first = train_step(*st, ob);
    for (int i = 0; i < 4; ++i) train_step(*st, ob);
    CHECK(ob.loss(*st, nullptr) < first);
    // The base is frozen (B ≠ 0 now, so the adapter gradients flow through both factors).
    CHECK(tensor_values(*st, a.frozen_proj) == base0);
    CHECK(tensor_values(*st, a.frozen_other) == other0);
    check_fd(*st, ob, a.fd);

    test::TempDir tmp("lora-arch");
    o.lora.merge = true;
    save_student(*st, *t.model, nullptr, o, tmp / "merged", nlohmann::json::object());
    CHECK_FALSE(fs::exists(tmp.path / "merged/adapter_config.json"));
    {
      const auto [md, mx] = folder_diff(tmp / "merged", *be, *st, one);
      CHECK(md <= 1e-4 * std::max(1.0, mx));
    }
    // The merge changed the targeted weight.
    {
      auto f = SafetensorsFile::open(tmp / "merged/model.safetensors");
      const Tensor& w = f->get(a.frozen_proj);
      CHECK(std::vector<float>(w.data<float>(), w.data<float>() + w.numel()) != base0);
    }
    o.lora.merge = false;
    save_student(*st, *t.model, nullptr, o, tmp / "kept", nlohmann::json::object());
    REQUIRE(fs::exists(tmp.path / "kept/adapter_model.safetensors"));
    {
      std::ifstream in(tmp.path / "kept/adapter_config.json");
      const nlohmann::json j = nlohmann::json::parse(in);
      CHECK(j["fan_in_fan_out"] == (std::string(a.path) == kGpt2));  // Conv1D bases
      CHECK(j["target_modules"].size() == 2 * a.targets.size());
      // The kept base is the unmerged one.
      auto f = SafetensorsFile::open(tmp / "kept/model.safetensors");
      const Tensor& w = f->get(a.frozen_proj);
      CHECK(std::vector<float>(w.data<float>(), w.data<float>() + w.numel()) == base0);
    }
    const auto [md, mx] = folder_diff(tmp / "kept", *be, *st, one);
    CHECK(md <= 1e-4 * std::max(1.0, mx));
  }
}

TEST_CASE(
    "train qat gpt2/bert: the exported compressed folder gives the fake-quantized forward; "
    "STE lowers the loss") {
  auto be = make_cpu_backend(1);
  for (const Arch2& a : archs()) {
    CAPTURE(a.path);
    LoadedModel t = open_model(a.path, *be, false);
    for (const char* fmt : {"int8", "int4-g32", "ternary"})
      for (bool lsq : {false, true}) {
        CAPTURE(fmt);
        CAPTURE(lsq);
        DistillOptions o;
        o.student = "init";
        o.qat = fmt;
        o.qat_lsq = lsq;
        auto st = student_of(*t.model, o);
        if (lsq) CHECK(st->params().has(a.frozen_proj + "_scale"));
        const Objective ob = objective(*st, 5);
        const double first = train_step(*st, ob, 5e-3f);
        for (int i = 0; i < 4; ++i) train_step(*st, ob, 5e-3f);
        CHECK(ob.loss(*st, nullptr) < first);
        test::TempDir tmp("qat-arch");
        save_student(*st, *t.model, nullptr, o, tmp / "q", nlohmann::json::object());
        CHECK_FALSE(fs::exists(tmp.path / "q.qat-f32.tmp"));
        const std::vector<int32_t> one(ob.ids.begin(), ob.ids.begin() + 9);
        const auto [md, mx] = folder_diff(tmp / "q", *be, *st, one);
        CHECK(md <= 1e-5 * std::max(1.0, mx));
        // The folder holds the real format in every block projection, not f32.
        LoadedModel back = open_model(tmp / "q", *be, false);
        int quantized = 0;
        for (Linear* l : back.model->linears()) {
          CAPTURE(l->name);
          if (l->name.find(".h.") == std::string::npos &&
              l->name.find("encoder.layer.") == std::string::npos)
            continue;
          CHECK(linear_format(*l) == (std::string(fmt) == "int8"      ? "int8"
                                      : std::string(fmt) == "ternary" ? "ternary"
                                                                      : "int4-g32"));
          ++quantized;
        }
        CHECK(quantized == int(2 * a.targets.size()));
      }
  }
}

TEST_CASE(
    "train qat gpt2: the STE gradient of a Conv1D weight is the plain gradient at the "
    "fake-quantized weights") {
  // int8 per row with max-abs scales: no weight is clamped, so the STE passes ∂L/∂Ŵ through
  // unchanged; the plain student evaluated at Ŵ (the QAT export's dequantized weights) has the
  // same forward and hence the same gradient, in the stored Conv1D [in, out] layout.
  auto be = make_cpu_backend(1);
  LoadedModel t = open_model(kGpt2, *be, false);
  DistillOptions o;
  o.student = "init";
  o.qat = "int8";
  auto q = student_of(*t.model, o);
  const Objective ob = objective(*q, 9);
  train_step(*q, ob);
  TrainGpt2 plain(q->config());
  // The plain student's weights: the QAT student's, with every projection fake-quantized.
  plain.params().walk([&](const ParamTensor& p, float* w, float*, float*, float*) {
    const float* src = q->params().w(p.name);
    std::copy(src, src + p.numel, w);
  });
  for (Linear& l : q->projections().qat_linears()) {
    const Tensor d = dequantize_weight(l);  // [out, in]
    float* w = plain.params().w(l.name);    // [in, out]
    for (int64_t o2 = 0; o2 < l.out; ++o2)
      for (int64_t i = 0; i < l.in; ++i) w[i * l.out + o2] = d.data<float>()[o2 * l.in + i];
  }
  std::vector<float> dq, dp;
  q->params().zero_grad();
  const double lq = ob.loss(*q, &dq);
  q->backward(dq.data());
  plain.params().zero_grad();
  const double lp = ob.loss(plain, &dp);
  plain.backward(dp.data());
  CHECK(std::abs(lq - lp) <= 1e-5 * std::abs(lp));
  for (const std::string& n : q->projections().names()) {
    CAPTURE(n);
    const ParamTensor& p = plain.params().find(n);
    const int64_t I = p.shape[0], O = p.shape[1];  // Conv1D [in, out]
    const float* w = q->params().w(n);
    const float* gq = q->params().g(n);
    const float* gp = plain.params().g(n);
    // Each output's max-|w| weight sits on the clamp boundary (w / s = ±127 up to rounding in
    // w / (max|w| / 127)): the STE may mask it. Every other weight passes the gradient through.
    std::vector<float> amax(size_t(O), 0.f);
    for (int64_t i = 0; i < I; ++i)
      for (int64_t o2 = 0; o2 < O; ++o2)
        amax[size_t(o2)] = std::max(amax[size_t(o2)], std::abs(w[i * O + o2]));
    double md = 0, mx = 0;
    int64_t compared = 0;
    for (int64_t i = 0; i < I; ++i)
      for (int64_t o2 = 0; o2 < O; ++o2) {
        const int64_t k = i * O + o2;
        mx = std::max(mx, double(std::abs(gp[k])));
        if (std::abs(w[k]) == amax[size_t(o2)]) continue;
        md = std::max(md, double(std::abs(gq[k] - gp[k])));
        ++compared;
      }
    CHECK(compared >= I * O - O);
    CHECK(mx > 0);
    CHECK(md <= 1e-4 * mx);
  }
}

TEST_CASE(
    "train distill gpt2/bert: --lora-rank and --qat through the loops write loadable "
    "folders") {
  auto be = make_cpu_backend(1);
  test::TempDir tmp("mods-loops");
  {  // GPT-2 KD with LoRA on the default target (qkv), adapters kept.
    LoadedModel t = open_model(kGpt2, *be, false);
    const auto ids = test::random_ids(300, 97, 1);
    DistillOptions o = test::tiny_distill("init", 6, 2, 1, 1, 5);
    o.lora.rank = 4;
    const DistillResult r = distill(*t.model, nullptr, ids, "ids", {}, o, tmp / "g");
    REQUIRE(r.finished);
    CHECK(r.steps.back().loss < r.steps.front().loss);
    CHECK(r.log["trainable_params"] == 2 * 4 * (32 + 96));  // c_attn of both blocks
    std::ifstream in(tmp.path / "g/adapter_config.json");
    const nlohmann::json j = nlohmann::json::parse(in);
    CHECK(j["target_modules"][0] == "transformer.h.0.attn.c_attn");
    CHECK(open_model(tmp / "g", *be, false).model->config().arch == Arch::GPT2);
  }
  {  // BERT embedding distillation with ternary QAT: a compressed bert folder.
    test::TempDir tdir("mods-bert");
    fs::create_directories(tdir.path / "t");
    for (const char* f : {"config.json", "model.safetensors"})
      fs::copy_file(fs::path(kBert) / f, tdir.path / "t" / f);
    LoadedModel t = open_model(tdir / "t", *be, false);
    std::vector<std::vector<int32_t>> lines;
    for (int i = 0; i < 16; ++i) {
      auto s = test::random_ids(size_t(4 + i % 5), 99, uint64_t(i));
      for (int32_t& x : s) x += 4;
      s.insert(s.begin(), 2);
      s.push_back(3);
      lines.push_back(s);
    }
    DistillOptions o = test::tiny_distill("init", 4, 4, 1, 1, 3);
    o.seq = 12;
    o.qat = "int8";
    const DistillResult r = distill_encoder(*t.model, nullptr, lines, "lines", {}, o, tmp / "b");
    REQUIRE(r.finished);
    LoadedModel back = open_model(tmp / "b", *be, false);
    CHECK(back.model->config().arch == Arch::Bert);
    CHECK(linear_format(*back.model->linears()[0]) == "int8");
  }
}

namespace {

std::vector<int32_t> ints_of(const Tensor& t) {
  REQUIRE(t.dtype() == DType::I32);
  return std::vector<int32_t>(t.data<int32_t>(), t.data<int32_t>() + t.numel());
}

// max |a − ref| / max |ref| over one tensor; ref_max returns max |ref|.
double rel_err_of(const float* a, const Tensor& ref, double* ref_max) {
  const float* r = ref.data<float>();
  double diff = 0, mx = 0;
  for (int64_t i = 0; i < ref.numel(); ++i) {
    diff = std::max(diff, std::abs(double(a[i]) - r[i]));
    mx = std::max(mx, std::abs(double(r[i])));
  }
  *ref_max = mx;
  return diff / std::max(mx, 1e-30);
}

// The student of `kind` ("lora": rank 2, alpha 4 on every block projection; "qat": int4-g32 with
// LSQ) loaded from the parity folder, its adapters / scales set to the reference's
// (qat_lora_students.safetensors, make_qat_lora_students.py), run on the reference batch; every
// gradient the reference holds is compared. Returns {tensors compared, worst relative error}.
template <typename M>
std::pair<int, double> check_mods_against_torch(const std::string& dir, const std::string& arch,
                                                const std::string& kind,
                                                const std::vector<std::string>& targets) {
  const ModelConfig cfg = load_config(dir + "/config.json");
  auto ref = SafetensorsFile::open("tests/fixtures/train/qat_lora_students.safetensors");
  TrainMods mods;
  if (kind == "lora") {
    mods.lora.rank = 2;
    mods.lora.alpha = 4;
    mods.lora.targets = targets;
  } else {
    mods.qat = parse_qat("int4-g32");
    mods.qat->lsq = true;
  }
  M m(cfg, mods);
  m.load(SafetensorsSource(WeightStore::open(dir)));
  const std::string tag = arch + "." + kind;
  int set = 0;
  m.params().walk([&](const ParamTensor& p, float* w, float*, float*, float*) {
    const std::string n = tag + "." + p.name;
    if (!ref->has(n)) return;
    REQUIRE(size_t(ref->get(n).numel()) == p.numel);
    std::memcpy(w, ref->get(n).data<float>(), p.numel * sizeof(float));
    ++set;
  });
  // LoRA: A and B of every projection; QAT: one scale tensor per projection.
  CHECK(set == (kind == "lora" ? 2 : 1) * int(m.projections().names().size()));
  m.params().zero_grad();
  double loss = 0;
  if constexpr (std::is_same_v<M, TrainGpt2>) {
    auto data = SafetensorsFile::open("tests/fixtures/train/gpt2_grads.safetensors");
    const Tensor& ids_t = data->get("ids");
    const int64_t B = ids_t.dim(0), T = ids_t.dim(1), N = B * T, V = cfg.vocab_size;
    const std::vector<int32_t> ids = ints_of(ids_t), tg = ints_of(data->get("targets"));
    const float* logits = m.forward(ids.data(), B, T);
    std::vector<float> dl(size_t(N * V), 0.f);
    loss = distill_loss(logits, data->get("teacher").data<float>(), tg.data(), N, V,
                        {0.5f, 2.f, false}, dl.data())
               .total;
    m.backward(dl.data());
  } else {
    auto data = SafetensorsFile::open("tests/fixtures/train/bert_grads.safetensors");
    const Tensor& ids_t = data->get("ids");
    const int64_t B = ids_t.dim(0), T = ids_t.dim(1), N = B * T, C = cfg.hidden;
    const std::vector<int32_t> ids = ints_of(ids_t), mask = ints_of(data->get("mask")),
                               types = ints_of(data->get("types"));
    const float* r = data->get("r").data<float>();
    const float* h = m.forward(ids.data(), B, T, mask.data(), types.data());
    std::vector<float> dh(size_t(N * C));
    for (int64_t n = 0; n < N; ++n)
      for (int64_t i = 0; i < C; ++i) {
        dh[size_t(n * C + i)] = mask[size_t(n)] ? r[n * C + i] : 0.f;
        loss += double(h[n * C + i]) * dh[size_t(n * C + i)];
      }
    m.backward(dh.data());
  }
  CHECK(loss == doctest::Approx(ref->get(tag + ".loss").data<float>()[0]).epsilon(1e-5));
  // Tensors whose exact gradient is 0 (BERT's key bias: softmax is shift-invariant per row) hold
  // rounding noise in PyTorch: checked to be ~0 on both sides, relative to the largest gradient.
  double gmax = 0;
  for (const ParamTensor& p : m.params().table()) {
    const std::string n = "g." + tag + "." + p.name;
    if (!ref->has(n)) continue;
    const Tensor& g = ref->get(n);
    for (int64_t i = 0; i < g.numel(); ++i)
      gmax = std::max(gmax, double(std::abs(g.data<float>()[i])));
  }
  int checked = 0;
  double worst = 0;
  for (const ParamTensor& p : m.params().table()) {
    const std::string n = "g." + tag + "." + p.name;
    CAPTURE(n);
    REQUIRE(ref->has(n));  // the reference has a gradient for every trainable tensor
    const Tensor& g = ref->get(n);
    REQUIRE(size_t(g.numel()) == p.numel);
    const float* ours = m.params().grads().data() + p.offset;
    double rmax = 0;
    const double e = rel_err_of(ours, g, &rmax);
    if (rmax < 1e-6 * gmax) {
      double omax = 0;
      for (size_t i = 0; i < p.numel; ++i) omax = std::max(omax, double(std::abs(ours[i])));
      CHECK(omax < 1e-6 * gmax);
    } else {
      CHECK(e <= 1e-4);
      worst = std::max(worst, e);
    }
    ++checked;
  }
  return {checked, worst};
}

}  // namespace

TEST_CASE("train qat/lora gpt2/bert: whole-model gradients equal PyTorch autograd") {
  const std::string gpt2 = kGpt2, bert = kBert;
  const std::vector<std::string> gpt2_targets{"qkv", "o", "up", "down"},
      bert_targets{"q", "k", "v", "o", "up", "down"};
  // GPT-2, KD loss (α 0.5, τ 2). LoRA: A and B of 4 projections x 2 blocks.
  int n = 0;
  double worst = 0;
  std::tie(n, worst) = check_mods_against_torch<TrainGpt2>(gpt2, "gpt2", "lora", gpt2_targets);
  CHECK(n == 2 * 4 * 2);
  MESSAGE("gpt2 lora: worst relative gradient error " << worst);
  // QAT: every parameter (wte, wpe, ln_f: 4; 12 per block) and 4 scales per block.
  std::tie(n, worst) = check_mods_against_torch<TrainGpt2>(gpt2, "gpt2", "qat", {});
  CHECK(n == 4 + 2 * (12 + 4));
  MESSAGE("gpt2 qat: worst relative gradient error " << worst);
  // BERT, Σ hidden · r over the real tokens of a padded batch. LoRA: 6 projections x 2 blocks.
  std::tie(n, worst) = check_mods_against_torch<TrainBert>(bert, "bert", "lora", bert_targets);
  CHECK(n == 2 * 6 * 2);
  MESSAGE("bert lora: worst relative gradient error " << worst);
  // QAT: embeddings (3 + LayerNorm 2), 16 per block and 6 scales per block.
  std::tie(n, worst) = check_mods_against_torch<TrainBert>(bert, "bert", "qat", {});
  CHECK(n == 5 + 2 * (16 + 6));
  MESSAGE("bert qat: worst relative gradient error " << worst);
}

namespace {

// Random encoder lines: [CLS]=2, 2..9 ids in 4..102, [SEP]=3.
std::vector<std::vector<int32_t>> bert_lines(int n, uint64_t seed) {
  std::vector<std::vector<int32_t>> lines;
  for (int i = 0; i < n; ++i) {
    auto s = test::random_ids(size_t(2 + i % 8), 99, seed * 1000 + uint64_t(i));
    for (int32_t& x : s) x += 4;
    s.insert(s.begin(), 2);
    s.push_back(3);
    lines.push_back(s);
  }
  return lines;
}

// `o` run uninterrupted to tmp/a, and stopped at step 3 (checkpoint tmp/ck) then resumed to tmp/b:
// the same last loss and evaluation, and every output tensor bit-identical. Returns the number of
// tensors compared.
int check_resume_mods(Model& teacher, const DistillOptions& o, const test::TempDir& tmp) {
  const bool causal = teacher.config().causal();
  const int64_t V = teacher.config().vocab_size;
  const auto ids = test::random_ids(300, int32_t(V), 1),
             eval = test::random_ids(100, int32_t(V), 2);
  const auto lines = bert_lines(24, 1), eval_lines = bert_lines(8, 2);
  auto run = [&](const DistillOptions& oo, const fs::path& out) {
    return causal ? distill(teacher, nullptr, ids, "ids", eval, oo, out)
                  : distill_encoder(teacher, nullptr, lines, "lines", eval_lines, oo, out);
  };
  const DistillResult a = run(o, tmp / "a");
  REQUIRE(a.finished);
  DistillOptions o1 = o;
  o1.checkpoint = tmp / "ck";
  o1.stop_at = 3;
  CHECK_FALSE(run(o1, tmp / "b").finished);
  CHECK_FALSE(fs::exists(tmp.path / "b"));
  DistillOptions o2 = o;
  o2.resume = tmp / "ck";
  const DistillResult b = run(o2, tmp / "b");
  REQUIRE(b.finished);
  CHECK(b.steps.front().step == 4);
  CHECK(b.steps.back().loss == a.steps.back().loss);
  REQUIRE(!a.evals.empty());
  REQUIRE(!b.evals.empty());
  if (causal) {
    CHECK(b.evals.back().ppl == a.evals.back().ppl);
  } else {
    CHECK(b.evals.back().cos == a.evals.back().cos);
    CHECK(b.evals.back().mse == a.evals.back().mse);
  }
  return test::same_folder_tensors(tmp.path / "a", tmp.path / "b");
}

}  // namespace

TEST_CASE(
    "train distill gpt2/bert: resumed QAT and LoRA runs are bit-identical to uninterrupted ones") {
  auto be = make_cpu_backend(1);
  for (const char* path : {kGpt2, kBert}) {
    const std::string model = path;
    const bool gpt2 = model == kGpt2;
    CAPTURE(model);
    LoadedModel t = open_model(path, *be, false);
    {  // QAT int4-g32 with learned scales: the latent weights, scales and moments travel.
      test::TempDir tmp("mods-resume-qat");
      DistillOptions o = test::tiny_distill("init", 6, 2, 2, 2, 5);
      if (!gpt2) o.seq = 12;
      o.qat = "int4-g32";
      o.qat_lsq = true;
      const int n = check_resume_mods(*t.model, o, tmp);
      MESSAGE(model << " qat: " << n << " tensors identical");
      // GPT-2: 4 + 2 x (4 quantized projections: codes + scales, 8 other tensors); BERT: 5 + 2 x
      // (6 x 2, 10 other tensors).
      CHECK(n == (gpt2 ? 4 + 2 * (4 * 2 + 8) : 5 + 2 * (6 * 2 + 10)));
    }
    {  // LoRA on every target, adapters kept: the frozen base is rebuilt from the student spec.
      test::TempDir tmp("mods-resume-lora");
      DistillOptions o = test::tiny_distill("init", 6, 2, 2, 2, 5);
      if (!gpt2) o.seq = 12;
      o.lora.rank = 2;
      o.lora.alpha = 4;
      o.lora.targets = gpt2 ? std::vector<std::string>{"qkv", "o", "up", "down"}
                            : std::vector<std::string>{"q", "k", "v", "o", "up", "down"};
      const int n = check_resume_mods(*t.model, o, tmp);
      MESSAGE(model << " lora: " << n << " tensors identical");
      // The f32 base (GPT-2: 4 + 2 x 12; BERT: 5 + 2 x 16) and A, B of every target.
      CHECK(n == (gpt2 ? 4 + 2 * 12 + 2 * 4 * 2 : 5 + 2 * 16 + 2 * 6 * 2));
    }
  }
}
