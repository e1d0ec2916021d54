#include "engine/compress.h"

#include <fmt/format.h>
#include <fnmatch.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "engine/error.h"
#include "engine/model_folder.h"
#include "engine/progress.h"
#include "engine/safetensors.h"
#include "models/model.h"
#include "tokenizer/tokenizer.h"

namespace minfer {

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

const char* kHeadName = "lm_head.weight";

bool is_float_method(const std::string& m) {
  return m == "f32" || m == "fp16" || m == "bf16";
}

DType float_dtype(const std::string& m) {
  return m == "f32" ? DType::F32 : m == "fp16" ? DType::F16 : DType::BF16;
}

std::vector<std::string> split(const std::string& s, char sep) {
  std::vector<std::string> out;
  std::string cur;
  for (char c : s) {
    if (c == sep) {
      out.push_back(cur);
      cur.clear();
    } else {
      cur += c;
    }
  }
  out.push_back(cur);
  return out;
}

void validate_one(const CompressSpec& s) {
  static const std::vector<std::string> methods = {"f32", "fp16",   "bf16",    "int8",     "int4",
                                                   "nf4", "binary", "ternary", "llm-int8", "w8a8"};
  MINFER_CHECK(std::find(methods.begin(), methods.end(), s.method) != methods.end(),
               "unknown compression method '{}' (expected one of: {})", s.method,
               fmt::join(methods, ", "));
  const int g = s.quant.group;
  MINFER_CHECK(g >= 0, "method '{}': group must be positive, got {}", s.method, g);
  if (g != 0)
    MINFER_CHECK(s.method == "int8" || s.method == "int4" || s.method == "nf4",
                 "method '{}' has no group option (groups: int8, int4, nf4)", s.method);
  if (g != 0 && s.method == "int4")
    MINFER_CHECK(g == 32 || g == 64 || g == 128 || g % 32 == 0,
                 "int4: group must be a multiple of 32 (32, 64, 128), got {}", g);
  MINFER_CHECK(!s.quant.asymmetric || s.method == "int4",
               "method '{}': asymmetric (zero points) is an int4 option", s.method);
  MINFER_CHECK(!s.quant.double_quant || s.method == "nf4",
               "method '{}': double quantization is an nf4 option", s.method);
  MINFER_CHECK(!s.static_act || s.method == "w8a8",
               "method '{}': static activation scales are a w8a8 option", s.method);
  MINFER_CHECK(std::isfinite(s.threshold) && s.threshold > 0,
               "llm-int8: threshold must be a positive number, got {}", s.threshold);
  if (!s.embed_format.empty())
    MINFER_CHECK(is_float_method(s.embed_format),
                 "embedding format '{}': embedding tables are kept in f32, fp16 or bf16 (the "
                 "lookup reads rows directly)",
                 s.embed_format);
}

QuantSpec quant_spec_for(const CompressSpec& s) {
  QuantSpec q = s.quant;
  q.method = s.method == "fp16" ? "f16" : s.method;
  return q;
}

// max |x| over a calibration's features -> a per-tensor activation scale.
float static_act_scale(const std::vector<float>& absmax) {
  float m = 0.f;
  for (float v : absmax) m = std::max(m, v);
  return m > 0.f ? m / 127.f : 1.f / 127.f;
}

Linear convert_linear(const Linear& l, const CompressSpec& s, const ActStats* stats) {
  const std::vector<float>* absmax = nullptr;
  if (stats) {
    auto it = stats->absmax.find(l.name);
    if (it != stats->absmax.end()) absmax = &it->second;
  }
  if (s.method == "llm-int8") return quantize_llm_int8(l, s.threshold, absmax);
  if (s.method == "w8a8") {
    if (!s.static_act) return quantize_w8a8(l, ActScale::Dynamic);
    MINFER_CHECK(absmax != nullptr,
                 "w8a8 static: no calibration statistics for '{}' (run a calibration pass: "
                 "compress --calibrate FILE)",
                 l.name);
    return quantize_w8a8(l, ActScale::Static, static_act_scale(*absmax));
  }
  return quantize_linear(l, quant_spec_for(s));
}

std::string default_head_format(const CompressSpec& s) {
  if (is_float_method(s.method)) return s.method;
  return "int8";
}

std::string default_embed_format(const CompressSpec& s) {
  return s.method == "f32" || s.method == "bf16" ? s.method : "fp16";
}

// The spec an override (or the head default) names, inheriting calibration-related options.
CompressSpec spec_for_format(const std::string& format, const CompressSpec& base) {
  CompressSpec s = compress_spec_from_name(format);
  s.threshold = base.threshold;
  return s;
}

const CompressSpec& pick(const std::string& name,
                         const std::vector<std::pair<std::string, CompressSpec>>& keep,
                         const CompressSpec& dflt) {
  for (const auto& [pat, spec] : keep)
    if (fnmatch(pat.c_str(), name.c_str(), 0) == 0) return spec;
  return dflt;
}

const std::string* match_pattern(const std::string& name,
                                 const std::vector<std::pair<std::string, std::string>>& keep) {
  for (const auto& [pat, fmt] : keep)
    if (fnmatch(pat.c_str(), name.c_str(), 0) == 0) return &fmt;
  return nullptr;
}

class Calibrator final : public LinearObserver {
 public:
  explicit Calibrator(ActStats& st) : st_(st) {}
  void observe(const Linear& w, const float* x, int64_t rows, int64_t ld) override {
    std::vector<float>& m = st_.absmax[w.name];
    if (m.empty()) m.assign(size_t(w.in), 0.f);
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t c = 0; c < w.in; ++c)
        m[size_t(c)] = std::max(m[size_t(c)], std::fabs(x[r * ld + c]));
  }

