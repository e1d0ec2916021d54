// The training engine end to end: whole-model gradients against PyTorch autograd, the optimizer,
// checkpoint resume, the distillation loop and its input errors.
#include <doctest/doctest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <vector>

#include "app/report.h"
#include "engine/backend.h"
#include "engine/config.h"
#include "engine/safetensors.h"
#include "engine/weights.h"
#include "models/loader.h"
#include "tests/test_util.h"
#include "tests/train_test_util.h"
#include "train/bert_train.h"
#include "train/checkpoint.h"
#include "train/distill.h"
#include "train/gpt2_train.h"
#include "train/llama_train.h"
#include "train/loss.h"
#include "train/optim.h"

using namespace minfer;
using namespace minfer::train;

namespace {

const char* kLlama = "tests/fixtures/parity/llama";
const char* kGrads = "tests/fixtures/train/llama_grads.safetensors";

std::vector<int32_t> ints(const Tensor& t) {
  REQUIRE(t.dtype() == DType::I32);
  return std::vector<int32_t>(t.data<int32_t>(), t.data<int32_t>() + t.numel());
}

// max |a − ref| / max |ref| over one tensor: the relative error of the whole gradient tensor
// (element-wise ratios blow up on entries that are ~0 in both).
double rel_err(const float* a, const Tensor& ref) {
  const float* r = ref.data<float>();
  double diff = 0, mx = 0;
  for (int64_t i = 0; i < ref.numel(); ++i) {
    diff = std::max(diff, std::abs(double(a[i]) - r[i]));
    mx = std::max(mx, std::abs(double(r[i])));
  }
  return diff / std::max(mx, 1e-30);
}

}  // namespace

namespace {

using test::random_ids;

DistillOptions tiny_opts() {
  return test::tiny_distill("init:layers=1", 8, 2, 2, 2, 5);
}

}  // namespace

// Loads the parity model in `dir` into a training model M, runs the CE and the KD loss on the
// batch the reference file holds and compares every parameter's gradient with PyTorch's.
template <typename M>
void check_grads_against_torch(const std::string& dir, const std::string& grads, size_t n_params) {
  const ModelConfig cfg = load_config(dir + "/config.json");
  M m(cfg);
  m.load(SafetensorsSource(WeightStore::open(dir)));
  auto ref = SafetensorsFile::open(grads);
  const Tensor& ids_t = ref->get("ids");
  const int64_t B = ids_t.dim(0), T = ids_t.dim(1), N = B * T, V = cfg.vocab_size;
  const std::vector<int32_t> ids = ints(ids_t), targets = ints(ref->get("targets"));
  const float* teacher = ref->get("teacher").data<float>();
  for (const char* tag : {"ce", "kd"}) {
    const std::string tag_name = tag;
    CAPTURE(tag_name);
    const bool kd = tag_name == "kd";
    DistillLossArgs la{kd ? 0.5f : 0.f, kd ? 2.f : 1.f, false};
    m.params().zero_grad();
    const float* logits = m.forward(ids.data(), B, T);
    std::vector<float> dlogits(size_t(N * V), 0.f);
    const LossParts lp =
        distill_loss(logits, kd ? teacher : nullptr, targets.data(), N, V, la, dlogits.data());
    CHECK(lp.total == doctest::Approx(ref->get("loss_" + tag_name).data<float>()[0]).epsilon(1e-5));
    m.backward(dlogits.data());
    size_t checked = 0;
    double worst = 0;
    for (const ParamTensor& p : m.params().table()) {
      CAPTURE(p.name);
      const Tensor& g = ref->get(tag_name + "." + p.name);
      REQUIRE(size_t(g.numel()) == p.numel);
      const double e = rel_err(m.params().grads().data() + p.offset, g);
      CHECK(e <= 1e-4);
      worst = std::max(worst, e);
      ++checked;
    }
    CHECK(checked == n_params);  // every parameter PyTorch has (a tied head counted once)
    MESSAGE(dir << " " << tag_name << ": worst relative gradient error " << worst);
  }
}

