// Decode attention on the CPU: a few query rows (T <= 4) against S cached keys and values.
// Legend: B sequences, T query rows each, S keys each, H query heads, Hkv key/value heads,
// G = H / Hkv query heads per key/value head (GQA), D = head dim.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "engine/backend.h"

namespace minfer {

// The first key query row t sees: pos0 + t - window + 1 within a sliding window (causal), else 0.
inline int64_t attention_window_first(const AttentionArgs& a, int64_t t) {
  return a.window > 0 && a.causal ? std::max<int64_t>(0, a.pos0 + t - a.window + 1) : 0;
}
// Soft-capping of attention scores (Gemma-2): s -> cap tanh(s / cap), n values.
inline void cap_attention_scores(float* s, int64_t n, float cap) {
  for (int64_t j = 0; j < n; ++j) s[j] = std::tanh(s[j] / cap) * cap;
}

// Keys per work item of attention_decode (32 measured a little ahead of 64 and 128 at 640-770
// keys on SmolLM2, 2 threads). Fixed (never derived from the thread count), so the
// split, and with it every rounding, is the same on any number of threads.
constexpr int64_t kDecodeKeyChunk = 32;

// out[b*T + t, h*D + d] = Σ_j softmax_j(scale · q[b*T + t, h*D:] · k[b*S + j, kh*D:] + mask) ·
// v[b*S + j, kh*D + d], kh = h / G, with a's causal limit (key j visible to row t when j <=
// pos0 + t), sliding window, soft-capping (before the mask) and key mask, as
// Backend::attention; a row that sees no key gives zeros. q/out rows have strides ldq/ldo, k/v
// rows ldk/ldv, and kv head kh starts hsk/hsv elements after kh - 1: D for a [B*S, Hkv*D] cache
// (k[b*S + j, kh*D:] at k + (b*S + j) ldk + kh D), the head stride of a head-major [Hkv, S, D]
// one (B = 1; key j of head kh at k + j ldk + kh hsk, ldk = D when contiguous).
//
// Split-K ("flash-decoding", Dao et al. 2023): the work items are (sequence, kv head, chunk of
// kDecodeKeyChunk keys); per token, an item scores and sums the G query heads of its kv head
// together (up to 4 at a time: each key and value row is read, an F16 one widened, once for all
// of them) and leaves, per row, the chunk's score maximum m, Σ e^(s - m) and Σ e^(s - m) v; the
// chunks of a row are then merged with weights e^(m_c - max m). Scores of 4 keys share one
// horizontal reduction; the values' pass keeps its sums in registers. A row's bits do not depend
// on how many heads share its pass, on the cache layout, or on the thread count.
// scratch: reused between calls (resized here).
void attention_decode(float* out, int64_t ldo, const float* q, int64_t ldq, const float* k,
                      int64_t ldk, int64_t hsk, const float* v, int64_t ldv, int64_t hsv, int64_t T,
                      int64_t S, const AttentionArgs& a, float scale, std::vector<float>& scratch);
// The same with an F16 KV cache: k and v hold IEEE fp16 bits (strides in elements), widened to
// f32 as they are read (F16C where built); the arithmetic is the f32 version's on those values.
void attention_decode(float* out, int64_t ldo, const float* q, int64_t ldq, const uint16_t* k,
                      int64_t ldk, int64_t hsk, const uint16_t* v, int64_t ldv, int64_t hsv,
                      int64_t T, int64_t S, const AttentionArgs& a, float scale,
                      std::vector<float>& scratch);

}  // namespace minfer