 private:
  ActStats& st_;
};

std::string repr_format(const Linear& l) {
  return std::visit(
      [&](const auto& r) -> std::string {
        using R = std::decay_t<decltype(r)>;
        if constexpr (std::is_same_v<R, Dense>) {
          return r.w.dtype() == DType::F32 ? "f32" : r.w.dtype() == DType::F16 ? "fp16" : "bf16";
        } else if constexpr (std::is_same_v<R, Quantized>) {
          std::string s = qscheme_name(r.scheme);
          if (r.scheme == QScheme::Int8 && r.per_tensor) return s + "-tensor";
          if (r.scheme == QScheme::Ternary) return r.per_tensor ? s : s + "-row";
          if (r.scheme == QScheme::Int4 || r.scheme == QScheme::NF4 || r.group < l.in)
            s += fmt::format("-g{}", r.group);
          if (r.asymmetric) s += "-asym";
          if (r.scale_codes.defined()) s += "-dq";
          return s;
        } else if constexpr (std::is_same_v<R, Int8WithOutliers>) {
          return "llm-int8";
        } else {
          return r.act == ActScale::Static ? "w8a8-static" : "w8a8";
        }
      },
      l.repr);
}

// ---- serialization of one Linear ----------------------------------------------------------

void put(std::vector<std::pair<std::string, Tensor>>& out, const std::string& name,
         const Tensor& t) {
  if (t.defined()) out.emplace_back(name, t.is_contiguous() ? t : t.clone());
}

json quantized_json(const Quantized& q, const std::string& name,
                    std::vector<std::pair<std::string, Tensor>>& out) {
  put(out, name + ".codes", q.codes);
  put(out, name + ".scales", q.scales);
  put(out, name + ".zeros", q.zeros);
  put(out, name + ".scale_codes", q.scale_codes);
  put(out, name + ".scale_scales", q.scale_scales);
  json j = {{"scheme", qscheme_name(q.scheme)},
            {"group", q.group},
            {"per_tensor", q.per_tensor},
            {"asymmetric", q.asymmetric}};
  if (q.scale_codes.defined()) j["scale_offset"] = q.scale_offset;
  return j;
}

