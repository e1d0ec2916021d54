// GPT-2 and BERT students in the distillation loop: GPT-2 next-token KD + CE (init from the
// teacher's blocks or a config), gradient checkpointing, resume, the saved folder's logits;
// BERT encoder distillation (MSE on pooled sentence embeddings): its gradient against finite
// differences, the loss falling, the folder `embed` opens, resume; the bad inputs of both.
#include <doctest/doctest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <vector>

#include "engine/backend.h"
#include "engine/config.h"
#include "engine/safetensors.h"
#include "engine/weights.h"
#include "models/eval.h"
#include "models/loader.h"
#include "tests/test_util.h"
#include "tests/train_test_util.h"
#include "train/bert_train.h"
#include "train/distill.h"
#include "train/gpt2_train.h"
#include "train/llama_train.h"
#include "train/loss.h"

using namespace minfer;
using namespace minfer::train;
namespace fs = std::filesystem;

namespace {

const char* kGpt2 = "tests/fixtures/parity/gpt2";  // V 97, C 32, 2 layers, 64 positions
const char* kBert = "tests/fixtures/parity/bert";  // V 103, C 32, 2 layers, no MLM head
const std::string kSt = "tests/fixtures/sentence_transformers/";

// Every tensor of two safetensors files is bit-identical; returns how many were compared.
int same_tensors(const std::string& a, const std::string& b) {
  auto fa = SafetensorsFile::open(a), fb = SafetensorsFile::open(b);
  int n = 0;
  for (const auto& [name, t] : fa->tensors()) {
    CAPTURE_BINDING(name);
    const Tensor& u = fb->get(name);
    REQUIRE(u.nbytes() == t.nbytes());
    CHECK(std::memcmp(u.raw(), t.raw(), t.nbytes()) == 0);
    ++n;
  }
  return n;
}

double max_abs_diff(const float* a, const float* b, int64_t n) {
  double d = 0;
  for (int64_t i = 0; i < n; ++i) d = std::max(d, double(std::abs(a[i] - b[i])));
  return d;
}

// A config.json like `src`'s with some fields changed.
std::string edited_config(const std::string& src, const fs::path& dst, const nlohmann::json& set) {
  std::ifstream in(src + "/config.json");
  nlohmann::json j;
  in >> j;
  for (auto it = set.begin(); it != set.end(); ++it) j[it.key()] = it.value();
  std::ofstream(dst) << j.dump();
  return dst.string();
}

// The tiny BERT as a sentence-transformers folder: parity weights, the fixture WordPiece
// tokenizer and mean pooling + Normalize (max_seq_length 8).
void make_bert_folder(const fs::path& dir) {
  fs::create_directories(dir);
  for (const char* f : {"config.json", "model.safetensors"})
    fs::copy_file(fs::path(kBert) / f, dir / f);
  fs::copy_file(kSt + "tokenizer.json", dir / "tokenizer.json");
  fs::copy(kSt + "mean_norm_8", dir, fs::copy_options::recursive);
}

// Random "sentences" for the encoder: n sequences of 3..12 tokens, [CLS]=2 ... [SEP]=3.
std::vector<std::vector<int32_t>> random_lines(size_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<std::vector<int32_t>> out;
  for (size_t i = 0; i < n; ++i) {
    const size_t len = 3 + rng() % 10;
    std::vector<int32_t> s{2};
    while (s.size() + 1 < len) s.push_back(int32_t(4 + rng() % 99));
    s.push_back(3);
    out.push_back(s);
  }
  return out;
}

DistillOptions bert_opts(const std::string& student) {
  DistillOptions o = test::tiny_distill(student, 12, 4, 1, 2, 3);
  o.seq = 12;
  o.lr = 5e-3f;
  return o;
}

}  // namespace

