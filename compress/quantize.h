// Weight-only quantization: Dense Linear -> Quantized Linear (or a half-precision Dense), the way
// back to f32 for tests and fallbacks, exact storage cost, and distortion statistics.
//
// Formats (structs: engine/formats/; storage layout and rounding rules:
// kernels/common/quant_math.h):
//   method    options                                   bits/weight (K multiple of group)
//   "int8"    per_channel (default) | per tensor | group  8 + 32/K (per row), 8 + 32/G (group)
//   "int4"    group 32/64/128 (default 128), asymmetric   4 + 32/G, + 8/G with zero points
//   "nf4"     group (block) 64 default, double_quant      4 + 32/G, or 4 + 8/G + 32/(256 G)
//   "binary"  per-row scale mean|w|                       1 + 32/K
//   "ternary" per-tensor mean|w| (or ternary_per_row)     2 (+ 32/K per row)
//   "f16", "bf16", "f32"  Dense conversions (compute in f32)  16 / 16 / 32
//
// K (in features) not a multiple of the group: the last group of a row is partial and its scale
// (and zero point) come from the weights it does have. Code rows are padded to a multiple of 64
// weights with the code of 0; the padding bytes are stored, so bits_per_weight counts them.
#pragma once
#include <string>
#include <vector>

#include "engine/linear.h"

namespace minfer {

struct QuantSpec {
  std::string method = "int8";   // int8 | int4 | nf4 | binary | ternary | f16 | bf16 | f32
  int group = 0;                 // 0 = the method's default (int8: none, int4: 128, nf4: 64)
  bool per_channel = true;       // int8 without a group: one scale per output row (else tensor)
  bool asymmetric = false;       // int4: min/max with an integer zero point
  bool double_quant = false;     // nf4: 8-bit, block-256, mean-offset block scales (QLoRA)
  bool ternary_per_row = false;  // ternary: mean|w| per output row instead of per tensor
  bool f16_scales = false;       // -f16s: scales rounded to fp16 after quantization, stored as F16
};

// `dense` must be a Dense F32/F16/BF16 Linear ([out, in], or [in, out] when transposed, which is
// transposed first). Bias and name carry over. Non-finite weights are rejected with their
// position.
Linear quantize_linear(const Linear& dense, const QuantSpec& spec);

// -f16s: rounds every scale of q to the nearest fp16 value (round to nearest even) and marks it
// stored as F16 (Quantized::f16_scales); the codes are kept, so each weight moves by at most
// 2^-11 of its value. Throws naming `name` for double-quantized or per-tensor scales, or a scale
// beyond fp16's range (|s| > 65504).
void use_f16_scales(Quantized& q, const std::string& name);

// LLM.int8() (Dettmers et al. 2022, arXiv:2208.07339; struct: engine/formats/llm_int8.h). W becomes
// int8 absmax per output row, quantized from all of W. `act_absmax` (optional, [in]: max |x| per
// input feature over a calibration pass) lists the features with act_absmax >= threshold in
// outlier_cols and keeps their columns of the original W in f16 (outlier_w); without statistics
// outlier_cols is empty. Kernels treat a listed feature as an outlier in every batch (its f16
// column is always used, never its int8 one) and any other feature as an outlier in a batch where
// some |x| >= threshold (its int8 column, dequantized, times x in f32). threshold: 6.0, the
// paper's value (section 3.2), must be finite and > 0.
Linear quantize_llm_int8(const Linear& dense, float threshold = 6.f,
                         const std::vector<float>* act_absmax = nullptr);

// W8A8 (struct: engine/formats/w8a8.h): W int8 absmax per output row; activations int8 per token at
// run time (ActScale::Dynamic, act_scale ignored and stored as 0) or with one calibrated per-tensor
// scale (ActScale::Static: act_scale = max|x| / 127 from calibration, finite and > 0).
Linear quantize_w8a8(const Linear& dense, ActScale mode, float act_scale = 0.f);

// Distortion of q against ref (same shape): mean squared error, max |w - ŵ|, and
// ||W - Ŵ||_F / ||W||_F.
struct Distortion {
  double mse = 0, max_abs = 0, rel_fro = 0;
};
Distortion measure(const Linear& ref, const Linear& q);

}  // namespace minfer
