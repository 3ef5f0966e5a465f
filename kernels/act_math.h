// The per-element rules of ReLU, max pooling and top-k ranking, shared by the CPU code
// (kernels/cpu/ops_ref, kernels/ops.cpp), the CUDA kernels and the GPU pooling helpers
// (kernels/cuda/pool_walk.h). NaN passes, as in PyTorch, so a diverged activation reaches the
// loss instead of becoming a finite number.
#pragma once

#include "kernels/host_device.h"

namespace ttq::math {

// ReLU keeps v (forward), and passes the gradient where its output is v (backward), when v > 0 or
// v is NaN: !(v <= 0), one comparison (no branch, so the CPU loops vectorise).
TTQ_HD bool relu_passes(float v) { return !(v <= 0.0f); }

// Walking a max-pooling window in order, v replaces the running maximum m when it is larger or
// NaN: the window gives its first maximum, or its last NaN (PyTorch's rule), and the gradient
// goes to that element.
TTQ_HD bool max_pool_takes(float v, float m) { return v > m || v != v; }

// Top-k counting: whether class j with logit v ranks before the label (class `label`, logit t).
// Larger first, ties to the lower index; NaN ranks above every number, as in PyTorch's topk and
// sort, and NaNs among themselves by index.
TTQ_HD bool ranks_before(float v, long long j, float t, long long label) {
  const bool v_nan = v != v, t_nan = t != t;
  if (v_nan != t_nan) return v_nan;
  return v > t || ((v == t || v_nan) && j < label);
}

}  // namespace ttq::math