TEST_CASE("train distill gpt2: init from the teacher's blocks reproduces the teacher") {
  auto be = make_cpu_backend(1);
  auto teacher = load_model(kGpt2, *be);
  DistillOptions o = test::tiny_distill("init", 1, 1, 1, 0, 1);
  auto st = build_student(o, *teacher);
  REQUIRE(st->config().arch == Arch::GPT2);
  const auto ids = test::random_ids(13, 97, 4);
  const float* ls = st->forward(ids.data(), 1, 13);
  RunState rs = teacher->new_state(13, 13);
  Tensor lt = teacher->forward(rs, ids.data(), 13, true);
  CHECK(max_abs_diff(ls, lt.data<float>(), 13 * 97) < 1e-4);
  // Dropping a block changes the logits: the layer map is used.
  o.student = "init:layers=1";
  auto st1 = build_student(o, *teacher);
  CHECK(st1->config().n_layers == 1);
  CHECK(max_abs_diff(st1->forward(ids.data(), 1, 13), lt.data<float>(), 13 * 97) > 1e-2);
}

TEST_CASE("train gpt2: gradient checkpointing gives the same gradients with less memory") {
  const ModelConfig cfg = load_config(std::string(kGpt2) + "/config.json");
  TrainGpt2 a(cfg), b(cfg);
  a.load(SafetensorsSource(WeightStore::open(kGpt2)));
  b.load(SafetensorsSource(WeightStore::open(kGpt2)));
  b.set_checkpointing(true);
  const int64_t B = 3, T = 9, N = B * T, V = cfg.vocab_size;
  const auto ids = test::random_ids(size_t(N), int32_t(V), 9);
  const auto tg = test::random_ids(size_t(N), int32_t(V), 10);
  for (TrainGpt2* m : {&a, &b}) {
    const float* logits = m->forward(ids.data(), B, T);
    std::vector<float> d(size_t(N * V), 0.f);
    distill_loss(logits, nullptr, tg.data(), N, V, DistillLossArgs{0.f, 1.f, false}, d.data());
    m->backward(d.data());
  }
  CHECK(a.params().grads() == b.params().grads());  // bit for bit
  CHECK(b.activation_bytes() < a.activation_bytes());
  MESSAGE("gpt2 activations: " << a.activation_bytes() << " bytes, with checkpointing "
                               << b.activation_bytes());
}

TEST_CASE("train distill gpt2: the loss falls, resume is bit-identical, the folder reloads") {
  auto be = make_cpu_backend(1);
  auto teacher = load_model(kGpt2, *be);
  const auto ids = test::random_ids(300, 97, 1), eval = test::random_ids(100, 97, 2);
  test::TempDir tmp("distill-gpt2");
  DistillOptions o = test::tiny_distill("init:layers=1", 8, 2, 2, 2, 5);
  const DistillResult a = distill(*teacher, nullptr, ids, "ids", eval, o, tmp / "a");
  REQUIRE(a.finished);
  CHECK(a.steps.back().loss < a.steps.front().loss);
  CHECK(a.steps.front().kd > 0);
  CHECK(a.steps.front().ce > 0);
  REQUIRE(a.evals.size() == 1);
  MESSAGE("gpt2 student loss " << a.steps.front().loss << " -> " << a.steps.back().loss);

  DistillOptions o1 = o;
  o1.checkpoint = tmp / "ck";
  o1.stop_at = 3;
  const DistillResult b1 = distill(*teacher, nullptr, ids, "ids", eval, o1, tmp / "b");
  CHECK_FALSE(b1.finished);
  CHECK_FALSE(fs::exists(tmp / "b"));
  CHECK(load_config(tmp / "ck/config.json").arch == Arch::GPT2);  // the checkpoint is a folder
  DistillOptions o2 = o;
  o2.resume = tmp / "ck";
  const DistillResult b2 = distill(*teacher, nullptr, ids, "ids", eval, o2, tmp / "b");
  REQUIRE(b2.finished);
  CHECK(b2.steps.front().step == 4);
  // wte, wpe, ln_f (2) and the 12 tensors of one block.
  CHECK(same_tensors(tmp / "a/model.safetensors", tmp / "b/model.safetensors") == 2 + 2 + 12);
  CHECK(b2.steps.back().loss == a.steps.back().loss);
  CHECK(b2.evals.back().ppl == a.evals.back().ppl);

  // A two-block student with and without gradient checkpointing writes the same weights.
  DistillOptions od = o;
  od.student = "init";
  od.steps = 3;
  DistillOptions oc = od;
  oc.grad_checkpoint = true;
  const DistillResult d = distill(*teacher, nullptr, ids, "ids", eval, od, tmp / "d");
  const DistillResult c = distill(*teacher, nullptr, ids, "ids", eval, oc, tmp / "c");
  CHECK(c.activation_bytes < d.activation_bytes);
  CHECK(same_tensors(tmp / "d/model.safetensors", tmp / "c/model.safetensors") == 4 + 2 * 12);

  // The output is a gpt2 folder the inference engine runs with the trainer's logits.
  auto out = load_model(tmp / "a", *be);
  REQUIRE(out->config().arch == Arch::GPT2);
  CHECK(out->config().n_layers == 1);
  TrainGpt2 st(out->config());
  st.load(SafetensorsSource(WeightStore::open(tmp / "a")));
  const float* lt = st.forward(ids.data(), 1, 8);
  RunState rs = out->new_state(8, 8);
  Tensor li = out->forward(rs, ids.data(), 8, true);
  CHECK(max_abs_diff(li.data<float>(), lt, 8 * 97) < 1e-4);
}

