// GGUF v2/v3 reader (the llama.cpp file format: see ggml's docs/gguf.md). The file is mmap'd;
// metadata is parsed into typed values; tensor infos are validated (counts, offsets, sizes,
// overflow, alignment) before any data is touched.
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <variant>
#include <vector>

#include "engine/tensor.h"

namespace minfer {

// GGML tensor types that appear in GGUF files (values are ggml's enum ggml_type).
enum class GgmlType : uint32_t {
  F32 = 0,
  F16 = 1,
  Q4_0 = 2,
  Q4_1 = 3,
  Q5_0 = 6,
  Q5_1 = 7,
  Q8_0 = 8,
  Q8_1 = 9,
  Q2_K = 10,
  Q3_K = 11,
  Q4_K = 12,
  Q5_K = 13,
  Q6_K = 14,
  Q8_K = 15,
  I8 = 24,
  I16 = 25,
  I32 = 26,
  I64 = 27,
  F64 = 28,
  BF16 = 30,
};
std::string ggml_type_name(uint32_t t);  // "Q4_K", or "type 99" when unknown

// GGUF metadata value types (gguf_type in ggml's gguf.h).
enum class GgufType : uint32_t {
  UINT8 = 0,
  INT8 = 1,
  UINT16 = 2,
  INT16 = 3,
  UINT32 = 4,
  INT32 = 5,
  FLOAT32 = 6,
  BOOL = 7,
  STRING = 8,
  ARRAY = 9,
  UINT64 = 10,
  INT64 = 11,
  FLOAT64 = 12,
};
std::string gguf_type_name(uint32_t t);  // "UINT32", or "type 99" when unknown

// A metadata value. Arrays are vectors of one element type.
using GgufValue = std::variant<uint64_t, int64_t, double, bool, std::string, std::vector<int64_t>,
                               std::vector<double>, std::vector<std::string>>;

struct GgufTensorInfo {
  std::string name;
  uint32_t type = 0;        // GgmlType value
  std::vector<int64_t> ne;  // ggml order: ne[0] is the contiguous (innermost) dimension
  uint64_t offset = 0;      // absolute file offset of the data
  uint64_t nbytes = 0;
};

class GgufFile {
 public:
  static std::shared_ptr<GgufFile> open(const std::string& path);
  // The same over a GGUF image already in memory (an mmap'd file, a host buffer, a caller's
  // bytes): tensors view `bytes` zero-copy and keep it alive. `name` stands for the path in
  // messages.
  static std::shared_ptr<GgufFile> open_memory(std::shared_ptr<Storage> bytes,
                                               const std::string& name);

  const std::string& path() const { return path_; }
  uint32_t version() const { return version_; }
  const std::map<std::string, GgufValue>& metadata() const { return kv_; }
  const std::vector<GgufTensorInfo>& tensors() const { return infos_; }

  bool has(const std::string& key) const { return kv_.count(key) != 0 || nested_.count(key) != 0; }
  // The stored GGUF type of a key ("UINT32", "array of STRING", ...); throws when missing.
  std::string type_of(const std::string& key) const;
  // Typed getters; throw "<file>: metadata '<key>' missing" / "... has type X, expected Y".
  std::string get_str(const std::string& key) const;
  int64_t get_int(const std::string& key) const;   // any integer type
  double get_float(const std::string& key) const;  // any numeric type
  bool get_bool(const std::string& key) const;
  const std::vector<std::string>& get_str_array(const std::string& key) const;
  std::vector<int64_t> get_int_array(const std::string& key) const;   // integer or bool arrays
  std::vector<double> get_float_array(const std::string& key) const;  // any numeric array
  int64_t get_int_or(const std::string& key, int64_t def) const;
  double get_float_or(const std::string& key, double def) const;
  std::string get_str_or(const std::string& key, const std::string& def) const;

  const GgufTensorInfo* find(const std::string& name) const;
  const GgufTensorInfo& info(const std::string& name) const;  // throws naming file and tensor
  const uint8_t* data(const GgufTensorInfo& t) const {
    return static_cast<const uint8_t*>(map_->data()) + t.offset;
  }
  // Zero-copy view for F32/F16/BF16 tensors (shape reversed to row-major: [ne1, ne0]).
  Tensor view(const GgufTensorInfo& t) const;
  // Zero-copy U8 view of a tensor's bytes as rows: [rows, nbytes / rows] (any type; rows =
  // the product of the outer dimensions ne[1..]).
  Tensor bytes_view(const GgufTensorInfo& t) const;
  // Dequantize any supported type to a fresh f32 tensor of row-major shape.
  Tensor dequantize(const GgufTensorInfo& t) const;

 private:
  struct KeyType {
    uint32_t type;  // GgufType
    uint32_t elem;  // element type for arrays
  };
  const GgufValue& lookup(const std::string& key) const;  // throws when missing or unreadable
  std::string describe(const std::string& key) const;
  std::map<std::string, KeyType> types_;
  std::map<std::string, KeyType> nested_;  // arrays of arrays: validated and skipped, not stored

  std::string path_;
  uint32_t version_ = 0;
  std::shared_ptr<Storage> map_;  // the whole image
  std::map<std::string, GgufValue> kv_;
  std::vector<GgufTensorInfo> infos_;
  std::map<std::string, size_t> by_name_;
};

// Block dequantization (bit-exact with the GGML block definitions). `n` is the number of
// weights, a multiple of the type's block size. Throws for unsupported types.
size_t ggml_block_size(uint32_t type);    // weights per block (0 when the type is unknown)
size_t ggml_type_size(uint32_t type);     // bytes per block (0 when the type is unknown)
bool ggml_can_dequantize(uint32_t type);  // dequantize_row supports it
void dequantize_row(uint32_t type, const void* src, float* dst, int64_t n);

// llama-family GGUF tensor name -> Hugging Face transformers name:
//   token_embd.weight -> model.embed_tokens.weight, output_norm.weight -> model.norm.weight,
//   output.weight -> lm_head.weight, blk.N.attn_q/attn_k/attn_v/attn_output ->
//   model.layers.N.self_attn.q_proj/k_proj/v_proj/o_proj, blk.N.ffn_gate/ffn_up/ffn_down ->
//   model.layers.N.mlp.gate_proj/up_proj/down_proj, blk.N.attn_norm -> input_layernorm,
//   blk.N.ffn_norm -> post_attention_layernorm (suffix .weight or .bias kept).
// Throws naming the tensor for a name outside this table.
std::string gguf_to_hf_name(const std::string& gguf_name);

// llama.cpp's convert_hf_to_gguf.py permutes the rows of the Q and K projections (row-major
// [rows, cols], rows = n_head * head_dim) so that RoPE rotates adjacent pairs:
//   w.reshape(n_head, 2, head_dim / 2, cols).swapaxes(1, 2).reshape(rows, cols)
// i.e. GGUF row h*head_dim + 2*j + i holds HF row h*head_dim + i*head_dim/2 + j. This undoes it
// in place (n_head = number of KV heads for K). rows must be a multiple of 2 * n_head.
void unpermute_qk_rows(float* w, int64_t rows, int64_t cols, int64_t n_head);

}  // namespace minfer
