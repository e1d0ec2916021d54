#include "compress/compress.h"

#include <cblas.h>
#include <fmt/format.h>
#include <fnmatch.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "compress/dataaware.h"
#include "compress/gptq.h"
#include "engine/error.h"
#include "engine/model_folder.h"
#include "engine/progress.h"
#include "engine/safetensors.h"
#include "models/eval.h"
#include "models/model.h"
#include "tokenizer/tokenizer.h"

namespace minfer {

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

const char* kHeadName = "lm_head.weight";

std::vector<std::string> split(const std::string& s, char sep) {
  std::vector<std::string> out(1);
  for (char c : s) {
    if (c == sep)
      out.emplace_back();
    else
      out.back() += c;
  }
  return out;
}

bool is_float_method(const std::string& m) {
  const MethodInfo* i = find_method(m);
  return i && i->kind == MethodKind::Float;
}

// Structured removal and rotation: whole-model steps, run by the tools before calibrating
// (prune_structured, rotate_model), never per Linear.
bool whole_model_step(MethodKind k) {
  return k == MethodKind::Structured || k == MethodKind::Rotate;
}

// max |x| over a calibration's features -> a per-tensor activation scale.
float static_act_scale(const std::vector<float>& absmax) {
  float m = 0.f;
  for (float v : absmax) m = std::max(m, v);
  return m > 0.f ? m / 127.f : 1.f / 127.f;
}

const char* kind_word(MethodKind k) {
  switch (k) {
    case MethodKind::Float:
      return "converts";
    case MethodKind::WeightQuant:
    case MethodKind::ActQuant:
    case MethodKind::Gptq:
    case MethodKind::Codebook:
      return "quantizes";
    case MethodKind::LowRank:
      return "factorizes";
    case MethodKind::Rotate:
      return "rotates";
    case MethodKind::Prune:
    case MethodKind::Structured:
      return "prunes";
  }
  return "";
}

// Σ x² per input feature of `l` from the calibration (the scale search's importance), or empty.
std::vector<float> column_importance(const Linear& l, const ActStats* stats) {
  std::vector<float> c;
  if (!stats) return c;
  const auto it = stats->sumsq.find(l.name);
  if (it == stats->sumsq.end() || int64_t(it->second.size()) != l.in) return c;
  c.assign(it->second.begin(), it->second.end());
  return c;
}

Linear apply_step(const Linear& l, const MethodSpec& s, const ActStats* stats);

// A weight-only step on a LowRank weight: applied to each factor, the result still one LowRank.
Linear step_on_factors(const Linear& l, const LowRank& lr, const MethodSpec& s) {
  LowRank q;
  q.v = Box<Linear>(apply_step(*lr.v, s, nullptr));
  q.u = Box<Linear>(apply_step(*lr.u, s, nullptr));
  return make_linear(l.name, l.in, l.out, std::move(q), l.bias);
}

Linear apply_step_raw(const Linear& l, const MethodSpec& s, const ActStats* stats);

// One step of a chain applied to one Linear; -f16s rounds the scales of the result (of each
// factor of a LowRank, done by the step on the factors).
Linear apply_step(const Linear& l, const MethodSpec& s, const ActStats* stats) {
  Linear out = apply_step_raw(l, s, stats);
  if (s.quant.f16_scales)
    if (Quantized* q = std::get_if<Quantized>(&out.repr)) use_f16_scales(*q, out.name);
  return out;
}

Linear apply_step_raw(const Linear& l, const MethodSpec& s, const ActStats* stats) {
  const std::vector<float>* absmax = nullptr;
  if (stats) {
    auto it = stats->absmax.find(l.name);
    if (it != stats->absmax.end()) absmax = &it->second;
  }
  const MethodInfo& m = s.info();
  switch (m.kind) {
    case MethodKind::Prune: {
      std::vector<float> norm;
      if (s.prune.score == PruneScore::Wanda) {
        const std::vector<double>* sq = nullptr;
        if (stats) {
          const auto it = stats->sumsq.find(l.name);
          if (it != stats->sumsq.end()) sq = &it->second;
        }
        MINFER_CHECK(sq != nullptr && int64_t(sq->size()) == l.in,
                     "{}: no calibration statistics (||X_j||) for '{}' (run a calibration pass: "
                     "compress --calibrate FILE)",
                     method_spec_name(s), l.name);
        norm.resize(size_t(l.in));
        for (int64_t j = 0; j < l.in; ++j) norm[size_t(j)] = float(std::sqrt((*sq)[size_t(j)]));
      }
      return prune_linear(l, s.prune, norm.empty() ? nullptr : norm.data());
    }
    case MethodKind::Float:
    case MethodKind::WeightQuant:
    case MethodKind::ActQuant:
      if (const LowRank* lr = std::get_if<LowRank>(&l.repr)) {
        // Low-rank then quantize: each factor in the step's format, still one LowRank.
        MINFER_CHECK(m.kind != MethodKind::ActQuant,
                     "tensor '{}': '{}' quantizes activations, but the low-rank factors' inner "
                     "activations have no calibration; use a weight-only method after low-rank",
                     l.name, method_spec_name(s));
        return step_on_factors(l, *lr, s);
      }
      break;
    case MethodKind::Structured:
      MINFER_FAIL(
          "tensor '{}': '{}' is a whole-model step (prune_structured, "
          "compress/structured.h), not a per-Linear one",
          l.name, method_spec_name(s));
    case MethodKind::Rotate:
      MINFER_FAIL(
          "tensor '{}': '{}' is a whole-model step (rotate_model, compress/rotate.h), not a "
          "per-Linear one",
          l.name, method_spec_name(s));
    case MethodKind::Gptq:
      MINFER_CHECK(!std::holds_alternative<LowRank>(l.repr),
                   "tensor '{}': {} of low-rank factors is not supported (the inner factor's "
                   "inputs have no calibration); use a round-to-nearest method after low-rank",
                   l.name, method_spec_name(s));
      break;
    case MethodKind::LowRank:
      break;
    case MethodKind::Codebook:
      if (const LowRank* lr = std::get_if<LowRank>(&l.repr)) {
        MINFER_CHECK(!s.codebook.weighted,
                     "tensor '{}': '{}' after low-rank is not supported (the inner factor's "
                     "inputs have no calibration); use kmeans without -weighted",
                     l.name, method_spec_name(s));
        return step_on_factors(l, *lr, s);
      }
      break;
  }
  MINFER_CHECK(std::holds_alternative<Dense>(l.repr),
               "tensor '{}': method '{}' {} float weights, but the weight is already {} (put "
               "low-rank first and quantization last in a chain)",
               l.name, method_spec_name(s), kind_word(m.kind), linear_format(l));
  if (s.is_awq()) {
    // The channel scales were searched and folded by compress_model (smooth_model); what is left
    // per Linear is AWQ's clipping: the weighted scale search on the scaled weights.
    const std::vector<float> c = column_importance(l, stats);
    MINFER_CHECK(!c.empty(),
                 "{}: no calibration statistics for '{}' (run a calibration pass: compress "
                 "--calibrate FILE)",
                 method_spec_name(s), l.name);
    QuantSpec q = s.quant;
    q.method = "int4";
    return quantize_rtn_search(l, q, c.data(), true);
  }
  if (m.kind == MethodKind::LowRank || m.kind == MethodKind::Gptq) {
    const GramMatrix* g = nullptr;
    if (s.needs_gram()) {
      if (stats)
        if (auto it = stats->gram.find(l.name); it != stats->gram.end()) g = it->second.get();
      MINFER_CHECK(g != nullptr,
                   "{}: no calibration Gram matrix XᵀX for '{}' (run a calibration pass: "
                   "compress --calibrate FILE)",
                   method_spec_name(s), l.name);
      MINFER_CHECK(stats->tokens >= l.in,
                   "{}: '{}' has {} input features but the calibration saw only {} tokens, so "
                   "XᵀX is singular; give a longer calibration text or more windows (at least {} "
                   "tokens)",
                   method_spec_name(s), l.name, l.in, stats->tokens, l.in);
    }
    if (m.kind == MethodKind::Gptq) {
      QuantSpec q = s.quant;
      q.method = s.base_format();
      GptqOptions o;
      o.damp = s.damp;
      o.act_order = s.act_order;
      o.clip_search = s.clip_search;
      o.refit_scales = s.refit > 0;
      o.refit_rounds = std::max(1, s.refit);
      return quantize_gptq(l, q, g->xtx, o);
    }
    return lowrank_factorize(l, s.lowrank, g ? &g->xtx : nullptr);
  }
  if (m.kind == MethodKind::Codebook) {
    CodebookSpec c = s.codebook;
    c.group = s.quant.group;
    std::vector<float> sens;  // s_k = mean x_k² over the calibration tokens
    if (c.weighted) {
      const std::vector<double>* sq = nullptr;
      if (stats)
        if (auto it = stats->sumsq.find(l.name); it != stats->sumsq.end()) sq = &it->second;
      MINFER_CHECK(sq != nullptr && stats->tokens > 0,
                   "{}: no calibration statistics for '{}' (run a calibration pass: compress "
                   "--calibrate FILE)",
                   method_spec_name(s), l.name);
      sens.resize(sq->size());
      for (size_t j = 0; j < sq->size(); ++j) sens[j] = float((*sq)[j] / double(stats->tokens));
    }
    return quantize_codebook(l, c, c.weighted ? &sens : nullptr);
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
  QuantSpec q = s.quant;
  q.method = s.method;
  if (s.method == "int3" || s.clip_search) {
    const std::vector<float> c = column_importance(l, stats);
    return quantize_rtn_search(l, q, c.empty() ? nullptr : c.data(), s.clip_search);
  }
  return quantize_linear(l, q);
}

// The method that decides the stored format: the last per-Linear step that is not a prune step,
// "f32" for a chain of structured and prune steps only (the weights stay f32).
std::string storage_method(const CompressSpec& s) {
  for (auto it = s.steps.rbegin(); it != s.steps.rend(); ++it) {
    const MethodKind k = it->info().kind;
    if (!whole_model_step(k) && k != MethodKind::Prune) return it->method;
  }
  return "f32";
}

std::string default_head_format(const CompressSpec& s) {
  const std::string m = storage_method(s);
  if (is_float_method(m)) return m;
  // Low-rank only: the head (not a block linear) stays a float table, tied in fp16.
  if (const MethodInfo* mi = find_method(m); mi && mi->kind == MethodKind::LowRank) return "fp16";
  return "int8";
}

std::string default_embed_format(const CompressSpec& s) {
  const std::string m = storage_method(s);
  return m == "f32" || m == "bf16" ? m : "fp16";
}

// The spec an override (or the head default) names, inheriting calibration-related options.
CompressSpec spec_for_format(const std::string& format, const CompressSpec& base) {
  CompressSpec s = compress_spec_from_name(format);
  for (MethodSpec& step : s.steps) step.threshold = base.last().threshold;
  s.sparse_storage = base.sparse_storage;
  return s;
}

const CompressSpec& pick(const std::string& name,
                         const std::vector<std::pair<std::string, CompressSpec>>& keep,
                         const CompressSpec& dflt) {
  for (const auto& [pat, spec] : keep)
    if (fnmatch(pat.c_str(), name.c_str(), 0) == 0) return spec;
  return dflt;
}

// The name up to and including a transformer block's number ("model.layers.3." of
// "model.layers.3.mlp.up_proj.weight", "h.0." for GPT-2); "" for a name outside the blocks.
std::string block_prefix(const std::string& name) {
  for (size_t i = name.find('.'); i != std::string::npos; i = name.find('.', i + 1)) {
    size_t j = i + 1;
    while (j < name.size() && std::isdigit(static_cast<unsigned char>(name[j]))) ++j;
    if (j > i + 1 && j < name.size() && name[j] == '.') return name.substr(0, j + 1);
  }
  return "";
}

// The block number of a block_prefix ("model.layers.3." -> 3).
int64_t block_index(const std::string& prefix) {
  const size_t e = prefix.size() - 1, b = prefix.find_last_of('.', e - 1) + 1;
  return std::stoll(prefix.substr(b, e - b));
}

bool has_sequential_step(const CompressSpec& s) {
  return std::any_of(s.steps.begin(), s.steps.end(),
                     [](const MethodSpec& m) { return m.sequential; });
}

const std::string* match_pattern(const std::string& name,
                                 const std::vector<std::pair<std::string, std::string>>& keep) {
  for (const auto& [pat, fmt] : keep)
    if (fnmatch(pat.c_str(), name.c_str(), 0) == 0) return &fmt;
  return nullptr;
}

class Calibrator final : public LinearObserver {
 public:
  Calibrator(ActStats& st, bool with_gram, std::string only_prefix = "")
      : st_(st), with_gram_(with_gram), only_(std::move(only_prefix)) {}
  void observe(const Linear& w, const float* x, int64_t rows, int64_t ld) override {
    if (!w.name.starts_with(only_)) return;
    std::vector<float>& m = st_.absmax[w.name];
    std::vector<double>& q = st_.sumsq[w.name];
    std::vector<double>& a = st_.sumabs[w.name];
    if (m.empty()) m.assign(size_t(w.in), 0.f);
    if (q.empty()) q.assign(size_t(w.in), 0.0);
    if (a.empty()) a.assign(size_t(w.in), 0.0);
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t c = 0; c < w.in; ++c) {
        const float v = x[r * ld + c];
        m[size_t(c)] = std::max(m[size_t(c)], std::fabs(v));
        q[size_t(c)] += double(v) * double(v);
        a[size_t(c)] += std::fabs(double(v));
      }
    if (with_gram_) observe_gram(w, x, rows, ld);
  }

 private:
  // XᵀX += xᵀx (upper triangle; calibrate() mirrors it). A Linear that reads exactly the previous
  // call's input (same buffer and shape: q/k/v, gate/up) shares that call's matrix, decided on
  // first sight and re-checked on every call.
  void observe_gram(const Linear& w, const float* x, int64_t rows, int64_t ld) {
    const bool same_input =
        x == last_x_ && rows == last_rows_ && ld == last_ld_ && w.in == (last_ ? last_->n : -1);
    auto it = st_.gram.find(w.name);
    if (it == st_.gram.end()) {
      if (same_input) {
        it = st_.gram.emplace(w.name, last_).first;
        shared_.insert(w.name);
      } else {
        auto g = std::make_shared<GramMatrix>();
        g->n = w.in;
        g->xtx.assign(size_t(w.in * w.in), 0.f);
        it = st_.gram.emplace(w.name, std::move(g)).first;
      }
    }
    if (shared_.count(w.name)) {
      MINFER_CHECK(same_input && it->second == last_,
                   "calibrate: '{}' shared its input with the previous linear in the first window "
                   "but not now",
                   w.name);
    } else {
      cblas_ssyrk(CblasRowMajor, CblasUpper, CblasTrans, int(w.in), int(rows), 1.f, x, int(ld), 1.f,
                  it->second->xtx.data(), int(w.in));
    }
    last_ = it->second;
    last_x_ = x;
    last_rows_ = rows;
    last_ld_ = ld;
  }

  ActStats& st_;
  bool with_gram_;
  std::string only_;              // record only Linears whose name starts with this
  std::set<std::string> shared_;  // Linears whose Gram matrix is the previous one's
  std::shared_ptr<GramMatrix> last_;
  const float* last_x_ = nullptr;
  int64_t last_rows_ = 0, last_ld_ = 0;
};

}  // namespace

