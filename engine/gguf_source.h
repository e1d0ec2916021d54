// Weights and config of a GGUF model (llama architecture), under Hugging Face names so the same
// models/llama code runs it. F32/F16/BF16 tensors are zero-copy views; block-quantized GGML types
// (Q4_0 ... Q6_K) become GgmlBlocks Linears viewing the file (GgufWeights::Native, the default)
// or are dequantized to f32 once at load (GgufWeights::F32). Q and K rows are un-permuted (HF ->
// GGUF conversion permutes them for llama.cpp's interleaved RoPE; models/llama uses HF's
// rotate_half layout).
#pragma once
#include <map>
#include <memory>
#include <vector>

#include "engine/config.h"
#include "engine/gguf.h"
#include "engine/weights.h"

namespace minfer {

// Reads hyper-parameters from GGUF metadata. general.architecture llama, qwen2 (q/k/v biases),
// phi3 (fused attn_qkv and gate|up in ffn_up), gemma and gemma2 run as the llama family; anything
// else is a clear error naming the file and the architecture. RoPE scaling: `<arch>.rope.scaling.*`
// (linear, yarn) and a `rope_freqs.weight` tensor (Llama-3.1 factors); anything else is refused.
ModelConfig config_from_gguf(const GgufFile& f);

// Whether llama.cpp's converter permutes this architecture's Q / K rows for its interleaved
// RoPE (llama: yes; qwen2 and phi3 use the NeoX / rotate_half layout and are stored as in HF).
bool gguf_permutes_qk(const std::string& arch);

// How a GGUF's block-quantized weights (Q4_0 ... Q6_K) load: Native keeps them as GgmlBlocks
// Linears viewing the mmap'd file (Q and K rows un-permuted into a small host copy); F32
// dequantizes them at load (the f32 baseline). Other types are always dequantized.
enum class GgufWeights { Native, F32 };

class GgufSource : public WeightSource {
 public:
  GgufSource(std::shared_ptr<GgufFile> f, const ModelConfig& cfg,
             GgufWeights mode = GgufWeights::Native);
  // Native mode: a block-type weight as GgmlBlocks; otherwise WeightSource::linear (f32).
  Linear linear(const std::string& prefix, int64_t in, int64_t out, bool bias,
                bool transposed = false) const override;
  Linear table(const std::string& name, int64_t rows, int64_t cols) const override;
  // What loading did per GGML type: "weights: 210 x Q4_1 (native), 1 x Q8_0 (native)".
  std::string summary() const;
  bool has(const std::string& name) const override { return by_hf_.count(name) != 0; }
  Tensor tensor(const std::string& name, std::initializer_list<int64_t> shape) const override;
  std::string describe() const override { return file_->path(); }
  const GgufFile& file() const { return *file_; }

 private:
  const GgufTensorInfo& checked(const std::string& name, std::vector<int64_t> want) const;
  // The block-type tensor `name` [rows, cols] as GgmlBlocks, or nullopt when not a block type
  // or not in Native mode.
  bool native_blocks(const std::string& name, int64_t rows, int64_t cols, GgmlBlocks* out) const;
  std::shared_ptr<GgufFile> file_;
  ModelConfig cfg_;
  GgufWeights mode_;
  bool permuted_qk_ = true;
  bool norm_unit_offset_ = false;  // Gemma: norm weights stored as 1 + w, given back as w
  mutable std::map<std::string, int> native_, dequantized_;  // per GGML type name
  std::map<std::string, const GgufTensorInfo*> by_hf_;       // HF name -> tensor info
};

}  // namespace minfer
