// Internals shared by kernels/cpu/ggml.cpp (dispatch, activation quantization, the scalar q8
// reference, the AVX-512 VNNI kernels, the f32 path) and its AVX2 sibling ggml_avx2.cpp. The
// build's target ISA (-march) picks at most one SIMD family at compile time, as quant_impl.h does
// for the Quantized kernels; without either the scalar reference runs.
// Legend: kernels/cpu/ggml.h (T rows of x, K in features, N out features).
#pragma once
#include <cstdint>

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__) && \
    defined(__AVX512VNNI__) && defined(__F16C__)
#define MINFER_GGML_VNNI 1
#elif defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#define MINFER_GGML_AVX2 1
#endif
#if defined(MINFER_GGML_VNNI) || defined(MINFER_GGML_AVX2)
#define MINFER_GGML_SIMD 1
#endif

namespace minfer::ggml_cpu {

// A SIMD row kernel of the q8 path: y[t, n] (row stride ldy) for rows n in [n0, n1) and tokens
// t < nt <= kGgmlGemmMinT, from the weight rows wb (row stride rb bytes) and the activations
// quantized as ggml.cpp's QAct holds them for those tokens: codes aq [nt, K], block scales
// ad [nt, K / QA] (QA = 32, or 256 for the K-quants), code sums as [nt, K / 32] (K-quants:
// [nt, K / 16], one per group of 16), and the Q8_1 sum terms am [nt, K / 32] (32-weight types
// only; nullptr for the K-quants).
using RowsFn = void (*)(const uint8_t* wb, int64_t rb, const int8_t* aq, const float* ad,
                        const int32_t* as, const float* am, int64_t nt, int64_t K, int64_t n0,
                        int64_t n1, float* y, int64_t ldy);

#if defined(MINFER_GGML_AVX2)
// The AVX2 row kernel of a q8-path type (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K .. Q6_K) in the row
// layout (GgmlBlocks::interleave == 1); nullptr for any other type.
RowsFn rows_avx2(uint32_t type);
#endif

}  // namespace minfer::ggml_cpu