TEST_CASE("train llama: whole-model gradients equal PyTorch autograd (GQA, tied)") {
  const ModelConfig cfg = load_config(std::string(kLlama) + "/config.json");
  REQUIRE(cfg.tie_embeddings);
  REQUIRE(cfg.n_kv_heads < cfg.n_heads);
  check_grads_against_torch<TrainLlama>(kLlama, kGrads, 2 * 9 + 2);
}

TEST_CASE("train gpt2: whole-model gradients equal PyTorch autograd (learned positions, tied)") {
  check_grads_against_torch<TrainGpt2>("tests/fixtures/parity/gpt2",
                                       "tests/fixtures/train/gpt2_grads.safetensors", 2 * 12 + 4);
}

TEST_CASE("train bert: whole-model gradients equal PyTorch autograd (padded batch, types)") {
  const std::string dir = "tests/fixtures/parity/bert";
  const ModelConfig cfg = load_config(dir + "/config.json");
  TrainBert m(cfg);
  m.load(SafetensorsSource(WeightStore::open(dir)));
  auto ref = SafetensorsFile::open("tests/fixtures/train/bert_grads.safetensors");
  const Tensor& ids_t = ref->get("ids");
  const int64_t B = ids_t.dim(0), T = ids_t.dim(1), N = B * T, C = cfg.hidden;
  const std::vector<int32_t> ids = ints(ids_t), mask = ints(ref->get("mask")),
                             types = ints(ref->get("types"));
  const float* r = ref->get("r").data<float>();
  const float* h = m.forward(ids.data(), B, T, mask.data(), types.data());
  std::vector<float> dh(size_t(N * C));
  double loss = 0;
  for (int64_t n = 0; n < N; ++n)
    for (int64_t i = 0; i < C; ++i) {
      dh[size_t(n * C + i)] = mask[size_t(n)] ? r[n * C + i] : 0.f;
      loss += double(h[n * C + i]) * dh[size_t(n * C + i)];
    }
  CHECK(loss == doctest::Approx(ref->get("loss").data<float>()[0]).epsilon(1e-5));
  m.backward(dh.data());
  // The key bias's gradient is 0 in exact arithmetic (adding q·b_k to every score of a row does
  // not change its softmax); PyTorch's is rounding noise (~5e-7 against a largest gradient of 18).
  // Such tensors are checked to be ~0 on both sides instead of by relative error.
  double gmax = 0;
  for (const ParamTensor& p : m.params().table()) {
    const Tensor& g = ref->get("g." + p.name);
    for (int64_t i = 0; i < g.numel(); ++i)
      gmax = std::max(gmax, double(std::abs(g.data<float>()[i])));
  }
  double worst = 0;
  size_t checked = 0, zero = 0;
  for (const ParamTensor& p : m.params().table()) {
    CAPTURE(p.name);
    const Tensor& g = ref->get("g." + p.name);
    const float* ours = m.params().grads().data() + p.offset;
    double rmax = 0, omax = 0;
    for (int64_t i = 0; i < g.numel(); ++i) {
      rmax = std::max(rmax, double(std::abs(g.data<float>()[i])));
      omax = std::max(omax, double(std::abs(ours[i])));
    }
    if (rmax < 1e-6 * gmax) {
      CHECK(omax < 1e-6 * gmax);
      ++zero;
    } else {
      const double e = rel_err(ours, g);
      CHECK(e <= 1e-4);
      worst = std::max(worst, e);
    }
    ++checked;
  }
  CHECK(checked == 5 + 2 * 16);
  CHECK(zero == 2);  // the two key biases
  MESSAGE("bert: worst relative gradient error " << worst);
}

