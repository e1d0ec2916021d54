// Knowledge distillation of a LLaMA-family or GPT-2 student from a causal teacher in any weight
// format (Hinton et al. 2015), and of a BERT encoder student from an encoder teacher
// (distill_encoder: MSE on pooled sentence embeddings). Causal: per optimizer step, K micro-batches
// of B sequences of L tokens; the teacher runs its ordinary forward (no tape), the student its
// training forward; loss = α·τ²·KL(teacher_τ ‖ student_τ) + (1 − α)·CE(next token) (train/loss.h),
// AdamW with warmup + cosine, global-norm clipping, checkpoints that resume bit-identically.
#pragma once
#include <cstdint>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "models/model.h"
#include "tokenizer/tokenizer.h"
#include "train/bert_train.h"
#include "train/comm.h"
#include "train/llama_train.h"
#include "train/loss.h"
#include "train/optim.h"
#include "train/prune_schedule.h"
#include "train/student.h"

namespace minfer::train {

struct DistillOptions {
  // Student: "init:layers=0,2,4" (those teacher blocks, in that order, with the teacher's
  // embedding, final norm and head), "init" (every teacher block), a model folder
  // (config.json [+ model.safetensors: start from those weights, else random init]) or a
  // config.json file (random init, N(0, 0.02²), norm weights 1).
  // The student's architecture is the teacher's for init, the config's otherwise: llama (and
  // its family), gpt2 (causal teachers) or bert (encoder teachers, distill_encoder).
  std::string student = "init";
  // The teacher's path (the tool sets it): an encoder student takes the teacher's
  // sentence-transformers pooling from it and copies its modules into `out`. "" = mean pooling.
  std::string teacher_path;
  DistillLossArgs loss;  // α, τ, forward/reverse KL
  int64_t steps = 100;   // optimizer steps
  int64_t batch = 4;     // B sequences per micro-batch
  int64_t accum = 1;     // K micro-batches per optimizer step (gradients summed, scaled 1/K)
  int64_t seq = 128;     // L tokens per sequence
  float lr = 3e-4f;      // peak learning rate
  int64_t warmup = -1;   // warmup steps (-1: steps / 10)
  float min_lr_ratio = 0.1f;
  AdamWConfig adamw;
  double clip = 1.0;             // global gradient-norm clip (0 = off)
  uint64_t seed = 0;             // data order and random init
  int64_t eval_every = 0;        // evaluate held-out perplexity every N steps (0: only at the end)
  int64_t eval_tokens = 16384;   // held-out tokens evaluated (first N of the eval text)
  std::string checkpoint;        // checkpoint folder ("" = none)
  int64_t checkpoint_every = 0;  // write the checkpoint every N steps (0: only at --stop-at)
  std::string resume;            // resume from this checkpoint folder
  int64_t stop_at = 0;           // stop after this step (writes the checkpoint, not `out`)
  bool grad_checkpoint = false;  // recompute each layer's activations in backward (less memory)
  bool progress = true;
  bool force = false;  // replace an existing output folder
  // The device the student trains on (kernels/train_ops.h; null: the CPU). `distill --backend cuda`
  // sets make_train_ops("cuda"). The teacher runs on the CPU backend either way. QAT, LoRA and
  // low-rank students train on the CPU only (NotImplemented otherwise); GPT-2 and BERT students
  // too.
  std::shared_ptr<TrainOps> ops;

