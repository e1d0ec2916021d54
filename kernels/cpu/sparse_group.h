// Op groups for the sparse formats' decode path (SparseBitmask, Sparse24), shared by
// kernels/cpu/sparse.cpp and sparse24.cpp: the members' rows in one thread-pool dispatch, as the
// dense formats do (docs/performance.md, "Op groups"). x is prepared (rounded to 16-bit codes for
// int8 values) once by the caller; each row is computed by the same per-row kernel as a single
// linear(), so a group is bit-identical to one call per member.
#pragma once
#include <fmt/ranges.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <vector>

#include "engine/error.h"
#include "engine/thread_pool.h"
#include "kernels/cpu/act.h"

namespace minfer::sparse_detail {

// The decode kernel sets of the sparse formats (kernels/cpu/sparse.h, sparse24.h, sparse_csr.h).
enum class Isa { Scalar, Avx2, Avx512 };

inline const char* isa_name(Isa i) {
  return i == Isa::Avx512 ? "avx512" : i == Isa::Avx2 ? "avx2" : "scalar";
}

// The kernel set named `isa`, one of `have` (the format's *_decode_isas()); otherwise an error
// naming `format`, the set and the available ones.
inline Isa isa_named(const std::string& isa, const std::vector<std::string>& have,
                     const char* format) {
  MINFER_CHECK(std::find(have.begin(), have.end(), isa) != have.end(),
               "{} decode kernel set '{}' is not built or not supported here (available: {})",
               format, isa, fmt::join(have, ", "));
  return isa == "avx512" ? Isa::Avx512 : isa == "avx2" ? Isa::Avx2 : Isa::Scalar;
}

// The set the environment variable MINFER_SPARSE_ISA names (checked as isa_named does; for timing
// one kernel set against another), or `unset` where it is empty or absent.
inline Isa forced_isa(const std::vector<std::string>& have, const char* format, Isa unset) {
  const char* e = std::getenv("MINFER_SPARSE_ISA");
  return e && *e ? isa_named(e, have, format) : unset;
}

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

// The T <= 4 op-group and fused gate·up drivers both sparse formats share. Fmt (a struct in each
// kernel file) supplies the format's pieces: types W (the weight), Vals, Isa (with Isa::Scalar),
// Prep; static best_isa(), vals_of(w), effective_isa(isa, vals) (the kernel set that runs those
// values), i8_reader(isa, vals) (the set that reads x as int8 codes, Scalar if none), prepare(i8,
// x, T, ldx, K, prep) (x rounded once for that reader) and rows(w, vals, isa, prep, y, ldy, K, N,
// n0, n1) (output rows [n0, n1) of one weight, as a single linear() computes them).
template <class Fmt, class Item>
void decode_group(const Item* items, int n, const float* x, int64_t T, int64_t ldx, int64_t K) {
  using Vals = typename Fmt::Vals;
  using Isa = typename Fmt::Isa;
  thread_local std::vector<Vals> vals;
  thread_local std::vector<Isa> isas;
  thread_local std::vector<int64_t> ns;
  vals.resize(size_t(n));
  isas.resize(size_t(n));
  ns.resize(size_t(n));
  const Isa best = Fmt::best_isa();
  Isa i8 = Isa::Scalar;
  for (int i = 0; i < n; ++i) {
    vals[size_t(i)] = Fmt::vals_of(*items[i].w);
    isas[size_t(i)] = Fmt::effective_isa(best, vals[size_t(i)]);
    ns[size_t(i)] = items[i].N;
    const Isa r = Fmt::i8_reader(best, vals[size_t(i)]);
    if (r != Isa::Scalar) i8 = r;  // every int8 member has the same reader: best's
  }
  typename Fmt::Prep p;
  Fmt::prepare(i8, x, T, ldx, K, p);
  // The workers see the caller's tables through these pointers (thread_locals named in the
  // lambda would be each worker's own, empty, instances).
  const Vals* const V = vals.data();
  const Isa* const I = isas.data();
  group_rows(ns.data(), n, K, [&](int m, int64_t r0, int64_t r1) {
    Fmt::rows(*items[m].w, V[m], I[m], p, items[m].y, items[m].ldy, K, items[m].N, r0, r1);
  });
}

template <class Fmt>
void decode_swiglu(const typename Fmt::W& gate, const typename Fmt::W& up, const float* x,
                   int64_t T, int64_t ldx, float* y, int64_t ldy, float* u, int64_t ldu, int64_t K,
                   int64_t F) {
  using Isa = typename Fmt::Isa;
  const Isa best = Fmt::best_isa();
  const typename Fmt::Vals vg = Fmt::vals_of(gate), vu = Fmt::vals_of(up);
  const Isa ig = Fmt::effective_isa(best, vg), iu = Fmt::effective_isa(best, vu);
  const Isa rg = Fmt::i8_reader(best, vg), ru = Fmt::i8_reader(best, vu);
  typename Fmt::Prep p;
  Fmt::prepare(rg != Isa::Scalar ? rg : ru, x, T, ldx, K, p);
  swiglu_rows(F, K, y, ldy, u, ldu, T, [&](int m, int64_t n0, int64_t n1) {
    if (m == 0)
      Fmt::rows(gate, vg, ig, p, y, ldy, K, F, n0, n1);
    else
      Fmt::rows(up, vu, iu, p, u, ldu, K, F, n0, n1);
  });
}

// The op-group entry point every sparse format shares (sparse_linear_group, sparse24_linear_group,
// sparse_csr_linear_group): the argument checks, naming `who`; T > 4 as one `linear(w, x, T, ldx,
// y, ldy, K, N)` per member; T <= 4 through decode_group.
template <class Fmt, class Item, class LinearFn>
void linear_group(const Item* items, int n, const float* x, int64_t T, int64_t ldx, int64_t K,
                  const char* who, LinearFn&& linear) {
  MINFER_CHECK(n >= 0 && T >= 0 && ldx >= K, "{}: {} matrices, T {}, ldx {} < K {}", who, n, T, ldx,
               K);
  for (int i = 0; i < n; ++i)
    MINFER_CHECK(items[i].w && items[i].ldy >= items[i].N,
                 "{}: member {} has no weight or ldy {} < N {}", who, i, items[i].ldy, items[i].N);
  if (T == 0 || n == 0) return;
  if (T > 4) {
    for (int i = 0; i < n; ++i)
      linear(*items[i].w, x, T, ldx, items[i].y, items[i].ldy, K, items[i].N);
    return;
  }
  decode_group<Fmt>(items, n, x, T, ldx, K);
}

// The fused gate·up + SiLU·mul entry point every sparse format shares: the stride checks, naming
// `who`; T > 4 as linear, linear, then silu_mul (the unfused ops' formula); T <= 4 through
// decode_swiglu.
template <class Fmt, class LinearFn>
void linear_swiglu(const typename Fmt::W& gate, const typename Fmt::W& up, const float* x,
                   int64_t T, int64_t ldx, float* y, int64_t ldy, float* u, int64_t ldu, int64_t K,
                   int64_t F, const char* who, LinearFn&& linear) {
  MINFER_CHECK(T >= 0 && ldx >= K && ldy >= F && ldu >= F,
               "{}: bad strides (T {}, ldx {}, K {}, ldy {}, ldu {}, F {})", who, T, ldx, K, ldy,
               ldu, F);
  if (T == 0) return;
  if (T > 4) {
    linear(gate, x, T, ldx, y, ldy, K, F);
    linear(up, x, T, ldx, u, ldu, K, F);
    for (int64_t t = 0; t < T; ++t)
      for (int64_t c = 0; c < F; ++c) y[t * ldy + c] = silu_mul(y[t * ldy + c], u[t * ldu + c]);
    return;
  }
  decode_swiglu<Fmt>(gate, up, x, T, ldx, y, ldy, u, ldu, K, F);
}

}  // namespace minfer::sparse_detail
