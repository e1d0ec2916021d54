// The distillation loop (distill.h).
#include "train/distill.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <numeric>
#include <random>
#include <sstream>

#include "compress/compress.h"
#include "compress/methods.h"
#include "engine/backend.h"
#include "engine/compressed_folder.h"
#include "engine/linear.h"
#include "engine/model_folder.h"
#include "engine/progress.h"
#include "engine/safetensors.h"
#include "engine/sampler.h"
#include "engine/weights.h"
#include "models/eval.h"
#include "models/loader.h"
#include "tokenizer/unicode.h"
#include "train/bert_train.h"
#include "train/checkpoint.h"
#include "train/gpt2_train.h"
#include "train/ops.h"

namespace minfer::train {

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// "0,2,4" -> {0, 2, 4}
std::vector<int64_t> parse_layers(const std::string& s, const std::string& spec) {
  std::vector<int64_t> out;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ',')) {
    size_t used = 0;
    int64_t v = -1;
    try {
      v = std::stoll(item, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    MINFER_CHECK(used == item.size() && !item.empty() && v >= 0,
                 "--student '{}': '{}' is not a layer index (expected init:layers=0,2,4)", spec,
                 item);
    out.push_back(v);
  }
  MINFER_CHECK(!out.empty(), "--student '{}': no layers listed (expected init:layers=0,2,4)", spec);
  return out;
}

// The training windows' order: epoch e is a permutation of the W windows seeded by (seed, e), so
// the window at any data position is a pure function of (seed, position): resuming needs only the
// position.
class WindowOrder {
 public:
  WindowOrder(int64_t windows, uint64_t seed) : W_(windows), seed_(seed) {}
  int64_t at(int64_t pos) {
    const int64_t e = pos / W_;
    if (e != epoch_) {
      perm_.resize(size_t(W_));
      std::iota(perm_.begin(), perm_.end(), int64_t(0));
      std::mt19937_64 rng(seed_ * 0x9E3779B97F4A7C15ull + uint64_t(e) + 1);
      for (int64_t i = W_ - 1; i > 0; --i) {  // Fisher-Yates with an explicit draw (portable)
        const int64_t j = int64_t(rng() % uint64_t(i + 1));
        std::swap(perm_[size_t(i)], perm_[size_t(j)]);
      }
      epoch_ = e;
    }
    return perm_[size_t(pos % W_)];
  }

 private:
  int64_t W_;
  uint64_t seed_;
  int64_t epoch_ = -1;
  std::vector<int64_t> perm_;
};

json options_json(const DistillOptions& o) {
  return json{{"student", o.student},
              {"alpha", o.loss.alpha},
              {"temperature", o.loss.tau},
              {"kl", o.loss.reverse ? "reverse" : "forward"},
              {"steps", o.steps},
              {"batch", o.batch},
              {"accum", o.accum},
              {"seq", o.seq},
              {"lr", o.lr},
              {"warmup", o.warmup},
              {"min_lr_ratio", o.min_lr_ratio},
              {"weight_decay", o.adamw.weight_decay},
              {"clip", o.clip},
              {"seed", o.seed},
              {"qat", o.qat.empty() ? "" : qat_name([&] {
                 QatSpec q = parse_qat(o.qat);
                 q.lsq = o.qat_lsq;
                 return q;
               }())},
              {"lora_rank", o.lora.rank},
              {"lora_alpha", o.lora.alpha},
              {"lora_targets", o.lora.targets},
              {"lora_merge", o.lora.merge},
              {"generate", o.generate},
              {"gen_temperature", o.gen_temperature},
              {"gen_top_k", o.gen_top_k},
              {"gen_seed", o.gen_seed},
              {"prune_schedule", o.prune.method},
              {"prune_from", o.prune.initial},
              {"prune_to", o.prune.final_sparsity},
              {"prune_start", o.prune.start},
              {"prune_end", o.prune.end},
              {"prune_every", o.prune.every}};
}

// Options a resumed run must repeat.
const char* const kResumeKeys[] = {"alpha",
                                   "temperature",
                                   "kl",
                                   "steps",
                                   "batch",
                                   "accum",
                                   "seq",
                                   "lr",
                                   "warmup",
                                   "min_lr_ratio",
                                   "weight_decay",
                                   "clip",
                                   "seed",
                                   "qat",
                                   "lora_rank",
                                   "lora_alpha",
                                   "lora_targets",
                                   "generate",
                                   "gen_temperature",
                                   "gen_top_k",
                                   "gen_seed",
                                   "prune_schedule",
                                   "prune_from",
                                   "prune_to",
                                   "prune_start",
                                   "prune_end",
                                   "prune_every"};

// What the student's block projections train as (--qat, --lora-*).
TrainMods mods_of(const DistillOptions& o) {
  TrainMods m;
  if (!o.qat.empty()) {
    m.qat = parse_qat(o.qat);
    m.qat->lsq = o.qat_lsq;
  } else {
    MINFER_CHECK(!o.qat_lsq, "--lsq needs --qat (the format whose scales it learns)");
  }
  m.lora = o.lora;
  m.seed = o.seed;
  return m;
}

}  // namespace

std::unique_ptr<TrainLlama> compressed_student(const std::string& dir, const ModelConfig& tc,
                                               const std::shared_ptr<TrainOps>& ops) {
  // Opened by the inference loader (every format through the format table), then copied into
  // f32 trainable tensors (Linears dequantized).
  auto be = make_cpu_backend(1);
  std::unique_ptr<Model> m = load_model(dir, *be);
  const ModelConfig& mc = m->config();
  MINFER_CHECK(mc.causal(), "--student '{}' is an encoder ({}): the student must be a causal LM",
               dir, arch_name(mc.arch));
  MINFER_CHECK(mc.vocab_size == tc.vocab_size,
               "student vocabulary ({} tokens, {}) differs from the teacher's ({} tokens): "
               "distillation compares the two distributions token by token, so both need the "
               "same tokenizer",
               mc.vocab_size, dir, tc.vocab_size);
  auto st = std::make_unique<TrainLlama>(mc, TrainMods{}, ops);
  st->load_from_model(*m, {});
  // Pruned Linears keep their masks: a SparseBitmask, Sparse24 or SparseCsr, or any Linear of a
  // folder whose method chain prunes (e.g. wanda-50 stored dense, wanda-50+int8): its zeros stay
  // zero.
  bool pruned = false;
  const std::string method = CompressedSource(dir).method();
  try {
    for (const MethodSpec& step : compress_spec_from_name(method).steps) pruned |= step.is_prune();
  } catch (const Error&) {
    // A method name this build does not parse: only the sparse-format Linears are masked.
  }
  for (Linear* l : m->linears()) {
    if (!st->params().has(l->name)) continue;
    if (const auto* lr = std::get_if<LowRank>(&l->repr)) {
      // Low-rank: the factors train (train/lowrank_train.h), W = U·V is derived.
      const Tensor U = dequantize_weight(*lr->u), V = dequantize_weight(*lr->v);
      st->factors().add(l->name, l->out, lr->u->in, l->in,
                        std::vector<float>(U.data<float>(), U.data<float>() + U.numel()),
                        std::vector<float>(V.data<float>(), V.data<float>() + V.numel()));
      continue;
    }
    if (std::holds_alternative<SparseBitmask>(l->repr) ||
        std::holds_alternative<Sparse24>(l->repr) || std::holds_alternative<SparseCsr>(l->repr) ||
        pruned)
      st->params().fix_zeros(l->name);
  }
  if (!st->factors().empty()) {
    if (!st->ops().host())
      throw NotImplemented(
          fmt::format("a low-rank student ({}) on the {} training device", dir, st->ops().name()));
    st->factors().build();
    st->factors().materialize(st->params());
  }
  return st;
}

