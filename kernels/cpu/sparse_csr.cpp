#include "kernels/cpu/sparse_csr.h"

#include <fmt/ranges.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <vector>

#include "engine/error.h"
#include "engine/thread_pool.h"
#include "kernels/cpu/env_switch.h"
#include "kernels/cpu/prefill_gemm.h"
#include "kernels/cpu/sparse.h"
#include "kernels/cpu/sparse_group.h"
#include "kernels/cpu/sparse_values.h"

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)
#include <immintrin.h>
#define MINFER_CSR_AVX512 1
#endif
// The AVX2 kernels are compiled on every x86-64 build (function target attributes, whatever
// -march says) and chosen at run time (cpuid) where the AVX-512 ones are not built.
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define MINFER_CSR_AVX2 1
#define MINFER_CSR_AVX2_FN __attribute__((target("avx2,fma,f16c")))
#endif

namespace minfer {

namespace {

using Vals = sparse_detail::SparseValues;

Vals vals_of(const SparseCsr& w) {
  return sparse_detail::sparse_values_of(*w.values);
}

// Row n's kept count and its first column.
struct Row {
  int64_t c;
  const uint16_t* col;
};
inline Row row_of(const SparseCsr& w, int64_t n) {
  const int64_t* rp = w.row_ptr.data<int64_t>();
  return {rp[n + 1] - rp[n], w.col.data<uint16_t>() + n * w.col.dim(1)};
}

// Value j of row n without the int8 row scale (u - 128 for codes): the SIMD kernels' summand.
inline float raw_value(const Vals& v, int64_t n, int64_t j) {
  return v.kind == Vals::I8 ? float(int(static_cast<const uint8_t*>(v.p)[n * v.ld + j]) - 128)
                            : v.at(n, j);
}
inline float row_scale(const Vals& v, int64_t n) {
  return v.kind == Vals::I8 ? v.scale(n) : 1.f;
}

void decode_ref_rows(const SparseCsr& w, const Vals& v, const float* x, int64_t T, int64_t ldx,
                     float* y, int64_t ldy, int64_t n0, int64_t n1) {
  for (int64_t n = n0; n < n1; ++n) {
    const Row r = row_of(w, n);
    for (int64_t t = 0; t < T; ++t) {
      float s = 0.f;
      for (int64_t j = 0; j < r.c; ++j) s += v.at(n, j) * x[t * ldx + r.col[j]];
      y[t * ldy + n] = s;
    }
  }
}

#ifdef MINFER_CSR_AVX2
bool cpu_has_avx2() {
  // F16C is not a feature clang's __builtin_cpu_supports names; every AVX2 CPU has it (it came
  // with Ivy Bridge and Piledriver, before AVX2).
  static const bool ok = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return ok;
}

// 8 values of row n from j as f32 lanes (int8: u - 128).
MINFER_CSR_AVX2_FN inline __m256 load8(const Vals& v, int64_t n, int64_t j) {
  switch (v.kind) {
    case Vals::F32:
      return _mm256_loadu_ps(static_cast<const float*>(v.p) + n * v.ld + j);
    case Vals::F16:
      return _mm256_cvtph_ps(_mm_loadu_si128(
          reinterpret_cast<const __m128i*>(static_cast<const uint16_t*>(v.p) + n * v.ld + j)));
    case Vals::BF16:
      return _mm256_castsi256_ps(_mm256_slli_epi32(
          _mm256_cvtepu16_epi32(_mm_loadu_si128(
              reinterpret_cast<const __m128i*>(static_cast<const uint16_t*>(v.p) + n * v.ld + j))),
          16));
    case Vals::I8:
      break;
  }
  return _mm256_cvtepi32_ps(_mm256_sub_epi32(
      _mm256_cvtepu8_epi32(_mm_loadl_epi64(
          reinterpret_cast<const __m128i*>(static_cast<const uint8_t*>(v.p) + n * v.ld + j))),
      _mm256_set1_epi32(128)));
}

MINFER_CSR_AVX2_FN inline float hsum8(__m256 a) {
  __m128 h = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
  h = _mm_add_ps(h, _mm_movehl_ps(h, h));
  h = _mm_add_ss(h, _mm_movehdup_ps(h));
  return _mm_cvtss_f32(h);
}

// Rows [n0, n1) against TT token rows: 8 kept weights per step, x gathered at their columns.
template <int TT>
MINFER_CSR_AVX2_FN void rows_avx2(const SparseCsr& w, const Vals& v, const float* x, int64_t ldx,
                                  float* y, int64_t ldy, int64_t n0, int64_t n1) {
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  for (int64_t n = n0; n < n1; ++n) {
    const Row r = row_of(w, n);
    __m256 acc[TT];
    for (int t = 0; t < TT; ++t) acc[t] = _mm256_setzero_ps();
    int64_t j = 0;
    for (; j + 8 <= r.c; j += 8) {
      const __m256i idx =
          _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(r.col + j)));
      const __m256 wv = load8(v, n, j);
      for (int t = 0; t < TT; ++t)
        acc[t] = _mm256_fmadd_ps(wv, _mm256_i32gather_ps(x + t * ldx, idx, 4), acc[t]);
    }
    if (j < r.c) {
      // The tail: columns and raw values copied into zeroed lanes (no read past the row's
      // count), x gathered under the lane mask (the empty lanes read nothing).
      const int rem = int(r.c - j);
      alignas(32) int32_t ci[8] = {};
      alignas(32) float wb[8] = {};
      for (int i = 0; i < rem; ++i) {
        ci[i] = r.col[j + i];
        wb[i] = raw_value(v, n, j + i);
      }
      const __m256 mk = _mm256_castsi256_ps(_mm256_cmpgt_epi32(_mm256_set1_epi32(rem), lane));
      const __m256i idx = _mm256_load_si256(reinterpret_cast<const __m256i*>(ci));
      const __m256 wv = _mm256_load_ps(wb);
      for (int t = 0; t < TT; ++t)
        acc[t] = _mm256_fmadd_ps(
            wv, _mm256_mask_i32gather_ps(_mm256_setzero_ps(), x + t * ldx, idx, mk, 4), acc[t]);
    }
    const float s = row_scale(v, n);
    for (int t = 0; t < TT; ++t) y[t * ldy + n] = hsum8(acc[t]) * s;
  }
}
#endif

