// Quantized linear kernels (CPU): argument checks, dispatch, the scalar reference path and the
// prefill path (f32 tiles of W times sgemm). The SIMD decode kernels live in the sibling files
// quant_avx512.cpp and quant_avx2.cpp; shared structs and the row tiling in quant_impl.h.
// Legend: T rows of x, K = in features, N = out features, Kp = K padded to 64, G = weight group.
#include "kernels/cpu/quant.h"

#include <cblas.h>
#include <omp.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "kernels/common/quant_math.h"
#include "kernels/cpu/act.h"
#include "kernels/cpu/env_switch.h"
#include "kernels/cpu/quant_act.h"
#include "kernels/cpu/quant_act_impl.h"
#include "kernels/cpu/quant_impl.h"

namespace minfer {

using namespace qcpu;

namespace {

void check_call(const Quantized& w, int64_t T, int64_t ldx, int64_t ldy, int64_t K, int64_t N) {
  // The format's invariants were checked when the Linear was made or loaded
  // (FormatTraits<Quantized>::check, naming the tensor); debug builds check again.
  MINFER_DCHECK((FormatTraits<Quantized>::check(w, K, N, "quantized_linear"), true), "");
  MINFER_CHECK(T >= 0 && ldx >= K && ldy >= N,
               "quantized_linear: bad strides (T {}, ldx {} < K {} or ldy {} < N {})", T, ldx, K,
               ldy, N);
}

// The call's weight description and its spans (one per group; groups of an odd number of 32s
// still start and end on multiples of 32). `spans` owns the storage a.spans points to.
QArgs make_args(const Quantized& w, int64_t K, std::vector<Span>& spans) {
  QArgs a;
  a.scheme = w.scheme;
  a.codes = w.codes.data<uint8_t>();
  a.rb = w.codes.dim(1);
  a.K = K;
  a.Kp = qm::padded_k(K);
  a.G = w.group;
  a.groups = qm::ceil_div(K, w.group);
  a.per_tensor = w.per_tensor;
  a.il = w.interleave;
  a.zeros = w.zeros.defined() ? w.zeros.data<uint8_t>() : nullptr;
  if (w.scale_codes.defined()) {
    a.sc = w.scale_codes.data<int8_t>();
    a.ss = w.scale_scales.data<float>();
    a.offset = w.scale_offset;
  } else {
    a.scales = w.scales.data<float>();
  }
  spans.clear();
  if (a.groups == 1) {
    spans.push_back({0, a.Kp, 0});
  } else {  // G < K: a multiple of 32 (check_quantized); the last span takes the padding
    for (int64_t g = 0; g < a.groups; ++g)
      spans.push_back({g * a.G, g == a.groups - 1 ? a.Kp : (g + 1) * a.G, g});
  }
  a.spans = spans.data();
  a.nspans = int64_t(spans.size());
  return a;
}

// Row n of W as f32 [K]: the definition every kernel follows (engine/formats/quantized.cpp's
// dequantize_weight computes the same values).
void dequant_row_ref(const QArgs& a, int64_t n, float* dst) {
  const uint8_t* row = a.codes + n * a.rb;
  if (a.il != 1) {  // interleaved: row n gathered chunk by chunk into the row layout
    thread_local std::vector<uint8_t> tmp;
    tmp.resize(size_t(a.rb));
    const int64_t cb = a.rb / (a.Kp / 64), cs = a.chunk_stride();
    const uint8_t* b = a.row_base(n);
    for (int64_t c = 0; c < a.Kp / 64; ++c)
      std::memcpy(tmp.data() + c * cb, b + c * cs, size_t(cb));
    if (a.scheme == QScheme::Int8)
      for (uint8_t& u : tmp) u ^= 0x80;  // stored as u - 128
    row = tmp.data();
  }
  for (int64_t g = 0; g < a.groups; ++g) {
    const float s = a.scale(n, g);
    const int z = a.scheme == QScheme::NF4 ? 0 : a.zero(n, g);
    for (int64_t k = g * a.G; k < std::min(a.K, (g + 1) * a.G); ++k) {
      switch (a.scheme) {
        case QScheme::Int8:
          dst[k] = qm::dequant_uz(row[k], z, s);
          break;
        case QScheme::Int4:
          dst[k] = qm::dequant_uz(qm::get_q4(row, k), z, s);
          break;
        case QScheme::Int3:
          dst[k] = qm::dequant_uz(qm::get_q3(row, k), z, s);
          break;
        case QScheme::NF4:
          dst[k] = s * qm::nf4_value(qm::get_q4(row, k));
          break;
        case QScheme::Binary:
          dst[k] = qm::dequant_uz(2 * qm::get_q1(row, k), z, s);
          break;
        case QScheme::Ternary:
          dst[k] = qm::dequant_uz(qm::get_q2(row, k), z, s);
          break;
      }
    }
  }
}

// Whether this build's SIMD kernels read a's code layout: the AVX-512 ones read the row and the
// interleaved layouts, the AVX2 ones the row layout only (an interleaved weight there, which the
// CPU backend never makes, runs the layout-aware reference).
[[maybe_unused]] bool simd_reads(const QArgs& a) {
#if defined(MINFER_Q_AVX512)
  (void)a;
  return true;
#elif defined(MINFER_Q_AVX2)
  return a.il == 1;
#else
  (void)a;
  return false;
#endif
}

void dequant_rows(const QArgs& a, int64_t n0, int64_t nr, float* dst) {
#if defined(MINFER_Q_AVX512) || defined(MINFER_Q_AVX2)
  if (simd_reads(a)) return simd_dequant_rows(a, n0, nr, dst);
#endif
  for (int64_t i = 0; i < nr; ++i) dequant_row_ref(a, n0 + i, dst + i * a.K);
}

// Prefill: W dequantized one tile of rows at a time into the calling thread's f32 buffer
// (<= 512 KB, half an L2) and multiplied by sgemm; tiles are spread over the threads and each
// sgemm runs on its own thread (OpenBLAS does not fork inside an OpenMP region). The lookups cost
// once per tile instead of once per group of x rows.
void linear_tiles_sgemm(const QArgs& a, const float* x, int64_t T, int64_t ldx, float* y,
                        int64_t ldy, int64_t N) {
  const int nt = omp_get_max_threads();
  const int64_t cap = std::max<int64_t>(16, ((int64_t(1) << 17) / a.K) / 16 * 16);
  const int64_t rows = std::min(cap, std::max<int64_t>(16, qm::ceil_div(N, 2 * nt) + 15) / 16 * 16);
  const int64_t tiles = qm::ceil_div(N, rows);
#pragma omp parallel for schedule(dynamic, 1) if (tiles > 1 && nt > 1)
  for (int64_t i = 0; i < tiles; ++i) {
    thread_local std::vector<float> tile;
    const int64_t n0 = i * rows, nr = std::min(rows, N - n0);
    tile.resize(size_t(rows * a.K));
    dequant_rows(a, n0, nr, tile.data());
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, int(T), int(nr), int(a.K), 1.f, x,
                int(ldx), tile.data(), int(a.K), 0.f, y + n0, int(ldy));
  }
}

#if defined(MINFER_Q_AVX512) || defined(MINFER_Q_AVX2)
// x rows to the kernels' [T, Kp] copy, zero padded (they never read x past K), 64-byte aligned
// (a 64-byte load that straddles two cache lines costs two).
const float* prepare_x(const float* x, int64_t T, int64_t ldx, int64_t K, int64_t Kp,
                       std::vector<float>& buf) {
  buf.resize(size_t(T * Kp + 16));
  float* xp = buf.data() + (16 - (reinterpret_cast<uintptr_t>(buf.data()) / 4) % 16) % 16;
  for (int64_t t = 0; t < T; ++t) {
    std::memcpy(xp + t * Kp, x + t * ldx, size_t(K) * 4);
    std::fill(xp + t * Kp + K, xp + (t + 1) * Kp, 0.f);
  }
  return xp;
}
#endif

// Rows of x at or above which the prefill path (tiles + sgemm) beats the fused kernels.
constexpr int64_t kGemmRows = 16;

// Rows n0..n1 of the portable path: each row of W dequantized by the reference, then an f32 dot
// product with every row of x in index order.
void ref_rows(const QArgs& a, const float* x, int64_t T, int64_t ldx, int64_t n0, int64_t n1,
              float* y, int64_t ldy) {
  thread_local std::vector<float> row;
  row.resize(static_cast<size_t>(a.K));
  for (int64_t n = n0; n < n1; ++n) {
    dequant_row_ref(a, n, row.data());
    for (int64_t t = 0; t < T; ++t) {
      const float* xr = x + t * ldx;
      float acc = 0;
      for (int64_t k = 0; k < a.K; ++k) acc += row[size_t(k)] * xr[k];
      y[t * ldy + n] = acc;
    }
  }
}

// Rows n0..n1 of y on the decode path (T <= quantized_group_max_t()), single-threaded: the SIMD
// kernel from a.xp, or the portable path from x. The same code quantized_linear runs per row.
void decode_rows(const QArgs& a, const float* x, int64_t T, int64_t ldx, int64_t n0, int64_t n1,
                 float* y, int64_t ldy) {
#if defined(MINFER_Q_AVX512) || defined(MINFER_Q_AVX2)
  if (simd_reads(a)) return simd_decode_rows(a, T, n0, n1, y, ldy);
#endif
  ref_rows(a, x, T, ldx, n0, n1, y, ldy);
}

// y[t, n] = silu_mul(y[t, n], u[t, n]) for n in [n0, n1).
void silu_mul_cols(float* y, int64_t ldy, const float* u, int64_t ldu, int64_t T, int64_t n0,
                   int64_t n1) {
  for (int64_t t = 0; t < T; ++t)
    for (int64_t n = n0; n < n1; ++n) y[t * ldy + n] = silu_mul(y[t * ldy + n], u[t * ldu + n]);
}

}  // namespace

