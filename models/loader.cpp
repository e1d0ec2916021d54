#include "models/loader.h"

#include <fmt/ranges.h>

#include <chrono>
#include <cstring>
#include <filesystem>
#include <ranges>

#include "engine/gguf_source.h"
#include "models/lora_merge.h"

namespace minfer {

namespace fs = std::filesystem;

size_t model_file_bytes(const std::string& path) {
  if (fs::is_regular_file(path)) return size_t(fs::file_size(path));
  size_t n = 0;
  for (auto& e : fs::directory_iterator(path))
    if (e.is_regular_file() && e.path().extension() == ".safetensors") n += size_t(e.file_size());
  return n;
}

LoadedModel open_model(const std::string& path, Backend& be, bool with_tokenizer,
                       GgufWeights gguf) {
  auto t0 = std::chrono::steady_clock::now();
  LoadedModel lm;
  lm.path = path;
  MINFER_CHECK(fs::exists(path), "{}: no such file or folder", path);
  if (fs::is_regular_file(lm.path) && fs::path(lm.path).extension() == ".gguf") {
    auto f = GgufFile::open(lm.path);
    ModelConfig cfg = config_from_gguf(*f);
    GgufSource src(f, cfg, gguf);
    lm.model = build_model(cfg, src, be);
    lm.weights_summary = src.summary();
    if (with_tokenizer) {
      MINFER_CHECK(f->has("tokenizer.ggml.model"),
                   "{}: no tokenizer in the GGUF metadata (tokenizer.ggml.model missing)", lm.path);
      lm.tokenizer = Tokenizer::from_gguf(*f);
    }
  } else {
    MINFER_CHECK(fs::is_directory(lm.path),
                 "{}: not a model (expected a folder with config.json + *.safetensors, or a .gguf "
                 "file)",
                 lm.path);
    lm.model = load_model(lm.path, be);
    // LoRA adapters saved beside the base (distill --lora-rank without --lora-merge).
    if (has_lora_adapters(lm.path)) {
      MINFER_CHECK(be.name() == "cpu",
                   "{}: LoRA adapters are merged at load on the CPU backend only (backend '{}'); "
                   "write the model with distill --lora-merge to run it elsewhere",
                   lm.path, be.name());
      const int n = merge_lora_adapters(*lm.model, lm.path);
      lm.weights_summary = fmt::format("LoRA: {} adapted projections merged at load", n);
    }
    if (with_tokenizer) {
      const fs::path tj = fs::path(lm.path) / "tokenizer.json";
      MINFER_CHECK(fs::exists(tj),
                   "{}: missing tokenizer.json (the model folder needs one to "
                   "turn text into ids)",
                   lm.path);
      lm.tokenizer = Tokenizer::from_json_file(tj.string());
    }
  }
  lm.file_bytes = model_file_bytes(lm.path);
  lm.load_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return lm;
}

LoadedModel open_model_image(std::shared_ptr<Storage> bytes, Backend& be, const std::string& name,
                             GgufWeights gguf) {
  auto t0 = std::chrono::steady_clock::now();
  MINFER_CHECK(bytes != nullptr && bytes->size() >= 8,
               "{}: {} bytes, too short for a GGUF or safetensors image", name,
               bytes ? bytes->size() : 0);
  LoadedModel lm;
  lm.path = name;
  lm.file_bytes = bytes->size();
  const auto* p = static_cast<const uint8_t*>(bytes->data());
  if (std::memcmp(p, "GGUF", 4) == 0) {
    auto f = GgufFile::open_memory(std::move(bytes), name);
    ModelConfig cfg = config_from_gguf(*f);
    GgufSource src(f, cfg, gguf);
    lm.model = build_model(cfg, src, be);
    lm.weights_summary = src.summary();
    MINFER_CHECK(f->has("tokenizer.ggml.model"),
                 "{}: no tokenizer in the GGUF metadata (tokenizer.ggml.model missing)", name);
    lm.tokenizer = Tokenizer::from_gguf(*f);
  } else {
    auto f = SafetensorsFile::open_memory(std::move(bytes), name);
    const auto& meta = f->metadata();
    auto need = [&](const char* key) -> const std::string& {
      auto it = meta.find(key);
      std::vector<std::string> keys;  // (not `meta | views::keys`: clang 14 rejects it)
      if (it == meta.end())
        for (const auto& kv : meta) keys.push_back(kv.first);
      MINFER_CHECK(it != meta.end(),
                   "{}: a safetensors image needs the text of {} in its __metadata__ (a model "
                   "folder's files; found keys: {})",
                   name, key, fmt::join(keys, ", "));
      return it->second;
    };
    ModelConfig cfg = parse_config(need("config.json"), name + ":config.json");
    MINFER_CHECK(cfg.source_json.find("\"quantization\"") == std::string::npos,
                 "{}: a compressed minfer model is a folder; load it with its path", name);
    const std::string& tok_json = need("tokenizer.json");
    SafetensorsSource src(WeightStore::from_file(f));
    lm.model = build_model(cfg, src, be);
    lm.tokenizer = Tokenizer::from_json_string(tok_json, name + ":tokenizer.json");
  }
  lm.load_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return lm;
}

}  // namespace minfer