TEST_CASE("train optim: AdamW with clipping follows torch.optim.AdamW") {
  auto ref = SafetensorsFile::open("tests/fixtures/train/adamw.safetensors");
  ParamStore P;
  P.add("w", {3, 5}, true);
  P.add("n", {4}, false);
  P.allocate();
  for (const char* n : {"w", "n"}) {
    const Tensor& t = ref->get(std::string("init.") + n);
    std::memcpy(P.w(n), t.data<float>(), t.nbytes());
  }
  const float* lr = ref->get("lr").data<float>();
  const float* norms = ref->get("norm").data<float>();
  AdamWConfig c;
  c.weight_decay = 0.1f;
  for (int k = 0; k < 3; ++k) {
    for (const char* n : {"w", "n"}) {
      const Tensor& g = ref->get(fmt::format("grad{}.{}", k, n));
      std::memcpy(P.g(n), g.data<float>(), g.nbytes());
    }
    CHECK(clip_grad_norm(P, 1.0) == doctest::Approx(norms[k]).epsilon(1e-6));
    adamw_step(P, c, lr[k], k + 1);
  }
  for (const char* n : {"w", "n"}) {
    CAPTURE(n);
    const ParamTensor& p = P.find(n);
    CHECK(rel_err(P.w(n), ref->get(std::string("final.") + n)) <= 1e-6);
    CHECK(rel_err(P.m().data() + p.offset, ref->get(std::string("m.") + n)) <= 1e-6);
    CHECK(rel_err(P.v().data() + p.offset, ref->get(std::string("v.") + n)) <= 1e-6);
  }
}

TEST_CASE("train optim: warmup + cosine schedule") {
  // warmup 4 steps to 1.0, cosine to 0.1 at step 14
  CHECK(lr_at(0, 4, 14, 1.f, 0.1f) == doctest::Approx(0.25));
  CHECK(lr_at(3, 4, 14, 1.f, 0.1f) == doctest::Approx(1.0));
  CHECK(lr_at(4, 4, 14, 1.f, 0.1f) == doctest::Approx(1.0));
  CHECK(lr_at(9, 4, 14, 1.f, 0.1f) == doctest::Approx(0.55));  // half way: (1 + 0.1) / 2
  CHECK(lr_at(14, 4, 14, 1.f, 0.1f) == doctest::Approx(0.1));
  CHECK(lr_at(20, 4, 14, 1.f, 0.1f) == doctest::Approx(0.1));
  ParamStore P;
  P.add("x", {2}, false);
  P.allocate();
  P.g("x")[0] = NAN;
  CHECK_THROWS_WITH(clip_grad_norm(P, 1.0), doctest::Contains("diverged"));
}

TEST_CASE("train checkpoint: save and load restore weights, moments and state") {
  const ModelConfig cfg = load_config(std::string(kLlama) + "/config.json");
  TrainLlama a(cfg), b(cfg);
  a.init_random(3);
  for (float& g : a.params().grads()) g = 0.01f;
  adamw_step(a.params(), AdamWConfig{}, 1e-3f, 1);
  test::TempDir tmp("ckpt");
  TrainerState s{5, 40, 11, nlohmann::json{{"lr", 0.1}}};
  save_checkpoint(tmp / "ck", a, s);
  const TrainerState r = load_checkpoint(tmp / "ck", b);
  CHECK(r.step == 5);
  CHECK(r.data_position == 40);
  CHECK(r.seed == 11);
  CHECK(b.params().weights() == a.params().weights());
  CHECK(b.params().m() == a.params().m());
  CHECK(b.params().v() == a.params().v());
  // A checkpoint is a model folder.
  CHECK(load_config(tmp / "ck/config.json").n_layers == cfg.n_layers);
  CHECK_THROWS_WITH(load_checkpoint(tmp / "nothing", b),
                    doctest::Contains("not a training checkpoint"));
}