std::unique_ptr<TrainLlama> make_student(const DistillOptions& opt, Model& teacher) {
  const ModelConfig& tc = teacher.config();
  MINFER_CHECK(tc.causal(),
               "the teacher is an encoder ({}, bidirectional) and the student is a causal LM: "
               "distillation needs next-token distributions from a causal teacher",
               arch_name(tc.arch));
  const std::string& s = opt.student;
  std::unique_ptr<TrainLlama> st;
  if (s == "init" || s.rfind("init:", 0) == 0) {
    std::vector<int64_t> layers;
    if (s == "init") {
      layers.resize(size_t(tc.n_layers));
      std::iota(layers.begin(), layers.end(), int64_t(0));
    } else {
      MINFER_CHECK(s.rfind("init:layers=", 0) == 0,
                   "--student '{}': expected init, init:layers=0,2,4, a model folder or a "
                   "config.json",
                   s);
      layers = parse_layers(s.substr(std::strlen("init:layers=")), s);
    }
    for (int64_t l : layers)
      MINFER_CHECK(l < tc.n_layers,
                   "--student '{}': layer {} but the teacher has {} layers (0..{})", s, l,
                   tc.n_layers, tc.n_layers - 1);
    ModelConfig sc = tc;
    sc.n_layers = int64_t(layers.size());
    sc.source_json.clear();
    st = std::make_unique<TrainLlama>(sc, mods_of(opt), opt.ops);
    st->load_from_model(teacher, layers);
    return st;
  }
  const fs::path p(s);
  MINFER_CHECK(fs::exists(p), "--student '{}': no such file or folder", s);
  if (fs::is_directory(p) && is_compressed_folder(p.string()))
    return compressed_student(s, tc, opt.ops);
  const fs::path cfg_path = fs::is_directory(p) ? p / "config.json" : p;
  ModelConfig sc = load_config(cfg_path.string());
  MINFER_CHECK(sc.causal(), "--student '{}' is an encoder ({}): the student must be a causal LM", s,
               arch_name(sc.arch));
  MINFER_CHECK(sc.vocab_size == tc.vocab_size,
               "student vocabulary ({} tokens, {}) differs from the teacher's ({} tokens): "
               "distillation compares the two distributions token by token, so both need the "
               "same tokenizer",
               sc.vocab_size, cfg_path.string(), tc.vocab_size);
  st = std::make_unique<TrainLlama>(sc, mods_of(opt), opt.ops);
  if (fs::is_directory(p) &&
      (fs::exists(p / "model.safetensors") || fs::exists(p / "model.safetensors.index.json")))
    st->load(SafetensorsSource(WeightStore::open(p.string())));
  else
    st->init_random(opt.seed);
  return st;
}

namespace {

// The layers "init" / "init:layers=..." keep of a teacher with n layers.
std::vector<int64_t> init_layers(const std::string& s, int64_t n) {
  std::vector<int64_t> layers;
  if (s == "init") {
    layers.resize(size_t(n));
    std::iota(layers.begin(), layers.end(), int64_t(0));
    return layers;
  }
  MINFER_CHECK(s.rfind("init:layers=", 0) == 0,
               "--student '{}': expected init, init:layers=0,2,4, a model folder or a config.json",
               s);
  layers = parse_layers(s.substr(std::strlen("init:layers=")), s);
  for (int64_t l : layers)
    MINFER_CHECK(l < n, "--student '{}': layer {} but the teacher has {} layers (0..{})", s, l, n,
                 n - 1);
  return layers;
}

// A gpt2 or bert student (M = TrainGpt2 / TrainBert) from opt.student: teacher blocks, or a
// config (+ weights).
template <typename M>
std::unique_ptr<Student> plain_student(const DistillOptions& opt, Model& teacher,
                                       const ModelConfig* folder_cfg) {
  const std::string& s = opt.student;
  if (!folder_cfg) {
    const ModelConfig& tc = teacher.config();
    const std::vector<int64_t> layers = init_layers(s, tc.n_layers);
    ModelConfig sc = tc;
    sc.n_layers = int64_t(layers.size());
    sc.source_json.clear();
    auto st = std::make_unique<M>(sc, mods_of(opt));
    st->load_from_model(teacher, layers);
    return st;
  }
  auto st = std::make_unique<M>(*folder_cfg, mods_of(opt));
  const fs::path p(s);
  if (fs::is_directory(p) &&
      (fs::exists(p / "model.safetensors") || fs::exists(p / "model.safetensors.index.json")))
    st->load(SafetensorsSource(WeightStore::open(p.string())));
  else
    st->init_random(opt.seed);
  return st;
}

}  // namespace

std::unique_ptr<Student> build_student(const DistillOptions& opt, Model& teacher) {
  const ModelConfig& tc = teacher.config();
  const std::string& s = opt.student;
  if (s == "init" || s.rfind("init:", 0) == 0) {  // the teacher's architecture
    if (tc.arch == Arch::GPT2) return plain_student<TrainGpt2>(opt, teacher, nullptr);
    if (tc.arch == Arch::Bert) return plain_student<TrainBert>(opt, teacher, nullptr);
    return make_student(opt, teacher);
  }
  const fs::path p(s);
  MINFER_CHECK(fs::exists(p), "--student '{}': no such file or folder", s);
  if (fs::is_directory(p) && is_compressed_folder(p.string())) {
    if (tc.arch != Arch::Llama)
      throw NotImplemented(fmt::format(
          "a compressed student for a {} teacher ('{}': compressed students are llama-family so "
          "far; give a config.json or init)",
          arch_name(tc.arch), s));
    return make_student(opt, teacher);
  }
  const fs::path cfg_path = fs::is_directory(p) ? p / "config.json" : p;
  const ModelConfig sc = load_config(cfg_path.string());
  MINFER_CHECK(sc.causal() == tc.causal(),
               "--student '{}' is {} ({}) and the teacher is {} ({}): both must be causal LMs "
               "(next-token distillation) or both encoders (embedding distillation)",
               s, sc.causal() ? "a causal LM" : "an encoder", arch_name(sc.arch),
               tc.causal() ? "a causal LM" : "an encoder", arch_name(tc.arch));
  MINFER_CHECK(sc.vocab_size == tc.vocab_size,
               "student vocabulary ({} tokens, {}) differs from the teacher's ({} tokens): "
               "distillation compares the two models token by token, so both need the same "
               "tokenizer",
               sc.vocab_size, cfg_path.string(), tc.vocab_size);
  if (sc.arch == Arch::GPT2) return plain_student<TrainGpt2>(opt, teacher, &sc);
  if (sc.arch == Arch::Bert) return plain_student<TrainBert>(opt, teacher, &sc);
  return make_student(opt, teacher);
}

