// Helpers for tests that run whole models (kept out of test_util.h, which every test includes,
// so that only these files parse models/model.h for them).
#pragma once
#include <cmath>
#include <vector>

#include "engine/backend.h"
#include "models/model.h"

namespace minfer::test {

// Logits [T, V] of one causal forward over ids (all positions), copied to the host.
inline std::vector<float> model_logits(Model& m, const std::vector<int32_t>& ids) {
  RunState s = m.new_state(int64_t(ids.size()), int64_t(ids.size()));
  Tensor t = m.forward(s, ids.data(), int64_t(ids.size()), true);
  std::vector<float> v(size_t(t.numel()));
  m.backend().to_host(t, v.data());
  return v;
}

// ||a - b||₂ / ||b||₂ (f64 sums).
inline double rel_l2(const std::vector<float>& a, const std::vector<float>& b) {
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    num += (double(a[i]) - b[i]) * (double(a[i]) - b[i]);
    den += double(b[i]) * b[i];
  }
  return std::sqrt(num / den);
}

}  // namespace minfer::test