TEST_CASE("train distill: a resumed run is bit-identical to an uninterrupted one") {
  auto be = make_cpu_backend(1);
  auto teacher = load_model(kLlama, *be);
  const auto ids = random_ids(300, 101, 1), eval = random_ids(100, 101, 2);
  test::TempDir tmp("distill");
  DistillOptions o = tiny_opts();
  const DistillResult a = distill(*teacher, nullptr, ids, "ids", eval, o, tmp / "a");
  REQUIRE(a.finished);
  CHECK(a.steps.back().loss < a.steps.front().loss);  // it learns
  CHECK(a.steps.front().kd > 0);
  CHECK(a.steps.front().ce > 0);
  REQUIRE(a.evals.size() == 1);

  DistillOptions o1 = o;
  o1.checkpoint = tmp / "ck";
  o1.stop_at = 3;
  const DistillResult b1 = distill(*teacher, nullptr, ids, "ids", eval, o1, tmp / "b");
  CHECK_FALSE(b1.finished);
  CHECK_FALSE(std::filesystem::exists(tmp / "b"));  // only the checkpoint is written
  DistillOptions o2 = o;
  o2.resume = tmp / "ck";
  const DistillResult b2 = distill(*teacher, nullptr, ids, "ids", eval, o2, tmp / "b");
  REQUIRE(b2.finished);
  CHECK(b2.steps.front().step == 4);
  auto wa = SafetensorsFile::open(tmp / "a/model.safetensors");
  auto wb = SafetensorsFile::open(tmp / "b/model.safetensors");
  int compared = 0;
  for (const auto& [name, t] : wa->tensors()) {
    CAPTURE_BINDING(name);
    const Tensor& u = wb->get(name);
    REQUIRE(u.nbytes() == t.nbytes());
    CHECK(std::memcmp(u.raw(), t.raw(), t.nbytes()) == 0);
    ++compared;
  }
  CHECK(compared == 1 * 9 + 2);
  CHECK(b2.steps.back().loss == a.steps.back().loss);
  CHECK(b2.evals.back().ppl == a.evals.back().ppl);

  // Resuming with different options is refused.
  DistillOptions o3 = o;
  o3.resume = tmp / "ck";
  o3.lr = 2e-2f;
  CHECK_THROWS_WITH(distill(*teacher, nullptr, ids, "ids", eval, o3, tmp / "c"),
                    doctest::Contains("made with lr"));

  // The output is a model folder the inference engine runs with the same logits.
  auto out = load_model(tmp / "a", *be);
  TrainLlama st(out->config());
  st.load(SafetensorsSource(WeightStore::open(tmp / "a")));
  const float* lt = st.forward(ids.data(), 1, 8);
  RunState rs = out->new_state(8, 8);
  Tensor li = out->forward(rs, ids.data(), 8, true);
  double md = 0;
  for (int64_t i = 0; i < 8 * 101; ++i)
    md = std::max(md, double(std::abs(li.data<float>()[i] - lt[i])));
  CHECK(md < 1e-4);
}

TEST_CASE("train distill: bad input gets a clear error and writes nothing") {
  auto be = make_cpu_backend(1);
  auto teacher = load_model(kLlama, *be);
  const auto ids = random_ids(300, 101, 1);
  test::TempDir tmp("distill-bad");
  const std::string out = tmp / "out";
  auto run = [&](const DistillOptions& o, const std::vector<int32_t>& data) {
    distill(*teacher, nullptr, data, "wiki.valid.raw", {}, o, out);
  };
  DistillOptions o = tiny_opts();
  o.loss.alpha = 1.5f;
  CHECK_THROWS_WITH(run(o, ids), doctest::Contains("--alpha 1.5 outside [0, 1]"));
  o = tiny_opts();
  o.loss.tau = 0.f;
  CHECK_THROWS_WITH(run(o, ids), doctest::Contains("--temperature 0 must be > 0"));
  o = tiny_opts();
  CHECK_THROWS_WITH(run(o, random_ids(8, 101, 3)),
                    doctest::Contains("wiki.valid.raw: 8 tokens, shorter than one training "
                                      "sequence (--seq 8 needs 9)"));
  o = tiny_opts();
  o.student = "init:layers=0,5";
  CHECK_THROWS_WITH(run(o, ids), doctest::Contains("layer 5 but the teacher has 2 layers"));
  // A student whose vocabulary differs.
  {
    std::ifstream in(std::string(kLlama) + "/config.json");
    nlohmann::json j;
    in >> j;
    j["vocab_size"] = 99;
    std::ofstream(tmp / "student.json") << j.dump();
  }
  o = tiny_opts();
  o.student = tmp / "student.json";
  CHECK_THROWS_WITH(run(o, ids), doctest::Contains("student vocabulary (99 tokens"));
  // An encoder teacher.
  auto bert = load_model("tests/fixtures/parity/bert", *be);
  CHECK_THROWS_WITH(distill(*bert, nullptr, ids, "ids", {}, tiny_opts(), out),
                    doctest::Contains("the teacher is an encoder"));
  CHECK_FALSE(std::filesystem::exists(out));
  // No leftover temporary folder either.
  CHECK(std::distance(std::filesystem::directory_iterator(tmp.path), {}) == 1);
}

