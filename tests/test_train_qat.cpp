// QAT (fake quantization, STE, LSQ), LoRA / QLoRA and data-free generation in the training
// engine: the ops against PyTorch autograd (tests/fixtures/train/make_qat_lora.py), the exported
// models against the training forward, and the input errors.
#include <doctest/doctest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <vector>

#include "compress/compress.h"
#include "engine/backend.h"
#include "engine/config.h"
#include "engine/safetensors.h"
#include "engine/weights.h"
#include "models/loader.h"
#include "tests/test_util.h"
#include "tests/train_test_util.h"
#include "train/distill.h"
#include "train/llama_train.h"
#include "train/lora.h"
#include "train/loss.h"
#include "train/ops.h"
#include "train/optim.h"
#include "train/qat.h"

using namespace minfer;
using namespace minfer::train;
namespace fs = std::filesystem;

namespace {

const char* kRef = "tests/fixtures/train/qat_lora.safetensors";
const char* kLlama = "tests/fixtures/parity/llama";

// max |a − ref| / max |ref|
double rel_err(const float* a, const Tensor& ref) {
  const float* r = ref.data<float>();
  double diff = 0, mx = 0;
  for (int64_t i = 0; i < ref.numel(); ++i) {
    diff = std::max(diff, std::abs(double(a[i]) - r[i]));
    mx = std::max(mx, std::abs(double(r[i])));
  }
  return diff / std::max(mx, 1e-30);
}

std::vector<float> vec(const Tensor& t) {
  return std::vector<float>(t.data<float>(), t.data<float>() + t.numel());
}

using test::random_ids;

// One AdamW step of the student on next-token CE over `ids` (B x T), so that exported weights are
// trained ones, not the initial ones.
void train_step(TrainLlama& st, const std::vector<int32_t>& ids, int64_t B, int64_t T,
                float lr = 1e-2f) {
  const int64_t V = st.config().vocab_size, N = B * T;
  std::vector<int32_t> tg(ids.begin() + 1, ids.end());
  tg.push_back(-100);
  st.params().zero_grad();
  const float* lg = st.forward(ids.data(), B, T);
  std::vector<float> dl(size_t(N * V), 0.f);
  distill_loss(lg, nullptr, tg.data(), N, V, {0.f, 1.f, false}, dl.data(), 1.f);
  st.backward(dl.data());
  AdamWConfig cfg;
  adamw_step(st.params(), cfg, lr, 1);
}

// Logits of a saved model folder for ids (one sequence), vs the student's.
double logits_diff(const std::string& folder, Backend& be, TrainLlama& st,
                   const std::vector<int32_t>& ids, double* ref_max = nullptr) {
  LoadedModel m = open_model(folder, be, false);
  const int64_t T = int64_t(ids.size()), V = st.config().vocab_size;
  RunState rs = m.model->new_state(T, T);
  Tensor lt = m.model->forward(rs, ids.data(), T, true);
  const float* ls = st.forward(ids.data(), 1, T);
  double md = 0, mx = 0;
  for (int64_t i = 0; i < T * V; ++i) {
    md = std::max(md, double(std::abs(lt.data<float>()[i] - ls[i])));
    mx = std::max(mx, double(std::abs(ls[i])));
  }
  if (ref_max) *ref_max = mx;
  return md;
}

}  // namespace