// ---- names -------------------------------------------------------------------------------

bool CompressSpec::uses_calibration() const {
  return std::any_of(steps.begin(), steps.end(),
                     [](const MethodSpec& m) { return m.uses_calibration(); });
}

bool CompressSpec::needs_calibration() const {
  return std::any_of(steps.begin(), steps.end(),
                     [](const MethodSpec& m) { return m.needs_calibration(); });
}

bool CompressSpec::needs_gram() const {
  return std::any_of(steps.begin(), steps.end(),
                     [](const MethodSpec& m) { return m.needs_gram(); });
}

CompressSpec compress_spec_from_name(const std::string& name) {
  MINFER_CHECK(!name.empty(), "empty compression method name");
  CompressSpec s;
  s.steps.clear();
  for (const std::string& step : split(name, '+')) {
    MINFER_CHECK(!step.empty(), "compression method '{}': empty step in the chain", name);
    s.steps.push_back(method_spec_from_name(step));
  }
  validate_compress_spec(s);
  return s;
}

std::string compress_spec_name(const CompressSpec& s) {
  std::string n;
  for (const MethodSpec& step : s.steps) {
    if (!n.empty()) n += '+';
    n += method_spec_name(step);  // (appending, not "+" + name: GCC 12 -Wrestrict false positive)
  }
  return n;
}

