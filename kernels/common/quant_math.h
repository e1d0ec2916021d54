// Weight-only quantization math, written once for host and device code: code packing, the NF4
// table, per-element quantizers/dequantizers and the int8 activation quantizer the integer
// kernels use. compress/quantize.cpp (encoder), engine/formats/quantized.cpp (the reference
// dequantize), kernels/cpu/quant*.cpp and kernels/cuda/kernels.cu all call these, so they agree on
// every rounding decision.
//
// Legend: K = in features (a row of the [out, in] weight), Kp = K rounded up to 64, G = group
// (weights along a row that share one scale), QA = activation block.
//
// Every format stores, per output row, Kp codes packed into 64-weight chunks (the structs below);
// the K..Kp-1 tail holds the code of the value 0 so padding dequantizes to 0. The integer formats
// share one dequantization rule
//     w = s * (u - z)        u = the unsigned code as stored, z = its zero point:
//   int8     u = q + 128 in 1..255, z = 128 (the +128 offset lets VNNI's u8 x s8 dot take the
//            weight as the unsigned operand; the offset is removed with the activation block sum)
//   int4     symmetric:  u = q + 8 (q in -7..7, s = max|w| / 7), z = 8
//            asymmetric: u in 0..15, z = round(-min / s) in 0..15, s = (max - min) / 15
//   int3     u = q + 4 (q in -4..3, s = -w_m / 4 for the group's largest-magnitude weight w_m),
//            z = 4
//   ternary  u = q + 1 (q in {-1, 0, 1}), z = 1
//   binary   u = 2 * bit (bit 1 = w >= 0), z = 1, so w = s * (2 bit - 1) = ±s
// NF4 instead looks up a 16-value table: w = absmax * kNF4[u].
#pragma once
#include <cmath>
#include <cstdint>

#include "kernels/common/hd.h"

