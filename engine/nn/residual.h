// Residual connections: y = body(x) + shortcut(x), optionally followed by ReLU (post-activation
// ResNets). The body's layers are registered directly on the block, so parameter names read
// "layer1.0.conv1.weight" as in PyTorch; the shortcut is registered under its own name
// (torchvision's option-B projection is "downsample" = Sequential{"0": conv 1x1, "1": BN}).
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "engine/nn/module.h"

namespace ttq {

class Residual : public Module {
 public:
  explicit Residual(bool relu_after_add = false) : Module("Residual"), relu_after_add_(relu_after_add) {}

  // Appends a layer to the body.
  template <typename M> std::shared_ptr<M> add(const std::string& name, std::shared_ptr<M> m) {
    body_.push_back(m);
    return register_module(name, std::move(m));
  }
  // Sets the shortcut; without one the shortcut is the identity.
  void set_shortcut(const std::string& name, std::shared_ptr<Module> m);

 protected:
  Tensor forward_impl(const Tensor& x) override;
  Tensor backward_impl(const Tensor& dy) override;

 private:
  bool relu_after_add_;
  std::vector<std::shared_ptr<Module>> body_;
  std::shared_ptr<Module> shortcut_;
  Tensor y_;  // output after the optional ReLU, for its backward
};

// Shortcut option A (He et al. 2016; the TTQ authors' CIFAR code): average pool with a
// stride x stride window and stride, then zero channels to reach out_channels, with
// (out - in) / 2 zero channels in front. Odd sizes round up (windows clipped at the border).
class ShortcutA : public Module {
 public:
  ShortcutA(int64_t in_channels, int64_t out_channels, int64_t stride);

 protected:
  void check_input(const Tensor& x) const override;
  Tensor forward_impl(const Tensor& x) override;
  Tensor backward_impl(const Tensor& dy) override;

 private:
  int64_t in_, out_, stride_;
  Shape in_shape_;
  Layout in_layout_ = Layout::Contiguous;
};

}  // namespace ttq
