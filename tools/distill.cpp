// distill: knowledge distillation of a smaller LLaMA-family or GPT-2 student from a causal
// teacher in any format (loss = α·τ²·KL(teacher_τ ‖ student_τ) + (1 − α)·CE), or of a BERT
// student from a BERT teacher (MSE on the pooled sentence embeddings) (docs/training.md).
#include "train/distill.h"

#include <algorithm>
#include <cstdlib>
#include <filesystem>

#include "app/default_data.h"
#include "app/model_hub.h"
#include "app/report.h"
#include "models/eval.h"
#include "models/loader.h"
#include "tools/common.h"

// Data-parallel training over MPI (`mpirun -np P distill ...`): only in an MPI build.
#if MINFER_MPI
#include "train/mpi/comm_mpi.h"
#endif

using namespace minfer;

namespace {

// --- data parallelism (MPI) ---------------------------------------------------------------
#if MINFER_MPI
constexpr const char* kMpiFooter =
    "MPI: built with MPI. `mpirun -np P distill ...` splits every micro-batch of --batch "
    "sequences over P ranks and sums their gradients (docs/training.md); rank 0 prints and "
    "writes.";
#else
constexpr const char* kMpiFooter =
    "MPI: not built (no mpicxx when this was compiled; `make MPI=1` after installing "
    "libopenmpi-dev). Data-parallel runs need an MPI build.";
#endif

// The ranks mpirun announces in the environment (Open MPI, MPICH/Hydra, Slurm); 1 when not
// launched by one.
int launcher_ranks() {
  for (const char* v : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE"})
    if (const char* e = std::getenv(v)) return std::max(1, std::atoi(e));
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{
      "Knowledge distillation: train a smaller LLaMA-family or GPT-2 student on the teacher's "
      "soft targets (Hinton et al. 2015). loss = alpha*T^2*KL(teacher_T || student_T) + "
      "(1-alpha)*CE(next token). With an encoder (BERT) teacher the student is a BERT of the "
      "same width trained on one text line per sequence, loss = MSE between the student's and "
      "the teacher's pooled sentence embeddings (Reimers & Gurevych 2020; pooling from the "
      "teacher's sentence-transformers files); alpha and T then do not enter the loss.",
      "distill"};
  train::DistillOptions o;
  std::string teacher, out, kl = "forward", eval_data, lora_targets;
  std::vector<std::string> data;
  int threads = 0, device = 0;
  std::string backend = "cpu";
  bool quiet = false;
  app.footer(kMpiFooter);
  app.add_option("--teacher", teacher, "smollm2 | HF folder | .gguf | compressed minfer folder")
      ->required();
  app.add_option("--student", o.student,
                 "init:layers=0,2,4 (keep those teacher blocks) | init (all blocks) | a model "
                 "folder (config.json [+ model.safetensors]) | a config.json (random init) | a "
                 "compressed folder. llama-family or gpt2 for a causal teacher, bert for a bert "
                 "teacher (init: the teacher's architecture)")
      ->required();
  app.add_option("--data", data,
                 "training text file(s), e.g. ../shared/data/wikitext-2-raw/"
                 "wiki.valid.raw (optional with --generate)");
  app.add_option("--out", out,
                 "output model folder (written at the end, through a temp folder), with "
                 "training_log.json and training_curves.svg (several runs in one plot: "
                 "train-curves --log A/training_log.json --log B/training_log.json)")
      ->required();
  app.add_option("--alpha", o.loss.alpha, "weight of the KD term in [0, 1] (0 = CE only)");
  app.add_option("--temperature", o.loss.tau, "softmax temperature T > 0 of the KD term");
  app.add_option("--kl", kl,
                 "forward: KL(teacher || student) (Hinton) | reverse: KL(student || "
                 "teacher) (MiniLLM)")
      ->check(CLI::IsMember({"forward", "reverse"}));
  app.add_option("--steps", o.steps, "optimizer steps")->check(CLI::PositiveNumber);
  app.add_option("--batch", o.batch, "sequences per micro-batch")->check(CLI::PositiveNumber);
  app.add_option("--accum", o.accum, "micro-batches per optimizer step (gradient accumulation)")
      ->check(CLI::PositiveNumber);
  app.add_option("--seq", o.seq,
                 "tokens per sequence (an encoder: the most tokens kept of each text line)")
      ->check(CLI::Range(int64_t(2), int64_t(1) << 20));
  app.add_option("--lr", o.lr, "peak learning rate (AdamW)");
  app.add_option("--warmup", o.warmup, "linear warmup steps (default: steps/10), then cosine");
  app.add_option("--min-lr-ratio", o.min_lr_ratio, "final learning rate / peak");
  app.add_option("--weight-decay", o.adamw.weight_decay, "AdamW decoupled weight decay (matrices)");
  app.add_option("--clip", o.clip, "global gradient-norm clip (0 = off)");
  app.add_option("--seed", o.seed, "seed of the data order and of a random student init");
  app.add_option(
         "--eval-every", o.eval_every,
         "evaluate held-out perplexity (an encoder: cosine and MSE to the teacher) at step 0 of "
         "a fresh run, every N steps and always at the end; each evaluation is printed as it "
         "happens")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--eval-data", eval_data,
                 "held-out text (default: WikiText-2 wiki.test.raw if found: $MINFER_WIKITEXT, "
                 "../shared/data/wikitext-2-raw or beside the checkout; "
                 "'none': no evaluation)");
  app.add_option("--eval-tokens", o.eval_tokens, "held-out tokens evaluated")
      ->check(CLI::PositiveNumber);
  app.add_option("--checkpoint", o.checkpoint,
                 "checkpoint folder (weights, AdamW state, data "
                 "position)");
  app.add_option("--checkpoint-every", o.checkpoint_every,
                 "write the checkpoint (with the run's training_log.json so far) every N steps")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--resume", o.resume, "continue the run saved in this checkpoint folder");
  app.add_option("--stop-at", o.stop_at, "stop after this step, writing --checkpoint")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--threads,-t", threads, "threads")->check(CLI::NonNegativeNumber);
  app.add_option("--backend", backend,
                 "cpu | cuda: where the student trains (cuda: cuBLAS + the training kernels on "
                 "managed memory, the loss, clipping and AdamW included; the teacher stays on the "
                 "CPU; QAT, LoRA and "
                 "low-rank students train on the CPU only)")
      ->check(CLI::IsMember({"cpu", "cuda"}));
  app.add_option("--device", device, "GPU index for --backend cuda")->check(CLI::NonNegativeNumber);
  app.add_flag("--grad-checkpoint", o.grad_checkpoint,
               "gradient checkpointing: keep only each layer's input, recompute in backward");
  app.add_flag("--force", o.force, "replace an existing --out folder");
  // QAT, LoRA / QLoRA, data-free distillation (docs/training.md).
  app.add_option("--qat", o.qat,
                 "quantization-aware training of every block projection (llama, gpt2 and bert "
                 "students): int8 (per row) | int8-gG | int4[-gG] (default group 128) | ternary "
                 "(BitNet b1.58 absmean); the output is a compressed folder in that format");
  app.add_flag("--lsq", o.qat_lsq, "with --qat: learned step sizes (LSQ, arXiv 1902.08153)");
  CLI::Option* lora_rank =
      app.add_option("--lora-rank", o.lora.rank,
                     "LoRA rank r (arXiv 2106.09685): train adapters over the frozen student base, "
                     "in any format (NF4: QLoRA)");
  CLI::Option* lora_alpha =
      app.add_option("--lora-alpha", o.lora.alpha, "LoRA alpha (update scaled by alpha / r)");
  CLI::Option* lora_tg =
      app.add_option("--lora-targets", lora_targets,
                     "comma-separated projections to adapt, per student architecture: llama "
                     "q,k,v,o,gate,up,down (default q,v); gpt2 qkv,o,up,down (attn.c_attn, "
                     "attn.c_proj, mlp.c_fc, mlp.c_proj; default qkv); bert q,k,v,o,up,down "
                     "(query, key, value, attention.output.dense, intermediate.dense, "
                     "output.dense; default q,v)");
  CLI::Option* lora_merge =
      app.add_flag("--lora-merge", o.lora.merge,
                   "write one f32 model with the adapters merged (default: the base in f32 plus "
                   "adapter_model.safetensors + adapter_config.json, merged when a tool loads it)");
  app.add_option("--generate", o.generate,
                 "the teacher samples N sequences of --seq + 1 tokens from BOS as extra training "
                 "data (data-free distillation, LLM-QAT)")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--gen-temp", o.gen_temperature, "sampling temperature of --generate");
  app.add_option("--gen-top-k", o.gen_top_k, "top-k of --generate (0: all tokens)");
  app.add_option("--gen-seed", o.gen_seed, "sampling seed of --generate");
  // Gradual pruning (train/prune_schedule.h).
  app.add_option("--prune-schedule", o.prune.method,
                 "prune every block projection during training, Zhu & Gupta's cubic schedule "
                 "(arXiv 1710.01878): magnitude (|w|) | wanda (|w| * ||x||, the step's inputs); "
                 "per output row, masks fixed between updates")
      ->check(CLI::IsMember({"magnitude", "wanda"}));
  app.add_option("--prune-to", o.prune.final_sparsity, "final sparsity s_f in (0, 1)");
  app.add_option("--prune-from", o.prune.initial, "initial sparsity s_i (default 0)");
  app.add_option("--prune-start", o.prune.start, "first pruning step t0 (default 1)");
  app.add_option("--prune-end", o.prune.end,
                 "last pruning step t1, where s_f is reached (default 3/4 of --steps)");
  app.add_option("--prune-every", o.prune.every,
                 "steps between pruning updates (default (t1 - t0) / 8, at least 1)");
  app.add_flag("--quiet,-q", quiet, "no progress bar");
#if MINFER_MPI
  train::MpiComm mpi(&argc, &argv);
  o.comm = &mpi;
  const bool printer = mpi.rank() == 0;
#else
  const bool printer = true;
#endif
  const int rc = tool::run(app, argc, argv, [&]() -> int {
#if MINFER_MPI
    // An error on one rank would leave the others waiting in a collective: every error ends
    // the whole job (after rank 0 or the failing rank printed it).
    try {
#endif
      MINFER_CHECK(launcher_ranks() == 1 || o.comm,
                   "launched as one of {} MPI ranks, but this distill was built without MPI: each "
                   "rank would train alone and all would write --out. Rebuild with `make MPI=1` "
                   "(libopenmpi-dev), or run one process",
                   launcher_ranks());
      o.loss.reverse = kl == "reverse";
      if (lora_rank->count() > 0)
        MINFER_CHECK(o.lora.rank >= 1, "--lora-rank {} must be >= 1 (the rank of the adapters)",
                     o.lora.rank);
      for (CLI::Option* opt : {lora_alpha, lora_tg, lora_merge})
        MINFER_CHECK(opt->count() == 0 || lora_rank->count() > 0, "{} needs --lora-rank",
                     opt->get_name());
      MINFER_CHECK(o.prune.active() || o.prune.final_sparsity == 0,
                   "--prune-to needs --prune-schedule magnitude|wanda");
      if (!lora_targets.empty()) o.lora.targets = train::parse_lora_targets(lora_targets);
      MINFER_CHECK(!data.empty() || o.generate > 0,
                   "--data: no training text (give --data FILE... or --generate N)");
      if (!printer) quiet = true;
      o.progress = !quiet;
      MINFER_CHECK(o.loss.alpha >= 0.f && o.loss.alpha <= 1.f, "--alpha {} outside [0, 1]",
                   o.loss.alpha);
      MINFER_CHECK(o.loss.tau > 0.f, "--temperature {} must be > 0", o.loss.tau);
      MINFER_CHECK(o.force || !std::filesystem::exists(out),
                   "{} already exists (pass --force to replace it)", out);
      if (eval_data == "none")
        eval_data.clear();
      else if (eval_data.empty())
        eval_data = locate_wikitext("wiki.test.raw");  // "" when absent: no evaluation
      auto be = make_backend("cpu", threads);
      o.ops = train::make_train_ops(backend, device);
      LoadedModel t = open_named_model(teacher, *be);
      o.teacher_path = t.path;
      if (!t.model->config().causal()) {  // encoder distillation: one sequence per text line
        MINFER_CHECK(!data.empty(),
                     "--data: no training text (an encoder teacher cannot "
                     "--generate)");
        const SentenceEmbeddingConfig st = read_sentence_embedding_config(t.path);
        const int64_t max_len = std::min({o.seq, st.max_seq_length, t.model->config().max_pos});
        const auto seqs = train::tokenize_lines(*t.tokenizer, data, st.do_lower_case, max_len);
        std::vector<std::vector<int32_t>> eval_seqs;
        if (!eval_data.empty())
          eval_seqs = train::tokenize_lines(*t.tokenizer, {eval_data}, st.do_lower_case, max_len);
        const std::string desc =
            data.size() == 1 ? data[0] : fmt::format("{} data files", data.size());
        const double t0 = tool::now_s();
        train::DistillResult r =
            train::distill_encoder(*t.model, t.tokenizer.get(), seqs, desc, eval_seqs, o, out);
        const double el = tool::now_s() - t0;
        if (!r.finished) {
          std::printf("stopped after step %lld of %lld; checkpoint in %s\n",
                      (long long)r.steps_done, (long long)o.steps, o.checkpoint.c_str());
          return 0;
        }
        std::vector<CurveSeries> curves(2);
        curves[0].name = "embedding MSE (train)";
        curves[1].name = "embedding MSE (held-out)";
        for (const train::DistillStep& s : r.steps)
          curves[0].points.emplace_back(double(s.step), s.loss);
        for (const train::DistillEval& e : r.evals)
          curves[1].points.emplace_back(double(e.step), e.mse);
        write_file_atomic((std::filesystem::path(out) / "training_curves.svg").string(),
                          curves_svg(fmt::format("distill (encoder): {} steps", o.steps),
                                     "optimizer step", "MSE of the pooled embeddings", curves));
        std::printf(
            "distilled %lld steps in %.1f s: embedding MSE %.6f, %.0f train tok/s (teacher %.1f "
            "s, student %.1f s)\n",
            (long long)r.steps_done, el, r.steps.back().loss,
            double(r.train_tokens) / (r.teacher_s + r.student_s), r.teacher_s, r.student_s);
        for (const train::DistillEval& e : r.evals)
          std::printf(
              "eval step %lld: cosine to the teacher %.5f, MSE %.6f over %lld tokens of %s\n",
              (long long)e.step, e.cos, e.mse, (long long)e.tokens, eval_data.c_str());
        std::printf("wrote %s (peak RSS %.0f MB)\n", out.c_str(), tool::peak_rss_mb());
        return 0;
      }
      const std::vector<int32_t> ids =
          data.empty() ? std::vector<int32_t>{} : train::tokenize_files(*t.tokenizer, data);
      std::vector<int32_t> eval;
      if (!eval_data.empty()) eval = train::tokenize_files(*t.tokenizer, {eval_data});
      std::string desc = data.size() == 1 ? data[0] : fmt::format("{} data files", data.size());
      if (data.empty()) desc = "no data files (--generate only)";
      const double t0 = tool::now_s();
      train::DistillResult r = train::distill(*t.model, t.tokenizer.get(), ids, desc, eval, o, out);
      const double el = tool::now_s() - t0;
      if (!printer) return 0;
      if (!r.finished) {
        std::printf("stopped after step %lld of %lld; checkpoint in %s\n", (long long)r.steps_done,
                    (long long)o.steps, o.checkpoint.c_str());
        return 0;
      }
      // The curves next to the JSON log (the folder itself was written whole by distill()).
      std::vector<CurveSeries> curves(4);
      curves[0].name = "loss";
      curves[1].name = "KD: KL (before alpha*T^2)";
      curves[2].name = "CE (train)";
      curves[3].name = "eval NLL (held-out)";
      for (const train::DistillStep& s : r.steps) {
        curves[0].points.emplace_back(double(s.step), s.loss);
        if (o.loss.alpha > 0) curves[1].points.emplace_back(double(s.step), s.kd);
        if (o.loss.alpha < 1) curves[2].points.emplace_back(double(s.step), s.ce);
      }
      for (const train::DistillEval& e : r.evals)
        curves[3].points.emplace_back(double(e.step), e.nll);
      write_file_atomic((std::filesystem::path(out) / "training_curves.svg").string(),
                        curves_svg(fmt::format("distill: {} steps, alpha {}, T {}", o.steps,
                                               o.loss.alpha, o.loss.tau),
                                   "optimizer step", "loss (nats per token)", curves));
      const train::DistillStep& last = r.steps.back();
      std::printf(
          "distilled %lld steps in %.1f s: loss %.4f (kd %.4f, ce %.4f), %.0f train tok/s "
          "(teacher %.1f s, student %.1f s)\n",
          (long long)r.steps_done, el, last.loss, last.kd, last.ce,
          double(r.train_tokens) / (r.teacher_s + r.student_s), r.teacher_s, r.student_s);
      if (o.prune.active()) std::printf("sparsity of the block projections: %.4f\n", last.sparsity);
      for (const train::DistillEval& e : r.evals)
        std::printf("eval step %lld: ppl %.3f over %lld tokens of %s\n", (long long)e.step, e.ppl,
                    (long long)e.tokens, eval_data.c_str());
      if (o.lora.rank > 0 || !o.qat.empty())
        std::printf("trainable parameters: %lld\n",
                    (long long)r.log.value("trainable_params", int64_t(0)));
      std::printf("wrote %s (student activations %.1f MB%s, peak RSS %.0f MB)\n", out.c_str(),
                  double(r.activation_bytes) / 1048576.0,
                  o.grad_checkpoint ? " with gradient checkpointing" : "", tool::peak_rss_mb());
      if (r.ranks > 1) std::printf("data parallel over %d MPI ranks\n", r.ranks);
      return 0;
#if MINFER_MPI
    } catch (const std::exception& e) {
      if (mpi.size() == 1) throw;
      std::fflush(stdout);
      std::fprintf(stderr, "distill: error (rank %d of %d): %s\n", mpi.rank(), mpi.size(),
                   e.what());
      mpi.abort(1);
    }
#endif
  });
  return rc;
}