bool sparse_storage_wins(double sparsity, const std::string& value_format) {
  // Lowest sparsity from which SparseBitmask decodes faster than the dense format with the same
  // values (T = 1, SmolLM2-135M shapes, weights streamed from memory; bench/bench_sparse.cpp,
  // docs/pruning.md). Measured on AMD EPYC Zen 4 (AVX-512 VNNI + VBMI2), 2026-11-30 17:12, a
  // shared 2-core machine at load 12, against dense int8 repacked as the model runs it (rows
  // interleaved by 4), dense / sparse medians of alternating passes, 2 and 1 threads:
  //   int8 values: 50 % 0.52-1.22x, 60 % 0.94-1.35x, 70 % 1.12-1.55x, 80 % 1.09-1.17x;
  //   f32 values: within noise of dense at every sparsity (no row).
  // The int8 row starts between 60 % (lost on a shape) and 70 % (won every shape in every run),
  // at 65 %, so that weights pruned "70 %" (floor(0.7 K) per row: 0.6997 at K = 576) take it; the
  // same row as measured before the dense baseline was repacked. It needs the AVX-512 VNNI
  // decode kernel (kernels/cpu/sparse.h): elsewhere the sparse path is scalar and slower, so
  // nothing is stored sparse by choice there.
  struct Crossover {
    const char* format;
    double min_sparsity;
  };
  static constexpr Crossover kCrossover[] = {{"int8", 0.65}, {"int8-tensor", 0.65}};
#if defined(__x86_64__)
  static const bool fast =
      __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vbmi2") && __builtin_cpu_supports("avx512vnni");
#else
  static const bool fast = false;
#endif
#if !(defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VBMI2__) && \
      defined(__AVX512VNNI__))
  return false;  // this build has no AVX-512 VNNI sparse kernel
#endif
  if (!fast) return false;
  for (const Crossover& c : kCrossover)
    if (value_format == c.format) return sparsity >= c.min_sparsity;
  return false;
}

