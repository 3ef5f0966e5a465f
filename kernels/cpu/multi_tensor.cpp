#include "kernels/multi_tensor.h"

#include "engine/core/error.h"

namespace ttq {

std::vector<MultiTensorLaunch> plan_multi_tensor(const std::vector<int64_t>& sizes, const MultiTensorLimits& limits) {
  TTQ_CHECK(limits.max_tensors > 0 && limits.max_blocks > 0 && limits.chunk > 0,
            "multi-tensor plan: limits must be positive");
  std::vector<MultiTensorLaunch> launches;
  MultiTensorLaunch cur;
  auto flush = [&] {
    if (!cur.block_slot.empty()) launches.push_back(std::move(cur));
    cur = MultiTensorLaunch{};
  };
  for (size_t t = 0; t < sizes.size(); ++t) {
    TTQ_CHECK(sizes[t] >= 0, "multi-tensor plan: tensor " << t << " has negative size " << sizes[t]);
    const int64_t chunks = (sizes[t] + limits.chunk - 1) / limits.chunk;
    for (int64_t c = 0; c < chunks; ++c) {
      // A new slot when this tensor has none in the current launch yet.
      if (cur.tensors.empty() || cur.tensors.back() != static_cast<int>(t)) {
        if (static_cast<int>(cur.tensors.size()) == limits.max_tensors) flush();
        cur.tensors.push_back(static_cast<int>(t));
      }
      cur.block_slot.push_back(static_cast<int>(cur.tensors.size()) - 1);
      cur.block_chunk.push_back(c);
      if (static_cast<int>(cur.block_slot.size()) == limits.max_blocks) flush();
    }
  }
  flush();
  return launches;
}

}  // namespace ttq
