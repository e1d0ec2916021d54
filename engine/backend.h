// Backend: the ops the models need. Models call these and nothing else, so a device backend
// (CUDA) runs the same model code with device-resident tensors.
//
// Conventions: activations are F32, 2-D [rows, cols] with unit column stride; a row stride larger
// than cols is honoured where noted (views into a fused QKV output). Outputs may alias inputs for
// element-wise ops. Legend: T tokens, C width, H heads, Hkv kv heads, D head dim, S key positions.
#pragma once
#include <cstdint>
#include <memory>
#include <string>

#include "engine/linear.h"
#include "engine/rope.h"
#include "engine/tensor.h"

namespace minfer {

struct AttentionArgs {
  int64_t n_heads = 0;     // H
  int64_t n_kv_heads = 0;  // Hkv; query head h reads kv head h / (H / Hkv)
  int64_t head_dim = 0;    // D
  int64_t batch = 1;       // B sequences; q is [B*T, H*D], k/v are [B*S, Hkv*D]
  int64_t pos0 = 0;        // position of the first query row (keys before it come from a cache)
  bool causal = true;      // query at position p sees keys 0..p
  const int32_t* key_mask = nullptr;  // [B, S] host array, 0 = padding (BERT); nullptr = all keys
  float scale = 0.f;                  // 0 = 1/sqrt(D)
  float softcap = 0.f;  // > 0: scores -> softcap tanh(scores / softcap) before the mask (Gemma-2)
  int64_t window = 0;   // > 0 (causal only): query at position i sees keys j > i - window
};

// Sees the input of every Backend::linear call before it runs (calibration statistics).
// x: rows x w.in host f32 values with row stride ld.
class LinearObserver {
 public:
  virtual ~LinearObserver() = default;
  virtual void observe(const Linear& w, const float* x, int64_t rows, int64_t ld) = 0;
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual std::string name() const = 0;

  // Threads for every kernel of this backend (BLAS included); n <= 0 means the default.
  virtual void set_threads(int n) = 0;
  virtual int threads() const = 0;

  // Memory. Activation buffers live where the backend computes.
  virtual Tensor alloc(std::initializer_list<int64_t> shape, DType dtype = DType::F32) = 0;
  // A host tensor made usable by this backend (uploaded once for devices; identity on CPU).
  virtual Tensor upload(const Tensor& host) = 0;
  virtual void upload(Linear& w) = 0;
  // Copy a [rows, cols] F32 tensor (row stride honoured) to a host array. Where kv_cache_f16(),
  // src may also be a 2-D F16 tensor (an F16 KV cache's rows), widened exactly.
  virtual void to_host(const Tensor& src, float* dst) = 0;
  virtual void synchronize() {}
  // Installs (or with nullptr removes) an observer of linear inputs. Host backends only.
  virtual void set_observer(LinearObserver* o) { observer_ = o; }

