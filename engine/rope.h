// Rotary position embedding (RoPE, Su et al. 2021, arXiv:2104.09864) frequency tables, with the
// context-extension scalings transformers implements (modeling_rope_utils.py):
//   linear — position interpolation (Chen et al. 2023, arXiv:2306.15595): inv_freq / s
//   llama3 — Llama 3.1's wavelength-banded interpolation (transformers _compute_llama3_parameters)
//   yarn   — YaRN (Peng et al. 2023, arXiv:2309.00071): NTK-by-parts ramp + attention factor
// A table is computed once per model at load; the backends' rope kernels take it as is.
#pragma once
#include <cstdint>
#include <vector>

#include "engine/config.h"

namespace minfer {

struct RopeTable {
  std::vector<float> inv_freq;     // [D/2] radians per position for the pair (i, i + D/2)
  float attention_scaling = 1.0f;  // multiplies cos and sin (yarn's mscale; 1 otherwise)
  int64_t head_dim() const { return int64_t(inv_freq.size()) * 2; }
};

// The table for head size `head_dim` (even) and base `theta`, in float32 arithmetic as
// transformers computes it (so angles match HF's to the ulp for the default type). Errors: an
// odd head size, theta <= 1, a factor < 1, llama3 with high_freq_factor <= low_freq_factor,
// freq_factors of the wrong length or not finite and positive; `origin` names the file.
RopeTable rope_table(float theta, int64_t head_dim, const RopeScaling& rs,
                     const std::string& origin = "rope");

}  // namespace minfer
