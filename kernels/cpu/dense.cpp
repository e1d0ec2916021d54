#include "kernels/cpu/dense.h"

#include <cblas.h>
#include <omp.h>

#include <algorithm>

#include "engine/half.h"
#include "engine/thread_pool.h"
#include "kernels/cpu/act.h"
#include "kernels/cpu/prefill_gemm.h"

#if defined(__AVX512F__) || (defined(__AVX2__) && defined(__FMA__) && defined(__F16C__))
#include <immintrin.h>
#endif

namespace minfer {

namespace {

// Element e of a weight array as f32 (W is float, or uint16_t holding F16/BF16 bits).
inline float elem_at(DType, const float* p, int64_t e) {
  return p[e];
}
inline float elem_at(DType dt, const uint16_t* p, int64_t e) {
  return dt == DType::F16 ? f16_to_f32(p[e]) : bf16_to_f32(p[e]);
}

void convert_rows(DType dt, const uint16_t* src, float* dst, size_t n) {
  if (dt == DType::F16)
    f16_to_f32_n(src, dst, n);
  else
    bf16_to_f32_n(src, dst, n);
}

// One SIMD vector of weights as f32 (kLanes of them), and the vector ops the gemv needs.
#if defined(__AVX512F__)
#define MINFER_GEMV_SIMD 1
constexpr int kLanes = 16;
using VecF = __m512;
inline VecF vload(DType, const float* p) {
  return _mm512_loadu_ps(p);
}
inline VecF vload(DType dt, const uint16_t* p) {
  __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  if (dt == DType::F16) return _mm512_cvtph_ps(h);
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}
inline VecF vzero() {
  return _mm512_setzero_ps();
}
inline VecF vfmadd(VecF a, VecF b, VecF c) {
  return _mm512_fmadd_ps(a, b, c);
}
inline VecF vadd(VecF a, VecF b) {
  return _mm512_add_ps(a, b);
}
inline float vsum(VecF v) {
  return _mm512_reduce_add_ps(v);
}
#elif defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#define MINFER_GEMV_SIMD 1
constexpr int kLanes = 8;
using VecF = __m256;
inline VecF vload(DType, const float* p) {
  return _mm256_loadu_ps(p);
}
inline VecF vload(DType dt, const uint16_t* p) {
  __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  if (dt == DType::F16) return _mm256_cvtph_ps(h);
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}
inline VecF vzero() {
  return _mm256_setzero_ps();
}
inline VecF vfmadd(VecF a, VecF b, VecF c) {
  return _mm256_fmadd_ps(a, b, c);
}
inline VecF vadd(VecF a, VecF b) {
  return _mm256_add_ps(a, b);
}
inline float vsum(VecF v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
}
#endif

// Few rows of x (T <= kMaxGemvRows) against an [N, K] matrix: one streaming pass over W, each
// weight row read once and dotted with every x row; contiguous blocks of rows go to the thread
// pool (one thread below 64K weights, where waking a second one costs more than it saves).
// Decode is bound by memory bandwidth; this reads f32 weights faster than OpenBLAS sgemv here.
// NA independent accumulators per x row (4 / 2 / 1 for T = 1 / 2 / 3..4, the register budget):
// one chain of FMAs (4-cycle latency) per row would leave the kernel latency-bound in cache.
constexpr int64_t kMaxGemvRows = 4;
template <int T, typename W>
void gemv_rows(DType dt, const W* w, const float* x, int64_t ldx, float* y, int64_t ldy, int64_t K,
               int64_t n0, int64_t n1) {
  for (int64_t n = n0; n < n1; ++n) {
    const W* wr = w + n * K;
    float acc[T] = {};
    int64_t k = 0;
#if defined(MINFER_GEMV_SIMD)
    constexpr int NA = T == 1 ? 4 : T == 2 ? 2 : 1;
    VecF vacc[T][NA];
    for (int t = 0; t < T; ++t)
      for (int j = 0; j < NA; ++j) vacc[t][j] = vzero();
    for (; k + NA * kLanes <= K; k += NA * kLanes)
      for (int j = 0; j < NA; ++j) {
        const VecF wv = vload(dt, wr + k + j * kLanes);
        for (int t = 0; t < T; ++t)
          vacc[t][j] = vfmadd(wv, vload(DType::F32, x + t * ldx + k + j * kLanes), vacc[t][j]);
      }
    for (; k + kLanes <= K; k += kLanes) {
      const VecF wv = vload(dt, wr + k);
      for (int t = 0; t < T; ++t)
        vacc[t][0] = vfmadd(wv, vload(DType::F32, x + t * ldx + k), vacc[t][0]);
    }
    for (int t = 0; t < T; ++t) {
      VecF v = vacc[t][0];
      for (int j = 1; j < NA; ++j) v = vadd(v, vacc[t][j]);
      acc[t] = vsum(v);
    }
#endif
    for (; k < K; ++k) {
      const float wv = elem_at(dt, wr, k);
      for (int t = 0; t < T; ++t) acc[t] += wv * x[t * ldx + k];
    }
    for (int t = 0; t < T; ++t) y[t * ldy + n] = acc[t];
  }
}

// Rows n0..n1 of y = x · Wᵀ for T (1..4) rows of x: gemv_rows with T a template argument.
template <typename W>
void gemv_range(DType dt, const W* w, const float* x, int64_t T, int64_t ldx, float* y, int64_t ldy,
                int64_t K, int64_t n0, int64_t n1) {
  switch (T) {
    case 1:
      return gemv_rows<1>(dt, w, x, ldx, y, ldy, K, n0, n1);
    case 2:
      return gemv_rows<2>(dt, w, x, ldx, y, ldy, K, n0, n1);
    case 3:
      return gemv_rows<3>(dt, w, x, ldx, y, ldy, K, n0, n1);
    default:
      return gemv_rows<4>(dt, w, x, ldx, y, ldy, K, n0, n1);
  }
}
// The same for a weight tensor of any float dtype ([N, K], not transposed).
void gemv_range(const Tensor& w, const float* x, int64_t T, int64_t ldx, float* y, int64_t ldy,
                int64_t K, int64_t n0, int64_t n1) {
  if (w.dtype() == DType::F32)
    gemv_range(DType::F32, w.data<float>(), x, T, ldx, y, ldy, K, n0, n1);
  else
    gemv_range(w.dtype(), w.data<uint16_t>(), x, T, ldx, y, ldy, K, n0, n1);
}

template <typename W>
void few_rows_gemv(DType dt, const W* w, const float* x, int64_t T, int64_t ldx, float* y,
                   int64_t ldy, int64_t K, int64_t N) {
  if (T <= 0) return;
  parallel_for(N, K, int64_t(1) << 15,
               [&](int64_t n0, int64_t n1) { gemv_range(dt, w, x, T, ldx, y, ldy, K, n0, n1); });
}

// Whether dense_linear runs w on the streaming gemv for T rows (and so what the group entry
// points below may fuse): T <= 4, [N, K] storage, a float dtype.
bool on_gemv(const Tensor& w, bool transposed, int64_t T) {
  const DType dt = w.dtype();
  return T <= kMaxGemvRows && !transposed &&
         (dt == DType::F32 || dt == DType::F16 || dt == DType::BF16);
}

}  // namespace

void dense_linear(const Tensor& w, bool transposed, const float* x, int64_t T, int64_t ldx,
                  float* y, int64_t ldy, int64_t K, int64_t N, std::vector<float>& scratch) {
  const DType dt = w.dtype();
  if (dt == DType::F32) {
    const float* W = w.data<float>();
    if (on_gemv(w, transposed, T)) {
      few_rows_gemv(dt, W, x, T, ldx, y, ldy, K, N);
      return;
    }
    if (T == 1) {
      if (transposed)
        cblas_sgemv(CblasRowMajor, CblasTrans, int(K), int(N), 1.f, W, int(N), x, 1, 0.f, y, 1);
      else
        cblas_sgemv(CblasRowMajor, CblasNoTrans, int(N), int(K), 1.f, W, int(K), x, 1, 0.f, y, 1);
    } else {
      prefill_sgemm(x, T, ldx, W, transposed, y, ldy, K, N);
    }
    return;
  }
  MINFER_CHECK(dt == DType::F16 || dt == DType::BF16, "dense linear: unsupported dtype {}",
               dtype_name(dt));
  const uint16_t* W = w.data<uint16_t>();
  if (on_gemv(w, transposed, T)) {
    few_rows_gemv(dt, W, x, T, ldx, y, ldy, K, N);
    return;
  }
  if (!transposed && prefill_gemm_path() == PrefillGemm::Tiles) {
    // Each thread converts its own cache-sized tile of rows, then one sgemm on it.
    struct Ctx {
      DType dt;
      const uint16_t* w;
      int64_t K;
    } ctx{dt, W, K};
    prefill_tiles_sgemm(
        x, T, ldx,
        [](const void* c, int64_t n0, int64_t nr, float* dst) {
          const Ctx& a = *static_cast<const Ctx*>(c);
          convert_rows(a.dt, a.w + n0 * a.K, dst, size_t(nr * a.K));
        },
        &ctx, y, ldy, K, N);
    return;
  }
  // Tiled: convert ~1M weights at a time and multiply with sgemm.
  const int64_t tile_elems = int64_t(1) << 20;
  if (!transposed) {
    const int64_t rows = std::max<int64_t>(16, tile_elems / K);
    scratch.resize(size_t(std::min(rows, N) * K));
    for (int64_t n0 = 0; n0 < N; n0 += rows) {
      const int64_t nr = std::min(rows, N - n0);
#pragma omp parallel for if (nr * K >= 65536)
      for (int64_t r = 0; r < nr; ++r)
        convert_rows(dt, W + (n0 + r) * K, scratch.data() + r * K, size_t(K));
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, int(T), int(nr), int(K), 1.f, x,
                  int(ldx), scratch.data(), int(K), 0.f, y + n0, int(ldy));
    }
  } else {
    const int64_t rows = std::max<int64_t>(16, tile_elems / N);
    scratch.resize(size_t(std::min(rows, K) * N));
    for (int64_t k0 = 0; k0 < K; k0 += rows) {
      const int64_t kr = std::min(rows, K - k0);
#pragma omp parallel for if (kr * N >= 65536)
      for (int64_t r = 0; r < kr; ++r)
        convert_rows(dt, W + (k0 + r) * N, scratch.data() + r * N, size_t(N));
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, int(T), int(N), int(kr), 1.f, x + k0,
                  int(ldx), scratch.data(), int(N), k0 == 0 ? 0.f : 1.f, y, int(ldy));
    }
  }
}

