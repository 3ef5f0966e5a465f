// Packing many tensors into few kernel launches (multi-tensor apply): each tensor is cut into
// fixed-size chunks, and each launch carries a table of up to kMaxTensors tensors and up to
// kMaxBlocks (tensor slot, chunk) pairs, one per thread block. The plan is plain C++, so the
// packing logic is tested on the CPU; the CUDA kernels only read it. Sizes are 64-bit.
#pragma once

#include <cstdint>
#include <vector>

namespace ttq {

struct MultiTensorLimits {
  int max_tensors = 48;     // tensor slots per launch (kernel argument space is limited)
  int max_blocks = 320;     // blocks per launch
  int64_t chunk = 1 << 16;  // elements per block
};

struct MultiTensorLaunch {
  std::vector<int> tensors;           // slot -> index into the caller's tensor list
  std::vector<int> block_slot;        // block -> slot
  std::vector<int64_t> block_chunk;   // block -> chunk index within that tensor
};

// Launches that together cover every element of every tensor exactly once, chunks in order.
// Empty tensors are skipped. A tensor may span several launches (its slot is repeated).
std::vector<MultiTensorLaunch> plan_multi_tensor(const std::vector<int64_t>& sizes,
                                                 const MultiTensorLimits& limits = {});

}  // namespace ttq