#ifdef MINFER_CSR_AVX512
// 16 values of row n from j under lane mask mk (masked-off lanes 0 for float values, -128 for
// int8 codes: their gathered x is 0), as f32 lanes (int8: u - 128).
inline __m512 load16(const Vals& v, int64_t n, int64_t j, __mmask16 mk) {
  switch (v.kind) {
    case Vals::F32:
      return _mm512_maskz_loadu_ps(mk, static_cast<const float*>(v.p) + n * v.ld + j);
    case Vals::F16:
      return _mm512_cvtph_ps(
          _mm256_maskz_loadu_epi16(mk, static_cast<const uint16_t*>(v.p) + n * v.ld + j));
    case Vals::BF16:
      return _mm512_castsi512_ps(
          _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(
                                mk, static_cast<const uint16_t*>(v.p) + n * v.ld + j)),
                            16));
    case Vals::I8:
      break;
  }
  return _mm512_cvtepi32_ps(
      _mm512_sub_epi32(_mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(
                           mk, static_cast<const uint8_t*>(v.p) + n * v.ld + j)),
                       _mm512_set1_epi32(128)));
}

// Rows [n0, n1) against TT token rows: 16 kept weights per step, the tail under a lane mask.
template <int TT>
void rows_avx512(const SparseCsr& w, const Vals& v, const float* x, int64_t ldx, float* y,
                 int64_t ldy, int64_t n0, int64_t n1) {
  for (int64_t n = n0; n < n1; ++n) {
    const Row r = row_of(w, n);
    __m512 acc[TT];
    for (int t = 0; t < TT; ++t) acc[t] = _mm512_setzero_ps();
    for (int64_t j = 0; j < r.c; j += 16) {
      const __mmask16 mk =
          r.c - j >= 16 ? __mmask16(0xffff) : __mmask16((1u << unsigned(r.c - j)) - 1);
      const __m512i idx = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(mk, r.col + j));
      const __m512 wv = load16(v, n, j, mk);
      for (int t = 0; t < TT; ++t)
        acc[t] = _mm512_fmadd_ps(
            wv, _mm512_mask_i32gather_ps(_mm512_setzero_ps(), mk, idx, x + t * ldx, 4), acc[t]);
    }
    const float s = row_scale(v, n);
    for (int t = 0; t < TT; ++t) y[t * ldy + n] = _mm512_reduce_add_ps(acc[t]) * s;
  }
}
#endif

