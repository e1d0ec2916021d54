// Fake quantization with the straight-through estimator and LSQ (qat.h).
#include "train/qat.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "engine/error.h"
#include "kernels/common/quant_math.h"

namespace minfer::train {

QatSpec parse_qat(const std::string& s) {
  QatSpec q;
  std::string base = s;
  const size_t dash = s.find("-g");
  if (dash != std::string::npos) {
    base = s.substr(0, dash);
    const std::string g = s.substr(dash + 2);
    size_t used = 0;
    try {
      q.group = std::stoll(g, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    MINFER_CHECK(used == g.size() && !g.empty() && q.group > 0,
                 "--qat '{}': '{}' is not a group size (expected e.g. int4-g64)", s, g);
  }
  if (base == "int8")
    q.scheme = QScheme::Int8;
  else if (base == "int4")
    q.scheme = QScheme::Int4;
  else if (base == "ternary")
    q.scheme = QScheme::Ternary;
  else
    MINFER_FAIL(
        "--qat '{}': not a QAT format (expected int8, int8-gG, int4, int4-gG or ternary; nf4 and "
        "binary have no QAT here)",
        s);
  MINFER_CHECK(q.scheme != QScheme::Ternary || q.group == 0,
               "--qat '{}': ternary has one absmean scale per matrix, no group option", s);
  if (q.scheme == QScheme::Int4 && q.group == 0) q.group = 128;
  MINFER_CHECK(q.group % 32 == 0, "--qat '{}': the group must be a multiple of 32, found {}", s,
               q.group);
  return q;
}

std::string qat_name(const QatSpec& q) {
  std::string n = qscheme_name(q.scheme);
  if (q.group > 0) n += "-g" + std::to_string(q.group);
  return q.lsq ? n + "+lsq" : n;
}

QatLayout qat_layout(const QatSpec& q, int64_t O, int64_t I, const std::string& name) {
  MINFER_CHECK(O > 0 && I > 0, "qat '{}': empty matrix [{}, {}]", name, O, I);
  MINFER_CHECK(q.group >= 0 && q.group % 32 == 0,
               "qat '{}': group {} is not a multiple of 32 (the int8/int4 formats' rule)", name,
               q.group);
  QatLayout l;
  switch (q.scheme) {
    case QScheme::Ternary:
      l.per_tensor = true, l.qmax = 1, l.group = O * I;
      return l;
    case QScheme::Int8:
    case QScheme::Int4:
      l.qmax = q.scheme == QScheme::Int8 ? 127 : 7;
      l.group = q.group == 0 || q.group >= I ? I : q.group;
      l.rows = O;
      l.groups = (I + l.group - 1) / l.group;
      return l;
    case QScheme::NF4:
    case QScheme::Binary:
    case QScheme::Int3:
      break;
  }
  MINFER_FAIL("qat '{}': {} is not a QAT scheme (int8, int4, ternary)", name,
              qscheme_name(q.scheme));
}

void qat_init_scales(float* s, const float* W, int64_t O, int64_t I, const QatLayout& lay) {
  if (lay.per_tensor) {
    double acc = 0;
    for (int64_t i = 0; i < O * I; ++i) acc += std::fabs(double(W[i]));
    s[0] = std::max(float(acc / double(O * I)), qm::kTernaryMinScale);
    return;
  }
  for (int64_t o = 0; o < O; ++o)
    for (int64_t g = 0; g < lay.groups; ++g) {
      float amax = 0;
      for (int64_t k = g * lay.group; k < std::min(I, (g + 1) * lay.group); ++k)
        amax = std::max(amax, std::fabs(W[o * I + k]));
      s[o * lay.groups + g] = amax / float(lay.qmax);
    }
}

namespace {
inline float floor_scale(float s) {
  return s > kQatMinScale ? s : kQatMinScale;
}
}  // namespace

void qat_fake_quant(float* Wq, const float* W, const float* s, int64_t O, int64_t I,
                    const QatLayout& lay) {
#pragma omp parallel for if (O * I >= (1 << 16))
  for (int64_t o = 0; o < O; ++o)
    for (int64_t k = 0; k < I; ++k) {
      const float sc = floor_scale(s[lay.at(o, k)]);
      Wq[o * I + k] = qm::dequant_uz(qm::quantize_sym(W[o * I + k], sc, lay.qmax), 0, sc);
    }
}

void qat_fake_quant_backward(float* dW, float* ds, const float* dWq, const float* W, const float* s,
                             int64_t O, int64_t I, const QatLayout& lay) {
  const double qp = lay.qmax;
#pragma omp parallel for if (O * I >= (1 << 16))
  for (int64_t o = 0; o < O; ++o)
    for (int64_t k = 0; k < I; ++k) {
      const double v = double(W[o * I + k]) / double(floor_scale(s[lay.at(o, k)]));
      if (v >= -qp && v <= qp) dW[o * I + k] += dWq[o * I + k];
    }
  if (!ds) return;
  // LSQ: per scale, a reduction kept sequential so results are run-to-run identical.
  const double g = 1.0 / std::sqrt(double(lay.shared(O, I)) * qp);
  std::vector<double> acc(size_t(lay.count()), 0.0);
  for (int64_t o = 0; o < O; ++o)
    for (int64_t k = 0; k < I; ++k) {
      const int64_t j = lay.at(o, k);
      const double v = double(W[o * I + k]) / double(floor_scale(s[j]));
      const double dq = v <= -qp ? -qp : v >= qp ? qp : std::nearbyint(v) - v;
      acc[size_t(j)] += double(dWq[o * I + k]) * dq;
    }
  for (int64_t j = 0; j < lay.count(); ++j) ds[j] += float(g * acc[size_t(j)]);
}

Linear qat_export(const std::string& name, const float* W, const float* s, int64_t O, int64_t I,
                  const QatSpec& q) {
  const QatLayout lay = qat_layout(q, O, I, name);
  Quantized r;
  r.scheme = q.scheme;
  r.per_tensor = lay.per_tensor;
  r.group = lay.per_tensor ? I : lay.group;
  const int bits = qscheme_bits(q.scheme);
  const int64_t rb = qm::row_bytes(I, bits), Kp = qm::padded_k(I);
  r.codes = Tensor::empty(DType::U8, {O, rb});
  r.scales = lay.per_tensor ? Tensor::empty(DType::F32, {1})
                            : Tensor::empty(DType::F32, {lay.rows, lay.groups});
  float* sc = r.scales.data<float>();
  for (int64_t j = 0; j < lay.count(); ++j) sc[j] = floor_scale(s[j]);
  uint8_t* codes = r.codes.data<uint8_t>();
  for (int64_t o = 0; o < O; ++o) {
    uint8_t* row = codes + o * rb;
    for (int64_t k = 0; k < Kp; ++k) {
      const int c = k < I ? qm::quantize_sym(W[o * I + k], sc[lay.at(o, k)], lay.qmax) : 0;
      switch (q.scheme) {
        case QScheme::Int8:
          row[k] = uint8_t(c + 128);
          break;
        case QScheme::Int4:
          qm::set_q4(row, k, c + 8);
          break;
        case QScheme::Ternary:
          qm::set_q2(row, k, c + 1);
          break;
        case QScheme::NF4:
        case QScheme::Binary:
        case QScheme::Int3:
          MINFER_FAIL("qat export '{}': {} is not a QAT scheme", name, qscheme_name(q.scheme));
      }
    }
  }
  return make_linear(name, I, O, std::move(r));
}

}  // namespace minfer::train
