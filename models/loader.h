// Opening a model the way the tools do: a short name (smollm2, minilm: fetched when missing), a
// Hugging Face-style folder (config.json + *.safetensors + tokenizer.json), a compressed minfer
// folder, or a .gguf file. Pairs the model with its tokenizer.
#pragma once
#include <memory>
#include <string>

#include "models/model.h"
#include "tokenizer/tokenizer.h"

namespace minfer {

struct LoadedModel {
  std::string path;  // resolved file or folder
  std::unique_ptr<Model> model;
  std::unique_ptr<Tokenizer> tokenizer;  // null when not asked for
  size_t file_bytes = 0;                 // bytes of weight files on disk
  double load_seconds = 0;
};

LoadedModel open_model(const std::string& spec, Backend& be, bool with_tokenizer = true);

// Bytes of the weight files a model path holds (*.safetensors in a folder, or the .gguf file).
size_t model_file_bytes(const std::string& path);

}  // namespace minfer
