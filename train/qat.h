// Quantization-aware training (QAT) of a weight matrix: fake quantization in the forward, the
// straight-through estimator in the backward, optional learned step sizes (LSQ), and the export
// of the trained matrix to the engine's real `Quantized` format (engine/formats/quantized.h), whose
// dequantized weights are the fake-quantized ones bit for bit.
//
// Schemes (the `Quantized` schemes of the same name; Qp = largest code, codes in [-Qp, Qp]):
//   int8     one scale per output row (or per group of G inputs), s = max|w| / 127, Qp = 127
//   int4     one scale per group of G inputs along a row (default 128), s = max|w| / 7, Qp = 7
//   ternary  one scale for the whole matrix, BitNet b1.58 absmean (Ma et al. 2024,
//            arXiv 2402.17764): s = max(mean|W|, 1e-5), Qp = 1
// Forward: ŵ = s · round(clamp(w / s, −Qp, Qp)) (round half to even, w / s in double, exactly
// what compress/quantize.cpp's encoder computes, so the exported codes dequantize to ŵ).
// Backward (straight-through estimator, Bengio et al. 2013, with the clamp's mask as in LSQ):
//   ∂L/∂w = ∂L/∂ŵ · 1[−Qp ≤ w/s ≤ Qp]; without LSQ s is a statistic of W treated as a constant.
// LSQ (Esser et al. 2020, arXiv 1902.08153, eq. 3 and section 2.2): s is a parameter, initialised
// from the same statistic, with
//   ∂ŵ/∂s = round(v) − v inside the range, ±Qp outside it (v = w/s),
//   ∂L/∂s = g · Σ_{w sharing s} ∂L/∂ŵ · ∂ŵ/∂s, gradient scale g = 1 / sqrt(N_s · Qp),
// N_s the number of weights sharing the scale. A learned scale is floored at kQatMinScale.
#pragma once
#include <cstdint>
#include <string>

#include "engine/linear.h"
#include "kernels/common/qscheme.h"

namespace minfer::train {

constexpr float kQatMinScale = 1e-8f;

struct QatSpec {
  QScheme scheme = QScheme::Int8;  // Int8, Int4 or Ternary
  int64_t group = 0;               // int8: 0 = per row; int4: 0 = 128; ternary: per tensor
  bool lsq = false;                // learned step sizes (LSQ)
};

// "int8", "int8-g64", "int4", "int4-g32", "ternary" -> QatSpec (lsq false). Throws naming the
// value for anything else (nf4, binary, fp16, ... are not QAT formats here).
QatSpec parse_qat(const std::string& s);
// The canonical name ("int8", "int4-g128", "ternary"; "+lsq" appended when learned).
std::string qat_name(const QatSpec& q);

// The scale layout of one [O, I] matrix under q: `rows` x `groups` scales, `group` inputs each
// (the last group of a row may be partial); ternary: 1 x 1 (group = O * I, per_tensor).
struct QatLayout {
  int64_t rows = 1, groups = 1, group = 0;
  bool per_tensor = false;
  int qmax = 127;
  int64_t count() const { return rows * groups; }
  // Index of the scale of weight (o, k).
  int64_t at(int64_t o, int64_t k) const { return per_tensor ? 0 : o * groups + k / group; }
  // Weights sharing one scale (N_s of the LSQ gradient scale): a full group.
  int64_t shared(int64_t O, int64_t I) const { return per_tensor ? O * I : std::min(group, I); }
};
// Throws when the group is not a multiple of 32 (what the Quantized format allows) or is < 0.
QatLayout qat_layout(const QatSpec& q, int64_t O, int64_t I, const std::string& name);

// The statistic scales of W [O, I]: max|w| / Qp per group (int8, int4), mean|W| floored at 1e-5
// (ternary). s has lay.count() values.
void qat_init_scales(float* s, const float* W, int64_t O, int64_t I, const QatLayout& lay);

// Wq[O, I] = ŵ (fake-quantized W with scales s, floored at kQatMinScale).
void qat_fake_quant(float* Wq, const float* W, const float* s, int64_t O, int64_t I,
                    const QatLayout& lay);

// The backward of qat_fake_quant: dW[O, I] += dWq masked to the clamp range (STE); when ds is not
// null, ds[count] += the LSQ gradient of the scales (with its gradient scale).
void qat_fake_quant_backward(float* dW, float* ds, const float* dWq, const float* W, const float* s,
                             int64_t O, int64_t I, const QatLayout& lay);

// The real Quantized Linear whose dequantized weight equals qat_fake_quant(W, s) exactly.
Linear qat_export(const std::string& name, const float* W, const float* s, int64_t O, int64_t I,
                  const QatSpec& q);

}  // namespace minfer::train
