// A batch of images and labels.
#pragma once

#include <cstdint>
#include <vector>

#include "engine/core/tensor.h"

namespace ttq {

struct Batch {
  Tensor images;                // [N, C, H, W] f32
  std::vector<int32_t> labels;  // N values
};

}  // namespace ttq