TEST_CASE("train qat: fake quantization, STE and LSQ gradients equal PyTorch autograd") {
  auto f = SafetensorsFile::open(kRef);
  const Tensor& W = f->get("W");
  const Tensor& G = f->get("G");
  const int64_t O = 5, I = 70;
  struct Cfg {
    const char* key;
    QatSpec spec;
  };
  const Cfg cfgs[] = {{"int8", parse_qat("int8")},
                      {"int4g32", parse_qat("int4-g32")},
                      {"ternary", parse_qat("ternary")}};
  for (const Cfg& c : cfgs)
    for (bool lsq : {false, true}) {
      CAPTURE(c.key);
      CAPTURE(lsq);
      const std::string k = std::string(c.key) + (lsq ? ".lsq" : "");
      const QatLayout lay = qat_layout(c.spec, O, I, "W");
      std::vector<float> s = vec(f->get(k + ".s"));
      REQUIRE(int64_t(s.size()) == lay.count());
      if (!lsq) {  // the statistic scales are the engine's own
        std::vector<float> mine(s.size());
        qat_init_scales(mine.data(), W.data<float>(), O, I, lay);
        for (size_t j = 0; j < s.size(); ++j) CHECK(mine[j] == doctest::Approx(s[j]).epsilon(1e-6));
      }
      std::vector<float> wq(size_t(O * I)), dW(size_t(O * I), 0.f), ds(s.size(), 0.f);
      qat_fake_quant(wq.data(), W.data<float>(), s.data(), O, I, lay);
      CHECK(rel_err(wq.data(), f->get(k + ".w_hat")) <= 1e-6);
      qat_fake_quant_backward(dW.data(), lsq ? ds.data() : nullptr, G.data<float>(),
                              W.data<float>(), s.data(), O, I, lay);
      CHECK(rel_err(dW.data(), f->get(k + ".dW")) <= 1e-6);
      int masked = 0;
      for (float v : dW) masked += v == 0.f;
      CHECK(masked > 0);  // the clamp range masks some weights in every case
      if (lsq) CHECK(rel_err(ds.data(), f->get(k + ".ds")) <= 1e-5);
      // The export dequantizes to exactly the fake-quantized weights.
      QatSpec spec = c.spec;
      spec.lsq = lsq;
      const Linear q = qat_export("W", W.data<float>(), s.data(), O, I, spec);
      const Tensor back = dequantize_weight(q);
      for (int64_t i = 0; i < O * I; ++i) REQUIRE(back.data<float>()[i] == wq[size_t(i)]);
    }
}

TEST_CASE("train lora: forward and gradients equal PyTorch autograd") {
  auto f = SafetensorsFile::open(kRef);
  const int64_t N = 7, I = 9, O = 6, r = 3;
  const float scale = 16.f / 3.f;
  const Tensor& x = f->get("lora.x");
  std::vector<float> out(size_t(N * O)), h(size_t(N * r)), dh(size_t(N * r));
  linear_forward(out.data(), x.data<float>(), f->get("lora.W0").data<float>(), nullptr, N, I, O);
  lora_forward(out.data(), h.data(), x.data<float>(), f->get("lora.A").data<float>(),
               f->get("lora.B").data<float>(), scale, N, I, O, r);
  CHECK(rel_err(out.data(), f->get("lora.out")) <= 1e-5);
  std::vector<float> dx(size_t(N * I), 0.f), dA(size_t(r * I), 0.f), dB(size_t(O * r), 0.f);
  const float* dout = f->get("lora.dout").data<float>();
  linear_backward(dx.data(), nullptr, nullptr, dout, x.data<float>(),
                  f->get("lora.W0").data<float>(), N, I, O);
  lora_backward(dx.data(), dA.data(), dB.data(), h.data(), dh.data(), dout, x.data<float>(),
                f->get("lora.A").data<float>(), f->get("lora.B").data<float>(), scale, N, I, O, r);
  CHECK(rel_err(dx.data(), f->get("lora.dx")) <= 1e-5);
  CHECK(rel_err(dA.data(), f->get("lora.dA")) <= 1e-5);
  CHECK(rel_err(dB.data(), f->get("lora.dB")) <= 1e-5);
}

