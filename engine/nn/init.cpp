#include "engine/nn/init.h"

#include <cmath>

namespace ttq {

void init_normal(Tensor& t, double std, Rng& rng) {
  float* p = t.data<float>();
  for (int64_t i = 0, n = t.numel(); i < n; ++i) p[i] = static_cast<float>(std * rng.normal());
}

void init_uniform(Tensor& t, double lo, double hi, Rng& rng) {
  float* p = t.data<float>();
  for (int64_t i = 0, n = t.numel(); i < n; ++i) p[i] = static_cast<float>(rng.uniform(lo, hi));
}

void init_kaiming_normal_fan_out(Tensor& w, Rng& rng) {
  TTQ_CHECK(w.ndim() >= 2, "kaiming init needs a weight with >= 2 dims, got " << w.str());
  int64_t receptive = 1;
  for (int i = 2; i < w.ndim(); ++i) receptive *= w.dim(i);
  init_normal(w, std::sqrt(2.0 / static_cast<double>(w.dim(0) * receptive)), rng);
}

void init_default_fan_in(Tensor& t, int64_t fan_in, Rng& rng) {
  const double bound = fan_in > 0 ? 1.0 / std::sqrt(static_cast<double>(fan_in)) : 0.0;
  init_uniform(t, -bound, bound, rng);
}

}  // namespace ttq