const char* quantized_linear_isa() {
#if defined(MINFER_Q_AVX512) || defined(MINFER_Q_AVX2)
  return kSimdIsa;
#else
  return "scalar";
#endif
}

void quantized_linear_ref(const Quantized& w, const float* x, int64_t T, int64_t ldx, float* y,
                          int64_t ldy, int64_t K, int64_t N) {
  check_call(w, T, ldx, ldy, K, N);
  if (T == 0) return;
  std::vector<Span> spans;
  const QArgs a = make_args(w, K, spans);
  ref_rows(a, x, T, ldx, 0, N, y, ldy);
}

bool quantized_linear_int8_act(const Quantized& w, const float* x, int64_t T, int64_t ldx, float* y,
                               int64_t ldy, int64_t K, int64_t N) {
  check_call(w, T, ldx, ldy, K, N);
#if defined(MINFER_QACT_SIMD)
  if (T < 8 || w.scheme != QScheme::Int8 || !(w.per_tensor || w.group == K)) return false;
  const int64_t Kp = qm::padded_k(K);
  thread_local std::vector<int8_t> q;
  thread_local std::vector<float> d, sw;
  thread_local std::vector<int32_t> sx;
  q.resize(size_t(T * Kp));
  d.resize(size_t(T));
  sx.resize(size_t(T));
  quantize_act_rows(x, T, ldx, K, 0.f, q.data(), d.data(), sx.data());
  const float* s = w.scales.data<float>();
  if (w.per_tensor) {
    sw.assign(size_t(N), s[0]);
    s = sw.data();
  }
  I8Out o;
  o.y = y;
  o.ldy = ldy;
  o.d = d.data();
  o.sw = s;
  simd_matmul_i8(q.data(), sx.data(), T, Kp, w.codes.data<uint8_t>(), w.codes.dim(1), N, o,
                 w.interleave);
  return true;
#else
  (void)x, (void)y;
  return false;
#endif
}