json linear_json(const Linear& l, const std::string& name,
                 std::vector<std::pair<std::string, Tensor>>& out) {
  json j = std::visit(
      [&](const auto& r) -> json {
        using R = std::decay_t<decltype(r)>;
        if constexpr (std::is_same_v<R, Dense>) {
          put(out, name, r.w);
          return {{"repr", "dense"}, {"transposed", r.transposed}};
        } else if constexpr (std::is_same_v<R, Quantized>) {
          json q = quantized_json(r, name, out);
          q["repr"] = "quantized";
          return q;
        } else if constexpr (std::is_same_v<R, Int8WithOutliers>) {
          json q = quantized_json(r.w, name, out);
          put(out, name + ".outlier_cols", r.outlier_cols);
          put(out, name + ".outlier_w", r.outlier_w);
          q["repr"] = "llm-int8";
          q["threshold"] = r.threshold;
          return q;
        } else {
          json q = quantized_json(r.w, name, out);
          q["repr"] = "w8a8";
          q["act"] = r.act == ActScale::Static ? "static" : "dynamic";
          if (r.act == ActScale::Static) q["act_scale"] = r.act_scale;
          return q;
        }
      },
      l.repr);
  j["in"] = l.in;
  j["out"] = l.out;
  j["format"] = repr_format(l);
  return j;
}

QScheme parse_scheme(const std::string& s, const std::string& where) {
  for (QScheme q : {QScheme::Int8, QScheme::Int4, QScheme::NF4, QScheme::Binary, QScheme::Ternary})
    if (s == qscheme_name(q)) return q;
  MINFER_FAIL("{}: unknown quantization scheme '{}'", where, s);
}

template <typename T>
T field(const json& j, const char* key, const std::string& where) {
  MINFER_CHECK(j.contains(key), "{}: quantization entry lacks '{}'", where, key);
  try {
    return j.at(key).get<T>();
  } catch (const json::exception&) {
    MINFER_FAIL("{}: quantization field '{}' has the wrong type ({})", where, key,
                j.at(key).dump());
  }
}

}  // namespace

// ---- names -------------------------------------------------------------------------------

CompressSpec compress_spec_from_name(const std::string& name) {
  MINFER_CHECK(!name.empty(), "empty compression method name");
  std::vector<std::string> parts = split(name, '-');
  CompressSpec s;
  size_t i = 1;
  s.method = parts[0];
  if (s.method == "f16") s.method = "fp16";
  if (s.method == "llm") {
    MINFER_CHECK(parts.size() > 1 && parts[1] == "int8",
                 "unknown compression method '{}' (did you mean llm-int8?)", name);
    s.method = "llm-int8";
    i = 2;
  }
  s.quant.per_channel = true;
  for (; i < parts.size(); ++i) {
    const std::string& p = parts[i];
    if (p.size() > 1 && p[0] == 'g' && std::all_of(p.begin() + 1, p.end(), ::isdigit)) {
      MINFER_CHECK(p.size() < 8, "{}: group '{}' is out of range", name, p);
      s.quant.group = std::stoi(p.substr(1));
      MINFER_CHECK(s.quant.group > 0, "{}: group must be positive", name);
    } else if (p == "asym") {
      s.quant.asymmetric = true;
    } else if (p == "dq") {
      s.quant.double_quant = true;
    } else if (p == "tensor") {
      MINFER_CHECK(s.method == "int8", "{}: '-tensor' is an int8 option", name);
      s.quant.per_channel = false;
    } else if (p == "row") {
      MINFER_CHECK(s.method == "ternary", "{}: '-row' is a ternary option", name);
      s.quant.ternary_per_row = true;
    } else if (p == "static") {
      s.static_act = true;
    } else if (p == "dynamic") {
      s.static_act = false;
    } else {
      MINFER_FAIL(
          "compression method '{}': unknown option '{}' (options: -g<N>, -asym, -dq, "
          "-tensor, -row, -static)",
          name, p);
    }
  }
  validate_one(s);
  return s;
}

std::string compress_spec_name(const CompressSpec& s) {
  std::string n = s.method;
  if (s.method == "int8" && !s.quant.per_channel && s.quant.group == 0) n += "-tensor";
  if (s.method == "int4" || s.method == "nf4" || (s.method == "int8" && s.quant.group > 0))
    n += fmt::format("-g{}", s.quant.group > 0 ? s.quant.group : s.method == "int4" ? 128 : 64);
  if (s.quant.asymmetric) n += "-asym";
  if (s.quant.double_quant) n += "-dq";
  if (s.method == "ternary" && s.quant.ternary_per_row) n += "-row";
  if (s.method == "w8a8" && s.static_act) n += "-static";
  return n;
}

