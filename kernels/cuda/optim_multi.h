// SGD and Adam over all parameters in one launch (multi-tensor apply): a table of tensors lives in
// device memory, each thread block updates one (tensor, chunk) of the plan from
// kernels/multi_tensor.h with the per-element math of kernels/optim_math.h, so the result is the
// per-tensor kernels' to the bit. Learning rate and weight decay come per parameter group (up to
// kOptimGroups), as kernel arguments: a schedule changes them every step without an upload.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>
#include <vector>

#include "kernels/cuda/ttq_multi.h"

namespace ttq::cuda {

constexpr int kOptimGroups = 8;

struct OptimGroupValues {
  float lr[kOptimGroups];
  float wd[kOptimGroups];
};

// One parameter: device pointers that must stay valid for the life of the OptimMultiTensor.
struct OptimMultiTensorEntry {
  float* p = nullptr;
  const float* g = nullptr;
  float* s1 = nullptr;  // SGD: momentum buffer (null without momentum); Adam: first moment
  float* s2 = nullptr;  // Adam: second moment
  int64_t n = 0;
  int32_t group = 0;    // index into OptimGroupValues
  int32_t pad_ = 0;
};

class OptimMultiTensor {
 public:
  // Plans and uploads the tables (synchronous: construction only). Throws on invalid entries.
  explicit OptimMultiTensor(std::vector<OptimMultiTensorEntry> tensors);
  ~OptimMultiTensor();
  OptimMultiTensor(const OptimMultiTensor&) = delete;
  OptimMultiTensor& operator=(const OptimMultiTensor&) = delete;

  void sgd(cudaStream_t stream, const OptimGroupValues& groups, float momentum, bool nesterov, bool first_step);
  void adam(cudaStream_t stream, const OptimGroupValues& groups, float beta1, float beta2, float eps, float bc1,
            float bc2);
  int launches() const { return static_cast<int>(pass_.launches.size()); }

 private:
  std::vector<OptimMultiTensorEntry> tensors_;
  MultiTensorLimits limits_;
  detail::MultiPass pass_;
  detail::DeviceBuffer tables_;
  const OptimMultiTensorEntry* tensors_dev_ = nullptr;
};

}  // namespace ttq::cuda