TEST_CASE("train qat: the exported compressed folder gives the fake-quantized training logits") {
  auto be = make_cpu_backend(1);
  LoadedModel t = open_model(kLlama, *be, false);
  const auto ids = random_ids(2 * 9, 101, 3);
  for (const char* fmt : {"int8", "int4-g32", "ternary"})
    for (bool lsq : {false, true}) {
      CAPTURE(fmt);
      CAPTURE(lsq);
      DistillOptions o;
      o.student = "init";
      o.qat = fmt;
      o.qat_lsq = lsq;
      auto st = make_student(o, *t.model);
      if (lsq) {  // LSQ adds one trainable scale tensor per projection
        CHECK(st->params().has("model.layers.0.self_attn.q_proj.weight_scale"));
      }
      train_step(*st, ids, 2, 9);
      train_step(*st, ids, 2, 9);
      test::TempDir tmp("qat-export");
      save_student(*st, *t.model, nullptr, o, tmp / "q", nlohmann::json::object());
      CHECK_FALSE(fs::exists(tmp.path / "q.qat-f32.tmp"));
      double mx = 0;
      const std::vector<int32_t> one(ids.begin(), ids.begin() + 9);
      const double md = logits_diff(tmp / "q", *be, *st, one, &mx);
      CHECK(md <= 1e-5 * std::max(1.0, mx));
      // The folder holds the real format, not f32.
      LoadedModel back = open_model(tmp / "q", *be, false);
      for (Linear* l : back.model->linears())
        if (l->name.find("model.layers.") == 0)
          CHECK(linear_format(*l) == (std::string(fmt) == "int8"      ? "int8"
                                      : std::string(fmt) == "ternary" ? "ternary"
                                                                      : "int4-g32"));
    }
}

TEST_CASE("train qat: STE training lowers the loss of a fake-quantized student") {
  auto be = make_cpu_backend(1);
  LoadedModel t = open_model(kLlama, *be, false);
  const auto ids = random_ids(2 * 9, 101, 7);
  DistillOptions o;
  o.student = "init";
  o.qat = "ternary";
  o.qat_lsq = true;
  auto st = make_student(o, *t.model);
  auto loss_of = [&] {
    std::vector<int32_t> tg(ids.begin() + 1, ids.end());
    tg.push_back(-100);
    std::vector<float> dl(size_t(18 * 101));
    return distill_loss(st->forward(ids.data(), 2, 9), nullptr, tg.data(), 18, 101,
                        {0.f, 1.f, false}, dl.data(), 1.f)
        .total;
  };
  const double before = loss_of();
  for (int i = 0; i < 5; ++i) train_step(*st, ids, 2, 9, 5e-3f);
  CHECK(loss_of() < before);
}

TEST_CASE("train lora: zero-init B keeps the base, merged and kept adapters give the LoRA logits") {
  auto be = make_cpu_backend(1);
  LoadedModel t = open_model(kLlama, *be, false);
  const auto ids = random_ids(2 * 9, 101, 11);
  const std::vector<int32_t> one(ids.begin(), ids.begin() + 9);
  DistillOptions o;
  o.student = "init";
  o.lora.rank = 4;
  o.lora.alpha = 8;
  o.lora.targets = {"q", "k", "v", "o", "gate", "up", "down"};
  auto st = make_student(o, *t.model);
  // Only the adapters are parameters (and get optimizer state): r * (in + out) per projection.
  const int64_t C = 48, F = 80, kvd = 16, r = 4;
  const int64_t per_layer = r * ((C + C) + (C + kvd) * 2 + (C + C) + (C + F) * 3);
  CHECK(int64_t(st->trainable_params()) == 2 * per_layer);
  // B = 0: the adapted model is the base.
  {
    double mx = 0;
    CHECK(logits_diff(kLlama, *be, *st, one, &mx) <= 1e-5 * std::max(1.0, mx));
  }
  const Tensor emb0 = st->full_weights(false)[0].second;
  const std::vector<float> emb_before(emb0.data<float>(), emb0.data<float>() + 101 * 48);
  for (int i = 0; i < 3; ++i) train_step(*st, ids, 2, 9);
  // The base is frozen.
  const Tensor emb1 = st->full_weights(false)[0].second;
  CHECK(std::equal(emb_before.begin(), emb_before.end(), emb1.data<float>()));
  test::TempDir tmp("lora-export");
  o.lora.merge = true;
  save_student(*st, *t.model, nullptr, o, tmp / "merged", nlohmann::json::object());
  double mx = 0;
  const double md = logits_diff(tmp / "merged", *be, *st, one, &mx);
  CHECK(md <= 1e-4 * std::max(1.0, mx));
  // Kept adapters: PEFT files beside the base; the loader merges them.
  o.lora.merge = false;
  save_student(*st, *t.model, nullptr, o, tmp / "kept", nlohmann::json::object());
  CHECK(fs::exists(tmp.path / "kept/adapter_model.safetensors"));
  CHECK(fs::exists(tmp.path / "kept/adapter_config.json"));
  CHECK(logits_diff(tmp / "kept", *be, *st, one) <= 1e-4 * std::max(1.0, mx));
  // A broken adapter config is an error naming the file, not a silently unadapted model.
  {
    std::ofstream f(tmp.path / "kept/adapter_config.json");
    f << R"({"peft_type": "LORA", "r": 0, "lora_alpha": 8})";
  }
  CHECK(test::error_of([&] {
          open_model(tmp / "kept", *be, false);
        }).find("adapter_config.json: 'r' must be a positive integer") != std::string::npos);
  {
    std::ofstream f(tmp.path / "kept/adapter_config.json");
    f << R"({"peft_type": "LORA", "r": 3, "lora_alpha": 8})";
  }
  CHECK(test::error_of([&] { open_model(tmp / "kept", *be, false); }).find("(r = 3)") !=
        std::string::npos);
}