// ---- calibration -------------------------------------------------------------------------

ActStats calibrate(Model& m, const std::vector<int32_t>& ids, int samples, int64_t seq_len,
                   bool progress) {
  MINFER_CHECK(m.config().causal(), "calibrate: only causal LMs are calibrated (model type '{}')",
               m.config().model_type);
  MINFER_CHECK(samples > 0 && seq_len > 1,
               "calibrate: need samples > 0 and seq_len > 1 (got {}, {})", samples, seq_len);
  MINFER_CHECK(int64_t(ids.size()) >= seq_len,
               "calibrate: calibration text has {} tokens, fewer than one window of {}", ids.size(),
               seq_len);
  const int64_t n_windows = int64_t(ids.size()) / seq_len;
  const int n = int(std::min<int64_t>(samples, n_windows));
  ActStats st;
  Calibrator cal(st);
  Backend& be = m.backend();
  be.set_observer(&cal);
  struct Reset {
    Backend& be;
    ~Reset() { be.set_observer(nullptr); }
  } reset{be};
  RunState s = m.new_state(seq_len, seq_len, 1);
  Progress bar("calibrate", n, progress);
  for (int i = 0; i < n; ++i) {
    // Windows spread evenly over the text.
    const int64_t w = n_windows == n ? i : int64_t(i) * n_windows / n;
    s.reset();
    m.forward(s, ids.data() + w * seq_len, seq_len, false);
    st.tokens += seq_len;
    bar.update(i + 1);
  }
  bar.finish();
  return st;
}

// ---- compress_model ----------------------------------------------------------------------

void validate_compress_spec(const CompressSpec& s) {
  validate_one(s);
  if (!s.head_format.empty()) compress_spec_from_name(s.head_format);
  for (const auto& [pat, format] : s.keep) {
    MINFER_CHECK(!pat.empty(), "--keep: empty pattern (expected PATTERN=FORMAT)");
    compress_spec_from_name(format);
  }
}

