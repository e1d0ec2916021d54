// Writing model folders (convert, compress): an all-or-nothing staging folder, config.json for a
// LLaMA-family model that came from GGUF, and the tokenizer files transformers and minfer read.
#pragma once
#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>

#include "engine/config.h"
#include "engine/tensor.h"

namespace minfer {

class Tokenizer;

// A temporary sibling folder "<out_dir>.tmp-XXXXXX" that becomes out_dir on commit(); destroyed
// with everything in it when commit() was not reached (nothing half-written stays behind).
// Throws when out_dir exists and !force, and refuses to replace a non-empty folder that is not a
// model folder (no config.json) or a file.
class StagingDir {
 public:
  StagingDir(const std::string& out_dir, bool force);
  ~StagingDir();
  StagingDir(const StagingDir&) = delete;
  StagingDir& operator=(const StagingDir&) = delete;
  const std::filesystem::path& path() const { return tmp_; }
  void commit();

 private:
  std::filesystem::path out_, tmp_;
  bool committed_ = false;
};

void write_json_file(const std::filesystem::path& path, const nlohmann::json& j);

// config.json of LlamaForCausalLM for cfg (torch_dtype "float32" | "float16" | "bfloat16").
nlohmann::json llama_config_json(const ModelConfig& cfg, const std::string& torch_dtype);

// config.json of GPT2LMHeadModel (model_type gpt2) / BertModel (model_type bert) for cfg: the
// fields engine/config.cpp reads, plus dropout / initializer defaults transformers writes.
// Throws NotImplemented for what those configs cannot say (per-layer widths, pruned heads, an
// untied GPT-2 head).
nlohmann::json gpt2_config_json(const ModelConfig& cfg, const std::string& torch_dtype);
nlohmann::json bert_config_json(const ModelConfig& cfg, const std::string& torch_dtype);

// tokenizer.json, tokenizer_config.json (bos/eos/pad tokens, chat template) and
// generation_config.json (bos/eos/pad ids) into dir.
void write_tokenizer_files(const std::filesystem::path& dir, const Tokenizer& tok,
                           const ModelConfig& cfg, bool add_bos, bool add_eos);

// "float32" | "float16" | "bfloat16" (config.json torch_dtype).
std::string torch_dtype_name(DType d);

// Copy of `src` (F32/F16/BF16) in `dtype` (F32/F16/BF16), always a new contiguous host tensor.
// Every narrowing is range-checked: an element that is not finite, or that f16 / bf16 cannot hold
// (|x| > 65504 rounds to inf in f16), throws minfer::Error naming `name`, the element's index and
// value, and suggesting bf16 (the f32 exponent range) or f32. Nothing is clamped.
Tensor cast_to(const Tensor& src, DType dtype, const std::string& name);

// "[i, j, ...]" of flat element `flat` of a contiguous tensor of shape `t` (error messages).
std::string element_index(const Tensor& t, int64_t flat);

}  // namespace minfer
