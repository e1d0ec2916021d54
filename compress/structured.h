// Structured pruning: whole attention heads, FFN neurons or transformer blocks removed, giving a
// smaller dense model (per-layer head / FFN counts in ModelConfig, written to config.json).
//
// Methods (registered in compress/methods.h as MethodKind::Structured, run before the per-Linear
// steps of a chain, e.g. "ffn-20+nf4"):
//   heads-<pct>   remove round(H * pct / 100) query heads per layer. Score of head h (Wanda-sp,
//                 the structured Wanda baseline of An et al. 2024, "Fluctuation-based Adaptive
//                 Structured Pruning for LLMs" (FLAP), from Sun et al. 2023 "Wanda"):
//                   S_h = sum_{j in columns of head h} ||X_j||_2 * sum_i |W_o[i, j]|
//                 with X the input of the attention output projection over the calibration
//                 tokens. With GQA the kept heads keep one group size (the attention kernels map
//                 query head h to KV head h / (H / Hkv)): the engine keeps G' KV groups of g'
//                 query heads each, the (G', g') whose removed count is nearest the asked one
//                 (ties: fewer removed), and within it the heads with the highest scores; a KV
//                 head goes only when its whole group goes.
//   ffn-<pct>     remove round(F * pct / 100) FFN neurons per layer: rows of gate/up (c_fc,
//                 intermediate.dense) and the matching columns of down (mlp.c_proj,
//                 output.dense). Score S_j = ||X_j||_2 * sum_i |W_down[i, j]| (Wanda-sp).
//   layers-<n>    drop n whole blocks: the n whose removal alone changes the calibration output
//                 least (one-shot, Kim et al. 2024 "Shortened LLaMA", perplexity criterion):
//                 causal LMs: mean NLL of the calibration windows; encoders: 1 - cosine between
//                 the mean-pooled last hidden states with and without the block.
// Calibration text: WikiText-2 *validation* (the test split is what perplexity reports).
#pragma once
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "compress/compress.h"
#include "engine/config.h"

namespace minfer {

class Model;

// Per-input-feature sums of squares of every Linear's input over a calibration pass:
// ||X_j||_2^2 = sum over calibration tokens t of x_tj^2, keyed by the Linear's name ([in] each).
struct FeatureNorms {
  std::map<std::string, std::vector<double>> sq;
  int64_t tokens = 0;
};

// Runs `samples` windows of `seq_len` tokens spread evenly over `ids` (a causal LM: forward; an
// encoder: encode, one sequence per window, seq_len capped at its positions) and records
// FeatureNorms. Throws when `ids` holds fewer than one window.
FeatureNorms calibrate_feature_norms(Model& m, const std::vector<int32_t>& ids, int samples,
                                     int64_t seq_len, bool progress = false);

// What a structured pruning keeps, in indices of the model it is applied to (ascending).
struct StructuredPlan {
  std::vector<int64_t> layers;              // kept blocks
  std::vector<std::vector<int64_t>> heads;  // [L] kept query heads of every block (all blocks)
  std::vector<std::vector<int64_t>> ffn;    // [L] kept FFN neurons of every block
};

// The plan that keeps everything of `cfg`.
StructuredPlan full_plan(const ModelConfig& cfg);

// The plan of one structured step (heads / ffn / layers with its amount) for `m`. heads and ffn
// read `norms` (calibrate_feature_norms on m); layers runs m without each block on `calib_ids`
// (the same windows). Throws for an amount that removes every head / neuron / block of a layer
// or model, and for a step that is not structured.
StructuredPlan plan_structured_step(Model& m, const MethodSpec& step, const FeatureNorms& norms,
                                    const std::vector<int32_t>& calib_ids, int samples,
                                    int64_t seq_len, bool progress = false);

// A new dense model on m's backend with only what `plan` keeps: every Linear dequantized to f32
// and sliced, blocks renumbered, the config's per-layer counts (and for gpt2 / bert Hugging
// Face's "pruned_heads", in original head indices) updated, and config.json text rewritten
// (standard fields carry the counts when every layer is the same). Embedding and norm tensors
// are shared with m (views over reference-counted storage: m may be destroyed first).
// Throws naming the layer for a plan that does not fit the model (out-of-range or unsorted
// indices, no head or neuron left, GQA groups left with different sizes).
std::unique_ptr<Model> apply_structured_plan(Model& m, const StructuredPlan& plan);

// Runs the structured steps of `spec` in order, each calibrated on the previous one's output
// over windows of `calib_ids`. Returns the pruned model, or nullptr when the chain has no
// structured step.
std::unique_ptr<Model> prune_structured(Model& m, const CompressSpec& spec,
                                        const std::vector<int32_t>& calib_ids, int samples,
                                        int64_t seq_len, bool progress = false);

// True when some step of the chain is a structured (whole-model) step.
bool has_structured_steps(const CompressSpec& spec);

}  // namespace minfer
