#include "engine/compressed_folder.h"

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "engine/error.h"

namespace minfer {

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

json read_config(const fs::path& p) {
  std::ifstream f(p);
  if (!f.good()) return json();
  std::stringstream ss;
  ss << f.rdbuf();
  return json::parse(ss.str(), nullptr, false);
}

// The folder's safetensors files as a TensorSource for load_linear.
class StoreTensors final : public TensorSource {
 public:
  explicit StoreTensors(const WeightStore& s) : s_(s) {}
  bool has(const std::string& name) const override { return s_.has(name); }
  Tensor get(const std::string& name) const override { return s_.get(name); }

 private:
  const WeightStore& s_;
};

}  // namespace

bool is_compressed_folder(const std::string& dir) {
  const fs::path p = fs::path(dir) / "config.json";
  if (!fs::is_regular_file(p)) return false;
  const json j = read_config(p);
  return j.is_object() && j.contains("quantization") && j["quantization"].is_object() &&
         j["quantization"].value("format", "") == "minfer";
}

CompressedSource::CompressedSource(const std::string& dir)
    : CompressedSource(
          [&] {
            const fs::path p = fs::path(dir) / "config.json";
            MINFER_CHECK(fs::is_regular_file(p), "{}: cannot open config.json", dir);
            std::ifstream f(p);
            std::stringstream ss;
            ss << f.rdbuf();
            return ss.str();
          }(),
          WeightStore::open(dir), dir) {}

CompressedSource::CompressedSource(const std::string& config_json, WeightStore store,
                                   const std::string& origin)
    : dir_(origin), store_(std::move(store)) {
  const std::string p = (fs::path(origin) / "config.json").string();
  const json j = json::parse(config_json, nullptr, false);
  MINFER_CHECK(j.is_object() && j.contains("quantization") && j["quantization"].is_object(),
               "{}: config.json has no quantization section", p);
  const json& q = j["quantization"];
  MINFER_CHECK(q.value("format", "") == "minfer",
               "{}: quantization.format is '{}', expected 'minfer'", p, q.value("format", ""));
  MINFER_CHECK(q.value("version", 0) == 1,
               "{}: quantization version {} is not supported (this build reads version 1)", p,
               q.value("version", 0));
  method_ = q.value("method", "");
  MINFER_CHECK(q.contains("tensors") && q["tensors"].is_object(),
               "{}: quantization.tensors missing", p);
  for (auto& [name, e] : q["tensors"].items()) {
    MINFER_CHECK(e.is_object() && e.contains("repr") && e["repr"].is_string(),
                 "{}: quantization entry for '{}' lacks a 'repr'", p, name);
    info_[name] = e.dump();
  }
}

bool CompressedSource::has(const std::string& name) const {
  return store_.has(name) || info_.count(name) != 0;
}

Tensor CompressedSource::tensor(const std::string& name,
                                std::initializer_list<int64_t> shape) const {
  return float_tensor(store_, name, shape);
}

std::string CompressedSource::describe() const {
  return store_.describe();
}

Linear CompressedSource::linear(const std::string& prefix, int64_t in, int64_t out, bool bias,
                                bool transposed) const {
  const std::string wn = prefix + ".weight";
  auto it = info_.find(wn);
  MINFER_CHECK(it != info_.end() || store_.has(wn), "{}: missing tensor '{}'", dir_, wn);
  // A weight without an entry is a plain tensor in the model's own layout.
  json e = it != info_.end() ? json::parse(it->second) : json{{"repr", "dense"}};
  if (e["repr"] == "dense" && !e.contains("transposed")) e["transposed"] = transposed;
  try {
    Linear l = load_linear(StoreTensors(store_), wn, e, in, out);
    if (bias) l.bias = vec(prefix + ".bias", out);
    check_linear(l);
    return l;
  } catch (const Error& err) {
    MINFER_FAIL("{}: {}", dir_, err.what());
  }
}

}  // namespace minfer
