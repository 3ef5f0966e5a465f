// Per-element optimizer updates (PyTorch semantics), shared by the CPU loops and CUDA kernels.
#pragma once

#include <cmath>

#include "kernels/host_device.h"

namespace ttq::math {

// SGD with momentum (dampening 0) and L2 weight decay folded into the gradient:
//   d = g + wd*p;  buf = first ? d : momentum*buf + d;  d = nesterov ? d + momentum*buf : buf;
//   p -= lr * d.  With momentum == 0 no buffer is kept.
TTQ_HD void sgd_update(float& p, float g, float& buf, float lr, float momentum, float wd,
                       bool nesterov, bool first_step) {
  float d = g + wd * p;
  if (momentum != 0.0f) {
    buf = first_step ? d : momentum * buf + d;
    d = nesterov ? d + momentum * buf : buf;
  }
  p -= lr * d;
}

// Adam with L2 weight decay folded into the gradient and bias correction.
// bc1 = 1 - beta1^t, bc2 = 1 - beta2^t for the 1-based step t.
TTQ_HD void adam_update(float& p, float g, float& m, float& v, float lr, float beta1, float beta2,
                        float eps, float wd, float bc1, float bc2) {
  float d = g + wd * p;
  m = beta1 * m + (1.0f - beta1) * d;
  v = beta2 * v + (1.0f - beta2) * d * d;
  float mhat = m / bc1;
  float denom = sqrtf(v / bc2) + eps;
  p -= lr * mhat / denom;
}

}  // namespace ttq::math
