#include "engine/compressed_folder.h"

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "engine/error.h"
#include "engine/json_text.h"

namespace minfer {

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

std::string read_text(const fs::path& p) {
  std::ifstream f(p);
  MINFER_CHECK(f.good(), "{}: cannot open", p.string());
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

// A string field of `o`, or "" when absent; a value of another type is an error naming it.
std::string str_field(const json& o, const char* key, const std::string& where) {
  auto it = o.find(key);
  if (it == o.end()) return "";
  MINFER_CHECK(it->is_string(), "{}: {} should be a string, found {}", where, key, it->dump());
  return it->get<std::string>();
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
  // A probe: text that is not a readable JSON object is not our folder (the loader that takes the
  // folder next reports what is wrong with it).
  const json j = json::parse(read_text(p), nullptr, /*allow_exceptions=*/false);
  if (!j.is_object()) return false;
  auto q = j.find("quantization");
  if (q == j.end() || !q->is_object()) return false;
  auto f = q->find("format");
  return f != q->end() && f->is_string() && f->get<std::string>() == "minfer";
}

CompressedSource::CompressedSource(const std::string& dir)
    : CompressedSource(
          [&] {
            const fs::path p = fs::path(dir) / "config.json";
            MINFER_CHECK(fs::is_regular_file(p), "{}: cannot open config.json", dir);
            return read_text(p);
          }(),
          WeightStore::open(dir), dir) {}

CompressedSource::CompressedSource(const std::string& config_json, WeightStore store,
                                   const std::string& origin)
    : dir_(origin), store_(std::move(store)) {
  const std::string p = (fs::path(origin) / "config.json").string();
  const json j = parse_json_text(config_json, p, "config");
  MINFER_CHECK(j.is_object() && j.contains("quantization") && j.at("quantization").is_object(),
               "{}: config.json has no quantization section", p);
  const json& q = j.at("quantization");
  const std::string format = str_field(q, "format", p + ": quantization");
  MINFER_CHECK(format == "minfer", "{}: quantization.format is '{}', expected 'minfer'", p, format);
  MINFER_CHECK(q.contains("version") && q.at("version").is_number_integer() &&
                   q.at("version").get<int64_t>() == 1,
               "{}: quantization version {} is not supported (this build reads version 1)", p,
               q.contains("version") ? q.at("version").dump() : "(missing)");
  method_ = str_field(q, "method", p + ": quantization");
  MINFER_CHECK(q.contains("tensors") && q.at("tensors").is_object(),
               "{}: quantization.tensors missing", p);
  for (auto& [name, e] : q.at("tensors").items()) {
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
