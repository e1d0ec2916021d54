// Reading a compressed minfer model folder (what compress/compress.h save_compressed writes):
//   config.json        the model's Hugging Face config plus a "quantization" section:
//                      {"format": "minfer", "version": 1, "method": ..., "options": {...},
//                       "tensors": {"<HF weight name>": {"repr": <a registered format's tag>,
//                                   "format": ..., "in": ..., "out": ..., ...its fields}}}
//   model.safetensors  dense tensors under their HF names; a compressed Linear `<name>` as the
//                      tensors its format writes (`<name>.codes`, `<name>.scales`, ...; a
//                      LowRank's factors as `<name>.u.*`, `<name>.v.*`).
// Every Linear is rebuilt through load_linear (engine/linear.h), so each format's invariants are
// checked at load and an error names the tensor. Plain tensors are zero-copy views of the mmap.
#pragma once
#include <map>
#include <string>

#include "engine/weights.h"

namespace minfer {

// True when `dir` holds a config.json with a minfer "quantization" section.
bool is_compressed_folder(const std::string& dir);

class CompressedSource : public WeightSource {
 public:
  // Reads dir/config.json and the folder's safetensors. Throws naming the file and the key for
  // a missing or malformed quantization section.
  explicit CompressedSource(const std::string& dir);
  // The same from config.json's text and already opened weights; `origin` names them in
  // messages (the folder's path when read from disk).
  CompressedSource(const std::string& config_json, WeightStore store, const std::string& origin);
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