TEST_CASE("train lora: QLoRA keeps an NF4 base in NF4 and trains through it") {
  auto be = make_cpu_backend(1);
  LoadedModel t = open_model(kLlama, *be, false);
  CompressSpec spec = compress_spec_from_name("nf4");
  spec.head_format = "fp16";  // the tied head stays the embedding (the student ties them)
  compress_model(*t.model, spec, nullptr, false);
  const auto ids = random_ids(2 * 9, 101, 13);
  const std::vector<int32_t> one(ids.begin(), ids.begin() + 9);
  DistillOptions o;
  o.student = "init";
  o.lora.rank = 2;
  o.lora.targets = {"q", "v", "down"};
  auto st = make_student(o, *t.model);
  // B = 0: the student's logits are the NF4 model's (its base dequantized per product).
  {
    RunState rs = t.model->new_state(9, 9);
    Tensor lt = t.model->forward(rs, one.data(), 9, true);
    const float* ls = st->forward(one.data(), 1, 9);
    double md = 0;
    for (int64_t i = 0; i < 9 * 101; ++i)
      md = std::max(md, double(std::abs(lt.data<float>()[i] - ls[i])));
    CHECK(md <= 1e-4);
  }
  for (int i = 0; i < 3; ++i) train_step(*st, ids, 2, 9);
  test::TempDir tmp("qlora");
  o.lora.merge = true;
  save_student(*st, *t.model, nullptr, o, tmp / "m", nlohmann::json::object());
  double mx = 0;
  CHECK(logits_diff(tmp / "m", *be, *st, one, &mx) <= 1e-4 * std::max(1.0, mx));
}

TEST_CASE("train distill: --generate samples teacher text as training data, deterministically") {
  auto be = make_cpu_backend(1);
  LoadedModel t = open_model("tests/fixtures/gguf/tiny_llama.gguf", *be);
  const auto a = generate_sequences(*t.model, t.tokenizer->bos_id(), 3, 10, 1.f, 0, 7, false);
  const auto b = generate_sequences(*t.model, t.tokenizer->bos_id(), 3, 10, 1.f, 0, 7, false);
  REQUIRE(a.size() == 3);
  CHECK(a == b);
  CHECK(a[0] != a[1]);
  for (const auto& s : a) {
    CHECK(s.size() == 10);
    CHECK(s[0] == t.tokenizer->bos_id());
  }
  // Data-free: no text at all, only the teacher's samples.
  DistillOptions o;
  o.student = "init";
  o.steps = 2;
  o.batch = 2;
  o.seq = 8;
  o.generate = 4;
  o.progress = false;
  test::TempDir tmp("generate");
  const DistillResult r = distill(*t.model, t.tokenizer.get(), {}, "none", {}, o, tmp / "out");
  CHECK(r.finished);
  CHECK(r.log["train_windows"] == 4);
}

