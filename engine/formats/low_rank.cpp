#include "engine/formats/low_rank.h"

#include <cblas.h>

#include <algorithm>

#include "engine/error.h"
#include "engine/formats/meta.h"
#include "engine/linear.h"

namespace minfer {

void FormatTraits<LowRank>::check(const LowRank& r, int64_t in, int64_t out,
                                  const std::string& name) {
  MINFER_CHECK(r.u && r.v, "lowrank '{}': both factors (U and V) must be present", name);
  const int64_t rank = r.v->out;
  MINFER_CHECK(r.v->in == in && r.u->out == out && r.u->in == rank,
               "lowrank '{}': factors V [{}, {}] and U [{}, {}] do not make a [{}, {}] weight",
               name, r.v->out, r.v->in, r.u->out, r.u->in, out, in);
  MINFER_CHECK(rank >= 1 && rank <= std::min(in, out),
               "lowrank '{}': rank must be in [1, min(in, out) = {}], found {}", name,
               std::min(in, out), rank);
  MINFER_CHECK(!r.u->bias.defined() && !r.v->bias.defined(),
               "lowrank '{}': the factors carry no bias (the bias belongs to the low-rank Linear)",
               name);
  MINFER_CHECK(
      !std::holds_alternative<LowRank>(r.u->repr) && !std::holds_alternative<LowRank>(r.v->repr),
      "lowrank '{}': a factor may not be low-rank itself", name);
  check_linear(*r.v);
  check_linear(*r.u);
}

size_t FormatTraits<LowRank>::bytes(const LowRank& r) {
  return (r.u ? r.u->weight_bytes() : 0) + (r.v ? r.v->weight_bytes() : 0);
}

void FormatTraits<LowRank>::dequantize(const LowRank& r, int64_t in, int64_t out,
                                       const std::string& name, float* w) {
  check(r, in, out, name);
  const Tensor U = dequantize_weight(*r.u), V = dequantize_weight(*r.v);
  const int64_t rank = r.v->out;
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, int(out), int(in), int(rank), 1.f,
              U.data<float>(), int(rank), V.data<float>(), int(in), 0.f, w, int(in));
}

std::string FormatTraits<LowRank>::format(const LowRank& r, int64_t) {
  std::string s = "lowrank-r" + std::to_string(r.v ? r.v->out : 0);
  const std::string f = r.u ? linear_format(*r.u) : "";
  return f.empty() || f == "f32" ? s : s + "+" + f;
}

void FormatTraits<LowRank>::save(const LowRank& r, const std::string& name, TensorSink& sink,
                                 json& meta) {
  meta["rank"] = r.v->out;
  meta["v"] = save_linear(*r.v, name + ".v", sink);
  meta["u"] = save_linear(*r.u, name + ".u", sink);
}

LowRank FormatTraits<LowRank>::load(const TensorSource& src, const std::string& name,
                                    const json& meta, int64_t in, int64_t out) {
  const int64_t rank = meta_field<int64_t>(meta, "rank", name);
  MINFER_CHECK(rank >= 1 && rank <= std::min(in, out),
               "lowrank '{}': rank must be in [1, min(in, out) = {}], found {}", name,
               std::min(in, out), rank);
  MINFER_CHECK(meta.contains("u") && meta.contains("v"), "lowrank '{}': entry lacks 'u' or 'v'",
               name);
  LowRank r;
  r.v = Box<Linear>(load_linear(src, name + ".v", meta["v"], in, rank));
  r.u = Box<Linear>(load_linear(src, name + ".u", meta["u"], rank, out));
  check(r, in, out, name);
  return r;
}

}  // namespace minfer
