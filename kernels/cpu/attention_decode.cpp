// Decode attention (attention_decode.h): split-K work items over the thread pool, 8-key score
// blocks and register-resident value sums on AVX2 + FMA builds (AVX-512 machines take the same
// 8-lane code), plain loops elsewhere.
#include "kernels/cpu/attention_decode.h"

#include <algorithm>
#include <cmath>

#include "engine/half.h"
#include "engine/thread_pool.h"
#include "kernels/cpu/softmax.h"

#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#include <immintrin.h>
#define MINFER_ATTN_AVX2 1
#endif

namespace minfer {

namespace {

#if defined(MINFER_ATTN_AVX2)
// 8 elements of a KV-cache row as f32.
inline __m256 load8(const float* p) {
  return _mm256_loadu_ps(p);
}
inline __m256 load8(const uint16_t* p) {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}
#endif

// Σ x[i] y[i] in 16 interleaved partial sums (vectorized by the compiler).
float dot(const float* x, const float* y, int64_t n) {
  float acc[16] = {};
  int64_t i = 0;
  for (; i + 16 <= n; i += 16)
    for (int l = 0; l < 16; ++l) acc[l] += x[i + l] * y[i + l];
  float s = 0;
  for (int l = 0; l < 16; ++l) s += acc[l];
  for (; i < n; ++i) s += x[i] * y[i];
  return s;
}

// n values of a KV-cache row as f32: the row itself, or its fp16 values widened into buf (the
// same arithmetic then runs on both, so an F16 cache gives the bits of an F32 one holding the
// rounded values).
inline const float* row_f32(const float* p, int64_t n, std::vector<float>& buf) {
  (void)n;
  (void)buf;
  return p;
}
inline const float* row_f32(const uint16_t* p, int64_t n, std::vector<float>& buf) {
  buf.resize(size_t(n));
  f16_to_f32_n(p, buf.data(), size_t(n));
  return buf.data();
}

// s[j] = scale · (q · k_j) for the n key rows k_j = k + j ldk, D values each.
template <typename E>
void scores(const float* q, const E* k, int64_t ldk, int64_t n, int64_t D, float scale, float* s) {
  int64_t j = 0;
#if defined(MINFER_ATTN_AVX2)
  if (D % 8 == 0) {
    const __m256 sv = _mm256_set1_ps(scale);
    for (; j + 8 <= n; j += 8) {
      const E* kj = k + j * ldk;
      __m256 acc[8];
      for (int u = 0; u < 8; ++u) acc[u] = _mm256_setzero_ps();
      for (int64_t d = 0; d < D; d += 8) {
        const __m256 qv = _mm256_loadu_ps(q + d);
        for (int u = 0; u < 8; ++u) acc[u] = _mm256_fmadd_ps(qv, load8(kj + u * ldk + d), acc[u]);
      }
      // One reduction for the 8 keys: lane u of r is Σ acc[u].
      const __m256 t0 = _mm256_hadd_ps(acc[0], acc[1]), t1 = _mm256_hadd_ps(acc[2], acc[3]);
      const __m256 t2 = _mm256_hadd_ps(acc[4], acc[5]), t3 = _mm256_hadd_ps(acc[6], acc[7]);
      const __m256 u0 = _mm256_hadd_ps(t0, t1), u1 = _mm256_hadd_ps(t2, t3);
      const __m256 r =
          _mm256_add_ps(_mm256_permute2f128_ps(u0, u1, 0x20), _mm256_permute2f128_ps(u0, u1, 0x31));
      _mm256_storeu_ps(s + j, _mm256_mul_ps(r, sv));
    }
  }
#endif
  thread_local std::vector<float> buf;
  for (; j < n; ++j) s[j] = scale * dot(q, row_f32(k + j * ldk, D, buf), D);
}

#if defined(MINFER_ATTN_AVX2)
// o[0 .. 8 ND) = Σ_j p[j] v_j[0 .. 8 ND), the sums in registers.
template <int ND, typename E>
void pv_block(const float* p, const E* v, int64_t ldv, int64_t n, float* o) {
  __m256 acc[ND];
  for (int u = 0; u < ND; ++u) acc[u] = _mm256_setzero_ps();
  for (int64_t j = 0; j < n; ++j) {
    const __m256 pj = _mm256_set1_ps(p[j]);
    const E* vj = v + j * ldv;
    for (int u = 0; u < ND; ++u) acc[u] = _mm256_fmadd_ps(pj, load8(vj + 8 * u), acc[u]);
  }
  for (int u = 0; u < ND; ++u) _mm256_storeu_ps(o + 8 * u, acc[u]);
}
#endif

// o[d] = Σ_j p[j] v_j[d] for d < D over the n value rows v_j = v + j ldv.
template <typename E>
void pv(const float* p, const E* v, int64_t ldv, int64_t n, int64_t D, float* o) {
  int64_t d0 = 0;
#if defined(MINFER_ATTN_AVX2)
  for (; d0 + 64 <= D; d0 += 64) pv_block<8, E>(p, v + d0, ldv, n, o + d0);
  using Block = void (*)(const float*, const E*, int64_t, int64_t, float*);
  static constexpr Block kBlocks[8] = {nullptr,        pv_block<1, E>, pv_block<2, E>,
                                       pv_block<3, E>, pv_block<4, E>, pv_block<5, E>,
                                       pv_block<6, E>, pv_block<7, E>};
  if (const int64_t nb = (D - d0) / 8; nb > 0) kBlocks[nb](p, v + d0, ldv, n, o + d0);
  d0 += (D - d0) / 8 * 8;
#endif
  std::fill(o + d0, o + D, 0.f);
  if (d0 == D) return;
  thread_local std::vector<float> buf;
  for (int64_t j = 0; j < n; ++j) {
    const float pj = p[j];
    const float* vj = row_f32(v + j * ldv + d0, D - d0, buf);  // columns d0..D
    for (int64_t d = d0; d < D; ++d) o[d] += pj * vj[d - d0];
  }
}

template <typename E>
void decode(float* out, int64_t ldo, const float* q, int64_t ldq, const E* k, int64_t ldk,
            int64_t hsk, const E* v, int64_t ldv, int64_t hsv, int64_t T, int64_t S,
            const AttentionArgs& a, float scale, std::vector<float>& scratch) {
  const int64_t H = a.n_heads, Hkv = a.n_kv_heads, D = a.head_dim, B = a.batch, G = H / Hkv;
  const int64_t R = G * T;  // query rows per kv head: row r is head kh G + r / T, token r % T
  const int64_t cl = kDecodeKeyChunk, nc = std::max<int64_t>(1, (S + cl - 1) / cl);
  const int64_t items = B * Hkv * nc, per_item = R * (D + 2);  // o [R, D], then m [R], l [R]
  scratch.resize(size_t(items * per_item));
  float* part = scratch.data();
  parallel_for(items, 2 * R * std::min(S, cl) * D, int64_t(1) << 15, [&](int64_t i0, int64_t i1) {
    thread_local std::vector<float> sc;
    sc.resize(size_t(cl));
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t b = i / (Hkv * nc), kh = i / nc % Hkv, c = i % nc;
      const int64_t j0 = c * cl, j1 = std::min(S, j0 + cl);
      float* ob = part + i * per_item;
      float* mb = ob + R * D;
      float* lb = mb + R;
      for (int64_t r = 0; r < R; ++r) {
        const int64_t t = r % T, h = kh * G + r / T;
        const int64_t limit = a.causal ? std::min(S, a.pos0 + t + 1) : S;
        const int64_t lo = std::max(j0, attention_window_first(a, t)), hi = std::min(j1, limit);
        // A chunk that leaves the row no key keeps m = -inf: the merge skips it (o unread).
        mb[r] = -INFINITY;
        lb[r] = 0.f;
        if (lo >= hi) continue;
        const int64_t n = hi - lo;
        float* row = sc.data();
        scores(q + (b * T + t) * ldq + h * D, k + (b * S + lo) * ldk + kh * hsk, ldk, n, D, scale,
               row);
        if (a.softcap > 0) cap_attention_scores(row, n, a.softcap);
        if (a.key_mask)
          for (int64_t j = 0; j < n; ++j)
            if (a.key_mask[b * S + lo + j] == 0) row[j] = -INFINITY;
        float mx = -INFINITY;
        for (int64_t j = 0; j < n; ++j) mx = std::max(mx, row[j]);
        if (mx == -INFINITY) continue;  // every key of the chunk masked
        mb[r] = mx;
        lb[r] = exp_shift_sum(row, row, n, mx);
        pv(row, v + (b * S + lo) * ldv + kh * hsv, ldv, n, D, ob + r * D);
      }
    }
  });
  // Merge the chunks of each row: o = Σ_c e^(m_c - M) o_c / Σ_c e^(m_c - M) l_c, M = max_c m_c.
  for (int64_t b = 0; b < B; ++b)
    for (int64_t kh = 0; kh < Hkv; ++kh)
      for (int64_t r = 0; r < R; ++r) {
        const int64_t t = r % T, h = kh * G + r / T;
        float* o = out + (b * T + t) * ldo + h * D;
        const float* base = part + (b * Hkv + kh) * nc * per_item;
        float M = -INFINITY;
        for (int64_t c = 0; c < nc; ++c) M = std::max(M, base[c * per_item + R * D + r]);
        std::fill(o, o + D, 0.f);
        if (M == -INFINITY) continue;  // the row sees no key: zeros
        float den = 0.f;
        for (int64_t c = 0; c < nc; ++c) {
          const float* pc = base + c * per_item;
          const float m = pc[R * D + r];
          if (m == -INFINITY) continue;
          const float w = exp_f32(m - M);
          den += w * pc[R * D + R + r];
          const float* oc = pc + r * D;
          for (int64_t d = 0; d < D; ++d) o[d] += w * oc[d];
        }
        const float inv = 1.f / den;
        for (int64_t d = 0; d < D; ++d) o[d] *= inv;
      }
}

}  // namespace

void attention_decode(float* out, int64_t ldo, const float* q, int64_t ldq, const float* k,
                      int64_t ldk, int64_t hsk, const float* v, int64_t ldv, int64_t hsv, int64_t T,
                      int64_t S, const AttentionArgs& a, float scale, std::vector<float>& scratch) {
  decode(out, ldo, q, ldq, k, ldk, hsk, v, ldv, hsv, T, S, a, scale, scratch);
}
void attention_decode(float* out, int64_t ldo, const float* q, int64_t ldq, const uint16_t* k,
                      int64_t ldk, int64_t hsk, const uint16_t* v, int64_t ldv, int64_t hsv,
                      int64_t T, int64_t S, const AttentionArgs& a, float scale,
                      std::vector<float>& scratch) {
  decode(out, ldo, q, ldq, k, ldk, hsk, v, ldv, hsv, T, S, a, scale, scratch);
}

}  // namespace minfer