TEST_CASE("train llama: gradient checkpointing gives the same gradients with less memory") {
  ModelConfig cfg = load_config(std::string(kLlama) + "/config.json");
  cfg.n_layers = 2;
  TrainLlama a(cfg), b(cfg);
  a.load(SafetensorsSource(WeightStore::open(kLlama)));
  b.load(SafetensorsSource(WeightStore::open(kLlama)));
  b.set_checkpointing(true);
  const int64_t B = 3, T = 9, N = B * T, V = cfg.vocab_size;
  const auto ids = random_ids(size_t(N), int32_t(V), 9), tg = random_ids(size_t(N), int32_t(V), 10);
  for (TrainLlama* m : {&a, &b}) {
    const float* logits = m->forward(ids.data(), B, T);
    std::vector<float> d(size_t(N * V), 0.f);
    distill_loss(logits, nullptr, tg.data(), N, V, DistillLossArgs{0.f, 1.f, false}, d.data());
    m->backward(d.data());
  }
  CHECK(a.params().grads() == b.params().grads());  // bit for bit
  CHECK(b.activation_bytes() < a.activation_bytes());
  MESSAGE("activations: " << a.activation_bytes() << " bytes, with checkpointing "
                          << b.activation_bytes());
}

TEST_CASE("train report: the curves plot draws every series and refuses an empty one") {
  std::vector<CurveSeries> c{{"loss", {{1, 5.0}, {2, 4.0}, {3, 3.5}}}, {"eval", {{3, 3.9}}}};
  const std::string svg = curves_svg("t", "step", "loss", c);
  CHECK(svg.find("<polyline") != std::string::npos);
  CHECK(svg.find(">loss</text>") != std::string::npos);
  CHECK(svg.find(">eval</text>") != std::string::npos);
  CHECK(svg.find("<circle") != std::string::npos);
  CHECK_THROWS_WITH(curves_svg("t", "step", "loss", {{"x", {{1, NAN}}}}),
                    doctest::Contains("no finite point"));
}

