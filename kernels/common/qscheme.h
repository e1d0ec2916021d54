// The weight-only quantization schemes of the `Quantized` Linear format, and their constants,
// defined once for host and device code (engine/formats/quantized.h, kernels/cpu/quant*.cpp,
// kernels/cuda/kernels.cu). Code layout and the dequantization rule of each scheme:
// kernels/common/quant_math.h.
//
// Every `switch` over QScheme in the project lists every scheme and has no `default:`; the build
// turns -Wswitch into an error, so a scheme that a dispatch site does not handle fails to compile
// instead of falling into another scheme's kernel.
#pragma once
#include <cstdint>

#include "kernels/common/hd.h"

namespace minfer {

enum class QScheme : uint8_t {
  Int8,     // absmax, scale = max|w| / 127 per tensor, per output row or per group
  Int4,     // group-wise, symmetric (absmax, codes -7..7) or asymmetric (min/max, zero point)
  NF4,      // NormalFloat-4 code book (QLoRA), absmax per block, optional double-quant scales
  Binary,   // sign(w) * mean|w| per row, 8 codes per byte
  Ternary,  // BitNet b1.58 absmean: round(w / mean|w|) clipped to {-1, 0, 1}, 4 codes per byte
  Int3,     // group-wise, symmetric signed-max (codes -4..3, s = -w_m / 4), 3 bits per code
};

// Every scheme, in declaration order (for loops over the table on the host).
inline constexpr QScheme kQSchemes[] = {QScheme::Int8,   QScheme::Int4,    QScheme::NF4,
                                        QScheme::Binary, QScheme::Ternary, QScheme::Int3};

struct QSchemeInfo {
  const char* name;    // "int8": the format and method name
  int bits;            // code bits per weight
  int group_multiple;  // a group smaller than a row must be a multiple of this; 0 = no groups
  int default_group;   // the method's default group (0 = one scale per row)
  bool per_tensor;     // may have one scale for the whole matrix
  bool asymmetric;     // may have integer zero points
  bool double_quant;   // may store its scales double-quantized (QLoRA)
};

MINFER_HD constexpr QSchemeInfo qscheme_info(QScheme s) {
  switch (s) {
    case QScheme::Int8:
      return {"int8", 8, 32, 0, true, false, false};
    case QScheme::Int4:
      return {"int4", 4, 32, 128, false, true, false};
    case QScheme::NF4:
      return {"nf4", 4, 64, 64, false, false, true};
    case QScheme::Binary:
      return {"binary", 1, 0, 0, false, false, false};
    case QScheme::Ternary:
      return {"ternary", 2, 0, 0, true, false, false};
    case QScheme::Int3:
      return {"int3", 3, 32, 128, false, false, false};
  }
  return {"invalid", 0, 0, 0, false, false, false};  // not a QScheme value: callers check
}

}  // namespace minfer