TEST_CASE("train qat/lora: bad input gets a clear error and writes nothing") {
  auto be = make_cpu_backend(1);
  LoadedModel t = open_model(kLlama, *be, false);
  const auto ids = random_ids(200, 101, 1);
  test::TempDir tmp("qat-bad");
  auto err = [&](DistillOptions o) {
    o.steps = 1;
    o.batch = 1;
    o.seq = 8;
    o.progress = false;
    const std::string e =
        test::error_of([&] { distill(*t.model, nullptr, ids, "ids", {}, o, tmp / "out"); });
    CHECK_FALSE(fs::exists(tmp.path / "out"));
    return e;
  };
  DistillOptions o;
  o.student = "init";
  o.lora.rank = 0;
  o.lora.rank = -1;
  CHECK(err(o).find("--lora-rank -1") != std::string::npos);
  o.lora.rank = 17;  // k_proj is [16, 48]
  CHECK(err(o).find("exceeds min(in, out) = 16") != std::string::npos);
  CHECK_THROWS_WITH(parse_lora_targets("q,attn"), doctest::Contains("unknown target 'attn'"));
  o.lora.rank = 2;
  o.lora.targets = {"q", "qkv"};
  CHECK(err(o).find("unknown target 'qkv'") != std::string::npos);
  o = DistillOptions{};
  o.student = "init";
  o.qat = "nf4";
  CHECK(err(o).find("not a QAT format") != std::string::npos);
  o.qat = "int4-g48";
  CHECK(err(o).find("multiple of 32") != std::string::npos);
  o.qat = "";
  o.qat_lsq = true;
  CHECK(err(o).find("--lsq needs --qat") != std::string::npos);
  o.qat = "int8";
  o.lora.rank = 2;
  CHECK(err(o).find("QAT together with LoRA") != std::string::npos);
  // --generate with an encoder teacher.
  LoadedModel bert = open_model("tests/fixtures/parity/bert", *be, false);
  DistillOptions g;
  g.student = "init";
  g.generate = 2;
  g.steps = 1;
  g.seq = 8;
  g.progress = false;
  const std::string e =
      test::error_of([&] { distill(*bert.model, nullptr, ids, "ids", {}, g, tmp / "out"); });
  CHECK_MESSAGE(e.find("--generate 2: the teacher is an encoder") != std::string::npos, e);
  CHECK_FALSE(fs::exists(tmp.path / "out"));
}

TEST_CASE("train qat/lora: whole-model gradients of the tiny LLaMA equal PyTorch autograd") {
  const ModelConfig cfg = load_config(std::string(kLlama) + "/config.json");
  auto ref = SafetensorsFile::open("tests/fixtures/train/qat_lora_model.safetensors");
  auto data = SafetensorsFile::open("tests/fixtures/train/llama_grads.safetensors");
  const Tensor& ids_t = data->get("ids");
  const int64_t B = ids_t.dim(0), T = ids_t.dim(1), N = B * T, V = cfg.vocab_size;
  const std::vector<int32_t> ids(ids_t.data<int32_t>(), ids_t.data<int32_t>() + N);
  const Tensor& tg_t = data->get("targets");
  const std::vector<int32_t> targets(tg_t.data<int32_t>(), tg_t.data<int32_t>() + N);
  for (const char* kind : {"lora", "qat"}) {
    const std::string k = kind;
    CAPTURE(k);
    TrainMods mods;
    if (k == "lora") {
      mods.lora.rank = 2;
      mods.lora.alpha = 4;
      mods.lora.targets = {"q", "k", "v", "o", "gate", "up", "down"};
    } else {
      mods.qat = parse_qat("int4-g32");
      mods.qat->lsq = true;
    }
    TrainLlama m(cfg, mods);
    m.load(SafetensorsSource(WeightStore::open(kLlama)));
    // The reference's adapters / scales.
    m.params().walk([&](const ParamTensor& p, float* w, float*, float*, float*) {
      const std::string n = k + "." + p.name;
      if (ref->has(n)) std::memcpy(w, ref->get(n).data<float>(), p.numel * sizeof(float));
    });
    m.params().zero_grad();
    const float* logits = m.forward(ids.data(), B, T);
    std::vector<float> dl(size_t(N * V), 0.f);
    const LossParts lp =
        distill_loss(logits, nullptr, targets.data(), N, V, {0.f, 1.f, false}, dl.data());
    CHECK(lp.total == doctest::Approx(ref->get(k + ".loss").data<float>()[0]).epsilon(1e-5));
    m.backward(dl.data());
    size_t checked = 0;
    double worst = 0;
    for (const ParamTensor& p : m.params().table()) {
      const std::string n = "g." + k + "." + p.name;
      if (!ref->has(n)) continue;
      CAPTURE(p.name);
      const double e = rel_err(m.params().grads().data() + p.offset, ref->get(n));
      worst = std::max(worst, e);
      CHECK(e <= 1e-4);
      ++checked;
    }
    // LoRA: 2 adapters x 7 projections x 2 layers; QAT: weight + scale x 7 x 2.
    CHECK(checked == 28);
    MESSAGE(k << ": worst relative gradient error " << worst);
  }
}