TEST_CASE("train report: the curves of distill logs (train-curves) and their input errors") {
  // A real log: CE only (alpha 0), evaluations at steps 0, 2 and 4.
  auto be = make_cpu_backend(1);
  auto teacher = load_model(kLlama, *be);
  DistillOptions o = test::tiny_distill("init:layers=1", 4, 2, 1, 1, 3);
  o.loss.alpha = 0.f;
  o.eval_every = 2;
  const DistillResult r =
      distill(*teacher, nullptr, random_ids(200, 101, 1), "ids", random_ids(60, 101, 2), o, {});
  REQUIRE(r.evals.size() == 3);
  const auto c = training_log_curves(r.log.dump(), "CE", {"eval", "kd", "ce"}, 2, "log");
  REQUIRE(c.size() == 2);  // no KD series for a CE-only run
  CHECK(c[0].name == "CE eval NLL");
  REQUIRE(c[0].points.size() == 3);
  CHECK(c[0].points[0].first == 0);
  CHECK(c[0].points[2].second == r.evals[2].nll);
  CHECK(c[1].name == "CE train CE (mean of 2)");
  REQUIRE(c[1].points.size() == 4);
  CHECK(c[1].points[0].second == doctest::Approx(r.steps[0].ce));
  CHECK(c[1].points[3].second == doctest::Approx((r.steps[2].ce + r.steps[3].ce) / 2));
  CHECK(curves_svg("t", "step", "nats", c).find(">CE eval NLL</text>") != std::string::npos);
  // An encoder log's evaluations are MSEs.
  const auto e = training_log_curves(R"({"steps": [], "eval": [{"step": 0, "mse": 0.5}]})", "B",
                                     {"eval"}, 1, "log");
  CHECK(e[0].name == "B eval MSE");
  CHECK(e[0].points[0].second == 0.5);
  // Bad input: named, never a raw JSON exception.
  CHECK_THROWS_WITH(training_log_curves("{", "x", {"eval"}, 1, "--log a.json"),
                    doctest::Contains("--log a.json: not JSON"));
  CHECK_THROWS_WITH(training_log_curves("[1]", "x", {"eval"}, 1, "--log a.json"),
                    doctest::Contains("not a distill training log"));
  CHECK_THROWS_WITH(training_log_curves(R"({"steps": [{"step": 1}], "eval": []})", "x", {"loss"}, 1,
                                        "--log a.json"),
                    doctest::Contains("no number 'loss'"));
  CHECK_THROWS_WITH(training_log_curves(r.log.dump(), "x", {"ppl"}, 1, "--log a.json"),
                    doctest::Contains("unknown series 'ppl'"));
  CHECK_THROWS_WITH(training_log_curves(r.log.dump(), "x", {"ce"}, 0, "--log a.json"),
                    doctest::Contains("smoothing over 0 steps"));
}

TEST_CASE("train distill: a student initialised from a quantized GGUF teacher reproduces it") {
  // Q8_0 weights, Q/K rows permuted in the file for llama.cpp's RoPE, untied head: the student
  // takes the teacher's weights through the format table, so with every layer kept its logits
  // are the teacher's.
  auto be = make_cpu_backend(1);
  LoadedModel t = open_model("tests/fixtures/gguf/tiny_llama_q8_0.gguf", *be);
  REQUIRE_FALSE(t.model->config().tie_embeddings);
  DistillOptions o = tiny_opts();
  o.student = "init";
  auto st = make_student(o, *t.model);
  const auto ids = random_ids(11, 101, 4);
  const float* ls = st->forward(ids.data(), 1, 11);
  RunState rs = t.model->new_state(11, 11);
  Tensor lt = t.model->forward(rs, ids.data(), 11, true);
  double md = 0, mx = 0;
  for (int64_t i = 0; i < 11 * 101; ++i) {
    md = std::max(md, double(std::abs(lt.data<float>()[i] - ls[i])));
    mx = std::max(mx, double(std::abs(lt.data<float>()[i])));
  }
  CHECK(md <= 1e-4 * mx);
}

TEST_CASE("train distill: text files in, a model folder with the teacher's tokenizer out") {
  auto be = make_cpu_backend(1);
  LoadedModel t = open_model("tests/fixtures/gguf/tiny_llama.gguf", *be);
  test::TempDir tmp("distill-text");
  {
    std::ofstream f(tmp / "train.txt");
    for (int i = 0; i < 40; ++i) f << "the quick brown fox jumps over the lazy dog " << i << "\n";
  }
  const auto ids = tokenize_files(*t.tokenizer, {tmp / "train.txt"});
  REQUIRE(ids.size() > 100);
  DistillOptions o = tiny_opts();
  o.steps = 2;
  const DistillResult r =
      distill(*t.model, t.tokenizer.get(), ids, tmp / "train.txt", ids, o, tmp / "out");
  REQUIRE(r.finished);
  LoadedModel back = open_model(tmp / "out", *be);
  CHECK(back.model->config().n_layers == 1);
  REQUIRE(back.tokenizer);
  CHECK(back.tokenizer->encode("the quick brown fox") ==
        t.tokenizer->encode("the quick brown fox"));
  CHECK(std::filesystem::exists(tmp / "out/training_log.json"));
  CHECK_THROWS_WITH(tokenize_files(*t.tokenizer, {tmp / "missing.txt"}),
                    doctest::Contains("missing.txt: cannot open data file"));
}