CompressReport compress_model(Model& m, const CompressSpec& spec, const ActStats* stats,
                              bool progress) {
  validate_compress_spec(spec);
  MINFER_CHECK(m.backend().name() == "cpu",
               "compress: weights are converted on the CPU backend (model is on '{}')",
               m.backend().name());
  std::vector<std::pair<std::string, CompressSpec>> keep;
  for (const auto& [pat, format] : spec.keep) {
    MINFER_CHECK(!pat.empty(), "--keep: empty pattern (expected PATTERN=FORMAT)");
    keep.emplace_back(pat, spec_for_format(format, spec));
  }
  const bool needs_stats = spec.method == "w8a8" && spec.static_act;
  MINFER_CHECK(!needs_stats || stats != nullptr,
               "w8a8 with static activation scales needs a calibration pass (--calibrate FILE)");
  for (const auto& [pat, s] : keep)
    MINFER_CHECK(!(s.method == "w8a8" && s.static_act) || stats != nullptr,
                 "--keep {}: static w8a8 needs a calibration pass (--calibrate FILE)", pat);

  CompressReport rep;
  rep.bytes_before = m.weight_bytes();
  // Parameters of the model as it is (a tied head counted once with its table).
  int64_t params = 0, lin_params = 0;
  size_t lin_bytes = 0;
  {
    std::vector<const void*> seen;
    for (const Model::NamedTensor& t : m.tensors()) {
      params += t.t->numel();
      if (t.embedding) seen.push_back(t.t->raw());
    }
    for (const Linear* w : m.linears()) {
      const Dense* d = std::get_if<Dense>(&w->repr);
      if (!(d && std::find(seen.begin(), seen.end(), d->w.raw()) != seen.end()))
        params += w->in * w->out;
      params += w->bias.defined() ? w->bias.numel() : 0;
    }
  }
  const std::string embed_fmt =
      spec.embed_format.empty() ? default_embed_format(spec) : spec.embed_format;
  const std::string* head_override = match_pattern(kHeadName, spec.keep);
  const CompressSpec head_spec =
      spec_for_format(head_override              ? *head_override
                      : spec.head_format.empty() ? default_head_format(spec)
                                                 : spec.head_format,
                      spec);

  // Embedding tables: remember the old data pointers so a tied head can follow its table.
  std::vector<std::pair<const void*, Tensor*>> tables;
  for (Model::NamedTensor& t : m.tensors()) {
    if (!t.embedding) continue;
    const void* old = t.t->raw();
    const std::string* ov = match_pattern(t.name, spec.keep);
    const std::string f = ov ? *ov : embed_fmt;
    MINFER_CHECK(is_float_method(f),
                 "tensor '{}': embedding tables are kept in f32, fp16 or bf16, not '{}'", t.name,
                 f);
    const DType dt = float_dtype(f);
    if (t.t->dtype() != dt) *t.t = cast_to(*t.t, dt);
    tables.emplace_back(old, t.t);
    rep.tensors.push_back({t.name, f, t.t->numel(), t.t->nbytes(), 0.0});
  }

  std::vector<Linear*> lins = m.linears();
  Progress bar("compress", int64_t(lins.size()), progress);
  int64_t done = 0;
  for (Linear* w : lins) {
    const Dense* d = std::get_if<Dense>(&w->repr);
    Tensor* table = nullptr;
    if (d)
      for (auto& [old, t] : tables)
        if (d->w.raw() == old) table = t;
    const bool is_head = table != nullptr || w->name == kHeadName;
    TensorReport tr;
    if (is_head && table && is_float_method(head_spec.method) &&
        float_dtype(head_spec.method) == table->dtype()) {
      // Tied head in the table's format: stays tied (one copy on disk and in memory).
      w->repr = Dense{*table, false};
      tr = {w->name, head_spec.method, 0, 0, 0.0};
    } else {
      const CompressSpec& s = is_head ? head_spec : pick(w->name, keep, spec);
      Linear q = convert_linear(*w, s, stats);
      const Distortion dist = measure(*w, q);
      q.name = is_head ? kHeadName : w->name;  // an untied head is stored as lm_head.weight
      *w = std::move(q);
      tr = {w->name, repr_format(*w), w->in * w->out, w->weight_bytes(), dist.rel_fro};
    }
    if (!is_head) {
      lin_params += w->in * w->out;
      lin_bytes += w->weight_bytes();
    }
    m.backend().upload(*w);
    rep.tensors.push_back(tr);
    bar.update(++done);
  }
  bar.finish();

  rep.bytes_after = m.weight_bytes();
  rep.params = params;
  rep.bits_per_weight = params ? double(rep.bytes_after) * 8.0 / double(params) : 0.0;
  rep.linear_bpw = lin_params ? double(lin_bytes) * 8.0 / double(lin_params) : 0.0;
  return rep;
}

// ---- save / load -------------------------------------------------------------------------

