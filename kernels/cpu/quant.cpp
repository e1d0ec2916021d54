// Quantized linear kernels (CPU): argument checks, dispatch, the scalar reference path and the
// prefill path (f32 tiles of W times sgemm). The SIMD decode kernels live in the sibling files
// quant_avx512.cpp and quant_avx2.cpp; shared structs and the row tiling in quant_impl.h.
// Legend: T rows of x, K = in features, N = out features, Kp = K padded to 64, G = weight group.
#include "kernels/cpu/quant.h"

#include <cblas.h>
#include <omp.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "kernels/common/quant_math.h"
#include "kernels/cpu/act.h"
#include "kernels/cpu/env_switch.h"
#include "kernels/cpu/prefill_gemm.h"
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
  for (const Span& sp : spans) a.chunk_spans = a.chunk_spans && sp.k0 % 64 == 0 && sp.k1 % 64 == 0;
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

// Whether this build's SIMD kernels read a's code layout: the AVX-512 and AVX2 ones read the row
// and the interleaved layouts (through QArgs::row_base / chunk_stride).
[[maybe_unused]] bool simd_reads(const QArgs& a) {
#if defined(MINFER_Q_AVX512) || defined(MINFER_Q_AVX2)
  (void)a;
  return true;
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
// (prefill_tile_rows: <= 2 MB, an equal share per thread) and multiplied by sgemm; tiles are
// spread over the threads and each sgemm runs on its own thread (OpenBLAS does not fork inside an
// OpenMP region). The lookups cost once per tile instead of once per group of x rows.
void linear_tiles_sgemm(const QArgs& a, const float* x, int64_t T, int64_t ldx, float* y,
                        int64_t ldy, int64_t N) {
  if (prefill_gemm_path() == PrefillGemm::Tiles) {  // tiles by the configured thread count
    prefill_tiles_sgemm(
        x, T, ldx,
        [](const void* c, int64_t n0, int64_t nr, float* dst) {
          dequant_rows(*static_cast<const QArgs*>(c), n0, nr, dst);
        },
        &a, y, ldy, a.K, N);
    return;
  }
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

void q8_rows(const QArgs& a, int64_t T, int64_t n0, int64_t n1, float* y, int64_t ldy);

// Rows n0..n1 of y on the decode path (T <= quantized_group_max_t()), single-threaded: the q8
// kernel from a.xq where set, else the SIMD kernel from a.xp, or the portable path from x. The same
// code quantized_linear runs per row.
void decode_rows(const QArgs& a, const float* x, int64_t T, int64_t ldx, int64_t n0, int64_t n1,
                 float* y, int64_t ldy) {
  if (a.xq) return q8_rows(a, T, n0, n1, y, ldy);
#if defined(MINFER_Q_AVX512) || defined(MINFER_Q_AVX2)
  if (simd_reads(a)) return simd_decode_rows(a, T, n0, n1, y, ldy);
#endif
  ref_rows(a, x, T, ldx, n0, n1, y, ldy);
}

// ---- The q8 path (quant.h quantized_linear_q8).

// Whether a's weights have the q8 path: int8, int4 (symmetric or not) or NF4 (plain or
// double-quantized scales) with every span on whole blocks of 32 (one scale per row or tensor, or
// groups a multiple of 32: every group size Quantized allows). Spans that split a 64-weight chunk
// (groups of an odd number of 32s) have the AVX2 kernel and the reference, not the AVX-512 one.
bool q8_applies(const QArgs& a) {
  if (a.scheme != QScheme::Int8 && a.scheme != QScheme::Int4 && a.scheme != QScheme::NF4)
    return false;
  for (int64_t i = 0; i < a.nspans; ++i)
    if (a.spans[i].k0 % 32 != 0 || a.spans[i].k1 % 32 != 0) return false;
  return true;
}

// x rows quantized for the q8 path (QArgs::xq / xd / xs), 64-byte aligned.
struct Q8Act {
  std::vector<int8_t> qbuf;
  std::vector<float> dbuf;
  std::vector<int32_t> sbuf;
  int8_t* q = nullptr;
  float* d = nullptr;
  int32_t* s = nullptr;
};

template <class V>
auto* aligned64(V& v, size_t n) {
  using E = typename V::value_type;
  v.resize(n + 64 / sizeof(E));
  const size_t off = (64 - reinterpret_cast<uintptr_t>(v.data()) % 64) % 64 / sizeof(E);
  return v.data() + off;
}

// Each row of x in blocks of 32 (the last partial block and the padding to Kp as zeros) by
// qm::quantize_act_block: d = max|x| / 127, q = clamp(round-half-even(x · 127 / max|x|), ±127);
// a block with an inf or NaN gets d = NaN (its outputs are NaN, as in f32). SIMD where built
// (the same codes and scales).
void quantize_q8_act(const float* x, int64_t T, int64_t ldx, int64_t K, Q8Act& o) {
  const int64_t Kp = qm::padded_k(K), nc = Kp / 64;
  o.q = aligned64(o.qbuf, size_t(T * Kp));
  o.d = aligned64(o.dbuf, size_t(T * nc * 16));
  o.s = aligned64(o.sbuf, size_t(T * Kp / 4));
#if defined(MINFER_Q_AVX512) || defined(MINFER_Q_AVX2)
  return simd_quantize_q8(x, T, ldx, K, o.q, o.d, o.s);
#endif
  for (int64_t t = 0; t < T; ++t)
    for (int64_t b = 0; b < Kp / 32; ++b) {
      const int64_t k0 = b * 32, n = std::clamp<int64_t>(K - k0, 0, 32);
      int8_t* q = o.q + t * Kp + k0;
      float d;
      int32_t sum;
      qm::quantize_act_block(x + t * ldx + k0, int(n), 32, q, &d, &sum);
      float* dv = o.d + (t * nc + b / 2) * 16 + (b % 2) * 8;
      std::fill(dv, dv + 8, d);
      for (int64_t j = 0; j < 8; ++j)
        o.s[t * (Kp / 4) + k0 / 4 + j] = -(q[4 * j] + q[4 * j + 1] + q[4 * j + 2] + q[4 * j + 3]);
    }
}

void set_q8(QArgs& a, const Q8Act& o) {
  a.xq = o.q;
  a.xd = o.d;
  a.xs = o.s;
}

// The q8 path's reference: the same activation codes, exact integer sums per block of 32
// (Σ w q with w = u - z, or w = qm::nf4_level(u) for NF4), then y = f Σ_span s (Σ_block d · sum)
// in f32, blocks in order (f = QArgs::q8_out_factor: 1, or 2^-13 for NF4).
void q8_ref_rows(const QArgs& a, int64_t T, int64_t n0, int64_t n1, float* y, int64_t ldy) {
  thread_local std::vector<uint8_t> tmp, u;
  tmp.resize(size_t(a.rb));
  u.resize(size_t(a.Kp));
  for (int64_t n = n0; n < n1; ++n) {
    // The row's unsigned codes in weight order (the row layout; int8 interleaved stores u - 128).
    const uint8_t* row = a.codes + n * a.rb;
    if (a.il != 1) {
      const int64_t cb = a.rb / (a.Kp / 64), cs = a.chunk_stride();
      const uint8_t* b = a.row_base(n);
      for (int64_t c = 0; c < a.Kp / 64; ++c)
        std::memcpy(tmp.data() + c * cb, b + c * cs, size_t(cb));
      if (a.scheme == QScheme::Int8)
        for (uint8_t& v : tmp) v ^= 0x80;
      row = tmp.data();
    }
    for (int64_t k = 0; k < a.Kp; ++k)
      u[size_t(k)] = uint8_t(a.scheme == QScheme::Int8 ? row[k] : qm::get_q4(row, k));
    const bool nf4 = a.scheme == QScheme::NF4;
    for (int64_t t = 0; t < T; ++t) {
      const int8_t* q = a.xq + t * a.Kp;
      float acc = 0;
      for (int64_t si = 0; si < a.nspans; ++si) {
        const Span sp = a.spans[si];
        const int z = nf4 ? 0 : a.zero(n, sp.g);
        float part = 0;
        for (int64_t k0 = sp.k0; k0 < sp.k1; k0 += 32) {
          int32_t sum = 0;
          for (int64_t k = k0; k < k0 + 32; ++k) {
            const int32_t w = nf4 ? qm::nf4_level(u[size_t(k)]) : int32_t(u[size_t(k)]) - z;
            sum += w * q[k];
          }
          part += float(sum) * a.xd[(t * (a.Kp / 64) + k0 / 64) * 16 + (k0 % 64) / 4];
        }
        acc += part * a.scale(n, sp.g);
      }
      y[t * ldy + n] = acc * a.q8_out_factor();
    }
  }
}

// Rows n0..n1 of y on the q8 path: the SIMD kernel where built (T <= 4), else the reference
// (also on AVX-512 for NF4 and for groups that split a 64-weight chunk, which its kernel lacks:
// reached only when MINFER_QUANT_ACT=q8 forces the path).
void q8_rows(const QArgs& a, int64_t T, int64_t n0, int64_t n1, float* y, int64_t ldy) {
#if defined(MINFER_Q_AVX512)
  if (a.scheme == QScheme::NF4 || !a.chunk_spans) return q8_ref_rows(a, T, n0, n1, y, ldy);
#endif
#if defined(MINFER_Q_AVX512) || defined(MINFER_Q_AVX2)
  return simd_decode_rows_q8(a, T, n0, n1, y, ldy);
#else
  q8_ref_rows(a, T, n0, n1, y, ldy);
#endif
}

// MINFER_QUANT_ACT, read once unless set_quantized_act_path overrides it.
std::atomic<int> g_act_path{-1};
QuantActPath act_path_now() {
  int v = g_act_path.load(std::memory_order_relaxed);
  if (v < 0) {
    const std::string e = env_switch("MINFER_QUANT_ACT", "auto", {"auto", "f32", "q8"});
    v = int(e == "f32" ? QuantActPath::F32 : e == "q8" ? QuantActPath::Q8 : QuantActPath::Auto);
    g_act_path.store(v, std::memory_order_relaxed);
  }
  return QuantActPath(v);
}

// Whether a call of T rows on a's weights takes the q8 path: always where it applies when forced;
// by default at decode (T <= 4) for int4 where this build has a SIMD q8 kernel for its groups
// (AVX2: every group size; AVX-512 VNNI: groups on 64-weight chunks, so g32 / g96 keep f32
// activations there, the AVX-512 kernel for them being unwritten and unmeasured) and for NF4 on
// AVX2 (kernels measured ~3x the f32 path's there, docs/performance.md), and for int8 on AVX2:
// there the f32-activation kernel (widen, convert, FMA per 8 weights) runs out of arithmetic at
// ~25-34 GB/s even with W in cache, and the q8 path measured 1.05-1.20x its kernel speed from
// memory and 1.09x whole-model decode (docs/performance.md, "int8 decode on the q8 path"). On
// AVX-512 builds int8 keeps f32 activations: there its decode is bound by memory and the q8 path
// measured no faster.
bool use_q8(const QArgs& a, int64_t T) {
  if (!q8_applies(a)) return false;
  switch (act_path_now()) {
    case QuantActPath::F32:
      return false;
    case QuantActPath::Q8:
      return true;
    case QuantActPath::Auto:
#if defined(MINFER_Q_AVX512)
      return T <= 4 && a.scheme == QScheme::Int4 && a.chunk_spans;
#elif defined(MINFER_Q_AVX2)
      return T <= 4 &&
             (a.scheme == QScheme::Int4 || a.scheme == QScheme::NF4 || a.scheme == QScheme::Int8);
#else
      (void)T;
      return false;
#endif
  }
  return false;
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

QuantActPath quantized_act_path() {
  return act_path_now();
}
void set_quantized_act_path(QuantActPath p) {
  g_act_path.store(int(p), std::memory_order_relaxed);
}

void quantize_q8_activations(const float* x, int64_t T, int64_t ldx, int64_t K, int8_t* q,
                             float* d) {
  thread_local Q8Act act;
  quantize_q8_act(x, T, ldx, K, act);
  const int64_t Kp = qm::padded_k(K);
  std::memcpy(q, act.q, size_t(T * Kp));
  for (int64_t t = 0; t < T; ++t)
    for (int64_t b = 0; b < Kp / 32; ++b)
      d[t * (Kp / 32) + b] = act.d[(t * (Kp / 64) + b / 2) * 16 + (b % 2) * 8];
}

bool quantized_has_q8_path(const Quantized& w, int64_t K) {
  std::vector<Span> spans;
  return q8_applies(make_args(w, K, spans));
}

void quantized_linear_q8(const Quantized& w, const float* x, int64_t T, int64_t ldx, float* y,
                         int64_t ldy, int64_t K, int64_t N) {
  check_call(w, T, ldx, ldy, K, N);
  thread_local std::vector<Span> spans;
  QArgs a = make_args(w, K, spans);
  MINFER_CHECK(q8_applies(a), "quantized_linear_q8: no q8 path for {} weights with group {}",
               qscheme_name(w.scheme), w.group);
  if (T == 0) return;
  thread_local Q8Act act;
  quantize_q8_act(x, T, ldx, K, act);
  // Tokens t0..t0 + 4 (the kernel's range) over rows n0..n1. The pool's workers see the
  // caller's activations through these pointers (`act` named in the lambda would be the worker's
  // own thread_local instance).
  const int8_t* const xq = act.q;
  const float* const xd = act.d;
  const int32_t* const xs = act.s;
  auto rows = [&](int64_t t0, int64_t n0, int64_t n1) {
    QArgs b = a;
    b.xq = xq + t0 * a.Kp;
    b.xd = xd + t0 * (a.Kp / 64) * 16;
    b.xs = xs + t0 * (a.Kp / 4);
    q8_rows(b, std::min<int64_t>(4, T - t0), n0, n1, y + t0 * ldy, ldy);
  };
  if (T <= 4) {  // decode: one pass over W
    parallel_rows(N, T * a.Kp, [&](int64_t n0, int64_t n1) { rows(0, n0, n1); });
    return;
  }
  // More tokens: W in tiles of 16 rows, each read from memory once and kept in cache while every
  // group of 4 tokens passes over it. Each row's arithmetic is the same as in decode.
  constexpr int64_t kTile = 16;
  parallel_for(qm::ceil_div(N, kTile), kTile * a.Kp * T, kDecodeChunk, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i)
      for (int64_t t0 = 0; t0 < T; t0 += 4) rows(t0, i * kTile, std::min(N, (i + 1) * kTile));
  });
}

void quantized_linear_q8_ref(const Quantized& w, const float* x, int64_t T, int64_t ldx, float* y,
                             int64_t ldy, int64_t K, int64_t N) {
  check_call(w, T, ldx, ldy, K, N);
  std::vector<Span> spans;
  QArgs a = make_args(w, K, spans);
  MINFER_CHECK(q8_applies(a), "quantized_linear_q8_ref: no q8 path for {} weights with group {}",
               qscheme_name(w.scheme), w.group);
  if (T == 0) return;
  Q8Act act;
  quantize_q8_act(x, T, ldx, K, act);
  set_q8(a, act);
  q8_ref_rows(a, T, 0, N, y, ldy);
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
  if (use_q8(a, T)) return quantized_linear_q8(w, x, T, ldx, y, ldy, K, N);
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

namespace {

// AVX2: whether w's decode kernel streams the interleaved layout 4 rows at a time: int8, int4 and
// NF4 whose groups are whole 64-weight chunks (one per row or tensor, g64, g128, ...). The others
// would read it a row at a time, measured slower than their row layout: int4 g32 (SmolLM2
// int4-g32-asym decode 0.87x, docs/performance.md), odd multiples of 32, and the f32-path formats
// (int3, binary, ternary).
[[maybe_unused]] bool avx2_streams_groups(const Quantized& w) {
  if (w.scheme != QScheme::Int8 && w.scheme != QScheme::Int4 && w.scheme != QScheme::NF4)
    return false;
  if (w.per_tensor || w.group % 64 == 0) return true;
  const int64_t out = w.codes.dim(0);
  if (out == 0) return false;
  const int64_t groups = w.scales.defined() ? w.scales.dim(1) : w.scale_codes.numel() / out;
  return groups == 1;
}

}  // namespace

bool quantized_repack_for_cpu(Quantized& w) {
#if defined(MINFER_Q_AVX512) || defined(MINFER_Q_AVX2)
  static const bool enabled = env_switch("MINFER_QUANT_REPACK", "1", {"0", "1"}) == "1";
  if (!enabled || w.interleave != 1 || w.codes.dim(0) % 4 != 0) return false;
#if !defined(MINFER_Q_AVX512)
  if (!avx2_streams_groups(w)) return false;
#endif
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
  thread_local Q8Act act;
  bool quantized = false;  // x quantized for the members on the q8 path, once
  for (int i = 0; i < n; ++i) {
    QArgs& ai = args[size_t(i)];
    ai = make_args(*items[i].w, K, spans[size_t(i)]);
    ai.xp = xp;
    if (use_q8(ai, T)) {
      if (!quantized) quantize_q8_act(x, T, ldx, K, act);
      quantized = true;
      set_q8(ai, act);
    }
    first[size_t(i) + 1] = first[size_t(i)] + items[i].N;
  }
  // The workers see the caller's tables through these pointers (a thread_local named in the
  // lambda would be the worker's own, empty, instance).
  const QArgs* const A = args.data();
  const int64_t* const first_row = first.data();
  parallel_rows(first_row[n], qm::padded_k(K), [&](int64_t r0, int64_t r1) {
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
  const bool qg = use_q8(ag, T), qu = use_q8(au, T);
#if defined(MINFER_Q_AVX512) || defined(MINFER_Q_AVX2)
  thread_local std::vector<float> xbuf;
  if (!(qg && qu)) ag.xp = au.xp = prepare_x(x, T, ldx, K, ag.Kp, xbuf);
#endif
  thread_local Q8Act act;
  if (qg || qu) quantize_q8_act(x, T, ldx, K, act);
  if (qg) set_q8(ag, act);
  if (qu) set_q8(au, act);
  parallel_rows(F, 2 * ag.Kp, [&](int64_t n0, int64_t n1) {
    decode_rows(ag, x, T, ldx, n0, n1, y, ldy);
    decode_rows(au, x, T, ldx, n0, n1, u, ldu);
    silu_mul_cols(y, ldy, u, ldu, T, n0, n1);
  });
}

}  // namespace minfer
