// Type table and row dequantization for the GGML weight types (declared in engine/gguf.h).
// Block layouts and per-block math live in kernels/common/ggml_quants.h.
#include <cstring>

#include "engine/error.h"
#include "engine/gguf.h"
#include "engine/half.h"
#include "kernels/common/ggml_quants.h"

namespace minfer {

namespace {

struct TypeTraits {
  uint32_t type;
  const char* name;
  uint32_t block;  // weights per block
  uint32_t size;   // bytes per block
  bool dequant;    // dequantize_row supports it
};

// Sizes from ggml's type_traits table (ggml.c). Types that are sized but not dequantized still
// let a file open (its metadata and other tensors stay readable).
constexpr TypeTraits kTypes[] = {
    {0, "F32", 1, 4, true},
    {1, "F16", 1, 2, true},
    {2, "Q4_0", 32, sizeof(ggml::BlockQ4_0), true},
    {3, "Q4_1", 32, sizeof(ggml::BlockQ4_1), true},
    {6, "Q5_0", 32, sizeof(ggml::BlockQ5_0), true},
    {7, "Q5_1", 32, sizeof(ggml::BlockQ5_1), true},
    {8, "Q8_0", 32, sizeof(ggml::BlockQ8_0), true},
    {9, "Q8_1", 32, sizeof(ggml::BlockQ8_1), false},
    {10, "Q2_K", 256, sizeof(ggml::BlockQ2_K), true},
    {11, "Q3_K", 256, sizeof(ggml::BlockQ3_K), true},
    {12, "Q4_K", 256, sizeof(ggml::BlockQ4_K), true},
    {13, "Q5_K", 256, sizeof(ggml::BlockQ5_K), true},
    {14, "Q6_K", 256, sizeof(ggml::BlockQ6_K), true},
    {15, "Q8_K", 256, sizeof(ggml::BlockQ8_K), true},
    {16, "IQ2_XXS", 256, 66, false},
    {17, "IQ2_XS", 256, 74, false},
    {18, "IQ3_XXS", 256, 98, false},
    {19, "IQ1_S", 256, 50, false},
    {20, "IQ4_NL", 32, 18, false},
    {21, "IQ3_S", 256, 110, false},
    {22, "IQ2_S", 256, 82, false},
    {23, "IQ4_XS", 256, 136, false},
    {24, "I8", 1, 1, true},
    {25, "I16", 1, 2, true},
    {26, "I32", 1, 4, true},
    {27, "I64", 1, 8, true},
    {28, "F64", 1, 8, true},
    {29, "IQ1_M", 256, 56, false},
    {30, "BF16", 1, 2, true},
    {34, "TQ1_0", 256, 54, false},
    {35, "TQ2_0", 256, 66, false},
    {39, "MXFP4", 32, 17, false},
};

const TypeTraits* traits(uint32_t type) {
  for (const auto& t : kTypes)
    if (t.type == type) return &t;
  return nullptr;
}

// Copy each block out before use: GGUF only guarantees the file's alignment, which may be
// smaller than the block struct's.
template <typename Block>
void dequant_blocks(const void* src, float* dst, int64_t n_blocks, int64_t qk) {
  const uint8_t* p = static_cast<const uint8_t*>(src);
  for (int64_t i = 0; i < n_blocks; ++i) {
    Block b;
    std::memcpy(&b, p + i * int64_t(sizeof(Block)), sizeof(Block));
    ggml::dequant_block(b, dst + i * qk);
  }
}

template <typename T>
void convert(const void* src, float* dst, int64_t n) {
  const uint8_t* p = static_cast<const uint8_t*>(src);
  for (int64_t i = 0; i < n; ++i) {
    T v;
    std::memcpy(&v, p + i * int64_t(sizeof(T)), sizeof(T));
    dst[i] = float(v);
  }
}

}  // namespace

std::string ggml_type_name(uint32_t t) {
  const TypeTraits* tr = traits(t);
  return tr ? std::string(tr->name) : fmt::format("type {}", t);
}

size_t ggml_block_size(uint32_t type) {
  const TypeTraits* tr = traits(type);
  return tr ? tr->block : 0;
}

size_t ggml_type_size(uint32_t type) {
  const TypeTraits* tr = traits(type);
  return tr ? tr->size : 0;
}

bool ggml_can_dequantize(uint32_t type) {
  const TypeTraits* tr = traits(type);
  return tr && tr->dequant;
}

void dequantize_row(uint32_t type, const void* src, float* dst, int64_t n) {
  const TypeTraits* tr = traits(type);
  MINFER_CHECK(tr && tr->dequant, "dequantize: unsupported GGML type {} ({})", ggml_type_name(type),
               type);
  MINFER_CHECK(n >= 0 && n % tr->block == 0,
               "dequantize {}: {} weights is not a multiple of the block size {}", tr->name, n,
               tr->block);
  const int64_t nb = n / tr->block;
  using namespace ggml;
  switch (GgmlType(type)) {
    case GgmlType::F32:
      std::memcpy(dst, src, size_t(n) * 4);
      return;
    case GgmlType::F16: {
      // The bulk converters may use wide loads; give them an aligned copy only when needed.
      if (reinterpret_cast<uintptr_t>(src) % 2 == 0) {
        f16_to_f32_n(static_cast<const uint16_t*>(src), dst, size_t(n));
      } else {
        for (int64_t i = 0; i < n; ++i) {
          uint16_t h;
          std::memcpy(&h, static_cast<const uint8_t*>(src) + 2 * i, 2);
          dst[i] = f16_to_f32(h);
        }
      }
      return;
    }
    case GgmlType::BF16: {
      if (reinterpret_cast<uintptr_t>(src) % 2 == 0) {
        bf16_to_f32_n(static_cast<const uint16_t*>(src), dst, size_t(n));
      } else {
        for (int64_t i = 0; i < n; ++i) {
          uint16_t h;
          std::memcpy(&h, static_cast<const uint8_t*>(src) + 2 * i, 2);
          dst[i] = bf16_to_f32(h);
        }
      }
      return;
    }
    case GgmlType::F64:
      convert<double>(src, dst, n);
      return;
    case GgmlType::I8:
      convert<int8_t>(src, dst, n);
      return;
    case GgmlType::I16:
      convert<int16_t>(src, dst, n);
      return;
    case GgmlType::I32:
      convert<int32_t>(src, dst, n);
      return;
    case GgmlType::I64:
      convert<int64_t>(src, dst, n);
      return;
    case GgmlType::Q4_0:
      dequant_blocks<BlockQ4_0>(src, dst, nb, QK4_0);
      return;
    case GgmlType::Q4_1:
      dequant_blocks<BlockQ4_1>(src, dst, nb, QK4_1);
      return;
    case GgmlType::Q5_0:
      dequant_blocks<BlockQ5_0>(src, dst, nb, QK5_0);
      return;
    case GgmlType::Q5_1:
      dequant_blocks<BlockQ5_1>(src, dst, nb, QK5_1);
      return;
    case GgmlType::Q8_0:
      dequant_blocks<BlockQ8_0>(src, dst, nb, QK8_0);
      return;
    case GgmlType::Q2_K:
      dequant_blocks<BlockQ2_K>(src, dst, nb, QK_K);
      return;
    case GgmlType::Q3_K:
      dequant_blocks<BlockQ3_K>(src, dst, nb, QK_K);
      return;
    case GgmlType::Q4_K:
      dequant_blocks<BlockQ4_K>(src, dst, nb, QK_K);
      return;
    case GgmlType::Q5_K:
      dequant_blocks<BlockQ5_K>(src, dst, nb, QK_K);
      return;
    case GgmlType::Q6_K:
      dequant_blocks<BlockQ6_K>(src, dst, nb, QK_K);
      return;
    case GgmlType::Q8_K:
      dequant_blocks<BlockQ8_K>(src, dst, nb, QK_K);
      return;
    default:
      break;
  }
  MINFER_FAIL("dequantize: GGML type {} is marked supported but has no dequantizer", tr->name);
}

}  // namespace minfer