void save_compressed(Model& m, const Tokenizer* tok, const std::string& out_dir,
                     const CompressSpec& spec, bool force) {
  const ModelConfig& cfg = m.config();
  MINFER_CHECK(m.backend().name() == "cpu",
               "save_compressed: the model's weights must be on the CPU (backend '{}')",
               m.backend().name());
  json config;
  if (!cfg.source_json.empty()) {
    config = json::parse(cfg.source_json, nullptr, false);
    MINFER_CHECK(config.is_object(), "save_compressed: the model's config.json is not an object");
  } else {
    MINFER_CHECK(cfg.arch == Arch::Llama,
                 "save_compressed: no config.json to start from for a '{}' model", cfg.model_type);
    config = llama_config_json(cfg, "float32");
  }

  std::vector<std::pair<std::string, Tensor>> out;
  json entries = json::object();
  std::vector<const void*> tables;
  for (Model::NamedTensor& t : m.tensors()) {
    put(out, t.name, *t.t);
    if (t.embedding) tables.push_back(t.t->raw());
    const DType dt = t.t->dtype();
    entries[t.name] = {{"repr", "dense"},
                       {"format", dt == DType::F32   ? "f32"
                                  : dt == DType::F16 ? "fp16"
                                                     : "bf16"}};
  }
  bool head_untied = false;
  for (Linear* w : m.linears()) {
    const Dense* d = std::get_if<Dense>(&w->repr);
    if (d && std::find(tables.begin(), tables.end(), d->w.raw()) != tables.end())
      continue;  // tied to an embedding table that is already written
    MINFER_CHECK(w->name.size() > 7 && w->name.ends_with(".weight"),
                 "save_compressed: linear '{}' has no '<prefix>.weight' name", w->name);
    if (w->name == kHeadName) head_untied = true;
    entries[w->name] = linear_json(*w, w->name, out);
    if (w->bias.defined()) {
      const std::string bn = w->name.substr(0, w->name.size() - 7) + ".bias";
      put(out, bn, w->bias);
    }
  }
  if (head_untied) config["tie_word_embeddings"] = false;
  json opts = {{"group", spec.quant.group},           {"per_channel", spec.quant.per_channel},
               {"asymmetric", spec.quant.asymmetric}, {"double_quant", spec.quant.double_quant},
               {"threshold", spec.threshold},         {"static_act", spec.static_act}};
  json keep = json::array();
  for (const auto& [p, f] : spec.keep) keep.push_back({p, f});
  config["quantization"] = {
      {"format", "minfer"}, {"version", 1}, {"method", compress_spec_name(spec)},
      {"options", opts},    {"keep", keep}, {"tensors", entries}};

  StagingDir tmp(out_dir, force);
  save_safetensors((tmp.path() / "model.safetensors").string(), out,
                   {{"format", "minfer"}, {"quantization", compress_spec_name(spec)}});
  write_json_file(tmp.path() / "config.json", config);
  if (tok)
    write_tokenizer_files(tmp.path(), *tok, cfg, !tok->special_prefix().empty(),
                          !tok->special_suffix().empty());
  tmp.commit();
}

bool is_compressed_folder(const std::string& dir) {
  const fs::path p = fs::path(dir) / "config.json";
  if (!fs::is_regular_file(p)) return false;
  std::ifstream f(p);
  std::stringstream ss;
  ss << f.rdbuf();
  json j = json::parse(ss.str(), nullptr, false);
  return j.is_object() && j.contains("quantization") && j["quantization"].is_object() &&
         j["quantization"].value("format", "") == "minfer";
}

CompressedSource::CompressedSource(const std::string& dir)
    : dir_(dir), store_(WeightStore::open(dir)) {
  const fs::path p = fs::path(dir) / "config.json";
  std::ifstream f(p);
  MINFER_CHECK(f.good(), "{}: cannot open config.json", dir);
  std::stringstream ss;
  ss << f.rdbuf();
  json j = json::parse(ss.str(), nullptr, false);
  MINFER_CHECK(j.is_object() && j.contains("quantization") && j["quantization"].is_object(),
               "{}: config.json has no quantization section", p.string());
  const json& q = j["quantization"];
  MINFER_CHECK(q.value("format", "") == "minfer",
               "{}: quantization.format is '{}', expected 'minfer'", p.string(),
               q.value("format", ""));
  MINFER_CHECK(q.value("version", 0) == 1,
               "{}: quantization version {} is not supported (this build reads version 1)",
               p.string(), q.value("version", 0));
  method_ = q.value("method", "");
  MINFER_CHECK(q.contains("tensors") && q["tensors"].is_object(),
               "{}: quantization.tensors missing", p.string());
  for (auto& [name, e] : q["tensors"].items()) {
    MINFER_CHECK(e.is_object() && e.contains("repr") && e["repr"].is_string(),
                 "{}: quantization entry for '{}' lacks a 'repr'", p.string(), name);
    info_[name] = e.dump();
  }
}

bool CompressedSource::has(const std::string& name) const {
  return store_.has(name) || info_.count(name) != 0;
}

