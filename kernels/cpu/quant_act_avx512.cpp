// W8A8 / LLM.int8() integer kernels for AVX-512 with VNNI (AVX512F + BW + VNNI; Zen 4, Ice Lake
// and later). Compiled to nothing on other targets.
// Legend: T rows of x (tokens), Kp = K padded to 64, N = out features, TB tokens x NB 16-row
// panels = one register tile, k4 = a group of 4 consecutive k (one vpdpbusd lane).
//
// vpdpbusd multiplies unsigned by signed bytes and adds groups of 4 into int32 lanes. The weight
// codes are the unsigned operand as stored (u = q + 128); Σ u x = Σ q x + 128 Σ x, so the token's
// code sum times 128 comes off at the end. int32 arithmetic wraps, and the true result fits
// (|Σ q x| <= 127² Kp < 2^31), so every sum is exact whatever the intermediate values.
//
// Prefill (T >= kGemmMinT): W is repacked once per call into blocks of 64 rows where each k4 step
// is 256 contiguous bytes: 4 x 16 rows x 4 bytes, exactly the operand of one vpdpbusd per 16 rows
// (the layout of oneDNN's / FBGEMM's VNNI weight packing). A 6 token x 64 row tile keeps 24 int32
// accumulators in registers; per k4 it loads 4 weight vectors and broadcasts 4 bytes of each
// token's codes (folded into vpdpbusd's memory operand): 24 vpdpbusd per 10 loads. OpenMP over
// (64-row block, token chunk) pairs, block-major so a thread keeps one weight block in L2.
// Decode (T < kGemmMinT): the row-major codes directly, each weight byte read once per call.
#include "kernels/cpu/quant_act_impl.h"

#if defined(MINFER_QACT_SIMD) && defined(MINFER_Q_AVX512)

#include <algorithm>
#include <cstring>
#include <vector>

// GCC 12 flags the intentionally undefined pass-through register inside AVX-512 intrinsics
// (-Wuninitialized on `__Y = __Y`) once they are inlined into templates.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#include <immintrin.h>
#pragma GCC diagnostic pop

