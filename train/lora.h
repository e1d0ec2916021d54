// LoRA: a low-rank update trained beside a frozen weight (Hu et al. 2021, "LoRA: Low-Rank
// Adaptation of Large Language Models", arXiv 2106.09685):
//   out[N, O] = inp · W₀ᵀ + (α/r) · (inp · Aᵀ) · Bᵀ,   A [r, I], B [O, r]
// B starts at zero, so the adapted model starts equal to the base; A is Kaiming-uniform
// (a = √5, as PEFT's nn.Linear default: bound 1/√I). W₀ stays frozen in any weight format
// (QLoRA, Dettmers et al. 2023, arXiv 2305.14314: the base stays NF4 and is dequantized for
// each product). PEFT names: "<module>.lora_A.weight" [r, I], "<module>.lora_B.weight" [O, r].
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "engine/config.h"

namespace minfer::train {

struct LoraSpec {
  int64_t rank = 0;                  // r (0: no LoRA)
  float alpha = 16;                  // scaling α / r
  std::vector<std::string> targets;  // lora_module's names; empty: the architecture's default
  bool merge = false;  // export: merge into the base (f32) instead of keeping adapters beside it
  float scaling() const { return alpha / float(rank); }
};

// The module (inside a block) a target stands for, per architecture:
//   llama  q k v o gate up down  self_attn.{q,k,v,o}_proj, mlp.{gate,up,down}_proj
//   gpt2   qkv o up down         attn.c_attn (the fused q|k|v Conv1D), attn.c_proj, mlp.c_fc,
//                                mlp.c_proj
//   bert   q k v o up down       attention.self.{query,key,value}, attention.output.dense,
//                                intermediate.dense, output.dense
// Throws naming the target, the architecture and its accepted names for anything else.
std::string lora_module(Arch arch, const std::string& target);
// The targets when none are given: q,v (llama, bert; Hu et al.'s choice), qkv (gpt2: q and v
// live in one fused matrix).
std::vector<std::string> default_lora_targets(Arch arch);
// "q,k,v" -> {"q", "k", "v"}: each a target of some architecture, none twice (the student's
// architecture checks them again when it is built).
std::vector<std::string> parse_lora_targets(const std::string& s);

// out[N, O] += scale · (inp · Aᵀ) · Bᵀ; h [N, r] receives inp · Aᵀ (scratch).
void lora_forward(float* out, float* h, const float* inp, const float* A, const float* B,
                  float scale, int64_t N, int64_t I, int64_t O, int64_t r);
// The backward of lora_forward, accumulating: dA [r, I] += (scale · dout · B)ᵀ · inp,
// dB [O, r] += scale · doutᵀ · h, dinp [N, I] += (scale · dout · B) · A (skipped when null).
// h [N, r] = inp · Aᵀ is recomputed (not kept per layer); dh [N, r] is scratch.
void lora_backward(float* dinp, float* dA, float* dB, float* h, float* dh, const float* dout,
                   const float* inp, const float* A, const float* B, float scale, int64_t N,
                   int64_t I, int64_t O, int64_t r);

}  // namespace minfer::train