namespace {
// MINFER_QUANT_PREFILL: "f32" (default: W dequantized by tiles, then sgemm) or "int8" (int8
// weights with one scale per row or tensor take quantized_linear_int8_act at T >= 16).
bool int8_prefill() {
  static const bool on = env_switch("MINFER_QUANT_PREFILL", "f32", {"f32", "int8"}) == "int8";
  return on;
}
}  // namespace

void quantized_linear(const Quantized& w, const float* x, int64_t T, int64_t ldx, float* y,
                      int64_t ldy, int64_t K, int64_t N) {
  check_call(w, T, ldx, ldy, K, N);
  if (T == 0) return;
  if (T >= kGemmRows && int8_prefill() && quantized_linear_int8_act(w, x, T, ldx, y, ldy, K, N))
    return;
  thread_local std::vector<Span> spans;
  QArgs a = make_args(w, K, spans);
#if defined(MINFER_Q_AVX512) || defined(MINFER_Q_AVX2)
  if (T < kGemmRows && simd_reads(a)) {
    thread_local std::vector<float> xbuf;
    a.xp = prepare_x(x, T, ldx, K, a.Kp, xbuf);
    simd_linear_fused(a, T, y, ldy, N);
    return;
  }
#endif
  if (T < kGemmRows) {  // portable path (no x86 SIMD, e.g. aarch64): the reference, row-parallel
    parallel_for(N, K, kDecodeChunk,
                 [&](int64_t n0, int64_t n1) { ref_rows(a, x, T, ldx, n0, n1, y, ldy); });
    return;
  }
  linear_tiles_sgemm(a, x, T, ldx, y, ldy, N);
}