using sparse_detail::Isa;
using sparse_detail::isa_name;

Isa isa_of(const std::string& isa) {
  return sparse_detail::isa_named(isa, sparse_csr_decode_isas(), "sparse-csr");
}

// The best decode kernel set this build holds and this CPU runs, or the one MINFER_SPARSE_ISA
// names.
Isa best_isa() {
  static const Isa forced =
      sparse_detail::forced_isa(sparse_csr_decode_isas(), "sparse-csr", Isa(-1));
  if (forced != Isa(-1)) return forced;
#if defined(MINFER_CSR_AVX512)
  return Isa::Avx512;  // built for the machine (-march): its CPU has AVX-512
#elif defined(MINFER_CSR_AVX2)
  return cpu_has_avx2() ? Isa::Avx2 : Isa::Scalar;
#else
  return Isa::Scalar;
#endif
}

// x as the decode rows read it (no preparation: the kernels gather f32 x).
struct Prep {
  const float* x = nullptr;
  int64_t T = 0, ldx = 0;
};

template <int TT>
void rows_t(const SparseCsr& w, const Vals& v, Isa isa, const Prep& p, float* y, int64_t ldy,
            int64_t n0, int64_t n1) {
#ifdef MINFER_CSR_AVX512
  if (isa == Isa::Avx512) return rows_avx512<TT>(w, v, p.x, p.ldx, y, ldy, n0, n1);
#endif
#ifdef MINFER_CSR_AVX2
  if (isa == Isa::Avx2) return rows_avx2<TT>(w, v, p.x, p.ldx, y, ldy, n0, n1);
#endif
  (void)isa;
  decode_ref_rows(w, v, p.x, TT, p.ldx, y, ldy, n0, n1);
}

// Output rows [n0, n1) of W against T <= 4 rows of x with the kernel set `isa`.
void rows(const SparseCsr& w, const Vals& v, Isa isa, const Prep& p, float* y, int64_t ldy,
          int64_t n0, int64_t n1) {
  switch (p.T) {
    case 1:
      return rows_t<1>(w, v, isa, p, y, ldy, n0, n1);
    case 2:
      return rows_t<2>(w, v, isa, p, y, ldy, n0, n1);
    case 3:
      return rows_t<3>(w, v, isa, p, y, ldy, n0, n1);
    default:
      return rows_t<4>(w, v, isa, p, y, ldy, n0, n1);
  }
}

// Work per output row for the pool's chunking: the mean kept count (at least 1) times T.
int64_t row_work(const SparseCsr& w, int64_t N) {
  return std::max<int64_t>(1, w.row_ptr.data<int64_t>()[N] / std::max<int64_t>(N, 1));
}

// Rows in blocks over the pool, K work units per row as the other sparse decode loops (and the op
// groups, which share their chunking) count it: a gather per 8 kept weights costs about what the
// bitmask kernels spend per 8 inputs.
void decode(const SparseCsr& w, const Vals& v, Isa isa, const float* x, int64_t T, int64_t ldx,
            float* y, int64_t ldy, int64_t K, int64_t N) {
  const Prep p{x, T, ldx};
  parallel_for(N, K, sparse_detail::kDecodeMinWork,
               [&](int64_t n0, int64_t n1) { rows(w, v, isa, p, y, ldy, n0, n1); });
}

// T > 4: blocks of kTB token rows; xᵀ [K, kTB] (zero past the block's rows) is built once per
// block, then each weight row adds w_j * xᵀ[col_j, :] into kTB accumulators.
constexpr int64_t kTB = 64;

