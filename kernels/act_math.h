// The per-element rules of ReLU and max pooling, shared by the CPU reference (kernels/cpu/ops_ref),
// the CUDA kernels and the GPU pooling helpers (kernels/cuda/pool_walk.h). NaN passes, as in
// PyTorch, so a diverged activation reaches the loss instead of becoming a finite number.
#pragma once

#include "kernels/host_device.h"

namespace ttq::math {

// ReLU keeps v (forward), and passes the gradient where its output is v (backward), when v > 0 or
// v is NaN.
TTQ_HD bool relu_passes(float v) { return v > 0.0f || v != v; }

// Walking a max-pooling window in order, v replaces the running maximum m when it is larger or
// NaN: the window gives its first maximum, or its last NaN (PyTorch's rule), and the gradient
// goes to that element.
TTQ_HD bool max_pool_takes(float v, float m) { return v > m || v != v; }

}  // namespace ttq::math