std::vector<std::vector<int32_t>> generate_sequences(Model& teacher, int32_t bos, int64_t n,
                                                     int64_t len, float temperature, int top_k,
                                                     uint64_t seed, bool progress) {
  const ModelConfig& tc = teacher.config();
  MINFER_CHECK(tc.causal(), "--generate: the teacher is an encoder ({}): it cannot sample text",
               arch_name(tc.arch));
  if (bos < 0) bos = int32_t(tc.bos_id);
  MINFER_CHECK(bos >= 0 && bos < tc.vocab_size,
               "--generate: the teacher's tokenizer has no BOS token to start the samples from");
  MINFER_CHECK(len >= 2 && (tc.max_pos <= 0 || len <= tc.max_pos),
               "--generate: sequences of {} tokens (the teacher has {} positions)", len,
               tc.max_pos);
  SamplerParams sp;
  sp.temp = temperature;
  sp.top_k = top_k;
  sp.top_p = 1.f;
  sp.seed = seed;
  Sampler sampler(sp);
  RunState st = teacher.new_state(len, 1, 1);
  const int64_t V = tc.vocab_size;
  std::vector<float> logits(static_cast<size_t>(V));
  std::vector<std::vector<int32_t>> out;
  Progress bar("generate", n, progress);
  for (int64_t i = 0; i < n; ++i) {
    st.reset();
    std::vector<int32_t> seq{bos};
    while (int64_t(seq.size()) < len) {
      Tensor lg = teacher.forward(st, &seq.back(), 1, false);
      teacher.backend().to_host(lg, logits.data());
      seq.push_back(sampler.sample(logits.data(), V, int64_t(seq.size())));
    }
    out.push_back(std::move(seq));
    bar.update(i + 1, fmt::format("{} tokens each", len));
  }
  bar.finish();
  return out;
}

std::vector<int32_t> tokenize_files(const Tokenizer& tok, const std::vector<std::string>& files) {
  std::vector<int32_t> ids;
  for (const std::string& f : files) {
    std::ifstream in(f, std::ios::binary);
    MINFER_CHECK(in.good(), "{}: cannot open data file", f);
    std::stringstream ss;
    ss << in.rdbuf();
    tok.encode_into(ss.str(), true, ids);
  }
  return ids;
}

DistillEval evaluate(Student& student, const std::vector<int32_t>& ids, int64_t seq, int64_t batch,
                     int64_t max_tokens) {
  const int64_t n = std::min<int64_t>(int64_t(ids.size()), max_tokens > 0 ? max_tokens : INT64_MAX);
  const int64_t W = (n - 1) / seq;
  MINFER_CHECK(W >= 1, "evaluation text: {} tokens, fewer than one sequence of {} + 1", n, seq);
  const int64_t V = student.config().vocab_size;
  double nll = 0;
  int64_t scored = 0;
  std::vector<int32_t> in, tg;
  for (int64_t w0 = 0; w0 < W; w0 += batch) {
    const int64_t B = std::min(batch, W - w0);
    in.resize(size_t(B * seq));
    tg.resize(size_t(B * seq));
    for (int64_t b = 0; b < B; ++b) {
      const int32_t* src = ids.data() + (w0 + b) * seq;
      std::copy(src, src + seq, in.begin() + b * seq);
      std::copy(src + 1, src + seq + 1, tg.begin() + b * seq);
    }
    const float* logits = student.forward(in.data(), B, seq);
    nll += cross_entropy_forward(logits, tg.data(), B * seq, V);
    scored += B * seq;
  }
  DistillEval e;
  e.tokens = scored;
  e.nll = nll / double(scored);
  e.ppl = std::exp(e.nll);
  return e;
}

void save_student(Student& student, Model& teacher, const Tokenizer* tok, const DistillOptions& opt,
                  const std::string& out, const json& log) {
  const ModelConfig& sc = student.config();
  const Projections& pj = student.projections();
  // An encoder keeps the teacher's sentence-transformers modules (pooling, normalisation,
  // max_seq_length), so `embed` pools the student as the teacher.
  auto sentence_files = [&](const fs::path& dir) {
    if (!sc.causal() && !opt.teacher_path.empty())
      copy_sentence_embedding_files(opt.teacher_path, dir.string());
  };
  if (pj.qat()) {
    // The latent f32 weights as a plain folder, opened as a Model, its block projections replaced
    // by the exported Quantized ones, saved as a compressed folder.
    const std::string f32_dir = out + ".qat-f32.tmp";
    {
      StagingDir tmp(f32_dir, /*force=*/true);
      write_json_file(tmp.path() / "config.json", student.config_json());
      save_safetensors((tmp.path() / "model.safetensors").string(), student.named_weights(),
                       {{"format", "pt"}});
      tmp.commit();
    }
    try {
      LoadedModel lm = open_model(f32_dir, teacher.backend(), /*with_tokenizer=*/false);
      std::map<std::string, Linear*> lin;
      for (Linear* l : lm.model->linears()) lin[l->name] = l;
      for (Linear& q : pj.qat_linears()) {
        auto it = lin.find(q.name);
        MINFER_CHECK(it != lin.end(), "qat export: the model has no linear '{}'", q.name);
        Tensor bias = it->second->bias;  // biases stay f32 beside the codes
        *it->second = std::move(q);
        it->second->bias = bias;
      }
      const QatSpec qs = parse_qat(opt.qat);
      std::string method = qat_name(qs);
      if (qs.scheme == QScheme::Int4 && qs.group == 128) method = "int4";
      CompressSpec spec = compress_spec_from_name(method);
      spec.embed_format = "f32";
      spec.head_format = "f32";
      save_compressed(*lm.model, tok, out, spec, opt.force);
    } catch (...) {
      std::error_code ec;
      fs::remove_all(f32_dir, ec);
      throw;
    }
    std::error_code ec;
    fs::remove_all(f32_dir, ec);
    sentence_files(out);
    write_json_file(fs::path(out) / "training_log.json", log);
    return;
  }
  StagingDir tmp(out, opt.force);
  write_json_file(tmp.path() / "config.json", student.config_json());
  save_safetensors((tmp.path() / "model.safetensors").string(),
                   pj.full_weights(/*merge=*/opt.lora.merge), {{"format", "pt"}});
  if (pj.lora() && !opt.lora.merge) {
    // PEFT's layout (adapter_model.safetensors + adapter_config.json) beside the f32 base.
    save_safetensors((tmp.path() / "adapter_model.safetensors").string(), pj.lora_adapters(),
                     {{"format", "pt"}});
    write_json_file(tmp.path() / "adapter_config.json",
                    json{{"peft_type", "LORA"},
                         {"task_type", sc.causal() ? "CAUSAL_LM" : "FEATURE_EXTRACTION"},
                         {"r", opt.lora.rank},
                         {"lora_alpha", opt.lora.alpha},
                         {"lora_dropout", 0.0},
                         {"bias", "none"},
                         {"fan_in_fan_out", pj.conv1d()},  // GPT-2's Conv1D [in, out] bases
                         {"target_modules", pj.lora_modules()},
                         {"base_model_name_or_path", "."}});
  }
  if (tok)
    write_tokenizer_files(tmp.path(), *tok, sc, !tok->special_prefix().empty(),
                          !tok->special_suffix().empty());
  sentence_files(tmp.path());
  write_json_file(tmp.path() / "training_log.json", log);
  tmp.commit();
}