namespace {

// An uninterrupted run of o to `a`, and the same run stopped at step 3 (checkpoint) and resumed
// to `b`: the outputs, the last loss and the evaluation are identical.
void check_resume(const DistillOptions& o, const test::TempDir& tmp, int expect_tensors) {
  auto be = make_cpu_backend(1);
  auto teacher = load_model(kLlama, *be);
  const auto ids = random_ids(300, 101, 1), eval = random_ids(100, 101, 2);
  const DistillResult a = distill(*teacher, nullptr, ids, "ids", eval, o, tmp / "a");
  REQUIRE(a.finished);
  DistillOptions o1 = o;
  o1.checkpoint = tmp / "ck";
  o1.stop_at = 3;
  CHECK_FALSE(distill(*teacher, nullptr, ids, "ids", eval, o1, tmp / "b").finished);
  DistillOptions o2 = o;
  o2.resume = tmp / "ck";
  const DistillResult b = distill(*teacher, nullptr, ids, "ids", eval, o2, tmp / "b");
  REQUIRE(b.finished);
  CHECK(b.steps.front().step == 4);
  CHECK(b.steps.back().loss == a.steps.back().loss);
  CHECK(b.evals.back().ppl == a.evals.back().ppl);
  CHECK(test::same_folder_tensors(tmp.path / "a", tmp.path / "b") == expect_tensors);
}

DistillOptions resume_opts() {
  return test::tiny_distill("init", 6, 2, 2, 2, 5);
}

}  // namespace

TEST_CASE("train qat: a resumed QAT run (int4-g32, LSQ) is bit-identical to an uninterrupted one") {
  test::TempDir tmp("qat-resume");
  DistillOptions o = resume_opts();
  o.qat = "int4-g32";
  o.qat_lsq = true;
  // The checkpoint holds the latent weights, the 14 learned scale tensors and their AdamW
  // moments. The compressed output: 14 quantized projections (codes + scales), the embedding and
  // 5 norms.
  check_resume(o, tmp, 14 * 2 + 1 + 5);
  // The learned scales travel in the checkpoint: a resume under plain QAT (statistic scales) is
  // refused, not silently restarted from the statistic.
  DistillOptions o3 = o;
  o3.qat_lsq = false;
  o3.resume = tmp / "ck";
  auto be = make_cpu_backend(1);
  auto teacher = load_model(kLlama, *be);
  CHECK_THROWS_WITH(distill(*teacher, nullptr, random_ids(300, 101, 1), "ids", {}, o3, tmp / "c"),
                    doctest::Contains("made with qat"));
}

TEST_CASE("train lora: a resumed LoRA run is bit-identical to an uninterrupted one") {
  test::TempDir tmp("lora-resume");
  DistillOptions o = resume_opts();
  o.lora.rank = 2;
  o.lora.alpha = 4;
  o.lora.targets = {"q", "v", "down"};
  // The checkpoint holds the 12 adapters and their AdamW moments (the frozen base comes from the
  // student spec again). The output keeps the adapters: the base (embedding, 2 x (2 norms + 7
  // projections), final norm) and 2 layers x 3 targets x (A, B).
  check_resume(o, tmp, 1 + 2 * 9 + 1 + 2 * 3 * 2);
}
