#include "compress/quantize.h"

#include <fmt/format.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "engine/error.h"
#include "engine/half.h"
#include "engine/model_folder.h"
#include "kernels/common/quant_math.h"

namespace minfer {

namespace {

// f32 [out, in] copy of a Dense weight (the Dense unit's reference dequantize).
Tensor dense_to_f32(const Linear& l) {
  return dequantize_weight(l);
}

// Resolved group size: 0 -> the scheme's default, >= K -> K (one scale per row).
int64_t resolve_group(const QuantSpec& spec, QScheme scheme, int64_t K, const std::string& name) {
  const QSchemeInfo info = qscheme_info(scheme);
  int64_t g = spec.group == 0 ? info.default_group : spec.group;
  MINFER_CHECK(g >= 0, "quantize '{}': group must be >= 0, found {}", name, g);
  if (g == 0 || g >= K) return K;
  MINFER_CHECK(info.group_multiple > 0 && g % info.group_multiple == 0,
               "quantize '{}': {} group must be a multiple of {} (or >= in = {}), found {}", name,
               spec.method, info.group_multiple, K, g);
  return g;
}

// A copy of src (name, shape, bias) holding repr, checked once here (the format's invariants).
Linear with_repr(const Linear& src, LinearRepr repr) {
  return make_linear(src.name, src.in, src.out, std::move(repr), src.bias);
}

bool par(int64_t N, int64_t K) {
  return N * K >= (1 << 16);
}

// Block absmax a_i of an NF4 row-major [N, groups] scale array -> double-quantized codes.
void double_quantize(const std::vector<float>& a, Quantized& q) {
  const int64_t n = int64_t(a.size()), nb = qm::ceil_div(n, qm::kDqBlock);
  double mean = 0;
  for (float v : a) mean += v;
  const float offset = float(mean / double(n));
  q.scale_offset = offset;
  q.scale_codes = Tensor::empty(DType::I8, {n});
  q.scale_scales = Tensor::empty(DType::F32, {nb});
  int8_t* codes = q.scale_codes.data<int8_t>();
  float* cs = q.scale_scales.data<float>();
  for (int64_t b = 0; b < nb; ++b) {
    const int64_t i0 = b * qm::kDqBlock, i1 = std::min(n, i0 + qm::kDqBlock);
    float m = 0;
    for (int64_t i = i0; i < i1; ++i) m = std::max(m, std::fabs(a[size_t(i)] - offset));
    cs[b] = m / 127.f;
    for (int64_t i = i0; i < i1; ++i)
      codes[i] = int8_t(qm::quantize_sym(a[size_t(i)] - offset, cs[b], 127));
  }
}

Quantized quantize_matrix(const float* W, int64_t N, int64_t K, const QuantSpec& spec,
                          const std::string& name) {
  Quantized q;
  const std::string& m = spec.method;
  bool known = false;
  for (QScheme sc : kQSchemes)
    if (m == qscheme_name(sc)) q.scheme = sc, known = true;
  MINFER_CHECK(
      known,
      "quantize '{}': unknown method '{}' (expected int8, int4, int3, nf4, binary, ternary, "
      "fp16, bf16 or f32)",
      name, m);
  const QSchemeInfo info = qscheme_info(q.scheme);
  MINFER_CHECK(!spec.asymmetric || info.asymmetric,
               "quantize '{}': asymmetric is only defined for int4, not {}", name, m);
  MINFER_CHECK(!spec.double_quant || info.double_quant,
               "quantize '{}': double_quant is only defined for nf4, not {}", name, m);
  MINFER_CHECK(spec.group == 0 || info.group_multiple > 0,
               "quantize '{}': {} has no group option (found group {})", name, m, spec.group);

  q.group = resolve_group(spec, q.scheme, K, name);
  q.asymmetric = spec.asymmetric;
  q.per_tensor = (q.scheme == QScheme::Int8 && spec.group == 0 && !spec.per_channel) ||
                 (q.scheme == QScheme::Ternary && !spec.ternary_per_row);
  const int64_t G = q.group, groups = qm::ceil_div(K, G), Kp = qm::padded_k(K);
  const int64_t rb = qm::row_bytes(K, qscheme_bits(q.scheme));
  q.codes = Tensor::empty(DType::U8, {N, rb});
  uint8_t* codes = q.codes.data<uint8_t>();
  q.scales = Tensor::empty(DType::F32, {q.per_tensor ? 1 : N, q.per_tensor ? 1 : groups});
  if (q.per_tensor) q.scales = q.scales.view({1});
  float* scales = q.scales.data<float>();
  if (q.asymmetric) q.zeros = Tensor::empty(DType::U8, {N, groups});

  // Per-tensor scales first (int8: absmax, ternary: mean |w|).
  if (q.per_tensor) {
    double acc = 0;
    float amax = 0;
    for (int64_t i = 0; i < N * K; ++i) {
      acc += std::fabs(double(W[i]));
      amax = std::max(amax, std::fabs(W[i]));
    }
    scales[0] = q.scheme == QScheme::Int8
                    ? amax / 127.f
                    : std::max(float(acc / double(N * K)), qm::kTernaryMinScale);
  }

  switch (q.scheme) {
    case QScheme::Int8:
#pragma omp parallel for if (par(N, K))
      for (int64_t n = 0; n < N; ++n) {
        const float* w = W + n * K;
        uint8_t* row = codes + n * rb;
        std::memset(row, 128, size_t(rb));
        for (int64_t g = 0; g < groups; ++g) {
          const int64_t k0 = g * G, k1 = std::min(K, k0 + G);
          float s = scales[0];
          if (!q.per_tensor) {
            float amax = 0;
            for (int64_t k = k0; k < k1; ++k) amax = std::max(amax, std::fabs(w[k]));
            s = scales[n * groups + g] = amax / 127.f;
          }
          for (int64_t k = k0; k < k1; ++k) row[k] = uint8_t(qm::quantize_sym(w[k], s, 127) + 128);
        }
      }
      break;
    case QScheme::Int4: {
      uint8_t* zeros = q.asymmetric ? q.zeros.data<uint8_t>() : nullptr;
#pragma omp parallel for if (par(N, K))
      for (int64_t n = 0; n < N; ++n) {
        const float* w = W + n * K;
        uint8_t* row = codes + n * rb;
        for (int64_t g = 0; g < groups; ++g) {
          const int64_t k0 = g * G, k1 = std::min(K, k0 + G);
          float amax = 0, mn = 0, mx = 0;
          for (int64_t k = k0; k < k1; ++k) {
            amax = std::max(amax, std::fabs(w[k]));
            mn = std::min(mn, w[k]);
            mx = std::max(mx, w[k]);
          }
          if (zeros) {
            const qm::AsymParams p = qm::asym_params(mn, mx, 15);
            scales[n * groups + g] = p.scale;
            zeros[n * groups + g] = uint8_t(p.zero);
            for (int64_t k = k0; k < k1; ++k) qm::set_q4(row, k, qm::quantize_asym(w[k], p, 15));
            if (g == groups - 1)  // padding: the last group's zero point, i.e. the value 0
              for (int64_t k = K; k < Kp; ++k) qm::set_q4(row, k, p.zero);
          } else {
            const float s = scales[n * groups + g] = amax / 7.f;
            for (int64_t k = k0; k < k1; ++k) qm::set_q4(row, k, qm::quantize_sym(w[k], s, 7) + 8);
          }
        }
        if (!zeros)
          for (int64_t k = K; k < Kp; ++k) qm::set_q4(row, k, 8);
      }
      break;
    }
    case QScheme::Int3:
      // GGML Q4_0's signed-max rule at 3 bits (compress/dataaware.h): s = -w_m / 4 for the
      // group's largest-magnitude weight w_m, q = round(w / s) clamped to -4..3, u = q + 4.
#pragma omp parallel for if (par(N, K))
      for (int64_t n = 0; n < N; ++n) {
        const float* w = W + n * K;
        uint8_t* row = codes + n * rb;
        for (int64_t g = 0; g < groups; ++g) {
          const int64_t k0 = g * G, k1 = std::min(K, k0 + G);
          float amax = 0, wm = 0;
          for (int64_t k = k0; k < k1; ++k)
            if (std::fabs(w[k]) > amax) amax = std::fabs(w[k]), wm = w[k];
          const float s = scales[n * groups + g] = float(-double(wm) / 4.0);
          for (int64_t k = k0; k < k1; ++k)
            qm::set_q3(row, k, s == 0.f ? 4 : qm::round_clamp(double(w[k]) / double(s), -4, 3) + 4);
        }
        for (int64_t k = K; k < Kp; ++k) qm::set_q3(row, k, 4);
      }
      break;
    case QScheme::NF4: {
      std::vector<float> absmax(size_t(N * groups));
#pragma omp parallel for if (par(N, K))
      for (int64_t n = 0; n < N; ++n)
        for (int64_t g = 0; g < groups; ++g) {
          float a = 0;
          for (int64_t k = g * G; k < std::min(K, (g + 1) * G); ++k)
            a = std::max(a, std::fabs(W[n * K + k]));
          absmax[size_t(n * groups + g)] = a;
        }
      if (spec.double_quant) {
        double_quantize(absmax, q);
        q.scales = Tensor();
        // Encode against the scales the decoder will see.
        const int8_t* sc = q.scale_codes.data<int8_t>();
        const float* ss = q.scale_scales.data<float>();
        for (size_t i = 0; i < absmax.size(); ++i)
          absmax[i] = qm::dq_block_scale(sc[i], ss[i / qm::kDqBlock], q.scale_offset);
      } else {
        std::memcpy(scales, absmax.data(), absmax.size() * 4);
      }
#pragma omp parallel for if (par(N, K))
      for (int64_t n = 0; n < N; ++n) {
        uint8_t* row = codes + n * rb;
        for (int64_t k = 0; k < Kp; ++k)
          qm::set_q4(row, k,
                     k < K ? qm::quantize_nf4(W[n * K + k], absmax[size_t(n * groups + k / G)])
                           : qm::kNF4Zero);
      }
      break;
    }
    case QScheme::Binary:
#pragma omp parallel for if (par(N, K))
      for (int64_t n = 0; n < N; ++n) {
        const float* w = W + n * K;
        uint8_t* row = codes + n * rb;
        double acc = 0;
        for (int64_t k = 0; k < K; ++k) acc += std::fabs(double(w[k]));
        scales[n] = float(acc / double(K));
        std::memset(row, 0, size_t(rb));
        // sign(w) with sign(±0) = +1: w >= 0 holds for -0.0 too.
        for (int64_t k = 0; k < K; ++k) qm::set_q1(row, k, w[k] >= 0.f);
      }
      break;
    case QScheme::Ternary:
#pragma omp parallel for if (par(N, K))
      for (int64_t n = 0; n < N; ++n) {
        const float* w = W + n * K;
        uint8_t* row = codes + n * rb;
        float gamma = scales[0];
        if (!q.per_tensor) {
          double acc = 0;
          for (int64_t k = 0; k < K; ++k) acc += std::fabs(double(w[k]));
          gamma = scales[n] = std::max(float(acc / double(K)), qm::kTernaryMinScale);
        }
        for (int64_t k = 0; k < Kp; ++k)
          qm::set_q2(row, k, k < K ? qm::quantize_ternary(w[k], gamma) + 1 : 1);
      }
      break;
  }
  return q;
}

}  // namespace

Linear quantize_linear(const Linear& dense, const QuantSpec& spec) {
  const Dense* d = std::get_if<Dense>(&dense.repr);
  MINFER_CHECK(d != nullptr,
               "quantize '{}': expected a Dense linear (quantize from the float weights)",
               dense.name);
  MINFER_CHECK(dense.in > 0 && dense.out > 0, "quantize '{}': empty weight [{}, {}]", dense.name,
               dense.out, dense.in);
  Tensor w = dense_to_f32(dense);
  const float* W = w.data<float>();
  const int64_t N = dense.out, K = dense.in;
  for (int64_t i = 0; i < N * K; ++i)
    MINFER_CHECK(std::isfinite(W[i]),
                 "quantize '{}': weight [{}, {}] is {}, expected a finite value", dense.name, i / K,
                 i % K, W[i]);
  if (spec.method == "f32" || spec.method == "fp16" || spec.method == "bf16") {
    MINFER_CHECK(spec.group == 0 && !spec.asymmetric && !spec.double_quant,
                 "quantize '{}': {} takes no group / asymmetric / double_quant option", dense.name,
                 spec.method);
    if (spec.method == "f32") return with_repr(dense, Dense{w, false});
    // Range-checked: a weight f16 cannot hold is an error naming it, never an inf.
    return with_repr(
        dense,
        Dense{cast_to(w, spec.method == "fp16" ? DType::F16 : DType::BF16, dense.name), false});
  }
  return with_repr(dense, quantize_matrix(W, N, K, spec, dense.name));
}

namespace {

// Int8 absmax per output row, the weight of both activation-quantized representations.
Quantized int8_per_row(const Linear& dense) {
  QuantSpec spec;
  spec.method = "int8";
  return std::get<Quantized>(quantize_linear(dense, spec).repr);
}

}  // namespace

Linear quantize_llm_int8(const Linear& dense, float threshold,
                         const std::vector<float>* act_absmax) {
  MINFER_CHECK(std::isfinite(threshold) && threshold > 0.f,
               "quantize llm-int8 '{}': threshold must be finite and > 0, found {}", dense.name,
               threshold);
  Int8WithOutliers r;
  r.w = int8_per_row(dense);  // checks the Dense input and rejects non-finite weights
  r.threshold = threshold;
  std::vector<int32_t> cols;
  if (act_absmax) {
    MINFER_CHECK(int64_t(act_absmax->size()) == dense.in,
                 "quantize llm-int8 '{}': act_absmax has {} values, expected in = {}", dense.name,
                 act_absmax->size(), dense.in);
    for (int64_t k = 0; k < dense.in; ++k)
      if ((*act_absmax)[size_t(k)] >= threshold) cols.push_back(int32_t(k));
  }
  const int64_t n = int64_t(cols.size()), N = dense.out, K = dense.in;
  r.outlier_cols = Tensor::empty(DType::I32, {n});
  r.outlier_w = Tensor::empty(DType::F16, {N, n});
  if (n > 0) {
    std::memcpy(r.outlier_cols.data<int32_t>(), cols.data(), size_t(n) * 4);
    const Tensor w = dense_to_f32(dense);
    const float* W = w.data<float>();
    uint16_t* ow = r.outlier_w.data<uint16_t>();
    for (int64_t o = 0; o < N; ++o)
      for (int64_t j = 0; j < n; ++j) {
        const float v = W[o * K + cols[size_t(j)]];
        ow[o * n + j] = f32_to_f16(v);
        MINFER_CHECK(first_nonfinite_f16(ow + o * n + j, 1) == 1,
                     "quantize llm-int8 '{}': outlier weight [{}, {}] = {} is outside the float16 "
                     "range (|x| <= 65504): it would become inf. Keep this linear in bf16 or f32 "
                     "(--keep)",
                     dense.name, o, cols[size_t(j)], v);
      }
  }
  return with_repr(dense, std::move(r));
}

Linear quantize_w8a8(const Linear& dense, ActScale mode, float act_scale) {
  W8A8 r;
  r.act = mode;
  if (mode == ActScale::Static)
    MINFER_CHECK(std::isfinite(act_scale) && act_scale > 0.f,
                 "quantize w8a8 '{}': static activation scale must be finite and > 0, found {}",
                 dense.name, act_scale);
  r.act_scale = mode == ActScale::Static ? act_scale : 0.f;
  r.w = int8_per_row(dense);
  return with_repr(dense, std::move(r));
}

Distortion measure(const Linear& ref, const Linear& q) {
  MINFER_CHECK(ref.in == q.in && ref.out == q.out, "measure: '{}' is [{}, {}] but '{}' is [{}, {}]",
               ref.name, ref.out, ref.in, q.name, q.out, q.in);
  const Tensor a = dequantize_weight(ref), b = dequantize_weight(q);
  const float* A = a.data<float>();
  const float* B = b.data<float>();
  const int64_t n = a.numel();
  double se = 0, ref2 = 0, mx = 0;
  for (int64_t i = 0; i < n; ++i) {
    const double d = double(A[i]) - double(B[i]);
    se += d * d;
    ref2 += double(A[i]) * double(A[i]);
    mx = std::max(mx, std::fabs(d));
  }
  Distortion r;
  r.mse = se / double(n);
  r.max_abs = mx;
  r.rel_fro = ref2 > 0 ? std::sqrt(se / ref2) : (se > 0 ? INFINITY : 0.0);
  return r;
}

void use_f16_scales(Quantized& q, const std::string& name) {
  MINFER_CHECK(
      q.scales.defined() && !q.scale_codes.defined() && !q.per_tensor,
      "tensor '{}': fp16 scales (-f16s) need one f32 scale per group (not double-quantized "
      "or per-tensor scales)",
      name);
  Tensor s = Tensor::empty(DType::F32, q.scales.shape(), q.scales.ndim());
  const float* src = q.scales.data<float>();
  float* dst = s.data<float>();
  for (int64_t i = 0; i < s.numel(); ++i) {
    MINFER_CHECK(std::fabs(src[i]) <= 65504.f,
                 "tensor '{}': scale {} of group {} is beyond fp16's range (65504); drop -f16s",
                 name, src[i], i);
    dst[i] = f16_to_f32(f32_to_f16(src[i]));
  }
  q.scales = s;
  q.f16_scales = true;
}

}  // namespace minfer