bool sparse24_storage_wins(const std::string& value_format) {
  // 2:4 weights as Sparse24 against dense at the same value format (T = 1, SmolLM2-135M shapes,
  // weights streamed from memory; `bench_sparse THREADS int8,f32 2:4`, docs/pruning.md).
  // AVX-512 VBMI + VNNI kernels, measured on AMD EPYC Zen 4 (2026-11-30):
  //   f32 values: 1.66-1.93x (2 threads, load 12; 1.32-2.05x in earlier runs);
  //   int8 values against dense int8 repacked as the model runs it: quiet (load 0-0.5) kernels
  //   1.14-1.25x with 2 threads, 0.99-1.07x with 1, the whole SmolLM2 model 1.23x (7 rounds);
  //   0.83-1.54x kernels and 0.93x whole model at load 12: stored as Sparse24 (it reads 0.63x
  //   the bytes, the side that wins where memory is the limit).
  // AVX2 kernels (x86-64 builds without those, on an AVX2 CPU), measured on AMD EPYC Zen 3
  // (2026-12-01, load 8): int8 values with the run layout the CPU backend builds at upload
  // (SparseRun, kernels/cpu/sparse24.h): 1.11-1.93x dense AVX2 int8 (0.70-0.80x in the row
  // layout): stored as Sparse24. f32 values there are not timed against dense f32: dense.
#if defined(__x86_64__)
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VBMI__) && \
    defined(__AVX512VNNI__)
  static const bool fast =
      __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vbmi") && __builtin_cpu_supports("avx512vnni");
  return fast && (value_format == "f32" || value_format == "int8" || value_format == "int8-tensor");
#else
  static const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return avx2 && (value_format == "int8" || value_format == "int8-tensor");
#endif
#else
  (void)value_format;
  return false;
#endif
}

bool sparse_csr_storage_wins(double sparsity, const std::string& value_format) {
  // Lowest sparsity from which SparseCsr beats dense at the same value format in decode (T = 1)
  // and is not slower in prefill (T = 128), SmolLM2-135M shapes, weights streamed from memory
  // (`bench_sparse THREADS csr`, docs/pruning.md), where this build's CSR kernels run
  // (kernels/cpu/sparse_csr.h). AVX2 kernels (x86-64 builds without AVX-512 F/BW/VL, on an AVX2
  // CPU), AMD EPYC Zen 3, 2026-12-01, 2 threads, medians of alternating passes, three runs:
  //   f32: 80 % decode 1.39-2.15x, prefill 0.75-1.12x (not taken: prefill slower on two shapes);
  //        90 % decode 1.79-3.53x, prefill 1.09-2.74x;
  //   int8 (against dense int8 repacked as the model runs it): 90 % decode 0.94-1.31x; 95 %
  //        decode 1.26-2.26x, prefill 2.35-3.43x;
  //   fp16 / bf16: 90 % decode 1.39-1.97x, prefill 0.89-2.61x; 95 % decode 1.61-3.70x, prefill
  //        1.23-4.47x.
  // Each row starts a little below its measured sparsity, so that weights pruned "90 %" / "95 %"
  // (floor(p K) per row: 0.8993 / 0.9497 at K = 576) take it.
  // AVX-512 kernels: not timed against dense; on AMD EPYC Zen 4 the CSR candidate decoded f32
  // values at 90 % 1.65-2.71x the bitmask kernel, which ran within noise of dense f32, and int8
  // at 90 % 0.69-0.78x the bitmask (docs/pruning.md): f32 from 89.5 %, nothing else.
  struct Crossover {
    const char* format;
    double min_sparsity;
  };
#if defined(__x86_64__)
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)
  static constexpr Crossover kCrossover[] = {{"f32", 0.895}};
  static const bool fast = __builtin_cpu_supports("avx512f") &&
                           __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl");
#else
  static constexpr Crossover kCrossover[] = {
      {"f32", 0.895}, {"int8", 0.945}, {"int8-tensor", 0.945}, {"fp16", 0.945}, {"bf16", 0.945}};
  static const bool fast = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#endif
  if (!fast) return false;
  for (const Crossover& c : kCrossover)
    if (value_format == c.format) return sparsity >= c.min_sparsity;
  return false;
#else
  (void)sparsity;
  (void)value_format;
  return false;  // the scalar kernel is not timed against dense
#endif
}

CompressSpec::SparseStorage sparse_storage_from_name(const std::string& name) {
  using SS = CompressSpec::SparseStorage;
  if (name == "auto") return SS::Auto;
  if (name == "sparse") return SS::Sparse;
  if (name == "bitmask") return SS::Bitmask;
  if (name == "csr") return SS::Csr;
  if (name == "dense") return SS::Dense;
  throw Error(fmt::format(
      "--sparse-storage: expected auto, sparse, bitmask, csr or dense, found '{}'", name));
}

bool sparse_value_format(const std::string& f) {
  return f == "f32" || f == "fp16" || f == "bf16" || f == "int8" || f == "int8-tensor";
}

