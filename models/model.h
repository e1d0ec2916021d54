// A model: config -> weights by name -> forward as a straight list of Backend ops.
// Causal LMs (gpt2, llama) run `forward` over a KV cache; encoders (bert) run `encode`.
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "engine/backend.h"
#include "engine/config.h"
#include "engine/weights.h"

namespace minfer {

// Everything one sequence (or one encoder batch) needs while running: the KV cache and every
// activation buffer, allocated once by Model::new_state. Nothing is allocated inside forward.
struct RunState {
  int64_t n_past = 0;      // tokens already in the KV cache
  int64_t max_ctx = 0;     // KV cache capacity (positions)
  int64_t max_tokens = 0;  // rows one forward call may process (B*T for encoders)
  // [L] x [max_ctx, Hkv*D], or [L] x [Hkv, max_ctx, D] where Backend::kv_cache_head_major()
  std::vector<Tensor> k_cache, v_cache;
  Tensor x;                  // [max_tokens, C] residual stream
  Tensor xn;                 // [max_tokens, C] normed input of a sub-layer
  Tensor qkv;                // [max_tokens, (H + 2 Hkv) D] q | k | v
  Tensor att;                // [max_tokens, H*D] attention output
  Tensor proj;               // [max_tokens, C] output projections
  Tensor ff_a;               // [max_tokens, F]
  Tensor ff_b;               // [max_tokens, F]
  Tensor logits;             // [logit_rows, V] (causal LMs)
  std::vector<int32_t> ids;  // positions / token types scratch, [max_tokens]
  // A partial run of a causal LM (block-by-block calibration, compress's GPTQ -seq): only blocks
  // [layer_begin, layer_end) run (layer_end < 0: to the last). layer_begin > 0 starts from the
  // residual stream the caller left in x (rows 0..T) instead of the embedding; layer_end before
  // the last block leaves the residual stream after block layer_end - 1 in x and returns an
  // undefined Tensor (no logits). Only the KV caches of the blocks that ran are written.
  int64_t layer_begin = 0, layer_end = -1;

  void reset() { n_past = 0; }
};

// Positions [p0, p0 + n) of one layer's KV cache as the Backend's copy / rope_kv / attention take
// them: rows of a [max_ctx, Hkv*D] cache, or [Hkv, n, D] of a head-major [Hkv, max_ctx, D] one.
inline Tensor kv_positions(const Tensor& cache, int64_t p0, int64_t n) {
  return cache.slice(cache.ndim() - 2, p0, n);
}

class Model {
 public:
  virtual ~Model() = default;
  const ModelConfig& config() const { return cfg_; }
  Backend& backend() const { return *be_; }

  // max_ctx: KV positions; max_tokens: rows per call (prefill chunk, or B*T for encoders);
  // logit_rows: rows of logits one call may return (-1 = max_tokens; 1 is enough when only the
  // last token's logits are asked for, and saves max_tokens x V floats).
  RunState new_state(int64_t max_ctx, int64_t max_tokens, int64_t logit_rows = -1) const;

  // Element type of the KV caches new_state allocates: F32 (default) or F16 (half the memory and
  // the bytes a decode step reads from the cache, as llama.cpp's default f16 cache; keys and
  // values rounded to fp16 when written). F16 needs Backend::kv_cache_f16(): new_state throws
  // "not implemented" otherwise. Other dtypes throw.
  void set_kv_cache_dtype(DType t);
  DType kv_cache_dtype() const { return kv_dtype_; }

  // Causal LM: runs T new tokens at positions n_past.. and appends them to the KV cache.
  // Returns logits [T, V] (all_logits) or [1, V] for the last token, valid until the next call.
  virtual Tensor forward(RunState& s, const int32_t* ids, int64_t T, bool all_logits);
  // Encoder: B sequences of T tokens (padded), mask [B, T] (1 = token, 0 = padding; nullptr = no
  // padding), token types [B, T] (nullptr = zeros). Returns last hidden states [B*T, C].
  virtual Tensor encode(RunState& s, const int32_t* ids, int64_t B, int64_t T,
                        const int32_t* mask = nullptr, const int32_t* type_ids = nullptr);

  // Every projection, for compression transforms and size accounting.
  virtual std::vector<Linear*> linears() = 0;
  // Every other weight by its HF name (embedding tables, position embeddings, norms); biases
  // belong to their Linear. `embedding` marks lookup tables (compression may change their dtype).
  struct NamedTensor {
    std::string name;
    Tensor* t;
    bool embedding = false;
  };
  virtual std::vector<NamedTensor> tensors() = 0;
  // Lookup tables held as a Linear in a non-float format (a GGUF token_embd run in its block
  // format): not in tensors(), not a projection. Training and size accounting read them here.
  virtual std::vector<Linear*> tables() { return {}; }
  // Bytes of all weights (projections with biases, embeddings, norms); a head tied to the
  // embedding table is counted once.
  size_t weight_bytes() const;

  // Set by compress/rotate.h's rotate_model: the weights hold an orthogonal change of basis, so a
  // chain with a rotate step may be compressed (and calibrated) on this model.
  bool rotated() const { return rotated_; }
  void set_rotated() { rotated_ = true; }

 protected:
  Model(ModelConfig cfg, Backend& be) : cfg_(std::move(cfg)), be_(&be) {}
  ModelConfig cfg_;
  Backend* be_;
  bool rotated_ = false;
  DType kv_dtype_ = DType::F32;
};

// A contiguous [rows, cols] view at the start of a run-state buffer: a layer narrower than the
// widest (a structurally pruned model's H_l * D or F_l) uses the front of the shared buffer.
inline Tensor leading_view(const Tensor& buf, int64_t rows, int64_t cols) {
  MINFER_CHECK(buf.is_contiguous() && rows * cols <= buf.numel(),
               "leading_view: [{}, {}] does not fit in buffer {}", rows, cols, buf.shape_str());
  return Tensor(buf.storage(), buf.offset(), buf.dtype(), {rows, cols});
}

// Builds the model for cfg.arch from a weight source on a backend (weights uploaded once).
std::unique_ptr<Model> build_model(const ModelConfig& cfg, const WeightSource& src, Backend& be);

// Loads a model from a Hugging Face-style folder (config.json + *.safetensors).
std::unique_ptr<Model> load_model(const std::string& path, Backend& be);

// Per-architecture constructors (models/gpt2.cpp, llama.cpp, bert.cpp).
std::unique_ptr<Model> make_gpt2(const ModelConfig& cfg, const WeightSource& src, Backend& be);
std::unique_ptr<Model> make_llama(const ModelConfig& cfg, const WeightSource& src, Backend& be);
std::unique_ptr<Model> make_bert(const ModelConfig& cfg, const WeightSource& src, Backend& be);

}  // namespace minfer