TEST_CASE("train distill gpt2: a random-init student from a config.json learns") {
  auto be = make_cpu_backend(1);
  auto teacher = load_model(kGpt2, *be);
  test::TempDir tmp("distill-gpt2-cfg");
  const std::string cfg =
      edited_config(kGpt2, tmp / "small.json", {{"n_layer", 1}, {"n_embd", 16}, {"n_head", 2}});
  DistillOptions o = test::tiny_distill(cfg, 10, 4, 1, 2, 7);
  const auto ids = test::random_ids(400, 97, 3);
  const DistillResult r = distill(*teacher, nullptr, ids, "ids", {}, o, tmp / "out");
  REQUIRE(r.finished);
  CHECK(r.steps.back().loss < r.steps.front().loss);
  const ModelConfig back = load_config(tmp / "out/config.json");
  CHECK(back.arch == Arch::GPT2);
  CHECK(back.hidden == 16);
  CHECK(back.ffn == 64);
}

TEST_CASE("train distill gpt2: bad input gets a clear error and writes nothing") {
  auto be = make_cpu_backend(1);
  auto teacher = load_model(kGpt2, *be);
  const auto ids = test::random_ids(300, 97, 1);
  test::TempDir tmp("distill-gpt2-bad");
  const std::string out = tmp / "out";
  auto run = [&](const DistillOptions& o, const std::vector<int32_t>& data) {
    distill(*teacher, nullptr, data, "wiki.valid.raw", {}, o, out);
  };
  auto opts = [] { return test::tiny_distill("init:layers=1", 4, 2, 1, 1, 5); };
  DistillOptions o = opts();
  o.loss.alpha = -0.1f;
  CHECK_THROWS_WITH(run(o, ids), doctest::Contains("--alpha -0.1 outside [0, 1]"));
  o = opts();
  o.loss.tau = -1.f;
  CHECK_THROWS_WITH(run(o, ids), doctest::Contains("--temperature -1 must be > 0"));
  o = opts();
  CHECK_THROWS_WITH(run(o, test::random_ids(5, 97, 3)),
                    doctest::Contains("wiki.valid.raw: 5 tokens, shorter than one training "
                                      "sequence (--seq 8 needs 9)"));
  o = opts();
  o.student = "init:layers=2";
  CHECK_THROWS_WITH(run(o, ids), doctest::Contains("layer 2 but the teacher has 2 layers"));
  o = opts();
  o.student = edited_config(kGpt2, tmp / "v95.json",
                            {{"vocab_size", 95}, {"bos_token_id", 0}, {"eos_token_id", 0}});
  CHECK_THROWS_WITH(run(o, ids), doctest::Contains("student vocabulary (95 tokens"));
  // A bert student for a causal teacher.
  o = opts();
  o.student = std::string(kBert) + "/config.json";
  CHECK_THROWS_WITH(run(o, ids), doctest::Contains("is an encoder (bert) and the teacher is a "
                                                   "causal LM (gpt2)"));
  // A LoRA target gpt2 does not have (its q, k, v are one fused Conv1D).
  o = opts();
  o.lora.rank = 2;
  o.lora.targets = {"q", "v"};
  CHECK_THROWS_WITH(run(o, ids), doctest::Contains("unknown target 'q' for a gpt2 student "
                                                   "(expected qkv, o, up, down)"));
  // What only the LLaMA trainer has.
  o = opts();
  o.prune.method = "magnitude";
  o.prune.final_sparsity = 0.5;
  CHECK_THROWS_WITH(run(o, ids), doctest::Contains("--prune-schedule for a gpt2 student"));
  CHECK_FALSE(fs::exists(out));
  // Only the config file: no output and no temporary folder.
  CHECK(std::distance(fs::directory_iterator(tmp.path), {}) == 1);
}

