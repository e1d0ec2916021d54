// Decode attention (attention_decode.h): split-K work items over the thread pool; the query heads
// of a kv head scored and summed together, 4-key score blocks and register-resident value sums
// on AVX2 + FMA builds (AVX-512 machines take the same 8-lane code), plain loops elsewhere.
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

// NR query rows of one token that share a kv head (GQA), hence the same keys and values: each key
// and value row is read (and an F16 one widened) once for all NR rows, not once per row (1.1-1.35x
// on SmolLM2's 9:3 heads, docs/performance.md). Each row's sums are formed in the same order
// whatever NR is, so a row's bits do not depend on how many rows share its pass.
constexpr int kMaxGroupRows = 4;

// s[r][j] = scale · (q[r] · k_j), r < NR, for the n key rows k_j = k + j ldk, D values each.
template <int NR, typename E>
void scores_rows(const float* const* q, const E* k, int64_t ldk, int64_t n, int64_t D, float scale,
                 float* const* s) {
  int64_t j = 0;
#if defined(MINFER_ATTN_AVX2)
  if (D % 8 == 0) {
    // The keys of whole 8-key blocks, 4 at a time (NR x 4 sums in registers); the last n % 8 go to
    // dot().
    const __m128 sv = _mm_set1_ps(scale);
    for (const int64_t n8 = n / 8 * 8; j < n8; j += 4) {
      const E* kj = k + j * ldk;
      __m256 acc[NR][4];
      for (int r = 0; r < NR; ++r)
        for (int u = 0; u < 4; ++u) acc[r][u] = _mm256_setzero_ps();
      for (int64_t d = 0; d < D; d += 8)
        for (int u = 0; u < 4; ++u) {
          const __m256 kv = load8(kj + u * ldk + d);
          for (int r = 0; r < NR; ++r)
            acc[r][u] = _mm256_fmadd_ps(_mm256_loadu_ps(q[r] + d), kv, acc[r][u]);
        }
      // One reduction for 4 keys: lane u is ((a0 + a1) + (a2 + a3)) + ((a4 + a5) + (a6 + a7)) of
      // acc[r][u]'s lanes a0..a7.
      for (int r = 0; r < NR; ++r) {
        const __m256 u0 = _mm256_hadd_ps(_mm256_hadd_ps(acc[r][0], acc[r][1]),
                                         _mm256_hadd_ps(acc[r][2], acc[r][3]));
        const __m128 sum = _mm_add_ps(_mm256_castps256_ps128(u0), _mm256_extractf128_ps(u0, 1));
        _mm_storeu_ps(s[r] + j, _mm_mul_ps(sum, sv));
      }
    }
  }
#endif
  thread_local std::vector<float> buf;
  for (; j < n; ++j) {
    const float* kj = row_f32(k + j * ldk, D, buf);
    for (int r = 0; r < NR; ++r) s[r][j] = scale * dot(q[r], kj, D);
  }
}

#if defined(MINFER_ATTN_AVX2)
// o[r][0 .. 8 ND) = Σ_j p[r][j] v_j[0 .. 8 ND), r < NR, the NR x ND sums in registers.
template <int NR, int ND, typename E>
void pv_rows_block(const float* const* p, const E* v, int64_t ldv, int64_t n, float* const* o,
                   int64_t d0) {
  __m256 acc[NR][ND];
  for (int r = 0; r < NR; ++r)
    for (int u = 0; u < ND; ++u) acc[r][u] = _mm256_setzero_ps();
  for (int64_t j = 0; j < n; ++j) {
    const E* vj = v + j * ldv + d0;
    __m256 pj[NR];
    for (int r = 0; r < NR; ++r) pj[r] = _mm256_broadcast_ss(p[r] + j);
    for (int u = 0; u < ND; ++u) {
      const __m256 vv = load8(vj + 8 * u);
      for (int r = 0; r < NR; ++r) acc[r][u] = _mm256_fmadd_ps(pj[r], vv, acc[r][u]);
    }
  }
  for (int r = 0; r < NR; ++r)
    for (int u = 0; u < ND; ++u) _mm256_storeu_ps(o[r] + d0 + 8 * u, acc[r][u]);
}
#endif

#if defined(MINFER_ATTN_AVX2)
// pv_rows_block<NR, nb> for a run-time nb in [0, NB] (0: nothing), instantiating only those.
template <int NR, int NB, typename E>
void pv_rows_tail(int nb, const float* const* p, const E* v, int64_t ldv, int64_t n,
                  float* const* o, int64_t d0) {
  if constexpr (NB > 0) {
    if (nb == NB) return pv_rows_block<NR, NB, E>(p, v, ldv, n, o, d0);
    pv_rows_tail<NR, NB - 1, E>(nb, p, v, ldv, n, o, d0);
  }
}
#endif

