// Quantized: weight-only quantization, one scheme per matrix (kernels/common/qscheme.h): int8,
// int4 (symmetric / asymmetric), int3 (packed 3-bit), NF4 (+ QLoRA double quantization), binary,
// ternary. Packing, code values and the dequantization rule: kernels/common/quant_math.h. Encoders:
// compress/quantize.h. CPU kernels: kernels/cpu/quant.h; CUDA: kernels/cuda/kernels.cu.
//
// Bits per weight (K in features, G group; code rows padded to 64 weights):
//   int8 8 + 32/K (per row) or 8 + 32/G; int4 4 + 32/G (+ 8/G with zero points); int3 3 + 32/G
//   (codes 3 bits each, compressed-tensors' pack-quantized layout in the file);
//   nf4 4 + 32/G, double-quantized 4 + 8/G + 32/(256 G); binary 1 + 32/K; ternary 2 (+ 32/K per
//   row).
#pragma once
#include "engine/formats/format.h"
#include "kernels/common/qscheme.h"

namespace minfer {

// Legend: Kp = in rounded up to 64, groups = ceil(in / group) scales per row.
struct Quantized {
  QScheme scheme = QScheme::Int8;
  int64_t group = 0;        // weights sharing one scale along a row (== in: one scale per row)
  bool per_tensor = false;  // one scale for the whole matrix, scales is [1] (Int8, Ternary)
  bool asymmetric = false;  // Int4 with integer zero points
  // U8 [out, Kp * bits / 8] packed codes in the layout `interleave` names; the padding codes
  // dequantize to 0.
  Tensor codes;
  Tensor scales;  // F32 [out, groups] or [1] when per_tensor (absent when double-quantized)
  Tensor zeros;   // U8 [out, groups] integer zero points 0..15 (asymmetric Int4)
  // NF4 double quantization (QLoRA): the out * groups block scales, minus their mean
  // scale_offset, stored as int8 codes in blocks of 256 with one f32 scale per block.
  Tensor scale_codes;   // I8 [out * groups]
  Tensor scale_scales;  // F32 [ceil(out * groups / 256)]
  float scale_offset = 0.f;
  // Layout of `codes`. 1: row by row (the file's layout). R > 1 (the CPU backend's repacked
  // layout, kernels/cpu/quant.h quantized_repack_for_cpu): the rows in groups of R, each group
  // stored 64-weight chunk first (chunk c of rows n .. n + R - 1 side by side, 8 * bits bytes
  // each: one 64-byte cache line per row for int8, 32 bytes for int4 / NF4), and int8 codes stored
  // as two's complement u - 128 (u ^ 0x80, so a sign extension gives u - 128). Same size; the
  // scales and zero points keep their [out, groups] layout. save() and the CUDA upload read the
  // row layout (quantized_row_major).
  int32_t interleave = 1;
  // Scales rounded to fp16 and stored as F16 in the file (4 + 16/G bits/w for int4 instead of
  // 4 + 32/G); in memory they stay F32 (the kernels read F32), holding fp16-representable values.
  bool f16_scales = false;
};

// Row n's codes in the row layout (Kp * bits / 8 bytes): a pointer into `codes` (interleave 1) or
// gathered into tmp (interleaved; int8 codes converted back to u).
const uint8_t* quantized_codes_row(const Quantized& q, int64_t n, uint8_t* tmp);
// q with its codes in the row layout: q itself (interleave 1) or a copy with de-interleaved codes
// (the other tensors shared).
Quantized quantized_row_major(const Quantized& q);
// q (row layout, out = codes.dim(0) a multiple of R) as a copy with its codes interleaved by R (the
// other tensors shared). Throws if q is already interleaved or out % R != 0.
Quantized quantized_interleave(const Quantized& q, int32_t R);

template <>
struct FormatTraits<Quantized> {
  static constexpr const char* repr = "quantized";
  // Tensor dtypes and shapes, group and scheme options; O(1) (the codes are not scanned).
  static void check(const Quantized& q, int64_t in, int64_t out, const std::string& name);
  static size_t bytes(const Quantized& q);
  static void dequantize(const Quantized& q, int64_t in, int64_t out, const std::string& name,
                         float* w);
  // "int8" (per row), "int8-tensor", "int8-g64", "int4-g128[-asym]", "int3-g128", "nf4-g64[-dq]",
  // "binary", "ternary" (per tensor), "ternary-row".
  static std::string format(const Quantized& q, int64_t in);
  // int3 codes go to the file as I32 [out, ceil(in * 3 / 32)] in compressed-tensors'
  // pack-quantized layout (meta "packing": "pack-quantized"; meta["in"] must be set) and are
  // loaded back zero-copy when in % 64 == 0, else repacked to the padded in-memory rows.
  static void save(const Quantized& q, const std::string& name, TensorSink& sink, json& meta);
  static Quantized load(const TensorSource& src, const std::string& name, const json& meta,
                        int64_t in, int64_t out);
  static std::vector<const Linear*> children(const Quantized&) { return {}; }
};

const char* qscheme_name(QScheme s);  // "int8", "int4", "nf4", "binary", "ternary"
int qscheme_bits(QScheme s);          // code bits per weight: 8, 4, 4, 1, 2, 3
// The scheme called `name`; throws naming `where` for anything else.
QScheme qscheme_from_name(const std::string& name, const std::string& where);

}  // namespace minfer