TEST_CASE("train distill bert: the embedding loss's gradient equals finite differences") {
  const ModelConfig cfg = load_config(std::string(kBert) + "/config.json");
  TrainBert st(cfg);
  st.load(SafetensorsSource(WeightStore::open(kBert)));
  // Two sequences of 6 and 3 tokens, padded to 6; a fixed random target.
  const int64_t B = 2, T = 6, C = cfg.hidden;
  std::vector<int32_t> ids{2, 10, 20, 30, 40, 3, 2, 50, 3, 0, 0, 0};
  std::vector<int32_t> mask{1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0};
  std::mt19937_64 rng(5);
  std::normal_distribution<float> nd(0.f, 0.5f);
  std::vector<float> target(size_t(B * C));
  for (float& t : target) t = nd(rng);
  for (const bool cls : {false, true}) {
    CAPTURE(cls);
    st.params().zero_grad();
    embedding_mse_step(st, ids.data(), mask.data(), B, T, target.data(), cls, 1.f, true);
    const std::vector<float> g(st.params().grads().begin(), st.params().grads().end());
    // A few entries of several tensors: central differences in double of the f32 loss.
    int checked = 0;
    for (const char* name :
         {"embeddings.word_embeddings.weight", "encoder.layer.0.attention.self.query.weight",
          "encoder.layer.1.intermediate.dense.bias", "encoder.layer.1.output.LayerNorm.weight"}) {
      const ParamTensor& p = st.params().find(name);
      double gmax = 0;
      for (size_t i = 0; i < p.numel; ++i) gmax = std::max(gmax, double(std::abs(g[p.offset + i])));
      for (size_t i = 0; i < p.numel; i += std::max<size_t>(1, p.numel / 7)) {
        float* w = st.params().w(name) + i;
        const float w0 = *w, h = 1e-2f;
        *w = w0 + h;
        const double up =
            embedding_mse_step(st, ids.data(), mask.data(), B, T, target.data(), cls, 1.f, false);
        *w = w0 - h;
        const double dn =
            embedding_mse_step(st, ids.data(), mask.data(), B, T, target.data(), cls, 1.f, false);
        *w = w0;
        const double fd = (up - dn) / (2.0 * h);
        CAPTURE(name);
        CAPTURE(i);
        CHECK(std::abs(fd - g[p.offset + i]) <= 5e-3 * std::max(gmax, 1e-6) + 1e-7);
        ++checked;
      }
    }
    CHECK(checked > 20);
  }
}