// acc[0, kTB) += w * xr[0, kTB) (restrict: vectorized on every target).
inline void axpy_block(float* __restrict acc, const float* __restrict xr, float w) {
  for (int64_t t = 0; t < kTB; ++t) acc[t] += w * xr[t];
}

// Output rows [n0, n1) of a block of tb token rows from xᵀ: acc in memory, the portable path.
void prefill_rows(const SparseCsr& w, const Vals& v, const float* xt, float* y, int64_t ldy,
                  int64_t tb, int64_t n0, int64_t n1) {
  alignas(64) float acc[kTB];
  for (int64_t n = n0; n < n1; ++n) {
    const Row r = row_of(w, n);
    std::fill(acc, acc + kTB, 0.f);
    for (int64_t j = 0; j < r.c; ++j)
      axpy_block(acc, xt + int64_t(r.col[j]) * kTB, raw_value(v, n, j));
    const float s = row_scale(v, n);
    for (int64_t t = 0; t < tb; ++t) y[t * ldy + n] = acc[t] * s;
  }
}

#ifdef MINFER_CSR_AVX2
// The same with the 64 accumulators in 8 registers.
MINFER_CSR_AVX2_FN void prefill_rows_avx2(const SparseCsr& w, const Vals& v, const float* xt,
                                          float* y, int64_t ldy, int64_t tb, int64_t n0,
                                          int64_t n1) {
  static_assert(kTB == 64);
  alignas(32) float acc[kTB];
  for (int64_t n = n0; n < n1; ++n) {
    const Row r = row_of(w, n);
    __m256 a[8];
    for (int i = 0; i < 8; ++i) a[i] = _mm256_setzero_ps();
    for (int64_t j = 0; j < r.c; ++j) {
      const __m256 wj = _mm256_set1_ps(raw_value(v, n, j));
      const float* xr = xt + int64_t(r.col[j]) * kTB;
      for (int i = 0; i < 8; ++i) a[i] = _mm256_fmadd_ps(wj, _mm256_loadu_ps(xr + 8 * i), a[i]);
    }
    for (int i = 0; i < 8; ++i) _mm256_store_ps(acc + 8 * i, a[i]);
    const float s = row_scale(v, n);
    for (int64_t t = 0; t < tb; ++t) y[t * ldy + n] = acc[t] * s;
  }
}
#endif

// Above this share of kept weights the prefill scatters rows into f32 tiles and runs sgemm
// (prefill_tiles_sgemm, the tiles the dense fp16 / quantized prefill use); at or below it, the
// SpMM above. On the AVX2 Zen 3 (bench_sparse 2 csr, T = 128) the SpMM ran 0.75-1.12x dense at 80 %
// sparsity and 1.09-2.74x at 90 % (f32, int8): the crossover sits between, at 85 %.
constexpr double kSpmmMaxDensity = 0.15;

void prefill_tiles(const SparseCsr& w, const Vals& v, const float* x, int64_t T, int64_t ldx,
                   float* y, int64_t ldy, int64_t K, int64_t N) {
  struct Ctx {
    const SparseCsr* w;
    const Vals* v;
    int64_t K;
  } ctx{&w, &v, K};
  // Rows n0 .. n0 + nr - 1 as f32 [nr, K]: zeros, then each row's kept values at their columns.
  prefill_tiles_sgemm(
      x, T, ldx,
      [](const void* c, int64_t n0, int64_t nr, float* dst) {
        const Ctx& a = *static_cast<const Ctx*>(c);
        std::fill(dst, dst + nr * a.K, 0.f);
        for (int64_t r = 0; r < nr; ++r) {
          const Row row = row_of(*a.w, n0 + r);
          for (int64_t j = 0; j < row.c; ++j) dst[r * a.K + row.col[j]] = a.v->at(n0 + r, j);
        }
      },
      &ctx, y, ldy, K, N);
}

