// ReLU, Flatten and Identity: layers without parameters.
#pragma once

#include "engine/nn/module.h"

namespace ttq {

class ReLU : public Module {
 public:
  ReLU() : Module("ReLU") {}

 protected:
  Tensor forward_impl(const Tensor& x) override;
  Tensor backward_impl(const Tensor& dy) override;

 private:
  Tensor y_;
};

// [N, ...] -> [N, prod(...)]
class Flatten : public Module {
 public:
  Flatten() : Module("Flatten") {}

 protected:
  void check_input(const Tensor& x) const override;
  Tensor forward_impl(const Tensor& x) override;
  Tensor backward_impl(const Tensor& dy) override;

 private:
  Shape in_shape_;
  Layout in_layout_ = Layout::Contiguous;
};

class Identity : public Module {
 public:
  Identity() : Module("Identity") {}

 protected:
  Tensor forward_impl(const Tensor& x) override { return x; }
  Tensor backward_impl(const Tensor& dy) override { return dy; }
};

}  // namespace ttq
