// Whole-model compression: choose a format for every weight, turn each Linear into that format
// (a chain of registered methods, compress/methods.h, applied left to right), and save the result
// as a compressed model folder (layout: engine/compressed_folder.h, which also reads it back).
// Everything is written to a temporary sibling folder and renamed over DIR at the end.
#pragma once
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "compress/methods.h"
#include "engine/compressed_folder.h"

namespace minfer {

class Model;
class Tokenizer;

// A whole-model compression: a chain of method steps plus per-tensor choices.
struct CompressSpec {
  std::vector<MethodSpec> steps{MethodSpec{}};  // applied left to right to every block Linear
  // Overrides: glob pattern on the HF weight name ("*.mlp.down_proj.weight", "lm_head.weight")
  // -> a chain of steps (any method name, e.g. "int4-g64" or "fp16"). First match wins.
  std::vector<std::pair<std::string, std::string>> keep;
  // Token embedding table (and other embedding tables): f32 | fp16 | bf16. "" = default:
  // fp16, or bf16 / f32 when the chain ends in that.
  std::string embed_format;
  // LM head (tied to the embedding in SmolLM2): "" = default: int8 per channel when the chain
  // ends in an integer method (what llama.cpp's Q8_0 / bitsandbytes users keep at >= 8 bits),
  // the chain's own float format otherwise. A head stored differently from the embedding is
  // untied on save.
  std::string head_format;

  // How pruned weights are stored: Auto = the measured decode crossovers (sparse24_storage_wins,
  // sparse_csr_storage_wins, sparse_storage_wins, in that order), Sparse = a sparse format
  // whenever its value format is supported (smaller files, compressed-tensors layout): Sparse24
  // (2-bit indices) after a 2:4 step, SparseBitmask otherwise; Bitmask = SparseBitmask always;
  // Csr = SparseCsr always (an error for more than 65536 inputs; on disk the bitmask layout);
  // Dense = the dense result of the chain (zeros stored). A value format the sparse formats do not
  // hold (int4, nf4, ...) is stored dense whatever is asked.
  enum class SparseStorage : uint8_t {
    Auto,
    Sparse,
    Bitmask,
    Csr,
    Dense
  } sparse_storage = SparseStorage::Auto;