namespace minfer::qcpu {

const char* const kActIsa = "avx512-vnni";

namespace {

#define MINFER_INLINE inline __attribute__((always_inline))

constexpr int64_t kGemmMinT = 8;  // below: the weight would cost more to repack than to reread
constexpr int64_t kBlock = 64;    // weight rows per packed block (4 panels of 16)
constexpr int kTileT = 6;         // tokens per register tile
constexpr int64_t kChunkT = 96;   // tokens per work item (16 tiles)

MINFER_INLINE __mmask16 tail_mask(int64_t valid) {
  return valid >= 16 ? __mmask16(0xffff) : valid <= 0 ? __mmask16(0) : __mmask16((1u << valid) - 1);
}

MINFER_INLINE int32_t hsum512i(__m512i v) {
  v = _mm512_add_epi32(v, _mm512_shuffle_i32x4(v, v, _MM_SHUFFLE(1, 0, 3, 2)));
  v = _mm512_add_epi32(v, _mm512_shuffle_i32x4(v, v, _MM_SHUFFLE(2, 3, 0, 1)));
  __m128i x = _mm512_castsi512_si128(v);
  x = _mm_add_epi32(x, _mm_shuffle_epi32(x, _MM_SHUFFLE(1, 0, 3, 2)));
  x = _mm_add_epi32(x, _mm_shuffle_epi32(x, _MM_SHUFFLE(2, 3, 0, 1)));
  return _mm_cvtsi128_si32(x);
}

MINFER_INLINE float hmax512(__m512 v) {
  v = _mm512_max_ps(v, _mm512_shuffle_f32x4(v, v, _MM_SHUFFLE(1, 0, 3, 2)));
  v = _mm512_max_ps(v, _mm512_shuffle_f32x4(v, v, _MM_SHUFFLE(2, 3, 0, 1)));
  __m128 x = _mm512_castps512_ps128(v);
  x = _mm_max_ps(x, _mm_movehl_ps(x, x));
  return _mm_cvtss_f32(_mm_max_ss(x, _mm_movehdup_ps(x)));
}

// Σ q x = Σ u x - 128 Σ x, in wrapping int32 arithmetic.
MINFER_INLINE int32_t remove_zero(int32_t sum_ux, int32_t sx) {
  return int32_t(uint32_t(sum_ux) - 128u * uint32_t(sx));
}

MINFER_INLINE int32_t load_i32(const int8_t* p) {
  int32_t v;
  std::memcpy(&v, p, 4);
  return v;
}

// ---- Activations
// ---------------------------------------------------------------------------------

// One row, n values of x then zeros up to len. Rows needing special handling (all zero, tiny,
// inf / NaN) go to the scalar quantizer, which is the definition.
void quantize_row(const float* x, int64_t n, int64_t len, float scale, int8_t* q, float* d,
                  int32_t* s) {
  __m512 vmax = _mm512_setzero_ps();
  __mmask16 bad = 0;
  for (int64_t i = 0; i < n; i += 16) {
    const __m512 v = _mm512_maskz_loadu_ps(tail_mask(n - i), x + i);
    bad |= _mm512_fpclass_ps_mask(v, 0x99);  // QNaN | SNaN | +inf | -inf
    vmax = _mm512_max_ps(vmax, _mm512_abs_ps(v));
  }
  const float amax = hmax512(vmax);
  if (bad || (scale == 0.f && !(amax >= qm::kActTiny))) {
    if (scale > 0.f)
      qm::quantize_act_static(x, int(n), int(len), scale, q, d, s);
    else
      qm::quantize_act_block(x, int(n), int(len), q, d, s);
    return;
  }
  const __m512 lo = _mm512_set1_ps(-127.f), hi = _mm512_set1_ps(127.f);
  const __m512 id = _mm512_set1_ps(scale > 0.f ? 0.f : 127.f / amax), vs = _mm512_set1_ps(scale);
  __m512i sum = _mm512_setzero_si512();
  for (int64_t i = 0; i < len; i += 16) {
    const __m512 v = _mm512_maskz_loadu_ps(tail_mask(n - i), x + i);
    // Dynamic: x * (127 / max) is within ±127 up to rounding; static: x / scale, saturated.
    const __m512 r = scale > 0.f ? _mm512_div_ps(v, vs) : _mm512_mul_ps(v, id);
    const __m512i c = _mm512_cvtps_epi32(_mm512_min_ps(_mm512_max_ps(r, lo), hi));
    sum = _mm512_add_epi32(sum, c);
    _mm_storeu_si128((__m128i*)(q + i), _mm512_cvtepi32_epi8(c));
  }
  *d = scale > 0.f ? scale : amax / 127.f;
  *s = hsum512i(sum);
}

// ---- Decode: row-major codes, RW weight rows x R tokens per call (quant_impl.h run_all)
// -------------------------------------------------------------------------------

struct GArgs {
  const int8_t* xq;
  const int32_t* sx;
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
      __m512i acc[RW][R];
      for (int i = 0; i < RW; ++i)
        for (int r = 0; r < R; ++r) acc[i][r] = _mm512_setzero_si512();
      for (int64_t k = 0; k < g.Kp; k += 64) {
        __m512i xv[R];
        for (int r = 0; r < R; ++r) xv[r] = _mm512_loadu_si512(xr[r] + k);
        for (int i = 0; i < RW; ++i) {
          const __m512i w = _mm512_loadu_si512(wr[i] + k);
          for (int r = 0; r < R; ++r) acc[i][r] = _mm512_dpbusd_epi32(acc[i][r], w, xv[r]);
        }
      }
      for (int i = 0; i < RW; ++i)
        for (int r = 0; r < R; ++r)
          emit(*g.out, t0 + r, n0 + i, remove_zero(hsum512i(acc[i][r]), g.sx[t0 + r]));
    }
  };
};

// ---- Prefill: packed weight blocks
// --------------------------------------------------------------

