#include "engine/linear.h"

#include "engine/error.h"
#include "engine/formats/meta.h"

namespace minfer {

void throw_meta_error(const std::string& where, const std::string& what) {
  MINFER_FAIL("'{}': {}", where, what);
}

size_t Linear::weight_bytes() const {
  return std::visit([](const auto& r) { return FormatTraits<std::decay_t<decltype(r)>>::bytes(r); },
                    repr);
}

std::vector<std::string> registered_reprs() {
  std::vector<std::string> v;
  for_each_format([&]<typename R>(std::type_identity<R>) { v.push_back(FormatTraits<R>::repr); });
  return v;
}

void check_linear(const Linear& l) {
  MINFER_CHECK(l.in > 0 && l.out > 0, "tensor '{}': empty weight [{}, {}]", l.name, l.out, l.in);
  std::visit(
      [&](const auto& r) {
        FormatTraits<std::decay_t<decltype(r)>>::check(r, l.in, l.out, l.name);
      },
      l.repr);
  if (l.bias.defined())
    MINFER_CHECK(l.bias.dtype() == DType::F32 && l.bias.numel() == l.out && l.bias.is_contiguous(),
                 "tensor '{}' bias: expected contiguous F32 [{}], found {} {}", l.name, l.out,
                 dtype_name(l.bias.dtype()), l.bias.shape_str());
}

const char* linear_repr(const Linear& l) {
  return std::visit([](const auto& r) { return FormatTraits<std::decay_t<decltype(r)>>::repr; },
                    l.repr);
}

std::string linear_format(const Linear& l) {
  return std::visit(
      [&](const auto& r) { return FormatTraits<std::decay_t<decltype(r)>>::format(r, l.in); },
      l.repr);
}

Tensor dequantize_weight(const Linear& l) {
  MINFER_CHECK(l.in > 0 && l.out > 0, "tensor '{}': empty weight [{}, {}]", l.name, l.out, l.in);
  Tensor w = Tensor::empty(DType::F32, {l.out, l.in});
  std::visit(
      [&](const auto& r) {
        FormatTraits<std::decay_t<decltype(r)>>::dequantize(r, l.in, l.out, l.name,
                                                            w.data<float>());
      },
      l.repr);
  return w;
}

double bits_per_weight(const Linear& l) {
  return double(l.weight_bytes()) * 8.0 / (double(l.in) * double(l.out));
}

json save_linear(const Linear& l, const std::string& name, TensorSink& sink) {
  check_linear(l);
  json meta = json::object();
  meta["in"] = l.in;  // formats whose file layout depends on the width read it (int3)
  meta["out"] = l.out;
  std::visit(
      [&](const auto& r) { FormatTraits<std::decay_t<decltype(r)>>::save(r, name, sink, meta); },
      l.repr);
  meta["repr"] = linear_repr(l);
  meta["format"] = linear_format(l);
  meta["in"] = l.in;
  meta["out"] = l.out;
  return meta;
}

Linear load_linear(const TensorSource& src, const std::string& name, const json& meta, int64_t in,
                   int64_t out) {
  const std::string repr = meta_field<std::string>(meta, "repr", name);
  if (meta.contains("in") || meta.contains("out"))
    MINFER_CHECK(meta_field<int64_t>(meta, "in", name) == in &&
                     meta_field<int64_t>(meta, "out", name) == out,
                 "'{}': stored as [{}, {}] (out, in), the model expects [{}, {}]", name,
                 meta.value("out", int64_t(0)), meta.value("in", int64_t(0)), out, in);
  Linear l;
  l.name = name;
  l.in = in;
  l.out = out;
  bool found = false;
  for_each_format([&]<typename R>(std::type_identity<R>) {
    if (!found && repr == FormatTraits<R>::repr) {
      l.repr = FormatTraits<R>::load(src, name, meta, in, out);
      found = true;
    }
  });
  if (!found) {
    std::string known;
    for (const std::string& r : registered_reprs()) known += (known.empty() ? "" : ", ") + r;
    MINFER_FAIL("'{}': unknown representation '{}' (this build reads: {})", name, repr, known);
  }
  return l;
}

Linear make_linear(const std::string& name, int64_t in, int64_t out, LinearRepr repr, Tensor bias) {
  Linear l;
  l.name = name;
  l.in = in;
  l.out = out;
  l.repr = std::move(repr);
  if (bias.defined() && bias.dtype() != DType::F32) bias = bias.to_f32();
  l.bias = std::move(bias);
  check_linear(l);
  return l;
}

Linear make_dense(const std::string& name, Tensor w, int64_t in, int64_t out, bool transposed,
                  Tensor bias) {
  if (bias.defined())
    MINFER_CHECK(bias.numel() == out, "tensor '{}' bias: expected {} values, found {}", name, out,
                 bias.numel());
  return make_linear(name, in, out, Dense{std::move(w), transposed}, std::move(bias));
}

}  // namespace minfer
