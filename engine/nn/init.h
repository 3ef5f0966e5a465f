// Weight initialisers.
#pragma once

#include "engine/core/rng.h"
#include "engine/core/tensor.h"

namespace ttq {

// N(0, std^2).
void init_normal(Tensor& t, double std, Rng& rng);
// U(lo, hi).
void init_uniform(Tensor& t, double lo, double hi, Rng& rng);
// He init over the fan-out: std = sqrt(2 / (kh * kw * out_channels)), as the TTQ authors' CIFAR
// ResNet does for its 3x3 convs (and torchvision's ResNet, mode="fan_out").
void init_kaiming_normal_fan_out(Tensor& w, Rng& rng);
// PyTorch's default for Linear / Conv: U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
void init_default_fan_in(Tensor& t, int64_t fan_in, Rng& rng);

}  // namespace ttq
