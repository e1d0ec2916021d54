// Training ops: each `<op>_forward` with its `<op>_backward` beside it (llm.c's layout), on
// contiguous row-major f32 host arrays. Backward functions ACCUMULATE (+=) into every gradient
// they write, so a caller zeroes gradients once per optimizer step and gradient accumulation and
// tied weights (one table used twice) need nothing special. Inputs a backward reads are never
// overwritten by its forward (the caller keeps them per layer, train/llama_train.h).
//
// Legend: N rows (= B*T tokens), B sequences, T positions, C width, I/O linear in/out features,
// H query heads, Hkv kv heads, D head dim, V vocab, F ffn width.
//
// Every backward is checked against central finite differences in tests/test_train_ops.cpp.
#pragma once
#include <cstdint>
#include <vector>

namespace minfer::train {

// out[N, O] = inp[N, I] · W[O, I]ᵀ (+ bias[O]); OpenBLAS sgemm.
void linear_forward(float* out, const float* inp, const float* W, const float* bias, int64_t N,
                    int64_t I, int64_t O);
// dinp[N, I] += dout · W (skipped when dinp is null); dW[O, I] += doutᵀ · inp (skipped when dW is
// null: a frozen weight); dbias[O] += Σ_rows dout (skipped when null).
void linear_backward(float* dinp, float* dW, float* dbias, const float* dout, const float* inp,
                     const float* W, int64_t N, int64_t I, int64_t O);

// A bias alone (for a projection whose product is computed elsewhere, e.g. QAT or LoRA):
// out[N, O] += bias per row; dbias[O] += Σ_rows dout (nothing when dbias is null: frozen).
void bias_forward(float* out, const float* bias, int64_t N, int64_t O);
void bias_backward(float* dbias, const float* dout, int64_t N, int64_t O);

// The same with W stored [I, O] (Hugging Face Conv1D, GPT-2): out[N, O] = inp · W (+ bias).
void conv1d_forward(float* out, const float* inp, const float* W, const float* bias, int64_t N,
                    int64_t I, int64_t O);
// dinp[N, I] += dout · Wᵀ; dW[I, O] += inpᵀ · dout; dbias[O] += Σ_rows dout (each skipped when
// null).
void conv1d_backward(float* dinp, float* dW, float* dbias, const float* dout, const float* inp,
                     const float* W, int64_t N, int64_t I, int64_t O);

// out[N, C] = table[ids[n]]. Throws naming the row for an id outside [0, V).
void embedding_forward(float* out, const int32_t* ids, const float* table, int64_t N, int64_t C,
                       int64_t V);
// dtable[ids[n]] += dout[n] (nothing when dtable is null: a frozen table).
void embedding_backward(float* dtable, const float* dout, const int32_t* ids, int64_t N, int64_t C);

// RMSNorm (Zhang & Sennrich 2019; HF LlamaRMSNorm): out = x · rstd · w, rstd =
// 1/sqrt(mean(x²)+eps). rstd[N] is saved for backward.
void rmsnorm_forward(float* out, float* rstd, const float* x, const float* w, int64_t N, int64_t C,
                     float eps);
// dx += rstd·(w∘dout) − x·rstd³·mean(x∘w∘dout); dw += Σ_rows dout∘x·rstd (skipped when dw is
// null: a frozen weight).
void rmsnorm_backward(float* dx, float* dw, const float* dout, const float* x, const float* w,
                      const float* rstd, int64_t N, int64_t C);

// LayerNorm (Ba et al. 2016; torch.nn.LayerNorm): out = (x − mean)·rstd·w + b; mean[N], rstd[N]
// saved for backward.
void layernorm_forward(float* out, float* mean, float* rstd, const float* x, const float* w,
                       const float* b, int64_t N, int64_t C, float eps);
// (dw, db: both null for a frozen norm.)
void layernorm_backward(float* dx, float* dw, float* db, const float* dout, const float* x,
                        const float* w, const float* mean, const float* rstd, int64_t N, int64_t C);

// Rotary embedding (Su et al. 2021) in place on x[B*T, nh*D], HF rotate_half layout (pairs
// (i, i + D/2)), position of row n = n mod T, inv_freq = 1/theta^(2i/D) in f32 as HF computes it.
void rope_forward(float* x, int64_t B, int64_t T, int64_t nh, int64_t D, float theta);
// The rotation is orthogonal: backward rotates dx in place by the inverse (transposed) rotation.
void rope_backward(float* dx, int64_t B, int64_t T, int64_t nh, int64_t D, float theta);
// cos/sin of positions 0..T-1 as HF LlamaRotaryEmbedding computes them in f32: [T, D/2, 2].
std::vector<float> rope_cos_sin(int64_t T, int64_t D, float theta);
// The rotation with a table from rope_cos_sin: sign +1 forward, -1 backward (the transpose).
void rope_apply(float* x, const float* cs, int64_t B, int64_t T, int64_t nh, int64_t D, float sign);

// Scaled dot-product attention with grouped-query heads (query head h reads kv head
// h / (H/Hkv)): out[B*T, H*D] = softmax(q kᵀ/√D + mask) v. q [B*T, H*D], k and v [B*T, Hkv*D].
// The mask: causal (query t sees keys 0..t) and/or key_mask [B, T] (0 = padding: no query sees
// that key, as BERT's attention_mask; null = none). A query that sees no key gets 0.
// probs [B, H, T, T] (masked entries 0) is saved for backward.
void attention_forward(float* out, float* probs, const float* q, const float* k, const float* v,
                       int64_t B, int64_t T, int64_t H, int64_t Hkv, int64_t D, bool causal = true,
                       const int32_t* key_mask = nullptr);
// dq, dk, dv += the gradients through softmax (dS = P∘(dP − rowsum(P∘dP)); masked entries have
// P = 0 and get none).
void attention_backward(float* dq, float* dk, float* dv, const float* dout, const float* q,
                        const float* k, const float* v, const float* probs, int64_t B, int64_t T,
                        int64_t H, int64_t Hkv, int64_t D, bool causal = true);

// SwiGLU (Shazeer 2020; the LLaMA MLP): out = silu(gate) ∘ up, silu(g) = g·σ(g).
void swiglu_forward(float* out, const float* gate, const float* up, int64_t n);
// dgate += dout·up·σ(g)(1 + g(1 − σ(g))); dup += dout·silu(g).
void swiglu_backward(float* dgate, float* dup, const float* dout, const float* gate,
                     const float* up, int64_t n);

// GELU (Hendrycks & Gimpel 2016): exact erf form, or the tanh approximation (GPT-2).
void gelu_forward(float* out, const float* x, int64_t n, bool tanh_approx);
void gelu_backward(float* dx, const float* dout, const float* x, int64_t n, bool tanh_approx);

// out = a + b (the residual stream); backward: da += dout, db += dout.
void residual_forward(float* out, const float* a, const float* b, int64_t n);
void residual_backward(float* da, float* db, const float* dout, int64_t n);

// Softmax cross-entropy. Returns Σ over rows with targets[n] >= 0 of −log softmax(logits[n])
// [targets[n]] (a target < 0 is ignored, as torch's ignore_index). Throws for a target >= V.
double cross_entropy_forward(const float* logits, const int32_t* targets, int64_t N, int64_t V);
// dlogits += scale · (softmax(logits) − onehot(target)) for rows with a target.
void cross_entropy_backward(float* dlogits, const float* logits, const int32_t* targets, int64_t N,
                            int64_t V, float scale);

// Temperature-scaled KL divergence for distillation (Hinton et al. 2015), over N rows:
//   forward KL:  Σ_n KL(p_n ‖ q_n), p = softmax(teacher/τ), q = softmax(student/τ)
//   reverse KL:  Σ_n KL(q_n ‖ p_n) (MiniLLM, Gu et al. 2023)
// Returns the sum over rows (the caller scales by τ²/N).
double kl_forward(const float* student, const float* teacher, int64_t N, int64_t V, float tau,
                  bool reverse);
// dstudent += scale · ∂/∂student of the row sums above:
//   forward: (q − p)/τ; reverse: q∘(log q − log p − KL)/τ.
void kl_backward(float* dstudent, const float* student, const float* teacher, int64_t N, int64_t V,
                 float tau, bool reverse, float scale);

}  // namespace minfer::train
