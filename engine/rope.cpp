#include "engine/rope.h"

#include <algorithm>
#include <cmath>
#include <numbers>

#include "engine/error.h"

namespace minfer {

std::string_view rope_type_name(RopeType t) {
  switch (t) {
    case RopeType::Default:
      return "default";
    case RopeType::Linear:
      return "linear";
    case RopeType::Llama3:
      return "llama3";
    case RopeType::Yarn:
      return "yarn";
  }
  return "?";
}

namespace {

// YaRN's attention factor (transformers get_mscale): 0.1 * m * ln(s) + 1 for s > 1.
double yarn_mscale(double s, double m = 1.0) {
  return s <= 1 ? 1.0 : 0.1 * m * std::log(s) + 1.0;
}

// The dimension whose wavelength makes `rotations` turns over `max_pos` positions
// (transformers find_correction_dim).
double correction_dim(double rotations, double dim, double base, double max_pos) {
  return dim * std::log(max_pos / (rotations * 2 * std::numbers::pi)) / (2 * std::log(base));
}

}  // namespace

RopeTable rope_table(float theta, int64_t head_dim, const RopeScaling& rs,
                     const std::string& origin) {
  MINFER_CHECK(head_dim > 0 && head_dim % 2 == 0, "{}: RoPE needs an even head size, found {}",
               origin, head_dim);
  MINFER_CHECK(std::isfinite(theta) && theta > 1.f, "{}: rope_theta must be > 1, found {}", origin,
               theta);
  const int64_t half = head_dim / 2;
  const float D = float(head_dim);
  RopeTable t;
  t.inv_freq.resize(size_t(half));
  // base ** (arange(0, D, 2) / D) in float32, as LlamaRotaryEmbedding's default init.
  std::vector<float> pos_freq(static_cast<size_t>(half));
  for (int64_t i = 0; i < half; ++i) {
    pos_freq[size_t(i)] = std::pow(theta, float(2 * i) / D);
    t.inv_freq[size_t(i)] = 1.0f / pos_freq[size_t(i)];
  }
  if (rs.type != RopeType::Default)
    MINFER_CHECK(std::isfinite(rs.factor) && rs.factor >= 1.0,
                 "{}: rope scaling '{}' needs factor >= 1, found {}", origin,
                 rope_type_name(rs.type), rs.factor);
  const float s = float(rs.factor);
  switch (rs.type) {
    case RopeType::Default:
      break;
    case RopeType::Linear:
      for (float& f : t.inv_freq) f /= s;
      break;
    case RopeType::Llama3: {
      MINFER_CHECK(rs.original_max_pos > 0 && rs.high_freq_factor > rs.low_freq_factor &&
                       rs.low_freq_factor > 0,
                   "{}: llama3 rope scaling needs original_max_position_embeddings > 0 and "
                   "high_freq_factor > low_freq_factor > 0 (found {}, {}, {})",
                   origin, rs.original_max_pos, rs.high_freq_factor, rs.low_freq_factor);
      const double old_ctx = double(rs.original_max_pos);
      const double low_wl = old_ctx / rs.low_freq_factor, high_wl = old_ctx / rs.high_freq_factor;
      for (float& f : t.inv_freq) {
        const float wavelen = float(2 * std::numbers::pi) / f;
        if (wavelen > low_wl) {
          f /= s;  // long wavelengths: interpolated
        } else if (wavelen >= high_wl) {
          // between the bands: a smooth mix of interpolated and original
          const float smooth = float((old_ctx / wavelen - rs.low_freq_factor) /
                                     (rs.high_freq_factor - rs.low_freq_factor));
          f = (1 - smooth) * f / s + smooth * f;
        }
      }
      break;
    }
    case RopeType::Yarn: {
      MINFER_CHECK(rs.original_max_pos > 0 && rs.beta_fast > 0 && rs.beta_slow > 0,
                   "{}: yarn rope scaling needs original_max_position_embeddings, beta_fast and "
                   "beta_slow > 0 (found {}, {}, {})",
                   origin, rs.original_max_pos, rs.beta_fast, rs.beta_slow);
      double lo =
          correction_dim(rs.beta_fast, double(head_dim), theta, double(rs.original_max_pos));
      double hi =
          correction_dim(rs.beta_slow, double(head_dim), theta, double(rs.original_max_pos));
      if (rs.truncate) lo = std::floor(lo), hi = std::ceil(hi);
      lo = std::max(lo, 0.0);
      hi = std::min(hi, double(head_dim - 1));
      if (lo == hi) hi += 0.001;  // as transformers: no division by zero
      for (int64_t i = 0; i < half; ++i) {
        const float ramp = std::clamp((float(i) - float(lo)) / float(hi - lo), 0.0f, 1.0f);
        const float extrap = 1 - ramp;  // 1: keep the original frequency; 0: interpolate
        const float inv_interp = 1.0f / (s * pos_freq[size_t(i)]);
        t.inv_freq[size_t(i)] = inv_interp * (1 - extrap) + t.inv_freq[size_t(i)] * extrap;
      }
      double af = rs.attention_factor;
      if (af == 0)
        af = rs.mscale != 0 && rs.mscale_all_dim != 0
                 ? yarn_mscale(rs.factor, rs.mscale) / yarn_mscale(rs.factor, rs.mscale_all_dim)
                 : yarn_mscale(rs.factor);
      MINFER_CHECK(std::isfinite(af) && af > 0, "{}: yarn attention factor must be > 0, found {}",
                   origin, af);
      t.attention_scaling = float(af);
      break;
    }
  }
  if (!rs.freq_factors.empty()) {
    MINFER_CHECK(int64_t(rs.freq_factors.size()) == half,
                 "{}: rope frequency factors: {} values for a head size of {} (expected {})",
                 origin, rs.freq_factors.size(), head_dim, half);
    for (int64_t i = 0; i < half; ++i) {
      const float ff = rs.freq_factors[size_t(i)];
      MINFER_CHECK(std::isfinite(ff) && ff > 0, "{}: rope frequency factor {} is {}", origin, i,
                   ff);
      t.inv_freq[size_t(i)] /= ff;
    }
  }
  return t;
}

}  // namespace minfer