  // The step that decides the stored format (the last one).
  const MethodSpec& last() const { return steps.back(); }
  MethodSpec& last() { return steps.back(); }
  bool uses_calibration() const;   // some step reads calibration statistics
  bool needs_calibration() const;  // some step cannot run without them
  bool needs_gram() const;         // some step reads ActStats::gram (calibrate with_gram)
};

// A chain of steps "a+b+c" (compress/methods.h grammar), e.g. "int4-g64", "nf4-dq",
// "w8a8-static". Throws naming the step for anything else.
CompressSpec compress_spec_from_name(const std::string& name);
// Throws for an unknown method, an option the method does not have, a chain whose steps cannot
// follow each other, or a bad override.
void validate_compress_spec(const CompressSpec& spec);
// The canonical name of a spec's chain (inverse of the above), e.g. "nf4-g64-dq".
std::string compress_spec_name(const CompressSpec& spec);

// XᵀX over every calibration token x (a row [in]) a Linear reads: [in, in] f32, symmetric,
// accumulated with BLAS ssyrk per forward call. The Hessian of the layer-wise output error
// (SVD-LLM whitening, GPTQ).
struct GramMatrix {
  int64_t n = 0;           // input features
  std::vector<float> xtx;  // [n, n] row-major
};

// Per-Linear activation statistics from a calibration pass, keyed by the Linear's name:
//   absmax: max |x| per input feature over all calibration tokens.
//   sumsq:  the sum of x² per input feature (||X_j||_2² for Wanda).
//   sumabs: the sum of |x| per input feature (AWQ's mean |x| = sumabs / tokens).
//   gram:   only with calibrate(..., with_gram = true). Linears that read the same input in a
//           row (q/k/v, gate/up) share one matrix. f32: 4 in² bytes per distinct input, e.g.
//           SmolLM2-135M: 30 layers x (3 x 576² + 1536²) x 4 B = 402 MB.
struct ActStats {
  std::map<std::string, std::vector<float>> absmax;
  std::map<std::string, std::vector<double>> sumsq;
  std::map<std::string, std::vector<double>> sumabs;  // Σ |x| per input feature (AWQ's mean|x|)
  std::map<std::string, std::shared_ptr<GramMatrix>> gram;
  int64_t tokens = 0;
};

// Runs the (uncompressed) causal LM over `samples` windows of `seq_len` tokens taken evenly from
// `ids` and records ActStats for every Linear (the Gram matrices only when `with_gram`).
// Encoders: calibrate_encoder below.
// `only_prefix`: record only the Linears whose name starts with it (e.g. "model.layers.3."),
// "" = all.
ActStats calibrate(Model& m, const std::vector<int32_t>& ids, int samples, int64_t seq_len,
                   bool progress = true, bool with_gram = false,
                   const std::string& only_prefix = "");

// Encoder (BERT) calibration: runs each sequence alone through Model::encode (B = 1, so no padding
// row is ever observed) and records the same ActStats. `seqs`: token ids with the special tokens,
// e.g. from encoder_calibration_sequences (models/eval.h). Throws for a causal LM (use
// calibrate), an empty list, an empty sequence or one longer than the model's positions.
ActStats calibrate_encoder(Model& m, const std::vector<std::vector<int32_t>>& seqs,
                           bool progress = true, bool with_gram = false);

struct TensorReport {
  std::string name;
  std::string format;  // e.g. "int4-g128", "fp16", "nf4-g64-dq"
  int64_t params = 0;
  size_t bytes = 0;
  double rel_err = 0;  // ||W - Ŵ||_F / ||W||_F (0 for lossless)
};

struct CompressReport {
  size_t bytes_before = 0;     // every weight of the model before (as loaded, f32 for GGUF)
  size_t bytes_after = 0;      // every weight after (linears, embeddings, norms, biases)
  int64_t params = 0;          // parameters counted once (tied weights once)
  double bits_per_weight = 0;  // bytes_after * 8 / params
  double linear_bpw = 0;       // over the transformer-block linears only (no embeddings / head)
  int smooth_sites = 0;        // channel-scaling folds done (SmoothQuant / AWQ, dataaware.h)
  double smooth_seconds = 0;   // time the channel-scale search took
  std::map<std::string, double> smooth_alpha;  // consumer -> α used (-1: s = 1, no migration)
  double sequential_seconds = 0;  // GPTQ -seq: the per-block calibration passes together
  std::vector<TensorReport> tensors;
};

// One Linear through the chain (a step at a time, left to right). `stats` as for compress_model.
// Throws naming the tensor and the step when a step cannot take the weight it is given.
// After prune steps (magnitude, wanda) the storage is chosen here: the sparse bitmask format
// (engine/formats/sparse.h) with the rest of the chain applied to its packed values, or the
// dense result of the chain, whichever decodes faster at the matrix's sparsity
// (sparse_storage_wins).
Linear compress_linear(const Linear& l, const CompressSpec& spec, const ActStats* stats = nullptr);

// The measured decode crossover (docs/pruning.md, bench/sparse_crossover): true when a matrix
// with this share of zero weights decodes faster as SparseBitmask with `value_format` values
// ("f32", "int8", ...) than dense in the same format. Value formats without a fast sparse kernel
// never win.
bool sparse_storage_wins(double sparsity, const std::string& value_format);
// The measured decode crossover of the 2:4 format (Sparse24, 2-bit indices) against dense at the
// same value format, for weights pruned 2:4 (docs/pruning.md, bench/bench_sparse.cpp 2:4 rows).
bool sparse24_storage_wins(const std::string& value_format);
// The measured decode crossover of SparseCsr (16-bit columns) against dense at the same value
// format (docs/pruning.md, `bench_sparse THREADS csr`): true when a matrix with this share of
// zero weights (counted over the padded [N, Kv] layout) decodes faster as CSR.
bool sparse_csr_storage_wins(double sparsity, const std::string& value_format);
// The storage name of the --sparse-storage option ("auto", "sparse", "bitmask", "csr", "dense");
// anything else is an error naming the option and the choices.
CompressSpec::SparseStorage sparse_storage_from_name(const std::string& name);
// True for the value formats SparseBitmask holds: "f32", "fp16", "bf16", "int8", "int8-tensor".
bool sparse_value_format(const std::string& value_format);

// The calibration windows again, for GPTQ's true-sequential option (-seq): before the Linears
// of transformer block i are quantized, the windows (the same ones `calibrate` took) run through
// the model as it is then, blocks 0..i-1 already quantized, and block i's XᵀX come from that
// pass (Frantar et al. 2022, §"true-sequential"; AutoGPTQ's true_sequential at the block level).
// The passes see the model as it will run: the embedding table already in its stored format
// (fp16 by default). Deterministic: the same windows every time. Cost: the windows' residual
// streams are kept between blocks ([seq_len, C] f32 per window), so about two forward passes of
// the windows in all, on top of the first calibration.
struct SequentialCalibration {
  const std::vector<int32_t>* ids = nullptr;  // the calibration text's token ids
  int samples = 0;                            // windows, as calibrate
  int64_t seq_len = 0;                        // tokens per window
};

// Converts the model's weights in place (Linears and embedding tables) according to `spec`.
// `stats` is required for w8a8 with static_act and lowrank-aw (with Gram matrices, from at least
// `in` calibration tokens per Linear, else XᵀX is singular) and used by llm-int8 when given
// (features whose calibration |x| reaches the threshold keep their W columns in f16). Validates the
// whole spec (method names, overrides, groups) before changing anything.
// `seq`: the calibration windows, required when a step is a GPTQ with -seq (else an error).
CompressReport compress_model(Model& m, const CompressSpec& spec, const ActStats* stats = nullptr,
                              bool progress = true, const SequentialCalibration* seq = nullptr);

// Writes the model (as it is now: any mix of representations) as a compressed folder; the
// tokenizer is written too when given. `spec` is recorded in the quantization section.
// source_dir: the folder the model came from; its sentence-transformers files (modules.json,
// sentence_bert_config.json, pooling config) are copied so the copy embeds the same way.
void save_compressed(Model& m, const Tokenizer* tok, const std::string& out_dir,
                     const CompressSpec& spec, bool force = false,
                     const std::string& source_dir = "");

}  // namespace minfer
