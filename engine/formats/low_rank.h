// LowRank: W ≈ U · V, a rank-r factorization (truncated SVD, SVD-LLM) held as two child
// Linears, so either factor can itself be any format (dense, int8, int4, ...). y = (x · Vᵀ) · Uᵀ:
// two linears through the backend, never the product. Bits per weight: (bytes(U) + bytes(V)) * 8
// / (in * out), e.g. f32 factors at rank r: 32 r (in + out) / (in out).
#pragma once
#include "engine/formats/format.h"

namespace minfer {

struct LowRank {
  Box<Linear> v;  // in -> rank: V [rank, in] (compress/lowrank.h folds the singular values in)
  Box<Linear> u;  // rank -> out: U [out, rank]
};

template <>
struct FormatTraits<LowRank> {
  static constexpr const char* repr = "lowrank";
  // Both factors present and valid (recursively), no biases on them, v.in == in, u.out == out,
  // v.out == u.in == rank with 1 <= rank <= min(in, out).
  static void check(const LowRank& r, int64_t in, int64_t out, const std::string& name);
  static size_t bytes(const LowRank& r);
  // U · V in f32 (sgemm on the dequantized factors).
  static void dequantize(const LowRank& r, int64_t in, int64_t out, const std::string& name,
                         float* w);
  // "lowrank-r<rank>", then "+<format>" when the factors are not f32 (both share it).
  static std::string format(const LowRank& r, int64_t in);
  // Factors under `<name>.u` / `<name>.v` in their own formats; meta "u" / "v" hold theirs.
  static void save(const LowRank& r, const std::string& name, TensorSink& sink, json& meta);
  static LowRank load(const TensorSource& src, const std::string& name, const json& meta,
                      int64_t in, int64_t out);
  static std::vector<const Linear*> children(const LowRank& r) { return {r.v.get(), r.u.get()}; }
};

}  // namespace minfer