Tensor CompressedSource::tensor(const std::string& name,
                                std::initializer_list<int64_t> shape) const {
  const Tensor& t = store_.get(name, shape);
  MINFER_CHECK(t.dtype() == DType::F32 || t.dtype() == DType::F16 || t.dtype() == DType::BF16,
               "{}: tensor '{}': expected a float dtype (F32, F16, BF16), found {}",
               store_.file_of(name), name, dtype_name(t.dtype()));
  return t;
}

std::string CompressedSource::describe() const {
  return store_.describe();
}

Linear CompressedSource::linear(const std::string& prefix, int64_t in, int64_t out, bool bias,
                                bool transposed) const {
  const std::string wn = prefix + ".weight";
  auto it = info_.find(wn);
  const std::string where = fmt::format("{}: '{}'", dir_, wn);
  MINFER_CHECK(it != info_.end() || store_.has(wn), "{}: missing tensor '{}'", dir_, wn);
  const json e = it != info_.end() ? json::parse(it->second) : json{{"repr", "dense"}};
  const std::string repr = field<std::string>(e, "repr", where);
  Tensor b = bias ? vec(prefix + ".bias", out) : Tensor();
  if (repr == "dense") {
    const bool tr = e.value("transposed", transposed);
    Tensor w = tr ? tensor(wn, {in, out}) : tensor(wn, {out, in});
    return make_dense(wn, std::move(w), in, out, tr, std::move(b));
  }
  MINFER_CHECK(field<int64_t>(e, "in", where) == in && field<int64_t>(e, "out", where) == out,
               "{}: stored as [{}, {}] (out, in), the model expects [{}, {}]", where,
               e.value("out", int64_t(0)), e.value("in", int64_t(0)), out, in);
  auto get = [&](const std::string& suffix) -> Tensor {
    const std::string n = wn + suffix;
    return store_.has(n) ? store_.get(n) : Tensor();
  };
  Quantized q;
  q.scheme = parse_scheme(field<std::string>(e, "scheme", where), where);
  q.group = field<int64_t>(e, "group", where);
  q.per_tensor = field<bool>(e, "per_tensor", where);
  q.asymmetric = field<bool>(e, "asymmetric", where);
  q.codes = get(".codes");
  q.scales = get(".scales");
  q.zeros = get(".zeros");
  q.scale_codes = get(".scale_codes");
  q.scale_scales = get(".scale_scales");
  if (q.scale_codes.defined()) q.scale_offset = field<float>(e, "scale_offset", where);
  MINFER_CHECK(q.codes.defined(), "{}: missing tensor '{}.codes'", dir_, wn);
  check_quantized(q, in, out, wn);
  Linear l;
  l.name = wn;
  l.in = in;
  l.out = out;
  l.bias = std::move(b);
  if (repr == "quantized") {
    l.repr = std::move(q);
  } else if (repr == "llm-int8") {
    Int8WithOutliers o;
    o.w = std::move(q);
    o.threshold = field<float>(e, "threshold", where);
    o.outlier_cols = get(".outlier_cols");
    o.outlier_w = get(".outlier_w");
    l.repr = std::move(o);
  } else if (repr == "w8a8") {
    W8A8 a;
    a.w = std::move(q);
    const std::string act = field<std::string>(e, "act", where);
    MINFER_CHECK(act == "static" || act == "dynamic",
                 "{}: act must be 'static' or 'dynamic', found '{}'", where, act);
    a.act = act == "static" ? ActScale::Static : ActScale::Dynamic;
    if (a.act == ActScale::Static) a.act_scale = field<float>(e, "act_scale", where);
    l.repr = std::move(a);
  } else {
    MINFER_FAIL("{}: unknown representation '{}' (expected dense, quantized, llm-int8, w8a8)",
                where, repr);
  }
  if (const auto* o = std::get_if<Int8WithOutliers>(&l.repr)) check_llm_int8(*o, in, out, wn);
  if (const auto* a = std::get_if<W8A8>(&l.repr)) check_w8a8(*a, in, out, wn);
  return l;
}

}  // namespace minfer
