// W8A8 / LLM.int8() integer kernels for AVX2 (x86-64-v3 without AVX-512 VNNI: Zen 2 / Zen 3,
// Haswell .. Alder Lake). Compiled to nothing on other targets.
// Legend: T rows of x (tokens), Kp = K padded to 64, N = out features, TB tokens x NB 8-row
// panels = one register tile, k2 / k4 = a group of 2 / 4 consecutive k (one int32 lane).
//
// Every sum is exact: the int32 lanes hold Σ q x with q = u - 128 in -128..127 and x in -127..127,
// |Σ q x| <= 128 * 127 * Kp < 2^31 for Kp <= 2^17, and no narrower intermediate can saturate.
//
// Decode (T < kGemmMinT): the row-major codes directly, each weight byte read once per call.
// AVX2 has no vpdpbusd; one step is vpmaddubsw (u8 x s8, adjacent pairs summed to int16 with
// saturation) then vpmaddwd by 1 (int16 pairs to int32). The stored u = q + 128 cannot be the
// unsigned operand (2 * 255 * 127 saturates int16): the unsigned operand is |q| (0..128, vpabsb of
// q = u ^ 0x80) and the signed one x carrying q's sign (vpsignb; -x never wraps; q = 0 gives 0), so
// each int16 pair is at most 2 * 128 * 127 = 32512 < 2^15 (llama.cpp's Q8_0 dot product with the
// roles swapped, so that q = -128, u = 0, stays exact).
//
// Prefill (T >= kGemmMinT): vpmaddwd on int16 operands instead (products of two int16 codes,
// pairs summed to int32, no saturation possible). On Zen 3 vpsignb, vpmaddubsw and vpmaddwd all
// issue to the same two pipes, so the byte path costs 3 of their slots per 32 products and the
// int16 path 2 per 32 (measured: ~130 vs ~140 GOP/s per core on SmolLM2's shapes,
// docs/performance.md). x is widened to int16 once per call; each work item (64 weight rows x 96
// tokens) has its rows widened into a per-thread buffer (block-major, so once per block and thread)
// in sub-blocks of 16 rows laid out per k2 as 2 panels x 8 rows x 2 codes: one ymm per panel. A 6
// token x 16 row tile keeps 12 int32 accumulators in registers; per k2 it loads 2 weight vectors
// and broadcasts one int16 pair of each token: 12 vpmaddwd per 8 loads.
#include "kernels/cpu/quant_act_impl.h"

#if defined(MINFER_QACT_SIMD) && defined(MINFER_Q_AVX2)

#include <immintrin.h>

#include <algorithm>
#include <cfloat>
#include <cstring>
#include <vector>