TEST_CASE("train distill bert: the embedding loss's whole-model gradients equal PyTorch autograd") {
  // tests/fixtures/train/make_encoder_loss.py: the padded batch of bert_grads.safetensors, mean and
  // CLS pooling, MSE against a fixed random target (sentence-transformers' MSELoss).
  const ModelConfig cfg = load_config(std::string(kBert) + "/config.json");
  auto ref = SafetensorsFile::open("tests/fixtures/train/encoder_loss_grads.safetensors");
  auto batch = SafetensorsFile::open("tests/fixtures/train/bert_grads.safetensors");
  const Tensor& ids_t = batch->get("ids");
  const int64_t B = ids_t.dim(0), T = ids_t.dim(1);
  const std::vector<int32_t> ids(ids_t.data<int32_t>(), ids_t.data<int32_t>() + B * T);
  const Tensor& mask_t = batch->get("mask");
  const std::vector<int32_t> mask(mask_t.data<int32_t>(), mask_t.data<int32_t>() + B * T);
  const float* target = ref->get("target").data<float>();
  for (const bool cls : {false, true}) {
    const std::string pool = cls ? "cls" : "mean";
    CAPTURE(pool);
    TrainBert st(cfg);
    st.load(SafetensorsSource(WeightStore::open(kBert)));
    st.params().zero_grad();
    const double loss =
        embedding_mse_step(st, ids.data(), mask.data(), B, T, target, cls, 1.f, true);
    CHECK(loss == doctest::Approx(ref->get(pool + ".loss").data<float>()[0]).epsilon(1e-5));
    // Exactly-zero gradients (the key biases: softmax is shift-invariant per row) are rounding
    // noise in PyTorch: checked to be ~0 on both sides, relative to the largest gradient.
    double gmax = 0;
    for (const ParamTensor& p : st.params().table()) {
      const Tensor& g = ref->get("g." + pool + "." + p.name);
      for (int64_t i = 0; i < g.numel(); ++i)
        gmax = std::max(gmax, double(std::abs(g.data<float>()[i])));
    }
    double worst = 0;
    int checked = 0, zero = 0;
    for (const ParamTensor& p : st.params().table()) {
      CAPTURE(p.name);
      const Tensor& g = ref->get("g." + pool + "." + p.name);
      REQUIRE(size_t(g.numel()) == p.numel);
      const float* ours = st.params().grads().data() + p.offset;
      double diff = 0, rmax = 0, omax = 0;
      for (int64_t i = 0; i < g.numel(); ++i) {
        diff = std::max(diff, std::abs(double(ours[i]) - g.data<float>()[i]));
        rmax = std::max(rmax, double(std::abs(g.data<float>()[i])));
        omax = std::max(omax, double(std::abs(ours[i])));
      }
      if (rmax < 1e-6 * gmax) {
        CHECK(omax < 1e-6 * gmax);
        ++zero;
      } else {
        CHECK(diff / rmax <= 1e-4);
        worst = std::max(worst, diff / rmax);
      }
      ++checked;
    }
    CHECK(checked == 5 + 2 * 16);
    CHECK(zero >= 2);  // at least the two key biases
    MESSAGE("bert embedding loss (" << pool << " pooling): worst relative gradient error " << worst
                                    << ", " << zero << " zero tensors");
  }
}

