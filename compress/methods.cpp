#include "compress/methods.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>

#include "engine/error.h"
#include "kernels/common/codebook_math.h"

namespace minfer {

namespace {

// The registry. Bits per weight and the sources: docs/quantization.md.
constexpr MethodInfo kMethods[] = {
    {"f32", MethodKind::Float, 0, "32-bit float weights (the reference)"},
    {"fp16", MethodKind::Float, 0, "IEEE half-precision weights, f32 compute"},
    {"bf16", MethodKind::Float, 0, "bfloat16 weights, f32 compute"},
    {"int8", MethodKind::WeightQuant, kOptGroup | kOptTensor | kOptF16Scales,
     "int8 absmax per output row (-tensor: per tensor, -g<N>: per group), -f16s: fp16 scales"},
    {"int4", MethodKind::WeightQuant, kOptGroup | kOptAsym | kOptClip | kOptF16Scales,
     "int4 per group of 128 (-g32/-g64), symmetric or -asym with zero points, -clip: scale "
     "search, -f16s: fp16 scales (16/G bits/w less)"},
    {"int3", MethodKind::WeightQuant, kOptGroup | kOptClip | kOptF16Scales,
     "3-bit codes -4..3 per group of 128, packed 3 bits each (3.25 bits/w), -clip, -f16s"},
    {"nf4", MethodKind::WeightQuant, kOptGroup | kOptDq | kOptClip | kOptF16Scales,
     "NormalFloat-4 (QLoRA) per block of 64, -dq: double-quantized scales (4.127 bits/w), "
     "-f16s: fp16 scales"},
    {"binary", MethodKind::WeightQuant, 0, "sign(w) * mean|w| per row (1 bit/w)"},
    {"ternary", MethodKind::WeightQuant, kOptRow,
     "BitNet b1.58 absmean {-1, 0, 1}, per tensor (-row: per row)"},
    {"llm-int8", MethodKind::ActQuant, 0,
     "LLM.int8(): int8 weights and activations, outlier features (|x| >= threshold) in f16"},
    {"w8a8", MethodKind::ActQuant, kOptStatic | kOptSmooth,
     "int8 weights x int8 activations (per token, or -static: calibrated per tensor; "
     "-static-sq: SmoothQuant)"},
    {"heads", MethodKind::Structured, kOptAmount,
     "-<pct>: remove that share of attention heads per layer (calibrated, Wanda-sp scores)"},
    {"ffn", MethodKind::Structured, kOptAmount,
     "-<pct>: remove that share of FFN neurons per layer (calibrated, Wanda-sp scores)"},
    {"layers", MethodKind::Structured, kOptAmount,
     "-<n>: drop the n blocks whose removal changes the calibration loss least"},
    {"magnitude", MethodKind::Prune, kOptSparsity,
     "prune the <pct> % smallest |w| per row (-layer, -global), or N:M (magnitude-2:4)"},
    {"wanda", MethodKind::Prune, kOptSparsity,
     "prune by |w| * ||x||_2 per row (Sun et al. 2023; calibration), <pct> or N:M (wanda-2:4)"},
    {"int4-gptq", MethodKind::Gptq,
     kOptGroup | kOptActOrder | kOptClip | kOptAwq | kOptAsym | kOptSequential | kOptRefit |
         kOptF16Scales,
     "GPTQ: int4 per group of 128 (-g<N>), rounding errors compensated on calibration XtX, "
     "-act: act-order, -clip: scale search, -awq: AWQ channel scales folded first, -asym: zero "
     "points, -seq: true-sequential calibration (each block's XtX with the earlier blocks "
     "quantized), -refit: each row's group scales refitted to its codes by least squares on XtX "
     "(-refit<R>: R rounds of sweep and refit), -f16s: fp16 scales"},
    {"int8-gptq", MethodKind::Gptq,
     kOptGroup | kOptActOrder | kOptSequential | kOptRefit | kOptF16Scales,
     "GPTQ: int8 per output row (-g<N>: per group), -act, -seq, -refit"},
    {"int3-gptq", MethodKind::Gptq,
     kOptGroup | kOptActOrder | kOptClip | kOptAwq | kOptSequential | kOptRefit | kOptF16Scales,
     "GPTQ at 3 bits (packed codes -4..3, 3.25 bits/w at g128), -act, -clip, -awq, -seq, -refit"},
    {"int4-awq", MethodKind::Gptq, kOptGroup | kOptAsym | kOptF16Scales,
     "AWQ: int4 per group of 128 with input-channel scales searched on calibration and folded "
     "into the previous norm / linear, then a scale (clip) search (-asym: zero points)"},
    {"lowrank", MethodKind::LowRank, kOptRank,
     "truncated SVD U*V, -<P>: each matrix loses P % of its parameters (-r<N>: rank, -e<E>: "
     "energy)"},
    {"lowrank-aw", MethodKind::LowRank, kOptRank,
     "SVD-LLM: SVD whitened by the calibration inputs' XtX (output error, not weight error)"},
    {"rotate", MethodKind::Rotate, kOptR1,
     "QuaRot-style random orthogonal rotation of the residual stream and of each attention head "
     "(-r1: the stream only, -r2: the heads only), folded into the weights; goes first, e.g. "
     "rotate+int4-gptq"},
    {"kmeans", MethodKind::Codebook, kOptBits | kOptGroup | kOptWeighted,
     "kmeans<b> (b = 2..8): 2^b k-means centroids per row (-g<N>: per group), -weighted: by "
     "calibration E[x^2]"},
};

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

std::string known_methods() {
  std::string s;
  for (const MethodInfo& m : kMethods) s += (s.empty() ? "" : ", ") + std::string(m.name);
  return s;
}

QScheme scheme_of(const MethodSpec& s) {
  const std::string b = s.base_format();
  return qscheme_from_name(b, "method");
}

}  // namespace

std::span<const MethodInfo> method_registry() {
  return kMethods;
}

const MethodInfo* find_method(std::string_view name) {
  for (const MethodInfo& m : kMethods)
    if (m.name == name) return &m;
  return nullptr;
}

std::string methods_help() {
  std::string s;
  for (const MethodInfo& m : kMethods) s += fmt::format("  {:<10} {}\n", m.name, m.summary);
  return s;
}

const std::vector<std::string>& default_bench_methods() {
  static const std::vector<std::string> v = {"f32",      "fp16",     "bf16", "int8",       "int4",
                                             "int4-g64", "int3",     "nf4",  "nf4-dq",     "binary",
                                             "ternary",  "llm-int8", "w8a8", "w8a8-static"};
  return v;
}

const MethodInfo& MethodSpec::info() const {
  const MethodInfo* m = find_method(method);
  MINFER_CHECK(m != nullptr, "unknown compression method '{}' (expected one of: {})", method,
               known_methods());
  return *m;
}

bool MethodSpec::uses_calibration() const {
  return method == "llm-int8" || clip_search || needs_calibration();
}

bool MethodSpec::needs_calibration() const {
  return (method == "w8a8" && static_act) || method == "wanda" ||
         (method == "kmeans" && codebook.weighted) || needs_gram();
}

bool MethodSpec::needs_gram() const {
  return method == "lowrank-aw" || info().kind == MethodKind::Gptq;
}

std::string MethodSpec::base_format() const {
  return method.ends_with("-gptq") || method.ends_with("-awq") ? method.substr(0, method.find('-'))
                                                               : method;
}

void validate_method_spec(const MethodSpec& s) {
  const MethodInfo& m = s.info();
  const int g = s.quant.group;
  MINFER_CHECK(g >= 0, "method '{}': group must be positive, got {}", s.method, g);
  if (g != 0) {
    MINFER_CHECK(m.options & kOptGroup, "method '{}' has no group option (groups: int8, int4, nf4)",
                 s.method);
    const int mult = m.kind == MethodKind::Codebook ? cb::kGroupMultiple
                                                    : qscheme_info(scheme_of(s)).group_multiple;
    MINFER_CHECK(g % mult == 0, "{}: group must be a multiple of {}, got {}", s.method, mult, g);
  }
  MINFER_CHECK(!s.quant.asymmetric || (m.options & kOptAsym),
               "method '{}': asymmetric (zero points) is an int4 option", s.method);
  MINFER_CHECK(!s.quant.f16_scales || (m.options & kOptF16Scales),
               "method '{}': fp16 scales (-f16s) are an int8 / int4 / int3 / nf4 option", s.method);
  MINFER_CHECK(!s.quant.f16_scales || (!s.quant.double_quant && s.quant.per_channel),
               "method '{}': -f16s stores per-group scales; not with -dq or -tensor", s.method);
  MINFER_CHECK(!s.quant.double_quant || (m.options & kOptDq),
               "method '{}': double quantization is an nf4 option", s.method);
  MINFER_CHECK(s.quant.per_channel || (m.options & kOptTensor),
               "method '{}': per-tensor scales are an int8 option", s.method);
  MINFER_CHECK(!s.quant.ternary_per_row || (m.options & kOptRow),
               "method '{}': per-row scales are a ternary option", s.method);
  MINFER_CHECK(!s.static_act || (m.options & kOptStatic),
               "method '{}': static activation scales are a w8a8 option", s.method);
  MINFER_CHECK(!s.clip_search || (m.options & kOptClip),
               "method '{}': the scale search (-clip) is an int4 / int3 / nf4 / int4-gptq / "
               "int3-gptq option",
               s.method);
  MINFER_CHECK(!s.clip_search || !s.quant.double_quant,
               "method '{}': -clip with -dq (double-quantized scales) is not supported", s.method);
  MINFER_CHECK(!s.act_order || (m.options & kOptActOrder),
               "method '{}': act-order (-act) is a GPTQ option", s.method);
  MINFER_CHECK(!s.sequential || (m.options & kOptSequential),
               "method '{}': true-sequential calibration (-seq) is a GPTQ option", s.method);
  MINFER_CHECK(s.refit == 0 || (m.options & kOptRefit),
               "method '{}': the least-squares scale refit (-refit) is a GPTQ option", s.method);
  MINFER_CHECK(!s.awq_scales || (m.options & kOptAwq),
               "method '{}': AWQ channel scales (-awq) are an int4-gptq / int3-gptq option",
               s.method);
  MINFER_CHECK((s.rotate_heads && s.rotate_stream) || (m.options & kOptR1),
               "method '{}': -r1 / -r2 (the residual stream / the heads only) are rotate options",
               s.method);
  MINFER_CHECK(s.rotate_heads || s.rotate_stream, "method '{}': nothing left to rotate", s.method);
  MINFER_CHECK(!s.smooth || (m.options & kOptSmooth),
               "method '{}': SmoothQuant (-sq) is a w8a8 option", s.method);
  MINFER_CHECK(!s.smooth || s.static_act,
               "method '{}': SmoothQuant (-sq) needs static activation scales: w8a8-static-sq "
               "(dynamic per-token scales have no outlier problem to migrate)",
               s.method);
  MINFER_CHECK(s.alpha == -1 || (std::isfinite(s.alpha) && s.alpha >= 0 && s.alpha <= 1),
               "method '{}': alpha must be in [0, 1], got {}", s.method, s.alpha);
  MINFER_CHECK(s.alpha == -1 || s.smooths(),
               "method '{}': alpha is an int4-awq / -gptq-awq / w8a8-static-sq option", s.method);
  MINFER_CHECK(std::isfinite(s.damp) && s.damp > 0 && s.damp < 1,
               "method '{}': GPTQ dampening must be in (0, 1) (a fraction of mean diag XtX; "
               "--damp takes percent), got {}",
               s.method, s.damp);
  if (m.kind == MethodKind::Structured) {
    MINFER_CHECK(s.amount >= 0, "method '{}' needs an amount: {}-<{}>", s.method, s.method,
                 s.method == "layers" ? "n" : "pct");
    if (s.method == "layers")
      MINFER_CHECK(s.amount == std::floor(s.amount) && s.amount < 1e6,
                   "layers-<n>: n must be a whole number of blocks, got {}", s.amount);
    else
      MINFER_CHECK(s.amount < 100,
                   "{}-<pct>: the share removed must be in [0, 100) percent, got {}", s.method,
                   s.amount);
  } else {
    MINFER_CHECK(s.amount < 0, "method '{}' takes no amount (only heads, ffn, layers do)",
                 s.method);
  }
  const LowRankSpec& lr = s.lowrank;
  const int sizes = (lr.percent != 0) + (lr.rank != 0) + (lr.energy != 0);
  if (m.options & kOptRank) {
    MINFER_CHECK(sizes == 1,
                 "method '{}': give exactly one size: -<P> (percent of parameters removed, e.g. "
                 "{}-20), -r<N> (rank) or -e<E> (energy)",
                 s.method, s.method);
    MINFER_CHECK(lr.percent == 0 || (lr.percent >= 1 && lr.percent <= 99),
                 "{}: parameter reduction must be 1..99 %, got {}", s.method, lr.percent);
    MINFER_CHECK(lr.rank == 0 || lr.rank >= 1, "{}: rank must be >= 1, got {}", s.method, lr.rank);
    MINFER_CHECK(lr.energy == 0 || (std::isfinite(lr.energy) && lr.energy > 0 && lr.energy <= 1),
                 "{}: energy must be in (0, 1], got {}", s.method, lr.energy);
    MINFER_CHECK(lr.activation_aware == (s.method == "lowrank-aw"),
                 "{}: activation_aware is set by the name (lowrank-aw)", s.method);
  } else {
    MINFER_CHECK(sizes == 0 && !lr.activation_aware,
                 "method '{}': a rank / percent / energy is a lowrank option", s.method);
  }
  if (m.options & kOptBits)
    MINFER_CHECK(s.codebook.bits >= cb::kMinBits && s.codebook.bits <= cb::kMaxBits,
                 "method 'kmeans{}': kmeans<b> takes b = {}..{} index bits", s.codebook.bits,
                 cb::kMinBits, cb::kMaxBits);
  MINFER_CHECK(!s.codebook.weighted || (m.options & kOptWeighted),
               "method '{}': -weighted is a kmeans option", s.method);
  MINFER_CHECK(std::isfinite(s.threshold) && s.threshold > 0,
               "llm-int8: threshold must be a positive number, got {}", s.threshold);
  if (m.kind == MethodKind::Prune) {
    MINFER_CHECK((s.method == "wanda") == (s.prune.score == PruneScore::Wanda),
                 "method '{}': prune score does not match the method", s.method);
    validate_prune_spec(s.prune, s.method);
  }
}

MethodSpec method_spec_from_name(const std::string& name) {
  MINFER_CHECK(!name.empty(), "empty compression method name");
  std::vector<std::string> parts = split(name, '-');
  MethodSpec s;
  size_t i = 1;
  s.method = parts[0];
  if (parts.size() > 1 && find_method(parts[0] + "-" + parts[1])) {  // "llm-int8", "lowrank-aw"
    s.method = parts[0] + "-" + parts[1];
    i = 2;
  }
  if (parts[0].starts_with("kmeans") && parts[0].size() > 6) {  // "kmeans4": bits in the name
    const std::string b = parts[0].substr(6);
    MINFER_CHECK(b.size() <= 3 && std::all_of(b.begin(), b.end(), ::isdigit),
                 "compression method '{}': expected kmeans<b> with b = {}..{} index bits", name,
                 cb::kMinBits, cb::kMaxBits);
    s.method = "kmeans";
    s.codebook.bits = std::stoi(b);
    MINFER_CHECK(s.codebook.bits >= cb::kMinBits && s.codebook.bits <= cb::kMaxBits,
                 "compression method '{}': kmeans<b> takes b = {}..{} index bits, got {}", name,
                 cb::kMinBits, cb::kMaxBits, s.codebook.bits);
  } else if (parts[0] == "kmeans") {
    MINFER_FAIL(
        "compression method '{}': give the index bits, kmeans<b> with b = {}..{} (e.g. "
        "kmeans4)",
        name, cb::kMinBits, cb::kMaxBits);
  }
  if (!find_method(s.method)) {
    const std::string hint = s.method == "f16"   ? " (did you mean fp16?)"
                             : s.method == "llm" ? " (did you mean llm-int8?)"
                                                 : "";
    MINFER_FAIL("unknown compression method '{}'{} (expected one of: {})", name, hint,
                known_methods());
  }
  const MethodInfo& m = s.info();
  if (m.kind == MethodKind::Prune) {
    s.prune.score = s.method == "wanda" ? PruneScore::Wanda : PruneScore::Magnitude;
    MINFER_CHECK(parts.size() >= 2 && parts.size() <= 3 && !parts[1].empty(),
                 "compression method '{}': expected {}-<pct> (percent of weights removed, e.g. "
                 "{}-50), {}-N:M (e.g. {}-2:4), optionally -row/-layer/-global",
                 name, s.method, s.method, s.method, s.method);
    const std::string& a = parts[1];
    const size_t colon = a.find(':');
    auto number = [&](const std::string& t, const char* what) {
      MINFER_CHECK(
          !t.empty() && t.size() < 10 &&
              std::all_of(t.begin(), t.end(), [](char c) { return ::isdigit(c) || c == '.'; }) &&
              std::count(t.begin(), t.end(), '.') <= 1 && t != ".",
          "compression method '{}': {} '{}' is not a number", name, what, t);
      return std::stod(t);
    };
    if (colon != std::string::npos) {
      const double n = number(a.substr(0, colon), "N of N:M"),
                   mm = number(a.substr(colon + 1), "M of N:M");
      MINFER_CHECK(n == std::floor(n) && mm == std::floor(mm),
                   "compression method '{}': N:M takes whole numbers", name);
      MINFER_CHECK(n < mm,
                   "compression method '{}': N:M keeps N of every M weights, so N < M "
                   "(got N = {}, M = {})",
                   name, n, mm);
      s.prune.n = int(n);
      s.prune.m = int(std::min(mm, 1e6));
    } else {
      const double pct = number(a, "sparsity");
      MINFER_CHECK(pct < 100, "compression method '{}': sparsity must be in [0, 100) %, got {}",
                   name, pct);
      s.prune.sparsity = pct / 100.0;
    }
    if (parts.size() == 3) {
      const std::string& sc = parts[2];
      MINFER_CHECK(sc == "row" || sc == "layer" || sc == "global",
                   "compression method '{}': unknown scope '{}' (row, layer or global)", name, sc);
      s.prune.scope = sc == "row"     ? PruneScope::Row
                      : sc == "layer" ? PruneScope::Layer
                                      : PruneScope::Global;
    }
    validate_method_spec(s);
    return s;
  }
  s.lowrank.activation_aware = s.method == "lowrank-aw";
  auto need = [&](unsigned opt, const std::string& p, const char* owner) {
    MINFER_CHECK(m.options & opt, "{}: '-{}' is {} option", name, p, owner);
  };
  for (; i < parts.size(); ++i) {
    const std::string& p = parts[i];
    if (p.size() > 1 && p[0] == 'g' && std::all_of(p.begin() + 1, p.end(), ::isdigit)) {
      MINFER_CHECK(p.size() < 8, "{}: group '{}' is out of range", name, p);
      MINFER_CHECK(m.options & kOptGroup,
                   "method '{}' has no group option (groups: int8, int4, nf4)", name);
      s.quant.group = std::stoi(p.substr(1));
      MINFER_CHECK(s.quant.group > 0, "{}: group must be positive", name);
    } else if (!p.empty() && std::all_of(p.begin(), p.end(), ::isdigit) &&
               !(m.options & kOptAmount)) {  // structured amounts are parsed below
      need(kOptRank, p, "a lowrank");
      MINFER_CHECK(p.size() < 4, "{}: parameter reduction '{}' is out of range (1..99 %)", name, p);
      s.lowrank.percent = std::stoi(p);
      MINFER_CHECK(s.lowrank.percent >= 1, "{}: parameter reduction must be 1..99 %, got 0", name);
    } else if (p.size() > 1 && p[0] == 'r' && std::all_of(p.begin() + 1, p.end(), ::isdigit) &&
               !((p == "r1" || p == "r2") && (m.options & kOptR1))) {
      need(kOptRank, p, p == "r1" || p == "r2" ? "a lowrank (rank) or a rotate" : "a lowrank");
      MINFER_CHECK(p.size() < 10, "{}: rank '{}' is out of range", name, p);
      s.lowrank.rank = std::stoll(p.substr(1));
      MINFER_CHECK(s.lowrank.rank >= 1, "{}: rank must be >= 1, got 0", name);
    } else if (p.size() > 1 && p[0] == 'e' && (::isdigit(p[1]) || p[1] == '.')) {
      need(kOptRank, p, "a lowrank");
      size_t used = 0;
      double e = 0;
      try {
        e = std::stod(p.substr(1), &used);
      } catch (const std::exception&) {
        used = 0;
      }
      MINFER_CHECK(used == p.size() - 1, "{}: energy '{}' is not a number", name, p.substr(1));
      s.lowrank.energy = e;
      MINFER_CHECK(e > 0 && e <= 1, "{}: energy must be in (0, 1], got {}", name, e);
    } else if (p == "asym") {
      need(kOptAsym, p, "an int4");
      s.quant.asymmetric = true;
    } else if (p == "dq") {
      need(kOptDq, p, "an nf4");
      s.quant.double_quant = true;
    } else if (p == "tensor") {
      need(kOptTensor, p, "an int8");
      s.quant.per_channel = false;
    } else if (p == "row") {
      need(kOptRow, p, "a ternary");
      s.quant.ternary_per_row = true;
    } else if (!p.empty() && std::all_of(p.begin(), p.end(),
                                         [](char ch) { return ::isdigit(ch) || ch == '.'; })) {
      MINFER_CHECK(m.options & kOptAmount,
                   "{}: '-{}' is an amount, which only heads, ffn and layers take", name, p);
      MINFER_CHECK(s.amount < 0, "{}: more than one amount", name);
      try {
        size_t used = 0;
        s.amount = std::stod(p, &used);
        MINFER_CHECK(used == p.size(), "{}: '{}' is not a number", name, p);
      } catch (const std::logic_error&) {
        MINFER_FAIL("{}: '{}' is not a number", name, p);
      }
    } else if (p == "weighted") {
      need(kOptWeighted, p, "a kmeans");
      s.codebook.weighted = true;
    } else if (p == "clip") {
      need(kOptClip, p, "an int4 / int3 / nf4 / -gptq");
      s.clip_search = true;
    } else if (p == "act") {
      need(kOptActOrder, p, "a GPTQ");
      s.act_order = true;
    } else if (p == "awq") {
      need(kOptAwq, p, "an int4-gptq / int3-gptq");
      s.awq_scales = true;
    } else if (p == "seq") {
      need(kOptSequential, p, "a GPTQ");
      s.sequential = true;
    } else if (p.rfind("refit", 0) == 0 && p.size() <= 7 &&
               std::all_of(p.begin() + 5, p.end(), [](char ch) { return ::isdigit(ch); })) {
      need(kOptRefit, p, "a GPTQ");
      s.refit = p.size() == 5 ? 1 : std::stoi(p.substr(5));
      MINFER_CHECK(s.refit >= 1 && s.refit <= 16, "{}: -refit<R> takes 1..16 rounds, got {}", name,
                   s.refit);
    } else if (p == "f16s") {
      need(kOptF16Scales, p, "an int8 / int4 / int3 / nf4 (and their -gptq / -awq)");
      s.quant.f16_scales = true;
    } else if (p == "r1" || p == "r2") {
      need(kOptR1, p, "a rotate");
      MINFER_CHECK(s.rotate_heads && s.rotate_stream, "{}: give at most one of -r1, -r2", name);
      (p == "r1" ? s.rotate_heads : s.rotate_stream) = false;
    } else if (p == "sq") {
      need(kOptSmooth, p, "a w8a8-static");
      s.smooth = true;
    } else if (p == "static" || p == "dynamic") {
      need(kOptStatic, p, "a w8a8");
      s.static_act = p == "static";
    } else {
      MINFER_FAIL(
          "compression method '{}': unknown option '{}' (options: -g<N>, -asym, -dq, "
          "-tensor, -row, -static, -weighted, -sq, -clip, -act, -awq, -seq, -refit; lowrank: -<P>, "
          "-r<N>, -e<E>; rotate: -r1, -r2; -f16s)",
          name, p);
    }
  }
  validate_method_spec(s);
  return s;
}

std::string method_spec_name(const MethodSpec& s) {
  std::string n = s.method;
  if (find_method(s.method) && s.info().kind == MethodKind::Prune) {
    if (s.prune.m > 0) return fmt::format("{}-{}:{}", n, s.prune.n, s.prune.m);
    n += fmt::format("-{:g}", s.prune.sparsity * 100);
    if (s.prune.scope == PruneScope::Layer) n += "-layer";
    if (s.prune.scope == PruneScope::Global) n += "-global";
    return n;
  }
  if (s.method == "kmeans") {
    n += std::to_string(s.codebook.bits);
    if (s.quant.group > 0) n += fmt::format("-g{}", s.quant.group);
    if (s.codebook.weighted) n += "-weighted";
    return n;
  }
  if (s.method == "int8" && !s.quant.per_channel && s.quant.group == 0) n += "-tensor";
  const std::string base = s.base_format();
  if (base == "int4" || base == "int3" || base == "nf4" || (base == "int8" && s.quant.group > 0))
    n += fmt::format("-g{}",
                     s.quant.group > 0 ? s.quant.group : qscheme_info(scheme_of(s)).default_group);
  if (s.quant.asymmetric) n += "-asym";
  if (s.quant.double_quant) n += "-dq";
  if (s.quant.f16_scales) n += "-f16s";
  if (s.method == "ternary" && s.quant.ternary_per_row) n += "-row";
  if (s.method == "w8a8" && s.static_act) n += "-static";
  if (s.smooth) n += "-sq";
  if (s.awq_scales) n += "-awq";
  if (s.act_order) n += "-act";
  if (s.clip_search) n += "-clip";
  if (s.refit == 1) n += "-refit";
  if (s.refit > 1) n += fmt::format("-refit{}", s.refit);
  if (s.sequential) n += "-seq";
  if (s.method == "rotate" && !s.rotate_heads) n += "-r1";
  if (s.method == "rotate" && !s.rotate_stream) n += "-r2";
  if (s.amount >= 0) n += fmt::format("-{:g}", s.amount);
  if (s.lowrank.percent) n += fmt::format("-{}", s.lowrank.percent);
  if (s.lowrank.rank) n += fmt::format("-r{}", s.lowrank.rank);
  if (s.lowrank.energy) n += fmt::format("-e{}", s.lowrank.energy);
  return n;
}

}  // namespace minfer
