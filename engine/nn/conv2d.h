// 2-D convolution, NCHW, OIHW weights, with stride, padding (explicit or TensorFlow "same"),
// groups and an optional bias. The weight may be ternary (see QuantizableLayer).
#pragma once

#include "engine/nn/quantizable.h"
#include "kernels/op_shapes.h"

namespace ttq {

struct Conv2dOptions {
  int64_t in_channels = 1, out_channels = 1;
  int64_t kernel_h = 3, kernel_w = 3;
  int64_t stride = 1;
  int64_t padding = 0;  // symmetric, ignored when same_padding is set
  bool same_padding = false;  // TensorFlow "same": output = ceil(input / stride)
  int64_t groups = 1;
  bool bias = false;
};

class Conv2d : public QuantizableLayer {
 public:
  explicit Conv2d(const Conv2dOptions& o);
  Conv2d(int64_t in, int64_t out, int64_t kernel, int64_t stride, int64_t padding,
         int64_t groups = 1, bool bias = false);
  const Conv2dOptions& options() const { return opt_; }
  // The geometry this layer uses for an input of the given shape.
  Conv2dShape shape_for(const Shape& x) const;

 protected:
  void check_input(const Tensor& x) const override;
  Tensor forward_impl(const Tensor& x) override;
  Tensor backward_impl(const Tensor& dy) override;

 private:
  Conv2dOptions opt_;
  Tensor x_;
  Conv2dShape s_;
};

}  // namespace ttq
