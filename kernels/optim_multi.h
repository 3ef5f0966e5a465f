// SGD / Adam over a whole parameter list at once: the tensor-level face of the multi-tensor
// optimizer kernels. On the GPU every step is one launch for all parameters (kernels/cuda/
// optim_multi.h); on the CPU the per-tensor loops of ops::sgd_update / ops::adam_update run one
// tensor after the other. Learning rate and weight decay are given per parameter group.
#pragma once

#include <array>
#include <memory>
#include <vector>

#include "engine/core/tensor.h"
#include "kernels/storage_watch.h"

namespace ttq::ops {

constexpr int kParamGroups = 8;

struct OptimTensorRefs {
  Tensor* p = nullptr;        // f32 values, updated in place
  const Tensor* g = nullptr;  // gradient, p's size
  Tensor* s1 = nullptr;       // SGD: momentum buffer or null (no momentum); Adam: first moment
  Tensor* s2 = nullptr;       // Adam: second moment
  int group = 0;              // 0 .. kParamGroups-1: which lr / wd applies
};

struct GroupRates {
  std::array<float, kParamGroups> lr{}, wd{};
};

class MultiTensorOptimizer {
 public:
  // Checks sizes and that all tensors share one device.
  explicit MultiTensorOptimizer(std::vector<OptimTensorRefs> tensors);
  ~MultiTensorOptimizer();
  MultiTensorOptimizer(const MultiTensorOptimizer&) = delete;
  MultiTensorOptimizer& operator=(const MultiTensorOptimizer&) = delete;

  void sgd(const GroupRates& rates, float momentum, bool nesterov, bool first_step);
  void adam(const GroupRates& rates, float beta1, float beta2, float eps, float bc1, float bc2);

  Device device() const { return device_; }
  // Kernel launches per step on the GPU (0 on the CPU).
  int launches() const;

 private:
  void refresh();

  std::vector<OptimTensorRefs> tensors_;
  Device device_ = Device::CPU;
  StorageWatch watch_;  // the storage the GPU table was built for
  struct Gpu;
  std::unique_ptr<Gpu> gpu_;
};

}  // namespace ttq::ops
