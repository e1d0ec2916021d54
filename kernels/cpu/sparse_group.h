// Op groups for the sparse formats' decode path (SparseBitmask, Sparse24), shared by
// kernels/cpu/sparse.cpp and sparse24.cpp: the members' rows in one thread-pool dispatch, as the
// dense formats do (docs/performance.md, "Op groups"). x is prepared (rounded to 16-bit codes for
// int8 values) once by the caller; each row is computed by the same per-row kernel as a single
// linear(), so a group is bit-identical to one call per member.
#pragma once
#include <algorithm>
#include <cstdint>
#include <vector>

#include "engine/thread_pool.h"
#include "kernels/cpu/act.h"

namespace minfer::sparse_detail {

// Work units per pool chunk of the sparse decode loops (a chunk gets at least this many inputs
// times rows; one chunk, run inline, below it).
constexpr int64_t kDecodeMinWork = int64_t(1) << 15;

// rows(i, r0, r1) for rows [r0, r1) of member i, over the joint rows of n members (member i has
// N[i] rows), all in one pool dispatch; work per row: K.
template <class F>
void group_rows(const int64_t* N, int n, int64_t K, F&& rows) {
  thread_local std::vector<int64_t> first_buf;
  first_buf.assign(size_t(n) + 1, 0);
  for (int i = 0; i < n; ++i) first_buf[size_t(i) + 1] = first_buf[size_t(i)] + N[i];
  // The workers see the caller's table through this pointer (a thread_local named in the lambda
  // would be the worker's own, empty, instance).
  const int64_t* const first = first_buf.data();
  parallel_for(first[n], K, kDecodeMinWork, [&](int64_t g0, int64_t g1) {
    int m = 0;
    while (first[m + 1] <= g0) ++m;
    for (int64_t g = g0; g < g1; ++m) {
      const int64_t e = std::min(g1, first[m + 1]);
      if (e > g) rows(m, g - first[m], e - first[m]);
      g = e;
    }
  });
}

// Gate and up rows [n0, n1) by rows(0 | 1, n0, n1), then y = silu_mul(y, u) on those columns
// (kernels/cpu/act.h, the formula of the unfused swiglu op): one pool dispatch over F rows.
template <class F>
void swiglu_rows(int64_t F_, int64_t K, float* y, int64_t ldy, const float* u, int64_t ldu,
                 int64_t T, F&& rows) {
  parallel_for(F_, 2 * K, kDecodeMinWork, [&](int64_t n0, int64_t n1) {
    rows(0, n0, n1);
    rows(1, n0, n1);
    for (int64_t t = 0; t < T; ++t)
      for (int64_t n = n0; n < n1; ++n) y[t * ldy + n] = silu_mul(y[t * ldy + n], u[t * ldu + n]);
  });
}

}  // namespace minfer::sparse_detail