Linear compress_linear(const Linear& l, const CompressSpec& spec, const ActStats* stats) {
  Linear q = l;
  // Structured and rotate steps were applied to the whole model already (compress/structured.h,
  // compress/rotate.h).
  std::vector<MethodSpec> steps;
  for (const MethodSpec& step : spec.steps)
    if (!whole_model_step(step.info().kind)) steps.push_back(step);
  size_t i = 0;
  for (; i < steps.size() && steps[i].is_prune(); ++i) q = apply_step(q, steps[i], stats);
  if (i == 0) {
    for (const MethodSpec& step : steps) q = apply_step(q, step, stats);
    return q;
  }
  // Pruned: the dense result of the rest of the chain, or the sparse format with the rest of the
  // chain applied to its packed values, whichever the measured crossover says decodes faster.
  const Tensor w = dequantize_weight(q);
  const float* pw = w.data<float>();
  int64_t zeros = 0;
  for (int64_t j = 0; j < w.numel(); ++j) zeros += pw[j] == 0.f;
  const double sparsity = double(zeros) / double(w.numel());
  std::string value_format = i < steps.size() ? method_spec_name(steps[i]) : "";
  if (value_format.empty()) value_format = linear_format(q);
  using SS = CompressSpec::SparseStorage;
  // A sparse format R built from the pruned weight, the rest of the chain applied to its packed
  // values.
  auto sparse_linear_of = [&](auto r) {
    Linear vals = *r.values;
    for (size_t j = i; j < steps.size(); ++j) vals = apply_step(vals, steps[j], nullptr);
    r.values = Box<Linear>(std::move(vals));
    return make_linear(l.name, l.in, l.out, std::move(r), q.bias);
  };
  // A 2:4 step (wanda-2:4, magnitude-2:4) leaves at most 2 nonzeros in every group of 4 inputs:
  // such a weight can take the 2:4 format (2-bit indices, engine/formats/sparse24.h).
  bool step24 = false;
  for (size_t j = 0; j < i; ++j)
    step24 = step24 || (steps[j].prune.n == 2 && steps[j].prune.m == 4);
  const bool can24 = step24 && sparse_value_format(value_format) && is_2of4(pw, l.in, l.out);
  const bool use24 =
      can24 && (spec.sparse_storage == SS::Sparse ||
                (spec.sparse_storage == SS::Auto && sparse24_storage_wins(value_format)));
  if (use24) return sparse_linear_of(sparse24_from_dense(pw, l.in, l.out, l.name));
  // CSR (16-bit columns, engine/formats/sparse_csr.h): asked for, or where its measured decode
  // crossover says it beats dense. Its rows are padded to the longest one, so the crossover is
  // read at the padded density out * Kv.
  int64_t kv = 0;
  for (int64_t n = 0; n < l.out; ++n) {
    int64_t c = 0;
    for (int64_t k = 0; k < l.in; ++k) c += pw[n * l.in + k] != 0.f;
    kv = std::max(kv, c);
  }
  const double csr_density = double(std::max<int64_t>(kv, 1)) / double(l.in);
  if (spec.sparse_storage == SS::Csr && sparse_value_format(value_format))
    MINFER_CHECK(l.in <= SparseCsr::kMaxIn,
                 "--sparse-storage csr: '{}' has {} inputs; CSR's 16-bit column indices address "
                 "at most {} (use bitmask)",
                 l.name, l.in, SparseCsr::kMaxIn);
  const bool use_csr = l.in <= SparseCsr::kMaxIn && sparse_value_format(value_format) &&
                       (spec.sparse_storage == SS::Csr ||
                        (spec.sparse_storage == SS::Auto &&
                         sparse_csr_storage_wins(1.0 - csr_density, value_format)));
  if (use_csr) return sparse_linear_of(sparse_csr_from_dense(pw, l.in, l.out, l.name));
  const bool sparse = spec.sparse_storage == SS::Sparse || spec.sparse_storage == SS::Bitmask
                          ? sparse_value_format(value_format)
                      : spec.sparse_storage == SS::Dense || spec.sparse_storage == SS::Csr
                          ? false
                          : sparse_storage_wins(sparsity, value_format);
  if (!sparse) {
    for (size_t j = i; j < steps.size(); ++j) q = apply_step(q, steps[j], stats);
    return q;
  }
  return sparse_linear_of(sparse_bitmask_from_dense(pw, l.in, l.out, l.name));
}

// ---- calibration -------------------------------------------------------------------------

namespace {

// ssyrk filled the upper triangles; copy them to the lower ones (each shared matrix once).
void mirror_grams(ActStats& st) {
  std::set<const GramMatrix*> done;
  for (auto& [name, g] : st.gram) {
    if (!done.insert(g.get()).second) continue;
    for (int64_t i = 0; i < g->n; ++i)
      for (int64_t j = 0; j < i; ++j) g->xtx[size_t(i * g->n + j)] = g->xtx[size_t(j * g->n + i)];
  }
}

}  // namespace

ActStats calibrate(Model& m, const std::vector<int32_t>& ids, int samples, int64_t seq_len,
                   bool progress, bool with_gram, const std::string& only_prefix) {
  MINFER_CHECK(m.config().causal(),
               "calibrate: windows of text are for causal LMs; '{}' is an encoder, which "
               "calibrates on sentences (calibrate_encoder)",
               m.config().model_type);
  MINFER_CHECK(samples > 0 && seq_len > 1,
               "calibrate: need samples > 0 and seq_len > 1 (got {}, {})", samples, seq_len);
  MINFER_CHECK(int64_t(ids.size()) >= seq_len,
               "calibrate: calibration text has {} tokens, fewer than one window of {}", ids.size(),
               seq_len);
  const int64_t n_windows = int64_t(ids.size()) / seq_len;
  const int n = int(std::min<int64_t>(samples, n_windows));
  ActStats st;
  Calibrator cal(st, with_gram, only_prefix);
  const ScopedObserver observing(m.backend(), &cal);
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
  mirror_grams(st);
  return st;
}

ActStats calibrate_encoder(Model& m, const std::vector<std::vector<int32_t>>& seqs, bool progress,
                           bool with_gram) {
  MINFER_CHECK(!m.config().causal(),
               "calibrate_encoder: '{}' is a causal LM; it calibrates on windows (calibrate)",
               m.config().model_type);
  MINFER_CHECK(!seqs.empty(), "calibrate_encoder: no calibration sequences");
  int64_t longest = 0;
  for (size_t i = 0; i < seqs.size(); ++i) {
    MINFER_CHECK(!seqs[i].empty() && int64_t(seqs[i].size()) <= m.config().max_pos,
                 "calibrate_encoder: sequence {} has {} tokens, expected 1..{} (the model's "
                 "positions)",
                 i, seqs[i].size(), m.config().max_pos);
    longest = std::max<int64_t>(longest, int64_t(seqs[i].size()));
  }
  ActStats st;
  Calibrator cal(st, with_gram);
  const ScopedObserver observing(m.backend(), &cal);
  RunState s = m.new_state(0, longest);
  Progress bar("calibrate", int64_t(seqs.size()), progress);
  for (size_t i = 0; i < seqs.size(); ++i) {
    m.encode(s, seqs[i].data(), 1, int64_t(seqs[i].size()));
    st.tokens += int64_t(seqs[i].size());
    bar.update(int64_t(i + 1));
  }
  bar.finish();
  mirror_grams(st);
  return st;
}

namespace {

// GPTQ true-sequential calibration (-seq): the residual stream of every calibration window is
// kept between blocks ([seq_len, C] floats per window), so block b's inputs cost one pass of
// block b, not of the model: observe(b) first advances the kept streams through the blocks
// before b as they are now (already quantized), then runs block b observed (its outputs are
// dropped: block b is run again once it is quantized, when block b + 1 is asked for).
class BlockCalibrator {
 public:
  BlockCalibrator(Model& m, const SequentialCalibration& sc) : m_(m), sc_(sc) {
    const std::vector<int32_t>& ids = *sc.ids;
    MINFER_CHECK(int64_t(ids.size()) >= sc.seq_len,
                 "calibrate: calibration text has {} tokens, fewer than one window of {}",
                 ids.size(), sc.seq_len);
    const int64_t n_windows = int64_t(ids.size()) / sc.seq_len;
    const int n = int(std::min<int64_t>(sc.samples, n_windows));
    for (int i = 0; i < n; ++i)  // the windows calibrate() takes
      starts_.push_back((n_windows == n ? i : int64_t(i) * n_windows / n) * sc.seq_len);
  }

