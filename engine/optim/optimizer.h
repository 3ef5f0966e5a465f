// Optimizers (SGD with momentum / Nesterov, Adam), PyTorch semantics, with parameter groups by
// kind so Wp/Wn, biases and BatchNorm can get their own learning-rate multiplier and weight decay.
// The per-element updates are kernels/optim_math.h, shared with the CUDA kernels; on the GPU one
// step updates every parameter in a single multi-tensor launch (kernels/optim_multi.h).
#pragma once

#include <array>
#include <memory>
#include <string>
#include <vector>

#include "engine/nn/module.h"
#include "kernels/optim_multi.h"

namespace ttq {

struct GroupOptions {
  double lr_mult = 1.0;
  bool weight_decay = true;
};

struct OptimizerConfig {
  std::string type = "sgd";  // "sgd" | "adam"
  double lr = 0.1;           // base learning rate (the schedule scales it)
  double weight_decay = 0.0;
  double momentum = 0.9;     // sgd
  bool nesterov = false;     // sgd
  double beta1 = 0.9, beta2 = 0.999, eps = 1e-8;  // adam
  // Indexed by ParamKind: Weight, Bias, Norm, Scale. By default conv/linear weights and the TTQ
  // scales are decayed (as the TTQ authors' CIFAR run does), biases and BatchNorm are not.
  std::array<GroupOptions, 4> groups{GroupOptions{1.0, true}, GroupOptions{1.0, false},
                                     GroupOptions{1.0, false}, GroupOptions{1.0, true}};
  // When not empty: weight decay applies only to the parameters of these layers (paths such as
  // "fc0"; still subject to the groups' weight_decay switch), e.g. the TTQ authors' AlexNet,
  // which decays only its fully connected weights. Unknown layer names are an error.
  std::vector<std::string> weight_decay_layers;

  GroupOptions& group(ParamKind k) { return groups[static_cast<size_t>(k)]; }
  const GroupOptions& group(ParamKind k) const { return groups[static_cast<size_t>(k)]; }
  void validate() const;
};

class Optimizer {
 public:
  Optimizer(std::vector<NamedParameter> params, const OptimizerConfig& cfg);
  virtual ~Optimizer() = default;

  // One update of every trainable parameter with learning rate lr (before group multipliers).
  void step(double lr);
  // Learning rate and weight decay of each parameter group for base learning rate lr: groups
  // 0-3 are the ParamKinds, 4-7 the same kinds excluded from decay by weight_decay_layers.
  ops::GroupRates group_rates(double lr) const;
  void zero_grad();
  int64_t steps() const { return steps_; }
  const OptimizerConfig& config() const { return cfg_; }
  const std::vector<NamedParameter>& params() const { return params_; }
  // Named state tensors ("<param>.momentum_buffer", "<param>.exp_avg", ...) for checkpoints.
  virtual std::vector<NamedBuffer> state() = 0;
  void set_steps(int64_t s) { steps_ = s; }

 protected:
  virtual void apply(const ops::GroupRates& rates) = 0;
  // The parameters with their state tensors (s1, s2) as one multi-tensor update, built on first
  // use (after any checkpoint state has been loaded into the state tensors).
  ops::MultiTensorOptimizer& multi(std::vector<Tensor>* s1, std::vector<Tensor>* s2);

  OptimizerConfig cfg_;
  std::vector<NamedParameter> params_;  // trainable ones only
  std::vector<int> group_;              // per parameter: its group (see group_rates)
  int64_t steps_ = 0;

 private:
  std::unique_ptr<ops::MultiTensorOptimizer> multi_;
};

class Sgd : public Optimizer {
 public:
  Sgd(std::vector<NamedParameter> params, const OptimizerConfig& cfg);
  std::vector<NamedBuffer> state() override;

 protected:
  void apply(const ops::GroupRates& rates) override;

 private:
  std::vector<Tensor> momentum_;
};

class Adam : public Optimizer {
 public:
  Adam(std::vector<NamedParameter> params, const OptimizerConfig& cfg);
  std::vector<NamedBuffer> state() override;

 protected:
  void apply(const ops::GroupRates& rates) override;

 private:
  std::vector<Tensor> m_, v_;
};

std::unique_ptr<Optimizer> make_optimizer(std::vector<NamedParameter> params, const OptimizerConfig& cfg);

}  // namespace ttq