DistillResult distill(Model& teacher, const Tokenizer* tok, const std::vector<int32_t>& train_ids,
                      const std::string& data_desc, const std::vector<int32_t>& eval_ids,
                      const DistillOptions& opt, const std::string& out) {
  // Everything that can be wrong with the input is checked before any work or any write.
  const DistillLossArgs& la = opt.loss;
  MINFER_CHECK(la.alpha >= 0.f && la.alpha <= 1.f, "--alpha {} outside [0, 1]", la.alpha);
  MINFER_CHECK(la.tau > 0.f && std::isfinite(la.tau), "--temperature {} must be > 0", la.tau);
  MINFER_CHECK(opt.steps > 0 && opt.batch > 0 && opt.accum > 0 && opt.seq > 1,
               "--steps {}, --batch {}, --accum {} must be > 0 and --seq {} > 1", opt.steps,
               opt.batch, opt.accum, opt.seq);
  MINFER_CHECK(opt.lr > 0.f && std::isfinite(opt.lr), "--lr {} must be > 0", opt.lr);
  const int P = opt.comm ? opt.comm->size() : 1, rank = opt.comm ? opt.comm->rank() : 0;
  MINFER_CHECK(opt.batch >= P,
               "--batch {} is smaller than the {} data-parallel ranks (each rank needs at least "
               "one sequence of every micro-batch)",
               opt.batch, P);
  MINFER_CHECK(opt.stop_at == 0 || !opt.checkpoint.empty(),
               "--stop-at needs --checkpoint DIR (where the run continues from)");
  const ModelConfig& tc = teacher.config();
  MINFER_CHECK(opt.seq <= tc.max_pos || tc.max_pos <= 0,
               "--seq {} exceeds the teacher's {} positions", opt.seq, tc.max_pos);
  MINFER_CHECK(opt.generate >= 0, "--generate {} must be >= 0", opt.generate);
  if (opt.generate > 0)
    MINFER_CHECK(tc.causal(),
                 "--generate {}: the teacher is an encoder ({}, bidirectional): it has no "
                 "next-token distribution to sample training text from",
                 opt.generate, arch_name(tc.arch));
  MINFER_CHECK(tc.causal(),
               "the teacher is an encoder ({}, bidirectional) and this loop trains a causal LM "
               "on next-token distributions (encoders distill with distill_encoder: the tool "
               "picks it for an encoder teacher)",
               arch_name(tc.arch));
  const int64_t W = std::max<int64_t>(0, (int64_t(train_ids.size()) - 1) / opt.seq);
  MINFER_CHECK(W >= 1 || (train_ids.empty() && opt.generate > 0),
               "{}: {} tokens, shorter than one training sequence (--seq {} needs {})", data_desc,
               train_ids.size(), opt.seq, opt.seq + 1);
  if (!out.empty())
    MINFER_CHECK(opt.force || !fs::exists(out), "{} already exists (pass --force to replace it)",
                 out);
  PruneSchedule prune = opt.prune;
  prune.resolve(opt.steps);
  if (prune.active() && (!opt.qat.empty() || opt.lora.rank > 0))
    throw NotImplemented("--prune-schedule together with --qat or --lora-rank");
  if (prune.method == "wanda" && opt.grad_checkpoint)
    throw NotImplemented(
        "--prune-schedule wanda with --grad-checkpoint (Wanda reads every layer's kept "
        "activations; use magnitude or drop --grad-checkpoint)");
  std::unique_ptr<Student> student = build_student(opt, teacher);
  // A compressed student is built from its folder as it is (its masks, factors): it does not
  // take --qat or --lora-rank, which would otherwise be dropped without a word.
  if ((!opt.qat.empty() && !student->projections().qat()) ||
      (opt.lora.rank > 0 && !student->projections().lora()))
    throw NotImplemented(fmt::format(
        "{} with a compressed student ('{}'): QAT and LoRA start from init, init:layers=... or "
        "a plain model folder (LoRA over a quantized base: pass the compressed model as "
        "--teacher with --student init)",
        opt.qat.empty() ? "--lora-rank" : "--qat", opt.student));
  // What only the LLaMA trainer has: low-rank factors, the prune schedule, devices.
  TrainLlama* llama = dynamic_cast<TrainLlama*>(student.get());
  if (!llama) {
    const std::string arch(arch_name(student->config().arch));
    if (prune.active()) throw NotImplemented("--prune-schedule for a " + arch + " student");
    if (opt.ops && !opt.ops->host())
      throw NotImplemented("a " + arch + " student on the " + opt.ops->name() + " device");
  }
  student->set_checkpointing(opt.grad_checkpoint);
  FactoredLinears no_factors;
  FactoredLinears& factors = llama ? llama->factors() : no_factors;
  if (prune.active() && !factors.empty())
    throw NotImplemented("--prune-schedule with a low-rank student");
  const std::vector<std::string> projections =
      llama ? llama->block_linears() : std::vector<std::string>{};
  const ModelConfig& sc = student->config();
  MINFER_CHECK(sc.vocab_size == tc.vocab_size,
               "student vocabulary ({} tokens) differs from the teacher's ({} tokens)",
               sc.vocab_size, tc.vocab_size);
  for (int32_t id : train_ids)
    MINFER_CHECK(id >= 0 && id < tc.vocab_size, "{}: token id {} outside the vocabulary ({})",
                 data_desc, id, tc.vocab_size);

  const int64_t B = opt.batch, L = opt.seq, N = B * L, V = tc.vocab_size;
  // This rank's rows of every micro-batch: sequences [share.begin, share.end) of the B.
  const RowShare share = row_share(B, rank, P);
  const int64_t Bl = share.end - share.begin, Nl = Bl * L;
  const bool writer = rank == 0;
  // The training windows: W windows of the text (window w starts at w * L), then one per
  // sequence the teacher samples (--generate), each L + 1 tokens of its own.
  std::vector<int32_t> stream(train_ids.begin(), train_ids.begin() + (W > 0 ? W * L + 1 : 0));
  std::vector<int64_t> starts;
  for (int64_t w = 0; w < W; ++w) starts.push_back(w * L);
  if (opt.generate > 0) {  // deterministic (seeded): a resumed run samples the same
    for (const std::vector<int32_t>& g :
         generate_sequences(teacher, tok ? tok->bos_id() : -1, opt.generate, L + 1,
                            opt.gen_temperature, opt.gen_top_k, opt.gen_seed, opt.progress)) {
      starts.push_back(int64_t(stream.size()));
      stream.insert(stream.end(), g.begin(), g.end());
    }
  }
  const int64_t windows = int64_t(starts.size());
  const int64_t warmup = opt.warmup >= 0 ? opt.warmup : opt.steps / 10;
  TrainerState state;
  state.seed = opt.seed;
  state.extra = options_json(opt);
  if (!opt.resume.empty()) {
    state = load_checkpoint(opt.resume, *student, factors.empty() ? nullptr : &factors.params());
    if (!factors.empty()) factors.materialize(student->params());
    for (const char* k : kResumeKeys)
      MINFER_CHECK(!state.extra.contains(k) || state.extra[k] == options_json(opt)[k],
                   "--resume {}: the checkpoint was made with {} = {}, this run has {} (a resumed "
                   "run must repeat the options to continue the same run)",
                   opt.resume, k, state.extra[k].dump(), options_json(opt)[k].dump());
    MINFER_CHECK(state.step < opt.steps, "--resume {}: the checkpoint is at step {} of {}",
                 opt.resume, state.step, opt.steps);
    // Pruned so far: the zeros are the masks (their moments are zero in the checkpoint).
    if (prune.active() && state.step >= prune.start)
      for (const std::string& n : projections) student->params().fix_zeros(n);
  }

  DistillResult res;
  WindowOrder order(windows, opt.seed);
  // The loss runs where the student trains (a CUDA student: kernels on its managed memory).
  TrainOps* dev = llama && !llama->ops().host() ? &llama->ops() : nullptr;
  TrainOps& lops = dev ? *dev : *cpu_train_ops();
  std::vector<int32_t> in(static_cast<size_t>(Nl));
  IntVec tg(static_cast<size_t>(Nl), lops.memory());
  FloatVec tlogits(la.alpha > 0 ? size_t(Nl * V) : 0, lops.memory()),
      dlogits(size_t(Nl * V), lops.memory());
  RunState ts = teacher.new_state(L, L, L);
  const int64_t first = state.step,
                last = opt.stop_at > 0 ? std::min(opt.stop_at, opt.steps) : opt.steps;
  auto do_eval = [&](int64_t step) {
    if (!writer || eval_ids.size() < size_t(L + 1)) return;
    DistillEval e = evaluate(*student, eval_ids, L, B, opt.eval_tokens);
    e.step = step;
    res.evals.push_back(e);
    // Each evaluation on stderr as it happens, so a long run that is stopped still shows its
    // curve (the progress bar's line is ended first on a terminal).
    if (opt.progress)
      std::fprintf(stderr, "%sdistill: eval step %lld: ppl %.3f (NLL %.4f) over %lld tokens\n",
                   isatty(2) ? "\n" : "", (long long)step, e.ppl, e.nll, (long long)e.tokens);
  };
  // The JSON log of the run so far (written with the output folder, and beside every checkpoint
  // so that a stopped run keeps its curves).
  auto make_log = [&] {
    json steps = json::array(), evals = json::array();
    for (const DistillStep& s : res.steps)
      steps.push_back({{"step", s.step},
                       {"lr", s.lr},
                       {"loss", s.loss},
                       {"kd", s.kd},
                       {"ce", s.ce},
                       {"grad_norm", s.grad_norm},
                       {"tokens_per_s", s.tokens_per_s},
                       {"sparsity", s.sparsity}});
    for (const DistillEval& e : res.evals)
      evals.push_back({{"step", e.step}, {"ppl", e.ppl}, {"nll", e.nll}, {"tokens", e.tokens}});
    return json{{"options", options_json(opt)},
                {"data", data_desc},
                {"train_windows", windows},
                {"generated_sequences", opt.generate},
                {"student_params", student->params().numel()},
                {"trainable_params", student->trainable_params()},
                {"steps", steps},
                {"eval", evals},
                {"teacher_seconds", res.teacher_s},
                {"student_seconds", res.student_s},
                {"train_tokens", res.train_tokens},
                {"grad_checkpoint", opt.grad_checkpoint},
                {"activation_bytes", student->activation_bytes()},
                {"ranks", P},
                {"resumed_at_step", first},
                {"fixed_zero_tensors", student->params().fixed_zeros().size()},
                {"factored_linears", factors.size()}};
  };
  // The starting point (e.g. a pruned or fake-quantized student before any step) on the curve.
  if (first == 0 && opt.eval_every > 0) do_eval(0);
  Progress bar("distill", last - first, opt.progress && writer);
  for (int64_t step = first; step < last; ++step) {
    const double t0 = now_s();
    double teacher_s = 0;
    student->params().zero_grad();
    // A low-rank student's factor gradients are summed from dW by pull_grads (+=): zeroed per step
    // like every other gradient (before, each step's update used the sum over all steps so far).
    if (!factors.empty()) factors.params().zero_grad();
    LossParts acc;
    const bool prune_now = prune.due(step + 1);
    InputSqSums col_sq;  // Wanda: Σx² of every projection's inputs over this step's rows
    for (int64_t k = 0; k < opt.accum; ++k) {
      // Every rank walks the whole global batch's windows (the same data order as one process)
      // and keeps its own rows.
      for (int64_t b = 0; b < B; ++b) {
        const int64_t w = order.at(state.data_position++);
        if (b < share.begin || b >= share.end) continue;
        const int32_t* src = stream.data() + starts[size_t(w)];
        std::copy(src, src + L, in.begin() + (b - share.begin) * L);
        std::copy(src + 1, src + L + 1, tg.begin() + (b - share.begin) * L);
      }
      if (la.alpha > 0) {
        const double tt = now_s();
        for (int64_t b = 0; b < Bl; ++b) {
          ts.reset();
          Tensor lg = teacher.forward(ts, in.data() + b * L, L, true);
          teacher.backend().to_host(lg, tlogits.data() + b * L * V);
        }
        teacher_s += now_s() - tt;
      }
      const float* logits = student->forward(in.data(), Bl, L);
      if (prune_now && prune.method == "wanda") llama->add_input_sq(col_sq);
      lops.zero(dlogits.data(), int64_t(dlogits.size()));
      // The loss is a mean over this rank's Nl rows; weighted by Nl / N it is this rank's part
      // of the mean over the global N rows, so the ranks' gradients sum to the global one.
      const double w_rank = double(Nl) / double(N);
      const LossParts lp =
          distill_loss(logits, la.alpha > 0 ? tlogits.data() : nullptr, tg.data(), Nl, V, la,
                       dlogits.data(), float(w_rank / double(opt.accum)), dev);
      acc.kd += w_rank * lp.kd / double(opt.accum);
      acc.ce += w_rank * lp.ce / double(opt.accum);
      acc.total += w_rank * lp.total / double(opt.accum);
      if (P == 1)
        MINFER_CHECK(std::isfinite(lp.total), "step {}: loss is {} (lower --lr?)", step + 1,
                     lp.total);
      student->backward(dlogits.data());
    }
    if (prune_now) {
      // Every rank prunes the same weights: the weights are equal and Wanda's statistics are
      // summed over the ranks first.
      if (P > 1)
        for (auto& kv : col_sq) opt.comm->allreduce_sum(kv.second.data(), kv.second.size());
      const double s_t = prune.target(step + 1);
      for (const std::string& n : projections)
        prune_rows(student->params(), n, s_t, prune.method == "wanda" ? &col_sq.at(n) : nullptr);
    }
    student->params().mask_grads();  // a pruned student's zeros stay zero (before the sum: the
                                     // same on every rank)
    if (P > 1) {
      // Sum the gradients and the loss parts over the ranks (every rank gets the same bits).
      FloatVec& g = student->params().grads();
      opt.comm->allreduce_sum(g.data(), g.size());
      double parts[3] = {acc.kd, acc.ce, acc.total};
      opt.comm->allreduce_sum(parts, 3);
      acc.kd = parts[0];
      acc.ce = parts[1];
      acc.total = parts[2];
      MINFER_CHECK(std::isfinite(acc.total), "step {}: loss is {} (lower --lr?)", step + 1,
                   acc.total);
    }
    double norm = 0;
    const float lr = lr_at(step, warmup, opt.steps, opt.lr, opt.min_lr_ratio);
    if (factors.empty()) {
      // On the student's device (a CUDA student: kernels over its managed buffers).
      TrainOps* dev = llama ? &llama->ops() : nullptr;
      norm = clip_grad_norm(student->params(), opt.clip, dev);
      adamw_step(student->params(), opt.adamw, lr, step + 1, dev);
    } else {
      // A low-rank student: W's gradient goes to its factors, which take the step; W = U·V.
      factors.pull_grads(student->params());
      norm = clip_grad_norm(student->params(), factors.params(), opt.clip);
      adamw_step(student->params(), opt.adamw, lr, step + 1);
      adamw_step(factors.params(), opt.adamw, lr, step + 1);
      factors.materialize(student->params());
    }
    state.step = step + 1;
    const double dt = now_s() - t0;
    res.teacher_s += teacher_s;
    res.student_s += dt - teacher_s;
    res.train_tokens += N * opt.accum;
    DistillStep ds{step + 1, lr, acc.total, acc.kd, acc.ce, norm, double(N * opt.accum) / dt};
    if (prune.active()) ds.sparsity = zero_fraction(student->params(), projections);
    res.steps.push_back(ds);
    res.steps_done = state.step;
    if (opt.eval_every > 0 && state.step % opt.eval_every == 0 && state.step < opt.steps)
      do_eval(state.step);
    if (writer && !opt.checkpoint.empty() && opt.checkpoint_every > 0 &&
        state.step % opt.checkpoint_every == 0) {
      save_checkpoint(opt.checkpoint, *student, state,
                      factors.empty() ? nullptr : &factors.params());
      write_json_file(fs::path(opt.checkpoint) / "training_log.json", make_log());
    }
    bar.update(step + 1 - first,
               fmt::format("loss {:.3f} (kd {:.3f} ce {:.3f}) {:.0f} tok/s{}", acc.total, acc.kd,
                           acc.ce, ds.tokens_per_s,
                           prune.active() ? fmt::format(" sparsity {:.3f}", ds.sparsity) : ""));
  }
  bar.finish();
  res.finished = state.step >= opt.steps;
  res.activation_bytes = student->activation_bytes();
  res.ranks = P;
  if (!res.finished) {
    if (writer) {
      save_checkpoint(opt.checkpoint, *student, state,
                      factors.empty() ? nullptr : &factors.params());
      write_json_file(fs::path(opt.checkpoint) / "training_log.json", make_log());
    }
  } else {
    do_eval(state.step);
  }

  res.log = make_log();

  if (writer && res.finished && !out.empty())
    save_student(*student, teacher, tok, opt, out, res.log);
  // The other ranks return once rank 0's files are complete.
  if (P > 1) opt.comm->barrier();
  return res;
}

}  // namespace minfer::train