namespace minfer::qm {

constexpr int kChunk = 64;     // weights per packing chunk; code rows are padded to a multiple
constexpr int kDqBlock = 256;  // NF4 double quantization: block scales per second-level block

MINFER_HD constexpr int64_t padded_k(int64_t K) {
  return (K + kChunk - 1) / kChunk * kChunk;
}
MINFER_HD constexpr int64_t ceil_div(int64_t a, int64_t b) {
  return (a + b - 1) / b;
}

// ---- Packed chunks: one 64-weight slice of a code row. Row r of a [out, Kp * bits / 8] code
// tensor is Kp / 64 consecutive chunks. Nibble and bit orders are chosen so that SIMD unpacking
// is a shift and a mask per 128/256-bit lane, never a shuffle.

// int8: 8 bits/weight. u[j] = weight j.
struct ChunkQ8 {
  uint8_t u[64];
};
static_assert(sizeof(ChunkQ8) == 64, "int8 chunk: 64 weights in 64 bytes");

// int4 and NF4: 4 bits/weight. qs[j] low nibble = weight j, high nibble = weight j + 32
// (j < 32): the low nibbles of the 32 bytes are weights 0..31 in order, the high ones 32..63.
struct ChunkQ4 {
  uint8_t qs[32];
};
static_assert(sizeof(ChunkQ4) == 32, "4-bit chunk: 64 weights in 32 bytes");

// ternary: 2 bits/weight. qs[j] bits 2i..2i+1 = weight j + 16 i (j < 16, i < 4): shifting the
// 16 bytes right by 2i and masking with 3 gives weights 16i..16i+15 in order.
struct ChunkQ2 {
  uint8_t qs[16];
};
static_assert(sizeof(ChunkQ2) == 16, "2-bit chunk: 64 weights in 16 bytes");

// int3: 3 bits/weight, 64 weights in 24 bytes. The row is one LSB-first bit stream: weight k
// occupies bits 3k .. 3k+2 (bit b = bit b % 8 of byte b / 8), so 32 weights fill 12 bytes (three
// little-endian int32 words) and 8 weights 3 bytes. This is compressed-tensors' `pack-quantized`
// layout for num_bits = 3 (pack_to_int32: element i at bit 3i of the row's int32 words, stored as
// q + 4), the packed file format (engine/formats/quantized.cpp). A code may straddle two bytes.
struct ChunkQ3 {
  uint8_t qs[24];
};
static_assert(sizeof(ChunkQ3) == 24, "3-bit chunk: 64 weights in 24 bytes");

// binary: 1 bit/weight. bits[j] bit i = weight 8j + i, i.e. the chunk read as a little-endian
// uint64 has weight i in bit i (an AVX-512 64-bit mask as is).
struct ChunkQ1 {
  uint8_t bits[8];
};
static_assert(sizeof(ChunkQ1) == 8, "1-bit chunk: 64 weights in 8 bytes");

// Bytes of one packed row of K weights at `bits` per weight (padding included).
MINFER_HD constexpr int64_t row_bytes(int64_t K, int bits) {
  return padded_k(K) * bits / 8;
}

MINFER_HD inline int get_q4(const uint8_t* row, int64_t k) {
  const uint8_t b = row[(k >> 6) * 32 + (k & 31)];
  return (k & 32) ? b >> 4 : b & 15;
}
MINFER_HD inline void set_q4(uint8_t* row, int64_t k, int v) {
  uint8_t& b = row[(k >> 6) * 32 + (k & 31)];
  b = (k & 32) ? uint8_t((b & 0x0f) | (v << 4)) : uint8_t((b & 0xf0) | (v & 15));
}
MINFER_HD inline int get_q3(const uint8_t* row, int64_t k) {
  const int64_t b = 3 * k;
  const int sh = int(b & 7);
  unsigned v = row[b >> 3];
  if (sh > 5) v |= unsigned(row[(b >> 3) + 1]) << 8;  // the code straddles into the next byte
  return int(v >> sh) & 7;
}
MINFER_HD inline void set_q3(uint8_t* row, int64_t k, int v) {
  const int64_t b = 3 * k;
  const int sh = int(b & 7);
  const unsigned m = 7u << sh, x = unsigned(v & 7) << sh;
  uint8_t& lo = row[b >> 3];
  lo = uint8_t((lo & ~m) | (x & 0xff));
  if (sh > 5) {
    uint8_t& hi = row[(b >> 3) + 1];
    hi = uint8_t((hi & ~(m >> 8)) | (x >> 8));
  }
}
MINFER_HD inline int get_q2(const uint8_t* row, int64_t k) {
  return (row[(k >> 6) * 16 + (k & 15)] >> (((k >> 4) & 3) * 2)) & 3;
}
MINFER_HD inline void set_q2(uint8_t* row, int64_t k, int v) {
  uint8_t& b = row[(k >> 6) * 16 + (k & 15)];
  const int sh = int((k >> 4) & 3) * 2;
  b = uint8_t((b & ~(3 << sh)) | ((v & 3) << sh));
}
MINFER_HD inline int get_q1(const uint8_t* row, int64_t k) {
  return (row[k >> 3] >> (k & 7)) & 1;
}
MINFER_HD inline void set_q1(uint8_t* row, int64_t k, int v) {
  uint8_t& b = row[k >> 3];
  b = uint8_t(v ? b | (1 << (k & 7)) : b & ~(1 << (k & 7)));
}

// ---- Scalar quantizers (encoder side; not hot).

// round-half-even of v clamped to [lo, hi]; NaN maps to 0. Double keeps w / s exact enough even
// when s is subnormal.
MINFER_HD inline int round_clamp(double v, int lo, int hi) {
  if (!(v == v)) return 0;
  const double r = nearbyint(v);
  return r < lo ? lo : r > hi ? hi : int(r);
}

// Symmetric absmax code for w with the stored scale s (0 -> code 0).
MINFER_HD inline int quantize_sym(float w, float s, int qmax) {
  return s > 0.f ? round_clamp(double(w) / double(s), -qmax, qmax) : 0;
}

// Asymmetric 4-bit parameters for a group with minimum mn and maximum mx: the range is widened
// to contain 0 so that 0 is exact (u = z), then s = (max - min) / 15 and z = round(-min / s).
struct AsymParams {
  float scale;
  int zero;
};
MINFER_HD inline AsymParams asym_params(float mn, float mx, int umax) {
  mn = mn < 0.f ? mn : 0.f;
  mx = mx > 0.f ? mx : 0.f;
  const float s = float((double(mx) - double(mn)) / umax);
  if (!(s > 0.f)) return {0.f, 0};
  return {s, round_clamp(-double(mn) / double(s), 0, umax)};
}
MINFER_HD inline int quantize_asym(float w, AsymParams p, int umax) {
  return p.scale > 0.f ? round_clamp(double(w) / double(p.scale) + p.zero, 0, umax) : p.zero;
}

// The shared integer dequantization rule (see the header comment).
MINFER_HD inline float dequant_uz(int u, int z, float s) {
  return s * float(u - z);
}

// ---- NF4 (NormalFloat-4). The 16 values are bitsandbytes' `get_4bit_type("nf4")` table
// (bitsandbytes/functional.py, create_normal_map(offset=0.9677083, use_extra_value=True):
// quantiles of N(0, 1), asymmetric so that 0 is exact, normalised to [-1, 1]), the data type of
// QLoRA (Dettmers et al. 2023, arXiv:2305.14314, section 3). Reproduced with scipy:
//   v1 = norm.ppf(linspace(0.9677083, 0.5, 9)[:-1]); v3 = -norm.ppf(linspace(0.9677083, 0.5,
//   8)[:-1]) sort(v1 + [0] + v3) / max
// Index 7 is 0.0 (the code used for padding and all-zero blocks).
MINFER_HD inline float nf4_value(int i) {
  constexpr float t[16] = {-1.0f,
                           -0.6961928009986877f,
                           -0.5250730514526367f,
                           -0.39491748809814453f,
                           -0.28444138169288635f,
                           -0.18477343022823334f,
                           -0.09105003625154495f,
                           0.0f,
                           0.07958029955625534f,
                           0.16093020141124725f,
                           0.24611230194568634f,
                           0.33791524171829224f,
                           0.44070982933044434f,
                           0.5626170039176941f,
                           0.7229568362236023f,
                           1.0f};
  return t[i & 15];
}
constexpr int kNF4Zero = 7;

// NF4 levels as integers for dot products with 8-bit activations (the q8 path,
// kernels/cpu/quant.h): round(kNF4LevelScale · nf4_value(i)), off the scaled value by < 0.5, i.e.
// < 0.026 % of any nonzero level (the smallest, 0.0796: 651.9 -> 652); the endpoints and 0 are
// exact. A weight is then s · nf4_level(i) / kNF4LevelScale. 8192 = 2^13, so that dividing by it
// is exact in f32 and a level splits into two int8 operands (qm::nf4_level_hi / _lo:
// level = 128 · hi + lo, hi in -64..64, lo in 0..127) for vpmaddubsw. An int8 table (127 · v)
// was measured: its rounding (up to 3.8 % of a level) cost +1.8 % SmolLM2-135M perplexity.
constexpr int kNF4LevelScale = 8192;
MINFER_HD inline int nf4_level(int i) {
  constexpr short t[16] = {-8192, -5703, -4301, -3235, -2330, -1514, -746, 0,
                           652,   1318,  2016,  2768,  3610,  4609,  5922, 8192};
  return t[i & 15];
}
MINFER_HD inline int nf4_level_lo(int i) {
  return nf4_level(i) & 127;
}
MINFER_HD inline int nf4_level_hi(int i) {
  return (nf4_level(i) - nf4_level_lo(i)) / 128;
}

// Index of the NF4 value nearest to v (v = w / absmax, normally in [-1, 1]); ties go to the
// lower index. bitsandbytes' dQuantizeNF4 decision tree compares against the same midpoints.
MINFER_HD inline int nf4_nearest(float v) {
  if (!(v == v)) return kNF4Zero;
  int i = 0;
  while (i < 15 && v > 0.5f * (nf4_value(i) + nf4_value(i + 1))) ++i;
  return i;
}

// NF4 code of w against the (possibly double-quantized) block scale a.
MINFER_HD inline int quantize_nf4(float w, float a) {
  return a != 0.f ? nf4_nearest(float(double(w) / double(a))) : kNF4Zero;
}

// Double quantization (QLoRA section 3): the f32 block scales of a tensor, minus their mean
// (`offset`), are quantized to signed 8-bit codes in blocks of kDqBlock with one f32 scale c per
// block (c = max|a - offset| / 127). bitsandbytes uses its 8-bit "dynamic" code map for this step;
// ours is linear int8, same storage (8 bits per block scale + 32 bits per 256 block scales).
MINFER_HD inline float dq_block_scale(int8_t code, float c, float offset) {
  return c * float(code) + offset;
}

// Ternary (BitNet b1.58, Ma et al. 2024, arXiv:2402.17764, eq. 1-3): gamma = mean|W|, clamped
// below at 1e-5 as in the reference implementation, q = RoundClip(w / gamma, -1, 1).
constexpr float kTernaryMinScale = 1e-5f;
MINFER_HD inline int quantize_ternary(float w, float gamma) {
  return round_clamp(double(w) / double(gamma), -1, 1);
}

// ---- Activations: int8 absmax per block of QA values (QA = 32, 64 or 128), the partner type of
// the integer weight formats (like ggml's q8_0 / q8_K). x ~= d * q, d = max|x| / 127, and
// `sum` = Σ q lets a kernel remove a weight zero point: Σ (u - z) q = Σ u q - z Σ q.
// Rounding is half-to-even of the f32 product x * (127 / max|x|), exactly what the SIMD
// quantizers compute (cvtps_epi32 under the default rounding mode). A block containing inf or NaN
// gets d = NaN, q = 0, so every output it touches is NaN, never a plausible number. A block whose
// max|x| is below 2^-100 (127 / max would overflow) is first scaled by 2^100, which is exact.
constexpr float kActTiny = 7.888609052210118e-31f;  // 2^-100

MINFER_HD inline void quantize_act_block(const float* x, int n, int block, int8_t* q, float* d,
                                         int32_t* sum) {
  float amax = 0.f;
  bool finite = true;
  for (int i = 0; i < n; ++i) {
    const float a = fabsf(x[i]);
    finite = finite && (a <= 3.4028234663852886e38f);
    amax = a > amax ? a : amax;
  }
  int32_t s = 0;
  if (!finite || amax == 0.f) {
    for (int i = 0; i < block; ++i) q[i] = 0;
    *d = finite ? 0.f : NAN;
    *sum = 0;
    return;
  }
  const float pre = amax < kActTiny ? 1.2676506002282294e30f : 1.f;  // 2^100
  const float id = 127.f / (amax * pre);
  for (int i = 0; i < n; ++i) {
    const int v = int(nearbyintf((x[i] * pre) * id));
    const int c = v > 127 ? 127 : v < -127 ? -127 : v;
    q[i] = int8_t(c);
    s += c;
  }
  for (int i = n; i < block; ++i) q[i] = 0;
  *d = amax / 127.f;
  *sum = s;
}

// Static activation scale (W8A8 with a calibrated per-tensor scale, e.g. SmoothQuant's static
// mode, Xiao et al. 2023, arXiv:2211.10438): code = clamp(round_half_even(x / scale), -127, 127)
// with an f32 division, so values beyond 127 * scale saturate. A block with an inf or NaN gets
// d = NaN and q = 0, as in quantize_act_block; otherwise d = scale.
MINFER_HD inline void quantize_act_static(const float* x, int n, int block, float scale, int8_t* q,
                                          float* d, int32_t* sum) {
  bool finite = true;
  for (int i = 0; i < n; ++i) finite = finite && (fabsf(x[i]) <= 3.4028234663852886e38f);
  int32_t s = 0;
  for (int i = 0; i < block; ++i) {
    float v = i < n && finite ? x[i] / scale : 0.f;
    v = v > 127.f ? 127.f : v < -127.f ? -127.f : v;
    const int c = int(nearbyintf(v));
    q[i] = int8_t(c);
    s += c;
  }
  *d = finite ? scale : NAN;
  *sum = s;
}

// Activation block size for an integer weight format with group G over K inputs: the largest of
// 128 / 64 / 32 that divides G (G >= K: one scale per row, 128). Each activation block then lies
// inside one weight group, so one f32 scale product s_w * d_x covers its integer dot product.
MINFER_HD inline int act_block(int64_t group, int64_t K) {
  if (group >= K || group % 128 == 0) return 128;
  return group % 64 == 0 ? 64 : 32;
}

}  // namespace minfer::qm
