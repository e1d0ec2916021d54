// Checks shared by the op-group tests of every format (GGML blocks, Quantized, the sparse
// formats): Backend::linear_group and Backend::linear_swiglu against the separate ops they fuse.
#pragma once
#include <cstring>
#include <utility>
#include <vector>

#include "engine/backend.h"
#include "engine/linear.h"
#include "engine/tensor.h"

namespace minfer::test {

// The members of g whose Backend::linear_group output (on x [T, K]) differs in any bit from their
// own Backend::linear: 0 when the group is bit-identical to one call per member.
inline int group_mismatches(Backend& be, const std::vector<Linear>& g, const Tensor& x) {
  const int64_t T = x.dim(0);
  std::vector<Tensor> ya, yb;
  std::vector<Tensor*> yp;
  std::vector<const Linear*> wp;
  for (const Linear& l : g) {
    ya.push_back(be.alloc({T, l.out}));
    yb.push_back(be.alloc({T, l.out}));
    wp.push_back(&l);
  }
  for (Tensor& y : ya) yp.push_back(&y);
  be.linear_group(yp.data(), wp.data(), int(g.size()), x);
  int diff = 0;
  for (size_t i = 0; i < g.size(); ++i) {
    be.linear(yb[i], x, g[i]);
    diff += std::memcmp(ya[i].raw(), yb[i].raw(), ya[i].nbytes()) != 0;
  }
  return diff;
}

// Backend::linear_swiglu (gate·up + SiLU·mul fused, F outputs) against linear, linear, swiglu on
// x: whether y (the SiLU·mul result) and u (up's output) are the same bits.
inline std::pair<bool, bool> swiglu_matches(Backend& be, const Tensor& x, const Linear& gate,
                                            const Linear& up, int64_t F) {
  const int64_t T = x.dim(0);
  Tensor y1 = be.alloc({T, F}), u1 = be.alloc({T, F});
  Tensor y2 = be.alloc({T, F}), u2 = be.alloc({T, F});
  be.linear_swiglu(y1, u1, x, gate, up);
  be.linear(y2, x, gate);
  be.linear(u2, x, up);
  be.swiglu(y2, y2, u2);
  return {std::memcmp(y1.raw(), y2.raw(), y1.nbytes()) == 0,
          std::memcmp(u1.raw(), u2.raw(), u1.nbytes()) == 0};
}

}  // namespace minfer::test
