// Typed model configuration, read from a Hugging Face config.json (or filled from GGUF metadata).
// Architecture variants are fields, not subclasses.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace minfer {

enum class Arch { GPT2, Llama, Bert };
enum class Act { GeluErf, GeluTanh, Silu };
enum class Norm { LayerNorm, RmsNorm };
// RoPE frequency scaling (transformers' modeling_rope_utils "rope_type"; GGUF rope.scaling.type).
enum class RopeType { Default, Linear, Llama3, Yarn };

std::string_view rope_type_name(RopeType t);

// How the rotary frequencies are scaled for a context longer than pre-training. The fields a
// type does not use keep their defaults. engine/rope.h turns this into one table per model.
struct RopeScaling {
  RopeType type = RopeType::Default;
  double factor = 1.0;            // linear, llama3, yarn: context extension factor s
  int64_t original_max_pos = 0;   // llama3, yarn: pre-training context length
  double low_freq_factor = 1.0;   // llama3 (Llama 3.1: 1)
  double high_freq_factor = 4.0;  // llama3 (Llama 3.1: 4)
  double beta_fast = 32.0;        // yarn: rotations bounding extrapolation (paper: α=1, β=32)
  double beta_slow = 1.0;         // yarn: rotations bounding interpolation
  double attention_factor = 0.0;  // yarn: cos/sin multiplier; 0 = 0.1 ln(s) + 1 (or mscale)
  double mscale = 0.0;            // yarn (DeepSeek): with mscale_all_dim, the ratio form
  double mscale_all_dim = 0.0;
  bool truncate = true;  // yarn: floor/ceil the correction range
  // GGUF `rope_freqs.weight` (llama.cpp's form of Llama-3.1 scaling): inv_freq[i] /= factors[i].
  std::vector<float> freq_factors;  // [D/2] or empty
};

std::string_view arch_name(Arch a);

struct ModelConfig {
  Arch arch = Arch::Llama;
  std::string model_type;  // as written in config.json
  int64_t vocab_size = 0;  // V
  int64_t hidden = 0;      // C
  int64_t n_layers = 0;    // L
  int64_t n_heads = 0;     // H
  int64_t n_kv_heads = 0;  // Hkv (== H without GQA)
  int64_t head_dim = 0;    // D
  int64_t ffn = 0;         // F
  int64_t max_pos = 0;     // context length the model was trained for
  Act act = Act::Silu;
  Norm norm = Norm::RmsNorm;
  float norm_eps = 1e-5f;
  float rope_theta = 10000.f;
  RopeScaling rope_scaling;
  bool tie_embeddings = false;
  bool attn_bias = false;  // bias on q/k/v (and o for gpt2/bert)
  bool mlp_bias = false;
  int64_t type_vocab = 0;  // BERT token types
  int64_t bos_id = -1, eos_id = -1, pad_id = -1;
  // Gemma family (config.json model_type gemma / gemma2, GGUF gemma / gemma2). Defaults: LLaMA.
  bool norm_unit_offset = false;  // RMSNorm scales by (1 + w) (GemmaRMSNorm); w as HF stores it
  bool embed_scale = false;       // embeddings x sqrt(C), rounded to f32 (Gemma's normalizer)
  bool sandwich_norms = false;    // Gemma-2: norms after attention and around the FFN
  float attn_softcap = 0.f;       // Gemma-2: scores -> cap tanh(scores / cap); 0 = none
  float final_softcap = 0.f;      // Gemma-2: logits -> cap tanh(logits / cap); 0 = none
  float attn_scale = 0.f;  // query scaling; 0 = 1/sqrt(D) (Gemma-2: query_pre_attn_scalar^-½)
  // Sliding-window attention on some layers (Gemma-2: layer_types): a query at position i sees
  // keys j with i - j < sliding_window on the layers marked in layer_sliding ([L] or empty).
  int64_t sliding_window = 0;
  std::vector<bool> layer_sliding;
  std::string source_json;  // the config.json text this was read from ("" when from GGUF)

  // Per-layer sizes of a structurally pruned model (compress/structured.h); empty = every layer
  // has n_heads / n_kv_heads / ffn. n_heads, n_kv_heads and ffn bound every layer's value (run
  // buffers are sized by them); head_dim D is the same in every layer.
  // config.json: "num_attention_heads_per_layer", "num_key_value_heads_per_layer" (llama),
  // "intermediate_size_per_layer".
  std::vector<int64_t> layer_heads;     // [L] H_l
  std::vector<int64_t> layer_kv_heads;  // [L] Hkv_l
  std::vector<int64_t> layer_ffn;       // [L] F_l
  // gpt2 / bert: for each layer, the original indices of the heads removed from it, as Hugging
  // Face's "pruned_heads" (PreTrainedModel.prune_heads) records them; n_heads stays the original
  // count (D = C / n_heads). Empty = none.
  std::vector<std::vector<int64_t>> pruned_heads;  // [L][removed]

  bool causal() const { return arch != Arch::Bert; }
  int64_t heads_at(int64_t l) const {
    return layer_heads.empty() ? n_heads : layer_heads[size_t(l)];
  }
  int64_t kv_heads_at(int64_t l) const {
    return layer_kv_heads.empty() ? n_kv_heads : layer_kv_heads[size_t(l)];
  }
  int64_t ffn_at(int64_t l) const { return layer_ffn.empty() ? ffn : layer_ffn[size_t(l)]; }
  // The attention window of layer l (0 = full causal attention).
  int64_t window_at(int64_t l) const {
    return !layer_sliding.empty() && layer_sliding[size_t(l)] ? sliding_window : 0;
  }
};

// Upper bounds on a model's sizes, far above any released model, so that every product of them
// (vocab x hidden, layers x heads x head_dim x positions, ...) fits in int64 and a size read from a
// file can never drive a huge allocation by itself. Token ids are int32.
struct ModelDims {
  int64_t vocab = (int64_t(1) << 31) - 1;
  int64_t hidden = int64_t(1) << 20;
  int64_t layers = int64_t(1) << 12;
  int64_t heads = int64_t(1) << 12;
  int64_t head_dim = int64_t(1) << 12;
  int64_t ffn = int64_t(1) << 22;
  int64_t positions = int64_t(1) << 24;
};
inline constexpr ModelDims kMaxModelDims{};

// Checks a config however it was read (config.json, GGUF metadata): every size in
// [1, kMaxModelDims], kv heads dividing heads, special-token ids in [-1, vocab), epsilon and
// rope_theta positive and finite. Throws naming `origin` and the field.
void validate_config(const ModelConfig& c, const std::string& origin);

// Reads and validates config.json. Unknown model_type or a missing/mistyped field throws naming
// the file and the field.
ModelConfig load_config(const std::string& path);
// The same from config.json's text; `origin` names it in messages.
ModelConfig parse_config(const std::string& text, const std::string& origin);

}  // namespace minfer
