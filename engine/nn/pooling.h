// Max and average pooling (explicit or TensorFlow "same" padding) and global average pooling.
#pragma once

#include "engine/nn/module.h"
#include "kernels/op_shapes.h"

namespace ttq {

struct Pool2dOptions {
  int64_t kernel = 2;
  int64_t stride = 2;
  int64_t padding = 0;        // symmetric, ignored when same_padding is set
  bool same_padding = false;  // TensorFlow "same": output = ceil(input / stride)
  bool count_include_pad = true;  // average pooling only
};

class Pool2d : public Module {
 public:
  Pool2d(PoolKind kind, const Pool2dOptions& o);
  Pool2dShape shape_for(const Shape& x) const;

 protected:
  void check_input(const Tensor& x) const override;
  Tensor forward_impl(const Tensor& x) override;
  Tensor backward_impl(const Tensor& dy) override;

 private:
  PoolKind kind_;
  Pool2dOptions opt_;
  Pool2dShape s_;
  Tensor x_;
};

std::shared_ptr<Pool2d> make_maxpool2d(const Pool2dOptions& o);
std::shared_ptr<Pool2d> make_avgpool2d(const Pool2dOptions& o);

// [N, C, H, W] -> [N, C]
class GlobalAvgPool2d : public Module {
 public:
  GlobalAvgPool2d() : Module("GlobalAvgPool2d") {}

 protected:
  void check_input(const Tensor& x) const override;
  Tensor forward_impl(const Tensor& x) override;
  Tensor backward_impl(const Tensor& dy) override;

 private:
  Shape in_shape_;
  Layout in_layout_ = Layout::Contiguous;
};

}  // namespace ttq
