// The compression methods: one registry, one spelling per method, parsed once into a typed spec.
//
// Grammar (what --method, --keep, --head-format and bench --methods take):
//   chain  := step ('+' step)*              applied left to right, e.g. "wanda-50+int8"
//   step   := name ('-' option)*            e.g. "int4-g64", "int4-g128-asym", "nf4-dq",
//                                            "int8-tensor", "ternary-row", "w8a8-static"
//           | prune '-' (<pct> | N:M) ('-' scope)?   e.g. "wanda-50", "magnitude-30-layer",
//                                            "wanda-2:4" (compress/prune.h)
//   option := g<N> | asym | dq | tensor | row | static | dynamic | clip | act | sq | awq | seq
//           | refit | refit<R>
//                                            (only those the method takes), e.g. "int4-clip",
//                                            "int3-gptq-act", "w8a8-static-sq"
//           | <number>                 structured pruning amount: "ffn-20", "heads-40", "layers-4"
//   scope  := row | layer | global          (magnitude only; row is the default)
//           | weighted                kmeans: SqueezeLLM-style sensitivity weights (calibration)
//           | <P> | r<N> | e<E>      low-rank size: P % fewer parameters, rank N, or energy E
//                                    e.g. "lowrank-20", "lowrank-aw-40+int8", "lowrank-r64",
//                                    "lowrank-aw-e0.9"
// kmeans takes its index bits in the name: "kmeans4", "kmeans3-g128", "kmeans4-weighted".
// The registry below is the list --help, the docs, bench and the tests print and loop over.
#pragma once
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "compress/codebook.h"
#include "compress/lowrank.h"
#include "compress/prune.h"
#include "compress/quantize.h"