namespace minfer::qcpu {

const char* const kActIsa = "avx2";

namespace {

#define MINFER_INLINE inline __attribute__((always_inline))

constexpr int64_t kGemmMinT = 8;  // below: the weight would cost more to repack than to reread
constexpr int kPanels = 2;        // 8-row panels per register tile
constexpr int64_t kSub = 16;      // weight rows per register tile (kPanels panels of 8)
constexpr int64_t kBlock = 64;    // weight rows per work item (4 sub-blocks)
constexpr int kTileT = 6;         // tokens per register tile
constexpr int64_t kChunkT = 96;   // tokens per work item (16 tiles)

// Lanes 0 .. valid-1 set (valid clamped to 0..8).
MINFER_INLINE __m256i lane_mask(int64_t valid) {
  const int v = int(std::clamp<int64_t>(valid, 0, 8));
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(v), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

MINFER_INLINE int32_t hsum256i(__m256i v) {
  __m128i x = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  x = _mm_add_epi32(x, _mm_shuffle_epi32(x, _MM_SHUFFLE(1, 0, 3, 2)));
  x = _mm_add_epi32(x, _mm_shuffle_epi32(x, _MM_SHUFFLE(2, 3, 0, 1)));
  return _mm_cvtsi128_si32(x);
}

MINFER_INLINE float hmax256(__m256 v) {
  __m128 x = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  x = _mm_max_ps(x, _mm_movehl_ps(x, x));
  return _mm_cvtss_f32(_mm_max_ss(x, _mm_movehdup_ps(x)));
}

MINFER_INLINE int32_t load_i32(const void* p) {
  int32_t v;
  std::memcpy(&v, p, 4);
  return v;
}

// acc += Σ over each k4 of |q| * (x with q's sign): q signed codes, aq = |q| (see the top).
MINFER_INLINE __m256i dot_step(__m256i acc, __m256i aq, __m256i q, __m256i x, __m256i ones) {
  return _mm256_add_epi32(
      acc, _mm256_madd_epi16(_mm256_maddubs_epi16(aq, _mm256_sign_epi8(x, q)), ones));
}

// ---- Activations
// ---------------------------------------------------------------------------------

// 8 floats of x at i (lanes past n read as 0).
MINFER_INLINE __m256 load_x(const float* x, int64_t i, int64_t n) {
  if (i + 8 <= n) return _mm256_loadu_ps(x + i);
  if (i >= n) return _mm256_setzero_ps();
  return _mm256_maskload_ps(x + i, lane_mask(n - i));
}

// One row, n values of x then zeros up to len (a multiple of 32). Rows needing special handling
// (all zero, tiny, inf / NaN) go to the scalar quantizer, which is the definition.
void quantize_row(const float* x, int64_t n, int64_t len, float scale, int8_t* q, float* d,
                  int32_t* s) {
  const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
  const __m256 fmax = _mm256_set1_ps(FLT_MAX);
  __m256 vmax = _mm256_setzero_ps(), bad = _mm256_setzero_ps();
  for (int64_t i = 0; i < n; i += 8) {
    const __m256 a = _mm256_and_ps(load_x(x, i, n), absmask);
    bad = _mm256_or_ps(bad, _mm256_cmp_ps(a, fmax, _CMP_NLE_UQ));  // inf or NaN
    vmax = _mm256_max_ps(vmax, a);
  }
  const float amax = hmax256(vmax);
  if (_mm256_movemask_ps(bad) || (scale == 0.f && !(amax >= qm::kActTiny))) {
    if (scale > 0.f)
      qm::quantize_act_static(x, int(n), int(len), scale, q, d, s);
    else
      qm::quantize_act_block(x, int(n), int(len), q, d, s);
    return;
  }
  const __m256 lo = _mm256_set1_ps(-127.f), hi = _mm256_set1_ps(127.f);
  const __m256 id = _mm256_set1_ps(scale > 0.f ? 0.f : 127.f / amax), vs = _mm256_set1_ps(scale);
  const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
  __m256i sum = _mm256_setzero_si256();
  for (int64_t i = 0; i < len; i += 32) {
    __m256i c[4];
    for (int j = 0; j < 4; ++j) {
      const __m256 v = load_x(x, i + 8 * j, n);
      // Dynamic: x * (127 / max) is within ±127 up to rounding; static: x / scale, saturated.
      const __m256 r = scale > 0.f ? _mm256_div_ps(v, vs) : _mm256_mul_ps(v, id);
      c[j] = _mm256_cvtps_epi32(_mm256_min_ps(_mm256_max_ps(r, lo), hi));
      sum = _mm256_add_epi32(sum, c[j]);
    }
    // packs work per 128-bit lane: the dwords come out as c0 c1 c2 c3 (low halves) then the high
    // halves; the permute puts them back in k order.
    const __m256i p =
        _mm256_packs_epi16(_mm256_packs_epi32(c[0], c[1]), _mm256_packs_epi32(c[2], c[3]));
    _mm256_storeu_si256((__m256i*)(q + i), _mm256_permutevar8x32_epi32(p, order));
  }
  *d = scale > 0.f ? scale : amax / 127.f;
  *s = hsum256i(sum);
}

// ---- Decode: row-major codes, RW weight rows x R tokens per call (quant_impl.h run_all)
// -------------------------------------------------------------------------------

struct GArgs {
  const int8_t* xq;
  int64_t Kp;
  const uint8_t* codes;
  int64_t rb;
  const I8Out* out;
};

struct GemvTile {
  template <int RW, int R>
  struct K {
    static void run(int64_t n0, int64_t t0, const GArgs& g) {
      const uint8_t* wr[RW];
      for (int i = 0; i < RW; ++i) wr[i] = g.codes + (n0 + i) * g.rb;
      const int8_t* xr[R];
      for (int r = 0; r < R; ++r) xr[r] = g.xq + (t0 + r) * g.Kp;
      const __m256i ones = _mm256_set1_epi16(1), flip = _mm256_set1_epi8(char(0x80));
      __m256i acc[RW][R];
      for (int i = 0; i < RW; ++i)
        for (int r = 0; r < R; ++r) acc[i][r] = _mm256_setzero_si256();
      for (int64_t k = 0; k < g.Kp; k += 32) {
        __m256i xv[R];
        for (int r = 0; r < R; ++r) xv[r] = _mm256_loadu_si256((const __m256i*)(xr[r] + k));
        for (int i = 0; i < RW; ++i) {
          const __m256i q = _mm256_xor_si256(_mm256_loadu_si256((const __m256i*)(wr[i] + k)), flip);
          const __m256i aq = _mm256_abs_epi8(q);
          for (int r = 0; r < R; ++r) acc[i][r] = dot_step(acc[i][r], aq, q, xv[r], ones);
        }
      }
      for (int i = 0; i < RW; ++i)
        for (int r = 0; r < R; ++r) emit(*g.out, t0 + r, n0 + i, hsum256i(acc[i][r]));
    }
  };
};

// ---- Prefill: int16 weight blocks, vpmaddwd
// --------------------------------------------------------------

// A work item's kBlock weight rows (n0..) as int16 q = u - 128, in sub-blocks of kSub rows: per
// k2, kPanels panels of 8 rows x 2 codes (one ymm each). Rows past N are 0. il > 1: rows
// interleaved by il, 64-byte chunks, stored as u - 128.
void pack_block(const uint8_t* codes, int64_t rb, int64_t N, int64_t Kp, int64_t n0, int16_t* dst,
                int64_t il) {
  for (int64_t r = 0; r < kBlock; ++r) {
    const int64_t n = n0 + r;
    int16_t* o = dst + (r / kSub) * Kp * kSub + (r % kSub) * 2;  // k2 step k / 2 at o + k * kSub
    if (n >= N) {
      for (int64_t k = 0; k < Kp; k += 2) o[k * kSub] = o[k * kSub + 1] = 0;
      continue;
    }
    // Two codes of row n at k as the int16 pair (q[k], q[k + 1]).
    const uint8_t* base = il == 1 ? codes + n * rb : codes + (n - n % il) * rb + (n % il) * 64;
    const uint32_t flip = il == 1 ? 0x80u : 0u;
    for (int64_t k = 0; k < Kp; k += 2) {
      const uint8_t* c = il == 1 ? base + k : base + (k / 64) * il * 64 + k % 64;
      o[k * kSub] = int8_t(uint8_t(c[0] ^ flip));
      o[k * kSub + 1] = int8_t(uint8_t(c[1] ^ flip));
    }
  }
}

// TB tokens (t0..) x NB panels of 8 rows (n0..) of one sub-block, the whole of Kp: per k2, NB
// weight vectors and one broadcast pair of each token's codes, TB * NB vpmaddwd. The accumulators
// are named variables, not an array, so that GCC keeps all of them in registers.
#define MINFER_ACC_ROW(t)                                                                 \
  if constexpr (TB > t) {                                                                 \
    const __m256i xb = _mm256_set1_epi32(load_i32(xr + t * Kp + k));                      \
    a##t##0 = _mm256_add_epi32(a##t##0, _mm256_madd_epi16(w0, xb));                       \
    if constexpr (NB > 1) a##t##1 = _mm256_add_epi32(a##t##1, _mm256_madd_epi16(w1, xb)); \
  }
#define MINFER_ACC_SAVE(t)                     \
  if constexpr (TB > t) {                      \
    acc[t][0] = a##t##0;                       \
    if constexpr (NB > 1) acc[t][1] = a##t##1; \
  }

template <int TB, int NB>
void gemm_tile(const int16_t* pw, const int16_t* x16, int64_t Kp, int64_t t0, int64_t n0, int64_t N,
               const I8Out& o) {
  static_assert(TB >= 1 && TB <= 6 && NB >= 1 && NB <= 2, "register tile up to 6 x 2");
  const __m256i z = _mm256_setzero_si256();
  __m256i a00 = z, a01 = z, a10 = z, a11 = z, a20 = z, a21 = z;
  __m256i a30 = z, a31 = z, a40 = z, a41 = z, a50 = z, a51 = z;
  const int16_t* xr = x16 + t0 * Kp;
  for (int64_t k = 0; k < Kp; k += 2) {
    const int16_t* p = pw + k * kSub;  // k2 step k / 2 starts at (k / 2) * 2 * kSub codes
    const __m256i w0 = _mm256_loadu_si256((const __m256i*)p);
    const __m256i w1 = NB > 1 ? _mm256_loadu_si256((const __m256i*)(p + 16)) : z;
    MINFER_ACC_ROW(0)
    MINFER_ACC_ROW(1)
    MINFER_ACC_ROW(2)
    MINFER_ACC_ROW(3)
    MINFER_ACC_ROW(4)
    MINFER_ACC_ROW(5)
  }
  __m256i acc[TB][NB];
  MINFER_ACC_SAVE(0)
  MINFER_ACC_SAVE(1)
  MINFER_ACC_SAVE(2)
  MINFER_ACC_SAVE(3)
  MINFER_ACC_SAVE(4)
  MINFER_ACC_SAVE(5)
  for (int t = 0; t < TB; ++t) {
    const int64_t tt = t0 + t;
    for (int j = 0; j < NB; ++j) {
      const int64_t n = n0 + 8 * j;
      if (n >= N) break;
      const bool full = n + 8 <= N;
      const __m256i m = lane_mask(N - n);
      const __m256i v = acc[t][j];
      if (o.c) {
        int32_t* dst = o.c + tt * o.ldc + n;
        if (full)
          _mm256_storeu_si256((__m256i*)dst, v);
        else
          _mm256_maskstore_epi32(dst, m, v);
      } else {
        const __m256 sw = full ? _mm256_loadu_ps(o.sw + n) : _mm256_maskload_ps(o.sw + n, m);
        const __m256 y =
            _mm256_mul_ps(_mm256_cvtepi32_ps(v), _mm256_mul_ps(_mm256_set1_ps(o.d[tt]), sw));
        float* dst = o.y + tt * o.ldy + n;
        if (full)
          _mm256_storeu_ps(dst, y);
        else
          _mm256_maskstore_ps(dst, m, y);
      }
    }
  }
}
#undef MINFER_ACC_ROW
#undef MINFER_ACC_SAVE

template <int NB>
void gemm_rows(const int16_t* pw, const int16_t* x16, int64_t Kp, int64_t t0, int64_t t1,
               int64_t n0, int64_t N, const I8Out& o) {
  int64_t t = t0;
  for (; t + kTileT <= t1; t += kTileT) gemm_tile<kTileT, NB>(pw, x16, Kp, t, n0, N, o);
  switch (t1 - t) {
    case 5:
      gemm_tile<5, NB>(pw, x16, Kp, t, n0, N, o);
      break;
    case 4:
      gemm_tile<4, NB>(pw, x16, Kp, t, n0, N, o);
      break;
    case 3:
      gemm_tile<3, NB>(pw, x16, Kp, t, n0, N, o);
      break;
    case 2:
      gemm_tile<2, NB>(pw, x16, Kp, t, n0, N, o);
      break;
    case 1:
      gemm_tile<1, NB>(pw, x16, Kp, t, n0, N, o);
      break;
    default:
      break;
  }
}

void gemm(const int8_t* xq, int64_t T, int64_t Kp, const uint8_t* codes, int64_t rb, int64_t N,
          const I8Out& o, int64_t il) {
  const int64_t blocks = qm::ceil_div(N, kBlock), chunks = qm::ceil_div(T, kChunkT);
  thread_local std::vector<int16_t> xw;  // of the calling thread; workers only read it
  xw.resize(size_t(T * Kp));
  int16_t* x16 = xw.data();
  const bool par = T * N * Kp >= (int64_t(1) << 22);  // ~4M multiply-adds: ~20 us on one core
#pragma omp parallel if (par)
  {
#pragma omp for schedule(static)
    for (int64_t t = 0; t < T; ++t)
      for (int64_t k = 0; k < Kp; k += 16)
        _mm256_storeu_si256(
            (__m256i*)(x16 + t * Kp + k),
            _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i*)(xq + t * Kp + k))));
    // Each thread converts the blocks of its items (block-major: a block once, or twice at the
    // seam between two threads) into its own buffer.
    thread_local std::vector<int16_t> packed;
    packed.resize(size_t(kBlock * Kp));
    int16_t* pw = packed.data();
    int64_t have = -1;
#pragma omp for schedule(static)
    for (int64_t i = 0; i < blocks * chunks; ++i) {
      const int64_t b = i / chunks, c = i % chunks;
      const int64_t n0 = b * kBlock, t0 = c * kChunkT, t1 = std::min(T, t0 + kChunkT);
      if (b != have) {
        pack_block(codes, rb, N, Kp, n0, pw, il);
        have = b;
      }
      for (int64_t s = 0; s < kBlock / kSub && n0 + s * kSub < N; ++s) {
        const int16_t* ps = pw + s * Kp * kSub;
        const int64_t ns = n0 + s * kSub;
        if (N - ns > 8)
          gemm_rows<kPanels>(ps, x16, Kp, t0, t1, ns, N, o);
        else
          gemm_rows<1>(ps, x16, Kp, t0, t1, ns, N, o);
      }
    }
  }
}

}  // namespace

void simd_quantize_act_rows(const float* x, int64_t T, int64_t ldx, int64_t K, float scale,
                            int8_t* q, float* d, int32_t* s) {
  const int64_t Kp = qm::padded_k(K);
#pragma omp parallel for if (T * K >= (1 << 16))
  for (int64_t t = 0; t < T; ++t) quantize_row(x + t * ldx, K, Kp, scale, q + t * Kp, d + t, s + t);
}

void simd_matmul_i8(const int8_t* xq, const int32_t* sx, int64_t T, int64_t Kp,
                    const uint8_t* codes, int64_t rb, int64_t N, const I8Out& out, int64_t il) {
  (void)sx;  // the sums are Σ q x directly: no zero point to remove
  if (T >= kGemmMinT) {
    gemm(xq, T, Kp, codes, rb, N, out, il);
    return;
  }
  MINFER_CHECK(il == 1, "simd_matmul_i8: interleaved codes (by {}) need T >= {}", il, kGemmMinT);
  const GArgs g{xq, Kp, codes, rb, &out};
  run_all<GemvTile::K>(N, T, Kp, g);
}

}  // namespace minfer::qcpu

#endif  // MINFER_QACT_SIMD && MINFER_Q_AVX2