void prefill(const SparseCsr& w, const Vals& v, const float* x, int64_t T, int64_t ldx, float* y,
             int64_t ldy, int64_t K, int64_t N) {
  if (double(w.row_ptr.data<int64_t>()[N]) > kSpmmMaxDensity * double(N) * double(K))
    return prefill_tiles(w, v, x, T, ldx, y, ldy, K, N);
  static thread_local std::vector<float> xt_buf;
  if (xt_buf.size() < size_t(K * kTB)) xt_buf.resize(size_t(K * kTB));
  float* const xt = xt_buf.data();
#ifdef MINFER_CSR_AVX2
  const bool avx2 = best_isa() != Isa::Scalar;  // AVX-512 CPUs run the AVX2 rows too
#endif
  for (int64_t t0 = 0; t0 < T; t0 += kTB) {
    const int64_t tb = std::min(kTB, T - t0);
    parallel_for(K, kTB, sparse_detail::kDecodeMinWork, [&](int64_t k0, int64_t k1) {
      for (int64_t k = k0; k < k1; ++k) {
        float* dst = xt + k * kTB;
        for (int64_t t = 0; t < tb; ++t) dst[t] = x[(t0 + t) * ldx + k];
        for (int64_t t = tb; t < kTB; ++t) dst[t] = 0.f;
      }
    });
    float* yb = y + t0 * ldy;
    parallel_for(N, row_work(w, N) * kTB, sparse_detail::kDecodeMinWork,
                 [&](int64_t n0, int64_t n1) {
#ifdef MINFER_CSR_AVX2
                   if (avx2) return prefill_rows_avx2(w, v, xt, yb, ldy, tb, n0, n1);
#endif
                   prefill_rows(w, v, xt, yb, ldy, tb, n0, n1);
                 });
  }
}

// The pieces the shared op-group drivers need (kernels/cpu/sparse_group.h).
struct Fmt {
  using W = SparseCsr;
  using Vals = ::minfer::Vals;
  using Isa = ::minfer::Isa;
  using Prep = ::minfer::Prep;
  static Isa best_isa() { return ::minfer::best_isa(); }
  static Vals vals_of(const W& w) { return ::minfer::vals_of(w); }
  static Isa effective_isa(Isa isa, const Vals&) { return isa; }  // every value format
  static Isa i8_reader(Isa, const Vals&) { return Isa::Scalar; }  // x is never re-coded
  static void prepare(Isa, const float* x, int64_t T, int64_t ldx, int64_t, Prep& p) {
    p = Prep{x, T, ldx};
  }
  static void rows(const W& w, const Vals& v, Isa isa, const Prep& p, float* y, int64_t ldy,
                   int64_t, int64_t, int64_t n0, int64_t n1) {
    ::minfer::rows(w, v, isa, p, y, ldy, n0, n1);
  }
};

}  // namespace

bool sparse_csr_beats_bitmask(const SparseBitmask& w, int64_t in) {
  if (best_isa() == Isa::Scalar) return false;
  const Vals v = sparse_detail::sparse_values_of(*w.values);
  const double sparsity = 1.0 - double(w.values->in) / double(in);  // padded rows counted
  const std::string bitmask_isa = sparse_linear_isa(w);
  if (bitmask_isa == "scalar") return sparsity >= 0.495;  // fp16 / bf16 values: 11-23x on AVX2
  if (bitmask_isa == "avx2")
    return (v.kind == Vals::F32 && sparsity >= 0.495) || (v.kind == Vals::I8 && sparsity >= 0.795);
  return v.kind == Vals::F32 && sparsity >= 0.895;  // the bitmask's AVX-512 VBMI2 kernels
}

bool sparse_csr_upload(Linear& w) {
  static const bool enabled = env_switch("MINFER_SPARSE_CSR_AT_LOAD", "1", {"0", "1"}) == "1";
  const SparseBitmask* s = std::get_if<SparseBitmask>(&w.repr);
  if (!enabled || !s || w.in > SparseCsr::kMaxIn) return false;
  const int64_t N = w.out, K = w.in;
  if (!sparse_csr_beats_bitmask(*s, K)) return false;
  const Tensor mask = s->bitmask;
  SparseCsr r = sparse_csr_from_bitmask(*s, K, N, w.name);
  w.repr = std::move(r);
  release_mapped_pages(mask);  // the columns replace the mask in memory
  return true;
}

