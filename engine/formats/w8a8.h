// W8A8: int8 weights (absmax per output row) times int8 activations, integer GEMM with int32
// accumulation. Activation scale: dynamic = absmax per token row at run time; static = one
// per-tensor scale (max|x| / 127 over a calibration pass), x clamped to ±127 codes. Encoder:
// compress/quantize.h; kernels: kernels/cpu/quant_act.h, kernels/cuda/kernels.cu.
// Bits per weight: 8 + 32/K.
#pragma once
#include "engine/formats/llm_int8.h"

namespace minfer {

enum class ActScale : uint8_t { Dynamic, Static };

struct W8A8 {
  Quantized w;  // Int8, per output row
  ActScale act = ActScale::Dynamic;
  float act_scale = 0.f;  // Static: x ≈ act_scale * code
};

template <>
struct FormatTraits<W8A8> {
  static constexpr const char* repr = "w8a8";
  // The int8 weight (Int8, one scale per row); act_scale finite, and > 0 when static.
  static void check(const W8A8& r, int64_t in, int64_t out, const std::string& name);
  static size_t bytes(const W8A8& r) { return FormatTraits<Quantized>::bytes(r.w); }
  static void dequantize(const W8A8& r, int64_t in, int64_t out, const std::string& name,
                         float* w) {
    check(r, in, out, name);
    FormatTraits<Quantized>::dequantize(r.w, in, out, name, w);
  }
  static std::string format(const W8A8& r, int64_t) {
    return r.act == ActScale::Static ? "w8a8-static" : "w8a8";
  }
  static void save(const W8A8& r, const std::string& name, TensorSink& sink, json& meta);
  static W8A8 load(const TensorSource& src, const std::string& name, const json& meta, int64_t in,
                   int64_t out);
  static std::vector<const Linear*> children(const W8A8&) { return {}; }
};

}  // namespace minfer
