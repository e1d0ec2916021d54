// fp16 (IEEE binary16) and bf16 (bfloat16) conversions. Scalar forms are exact (round to nearest
// even) and are the reference; the bulk forms use F16C / AVX-512 when compiled for it.
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstring>

namespace minfer {

inline float bits_to_f32(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline uint32_t f32_to_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

inline float bf16_to_f32(uint16_t h) {
  return bits_to_f32(uint32_t(h) << 16);
}

inline uint16_t f32_to_bf16(float f) {
  uint32_t u = f32_to_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return uint16_t((u >> 16) | 0x40);  // quiet NaN
  u += 0x7fffu + ((u >> 16) & 1);                                          // round to nearest even
  return uint16_t(u >> 16);
}

inline float f16_to_f32(uint16_t h) {
  const uint32_t sign = uint32_t(h & 0x8000) << 16;
  const uint32_t exp = (h >> 10) & 0x1f;
  const uint32_t mant = h & 0x3ff;
  if (exp == 0) {
    if (mant == 0) return bits_to_f32(sign);
    // subnormal: mant * 2^-24
    float v = float(mant) * (1.0f / 16777216.0f);
    return sign ? -v : v;
  }
  if (exp == 31) return bits_to_f32(sign | 0x7f800000u | (mant << 13));
  return bits_to_f32(sign | ((exp + 112) << 23) | (mant << 13));
}

inline uint16_t f32_to_f16(float f) {
  uint32_t u = f32_to_bits(f);
  const uint32_t sign = (u >> 16) & 0x8000;
  u &= 0x7fffffffu;
  if (u > 0x7f800000u) return uint16_t(sign | 0x7e00);   // NaN
  if (u >= 0x477ff000u) return uint16_t(sign | 0x7c00);  // overflow -> inf (>= 65520)
  if (u < 0x38800000u) {                                 // subnormal or zero in f16
    // value * 2^24 rounded to nearest even gives the subnormal mantissa
    const float v = bits_to_f32(u);
    const float scaled = v * 16777216.0f;
    // round half to even via the float addition trick
    const float r = (scaled + 12582912.0f) - 12582912.0f;
    return uint16_t(sign | uint32_t(r));
  }
  const uint32_t mant_odd = (u >> 13) & 1;
  u += 0xfffu + mant_odd;
  return uint16_t(sign | (((u >> 23) - 112) << 10) | ((u >> 13) & 0x3ff));
}

// Bulk conversions (SIMD where available).
void f16_to_f32_n(const uint16_t* src, float* dst, size_t n);
void bf16_to_f32_n(const uint16_t* src, float* dst, size_t n);
void f32_to_f16_n(const float* src, uint16_t* dst, size_t n);
void f32_to_bf16_n(const float* src, uint16_t* dst, size_t n);

// Index of the first value in h[0, n) that is inf or NaN (exponent bits all ones), n when every
// value is finite. Run on the output of a narrowing conversion it finds the elements that were not
// finite or overflowed: f32 -> f16 turns |x| >= 65520 into inf (the largest f16 is 65504), f32 ->
// bf16 turns |x| >= 3.3961e38 into inf.
size_t first_nonfinite_f16(const uint16_t* h, size_t n);
size_t first_nonfinite_bf16(const uint16_t* h, size_t n);

}  // namespace minfer