bool dense_linear_group(const DenseGroupItem* items, int n, const float* x, int64_t T, int64_t ldx,
                        int64_t K) {
  if (T < 1) return false;
  int64_t rows = 0;
  for (int i = 0; i < n; ++i) {
    if (!on_gemv(*items[i].w, items[i].transposed, T) || items[i].w->dim(-1) != K) return false;
    rows += items[i].N;
  }
  parallel_for(rows, K, int64_t(1) << 15, [&](int64_t b, int64_t e) {
    int64_t off = 0;  // the first row of member i in the concatenation
    for (int i = 0; i < n && off < e; off += items[i].N, ++i) {
      const int64_t lo = std::max(b, off), hi = std::min(e, off + items[i].N);
      if (lo < hi)
        gemv_range(*items[i].w, x, T, ldx, items[i].y, items[i].ldy, K, lo - off, hi - off);
    }
  });
  return true;
}

bool dense_linear_swiglu(const Tensor& gate, const Tensor& up, const float* x, int64_t T,
                         int64_t ldx, float* y, int64_t ldy, float* u, int64_t ldu, int64_t K,
                         int64_t N) {
  if (T < 1 || !on_gemv(gate, false, T) || !on_gemv(up, false, T) || gate.dim(-1) != K ||
      up.dim(-1) != K || gate.dim(0) != N || up.dim(0) != N)
    return false;
  parallel_for(N, 2 * K, int64_t(1) << 15, [&](int64_t n0, int64_t n1) {
    gemv_range(gate, x, T, ldx, y, ldy, K, n0, n1);
    gemv_range(up, x, T, ldx, u, ldu, K, n0, n1);
    for (int64_t t = 0; t < T; ++t)
      for (int64_t c = n0; c < n1; ++c) y[t * ldy + c] = silu_mul(y[t * ldy + c], u[t * ldu + c]);
  });
  return true;
}

void dense_linear_ref(const Tensor& w, bool transposed, const float* x, int64_t T, float* y,
                      int64_t K, int64_t N) {
  const DType dt = w.dtype();
  for (int64_t t = 0; t < T; ++t)
    for (int64_t n = 0; n < N; ++n) {
      double acc = 0;
      for (int64_t k = 0; k < K; ++k) {
        const int64_t e = transposed ? k * N + n : n * K + k;
        const float wv = dt == DType::F32 ? w.data<float>()[e] : elem_at(dt, w.data<uint16_t>(), e);
        acc += double(wv) * x[t * K + k];
      }
      y[t * N + n] = float(acc);
    }
}

}  // namespace minfer
