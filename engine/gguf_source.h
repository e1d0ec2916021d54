// Weights and config of a GGUF model (llama architecture), under Hugging Face names so the same
// models/llama code runs it. F32/F16/BF16 tensors are zero-copy views; quantized GGML types are
// dequantized to f32 once at load. Q and K rows are un-permuted (HF -> GGUF conversion permutes
// them for llama.cpp's interleaved RoPE; models/llama uses HF's rotate_half layout).
#pragma once
#include <map>
#include <memory>

#include "engine/config.h"
#include "engine/gguf.h"
#include "engine/weights.h"

namespace minfer {

// Reads hyper-parameters from GGUF metadata. general.architecture llama, qwen2 (q/k/v biases) and
// phi3 (fused attn_qkv and gate|up in ffn_up) run as the llama family; anything else is a clear
// error naming the file and the architecture. RoPE scaling: `<arch>.rope.scaling.*` (linear,
// yarn) and a `rope_freqs.weight` tensor (Llama-3.1 factors); anything else is refused.
ModelConfig config_from_gguf(const GgufFile& f);

// Whether llama.cpp's converter permutes this architecture's Q / K rows for its interleaved
// RoPE (llama: yes; qwen2 and phi3 use the NeoX / rotate_half layout and are stored as in HF).
bool gguf_permutes_qk(const std::string& arch);

class GgufSource : public WeightSource {
 public:
  GgufSource(std::shared_ptr<GgufFile> f, const ModelConfig& cfg);
  bool has(const std::string& name) const override { return by_hf_.count(name) != 0; }
  Tensor tensor(const std::string& name, std::initializer_list<int64_t> shape) const override;
  std::string describe() const override { return file_->path(); }
  const GgufFile& file() const { return *file_; }

 private:
  std::shared_ptr<GgufFile> file_;
  ModelConfig cfg_;
  bool permuted_qk_ = true;
  std::map<std::string, const GgufTensorInfo*> by_hf_;  // HF name -> tensor info
};

}  // namespace minfer