// o[r][d] = Σ_j p[r][j] v_j[d], r < NR, d < D, over the n value rows v_j = v + j ldv.
template <int NR, typename E>
void pv_rows(const float* const* p, const E* v, int64_t ldv, int64_t n, int64_t D,
             float* const* o) {
  int64_t d0 = 0;
#if defined(MINFER_ATTN_AVX2)
  // Column blocks of ND x 8 with NR x ND <= 12 accumulators (8 blocks for one row), then one
  // block of the nb < ND that are left.
  constexpr int ND = NR == 1 ? 8 : 12 / NR;
  for (; d0 + 8 * ND <= D; d0 += 8 * ND) pv_rows_block<NR, ND, E>(p, v, ldv, n, o, d0);
  pv_rows_tail<NR, ND - 1, E>(int((D - d0) / 8), p, v, ldv, n, o, d0);
  d0 += (D - d0) / 8 * 8;
#endif
  for (int r = 0; r < NR; ++r) std::fill(o[r] + d0, o[r] + D, 0.f);
  if (d0 == D) return;
  thread_local std::vector<float> buf;
  for (int64_t j = 0; j < n; ++j) {
    const float* vj = row_f32(v + j * ldv + d0, D - d0, buf);  // columns d0..D
    for (int r = 0; r < NR; ++r)
      for (int64_t d = d0; d < D; ++d) o[r][d] += p[r][j] * vj[d - d0];
  }
}

// One group of NR query rows (heads g0 .. g0 + NR - 1 of a kv head, one token) against n keys:
// their scores, soft-capping and key mask, the chunk's maximum m and Σ e^(s - m) per row, and
// Σ e^(s - m) v. Row i's query is q + i D, its output o + i ldo, its m and l at m[i ld], l[i ld].
template <typename E>
struct GroupArgs {
  const float* q;
  const E* k;
  int64_t ldk;
  const E* v;
  int64_t ldv;
  int64_t n, D;
  float scale, softcap;
  const int32_t* key_mask;  // n flags (0: masked), or null
  float* sc;                // kMaxGroupRows rows of scores, sc_ld apart
  int64_t sc_ld;
  float* o;
  int64_t ldo;
  float *m, *l;
  int64_t ld;  // between rows' m and l
};

template <int NR, typename E>
void group_rows(const GroupArgs<E>& g) {
  const float* qs[NR];
  float* ss[NR];
  float* os[NR];
  for (int r = 0; r < NR; ++r) {
    qs[r] = g.q + r * g.D;
    ss[r] = g.sc + r * g.sc_ld;
    os[r] = g.o + r * g.ldo;
  }
  const int64_t n = g.n;
  scores_rows<NR>(qs, g.k, g.ldk, n, g.D, g.scale, ss);
  for (int r = 0; r < NR; ++r) {
    float* row = ss[r];
    if (g.softcap > 0) cap_attention_scores(row, n, g.softcap);
    if (g.key_mask)
      for (int64_t j = 0; j < n; ++j)
        if (g.key_mask[j] == 0) row[j] = -INFINITY;
    float mx = -INFINITY;
    for (int64_t j = 0; j < n; ++j) mx = std::max(mx, row[j]);
    if (mx == -INFINITY) {  // every key of the chunk masked: m stays -inf, o is not read
      std::fill(row, row + n, 0.f);
      continue;
    }
    g.m[r * g.ld] = mx;
    g.l[r * g.ld] = exp_shift_sum(row, row, n, mx);
  }
  pv_rows<NR>(ss, g.v, g.ldv, n, g.D, os);
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
    sc.resize(size_t(kMaxGroupRows * cl));
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t b = i / (Hkv * nc), kh = i / nc % Hkv, c = i % nc;
      const int64_t j0 = c * cl, j1 = std::min(S, j0 + cl);
      float* ob = part + i * per_item;
      float* mb = ob + R * D;
      float* lb = mb + R;
      // A chunk that leaves a row no key keeps m = -inf: the merge skips it (o unread).
      std::fill(mb, mb + R, -INFINITY);
      std::fill(lb, lb + R, 0.f);
      for (int64_t t = 0; t < T; ++t) {
        const int64_t limit = a.causal ? std::min(S, a.pos0 + t + 1) : S;
        const int64_t lo = std::max(j0, attention_window_first(a, t)), hi = std::min(j1, limit);
        if (lo >= hi) continue;
        // The G heads of kv head kh see the same keys at token t: rows r = g T + t, up to
        // kMaxGroupRows at a time.
        for (int64_t g0 = 0; g0 < G; g0 += kMaxGroupRows) {
          const int nr = int(std::min<int64_t>(kMaxGroupRows, G - g0));
          const GroupArgs<E> ga{q + (b * T + t) * ldq + (kh * G + g0) * D,
                                k + (b * S + lo) * ldk + kh * hsk,
                                ldk,
                                v + (b * S + lo) * ldv + kh * hsv,
                                ldv,
                                hi - lo,
                                D,
                                scale,
                                a.softcap,
                                a.key_mask ? a.key_mask + b * S + lo : nullptr,
                                sc.data(),
                                cl,
                                ob + (g0 * T + t) * D,
                                T * D,
                                mb + g0 * T + t,
                                lb + g0 * T + t,
                                T};
          static constexpr void (*kGroups[kMaxGroupRows])(const GroupArgs<E>&) = {
              group_rows<1, E>, group_rows<2, E>, group_rows<3, E>, group_rows<4, E>};
          kGroups[nr - 1](ga);
        }
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