  // Data parallelism (not owned; null = one process). Each global micro-batch of `batch`
  // sequences is split across the ranks (row_share: contiguous, in rank order, so the data order
  // is the single-process one); each rank runs the teacher and the student on its share, the
  // gradients are summed over ranks (each rank's loss gradient is pre-scaled by its share of the
  // global rows, so the sum is the global mean) and every rank takes the same optimizer step.
  // Rank 0 alone evaluates and writes `out`, the log and checkpoints. Needs batch >= ranks.
  Comm* comm = nullptr;
  // ---- QAT, LoRA / QLoRA, data-free data (train/qat.h, train/lora.h) ----
  // --qat int8 | int8-gG | int4[-gG] | ternary: fake-quantize every block projection; the output
  // is a compressed folder in that Quantized format. qat_lsq: learned step sizes (LSQ).
  std::string qat;
  bool qat_lsq = false;
  // LoRA (rank > 0): adapters over the frozen student base (any format: NF4 gives QLoRA), on
  // the student architecture's targets (train/lora.h: lora_module; none given: its default).
  // Output: lora.merge: one f32 model folder with α/r·B·A merged; else the base in f32 with
  // adapter_model.safetensors + adapter_config.json (PEFT layout) beside it.
  LoraSpec lora;
  // Data-free distillation (LLM-QAT, Liu et al. 2023, arXiv 2305.17888): the teacher samples
  // `generate` sequences of seq + 1 tokens from BOS (temperature, top-k, seed gen_seed), added to
  // the training windows.
  int64_t generate = 0;
  float gen_temperature = 1.f;
  int gen_top_k = 0;
  uint64_t gen_seed = 0;
  // Gradual pruning during training (--prune-schedule magnitude|wanda --prune-to S ...;
  // train/prune_schedule.h): every block projection's sparsity follows Zhu & Gupta's cubic
  // schedule, masks fixed between updates. Plain f32 students only (not with QAT, LoRA or a
  // low-rank student); Wanda's statistics need the kept activations (not --grad-checkpoint).
  PruneSchedule prune;
};

struct DistillStep {
  int64_t step = 0;
  double lr = 0, loss = 0, kd = 0, ce = 0, grad_norm = 0;
  double tokens_per_s = 0;  // training tokens per second of this step (teacher + student)
  double sparsity = -1;     // with a prune schedule: zero fraction of the block projections
};

struct DistillEval {
  int64_t step = 0;
  double ppl = 0, nll = 0;  // causal students: held-out next-token perplexity, mean NLL
  int64_t tokens = 0;
  // Encoder students: the mean cosine similarity of the student's and the teacher's pooled
  // sentence embeddings and the embedding MSE over the held-out lines (ppl, nll stay 0).
  double cos = 0, mse = 0;
};

struct DistillResult {
  std::vector<DistillStep> steps;
  std::vector<DistillEval> evals;
  int64_t steps_done = 0;
  bool finished = false;                // false when stopped by stop_at
  double teacher_s = 0, student_s = 0;  // wall time in teacher forwards / student fwd+bwd+update
  int64_t train_tokens = 0;             // tokens the student trained on in this run
  size_t activation_bytes = 0;          // the student's activation buffers
  int ranks = 1;                        // data-parallel ranks (opt.comm->size())
  nlohmann::json log;                   // what training_log.json holds
};

// The student's config and initial weights for opt.student given the teacher. Throws for a
// malformed spec, a layer index outside the teacher, a vocabulary that differs from the teacher's,
// a teacher that is not causal.
std::unique_ptr<TrainLlama> make_student(const DistillOptions& opt, Model& teacher);

// Any student: opt.student "init" / "init:layers=..." gives the teacher's architecture (llama
// through make_student, gpt2 as TrainGpt2, bert as TrainBert, the kept blocks' weights copied);
// a config.json or folder gives its own (random init without model.safetensors, seed opt.seed);
// a compressed folder goes to make_student. Throws when the student is an encoder and the
// teacher causal or the reverse, or when the vocabularies differ.
std::unique_ptr<Student> build_student(const DistillOptions& opt, Model& teacher);

// Encoder distillation (BERT teacher, BERT student of the same width): the student learns to
// reproduce the teacher's sentence embedding, loss = MSE(pool(student), pool(teacher)) averaged
// over the B·C values of a micro-batch (torch.nn.MSELoss), as sentence-transformers' MSELoss
// (Reimers & Gurevych 2020, "Making Monolingual Sentence Embeddings Multilingual using Knowledge
// Distillation", arXiv 2004.09813). Pooling: the teacher folder's (opt.teacher_path; mean or
// CLS), before normalisation. α and τ are checked as for causal students but do not enter the
// loss (the fixtures and MiniLM have no MLM head to distil logits from). Data: one sequence per
// text line (train_seqs, each already tokenized with the special tokens; longer than opt.seq:
// the first seq − 1 tokens and the last), visited in the seeded window order; a micro-batch of B
// lines is padded to its longest, with an attention mask. Evaluation: mean cosine and MSE
// against the teacher over eval_seqs (at most eval_tokens tokens), every
// eval_every steps (and at step 0 of a fresh run when eval_every > 0) and at the end. Checkpoints
// and resume as distill(); QAT and LoRA (opt.qat, opt.lora) as for causal students. Not with
// pruning schedules, --generate, MPI or a device: NotImplemented. Throws
// (writing nothing) for a causal teacher or student, different vocabularies or widths, α outside
// [0, 1], τ ≤ 0, no training line.
DistillResult distill_encoder(Model& teacher, const Tokenizer* tok,
                              const std::vector<std::vector<int32_t>>& train_seqs,
                              const std::string& data_desc,
                              const std::vector<std::vector<int32_t>>& eval_seqs,
                              const DistillOptions& opt, const std::string& out);

// One micro-batch of the encoder loss: the student's forward over B padded sequences of T tokens
// (ids, mask [B*T]), pooled (mean over the mask, or token 0 when cls), MSE against the teacher's
// pooled embeddings target [B, C] (mean over the B·C values); with backward, its gradient times
// `scale` is accumulated into st's gradients. Returns the MSE.
double embedding_mse_step(TrainBert& st, const int32_t* ids, const int32_t* mask, int64_t B,
                          int64_t T, const float* target, bool cls, float scale, bool backward);

// The non-blank lines of text files (trimmed), each tokenized with the special tokens ([CLS] …
// [SEP]), lowercased first when lower, truncated to max_len tokens keeping the last special
// token (HF truncation). Throws naming a file that cannot be read.
std::vector<std::vector<int32_t>> tokenize_lines(const Tokenizer& tok,
                                                 const std::vector<std::string>& files, bool lower,
                                                 int64_t max_len);

// Runs the distillation on token streams: train_ids (the training text, each window of L + 1
// tokens gives L inputs and their next tokens) and eval_ids (held-out, may be empty). Validates
// everything first (α in [0, 1], τ > 0, sizes, a causal teacher, equal vocabularies, enough
// tokens for one sequence: data_desc names the data in that message) and writes `out`
// (config.json, model.safetensors, tokenizer files when tok is given, training_log.json) only
// at the end, through a temporary folder. out == "" writes nothing.
DistillResult distill(Model& teacher, const Tokenizer* tok, const std::vector<int32_t>& train_ids,
                      const std::string& data_desc, const std::vector<int32_t>& eval_ids,
                      const DistillOptions& opt, const std::string& out);

// The teacher's samples for --generate: n sequences of len tokens, each starting at the
// tokenizer's BOS (bos; the config's when -1), sampled with temperature / top-k (engine/sampler.h)
// from `seed`; progress on stderr. Throws for an encoder teacher or a teacher without BOS.
std::vector<std::vector<int32_t>> generate_sequences(Model& teacher, int32_t bos, int64_t n,
                                                     int64_t len, float temperature, int top_k,
                                                     uint64_t seed, bool progress);

// Writes the trained student (any architecture) as `out`: a model folder (config_json(),
// model.safetensors in f32, tokenizer files when tok is given, an encoder's sentence-transformers
// files from opt.teacher_path, training_log.json = log); with LoRA the base in f32 and either the
// adapters merged (opt.lora.merge) or adapter_model.safetensors + adapter_config.json beside it
// (PEFT layout); with QAT a compressed folder whose block projections are the trained Quantized
// matrices (Projections::qat_linears) and whose other weights are f32. Written through
// temporary folders; throws (leaving nothing) when `out` exists and opt.force is off.
void save_student(Student& student, Model& teacher, const Tokenizer* tok, const DistillOptions& opt,
                  const std::string& out, const nlohmann::json& log);

// Reads and tokenizes text files (each encoded with the tokenizer's special tokens) into one
// stream. Throws naming a file that cannot be read.
std::vector<int32_t> tokenize_files(const Tokenizer& tok, const std::vector<std::string>& files);

// Mean next-token cross-entropy of the student over non-overlapping windows of `seq` tokens of
// ids (at most max_tokens of them), batched by `batch`; ppl = exp(nll).
DistillEval evaluate(Student& student, const std::vector<int32_t>& ids, int64_t seq, int64_t batch,
                     int64_t max_tokens);

}  // namespace minfer::train
