// GGML block quantization formats (the weight types found in GGUF files), written once as plain
// structs plus inline per-block dequantizers usable from host and device code.
//
// Source of every layout: ggml's ggml-common.h (block_q4_0 ... block_q8_K) and the reference
// dequantize_row_* functions in ggml-quants.c; docs: github.com/ggml-org/ggml docs/gguf.md.
// Conventions shared by all blocks:
//   - every scale stored as `uint16_t` is an IEEE fp16 bit pattern (ggml_half);
//   - a "nibble" pair byte holds weight j in its low 4 bits and weight j + (half the group) in
//     its high 4 bits (never two neighbours), see each struct;
//   - y = d * q (symmetric) or y = d * q - m / d * q + m (with a min). Every product d * q that is
//     followed by an add is exact in f32 (an 11-bit fp16 significand times a <= 6-bit scale times
//     a <= 5-bit quant needs at most 22 bits), so the results are bit-exact with ggml's reference
//     C code and gguf-py's numpy whether or not the compiler contracts them into FMAs.
//
// Legend: QK weights per block; QK_K = 256 weights per "super-block" of the K-quants.
#pragma once
#include <cstdint>
#include <cstring>

#include "kernels/common/hd.h"

namespace minfer::ggml {

constexpr int QK4_0 = 32, QK4_1 = 32, QK5_0 = 32, QK5_1 = 32, QK8_0 = 32, QK8_1 = 32;
constexpr int QK_K = 256;

// ggml_type values of the block types (the same numbers as GgmlType in engine/gguf.h, which
// device code does not include; engine/formats/ggml_blocks.cpp asserts they agree).
enum class BlockType : uint32_t {
  Q4_0 = 2,
  Q4_1 = 3,
  Q5_0 = 6,
  Q5_1 = 7,
  Q8_0 = 8,
  Q2_K = 10,
  Q3_K = 11,
  Q4_K = 12,
  Q5_K = 13,
  Q6_K = 14,
};
constexpr int K_SCALE_SIZE = 12;  // packed 6-bit scales + mins of Q4_K / Q5_K

// Q4_0: 32 weights in 18 bytes = 4.5 bits/weight. y = d * (q - 8), q in [0, 15].
// qs[j] low nibble = weight j, high nibble = weight j + 16 (j < 16).
struct BlockQ4_0 {
  uint16_t d;      // fp16 scale
  uint8_t qs[16];  // nibbles
};
static_assert(sizeof(BlockQ4_0) == 18, "Q4_0 block is 2 + 16 bytes");

// Q4_1: 32 weights in 20 bytes = 5 bits/weight. y = d * q + m, q in [0, 15]; nibbles as Q4_0.
struct BlockQ4_1 {
  uint16_t d;      // fp16 scale
  uint16_t m;      // fp16 min (added)
  uint8_t qs[16];  // nibbles
};
static_assert(sizeof(BlockQ4_1) == 20, "Q4_1 block is 2 + 2 + 16 bytes");

// Q5_0: 32 weights in 22 bytes = 5.5 bits/weight. y = d * (q - 16), q in [0, 31].
// Low 4 bits as Q4_0; bit j of the little-endian u32 qh is the 5th bit of weight j.
struct BlockQ5_0 {
  uint16_t d;      // fp16 scale
  uint8_t qh[4];   // high bits, little-endian u32
  uint8_t qs[16];  // low nibbles
};
static_assert(sizeof(BlockQ5_0) == 22, "Q5_0 block is 2 + 4 + 16 bytes");

// Q5_1: 32 weights in 24 bytes = 6 bits/weight. y = d * q + m, q in [0, 31]; bits as Q5_0.
struct BlockQ5_1 {
  uint16_t d;      // fp16 scale
  uint16_t m;      // fp16 min (added)
  uint8_t qh[4];   // high bits, little-endian u32
  uint8_t qs[16];  // low nibbles
};
static_assert(sizeof(BlockQ5_1) == 24, "Q5_1 block is 2 + 2 + 4 + 16 bytes");

// Q8_0: 32 weights in 34 bytes = 8.5 bits/weight. y = d * q, q int8 in order.
struct BlockQ8_0 {
  uint16_t d;     // fp16 scale
  int8_t qs[32];  // quants
};
static_assert(sizeof(BlockQ8_0) == 34, "Q8_0 block is 2 + 32 bytes");

// Q8_1: 32 weights in 36 bytes = 9 bits/weight. An activation-side type (s = d * sum(qs) feeds
// dot products); ggml has no dequantizer for it, neither do we. Only sized.
struct BlockQ8_1 {
  uint16_t d;     // fp16 scale
  uint16_t s;     // fp16 d * sum(qs)
  int8_t qs[32];  // quants
};
static_assert(sizeof(BlockQ8_1) == 36, "Q8_1 block is 2 + 2 + 32 bytes");

// Q2_K: 256 weights in 84 bytes = 2.625 bits/weight. 16 sub-blocks of 16 weights; scales[i] low
// nibble = 4-bit scale, high nibble = 4-bit min of sub-block i. y = d*sc * q - dmin*m, q in [0, 3].
// Weight 128*n + 32*j + l (n < 2, j < 4, l < 32) is bits 2j..2j+1 of qs[32*n + l], in sub-block
// 8*n + 2*j + l/16.
struct BlockQ2_K {
  uint8_t scales[16];  // 4-bit scale | 4-bit min << 4
  uint8_t qs[64];      // 2-bit quants, 4 per byte
  uint16_t d;          // fp16 super-block scale of the scales
  uint16_t dmin;       // fp16 super-block scale of the mins
};
static_assert(sizeof(BlockQ2_K) == 84, "Q2_K block is 16 + 64 + 2 + 2 bytes");

// Q3_K: 256 weights in 110 bytes = 3.4375 bits/weight. y = d * (sc - 32) * (q - 4*!h).
// q: 2 low bits placed as in Q2_K; h: bit (4*n + j) of hmask[l] (set means "no -4").
// 16 signed 6-bit scales: low 4 bits of scale i are scales[i] & 15 (i < 8) or scales[i-8] >> 4,
// high 2 bits are (scales[8 + i%4] >> 2*(i/4)) & 3.
struct BlockQ3_K {
  uint8_t hmask[32];   // high bit of each quant
  uint8_t qs[64];      // low 2 bits, 4 per byte
  uint8_t scales[12];  // 16 packed 6-bit scales
  uint16_t d;          // fp16 super-block scale
};
static_assert(sizeof(BlockQ3_K) == 110, "Q3_K block is 32 + 64 + 12 + 2 bytes");

// Q4_K: 256 weights in 144 bytes = 4.5 bits/weight. 8 sub-blocks of 32; 6-bit scale sc and min m
// per sub-block (see q4k_scale_min). y = d*sc * q - dmin*m, q in [0, 15]. Chunk c < 4 of qs (32
// bytes) holds sub-block 2c in the low nibbles and sub-block 2c+1 in the high nibbles.
struct BlockQ4_K {
  uint16_t d;                    // fp16 scale of the scales
  uint16_t dmin;                 // fp16 scale of the mins
  uint8_t scales[K_SCALE_SIZE];  // 8 scales + 8 mins, 6 bits each
  uint8_t qs[QK_K / 2];          // nibbles
};
static_assert(sizeof(BlockQ4_K) == 144, "Q4_K block is 2 + 2 + 12 + 128 bytes");

// Q5_K: 256 weights in 176 bytes = 5.5 bits/weight. As Q4_K, plus a 5th bit: for sub-block s
// (= 2c or 2c+1) the bit is bit s of qh[l], l the position within the 32-weight sub-block.
struct BlockQ5_K {
  uint16_t d;                    // fp16 scale of the scales
  uint16_t dmin;                 // fp16 scale of the mins
  uint8_t scales[K_SCALE_SIZE];  // 8 scales + 8 mins, 6 bits each
  uint8_t qh[QK_K / 8];          // 5th bits
  uint8_t qs[QK_K / 2];          // low nibbles
};
static_assert(sizeof(BlockQ5_K) == 176, "Q5_K block is 2 + 2 + 12 + 32 + 128 bytes");

// Q6_K: 256 weights in 210 bytes = 6.5625 bits/weight. 16 sub-blocks of 16 with int8 scales.
// y = d * scales[s] * (q - 32), q in [0, 63]. In half n < 2, for l < 32, with L = ql + 64n,
// H = qh + 32n, S = scales + 8n:
//   weight 128n + l      : L[l] & 15      | (H[l] >> 0 & 3) << 4, scale S[l/16 + 0]
//   weight 128n + l + 32 : L[l + 32] & 15 | (H[l] >> 2 & 3) << 4, scale S[l/16 + 2]
//   weight 128n + l + 64 : L[l] >> 4      | (H[l] >> 4 & 3) << 4, scale S[l/16 + 4]
//   weight 128n + l + 96 : L[l + 32] >> 4 | (H[l] >> 6 & 3) << 4, scale S[l/16 + 6]
struct BlockQ6_K {
  uint8_t ql[QK_K / 2];  // low 4 bits
  uint8_t qh[QK_K / 4];  // high 2 bits
  int8_t scales[QK_K / 16];
  uint16_t d;  // fp16 super-block scale
};
static_assert(sizeof(BlockQ6_K) == 210, "Q6_K block is 128 + 64 + 16 + 2 bytes");

// Q8_K: 256 weights in 292 bytes = 9.125 bits/weight. y = d * q; bsums (sums of groups of 16
// quants) only serve dot products.
struct BlockQ8_K {
  float d;          // f32 scale
  int8_t qs[QK_K];  // quants
  int16_t bsums[QK_K / 16];
};
static_assert(sizeof(BlockQ8_K) == 292, "Q8_K block is 4 + 256 + 32 bytes");

// Exact IEEE binary16 -> binary32 (every fp16 value is representable in f32).
MINFER_HD inline float fp16_to_f32(uint16_t h) {
  const uint32_t sign = uint32_t(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1fu;
  const uint32_t mant = h & 0x3ffu;
  uint32_t bits;
  if (exp == 0) {
    if (mant == 0) {
      bits = sign;
    } else {
      const float v = float(mant) * (1.0f / 16777216.0f);  // subnormal: mant * 2^-24, exact
      return sign ? -v : v;
    }
  } else if (exp == 31) {
    bits = sign | 0x7f800000u | (mant << 13);
  } else {
    bits = sign | ((exp + 112u) << 23) | (mant << 13);
  }
#ifdef __CUDA_ARCH__
  return __uint_as_float(bits);
#else
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
#endif
}

// The 6-bit scale and min of sub-block j < 8 of a Q4_K / Q5_K block. Layout of the 12 bytes:
// bytes 0-3: scale j (j < 4) in bits 0-5, bits 6-7 are bits 4-5 of scale j+4;
// bytes 4-7: min j (j < 4) in bits 0-5, bits 6-7 are bits 4-5 of min j+4;
// bytes 8-11: low nibble = bits 0-3 of scale j+4, high nibble = bits 0-3 of min j+4.
MINFER_HD inline void q4k_scale_min(int j, const uint8_t* q, uint8_t* sc, uint8_t* m) {
  if (j < 4) {
    *sc = q[j] & 63;
    *m = q[j + 4] & 63;
  } else {
    *sc = uint8_t((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4));
    *m = uint8_t((q[j + 4] >> 4) | ((q[j] >> 6) << 4));
  }
}

MINFER_HD inline void dequant_block(const BlockQ4_0& b, float* y) {
  const float d = fp16_to_f32(b.d);
  for (int j = 0; j < 16; ++j) {
    y[j] = float(int(b.qs[j] & 0xF) - 8) * d;
    y[j + 16] = float(int(b.qs[j] >> 4) - 8) * d;
  }
}

MINFER_HD inline void dequant_block(const BlockQ4_1& b, float* y) {
  const float d = fp16_to_f32(b.d), m = fp16_to_f32(b.m);
  for (int j = 0; j < 16; ++j) {
    y[j] = float(b.qs[j] & 0xF) * d + m;
    y[j + 16] = float(b.qs[j] >> 4) * d + m;
  }
}

MINFER_HD inline void dequant_block(const BlockQ5_0& b, float* y) {
  const float d = fp16_to_f32(b.d);
  const uint32_t qh = uint32_t(b.qh[0]) | uint32_t(b.qh[1]) << 8 | uint32_t(b.qh[2]) << 16 |
                      uint32_t(b.qh[3]) << 24;
  for (int j = 0; j < 16; ++j) {
    const int h0 = (qh >> j) & 1, h1 = (qh >> (j + 16)) & 1;
    y[j] = float(int((b.qs[j] & 0xF) | h0 << 4) - 16) * d;
    y[j + 16] = float(int((b.qs[j] >> 4) | h1 << 4) - 16) * d;
  }
}

MINFER_HD inline void dequant_block(const BlockQ5_1& b, float* y) {
  const float d = fp16_to_f32(b.d), m = fp16_to_f32(b.m);
  const uint32_t qh = uint32_t(b.qh[0]) | uint32_t(b.qh[1]) << 8 | uint32_t(b.qh[2]) << 16 |
                      uint32_t(b.qh[3]) << 24;
  for (int j = 0; j < 16; ++j) {
    const int h0 = (qh >> j) & 1, h1 = (qh >> (j + 16)) & 1;
    y[j] = float((b.qs[j] & 0xF) | h0 << 4) * d + m;
    y[j + 16] = float((b.qs[j] >> 4) | h1 << 4) * d + m;
  }
}

MINFER_HD inline void dequant_block(const BlockQ8_0& b, float* y) {
  const float d = fp16_to_f32(b.d);
  for (int j = 0; j < 32; ++j) y[j] = float(b.qs[j]) * d;
}

MINFER_HD inline void dequant_block(const BlockQ2_K& b, float* y) {
  const float d = fp16_to_f32(b.d), dmin = fp16_to_f32(b.dmin);
  for (int n = 0; n < 2; ++n) {
    for (int j = 0; j < 4; ++j) {
      for (int half = 0; half < 2; ++half) {
        const uint8_t s = b.scales[8 * n + 2 * j + half];
        const float dl = d * float(s & 0xF), ml = dmin * float(s >> 4);
        for (int l = 16 * half; l < 16 * half + 16; ++l) {
          const int q = (b.qs[32 * n + l] >> (2 * j)) & 3;
          y[128 * n + 32 * j + l] = dl * float(q) - ml;
        }
      }
    }
  }
}

MINFER_HD inline void dequant_block(const BlockQ3_K& b, float* y) {
  const float d = fp16_to_f32(b.d);
  int8_t sc[16];
  for (int i = 0; i < 16; ++i) {
    const int lo = i < 8 ? (b.scales[i] & 0xF) : (b.scales[i - 8] >> 4);
    const int hi = (b.scales[8 + i % 4] >> (2 * (i / 4))) & 3;
    sc[i] = int8_t((lo | hi << 4) - 32);
  }
  for (int n = 0; n < 2; ++n) {
    for (int j = 0; j < 4; ++j) {
      for (int half = 0; half < 2; ++half) {
        const float dl = d * float(sc[8 * n + 2 * j + half]);
        for (int l = 16 * half; l < 16 * half + 16; ++l) {
          const int q = (b.qs[32 * n + l] >> (2 * j)) & 3;
          const int h = (b.hmask[l] >> (4 * n + j)) & 1;
          y[128 * n + 32 * j + l] = dl * float(q - (h ? 0 : 4));
        }
      }
    }
  }
}

MINFER_HD inline void dequant_block(const BlockQ4_K& b, float* y) {
  const float d = fp16_to_f32(b.d), dmin = fp16_to_f32(b.dmin);
  for (int c = 0; c < 4; ++c) {
    uint8_t sc0, m0, sc1, m1;
    q4k_scale_min(2 * c, b.scales, &sc0, &m0);
    q4k_scale_min(2 * c + 1, b.scales, &sc1, &m1);
    const float d0 = d * float(sc0), min0 = dmin * float(m0);
    const float d1 = d * float(sc1), min1 = dmin * float(m1);
    const uint8_t* q = b.qs + 32 * c;
    for (int l = 0; l < 32; ++l) {
      y[64 * c + l] = d0 * float(q[l] & 0xF) - min0;
      y[64 * c + 32 + l] = d1 * float(q[l] >> 4) - min1;
    }
  }
}

MINFER_HD inline void dequant_block(const BlockQ5_K& b, float* y) {
  const float d = fp16_to_f32(b.d), dmin = fp16_to_f32(b.dmin);
  for (int c = 0; c < 4; ++c) {
    uint8_t sc0, m0, sc1, m1;
    q4k_scale_min(2 * c, b.scales, &sc0, &m0);
    q4k_scale_min(2 * c + 1, b.scales, &sc1, &m1);
    const float d0 = d * float(sc0), min0 = dmin * float(m0);
    const float d1 = d * float(sc1), min1 = dmin * float(m1);
    const uint8_t* q = b.qs + 32 * c;
    for (int l = 0; l < 32; ++l) {
      const int h0 = (b.qh[l] >> (2 * c)) & 1, h1 = (b.qh[l] >> (2 * c + 1)) & 1;
      y[64 * c + l] = d0 * float((q[l] & 0xF) | h0 << 4) - min0;
      y[64 * c + 32 + l] = d1 * float((q[l] >> 4) | h1 << 4) - min1;
    }
  }
}

MINFER_HD inline void dequant_block(const BlockQ6_K& b, float* y) {
  const float d = fp16_to_f32(b.d);
  for (int n = 0; n < 2; ++n) {
    const uint8_t* ql = b.ql + 64 * n;
    const uint8_t* qh = b.qh + 32 * n;
    const int8_t* s = b.scales + 8 * n;
    float* o = y + 128 * n;
    for (int l = 0; l < 32; ++l) {
      const int is = l / 16;
      const int q0 = ((ql[l] & 0xF) | ((qh[l] >> 0) & 3) << 4) - 32;
      const int q1 = ((ql[l + 32] & 0xF) | ((qh[l] >> 2) & 3) << 4) - 32;
      const int q2 = ((ql[l] >> 4) | ((qh[l] >> 4) & 3) << 4) - 32;
      const int q3 = ((ql[l + 32] >> 4) | ((qh[l] >> 6) & 3) << 4) - 32;
      o[l] = d * float(s[is + 0]) * float(q0);
      o[l + 32] = d * float(s[is + 2]) * float(q1);
      o[l + 64] = d * float(s[is + 4]) * float(q2);
      o[l + 96] = d * float(s[is + 6]) * float(q3);
    }
  }
}

MINFER_HD inline void dequant_block(const BlockQ8_K& b, float* y) {
  for (int j = 0; j < QK_K; ++j) y[j] = b.d * float(b.qs[j]);
}

}  // namespace minfer::ggml
