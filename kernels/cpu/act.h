// Element-wise activation formulas shared by the CPU backend's ops and the kernels' fused
// epilogues, so that a fused op and its unfused sequence give bit-identical results.
#pragma once
#include <cmath>

namespace minfer {

// SiLU-gated product (the LLaMA MLP, Shazeer 2020 "GLU Variants Improve Transformer"):
// silu(g) · u = g / (1 + e^-g) · u, in f32.
inline float silu_mul(float g, float u) {
  return g / (1.f + std::exp(-g)) * u;
}

}  // namespace minfer