TEST_CASE("train distill bert: the student learns the teacher's embeddings; embed opens it") {
  auto be = make_cpu_backend(1);
  test::TempDir tmp("distill-bert");
  make_bert_folder(tmp / "teacher");
  LoadedModel t = open_model(tmp / "teacher", *be);
  const auto train = random_lines(64, 1), eval = random_lines(16, 2);
  DistillOptions o = bert_opts("init:layers=1");
  o.teacher_path = tmp / "teacher";
  o.eval_every = 6;
  const DistillResult a =
      distill_encoder(*t.model, t.tokenizer.get(), train, "lines", eval, o, tmp / "a");
  REQUIRE(a.finished);
  REQUIRE(a.evals.size() == 3);  // steps 0, 6, 12
  CHECK(a.evals[0].step == 0);
  double first3 = 0, last3 = 0;
  for (int i = 0; i < 3; ++i) {
    first3 += a.steps[size_t(i)].loss;
    last3 += a.steps[a.steps.size() - 1 - size_t(i)].loss;
  }
  MESSAGE("bert student embedding MSE, mean of steps 1-3: "
          << first3 / 3 << ", of steps 10-12: " << last3 / 3 << "; held-out cosine "
          << a.evals[0].cos << " -> " << a.evals[2].cos);
  CHECK(last3 < 0.7 * first3);
  CHECK(a.evals[2].mse < a.evals[0].mse);
  CHECK(a.evals[2].cos > a.evals[0].cos);

  // Resume equals the uninterrupted run.
  DistillOptions o1 = o;
  o1.checkpoint = tmp / "ck";
  o1.stop_at = 5;
  CHECK_FALSE(
      distill_encoder(*t.model, t.tokenizer.get(), train, "lines", eval, o1, tmp / "b").finished);
  CHECK_FALSE(fs::exists(tmp / "b"));
  DistillOptions o2 = o;
  o2.resume = tmp / "ck";
  const DistillResult b2 =
      distill_encoder(*t.model, t.tokenizer.get(), train, "lines", eval, o2, tmp / "b");
  REQUIRE(b2.finished);
  CHECK(b2.steps.front().step == 6);
  CHECK(same_tensors(tmp / "a/model.safetensors", tmp / "b/model.safetensors") == 5 + 16);
  CHECK(b2.steps.back().loss == a.steps.back().loss);

  // The folder is a sentence-transformers BERT: embed's pooling and normalisation are the
  // teacher's, and its embeddings are the trained weights' (TrainBert forward, mean pooled).
  LoadedModel s = open_model(tmp / "a", *be);
  REQUIRE(s.model->config().arch == Arch::Bert);
  CHECK(s.model->config().n_layers == 1);
  const SentenceEmbeddingConfig sc = read_sentence_embedding_config(tmp / "a");
  CHECK(sc.pooling == Pooling::Mean);
  CHECK(sc.normalize);
  CHECK(sc.max_seq_length == 8);
  const std::vector<std::string> texts{"alpha bravo charlie", "the cat and the dog sat in the sun"};
  const auto emb = embed_texts(*s.model, *s.tokenizer, texts, sc, 2);
  TrainBert tb(s.model->config());
  tb.load(SafetensorsSource(WeightStore::open(tmp / "a")));
  for (size_t i = 0; i < texts.size(); ++i) {
    auto ids = s.tokenizer->encode(texts[i], true);
    if (ids.size() > 8) {
      const int32_t last = ids.back();
      ids.resize(8);
      ids.back() = last;
    }
    const int64_t T = int64_t(ids.size());
    const float* h = tb.forward(ids.data(), 1, T);
    const auto want = pool_embeddings(h, 1, T, 32, nullptr, Pooling::Mean, true);
    CHECK(max_abs_diff(emb[i].data(), want[0].data(), 32) < 1e-5);
  }
}

TEST_CASE("train distill bert: bad input gets a clear error and writes nothing") {
  auto be = make_cpu_backend(1);
  test::TempDir tmp("distill-bert-bad");
  make_bert_folder(tmp / "teacher");
  LoadedModel t = open_model(tmp / "teacher", *be);
  const auto lines = random_lines(16, 1);
  const std::string out = tmp / "out";
  auto run = [&](const DistillOptions& o, const std::vector<std::vector<int32_t>>& data) {
    distill_encoder(*t.model, nullptr, data, "lines.txt", {}, o, out);
  };
  auto opts = [&] {
    DistillOptions o = bert_opts("init:layers=1");
    o.teacher_path = tmp / "teacher";
    return o;
  };
  DistillOptions o = opts();
  o.loss.alpha = 2.f;
  CHECK_THROWS_WITH(run(o, lines), doctest::Contains("--alpha 2 outside [0, 1]"));
  o = opts();
  o.loss.tau = 0.f;
  CHECK_THROWS_WITH(run(o, lines), doctest::Contains("--temperature 0 must be > 0"));
  o = opts();
  CHECK_THROWS_WITH(run(o, {}), doctest::Contains("lines.txt: no non-blank line"));
  o = opts();
  o.student = edited_config(kBert, tmp / "v99.json", {{"vocab_size", 99}});
  CHECK_THROWS_WITH(run(o, lines), doctest::Contains("student vocabulary (99 tokens"));
  o = opts();
  o.student =
      edited_config(kBert, tmp / "c16.json", {{"hidden_size", 16}, {"num_attention_heads", 2}});
  CHECK_THROWS_WITH(run(o, lines), doctest::Contains("student width 16 differs from the "
                                                     "teacher's 32"));
  // A causal student for the encoder teacher, and an encoder student for a causal teacher.
  o = opts();
  o.student = edited_config(kGpt2, tmp / "g103.json", {{"vocab_size", 103}});
  CHECK_THROWS_WITH(run(o, lines), doctest::Contains("is a causal LM (gpt2) and the teacher is "
                                                     "an encoder (bert)"));
  auto gpt2 = load_model(kGpt2, *be);
  CHECK_THROWS_WITH(distill_encoder(*gpt2, nullptr, lines, "lines.txt", {}, opts(), out),
                    doctest::Contains("the teacher is a causal LM (gpt2) and the student an "
                                      "encoder"));
  CHECK_THROWS_WITH(
      distill(*t.model, nullptr, test::random_ids(100, 103, 1), "ids", {}, opts(), out),
      doctest::Contains("the teacher is an encoder (bert"));
  o = opts();
  o.prune.method = "magnitude";
  o.prune.final_sparsity = 0.5;
  CHECK_THROWS_WITH(run(o, lines),
                    doctest::Contains("not implemented: --prune-schedule for a bert student"));
  CHECK_FALSE(fs::exists(out));
  // The teacher folder and the three configs: nothing else.
  CHECK(std::distance(fs::directory_iterator(tmp.path), {}) == 4);
}

