// The block projections of a trainable model (TrainLlama, TrainGpt2, TrainBert) when they train as
// something other than a plain f32 matrix: fake-quantized (QAT, train/qat.h) or as LoRA adapters
// over a frozen base in any weight format (train/lora.h). One implementation for the three
// architectures; each model lays its projections out here, calls forward / backward for those
// that handles() names and adds its own biases.
//
// A projection is named by its weight ("model.layers.0.self_attn.q_proj.weight") and has the
// Linear shape [O, I] (out, in). GPT-2's Conv1D weights are stored [I, O] (conv1d = true): the
// latent weight keeps the stored layout (its Hugging Face name and shape), QAT scales and the
// exported Quantized Linear are laid out over [O, I] like every Linear of the engine.
//
// Legend: N rows, I inputs, O outputs, r LoRA rank.
#pragma once
#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "engine/config.h"
#include "engine/linear.h"
#include "train/lora.h"
#include "train/params.h"
#include "train/qat.h"

namespace minfer {
class WeightSource;
}

namespace minfer::train {

// What the block projections train as, beyond plain f32:
//   qat:  every block projection is fake-quantized in the forward, STE in the backward
//         (train/qat.h); with LSQ its scales are parameters "<weight name>_scale".
//   lora: rank > 0: the whole base model is frozen (no gradients, no optimizer state); the
//         targeted projections keep their base weight in its own format (any Linear, e.g. NF4)
//         and train "<module>.lora_A.weight" [r, I] / ".lora_B.weight" [O, r]. The parameter
//         store then holds only the adapters.
struct TrainMods {
  std::optional<QatSpec> qat;
  LoraSpec lora;
  uint64_t seed = 0;  // LoRA A init
};

class Projections {
 public:
  // params: the trainable store; frozen: the frozen base (LoRA). Both outlive this object; their
  // tables are filled by the model (base_store() for everything that is not a projection, add()
  // for the projections) before the model allocates them. Throws "not implemented" for QAT with
  // LoRA, and for a LoRA alpha <= 0 or a target that `arch` does not have (naming it and the
  // accepted ones).
  Projections(const TrainMods& mods, Arch arch, ParamStore& params, ParamStore& frozen);
  // Refers to its model's stores: neither copied nor moved with them.
  Projections(const Projections&) = delete;
  Projections& operator=(const Projections&) = delete;

  bool lora() const { return mods_.lora.rank > 0; }
  bool qat() const { return mods_.qat.has_value(); }
  const TrainMods& mods() const { return mods_; }
  // Where the model's other tensors go: the frozen store with LoRA, else the trainable one.
  ParamStore& base_store() { return lora() ? frozen_ : params_; }
  // The resolved LoRA targets (the architecture's default when none were given).
  const std::vector<std::string>& lora_targets() const { return targets_; }

  // Lays out block projection `name` ("<module>.weight", [O, I]); conv1d: stored [I, O].
  // Throws for a LoRA rank outside [1, min(I, O)], a QAT group the format does not allow.
  void add(const std::string& name, int64_t O, int64_t I, bool conv1d = false);
  // Block projections in layout order.
  const std::vector<std::string>& names() const { return order_; }
  // True when `name`'s forward and backward must go through this object (QAT or a LoRA target).
  bool handles(const std::string& name) const;
  bool is_lora_target(const std::string& name) const;

  // A tensor's weights by name, from the trainable or the frozen store; its gradient (null when
  // frozen).
  float* W(const std::string& name);
  const float* W(const std::string& name) const;
  float* G(const std::string& name);

  // Loading. fill(p, w) fills one tensor of a store (the model's source mapping, layouts);
  // base(name) returns the Linear [O, I] a LoRA target starts from (its bias is dropped: the
  // model keeps biases as tensors). Without LoRA every trainable tensor but the LSQ scales is
  // filled; with LoRA the frozen store is filled and the targets take base(name). Then the LSQ
  // scales are initialised and LoRA A drawn (after_load).
  void load(const std::function<void(const ParamTensor&, float*)>& fill,
            const std::function<Linear(const std::string&)>& base);
  // The same from a safetensors source with the model's Hugging Face names.
  void load(const WeightSource& src);
  // LSQ scales from the weights, LoRA A Kaiming-uniform (bound 1/√I, PEFT's default) and B = 0.
  void after_load();

  // Per step, before the forward: the fake-quantized weights (QAT; nothing otherwise).
  void refresh();
  // out[N, O] = inp[N, I] · Ŵᵀ (+ α/r · inp · Aᵀ · Bᵀ); no bias.
  void forward(const std::string& name, float* out, const float* inp, int64_t N);
  // Accumulates dinp[N, I] and the gradients of the latent weight (STE, LSQ) or of the adapters.
  void backward(const std::string& name, float* dinp, const float* dout, const float* inp,
                int64_t N);

  // Export. With QAT: every projection as the real Quantized Linear (qat_export; [O, I]) whose
  // dequantized weight is the forward's fake-quantized one. With LoRA: the adapters under PEFT's
  // names ("base_model.model.<module>.lora_A.weight"), and the whole model in f32 (the frozen
  // store and each target's base dequantized, in the stored layout, α/r·B·A added when merge).
  // Without LoRA full_weights is the trainable store.
  std::vector<Linear> qat_linears() const;
  std::vector<std::pair<std::string, Tensor>> lora_adapters() const;
  std::vector<std::pair<std::string, Tensor>> full_weights(bool merge) const;
  // PEFT's target_modules: the full module names of the LoRA targets.
  std::vector<std::string> lora_modules() const;
  // True when the targets are Conv1D (PEFT's fan_in_fan_out).
  bool conv1d() const;

 private:
  struct Proj {
    int64_t O = 0, I = 0;
    bool conv1d = false, lora = false;
    QatLayout lay;
    std::vector<float> wt;    // conv1d + QAT: the latent weight transposed to [O, I]
    std::vector<float> wq;    // [O, I] fake-quantized weight of this step
    std::vector<float> stat;  // statistic scales (QAT without LSQ)
  };
  const float* latent_oi(const std::string& name, const Proj& p) const;  // [O, I]
  std::string module(const std::string& name) const {
    return name.substr(0, name.size() - 7);  // drops ".weight"
  }

  TrainMods mods_;
  ParamStore& params_;
  ParamStore& frozen_;
  std::vector<std::string> targets_;         // LoRA targets (resolved)
  std::vector<std::string> target_modules_;  // ".self_attn.q_proj", ... (suffixes)
  std::map<std::string, Proj> proj_;
  std::vector<std::string> order_;
  std::map<std::string, Linear> base_;            // LoRA: targeted base weights in their own format
  std::vector<float> dwq_, dwt_, lh_, ldh_, w0_;  // scratch
};

}  // namespace minfer::train