namespace minfer {

enum class MethodKind : uint8_t {
  Float,        // f32 / fp16 / bf16: a Dense copy in that dtype
  WeightQuant,  // weight-only quantization: Quantized (int8, int4, nf4, binary, ternary)
  ActQuant,     // int8 weights and int8 activations: Int8WithOutliers (llm-int8), W8A8
  Structured,   // whole-model step before the per-Linear ones: heads / FFN neurons / blocks
                // removed (compress/structured.h), a smaller dense model
  Prune,        // float weights in, float weights with zeros out (magnitude, wanda); comes first
  Gptq,         // float weights -> Quantized from calibration XᵀX: GPTQ (rounding error
                // compensated), AWQ (channel scales searched, compress/dataaware.h)
  LowRank,      // float weights -> LowRank with f32 factors (lowrank, lowrank-aw); a later
                // Float / WeightQuant step converts each factor and keeps the LowRank
  Codebook,     // float weights -> Codebook (kmeans<b>: k-means weight sharing), comes last
  Rotate,       // whole-model orthogonal change of basis folded into the weights (rotate:
                // QuaRot / SpinQuant, compress/rotate.h); after structured steps, before the rest
};

// Option suffixes a method accepts (bit set).
enum MethodOption : unsigned {
  kOptGroup = 1u << 0,        // -g<N>: group size along a row
  kOptAsym = 1u << 1,         // -asym: integer zero points
  kOptDq = 1u << 2,           // -dq: double-quantized scales (QLoRA)
  kOptTensor = 1u << 3,       // -tensor: one scale per tensor
  kOptRow = 1u << 4,          // -row: one scale per row (ternary)
  kOptStatic = 1u << 5,       // -static / -dynamic: activation scales from calibration or per token
  kOptAmount = 1u << 6,       // -<number>: how much a structured step removes (percent or blocks)
  kOptSparsity = 1u << 7,     // -<pct> | -N:M (required), -row/-layer/-global scope for magnitude
  kOptRank = 1u << 8,         // -<P> / -r<N> / -e<E>: low-rank size (percent, rank, energy)
  kOptBits = 1u << 9,         // <b> right after the name: index bits (kmeans4)
  kOptWeighted = 1u << 10,    // -weighted: calibration-weighted clustering (kmeans)
  kOptClip = 1u << 11,        // -clip: per-group scale search (compress/dataaware.h)
  kOptActOrder = 1u << 12,    // -act: GPTQ act-order (columns by descending diag XᵀX)
  kOptSmooth = 1u << 13,      // -sq: SmoothQuant channel scaling folded into the previous op
  kOptAwq = 1u << 14,         // -awq: AWQ channel scales folded first, then GPTQ on the result
  kOptSequential = 1u << 15,  // -seq: GPTQ true-sequential (each block's XᵀX from the model
                              // whose earlier blocks are already quantized)
  kOptRefit = 1u << 16,       // -refit: GPTQ group scales refitted by least squares to the codes
  kOptR1 = 1u << 17,          // -r1 / -r2: rotate the residual stream only / the heads only
  kOptF16Scales = 1u << 18,   // -f16s: group scales rounded to and stored as fp16
};

struct MethodInfo {
  std::string_view name;  // the one spelling
  MethodKind kind;
  unsigned options;          // MethodOption bits
  std::string_view summary;  // one line for --help and docs
};

// Every registered method, in the order --help lists them.
std::span<const MethodInfo> method_registry();
// The registered method called `name`, or nullptr.
const MethodInfo* find_method(std::string_view name);
// "  name  summary" lines for --help.
std::string methods_help();
// The methods bench measures by default (names with options folded in).
const std::vector<std::string>& default_bench_methods();

// One step of a chain: a registered method with its options.
struct MethodSpec {
  std::string method = "int8";  // a registered name
  QuantSpec quant;              // group / per_channel / asymmetric / double_quant / ternary_per_row
  float threshold = 6.f;        // llm-int8 outlier threshold on |x| (LLM.int8() paper default)
  bool static_act = false;      // w8a8: per-tensor activation scales from calibration
  double amount = -1;           // structured: heads / ffn: percent removed per layer, [0, 100);
                                // layers: blocks dropped. -1 = not given
  PruneSpec prune;              // magnitude / wanda: sparsity or N:M, scope
  LowRankSpec lowrank;          // lowrank, lowrank-aw: the rank rule (activation_aware from name)
  CodebookSpec codebook;        // kmeans: bits, weighted (the group is quant.group)
  bool clip_search = false;     // int4 / int3 / nf4 / -gptq: per-group scale search (-clip)
  bool act_order = false;       // -gptq: columns in descending diag(XᵀX) order (-act)
  bool smooth = false;          // w8a8-static: SmoothQuant scaling (-sq)
  bool awq_scales = false;      // -gptq: AWQ's channel scales searched and folded first (-awq)
  bool sequential = false;      // -gptq: true-sequential calibration, block by block (-seq)
  int refit = 0;       // -gptq: rounds of least-squares scale refit (-refit: 1, -refit<R>: R)
  double alpha = -1;   // SmoothQuant α (-1 = 0.5), AWQ α (-1 = grid search); [0, 1]
  double damp = 0.01;  // GPTQ dampening λ / mean(diag H), (0, 1)
  bool rotate_stream = true;  // rotate: the residual stream (R1); -r2: the heads only
  bool rotate_heads = true;   // rotate: the per-head V / O rotation (R2); -r1: the stream only

  const MethodInfo& info() const;  // throws for an unregistered name
  bool is_prune() const { return info().kind == MethodKind::Prune; }
  // True when the step reads calibration statistics (w8a8-static and wanda need them, llm-int8
  // uses them).
  bool uses_calibration() const;
  bool needs_calibration() const;
  bool is_awq() const { return method == "int4-awq"; }
  // True when compress_model scales input channels before the per-Linear steps (AWQ, -sq).
  bool smooths() const { return is_awq() || smooth || awq_scales; }
  // True when the channel scales follow AWQ's search (int4-awq, -gptq-awq), not SmoothQuant's.
  bool awq_rule() const { return is_awq() || awq_scales; }
  // The round-to-nearest format a GPTQ / AWQ step writes ("int4" for "int4-gptq"); `method`
  // otherwise.
  std::string base_format() const;
  // True when the step reads the calibration inputs' Gram matrix XᵀX (ActStats::gram).
  bool needs_gram() const;
};

// Parses one step ("int4-g64"); throws naming the step and what is wrong.
MethodSpec method_spec_from_name(const std::string& name);
// Checks a step built in code (options the method does not take, group ranges, threshold).
void validate_method_spec(const MethodSpec& s);
// Canonical name of a step (inverse of method_spec_from_name), e.g. "nf4-g64-dq".
std::string method_spec_name(const MethodSpec& s);

}  // namespace minfer
