// safetensors I/O (https://huggingface.co/docs/safetensors): 8-byte little-endian header length N,
// N bytes of JSON {name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {str: str}},
// then the data buffer. Reading mmaps the file and hands out zero-copy Tensor views; every field
// is validated before it is trusted.
#pragma once
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "engine/tensor.h"

namespace minfer {

class SafetensorsFile {
 public:
  // Opens, mmaps and validates: header length vs file size, well-formed JSON, known dtypes,
  // offsets inside the data buffer and equal to numel * dtype size, no overlaps, metadata values
  // are strings. Errors name the file and the tensor.
  static std::shared_ptr<SafetensorsFile> open(const std::string& path);
  // The same over a safetensors image already in memory; tensors view `bytes` zero-copy and keep
  // it alive. `name` stands for the path in messages.
  static std::shared_ptr<SafetensorsFile> open_memory(std::shared_ptr<Storage> bytes,
                                                      const std::string& name);

  const std::string& path() const { return path_; }
  const std::map<std::string, Tensor>& tensors() const { return tensors_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  bool has(const std::string& name) const { return tensors_.count(name) != 0; }
  // Throws "<file>: missing tensor '<name>'" when absent.
  const Tensor& get(const std::string& name) const;

 private:
  std::string path_;
  std::shared_ptr<Storage> map_;  // the whole image
  std::map<std::string, Tensor> tensors_;
  std::map<std::string, std::string> metadata_;
};

// All the weights of one model: a single model.safetensors, or the shards named by
// model.safetensors.index.json ("weight_map": {tensor: shard file}).
class WeightStore {
 public:
  // `path` is a .safetensors file or a folder holding model.safetensors or
  // model.safetensors.index.json.
  static WeightStore open(const std::string& path);
  // One already opened file (e.g. SafetensorsFile::open_memory).
  static WeightStore from_file(std::shared_ptr<SafetensorsFile> file);

  bool has(const std::string& name) const;
  // Throws naming the file(s) and tensor when missing.
  const Tensor& get(const std::string& name) const;
  // As get, and also checks the shape: "<file>: tensor '<name>': expected shape [a, b] (from
  // config.json), found [c, d]".
  const Tensor& get(const std::string& name, std::initializer_list<int64_t> shape) const;
  std::vector<std::string> names() const;
  const std::string& file_of(const std::string& name) const;
  const std::map<std::string, std::string>& metadata() const;  // of the first shard
  std::string describe() const;                                // path(s) for error messages

 private:
  std::vector<std::shared_ptr<SafetensorsFile>> files_;
  std::map<std::string, size_t> index_;  // tensor name -> files_ index
  std::string source_;                   // what describe() returns
};

// Writes tensors (any dtype, contiguous host tensors) in the given order with metadata. The file
// is written to "<path>.tmp" and renamed over `path` only after a successful flush.
void save_safetensors(const std::string& path,
                      const std::vector<std::pair<std::string, Tensor>>& tensors,
                      const std::map<std::string, std::string>& metadata = {});

}  // namespace minfer
