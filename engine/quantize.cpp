#include "engine/quantize.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "engine/half.h"
#include "kernels/common/quant_math.h"

namespace minfer {

const char* qscheme_name(QScheme s) {
  switch (s) {
    case QScheme::Int8:
      return "int8";
    case QScheme::Int4:
      return "int4";
    case QScheme::NF4:
      return "nf4";
    case QScheme::Binary:
      return "binary";
    case QScheme::Ternary:
      return "ternary";
  }
  return "?";
}

int qscheme_bits(QScheme s) {
  switch (s) {
    case QScheme::Int8:
      return 8;
    case QScheme::Int4:
    case QScheme::NF4:
      return 4;
    case QScheme::Binary:
      return 1;
    case QScheme::Ternary:
      return 2;
  }
  return 0;
}

namespace {

// f32 [out, in] copy of a Dense weight.
Tensor dense_to_f32(const Linear& l, const Dense& d) {
  MINFER_CHECK(d.w.defined() && d.w.ndim() == 2 && d.w.is_contiguous(),
               "linear '{}': dense weight must be a defined contiguous 2-D tensor", l.name);
  const int64_t rows = d.transposed ? l.in : l.out, cols = d.transposed ? l.out : l.in;
  MINFER_CHECK(d.w.dim(0) == rows && d.w.dim(1) == cols,
               "linear '{}': expected weight shape [{}, {}], found {}", l.name, rows, cols,
               d.w.shape_str());
  MINFER_CHECK(d.w.dtype() == DType::F32 || d.w.dtype() == DType::F16 || d.w.dtype() == DType::BF16,
               "linear '{}': dense weights must be F32, F16 or BF16, found {}", l.name,
               dtype_name(d.w.dtype()));
  Tensor f = d.w.to_f32();
  if (!d.transposed) return f;
  Tensor t = Tensor::empty(DType::F32, {l.out, l.in});
  const float* s = f.data<float>();
  float* o = t.data<float>();
  for (int64_t i = 0; i < l.in; ++i)
    for (int64_t j = 0; j < l.out; ++j) o[j * l.in + i] = s[i * l.out + j];
  return t;
}

// Resolved group size: 0 -> method default, >= K -> K (one scale per row).
int64_t resolve_group(const QuantSpec& spec, int64_t K, const std::string& name) {
  int64_t g = spec.group;
  if (spec.method == "int4" && g == 0) g = 128;
  if (spec.method == "nf4" && g == 0) g = 64;
  MINFER_CHECK(g >= 0, "quantize '{}': group must be >= 0, found {}", name, g);
  if (g == 0 || g >= K) return K;
  const int64_t mult = spec.method == "nf4" ? 64 : 32;
  MINFER_CHECK(g % mult == 0,
               "quantize '{}': {} group must be a multiple of {} (or >= in = {}), found {}", name,
               spec.method, mult, K, g);
  return g;
}

Linear with_repr(const Linear& src, LinearRepr repr) {
  Linear l;
  l.name = src.name;
  l.in = src.in;
  l.out = src.out;
  l.repr = std::move(repr);
  l.bias = src.bias;
  return l;
}

Tensor half_dense(const Tensor& w, DType dt) {
  Tensor h = Tensor::empty(dt, {w.dim(0), w.dim(1)});
  const size_t n = size_t(w.numel());
  if (dt == DType::F16)
    f32_to_f16_n(w.data<float>(), h.data<uint16_t>(), n);
  else
    f32_to_bf16_n(w.data<float>(), h.data<uint16_t>(), n);
  return h;
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
  if (m == "int8")
    q.scheme = QScheme::Int8;
  else if (m == "int4")
    q.scheme = QScheme::Int4;
  else if (m == "nf4")
    q.scheme = QScheme::NF4;
  else if (m == "binary")
    q.scheme = QScheme::Binary;
  else if (m == "ternary")
    q.scheme = QScheme::Ternary;
  else
    MINFER_FAIL(
        "quantize '{}': unknown method '{}' (expected int8, int4, nf4, binary, ternary, f16, bf16 "
        "or f32)",
        name, m);
  MINFER_CHECK(!spec.asymmetric || q.scheme == QScheme::Int4,
               "quantize '{}': asymmetric is only defined for int4, not {}", name, m);
  MINFER_CHECK(!spec.double_quant || q.scheme == QScheme::NF4,
               "quantize '{}': double_quant is only defined for nf4, not {}", name, m);
  MINFER_CHECK(spec.group == 0 || q.scheme == QScheme::Int8 || q.scheme == QScheme::Int4 ||
                   q.scheme == QScheme::NF4,
               "quantize '{}': {} has no group option (found group {})", name, m, spec.group);

  q.group = resolve_group(spec, K, name);
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
  Tensor w = dense_to_f32(dense, *d);
  const float* W = w.data<float>();
  const int64_t N = dense.out, K = dense.in;
  for (int64_t i = 0; i < N * K; ++i)
    MINFER_CHECK(std::isfinite(W[i]),
                 "quantize '{}': weight [{}, {}] is {}, expected a finite value", dense.name, i / K,
                 i % K, W[i]);
  if (spec.method == "f32" || spec.method == "f16" || spec.method == "bf16") {
    MINFER_CHECK(spec.group == 0 && !spec.asymmetric && !spec.double_quant,
                 "quantize '{}': {} takes no group / asymmetric / double_quant option", dense.name,
                 spec.method);
    if (spec.method == "f32") return with_repr(dense, Dense{w, false});
    return with_repr(dense,
                     Dense{half_dense(w, spec.method == "f16" ? DType::F16 : DType::BF16), false});
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

void check_int8_rows(const Quantized& q, int64_t in, int64_t out, const std::string& name,
                     const char* what) {
  MINFER_CHECK(q.scheme == QScheme::Int8 && !q.per_tensor && q.group == in,
               "{} '{}': weight must be int8 with one scale per output row (group = in = {}), "
               "found {}{} group {}",
               what, name, in, qscheme_name(q.scheme), q.per_tensor ? " per tensor" : "", q.group);
  check_quantized(q, in, out, name);
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
    const Tensor w = dense_to_f32(dense, std::get<Dense>(dense.repr));
    const float* W = w.data<float>();
    uint16_t* ow = r.outlier_w.data<uint16_t>();
    for (int64_t o = 0; o < N; ++o)
      for (int64_t j = 0; j < n; ++j) {
        const float v = W[o * K + cols[size_t(j)]];
        MINFER_CHECK(std::fabs(v) <= 65504.f,
                     "quantize llm-int8 '{}': outlier weight [{}, {}] = {} does not fit in f16",
                     dense.name, o, cols[size_t(j)], v);
        ow[o * n + j] = f32_to_f16(v);
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

void check_llm_int8(const Int8WithOutliers& w, int64_t in, int64_t out, const std::string& name) {
  check_int8_rows(w.w, in, out, name, "llm-int8");
  MINFER_CHECK(std::isfinite(w.threshold) && w.threshold > 0.f,
               "llm-int8 '{}': threshold must be finite and > 0, found {}", name, w.threshold);
  const int64_t n = w.outlier_cols.defined() ? w.outlier_cols.numel() : 0;
  MINFER_CHECK(
      !w.outlier_cols.defined() || (w.outlier_cols.dtype() == DType::I32 &&
                                    w.outlier_cols.ndim() == 1 && w.outlier_cols.is_contiguous()),
      "llm-int8 '{}': outlier_cols must be contiguous I32 [n], found {} {}", name,
      dtype_name(w.outlier_cols.dtype()), w.outlier_cols.shape_str());
  if (n > 0) {
    MINFER_CHECK(w.outlier_w.defined() && w.outlier_w.dtype() == DType::F16 &&
                     w.outlier_w.ndim() == 2 && w.outlier_w.dim(0) == out &&
                     w.outlier_w.dim(1) == n && w.outlier_w.is_contiguous(),
                 "llm-int8 '{}': outlier_w must be contiguous F16 [{}, {}], found {} {}", name, out,
                 n, w.outlier_w.defined() ? dtype_name(w.outlier_w.dtype()) : "undefined",
                 w.outlier_w.defined() ? w.outlier_w.shape_str() : "");
    const int32_t* c = w.outlier_cols.data<int32_t>();
    for (int64_t j = 0; j < n; ++j)
      MINFER_CHECK(c[j] >= 0 && c[j] < in && (j == 0 || c[j] > c[j - 1]),
                   "llm-int8 '{}': outlier_cols must be ascending features in [0, {}), found {} "
                   "at position {}",
                   name, in, c[j], j);
  }
}

void check_w8a8(const W8A8& w, int64_t in, int64_t out, const std::string& name) {
  check_int8_rows(w.w, in, out, name, "w8a8");
  MINFER_CHECK(std::isfinite(w.act_scale) && w.act_scale >= 0.f &&
                   (w.act == ActScale::Dynamic || w.act_scale > 0.f),
               "w8a8 '{}': {} activation scale must be finite and {}, found {}", name,
               w.act == ActScale::Static ? "static" : "dynamic",
               w.act == ActScale::Static ? "> 0" : ">= 0", w.act_scale);
}

void check_quantized(const Quantized& q, int64_t in, int64_t out, const std::string& name) {
  MINFER_CHECK(in > 0 && out > 0, "quantized '{}': empty shape [{}, {}]", name, out, in);
  const char* s = qscheme_name(q.scheme);
  MINFER_CHECK(q.group >= 1 && q.group <= in,
               "quantized '{}' ({}): group must be in [1, in = {}], found {}", name, s, in,
               q.group);
  if (q.group < in) {
    const int64_t mult = q.scheme == QScheme::NF4 ? 64 : 32;
    MINFER_CHECK(q.group % mult == 0 && (q.scheme == QScheme::Int8 || q.scheme == QScheme::Int4 ||
                                         q.scheme == QScheme::NF4),
                 "quantized '{}' ({}): group {} < in {} must be a multiple of {} (int8/int4/nf4 "
                 "only)",
                 name, s, q.group, in, mult);
  }
  MINFER_CHECK(!q.per_tensor || q.scheme == QScheme::Int8 || q.scheme == QScheme::Ternary,
               "quantized '{}' ({}): per_tensor is only defined for int8 and ternary", name, s);
  MINFER_CHECK(!q.asymmetric || q.scheme == QScheme::Int4,
               "quantized '{}' ({}): asymmetric is only defined for int4", name, s);
  MINFER_CHECK(q.scheme == QScheme::Int8 || q.scheme == QScheme::Int4 || q.scheme == QScheme::NF4 ||
                   q.group == in,
               "quantized '{}' ({}): expected one scale per row (group = in = {}), found group {}",
               name, s, in, q.group);
  const int64_t rb = qm::row_bytes(in, qscheme_bits(q.scheme));
  const int64_t groups = qm::ceil_div(in, q.group);
  MINFER_CHECK(q.codes.defined() && q.codes.dtype() == DType::U8 && q.codes.ndim() == 2 &&
                   q.codes.dim(0) == out && q.codes.dim(1) == rb && q.codes.is_contiguous(),
               "quantized '{}' ({}): codes must be contiguous U8 [{}, {}], found {} {}", name, s,
               out, rb, q.codes.defined() ? dtype_name(q.codes.dtype()) : "undefined",
               q.codes.defined() ? q.codes.shape_str() : "");
  const bool dq = q.scale_codes.defined();
  if (dq) {
    MINFER_CHECK(q.scheme == QScheme::NF4 && !q.scales.defined(),
                 "quantized '{}' ({}): double-quantized scales are only defined for nf4 and "
                 "replace `scales`",
                 name, s);
    const int64_t n = out * groups;
    MINFER_CHECK(q.scale_codes.dtype() == DType::I8 && q.scale_codes.numel() == n &&
                     q.scale_codes.is_contiguous(),
                 "quantized '{}': scale_codes must be I8 with {} values, found {} {}", name, n,
                 dtype_name(q.scale_codes.dtype()), q.scale_codes.shape_str());
    MINFER_CHECK(q.scale_scales.defined() && q.scale_scales.dtype() == DType::F32 &&
                     q.scale_scales.numel() == qm::ceil_div(n, qm::kDqBlock) &&
                     q.scale_scales.is_contiguous(),
                 "quantized '{}': scale_scales must be F32 with {} values, found {}", name,
                 qm::ceil_div(n, qm::kDqBlock),
                 q.scale_scales.defined() ? q.scale_scales.shape_str() : "undefined");
  } else {
    const int64_t n = q.per_tensor ? 1 : out * groups;
    MINFER_CHECK(q.scales.defined() && q.scales.dtype() == DType::F32 && q.scales.numel() == n &&
                     q.scales.is_contiguous(),
                 "quantized '{}' ({}): scales must be F32 with {} values ({}), found {} {}", name,
                 s, n, q.per_tensor ? "per tensor" : "[out, groups]",
                 q.scales.defined() ? dtype_name(q.scales.dtype()) : "undefined",
                 q.scales.defined() ? q.scales.shape_str() : "");
  }
  if (q.asymmetric)
    MINFER_CHECK(q.zeros.defined() && q.zeros.dtype() == DType::U8 &&
                     q.zeros.numel() == out * groups && q.zeros.is_contiguous(),
                 "quantized '{}' (int4 asymmetric): zeros must be U8 [{}, {}], found {}", name, out,
                 groups, q.zeros.defined() ? q.zeros.shape_str() : "undefined");
  else
    MINFER_CHECK(!q.zeros.defined(), "quantized '{}' ({}): zeros given for a symmetric format",
                 name, s);
}

namespace {

Tensor dequantize_codes(const Linear& l, const Quantized& q) {
  check_quantized(q, l.in, l.out, l.name);
  const int64_t N = l.out, K = l.in, G = q.group, groups = qm::ceil_div(K, G);
  const int64_t rb = q.codes.dim(1);
  Tensor out = Tensor::empty(DType::F32, {N, K});
  float* W = out.data<float>();
  const uint8_t* codes = q.codes.data<uint8_t>();
  const float* scales = q.scales.defined() ? q.scales.data<float>() : nullptr;
  const uint8_t* zeros = q.zeros.defined() ? q.zeros.data<uint8_t>() : nullptr;
  const int8_t* sc = q.scale_codes.defined() ? q.scale_codes.data<int8_t>() : nullptr;
  const float* ss = sc ? q.scale_scales.data<float>() : nullptr;
#pragma omp parallel for if (par(N, K))
  for (int64_t n = 0; n < N; ++n) {
    const uint8_t* row = codes + n * rb;
    for (int64_t k = 0; k < K; ++k) {
      const int64_t g = k / G, i = n * groups + g;
      const float s = q.per_tensor ? scales[0]
                      : sc         ? qm::dq_block_scale(sc[i], ss[i / qm::kDqBlock], q.scale_offset)
                                   : scales[i];
      float v = 0;
      switch (q.scheme) {
        case QScheme::Int8:
          v = qm::dequant_uz(row[k], 128, s);
          break;
        case QScheme::Int4:
          v = qm::dequant_uz(qm::get_q4(row, k), zeros ? zeros[i] : 8, s);
          break;
        case QScheme::NF4:
          v = s * qm::nf4_value(qm::get_q4(row, k));
          break;
        case QScheme::Binary:
          v = qm::dequant_uz(2 * qm::get_q1(row, k), 1, s);
          break;
        case QScheme::Ternary:
          v = qm::dequant_uz(qm::get_q2(row, k), 1, s);
          break;
      }
      W[n * K + k] = v;
    }
  }
  return out;
}

}  // namespace

Tensor dequantize_weight(const Linear& l) {
  if (const Dense* d = std::get_if<Dense>(&l.repr)) return dense_to_f32(l, *d);
  if (const Quantized* q = std::get_if<Quantized>(&l.repr)) return dequantize_codes(l, *q);
  if (const W8A8* a = std::get_if<W8A8>(&l.repr)) {
    check_w8a8(*a, l.in, l.out, l.name);
    return dequantize_codes(l, a->w);
  }
  const Int8WithOutliers& o = std::get<Int8WithOutliers>(l.repr);
  check_llm_int8(o, l.in, l.out, l.name);
  Tensor w = dequantize_codes(l, o.w);
  const int64_t n = o.outlier_cols.defined() ? o.outlier_cols.numel() : 0;
  const int32_t* cols = n > 0 ? o.outlier_cols.data<int32_t>() : nullptr;
  const uint16_t* ow = n > 0 ? o.outlier_w.data<uint16_t>() : nullptr;
  float* W = w.data<float>();
  for (int64_t r = 0; r < l.out; ++r)
    for (int64_t j = 0; j < n; ++j) W[r * l.in + cols[j]] = f16_to_f32(ow[r * n + j]);
  return w;
}

double bits_per_weight(const Linear& l) {
  return double(l.weight_bytes()) * 8.0 / (double(l.in) * double(l.out));
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

}  // namespace minfer
