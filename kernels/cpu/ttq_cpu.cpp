#include "kernels/cpu/ttq_cpu.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "engine/core/error.h"

namespace ttq::cpu {

ThresholdResult ttq_threshold(math::ThresholdMode mode, const float* w, int64_t n, float t, double r) {
  ThresholdResult out;
  if (n == 0) return out;
  switch (mode) {
    case math::ThresholdMode::Max: {
      float m = 0.0f;
      for (int64_t i = 0; i < n; ++i) m = std::max(m, std::fabs(w[i]));
      out.threshold = math::threshold_from_max(m, t);
      break;
    }
    case math::ThresholdMode::Sparsity: {
      const int64_t k = math::sparsity_rank(r, n);
      if (k < 0) break;  // D = 0
      std::vector<float> a(static_cast<size_t>(n));
      for (int64_t i = 0; i < n; ++i) a[i] = std::fabs(w[i]);
      std::nth_element(a.begin(), a.begin() + k, a.end());
      out.threshold = a[k];
      break;
    }
    case math::ThresholdMode::Twn: {
      double sum = 0.0;
      for (int64_t i = 0; i < n; ++i) sum += std::fabs(w[i]);
      out.threshold = math::twn_threshold(static_cast<float>(sum / n));
      double above = 0.0;
      int64_t count = 0;
      for (int64_t i = 0; i < n; ++i) {
        if (std::fabs(w[i]) > out.threshold) {
          above += std::fabs(w[i]);
          ++count;
        }
      }
      out.twn_scale = count ? static_cast<float>(above / count) : 0.0f;
      break;
    }
    default:
      TTQ_FAIL("unknown threshold mode " << static_cast<int>(mode));
  }
  return out;
}

TernarizeCounts ttq_ternarize(const float* w, int64_t n, float d, float wp, float wn, float* w_t,
                              int8_t* codes) {
  TernarizeCounts c;
  for (int64_t i = 0; i < n; ++i) {
    const int8_t code = math::ternary_code(w[i], d);
    codes[i] = code;
    w_t[i] = math::ternary_value(code, wp, wn);
    c.positive += code > 0;
    c.negative += code < 0;
  }
  return c;
}

ScaleGrads ttq_backward(const int8_t* codes, const float* g, int64_t n, float wp, float wn,
                        bool scale_latent, float* latent_grad) {
  ScaleGrads s;
  for (int64_t i = 0; i < n; ++i) {
    const int8_t code = codes[i];
    s.wp += math::wp_grad_term(code, g[i]);
    s.wn += math::wn_grad_term(code, g[i]);
    latent_grad[i] += (scale_latent ? math::latent_grad_scale(code, wp, wn) : 1.0f) * g[i];
  }
  return s;
}

SetMeans ttq_set_means(const float* w, int64_t n, float d) {
  double sp = 0.0, sn = 0.0;
  int64_t cp = 0, cn = 0;
  for (int64_t i = 0; i < n; ++i) {
    const int8_t code = math::ternary_code(w[i], d);
    if (code > 0) { sp += w[i]; ++cp; }
    if (code < 0) { sn -= w[i]; ++cn; }
  }
  return {cp ? static_cast<float>(sp / cp) : 0.0f, cn ? static_cast<float>(sn / cn) : 0.0f};
}

}  // namespace ttq::cpu