  // Statistics (with Gram matrices) of block b's Linears; b never goes back.
  ActStats observe(int64_t b, const std::string& prefix) {
    MINFER_CHECK(b >= at_ && b < m_.config().n_layers,
                 "true-sequential calibration: block {} asked after block {}", b, at_);
    const int64_t T = sc_.seq_len, C = m_.config().hidden;
    RunState s = m_.new_state(T, T, 1);
    auto run = [&](size_t w, int64_t begin, int64_t end, bool keep) {
      s.reset();
      s.layer_begin = begin;
      s.layer_end = end;
      float* x = s.x.data<float>();
      if (begin > 0) std::copy(resid_[w].begin(), resid_[w].end(), x);
      m_.forward(s, sc_.ids->data() + starts_[size_t(w)], T, false);
      if (keep) std::copy(x, x + T * C, resid_[w].begin());
    };
    if (resid_.empty()) {  // the embeddings, once
      resid_.assign(starts_.size(), std::vector<float>(size_t(T * C)));
      for (size_t w = 0; w < starts_.size(); ++w) run(w, 0, 0, true);
    }
    ActStats st;
    {
      for (; at_ < b; ++at_)
        for (size_t w = 0; w < starts_.size(); ++w) run(w, at_, at_ + 1, true);
      Calibrator cal(st, true, prefix);
      const ScopedObserver observing(m_.backend(), &cal);
      for (size_t w = 0; w < starts_.size(); ++w) {
        run(w, b, b + 1, false);
        st.tokens += T;
      }
    }
    mirror_grams(st);
    return st;
  }

 private:
  Model& m_;
  const SequentialCalibration& sc_;
  std::vector<int64_t> starts_;            // first token of each window
  std::vector<std::vector<float>> resid_;  // [window] residual stream before block at_
  int64_t at_ = 0;
};

}  // namespace

// ---- compress_model ----------------------------------------------------------------------

void validate_compress_spec(const CompressSpec& s) {
  MINFER_CHECK(!s.steps.empty(), "compression spec has no method");
  for (const MethodSpec& step : s.steps) validate_method_spec(step);
  // Whole-model steps run first: structured removal, then at most one rotation (the tools run
  // prune_structured, then rotate_model), before any per-Linear step.
  for (size_t i = 0; i < s.steps.size(); ++i) {
    const MethodKind k = s.steps[i].info().kind;
    for (size_t j = 0; j < i && whole_model_step(k); ++j)
      MINFER_CHECK(s.steps[j].info().kind == MethodKind::Structured,
                   "compression chain '{}': '{}' {} and must come before '{}'",
                   compress_spec_name(s), method_spec_name(s.steps[i]),
                   k == MethodKind::Rotate
                       ? "rotates the float model (only head / neuron / block removal may come "
                         "before it)"
                       : "removes heads / neurons / blocks of the whole model",
                   method_spec_name(s.steps[j]));
  }
  for (size_t i = 0; i < s.steps.size(); ++i) {
    // Order: structured steps (whole model), prune steps, at most one low-rank step, then at
    // most one quantizer (or float conversion), which comes last: each takes float weights.
    auto stage = [](MethodKind k) {
      switch (k) {
        case MethodKind::Structured:  // whole_model_step
        case MethodKind::Rotate:
          return 0;
        case MethodKind::Prune:
          return 1;
        case MethodKind::LowRank:
          return 2;
        case MethodKind::Float:
        case MethodKind::WeightQuant:
        case MethodKind::ActQuant:
        case MethodKind::Gptq:
        case MethodKind::Codebook:
          return 3;
      }
      return 3;
    };
    const MethodKind k = s.steps[i].info().kind;
    if (i + 1 < s.steps.size()) {
      const MethodSpec& next = s.steps[i + 1];
      const MethodKind nk = next.info().kind;
      MINFER_CHECK(nk != MethodKind::Prune || stage(k) <= 1,
                   "compression chain '{}': prune step '{}' must come before '{}' (pruning takes "
                   "float weights)",
                   compress_spec_name(s), method_spec_name(next), method_spec_name(s.steps[i]));
      MINFER_CHECK(stage(k) < 3,
                   "compression chain '{}': '{}' must come last (a quantizer needs float weights)",
                   compress_spec_name(s), method_spec_name(s.steps[i]));
      MINFER_CHECK(nk != MethodKind::LowRank || stage(k) <= 1,
                   "compression chain '{}': '{}' must come first (it factorizes float weights)",
                   compress_spec_name(s), method_spec_name(next));
    }
    if (k == MethodKind::LowRank)
      for (size_t j = 0; j < i; ++j)
        MINFER_CHECK(!s.steps[j].is_prune(),
                     "compression chain '{}': pruning and low-rank in one chain is not supported",
                     compress_spec_name(s));
    if (i > 0 && s.steps[i - 1].info().kind == MethodKind::LowRank)
      MINFER_CHECK(k != MethodKind::ActQuant && k != MethodKind::Gptq,
                   "compression chain '{}': '{}' after low-rank is not supported (the factors' "
                   "inner activations have no calibration); use a round-to-nearest weight-only "
                   "method",
                   compress_spec_name(s), method_spec_name(s.steps[i]));
  }
  if (!s.embed_format.empty())
    MINFER_CHECK(is_float_method(s.embed_format),
                 "embedding format '{}': embedding tables are kept in f32, fp16 or bf16 (the "
                 "lookup reads rows directly)",
                 s.embed_format);
  if (!s.head_format.empty()) compress_spec_from_name(s.head_format);
  for (const auto& [pat, format] : s.keep) {
    MINFER_CHECK(!pat.empty(), "--keep: empty pattern (expected PATTERN=FORMAT)");
    compress_spec_from_name(format);
  }
}