// Block b of the packed weight: for each k4, rows b*64 .. b*64+63, 4 codes each (rows past N:
// code 128, i.e. weight 0).
// il > 1: rows interleaved by il, 64-byte chunks, codes stored as u - 128 (flipped back here).
void pack_block(const uint8_t* codes, int64_t rb, int64_t N, int64_t Kp, int64_t b, uint8_t* dst,
                int64_t il) {
  const int64_t n0 = b * kBlock, rows = std::min(kBlock, N - n0);
  const int64_t k4s = Kp / 4;
  uint32_t* out = reinterpret_cast<uint32_t*>(dst);
  for (int64_t k4 = 0; k4 < k4s; ++k4) {
    uint32_t* o = out + k4 * kBlock;
    int64_t r = 0;
    if (il == 1) {
      for (; r < rows; ++r) std::memcpy(o + r, codes + (n0 + r) * rb + 4 * k4, 4);
    } else {
      const int64_t k = 4 * k4;
      for (; r < rows; ++r) {
        const int64_t n = n0 + r;
        std::memcpy(o + r, codes + (n - n % il) * rb + ((k / 64) * il + n % il) * 64 + k % 64, 4);
        o[r] ^= 0x80808080u;
      }
    }
    for (; r < kBlock; ++r) o[r] = 0x80808080u;
  }
}

// TB tokens (t0..) x NB panels of 16 rows (n0..), the whole of Kp. The accumulators are named
// variables, not an array: GCC scalarizes a [6][4] array of vectors only partly and spills it.
#define MINFER_ACC_ROW(t)                                                 \
  if constexpr (TB > t) {                                                 \
    const __m512i xb = _mm512_set1_epi32(load_i32(xr + t * Kp + k));      \
    a##t##0 = _mm512_dpbusd_epi32(a##t##0, w0, xb);                       \
    if constexpr (NB > 1) a##t##1 = _mm512_dpbusd_epi32(a##t##1, w1, xb); \
    if constexpr (NB > 2) a##t##2 = _mm512_dpbusd_epi32(a##t##2, w2, xb); \
    if constexpr (NB > 3) a##t##3 = _mm512_dpbusd_epi32(a##t##3, w3, xb); \
  }
#define MINFER_ACC_SAVE(t)                     \
  if constexpr (TB > t) {                      \
    acc[t][0] = a##t##0;                       \
    if constexpr (NB > 1) acc[t][1] = a##t##1; \
    if constexpr (NB > 2) acc[t][2] = a##t##2; \
    if constexpr (NB > 3) acc[t][3] = a##t##3; \
  }

template <int TB, int NB>
void gemm_tile(const uint8_t* pw, const int8_t* xq, int64_t Kp, int64_t t0, int64_t n0, int64_t N,
               const int32_t* sx, const I8Out& o) {
  static_assert(TB >= 1 && TB <= 6 && NB >= 1 && NB <= 4, "register tile up to 6 x 4");
  const __m512i z = _mm512_setzero_si512();
  __m512i a00 = z, a01 = z, a02 = z, a03 = z, a10 = z, a11 = z, a12 = z, a13 = z;
  __m512i a20 = z, a21 = z, a22 = z, a23 = z, a30 = z, a31 = z, a32 = z, a33 = z;
  __m512i a40 = z, a41 = z, a42 = z, a43 = z, a50 = z, a51 = z, a52 = z, a53 = z;
  const int8_t* xr = xq + t0 * Kp;
  for (int64_t k = 0; k < Kp; k += 4) {
    const uint8_t* p = pw + k * kBlock;  // k4 step k / 4 starts at (k / 4) * 256 bytes
    const __m512i w0 = _mm512_loadu_si512(p);
    const __m512i w1 = NB > 1 ? _mm512_loadu_si512(p + 64) : z;
    const __m512i w2 = NB > 2 ? _mm512_loadu_si512(p + 128) : z;
    const __m512i w3 = NB > 3 ? _mm512_loadu_si512(p + 192) : z;
    MINFER_ACC_ROW(0)
    MINFER_ACC_ROW(1)
    MINFER_ACC_ROW(2)
    MINFER_ACC_ROW(3)
    MINFER_ACC_ROW(4)
    MINFER_ACC_ROW(5)
  }
  __m512i acc[TB][NB];
  MINFER_ACC_SAVE(0)
  MINFER_ACC_SAVE(1)
  MINFER_ACC_SAVE(2)
  MINFER_ACC_SAVE(3)
  MINFER_ACC_SAVE(4)
  MINFER_ACC_SAVE(5)
  for (int t = 0; t < TB; ++t) {
    const int64_t tt = t0 + t;
    const __m512i corr = _mm512_set1_epi32(int32_t(128u * uint32_t(sx[tt])));
    for (int j = 0; j < NB; ++j) {
      const int64_t n = n0 + 16 * j;
      const __mmask16 m = tail_mask(N - n);
      const __m512i v = _mm512_sub_epi32(acc[t][j], corr);
      if (o.c) {
        _mm512_mask_storeu_epi32(o.c + tt * o.ldc + n, m, v);
      } else {
        const __m512 s = _mm512_mul_ps(_mm512_set1_ps(o.d[tt]), _mm512_maskz_loadu_ps(m, o.sw + n));
        _mm512_mask_storeu_ps(o.y + tt * o.ldy + n, m, _mm512_mul_ps(_mm512_cvtepi32_ps(v), s));
      }
    }
  }
}
#undef MINFER_ACC_ROW
#undef MINFER_ACC_SAVE

