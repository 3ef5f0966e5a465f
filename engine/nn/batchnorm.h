// Batch normalisation over the channel axis of [N, C, H, W] (BatchNorm2d) or [N, C] (BatchNorm1d).
// Training mode normalises with batch statistics and updates the running ones PyTorch's way:
// running = (1 - momentum) * running + momentum * batch (unbiased variance). momentum = 0.1 here is
// TensorFlow's decay 0.9. Evaluation mode uses the running statistics. In data-parallel training
// the statistics are each rank's own unless set_sync() makes them the global batch's
// (engine/dist/sync_batchnorm.h).
#pragma once

#include <memory>

#include "engine/nn/module.h"
#include "kernels/op_shapes.h"

namespace ttq {

class Communicator;

class BatchNorm : public Module {
 public:
  // spatial_dims: 2 for BatchNorm2d, 0 for BatchNorm1d.
  BatchNorm(int64_t channels, int spatial_dims, float eps = 1e-5f, float momentum = 0.1f);
  int64_t channels() const { return c_; }
  float eps() const { return eps_; }
  float momentum() const { return momentum_; }
  Parameter& weight() { return gamma_; }
  Parameter& bias() { return beta_; }
  Tensor& running_mean() { return running_mean_; }
  Tensor& running_var() { return running_var_; }
  // Training-mode statistics over all ranks of comm (synchronised batch norm, CPU or GPU tensors,
  // any backend); null: this rank's batch only.
  void set_sync(std::shared_ptr<Communicator> comm) { sync_ = std::move(comm); }

 protected:
  void check_input(const Tensor& x) const override;
  Tensor forward_impl(const Tensor& x) override;
  Tensor backward_impl(const Tensor& dy) override;

 private:
  BatchNormShape shape_of(const Tensor& x) const;

  int64_t c_;
  int spatial_dims_;
  float eps_, momentum_;
  Parameter gamma_, beta_;
  Tensor running_mean_, running_var_;
  Tensor x_, mean_, var_, inv_std_;
  bool forward_was_training_ = true;
  std::shared_ptr<Communicator> sync_;
  int64_t sync_count_ = 0;  // global values per channel in the last synchronised forward
};

std::shared_ptr<BatchNorm> make_batchnorm2d(int64_t channels, float eps = 1e-5f, float momentum = 0.1f);
std::shared_ptr<BatchNorm> make_batchnorm1d(int64_t channels, float eps = 1e-5f, float momentum = 0.1f);

}  // namespace ttq