CompressReport compress_model(Model& m, const CompressSpec& spec, const ActStats* stats,
                              bool progress, const SequentialCalibration* seq) {
  validate_compress_spec(spec);
  MINFER_CHECK(m.backend().name() == "cpu",
               "compress: weights are converted on the CPU backend (model is on '{}')",
               m.backend().name());
  for (const MethodSpec& step : spec.steps)
    MINFER_CHECK(step.info().kind != MethodKind::Rotate || m.rotated(),
                 "{}: the model has not been rotated; run rotate_for_spec (compress/rotate.h) "
                 "after the structured steps and before calibrating",
                 compress_spec_name(spec));
  std::vector<std::pair<std::string, CompressSpec>> keep;
  for (const auto& [pat, format] : spec.keep) {
    MINFER_CHECK(!pat.empty(), "--keep: empty pattern (expected PATTERN=FORMAT)");
    keep.emplace_back(pat, spec_for_format(format, spec));
  }
  MINFER_CHECK(!spec.needs_calibration() || stats != nullptr,
               "{} needs a calibration pass (--calibrate FILE)", compress_spec_name(spec));
  for (const auto& [pat, s] : keep)
    MINFER_CHECK(!s.needs_calibration() || stats != nullptr,
                 "--keep {}: {} needs a calibration pass (--calibrate FILE)", pat,
                 compress_spec_name(s));
  bool gram = spec.needs_gram();
  for (const auto& [pat, s] : keep) gram = gram || s.needs_gram();
  if (gram) {
    // Before anything changes: the Gram statistic exists and saw enough tokens.
    MINFER_CHECK(!stats->gram.empty(),
                 "{} needs the calibration inputs' XᵀX (calibrate with the Gram statistic)",
                 compress_spec_name(spec));
    int64_t max_in = 0;
    for (const Linear* w : m.linears())
      if (w->name != kHeadName) max_in = std::max(max_in, w->in);
    MINFER_CHECK(stats->tokens >= max_in,
                 "{}: the calibration saw {} tokens, fewer than the {} input features of the "
                 "widest linear (XᵀX would be singular); give a longer calibration text or more "
                 "windows",
                 compress_spec_name(spec), stats->tokens, max_in);
  }

  // AWQ / SmoothQuant: channel scales folded into the previous ops first (exact in f32), on a
  // copy of the statistics rescaled to the new inputs (the Gram matrices stay shared).
  const size_t bytes_before = m.weight_bytes();
  ActStats smoothed;
  bool smoothing_done = false;
  int smooth_sites = 0;
  double smooth_seconds = 0;
  std::map<std::string, double> smooth_alpha;
  for (const MethodSpec& step : spec.steps) {
    if (!step.smooths()) continue;
    MINFER_CHECK(stats != nullptr, "{} needs a calibration pass (--calibrate FILE)",
                 method_spec_name(step));
    MINFER_CHECK(!smoothing_done, "compression chain '{}': at most one AWQ / SmoothQuant step",
                 compress_spec_name(spec));
    smoothed = *stats;
    SmoothOptions o;
    o.rule = step.awq_rule() ? SmoothOptions::Rule::Awq : SmoothOptions::Rule::SmoothQuant;
    o.keep_gram = step.awq_scales;  // GPTQ after the fold reads the scaled inputs' XᵀX
    o.alpha = step.alpha;
    o.group = step.quant.group > 0 ? step.quant.group : 128;
    o.asym = step.quant.asymmetric;
    const SmoothReport sr = smooth_model(m, smoothed, o);
    smoothing_done = true;
    smooth_sites = sr.sites;
    smooth_seconds = sr.seconds;
    smooth_alpha = sr.site_alpha;
    stats = &smoothed;
  }

  CompressReport rep;
  rep.smooth_sites = smooth_sites;
  rep.smooth_seconds = smooth_seconds;
  rep.smooth_alpha = std::move(smooth_alpha);
  rep.bytes_before = bytes_before;
  // Parameters of the model as it is (a tied head counted once with its table). A rotation
  // unties the head (E diag(γ) Q is not the table E Q) but adds no parameter of the source model,
  // so a rotated model with tied embeddings counts its head once too: bits/w stay comparable.
  int64_t params = 0, lin_params = 0;
  size_t lin_bytes = 0;
  {
    std::vector<const void*> seen;
    for (const Model::NamedTensor& t : m.tensors()) {
      params += t.t->numel();
      if (t.embedding) seen.push_back(t.t->raw());
    }
    const bool untied_by_rotation = m.rotated() && m.config().tie_embeddings;
    for (const Linear* w : m.linears()) {
      const Dense* d = std::get_if<Dense>(&w->repr);
      const bool tied = (d && std::find(seen.begin(), seen.end(), d->w.raw()) != seen.end()) ||
                        (untied_by_rotation && w->name == kHeadName);
      if (!tied) params += w->in * w->out;
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
    const DType dt = float_format_dtype(f, t.name);
    if (t.t->dtype() != dt) *t.t = cast_to(*t.t, dt, t.name);
    tables.emplace_back(old, t.t);
    rep.tensors.push_back({t.name, f, t.t->numel(), t.t->nbytes(), 0.0});
  }

  std::vector<Linear*> lins = m.linears();
  // Global magnitude pruning: one threshold over every block linear the default chain prunes
  // (the head and --keep overrides excluded), turned into a count per matrix.
  std::map<std::string, std::vector<int64_t>> global_counts;  // name -> count per chain step
  for (size_t si = 0; si < spec.steps.size(); ++si) {
    if (!spec.steps[si].is_prune() || spec.steps[si].prune.scope != PruneScope::Global) continue;
    MINFER_CHECK(si == 0, "{}: global pruning must be the first step of the chain",
                 compress_spec_name(spec));
    std::vector<const Linear*> targets;
    for (const Linear* w : lins) {
      const Dense* d = std::get_if<Dense>(&w->repr);
      bool tied = false;
      if (d)
        for (const auto& [old, t] : tables)
          tied = tied || d->w.raw() == t->raw() || d->w.raw() == old;
      if (!tied && w->name != kHeadName && &pick(w->name, keep, spec) == &spec)
        targets.push_back(w);
    }
    const std::vector<int64_t> c = global_prune_counts(targets, spec.steps[si].prune.sparsity);
    for (size_t i = 0; i < targets.size(); ++i) global_counts[targets[i]->name].push_back(c[i]);
  }
  // GPTQ true-sequential (-seq): block i's Gram matrices from a pass over the calibration
  // windows with blocks 0..i-1 already in their compressed form (uploaded as they are done).
  bool any_seq = has_sequential_step(spec);
  for (const auto& [pat, s] : keep) any_seq = any_seq || has_sequential_step(s);
  MINFER_CHECK(!any_seq || (seq != nullptr && seq->ids != nullptr && seq->samples > 0 &&
                            seq->seq_len > 1 && m.config().causal()),
               "{}: true-sequential GPTQ (-seq) runs the calibration windows again for every "
               "block: it needs a causal LM and the calibration text (compress --calibrate FILE)",
               compress_spec_name(spec));
  ActStats block_stats;
  std::string block_at;
  double seq_seconds = 0;
  std::unique_ptr<BlockCalibrator> blocks;
  if (any_seq) blocks = std::make_unique<BlockCalibrator>(m, *seq);
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
    const std::string head_method = compress_spec_name(head_spec);
    if (is_head && table && is_float_method(head_method) &&
        float_format_dtype(head_method, w->name) == table->dtype()) {
      // Tied head in the table's format: stays tied (one copy on disk and in memory).
      w->repr = Dense{*table, false};
      tr = {w->name, head_method, 0, 0, 0.0};
    } else {
      const CompressSpec& picked = is_head ? head_spec : pick(w->name, keep, spec);
      CompressSpec with_counts;
      const auto gc = global_counts.find(w->name);
      if (&picked == &spec && gc != global_counts.end()) {
        with_counts = spec;
        with_counts.steps[0].prune.global_count = gc->second[0];
      }
      const CompressSpec& s = gc != global_counts.end() && &picked == &spec ? with_counts : picked;
      const ActStats* st = stats;
      if (has_sequential_step(s)) {
        const std::string prefix = block_prefix(w->name);
        MINFER_CHECK(!prefix.empty(),
                     "{}: -seq calibrates block by block, and '{}' is not in a numbered block "
                     "(use --keep to give it another method)",
                     compress_spec_name(s), w->name);
        if (prefix != block_at) {
          const auto t0 = std::chrono::steady_clock::now();
          block_stats = blocks->observe(block_index(prefix), prefix);
          seq_seconds +=
              std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
          block_at = prefix;
        }
        MINFER_CHECK(block_stats.gram.count(w->name) != 0,
                     "{}: the calibration pass for block '{}' never ran '{}'",
                     compress_spec_name(s), prefix, w->name);
        st = &block_stats;
      }
      Linear q = compress_linear(*w, s, st);
      const Distortion dist = measure(*w, q);
      q.name = is_head ? kHeadName : w->name;  // an untied head is stored as lm_head.weight
      *w = std::move(q);
      tr = {w->name, linear_format(*w), w->in * w->out, w->weight_bytes(), dist.rel_fro};
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
  rep.sequential_seconds = seq_seconds;

  rep.bytes_after = m.weight_bytes();
  rep.params = params;
  rep.bits_per_weight = params ? double(rep.bytes_after) * 8.0 / double(params) : 0.0;
  rep.linear_bpw = lin_params ? double(lin_bytes) * 8.0 / double(lin_params) : 0.0;
  return rep;
}

// ---- save / load -------------------------------------------------------------------------

void save_compressed(Model& m, const Tokenizer* tok, const std::string& out_dir,
                     const CompressSpec& spec, bool force, const std::string& source_dir) {
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
  TensorSink sink{out};
  for (Model::NamedTensor& t : m.tensors()) {
    sink.put(t.name, *t.t);
    if (t.embedding) tables.push_back(t.t->raw());
    entries[t.name] = {{"repr", "dense"}, {"format", float_format_name(t.t->dtype())}};
  }
  bool head_untied = false;
  for (Linear* w : m.linears()) {
    const Dense* d = std::get_if<Dense>(&w->repr);
    if (d && std::find(tables.begin(), tables.end(), d->w.raw()) != tables.end())
      continue;  // tied to an embedding table that is already written
    MINFER_CHECK(w->name.size() > 7 && w->name.ends_with(".weight"),
                 "save_compressed: linear '{}' has no '<prefix>.weight' name", w->name);
    if (w->name == kHeadName) head_untied = true;
    entries[w->name] = save_linear(*w, w->name, sink);
    if (w->bias.defined()) sink.put(w->name.substr(0, w->name.size() - 7) + ".bias", w->bias);
  }
  if (head_untied) config["tie_word_embeddings"] = false;
  // Sparse weights are written in compressed-tensors' sparse-bitmask layout; its config block
  // says which modules are compressed so vLLM-style loaders find them.
  {
    json targets = json::array();
    int64_t kept = 0, total = 0;
    bool all_24 = true;  // every sparse weight written as sparse-24-bitmask
    auto bitmask_target = [&](const Linear& w, const SparseBitmask& sb) {
      all_24 = all_24 && std::holds_alternative<Dense>(sb.values->repr) && sparse_is_2of4(sb);
      targets.push_back(w.name.substr(0, w.name.size() - 7));
      total += w.in * w.out;
      kept +=
          int64_t(std::llround((1.0 - sparse_sparsity(sb, w.in, w.out)) * double(w.in * w.out)));
    };
    for (Linear* w : m.linears())
      if (const auto* sb = std::get_if<SparseBitmask>(&w->repr)) {
        bitmask_target(*w, *sb);
      } else if (const auto* csr = std::get_if<SparseCsr>(&w->repr)) {
        // Written in the bitmask layout (engine/formats/sparse_csr.h).
        bitmask_target(*w, sparse_bitmask_from_csr(*csr, w->out));
      } else if (const auto* s24 = std::get_if<Sparse24>(&w->repr)) {
        // Written as sparse-24-bitmask (engine/formats/sparse24.h); keeps half of the weights.
        all_24 = all_24 && std::holds_alternative<Dense>(s24->values->repr);
        targets.push_back(w->name.substr(0, w->name.size() - 7));
        total += w->in * w->out;
        kept += w->in * w->out / 2;
      }
    if (!targets.empty()) {
      std::string structure = "unstructured";
      for (const MethodSpec& st : spec.steps)
        if (st.is_prune() && st.prune.m > 0)
          structure = fmt::format("{}:{}", st.prune.n, st.prune.m);
      const char* format = all_24 ? "sparse-24-bitmask" : "sparse-bitmask";
      config["quantization_config"] = {{"quant_method", "compressed-tensors"},
                                       {"format", format},
                                       {"sparsity_config",
                                        {{"format", format},
                                         {"global_sparsity", 1.0 - double(kept) / double(total)},
                                         {"sparsity_structure", structure},
                                         {"targets", targets},
                                         {"ignore", json::array()}}}};
    }
  }
  const MethodSpec& ls = spec.last();
  json opts = {{"group", ls.quant.group},           {"per_channel", ls.quant.per_channel},
               {"asymmetric", ls.quant.asymmetric}, {"double_quant", ls.quant.double_quant},
               {"threshold", ls.threshold},         {"static_act", ls.static_act}};
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
  if (!source_dir.empty()) copy_sentence_embedding_files(source_dir, tmp.path().string());
  tmp.commit();
}

}  // namespace minfer