template <int NB>
void gemm_rows(const uint8_t* pw, const int8_t* xq, int64_t Kp, int64_t t0, int64_t t1, int64_t n0,
               int64_t N, const int32_t* sx, const I8Out& o) {
  int64_t t = t0;
  for (; t + kTileT <= t1; t += kTileT) gemm_tile<kTileT, NB>(pw, xq, Kp, t, n0, N, sx, o);
  switch (t1 - t) {
    case 5:
      gemm_tile<5, NB>(pw, xq, Kp, t, n0, N, sx, o);
      break;
    case 4:
      gemm_tile<4, NB>(pw, xq, Kp, t, n0, N, sx, o);
      break;
    case 3:
      gemm_tile<3, NB>(pw, xq, Kp, t, n0, N, sx, o);
      break;
    case 2:
      gemm_tile<2, NB>(pw, xq, Kp, t, n0, N, sx, o);
      break;
    case 1:
      gemm_tile<1, NB>(pw, xq, Kp, t, n0, N, sx, o);
      break;
    default:
      break;
  }
}

void gemm(const int8_t* xq, const int32_t* sx, int64_t T, int64_t Kp, const uint8_t* codes,
          int64_t rb, int64_t N, const I8Out& o, int64_t il) {
  const int64_t blocks = qm::ceil_div(N, kBlock), chunks = qm::ceil_div(T, kChunkT);
  const int64_t bbytes = Kp * kBlock;
  thread_local std::vector<uint8_t> packed;  // of the calling thread; workers only read it
  packed.resize(size_t(blocks * bbytes));
  uint8_t* pk = packed.data();
  const bool par = T * N * Kp >= (int64_t(1) << 22);  // ~4M multiply-adds: ~10 us on one core
#pragma omp parallel if (par)
  {
#pragma omp for schedule(static)
    for (int64_t b = 0; b < blocks; ++b) pack_block(codes, rb, N, Kp, b, pk + b * bbytes, il);
#pragma omp for schedule(static)
    for (int64_t i = 0; i < blocks * chunks; ++i) {
      const int64_t b = i / chunks, c = i % chunks;
      const int64_t n0 = b * kBlock, t0 = c * kChunkT, t1 = std::min(T, t0 + kChunkT);
      const uint8_t* pw = pk + b * bbytes;
      switch (qm::ceil_div(std::min(kBlock, N - n0), 16)) {
        case 1:
          gemm_rows<1>(pw, xq, Kp, t0, t1, n0, N, sx, o);
          break;
        case 2:
          gemm_rows<2>(pw, xq, Kp, t0, t1, n0, N, sx, o);
          break;
        case 3:
          gemm_rows<3>(pw, xq, Kp, t0, t1, n0, N, sx, o);
          break;
        default:
          gemm_rows<4>(pw, xq, Kp, t0, t1, n0, N, sx, o);
          break;
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
  if (T >= kGemmMinT) {
    gemm(xq, sx, T, Kp, codes, rb, N, out, il);
    return;
  }
  MINFER_CHECK(il == 1, "simd_matmul_i8: interleaved codes (by {}) need T >= {}", il, kGemmMinT);
  const GArgs g{xq, sx, Kp, codes, rb, &out};
  run_all<GemvTile::K>(N, T, Kp, g);
}

}  // namespace minfer::qcpu

#endif  // MINFER_QACT_SIMD && MINFER_Q_AVX512