TEST_CASE("train bert: gradient checkpointing gives the same gradients with less memory") {
  const ModelConfig cfg = load_config(std::string(kBert) + "/config.json");
  // Two sequences of 6 and 3 tokens, padded to 6; the gradient of Σ h·R for a fixed random R.
  const int64_t B = 2, T = 6, C = cfg.hidden;
  const std::vector<int32_t> ids{2, 10, 20, 30, 40, 3, 2, 50, 3, 0, 0, 0};
  const std::vector<int32_t> mask{1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0};
  std::mt19937_64 rng(3);
  std::normal_distribution<float> nd(0.f, 1.f);
  std::vector<float> R(size_t(B * T * C));
  for (float& r : R) r = nd(rng);
  auto grads = [&](bool ckpt, size_t* act) {
    TrainBert st(cfg);
    st.load(SafetensorsSource(WeightStore::open(kBert)));
    st.set_checkpointing(ckpt);
    st.params().zero_grad();
    st.forward(ids.data(), B, T, mask.data(), nullptr);
    st.backward(R.data());
    *act = st.activation_bytes();
    return std::vector<float>(st.params().grads().begin(), st.params().grads().end());
  };
  size_t full = 0, ck = 0;
  const std::vector<float> g0 = grads(false, &full), g1 = grads(true, &ck);
  CHECK(g0 == g1);  // bit for bit
  CHECK(ck < full);
  MESSAGE("bert activation bytes " << full << " -> " << ck << " with checkpointing");

  // Through the encoder loop: the same trained weights, bit for bit.
  auto be = make_cpu_backend(1);
  test::TempDir tmp("bert-ckpt");
  make_bert_folder(tmp / "teacher");
  LoadedModel t = open_model(tmp / "teacher", *be);
  const auto train = random_lines(32, 4);
  DistillOptions o = bert_opts("init");
  o.steps = 4;
  o.teacher_path = tmp / "teacher";
  const DistillResult a =
      distill_encoder(*t.model, t.tokenizer.get(), train, "lines", {}, o, tmp / "a");
  o.grad_checkpoint = true;
  const DistillResult b =
      distill_encoder(*t.model, t.tokenizer.get(), train, "lines", {}, o, tmp / "b");
  CHECK(b.activation_bytes < a.activation_bytes);
  CHECK(same_tensors(tmp / "a/model.safetensors", tmp / "b/model.safetensors") == 5 + 2 * 16);
}

// ---- Qwen2-style q/k/v biases (tests/fixtures/arch/qwen2: V 101, C 32, 4/2 heads, tied) ----

namespace {
const char* kQwen2 = "tests/fixtures/arch/qwen2";
}  // namespace

