// CUDA kernels of the CudaBackend, as host functions that launch them on a stream (kernels.cu).
// Plain C++ with no engine types, so that nvcc never parses the engine headers; the backend
// (cuda_backend.cpp) checks shapes and arguments before calling these.
// Legend: T rows of x (tokens), K in features, N out features, C row width, Kp = K padded to 64,
// QA activation block, nb = ceil(Kp / QA), H heads, Hkv kv heads, D head dim, S key positions.
// Every pointer is device memory; ld = row stride in elements.
#pragma once
#include <cstddef>
#include <cstdint>

#include "kernels/common/qscheme.h"
#include "kernels/cuda/cuda_compat.h"

namespace minfer::MINFER_CUDA_NS {

// A device f32 matrix view.
struct DMat {
  float* p = nullptr;
  int64_t rows = 0, cols = 0, ld = 0;
};
// A 2-D device view of fp16 bits (an F16 KV cache's rows; ld in elements).
struct DMat16 {
  uint16_t* p = nullptr;
  int64_t rows = 0, cols = 0, ld = 0;
};

enum class BinOp { Add, Mul, SwiGLU };
// Scale: y = p x (Gemma's embedding normalizer); Softcap: y = p tanh(x / p) (Gemma-2's logit
// soft-capping, p > 0). p is unused by the others.
enum class UnOp { GeluErf, GeluTanh, Silu, Scale, Softcap };
enum class HalfType { F16, BF16 };

void launch_binary(BinOp op, DMat y, DMat a, DMat b, cudaStream_t s);
void launch_unary(UnOp op, DMat y, DMat x, cudaStream_t s, float p = 0.f);
void launch_copy(DMat y, DMat x, cudaStream_t s);
void launch_add_bias(DMat y, const float* bias, cudaStream_t s);
void launch_layernorm(DMat y, DMat x, const float* w, const float* b, float eps, cudaStream_t s);
void launch_rmsnorm(DMat y, DMat x, const float* w, float eps, cudaStream_t s);
void launch_softmax(DMat y, DMat x, cudaStream_t s);
// cs: [rows, D/2, 2] (cos, sin) per position and frequency, computed on the host.
void launch_rope(DMat x, const float* cs, int64_t n_heads, int64_t head_dim, cudaStream_t s);
// table [V, C] of dtype 0 = F32, 1 = F16, 2 = BF16; ids [y.rows] (checked by the caller).
void launch_embedding(DMat y, const void* table, int dtype, const int32_t* ids, bool accumulate,
                      cudaStream_t s);

struct AttnParams {
  const float *q, *k, *v;                         // k, v unused (nullptr) where k16, v16 are set
  const uint16_t *k16 = nullptr, *v16 = nullptr;  // an F16 KV cache (fp16 bits), read widened
  float* out;
  int64_t ldq, ldk, ldv, ldo;
  int64_t H, Hkv, D, B, T, S, pos0;
  bool causal;
  const int32_t* key_mask;  // device [B, S] or nullptr
  float scale;
  float softcap = 0.f;  // > 0: scores -> softcap tanh(scores / softcap) before the mask (Gemma-2)
  int64_t window = 0;   // > 0 (causal only): query at position i sees keys j > i - window
};
// Dynamic shared memory one attention block needs (the caller checks it against the device).
size_t attention_shared_bytes(int64_t D, int64_t S);
void launch_attention(const AttnParams& a, cudaStream_t s);

// Dense F16/BF16 weights, few rows: W [N, K] (or [K, N] when transposed) read as stored.
void launch_dense_half_gemv(HalfType ht, const uint16_t* w, bool transposed, const float* x,
                            int64_t T, int64_t ldx, float* y, int64_t ldy, int64_t K, int64_t N,
                            cudaStream_t s);
// x [T, K] (row stride ldx) -> out [T, K] 16-bit (row stride ldo), rounded to nearest even (the
// CPU's f32_to_f16 / f32_to_bf16): for the cuBLAS tensor-core GEMM (ldo = K) and writes into an
// F16 KV cache.
void launch_to_half(HalfType ht, const float* x, int64_t T, int64_t ldx, int64_t K, uint16_t* out,
                    int64_t ldo, cudaStream_t s);

// A Quantized weight on the device (fields as engine/formats/quantized.h).
struct QWeight {
  QScheme scheme = QScheme::Int8;
  const uint8_t* codes = nullptr;  // [N, rb]
  int64_t rb = 0;
  const float* scales = nullptr;        // [N, groups] or [1]
  const uint8_t* zeros = nullptr;       // [N, groups] (asymmetric int4)
  const int8_t* scale_codes = nullptr;  // NF4 double quantization
  const float* scale_scales = nullptr;
  float scale_offset = 0.f;
  int64_t group = 0, groups = 0, K = 0, N = 0;
  bool per_tensor = false;
};

// Activations -> int8 codes q [T, Kp], scales d [T, nb], code sums s [T, nb]:
// qm::quantize_act_block per block of QA values (QA = Kp: one scale per row).
void launch_quantize_act(const float* x, int64_t T, int64_t ldx, int64_t K, int64_t QA, int8_t* q,
                         float* d, int32_t* sums, cudaStream_t s);
// One scale per row, static (qm::quantize_act_static with `scale`): q [T, Kp], d/sums [T].
void launch_quantize_act_static(const float* x, int64_t T, int64_t ldx, int64_t K, float scale,
                                int8_t* q, float* d, int32_t* sums, cudaStream_t s);
// Int8 codes against int8 activations (W8A8, LLM.int8()): y[t, n] = Σ float(Σ (u - z) q) * s_w *
// d_x.
void launch_int_linear(const QWeight& w, const int8_t* q, const float* d, int64_t QA, int64_t T,
                       float* y, int64_t ldy, cudaStream_t s);
// Throws std::invalid_argument for NF4 (no integer codes).
// Weight-only formats (every scheme): f32 activations times the weights dequantized in
// registers (the CPU kernels' semantics, kernels/cpu/quant.h).
void launch_wq_linear(const QWeight& w, const float* x, int64_t T, int64_t ldx, float* y,
                      int64_t ldy, cudaStream_t s);

// A SparseBitmask weight on the device (engine/formats/sparse.h): the mask and the packed values
// (Dense f32 / f16 / bf16, or int8 codes with zero point 128 and per-row or per-tensor scales).
struct SWeight {
  const uint8_t* mask = nullptr;  // [N, kb], LSB first
  int64_t kb = 0, K = 0, N = 0;
  int vkind = 0;               // 0 f32, 1 f16, 2 bf16, 3 int8
  const void* vals = nullptr;  // [N, ld] values or codes
  int64_t ld = 0;
  const float* scales = nullptr;  // int8: [N] or [1]
  bool per_tensor = false;
  // SparseCsr (engine/formats/sparse_csr.h): row n keeps row_ptr[n + 1] - row_ptr[n] weights at
  // inputs col[n * kb + j] (kb = Kv; mask unused), values at [n, j] of vals as above.
  const int64_t* row_ptr = nullptr;  // [N + 1]
  const uint16_t* col = nullptr;     // [N, kb]
};
// y[T, N] = x[T, K] · Wᵀ for a SparseBitmask weight: one warp per output row, each lane a mask
// byte, the value index from a warp prefix sum of the bytes' popcounts.
void launch_sparse_linear(const SWeight& w, const float* x, int64_t T, int64_t ldx, float* y,
                          int64_t ldy, cudaStream_t s);

// y[T, N] = x[T, K] · Wᵀ for a Sparse24 weight (engine/formats/sparse24.h; the index bytes in
// w.mask, w.kb per row): one warp per output row, lane l takes index byte l, l + 32, ... (8
// inputs, 4 kept values at fixed places 4 b .. 4 b + 3), x gathered at the indexed inputs.
void launch_sparse24_linear(const SWeight& w, const float* x, int64_t T, int64_t ldx, float* y,
                            int64_t ldy, cudaStream_t s);

// y[T, N] = x[T, K] · Wᵀ for a SparseCsr weight (w.row_ptr, w.col): one warp per output row, lane
// l takes kept weights j = l, l + 32, ... (coalesced column and value reads), x gathered at the
// columns.
void launch_sparse_csr_linear(const SWeight& w, const float* x, int64_t T, int64_t ldx, float* y,
                              int64_t ldy, cudaStream_t s);

// A Codebook weight on the device (engine/formats/codebook.h): packed indices and f16 tables.
struct CWeight {
  const uint8_t* indices = nullptr;     // [N, rb]: per row an LSB-first stream of b-bit indices
  const uint16_t* centroids = nullptr;  // [N, ng, 2^b] f16
  int64_t rb = 0, ng = 0, group = 0;
  int bits = 4;
  int64_t K = 0, N = 0;
};
// y[T, N] = x[T, K] · Wᵀ for a Codebook weight: one warp per output row and up to kTT tokens,
// each lane one weight of a 32-weight step (index unpacked from the bit stream, centroid looked
// up in the group's f16 table).
void launch_codebook_linear(const CWeight& w, const float* x, int64_t T, int64_t ldx, float* y,
                            int64_t ldy, cudaStream_t s);

// A GgmlBlocks weight on the device (engine/formats/ggml_blocks.h): the file's blocks as stored.
struct GWeight {
  uint32_t type = 0;                // ggml::BlockType value (kernels/common/ggml_quants.h)
  const uint8_t* blocks = nullptr;  // [N, rb] bytes, row n = its K / QK blocks
  int64_t rb = 0, K = 0, N = 0;
};
// y[T, N] = x[T, K] · Wᵀ for a GgmlBlocks weight, f32 activations: one warp per output row and
// up to kTT tokens, each lane dequantizing whole blocks (ggml::dequant_block) in registers /
// local memory and dotting them with x. Throws std::invalid_argument for a type it lacks.
void launch_ggml_linear(const GWeight& w, const float* x, int64_t T, int64_t ldx, float* y,
                        int64_t ldy, cudaStream_t s);
// Embedding lookup from a GgmlBlocks table [N = V, K = C]: y[t] (+)= dequantized row ids[t].
void launch_ggml_rows(const GWeight& w, const int32_t* ids, DMat y, bool accumulate,
                      cudaStream_t s);

// LLM.int8(): flags[k] = 1 for the outlier features of this call (listed in col_index >= 0, or
// |x[t, k]| >= threshold for some t); xm = x with those columns set to 0 (contiguous [T, K]).
void launch_outlier_split(const float* x, int64_t T, int64_t ldx, int64_t K, float threshold,
                          const int32_t* col_index, uint8_t* flags, float* xm, cudaStream_t s);
// y[t, n] += Σ_{k flagged} x[t, k] w(n, k): w from outlier_w [N, m] F16 where col_index[k] >= 0,
// else the int8 column dequantized.
void launch_outlier_add(const QWeight& w, const float* x, int64_t T, int64_t ldx,
                        const uint8_t* flags, const int32_t* col_index, const uint16_t* outlier_w,
                        int64_t m, float* y, int64_t ldy, cudaStream_t s);

}  // namespace minfer::MINFER_CUDA_NS
