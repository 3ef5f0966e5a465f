#include "engine/nn/activation.h"

#include "kernels/ops.h"

namespace ttq {

Tensor ReLU::forward_impl(const Tensor& x) {
  Tensor y = Tensor::empty(x.shape(), x.dtype(), x.device());
  ops::relu_forward(x, y);
  y_ = y;
  return y;
}

Tensor ReLU::backward_impl(const Tensor& dy) {
  TTQ_CHECK(dy.shape() == y_.shape(), who() << ": gradient " << shape_str(dy.shape()) << " does not match output "
                                            << shape_str(y_.shape()));
  Tensor dx = Tensor::empty(dy.shape(), dy.dtype(), dy.device());
  ops::relu_backward(y_, dy, dx);
  y_ = Tensor();
  return dx;
}

void Flatten::check_input(const Tensor& x) const {
  TTQ_CHECK(x.ndim() >= 2, who() << ": expects at least 2 dims, got " << shape_str(x.shape()));
}

Tensor Flatten::forward_impl(const Tensor& x) {
  in_shape_ = x.shape();
  return x.view({x.dim(0), x.numel() / (x.dim(0) ? x.dim(0) : 1)});
}

Tensor Flatten::backward_impl(const Tensor& dy) { return dy.view(in_shape_); }

}  // namespace ttq
