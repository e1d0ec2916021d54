#include "models/lora_merge.h"

#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>

#include "engine/json_text.h"
#include "engine/linear.h"
#include "engine/safetensors.h"

namespace minfer {

namespace fs = std::filesystem;

bool has_lora_adapters(const std::string& dir) {
  return fs::is_directory(dir) && fs::exists(fs::path(dir) / "adapter_config.json");
}

int merge_lora_adapters(Model& m, const std::string& dir) {
  const fs::path cp = fs::path(dir) / "adapter_config.json";
  const fs::path wp = fs::path(dir) / "adapter_model.safetensors";
  std::ifstream in(cp, std::ios::binary);
  MINFER_CHECK(in.good(), "{}: cannot read", cp.string());
  std::stringstream ss;
  ss << in.rdbuf();
  const nlohmann::json cfg = parse_json_text(ss.str(), cp.string());
  MINFER_CHECK(cfg.is_object(), "{}: expected a JSON object", cp.string());
  auto str = [&](const char* k, const char* dflt) {
    if (!cfg.contains(k)) return std::string(dflt);
    MINFER_CHECK(cfg[k].is_string(), "{}: '{}' must be a string", cp.string(), k);
    return cfg[k].get<std::string>();
  };
  MINFER_CHECK(str("peft_type", "LORA") == "LORA",
               "{}: peft_type '{}', only LORA adapters are merged", cp.string(),
               str("peft_type", "LORA"));
  for (const char* k : {"use_rslora", "use_dora"})
    if (cfg.contains(k) && cfg[k].is_boolean() && cfg[k].get<bool>())
      throw NotImplemented(fmt::format("{}: {} adapters", cp.string(), k));
  MINFER_CHECK(str("bias", "none") == "none", "{}: bias '{}' (not implemented: only bias 'none')",
               cp.string(), str("bias", "none"));
  for (const char* k : {"rank_pattern", "alpha_pattern"})
    if (cfg.contains(k) && cfg[k].is_object() && !cfg[k].empty())
      throw NotImplemented(fmt::format("{}: per-module {}", cp.string(), k));
  int64_t r = 0;
  float alpha = 0.f;
  MINFER_CHECK(cfg.contains("r") && json_get(cfg["r"], &r) && r > 0,
               "{}: 'r' must be a positive integer", cp.string());
  MINFER_CHECK(cfg.contains("lora_alpha") && json_get(cfg["lora_alpha"], &alpha),
               "{}: 'lora_alpha' must be a finite number", cp.string());
  const float scale = alpha / float(r);
  MINFER_CHECK(fs::exists(wp), "{}: adapter_config.json without adapter_model.safetensors", dir);
  auto f = SafetensorsFile::open(wp.string());
  std::map<std::string, Linear*> lin;
  for (Linear* l : m.linears()) lin[l->name] = l;
  const std::string pre = "base_model.model.", a_suf = ".lora_A.weight";
  int merged = 0;
  for (const auto& [name, A] : f->tensors()) {
    if (name.size() <= a_suf.size() ||
        name.compare(name.size() - a_suf.size(), a_suf.size(), a_suf) != 0)
      continue;
    std::string mod = name.substr(0, name.size() - a_suf.size());
    if (mod.rfind(pre, 0) == 0) mod = mod.substr(pre.size());
    const Tensor& B = f->get(name.substr(0, name.size() - a_suf.size()) + ".lora_B.weight");
    auto it = lin.find(mod + ".weight");
    MINFER_CHECK(it != lin.end(), "{}: adapter '{}' but the model has no linear '{}.weight'",
                 wp.string(), name, mod);
    Linear& l = *it->second;
    const int64_t I = l.in, O = l.out;
    MINFER_CHECK(A.dtype() == DType::F32 && B.dtype() == DType::F32 && A.ndim() == 2 &&
                     B.ndim() == 2 && A.shape()[0] == r && A.shape()[1] == I && B.shape()[0] == O &&
                     B.shape()[1] == r,
                 "{}: '{}' is {} {} and its B {} {}, expected F32 [{}, {}] and [{}, {}] (r = {})",
                 wp.string(), name, dtype_name(A.dtype()), A.shape_str(), dtype_name(B.dtype()),
                 B.shape_str(), r, I, O, r, r);
    Tensor w0 = dequantize_weight(l);
    Tensor w = Tensor::empty(DType::F32, {O, I});
    const float *a = A.data<float>(), *b = B.data<float>(), *s = w0.data<float>();
    float* d = w.data<float>();
    for (int64_t o = 0; o < O; ++o)
      for (int64_t k = 0; k < I; ++k) {
        float acc = 0.f;
        for (int64_t j = 0; j < r; ++j) acc += b[o * r + j] * a[j * I + k];
        d[o * I + k] = s[o * I + k] + scale * acc;
      }
    l = make_dense(l.name, w, I, O, false, l.bias);
    ++merged;
  }
  MINFER_CHECK(merged > 0, "{}: no lora_A / lora_B tensors", wp.string());
  return merged;
}

}  // namespace minfer