  // y[T, out] = x[T, in] · Wᵀ (+ bias). x may have a row stride.
  virtual void linear(Tensor& y, const Tensor& x, const Linear& w) = 0;
  // An op group: ys[i][T, ws[i].out] = x[T, in] · ws[i]ᵀ (+ bias) for n linears that read the same
  // x (q·k·v, gate·up), equal to n calls of linear(). A backend may run them as one dispatch
  // (CPU: GGML block formats on the decode path quantize x once and share one thread-pool loop).
  virtual void linear_group(Tensor* const* ys, const Linear* const* ws, int n, const Tensor& x) {
    for (int i = 0; i < n; ++i) linear(*ys[i], x, *ws[i]);
  }
  // The LLaMA MLP's gated product: y[T, F] = silu(x · gateᵀ + b_g) ⊙ (x · upᵀ + b_u), with u
  // [T, F] receiving x · upᵀ + b_u (scratch). Equal to linear_group({y, u}) then swiglu(y, y, u);
  // a backend may fuse them (CPU: int8/int4/... Quantized weights on the decode path compute a
  // block of gate and up rows in one pool loop and apply SiLU·mul while they are in cache).
  virtual void linear_swiglu(Tensor& y, Tensor& u, const Tensor& x, const Linear& gate,
                             const Linear& up) {
    Tensor* ys[2] = {&y, &u};
    const Linear* ws[2] = {&gate, &up};
    linear_group(ys, ws, 2, x);
    swiglu(y, y, u);
  }
  // y[T, C] = table[ids[t]] (+= when accumulate). table is [V, C], F32/F16/BF16. ids on host.
  virtual void embedding(Tensor& y, const Tensor& table, const int32_t* ids, int64_t n,
                         bool accumulate = false) = 0;
  // y[T, C] = row ids[t] of a table held as a Linear of shape (in = C, out = V): a Dense table
  // goes through embedding() above; a GgmlBlocks table (a GGUF token_embd kept as stored)
  // dequantizes only the rows asked for. Other formats throw NotImplemented. ids on host.
  virtual void embedding_table(Tensor& y, const Linear& table, const int32_t* ids, int64_t n) = 0;
  // dst = src (row strides honoured on both sides). Where kv_cache_f16(), dst may also be F16
  // (src F32, rounded to nearest even): a KV-cache write. Where kv_cache_head_major(), dst may
  // also be a head-major cache slice [Hkv, T, D] (last dim contiguous) for src [T, Hkv·D]:
  // dst[h, t, d] = src[t, h·D + d].
  virtual void copy(Tensor& dst, const Tensor& src) = 0;
  // Whether this backend runs F16 KV caches (Model::set_kv_cache_dtype): copy, rope_kv (k_dst,
  // v_dst) and attention (k, v) then take F16 caches, stored rounded to nearest even and read as
  // f32. Backends without it take F32 caches only.
  virtual bool kv_cache_f16() const { return false; }
  // Whether this backend wants head-major KV caches, [Hkv, max_ctx, D] per layer (Model::
  // new_state allocates them so): one KV head's keys are then one contiguous run, which a decode
  // step's attention streams (CPU: 1.15-1.45x faster attention at 512-2048 keys,
  // docs/performance.md). copy and rope_kv then write, and attention reads, 3-D views [Hkv, S, D]
  // of them (batch 1). Otherwise caches are [max_ctx, Hkv·D] rows.
  virtual bool kv_cache_head_major() const { return false; }
  virtual void add(Tensor& y, const Tensor& a, const Tensor& b) = 0;  // element-wise
  virtual void mul(Tensor& y, const Tensor& a, const Tensor& b) = 0;  // element-wise
  // y = x * s (Gemma's embedding normalizer sqrt(C)). y and x may have row strides.
  virtual void scale(Tensor& y, const Tensor& x, float s) = 0;
  // y = cap * tanh(x / cap), cap > 0 (Gemma-2 final logit soft-capping).
  virtual void softcap(Tensor& y, const Tensor& x, float cap) = 0;
  // Per row: (x - mean) / sqrt(var + eps) * w + b. w, b are [C] f32.
  virtual void layernorm(Tensor& y, const Tensor& x, const Tensor& w, const Tensor& b,
                         float eps) = 0;
  // Per row: x / sqrt(mean(x²) + eps) * w.
  virtual void rmsnorm(Tensor& y, const Tensor& x, const Tensor& w, float eps) = 0;
  virtual void gelu(Tensor& y, const Tensor& x, bool tanh_approx) = 0;
  virtual void silu(Tensor& y, const Tensor& x) = 0;
  // y = silu(gate) * up (the LLaMA MLP's gating).
  virtual void swiglu(Tensor& y, const Tensor& gate, const Tensor& up) = 0;
  virtual void softmax(Tensor& y, const Tensor& x) = 0;  // over the last dim of each row
  // Rotary embedding in place (HF rotate_half layout: pairs (i, i + D/2)) on x [T, n_heads*D]
  // for positions pos0 .. pos0+T-1: angle = pos * rt.inv_freq[i] (float32, as HF), and cos and
  // sin both multiplied by rt.attention_scaling. D = rt.head_dim(). x may have a row stride.
  virtual void rope(Tensor& x, int64_t pos0, int64_t n_heads, const RopeTable& rt) = 0;
  // RoPE and the KV-cache write of one attention layer: q rotated in place (as rope(q, pos0,
  // n_heads)), k_dst = k rotated (as rope(k, pos0, n_kv_heads)), v_dst = v (k_dst / v_dst: the
  // cache's rows, or head-major [Hkv, T, D] slices as copy takes them). k's own contents are
  // unspecified afterwards. Equal to rope, rope, copy, copy; a backend may fuse them (CPU: the
  // cos/sin table computed once, the rotated k written straight into the cache).
  virtual void rope_kv(Tensor& q, Tensor& k, const Tensor& v, Tensor& k_dst, Tensor& v_dst,
                       int64_t pos0, int64_t n_heads, int64_t n_kv_heads, const RopeTable& rt) {
    rope(q, pos0, n_heads, rt);
    rope(k, pos0, n_kv_heads, rt);
    copy(k_dst, k);
    copy(v_dst, v);
  }
  // out[B*T, H*D] = softmax(cap(q kᵀ · scale) + mask) v per head, cap the optional soft-cap and
  // mask causal (within the optional window) and the key mask. q, k, v may have row strides.
  // k, v: [B*S, Hkv*D], or where kv_cache_head_major() head-major [Hkv, S, D] views (B = 1).
  virtual void attention(Tensor& out, const Tensor& q, const Tensor& k, const Tensor& v,
                         const AttentionArgs& a) = 0;

 protected:
  LinearObserver* observer_ = nullptr;
};

// Installs `o` as `be`'s linear observer for the lifetime of this object and removes it on every
// exit (calibration passes: compress/compress.cpp, compress/structured.cpp).
class ScopedObserver {
 public:
  ScopedObserver(Backend& be, LinearObserver* o) : be_(be) { be_.set_observer(o); }
  ~ScopedObserver() { be_.set_observer(nullptr); }
  ScopedObserver(const ScopedObserver&) = delete;
  ScopedObserver& operator=(const ScopedObserver&) = delete;

 private:
  Backend& be_;
};

std::unique_ptr<Backend> make_cpu_backend(int threads = 0);
// "cpu" or "cuda"; throws a clear error for a backend that is not built or has no device.
std::unique_ptr<Backend> make_backend(const std::string& name, int threads = 0, int device = 0);
// True when this binary was built with `make CUDA=1` (the real CUDA backend is linked in).
bool cuda_backend_built();

// Default thread count: OMP_NUM_THREADS if set, else the number of cores.
int default_threads();

}  // namespace minfer