TEST_CASE("train qwen2: q/k/v bias gradients equal finite differences; init reproduces it") {
  auto be = make_cpu_backend(1);
  auto teacher = load_model(kQwen2, *be);
  REQUIRE(teacher->config().attn_bias);
  DistillOptions o = test::tiny_distill("init", 1, 1, 1, 0, 1);
  auto st = make_student(o, *teacher);
  REQUIRE(st->params().has("model.layers.1.self_attn.k_proj.bias"));
  const int64_t T = 11, V = 101;
  const auto ids = test::random_ids(size_t(T), int32_t(V), 4);
  RunState rs = teacher->new_state(T, T);
  Tensor lt = teacher->forward(rs, ids.data(), T, true);
  CHECK(max_abs_diff(st->forward(ids.data(), 1, T), lt.data<float>(), T * V) < 1e-4);

  // CE loss gradient w.r.t. the biases against central differences.
  const auto tg = test::random_ids(size_t(T), int32_t(V), 5);
  auto loss = [&](bool bwd) {
    const float* logits = st->forward(ids.data(), 1, T);
    std::vector<float> d(size_t(T * V), 0.f);
    const LossParts lp =
        distill_loss(logits, nullptr, tg.data(), T, V, DistillLossArgs{0.f, 1.f, false}, d.data());
    if (bwd) st->backward(d.data());
    return lp.total;
  };
  st->params().zero_grad();
  loss(true);
  int checked = 0;
  for (const char* name :
       {"model.layers.0.self_attn.q_proj.bias", "model.layers.0.self_attn.k_proj.bias",
        "model.layers.1.self_attn.v_proj.bias"}) {
    CAPTURE(name);
    const ParamTensor& p = st->params().find(name);
    const float* g = st->params().grads().data() + p.offset;
    double gmax = 0;
    for (size_t i = 0; i < p.numel; ++i) gmax = std::max(gmax, double(std::abs(g[i])));
    CHECK(gmax > 0);
    for (size_t i = 0; i < p.numel; i += 3) {
      float* w = st->params().w(name) + i;
      const float w0 = *w, h = 1e-2f;
      *w = w0 + h;
      const double up = loss(false);
      *w = w0 - h;
      const double dn = loss(false);
      *w = w0;
      CAPTURE(i);
      CHECK(std::abs((up - dn) / (2.0 * h) - g[i]) <= 5e-3 * gmax + 1e-6);
      ++checked;
    }
  }
  CHECK(checked > 20);
}

TEST_CASE("train distill qwen2: a biased student trains and reloads as qwen2") {
  auto be = make_cpu_backend(1);
  auto teacher = load_model(kQwen2, *be);
  // Two windows and batch 2: every step sees the same batch, so the loss must fall.
  const auto ids = test::random_ids(17, 101, 1);
  test::TempDir tmp("distill-qwen2");
  DistillOptions o = test::tiny_distill("init:layers=1", 8, 2, 1, 2, 5);
  const DistillResult r = distill(*teacher, nullptr, ids, "ids", {}, o, tmp / "out");
  REQUIRE(r.finished);
  CHECK(r.steps.back().loss < r.steps.front().loss);
  auto out = load_model(tmp / "out", *be);
  CHECK(out->config().model_type == "qwen2");
  CHECK(out->config().attn_bias);
  TrainLlama st(out->config());
  st.load(SafetensorsSource(WeightStore::open(tmp / "out")));
  const float* lt = st.forward(ids.data(), 1, 8);
  RunState rs = out->new_state(8, 8);
  Tensor li = out->forward(rs, ids.data(), 8, true);
  CHECK(max_abs_diff(li.data<float>(), lt, 8 * 101) < 1e-4);
  // The biases moved (they are trained, not only carried).
  auto w0 = SafetensorsFile::open(std::string(kQwen2) + "/model.safetensors");
  auto w1 = SafetensorsFile::open(tmp / "out/model.safetensors");
  const Tensor& b0 = w0->get("model.layers.1.self_attn.q_proj.bias");
  const Tensor& b1 = w1->get("model.layers.0.self_attn.q_proj.bias");
  CHECK(max_abs_diff(b0.data<float>(), b1.data<float>(), b0.numel()) > 1e-4);
}
