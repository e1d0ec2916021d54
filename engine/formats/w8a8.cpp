#include "engine/formats/w8a8.h"

#include <cmath>

#include "engine/error.h"
#include "engine/formats/meta.h"

namespace minfer {

void FormatTraits<W8A8>::check(const W8A8& w, int64_t in, int64_t out, const std::string& name) {
  check_int8_rows(w.w, in, out, name, "w8a8");
  MINFER_CHECK(std::isfinite(w.act_scale) && w.act_scale >= 0.f &&
                   (w.act == ActScale::Dynamic || w.act_scale > 0.f),
               "w8a8 '{}': {} activation scale must be finite and {}, found {}", name,
               w.act == ActScale::Static ? "static" : "dynamic",
               w.act == ActScale::Static ? "> 0" : ">= 0", w.act_scale);
}

void FormatTraits<W8A8>::save(const W8A8& r, const std::string& name, TensorSink& sink,
                              json& meta) {
  FormatTraits<Quantized>::save(r.w, name, sink, meta);
  meta["act"] = r.act == ActScale::Static ? "static" : "dynamic";
  if (r.act == ActScale::Static) meta["act_scale"] = r.act_scale;
}

W8A8 FormatTraits<W8A8>::load(const TensorSource& src, const std::string& name, const json& meta,
                              int64_t in, int64_t out) {
  W8A8 a;
  a.w = FormatTraits<Quantized>::load(src, name, meta, in, out);
  const std::string act = meta_field<std::string>(meta, "act", name);
  MINFER_CHECK(act == "static" || act == "dynamic",
               "'{}': act must be 'static' or 'dynamic', found '{}'", name, act);
  a.act = act == "static" ? ActScale::Static : ActScale::Dynamic;
  if (a.act == ActScale::Static) a.act_scale = meta_field<float>(meta, "act_scale", name);
  check(a, in, out, name);
  return a;
}

}  // namespace minfer
