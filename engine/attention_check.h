// Argument checks of Backend::attention shared by every backend (the same message whichever
// backend runs): head counts, q/k/v/out widths, batch split, causal key count.
#pragma once
#include <cstdint>
#include <utility>

#include "engine/backend.h"
#include "engine/error.h"

namespace minfer {

// Rows/cols of out, q, k, v as the backend sees them. Returns {T, S}: queries and keys per
// sequence.
inline std::pair<int64_t, int64_t> check_attention_args(int64_t o_rows, int64_t o_cols,
                                                        int64_t q_rows, int64_t q_cols,
                                                        int64_t k_rows, int64_t k_cols,
                                                        int64_t v_rows, int64_t v_cols,
                                                        const AttentionArgs& a) {
  const int64_t H = a.n_heads, Hkv = a.n_kv_heads, D = a.head_dim, B = a.batch;
  MINFER_CHECK(H > 0 && Hkv > 0 && H % Hkv == 0 && B > 0, "attention: bad head counts {}/{}", H,
               Hkv);
  MINFER_CHECK(q_cols == H * D && o_cols == H * D && k_cols == Hkv * D && v_cols == Hkv * D,
               "attention: q/k/v widths {}/{}/{} do not match {} heads, {} kv heads, dim {}",
               q_cols, k_cols, v_cols, H, Hkv, D);
  MINFER_CHECK(q_rows % B == 0 && k_rows % B == 0 && k_rows == v_rows && o_rows == q_rows,
               "attention: rows do not split into batch {}", B);
  const int64_t T = q_rows / B, S = k_rows / B;
  MINFER_CHECK(!a.causal || a.pos0 + T <= S,
               "attention: {} queries at position {} need {} keys, have {}", T, a.pos0, a.pos0 + T,
               S);
  return {T, S};
}

}  // namespace minfer
