// Whole-model compression: choose a format for every weight, turn each Linear into that format,
// and save / load the result as a compressed model folder.
//
// Folder layout (what `compress --out DIR` writes and open_model reads back):
//   config.json        the model's Hugging Face config plus a "quantization" section:
//                      {"format": "minfer", "version": 1, "method": ..., "options": {...},
//                       "tensors": {"<HF weight name>": {"repr": "dense" | "quantized" |
//                                   "llm-int8" | "w8a8", ...how to read it...}}}
//   model.safetensors  dense tensors under their HF names; a compressed Linear `<name>` as
//                      `<name>.codes` (U8), `<name>.scales` (F32), `<name>.zeros` (U8),
//                      `<name>.scale_codes` (I8), `<name>.scale_scales` (F32),
//                      `<name>.outlier_cols` (I32), `<name>.outlier_w` (F16) as the repr needs.
//   tokenizer.json, tokenizer_config.json, generation_config.json when known.
// Everything is written to a temporary sibling folder and renamed over DIR at the end.
#pragma once
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "engine/quantize.h"
#include "engine/weights.h"

namespace minfer {

class Model;
class Tokenizer;

// One compression method for a whole model.
struct CompressSpec {
  // f32 | fp16 | bf16 | int8 | int4 | nf4 | binary | ternary | llm-int8 | w8a8
  std::string method = "int8";
  QuantSpec quant;          // group / per_channel / asymmetric / double_quant / ternary_per_row
  float threshold = 6.f;    // llm-int8 outlier threshold on |x| (LLM.int8() paper default)
  bool static_act = false;  // w8a8: per-tensor activation scales from calibration (else dynamic)
  // Overrides: glob pattern on the HF weight name ("*.mlp.down_proj.weight", "lm_head.weight")
  // -> format (any method name above, or "int4-g64" style "<method>-g<group>"). First match wins.
  std::vector<std::pair<std::string, std::string>> keep;
  // Token embedding table (and other embedding tables): f32 | fp16 | bf16. "" = default:
  // fp16, or bf16 / f32 when the method itself is that.
  std::string embed_format;
  // LM head (tied to the embedding in SmolLM2): "" = default: int8 per channel for the integer
  // methods (what llama.cpp's Q8_0 / bitsandbytes users keep at >= 8 bits), the method's own
  // format for f32/fp16/bf16. A head stored differently from the embedding is untied on save.
  std::string head_format;
};

// A method name with options folded in, as `bench --methods` and `--keep` take them:
//   "<method>[-g<N>][-asym][-dq][-tensor][-row][-static]", e.g. "int4-g64", "int4-g128-asym",
//   "nf4-dq", "int8-tensor", "ternary-row", "w8a8-static", "llm-int8". Throws for anything else.
CompressSpec compress_spec_from_name(const std::string& name);
// Throws for an unknown method, an option the method does not have, or a bad override.
void validate_compress_spec(const CompressSpec& spec);
// The canonical short name of a spec (inverse of the above), e.g. "nf4-g64-dq".
std::string compress_spec_name(const CompressSpec& spec);

// Per-Linear activation statistics from a calibration pass: max |x| per input feature over all
// calibration tokens, keyed by the Linear's name.
struct ActStats {
  std::map<std::string, std::vector<float>> absmax;
  int64_t tokens = 0;
};

// Runs the (uncompressed) causal LM over `samples` windows of `seq_len` tokens taken evenly from
// `ids` and records ActStats for every Linear.
ActStats calibrate(Model& m, const std::vector<int32_t>& ids, int samples, int64_t seq_len,
                   bool progress = true);

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
  std::vector<TensorReport> tensors;
};

// Converts the model's weights in place (Linears and embedding tables) according to `spec`.
// `stats` is required for w8a8 with static_act and used by llm-int8 when given (features whose
// calibration |x| reaches the threshold keep their W columns in f16). Validates the whole spec
// (method names, overrides, groups) before changing anything.
CompressReport compress_model(Model& m, const CompressSpec& spec, const ActStats* stats = nullptr,
                              bool progress = true);

// Writes the model (as it is now: any mix of representations) as a compressed folder; the
// tokenizer is written too when given. `spec` is recorded in the quantization section.
void save_compressed(Model& m, const Tokenizer* tok, const std::string& out_dir,
                     const CompressSpec& spec, bool force = false);

// True when `dir` holds a config.json with a minfer "quantization" section.
bool is_compressed_folder(const std::string& dir);

// Reads a compressed folder: plain tensors as zero-copy views, each compressed Linear rebuilt from
// its stored tensors and the quantization section (validated: every listed tensor present with
// the right dtype and shape).
class CompressedSource : public WeightSource {
 public:
  explicit CompressedSource(const std::string& dir);
  bool has(const std::string& name) const override;
  Tensor tensor(const std::string& name, std::initializer_list<int64_t> shape) const override;
  Linear linear(const std::string& prefix, int64_t in, int64_t out, bool bias,
                bool transposed = false) const override;
  std::string describe() const override;
  const std::string& method() const { return method_; }

 private:
  std::string dir_, method_;
  WeightStore store_;
  std::map<std::string, std::string> info_;  // weight name -> its JSON entry (serialized)
};

}  // namespace minfer