bool quantized_repack_for_cpu(Quantized& w) {
#if defined(MINFER_Q_AVX512)
  static const bool enabled = env_switch("MINFER_QUANT_REPACK", "1", {"0", "1"}) == "1";
  if (!enabled || w.interleave != 1 || w.codes.dim(0) % 4 != 0) return false;
  Quantized r = quantized_interleave(w, 4);
  release_mapped_pages(w.codes);
  w = std::move(r);
  return true;
#else
  (void)w;
  return false;
#endif
}

int64_t quantized_group_max_t() {
#if defined(MINFER_Q_AVX512) || defined(MINFER_Q_AVX2)
  return 4;
#else
  return kGemmRows - 1;
#endif
}

void quantized_linear_group(const QuantGroupItem* items, int n, const float* x, int64_t T,
                            int64_t ldx, int64_t K) {
  MINFER_CHECK(n >= 0, "quantized_linear_group: {} matrices", n);
  for (int i = 0; i < n; ++i) check_call(*items[i].w, T, ldx, items[i].ldy, K, items[i].N);
  if (T == 0 || n == 0) return;
  if (T > quantized_group_max_t()) {
    for (int i = 0; i < n; ++i)
      quantized_linear(*items[i].w, x, T, ldx, items[i].y, items[i].ldy, K, items[i].N);
    return;
  }
  thread_local std::vector<std::vector<Span>> spans;
  thread_local std::vector<QArgs> args;
  thread_local std::vector<int64_t> first;  // first row of matrix i in the joint row range
  spans.resize(size_t(n));
  args.resize(size_t(n));
  first.assign(size_t(n) + 1, 0);
  const float* xp = nullptr;
#if defined(MINFER_Q_AVX512) || defined(MINFER_Q_AVX2)
  thread_local std::vector<float> xbuf;
  xp = prepare_x(x, T, ldx, K, qm::padded_k(K), xbuf);
#endif
  for (int i = 0; i < n; ++i) {
    args[size_t(i)] = make_args(*items[i].w, K, spans[size_t(i)]);
    args[size_t(i)].xp = xp;
    first[size_t(i) + 1] = first[size_t(i)] + items[i].N;
  }
  // The workers see the caller's tables through these pointers (a thread_local named in the
  // lambda would be the worker's own, empty, instance).
  const QArgs* const A = args.data();
  const int64_t* const first_row = first.data();
  parallel_for(first_row[n], qm::padded_k(K), kDecodeChunk, [&](int64_t r0, int64_t r1) {
    int m = 0;
    while (first_row[m + 1] <= r0) ++m;
    for (int64_t r = r0; r < r1; ++m) {
      const int64_t e = std::min(r1, first_row[m + 1]), b = first_row[m];
      decode_rows(A[m], x, T, ldx, r - b, e - b, items[m].y, items[m].ldy);
      r = e;
    }
  });
}

void quantized_linear_swiglu(const Quantized& gate, const Quantized& up, const float* x, int64_t T,
                             int64_t ldx, float* y, int64_t ldy, float* u, int64_t ldu, int64_t K,
                             int64_t F) {
  check_call(gate, T, ldx, ldy, K, F);
  check_call(up, T, ldx, ldu, K, F);
  if (T == 0) return;
  if (T > quantized_group_max_t()) {
    quantized_linear(gate, x, T, ldx, y, ldy, K, F);
    quantized_linear(up, x, T, ldx, u, ldu, K, F);
#pragma omp parallel for if (T * F >= 32768)
    for (int64_t t = 0; t < T; ++t) silu_mul_cols(y + t * ldy, ldy, u + t * ldu, ldu, 1, 0, F);
    return;
  }
  thread_local std::vector<Span> sg, su;
  QArgs ag = make_args(gate, K, sg), au = make_args(up, K, su);
#if defined(MINFER_Q_AVX512) || defined(MINFER_Q_AVX2)
  thread_local std::vector<float> xbuf;
  ag.xp = au.xp = prepare_x(x, T, ldx, K, ag.Kp, xbuf);
#endif
  parallel_for(F, 2 * ag.Kp, kDecodeChunk, [&](int64_t n0, int64_t n1) {
    decode_rows(ag, x, T, ldx, n0, n1, y, ldy);
    decode_rows(au, x, T, ldx, n0, n1, u, ldu);
    silu_mul_cols(y, ldy, u, ldu, T, n0, n1);
  });
}

}  // namespace minfer