namespace {
// The kernels index x by the stored columns: W must be [N, K] exactly.
void check_shape(const SparseCsr& w, int64_t K, int64_t N, const char* who) {
  MINFER_CHECK(w.in == K && w.row_ptr.numel() == N + 1 && w.col.ndim() == 2 && w.col.dim(0) == N,
               "{}: the weight is [{}, {}], the call asks for [{}, {}]", who, w.row_ptr.numel() - 1,
               w.in, N, K);
}
}  // namespace

std::vector<std::string> sparse_csr_decode_isas() {
  std::vector<std::string> r;
#ifdef MINFER_CSR_AVX512
  r.push_back("avx512");
#endif
#ifdef MINFER_CSR_AVX2
  if (cpu_has_avx2()) r.push_back("avx2");
#endif
  r.push_back("scalar");
  return r;
}

const char* sparse_csr_linear_isa() {
  return isa_name(best_isa());
}

void sparse_csr_linear_decode_isa(const SparseCsr& w, const std::string& isa, const float* x,
                                  int64_t T, int64_t ldx, float* y, int64_t ldy, int64_t K,
                                  int64_t N) {
  const Isa i = isa_of(isa);
  MINFER_CHECK(T >= 1 && T <= 4 && ldx >= K && ldy >= N,
               "sparse_csr_linear_decode_isa: need 1 <= T <= 4, ldx >= K, ldy >= N (T {}, ldx {}, "
               "K {}, ldy {}, N {})",
               T, ldx, K, ldy, N);
  check_shape(w, K, N, "sparse_csr_linear_decode_isa");
  decode(w, vals_of(w), i, x, T, ldx, y, ldy, K, N);
}

void sparse_csr_linear_ref(const SparseCsr& w, const float* x, int64_t T, int64_t ldx, float* y,
                           int64_t ldy, int64_t K, int64_t N) {
  MINFER_CHECK(T >= 0 && ldx >= K && ldy >= N,
               "sparse_csr_linear_ref: bad strides (T {}, ldx {} < K {} or ldy {} < N {})", T, ldx,
               K, ldy, N);
  check_shape(w, K, N, "sparse_csr_linear_ref");
  decode_ref_rows(w, vals_of(w), x, T, ldx, y, ldy, 0, N);
}

void sparse_csr_linear(const SparseCsr& w, const float* x, int64_t T, int64_t ldx, float* y,
                       int64_t ldy, int64_t K, int64_t N) {
  MINFER_CHECK(T >= 0 && ldx >= K && ldy >= N,
               "sparse_csr_linear: bad strides (T {}, ldx {} < K {} or ldy {} < N {})", T, ldx, K,
               ldy, N);
  check_shape(w, K, N, "sparse_csr_linear");
  if (T == 0 || N == 0) return;
  if (T <= 4) return decode(w, vals_of(w), best_isa(), x, T, ldx, y, ldy, K, N);
  prefill(w, vals_of(w), x, T, ldx, y, ldy, K, N);
}

void sparse_csr_linear_group(const SparseCsrGroupItem* items, int n, const float* x, int64_t T,
                             int64_t ldx, int64_t K) {
  for (int i = 0; i < n; ++i)
    if (items[i].w) check_shape(*items[i].w, K, items[i].N, "sparse_csr_linear_group");
  sparse_detail::linear_group<Fmt>(items, n, x, T, ldx, K, "sparse_csr_linear_group",
                                   sparse_csr_linear);
}

void sparse_csr_linear_swiglu(const SparseCsr& gate, const SparseCsr& up, const float* x, int64_t T,
                              int64_t ldx, float* y, int64_t ldy, float* u, int64_t ldu, int64_t K,
                              int64_t F) {
  check_shape(gate, K, F, "sparse_csr_linear_swiglu (gate)");
  check_shape(up, K, F, "sparse_csr_linear_swiglu (up)");
  sparse_detail::linear_swiglu<Fmt>(gate, up, x, T, ldx, y, ldy, u, ldu, K, F,
                                    "sparse_csr_linear_swiglu", sparse_csr_linear);
}

}  // namespace minfer
