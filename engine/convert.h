// GGUF -> Hugging Face folder: config.json (LlamaForCausalLM, Qwen2ForCausalLM, Phi3ForCausalLM,
// GemmaForCausalLM or Gemma2ForCausalLM), model.safetensors (HF tensor names, Q/K rows
// un-permuted, Gemma norm weights as w of (1 + w), quantized types dequantized, then cast to the
// requested dtype),
// tokenizer.json + tokenizer_config.json (from the tokenizer.ggml.* metadata) and
// generation_config.json. The folder loads in transformers (AutoModelForCausalLM /
// AutoTokenizer.from_pretrained) and in minfer's open_model.
#pragma once
#include <string>

#include "engine/tensor.h"

namespace minfer {

struct ConvertOptions {
  DType dtype = DType::F32;  // F32, F16 or BF16 for every tensor (norm weights too)
  bool force = false;        // replace an existing `out_dir` (only a file or a model folder)
};

// Everything is written into "<out_dir>.tmp-XXXXXX" and renamed to out_dir at the end; on any
// error the temporary folder is removed and out_dir is left as it was. Throws when out_dir exists
// and !force, for an unknown architecture, a tensor type minfer cannot dequantize, or a GGUF
// without tokenizer metadata (all checked before anything is written).
void export_hf_folder(const std::string& gguf_path, const std::string& out_dir,
                      const ConvertOptions& opt = {});
inline void export_hf_folder(const std::string& gguf_path, const std::string& out_dir,
                             DType dtype) {
  export_hf_folder(gguf_path, out_dir, ConvertOptions{dtype, false});
}

// "f32" | "f16" | "bf16" (case-insensitive) -> DType; throws for anything else.
DType parse_export_dtype(const std::string& s);

}  // namespace minfer