namespace minfer::train {

std::vector<std::vector<int32_t>> tokenize_lines(const Tokenizer& tok,
                                                 const std::vector<std::string>& files, bool lower,
                                                 int64_t max_len) {
  MINFER_CHECK(max_len >= 2, "sequences of at most {} tokens leave no room for text", max_len);
  std::vector<std::vector<int32_t>> out;
  for (const std::string& f : files) {
    std::ifstream in(f, std::ios::binary);
    MINFER_CHECK(in.good(), "{}: cannot open data file", f);
    for (std::string l; std::getline(in, l);) {
      const auto a = l.find_first_not_of(" \t\r");
      if (a == std::string::npos) continue;
      const std::string t = l.substr(a, l.find_last_not_of(" \t\r") - a + 1);
      std::vector<int32_t> ids = tok.encode(lower ? unicode::lowercase(t) : t, true);
      if (int64_t(ids.size()) > max_len) {
        const int32_t last = ids.back();
        ids.resize(size_t(max_len));
        if (!tok.special_suffix().empty()) ids.back() = last;
      }
      if (!ids.empty()) out.push_back(std::move(ids));
    }
  }
  return out;
}

namespace {

// Pools hidden [B*T, C] over each sequence's tokens (mask [B*T], 1 = token) into pooled [B, C].
void pool_rows(float* pooled, const float* hidden, const int32_t* mask, int64_t B, int64_t T,
               int64_t C, SentencePooling::Mode mode) {
  std::fill(pooled, pooled + B * C, 0.f);
  for (int64_t b = 0; b < B; ++b) {
    float* o = pooled + b * C;
    if (mode == SentencePooling::Mode::Cls) {
      std::copy(hidden + b * T * C, hidden + b * T * C + C, o);
      continue;
    }
    int64_t n = 0;
    for (int64_t t = 0; t < T; ++t) {
      if (mask && !mask[b * T + t]) continue;
      ++n;
      for (int64_t i = 0; i < C; ++i) o[i] += hidden[(b * T + t) * C + i];
    }
    const float inv = 1.f / float(std::max<int64_t>(n, 1));
    for (int64_t i = 0; i < C; ++i) o[i] *= inv;
  }
}

// dhidden [B*T, C] += the gradient of pool_rows for dpooled [B, C].
void pool_rows_backward(float* dhidden, const float* dpooled, const int32_t* mask, int64_t B,
                        int64_t T, int64_t C, SentencePooling::Mode mode) {
  for (int64_t b = 0; b < B; ++b) {
    const float* d = dpooled + b * C;
    if (mode == SentencePooling::Mode::Cls) {
      for (int64_t i = 0; i < C; ++i) dhidden[b * T * C + i] += d[i];
      continue;
    }
    int64_t n = 0;
    for (int64_t t = 0; t < T; ++t) n += !mask || mask[b * T + t] ? 1 : 0;
    const float inv = 1.f / float(std::max<int64_t>(n, 1));
    for (int64_t t = 0; t < T; ++t) {
      if (mask && !mask[b * T + t]) continue;
      for (int64_t i = 0; i < C; ++i) dhidden[(b * T + t) * C + i] += d[i] * inv;
    }
  }
}

// A padded micro-batch of sequences (each cut to L tokens: the first L − 1 and the last).
struct EncBatch {
  int64_t B = 0, T = 0;
  std::vector<int32_t> ids, mask;
};

EncBatch make_batch(const std::vector<const std::vector<int32_t>*>& seqs, int64_t L, int32_t pad) {
  EncBatch e;
  e.B = int64_t(seqs.size());
  e.T = 1;
  for (const auto* s : seqs) e.T = std::max<int64_t>(e.T, std::min<int64_t>(int64_t(s->size()), L));
  e.ids.assign(size_t(e.B * e.T), pad);
  e.mask.assign(size_t(e.B * e.T), 0);
  for (int64_t b = 0; b < e.B; ++b) {
    const std::vector<int32_t>& s = *seqs[size_t(b)];
    const int64_t n = std::min<int64_t>(int64_t(s.size()), L);
    for (int64_t t = 0; t < n; ++t) {
      e.ids[size_t(b * e.T + t)] = s[size_t(t)];
      e.mask[size_t(b * e.T + t)] = 1;
    }
    if (int64_t(s.size()) > L) e.ids[size_t(b * e.T + L - 1)] = s.back();
  }
  return e;
}

// The teacher's pooled embeddings [B, C] of a batch, one sequence at a time (no padding).
void teacher_pooled(Model& teacher, RunState& ts, const EncBatch& e, int64_t C,
                    SentencePooling::Mode mode, float* out, std::vector<float>& hid) {
  for (int64_t b = 0; b < e.B; ++b) {
    int64_t n = 0;
    while (n < e.T && e.mask[size_t(b * e.T + n)]) ++n;
    ts.reset();
    Tensor h = teacher.encode(ts, e.ids.data() + b * e.T, 1, n);
    hid.resize(size_t(n * C));
    teacher.backend().to_host(h, hid.data());
    pool_rows(out + b * C, hid.data(), nullptr, 1, n, C, mode);
  }
}

}  // namespace

double embedding_mse_step(TrainBert& st, const int32_t* ids, const int32_t* mask, int64_t B,
                          int64_t T, const float* target, bool cls, float scale, bool backward) {
  const int64_t C = st.config().hidden;
  const SentencePooling::Mode mode = cls ? SentencePooling::Mode::Cls : SentencePooling::Mode::Mean;
  std::vector<float> sp(size_t(B * C)), dp(size_t(B * C));
  const float* h = st.forward(ids, B, T, mask, nullptr);
  pool_rows(sp.data(), h, mask, B, T, C, mode);
  // MSE over the B·C values (torch.nn.MSELoss, mean); its gradient 2(s − t) / (B·C).
  double se = 0;
  const float g = float(2.0 / double(B * C)) * scale;
  for (int64_t i = 0; i < B * C; ++i) {
    const float d = sp[size_t(i)] - target[i];
    se += double(d) * d;
    dp[size_t(i)] = g * d;
  }
  if (backward) {
    std::vector<float> dh(size_t(B * T * C), 0.f);
    pool_rows_backward(dh.data(), dp.data(), mask, B, T, C, mode);
    st.backward(dh.data());
  }
  return se / double(B * C);
}

DistillResult distill_encoder(Model& teacher, const Tokenizer* tok,
                              const std::vector<std::vector<int32_t>>& train_seqs,
                              const std::string& data_desc,
                              const std::vector<std::vector<int32_t>>& eval_seqs,
                              const DistillOptions& opt, const std::string& out) {
  // Everything that can be wrong with the input is checked before any work or any write.
  const DistillLossArgs& la = opt.loss;
  MINFER_CHECK(la.alpha >= 0.f && la.alpha <= 1.f, "--alpha {} outside [0, 1]", la.alpha);
  MINFER_CHECK(la.tau > 0.f && std::isfinite(la.tau), "--temperature {} must be > 0", la.tau);
  MINFER_CHECK(opt.steps > 0 && opt.batch > 0 && opt.accum > 0 && opt.seq > 1,
               "--steps {}, --batch {}, --accum {} must be > 0 and --seq {} > 1", opt.steps,
               opt.batch, opt.accum, opt.seq);
  MINFER_CHECK(opt.lr > 0.f && std::isfinite(opt.lr), "--lr {} must be > 0", opt.lr);
  MINFER_CHECK(opt.stop_at == 0 || !opt.checkpoint.empty(),
               "--stop-at needs --checkpoint DIR (where the run continues from)");
  const ModelConfig& tc = teacher.config();
  MINFER_CHECK(!tc.causal(),
               "the teacher is a causal LM ({}) and the student an encoder: encoder distillation "
               "needs an encoder teacher (a causal teacher distills causal students)",
               arch_name(tc.arch));
  MINFER_CHECK(opt.seq <= tc.max_pos, "--seq {} exceeds the teacher's {} positions", opt.seq,
               tc.max_pos);
  if (opt.comm && opt.comm->size() > 1)
    throw NotImplemented("data-parallel (MPI) encoder distillation");
  if (opt.prune.active()) throw NotImplemented("--prune-schedule for a bert student");
  if (opt.generate > 0)
    MINFER_FAIL("--generate {}: the teacher is an encoder ({}): it cannot sample text",
                opt.generate, arch_name(tc.arch));
  if (opt.ops && !opt.ops->host())
    throw NotImplemented("a bert student on the " + opt.ops->name() + " device");
  MINFER_CHECK(!train_seqs.empty(),
               "{}: no non-blank line, shorter than one training sequence (encoder distillation "
               "takes one text line per sequence)",
               data_desc);
  for (const auto& sq : train_seqs)
    for (int32_t id : sq)
      MINFER_CHECK(id >= 0 && id < tc.vocab_size, "{}: token id {} outside the vocabulary ({})",
                   data_desc, id, tc.vocab_size);
  if (!out.empty())
    MINFER_CHECK(opt.force || !fs::exists(out), "{} already exists (pass --force to replace it)",
                 out);
  std::unique_ptr<Student> student = build_student(opt, teacher);
  TrainBert* bert = dynamic_cast<TrainBert*>(student.get());
  MINFER_CHECK(bert,
               "--student '{}' is a causal LM ({}) and the teacher an encoder ({}): encoder "
               "distillation needs an encoder student",
               opt.student, arch_name(student->config().arch), arch_name(tc.arch));
  student->set_checkpointing(opt.grad_checkpoint);
  const ModelConfig& sc = student->config();
  MINFER_CHECK(sc.vocab_size == tc.vocab_size,
               "student vocabulary ({} tokens) differs from the teacher's ({} tokens)",
               sc.vocab_size, tc.vocab_size);
  MINFER_CHECK(sc.hidden == tc.hidden,
               "student width {} differs from the teacher's {}: the embedding loss compares the "
               "two sentence vectors element by element (a projection is not implemented)",
               sc.hidden, tc.hidden);
  MINFER_CHECK(opt.seq <= sc.max_pos, "--seq {} exceeds the student's {} positions", opt.seq,
               sc.max_pos);
  const SentencePooling pool =
      opt.teacher_path.empty() ? SentencePooling{} : load_sentence_pooling(opt.teacher_path);
  if (pool.mode != SentencePooling::Mode::Mean && pool.mode != SentencePooling::Mode::Cls)
    throw NotImplemented("encoder distillation with max / last-token pooling (mean and CLS are)");

  const int64_t B = opt.batch, L = opt.seq, C = tc.hidden;
  const int32_t pad = tc.pad_id >= 0 ? int32_t(tc.pad_id) : 0;
  const int64_t windows = int64_t(train_seqs.size());
  const int64_t warmup = opt.warmup >= 0 ? opt.warmup : opt.steps / 10;
  TrainerState state;
  state.seed = opt.seed;
  state.extra = options_json(opt);
  state.extra["loss"] = "embedding-mse";
  if (!opt.resume.empty()) {
    state = load_checkpoint(opt.resume, *student);
    for (const char* k : kResumeKeys)
      MINFER_CHECK(!state.extra.contains(k) || state.extra[k] == options_json(opt)[k],
                   "--resume {}: the checkpoint was made with {} = {}, this run has {} (a resumed "
                   "run must repeat the options to continue the same run)",
                   opt.resume, k, state.extra[k].dump(), options_json(opt)[k].dump());
    MINFER_CHECK(state.step < opt.steps, "--resume {}: the checkpoint is at step {} of {}",
                 opt.resume, state.step, opt.steps);
  }

  DistillResult res;
  WindowOrder order(windows, opt.seed);
  RunState ts = teacher.new_state(0, L);
  std::vector<float> tp(size_t(B * C)), sp(size_t(B * C)), hid;
  const int64_t first = state.step,
                last = opt.stop_at > 0 ? std::min(opt.stop_at, opt.steps) : opt.steps;
  auto do_eval = [&](int64_t step) {
    if (eval_seqs.empty()) return;
    double cs = 0, se = 0;
    int64_t n = 0, tokens = 0;
    for (size_t i0 = 0; i0 < eval_seqs.size() && (opt.eval_tokens <= 0 || tokens < opt.eval_tokens);
         i0 += size_t(B)) {
      std::vector<const std::vector<int32_t>*> seqs;
      for (size_t i = i0; i < std::min(eval_seqs.size(), i0 + size_t(B)); ++i) {
        seqs.push_back(&eval_seqs[i]);
        tokens += std::min<int64_t>(int64_t(eval_seqs[i].size()), L);
      }
      const EncBatch e = make_batch(seqs, L, pad);
      teacher_pooled(teacher, ts, e, C, pool.mode, tp.data(), hid);
      const float* h = bert->forward(e.ids.data(), e.B, e.T, e.mask.data(), nullptr);
      pool_rows(sp.data(), h, e.mask.data(), e.B, e.T, C, pool.mode);
      for (int64_t b = 0; b < e.B; ++b) {
        const std::vector<float> a(sp.begin() + b * C, sp.begin() + (b + 1) * C),
            t(tp.begin() + b * C, tp.begin() + (b + 1) * C);
        cs += cosine(a, t);
        for (int64_t i = 0; i < C; ++i)
          se += double(a[size_t(i)] - t[size_t(i)]) * (a[size_t(i)] - t[size_t(i)]);
        ++n;
      }
    }
    DistillEval ev;
    ev.step = step;
    ev.tokens = tokens;
    ev.cos = cs / double(std::max<int64_t>(n, 1));
    ev.mse = se / double(std::max<int64_t>(n * C, 1));
    res.evals.push_back(ev);
  };
  // Where the student starts (a fresh run with --eval-every): the held-out figures of step 0.
  if (first == 0 && opt.eval_every > 0) do_eval(0);
  Progress bar("distill", last - first, opt.progress);
  for (int64_t step = first; step < last; ++step) {
    const double t0 = now_s();
    double teacher_s = 0;
    int64_t tokens = 0;
    student->params().zero_grad();
    double loss = 0;
    for (int64_t k = 0; k < opt.accum; ++k) {
      std::vector<const std::vector<int32_t>*> seqs;
      for (int64_t b = 0; b < B; ++b)
        seqs.push_back(&train_seqs[size_t(order.at(state.data_position++))]);
      const EncBatch e = make_batch(seqs, L, pad);
      for (int32_t m : e.mask) tokens += m;
      const double tt = now_s();
      teacher_pooled(teacher, ts, e, C, pool.mode, tp.data(), hid);
      teacher_s += now_s() - tt;
      const double mse = embedding_mse_step(*bert, e.ids.data(), e.mask.data(), e.B, e.T, tp.data(),
                                            pool.mode == SentencePooling::Mode::Cls,
                                            float(1.0 / double(opt.accum)),
                                            /*backward=*/true);
      MINFER_CHECK(std::isfinite(mse), "step {}: loss is {} (lower --lr?)", step + 1, mse);
      loss += mse / double(opt.accum);
    }
    const float lr = lr_at(step, warmup, opt.steps, opt.lr, opt.min_lr_ratio);
    const double norm = clip_grad_norm(student->params(), opt.clip);
    adamw_step(student->params(), opt.adamw, lr, step + 1);
    state.step = step + 1;
    const double dt = now_s() - t0;
    res.teacher_s += teacher_s;
    res.student_s += dt - teacher_s;
    res.train_tokens += tokens;
    DistillStep ds{step + 1, lr, loss, loss, 0.0, norm, double(tokens) / dt};
    res.steps.push_back(ds);
    res.steps_done = state.step;
    if (opt.eval_every > 0 && state.step % opt.eval_every == 0 && state.step < opt.steps)
      do_eval(state.step);
    if (!opt.checkpoint.empty() && opt.checkpoint_every > 0 &&
        state.step % opt.checkpoint_every == 0)
      save_checkpoint(opt.checkpoint, *student, state);
    bar.update(step + 1 - first,
               fmt::format("embedding mse {:.5f} {:.0f} tok/s", loss, ds.tokens_per_s));
  }
  bar.finish();
  res.finished = state.step >= opt.steps;
  res.activation_bytes = student->activation_bytes();
  if (!res.finished)
    save_checkpoint(opt.checkpoint, *student, state);
  else
    do_eval(state.step);

  json steps = json::array(), evals = json::array();
  for (const DistillStep& st : res.steps)
    steps.push_back({{"step", st.step},
                     {"lr", st.lr},
                     {"loss", st.loss},
                     {"mse", st.kd},
                     {"grad_norm", st.grad_norm},
                     {"tokens_per_s", st.tokens_per_s}});
  for (const DistillEval& e : res.evals)
    evals.push_back({{"step", e.step}, {"cos", e.cos}, {"mse", e.mse}, {"tokens", e.tokens}});
  json options = options_json(opt);
  options["loss"] = "embedding-mse";
  options["pooling"] = pool.mode == SentencePooling::Mode::Cls ? "cls" : "mean";
  res.log = {{"options", options},
             {"data", data_desc},
             {"train_sequences", windows},
             {"student_params", student->params().numel()},
             {"trainable_params", student->trainable_params()},
             {"steps", steps},
             {"eval", evals},
             {"teacher_seconds", res.teacher_s},
             {"student_seconds", res.student_s},
             {"train_tokens", res.train_tokens},
             {"grad_checkpoint", opt.grad_checkpoint},
             {"activation_bytes", res.activation_bytes},
             {"ranks", 1}};
  if (res.finished && !out.empty()) save_student(*student, teacher, tok, opt, out, res.log);
  return res;
}

}  // namespace minfer::train
