// LoRA adapters kept beside a model (PEFT's layout: adapter_config.json + adapter_model.safetensors
// in the model folder, as `distill --lora-rank r` writes without --lora-merge) are merged when the
// folder is loaded (Hu et al. 2021, arXiv 2106.09685, section 4.1: "we can explicitly compute and
// store W = W0 + BA"): every adapted projection becomes a Dense f32 Linear
//   W = dequantize(W0) + (lora_alpha / r) · B · A,   A [r, in], B [out, r].
#pragma once
#include <string>

#include "models/model.h"

namespace minfer {

// True when dir holds adapter_config.json (then adapter_model.safetensors must be there too).
bool has_lora_adapters(const std::string& dir);
// Merges the adapters in dir into m's Linears. Throws naming the file and tensor for a missing
// file, an adapter whose module the model lacks, mismatched shapes, or an option this merge does
// not implement (use_rslora, use_dora, a non-"none" bias, per-module rank / alpha patterns).
// Returns the number of merged projections.
int merge_lora_adapters(Model& m, const std::string& dir);

}  // namespace minfer
