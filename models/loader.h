// Opening a model from a path: a Hugging Face-style folder (config.json + *.safetensors +
// tokenizer.json), a compressed minfer folder, or a .gguf file. Pairs the model with its
// tokenizer. Never fetches anything: short names (smollm2, minilm) are resolved, and fetched when
// missing, by the application layer (app/model_hub.h: open_named_model).
#pragma once
#include <memory>
#include <string>

#include "engine/gguf_source.h"
#include "models/model.h"
#include "tokenizer/tokenizer.h"

namespace minfer {

struct LoadedModel {
  std::string path;  // resolved file or folder
  std::unique_ptr<Model> model;
  std::unique_ptr<Tokenizer> tokenizer;  // null when not asked for
  size_t file_bytes = 0;                 // bytes of weight files on disk
  double load_seconds = 0;
  // One line on the weight formats picked, e.g. "weights: 210 x Q4_1 (native), 1 x Q8_0
  // (native)" for a GGUF; empty for other sources. Tools print it on stderr.
  std::string weights_summary;
};

// Throws naming the path when it does not exist or is not a model. `gguf` chooses how a GGUF
// file's block-quantized weights load (engine/gguf_source.h): as stored, or dequantized to f32.
LoadedModel open_model(const std::string& path, Backend& be, bool with_tokenizer = true,
                       GgufWeights gguf = GgufWeights::Native);

// Opens a model image already in memory (bytes: a host buffer or a caller's borrowed bytes;
// tensors view it zero-copy and keep it alive), told apart by its first bytes:
// - a GGUF file ("GGUF" magic): as open_model opens a .gguf;
// - a single safetensors file whose "__metadata__" holds the text of "config.json" and
//   "tokenizer.json" (EOS then comes from config.json). Compressed minfer models are
//   folders and are not read from memory.
// `name` stands for the path in messages. Throws naming what is missing.
LoadedModel open_model_image(std::shared_ptr<Storage> bytes, Backend& be,
                             const std::string& name = "<memory>",
                             GgufWeights gguf = GgufWeights::Native);

// Bytes of the weight files a model path holds (*.safetensors in a folder, or the .gguf file).
size_t model_file_bytes(const std::string& path);

}  // namespace minfer
