#include "engine/nn/activation.h"

#include "kernels/ops.h"

namespace ttq {

Tensor ReLU::forward_impl(const Tensor& x) {
  Tensor y = Tensor::empty_like(x);
  ops::relu_forward(x, y);
  y_ = y;
  return y;
}

Tensor ReLU::backward_impl(const Tensor& dy) {
  TTQ_CHECK(dy.shape() == y_.shape(), who() << ": gradient " << shape_str(dy.shape()) << " does not match output "
                                            << shape_str(y_.shape()));
  Tensor dx = Tensor::empty_like(dy);
  ops::relu_backward(y_, dy, dx);
  y_ = Tensor();
  return dx;
}

void Flatten::check_input(const Tensor& x) const {
  TTQ_CHECK(x.ndim() >= 2, who() << ": expects at least 2 dims, got " << shape_str(x.shape()));
}

// A channels-last input is flattened in [N, C, H, W] order, as PyTorch's flatten: it is
// permuted to contiguous first (and the gradient back).
Tensor Flatten::forward_impl(const Tensor& x) {
  in_shape_ = x.shape();
  in_layout_ = x.layout();
  return ops::to_layout(x, Layout::Contiguous).view({x.dim(0), x.numel() / (x.dim(0) ? x.dim(0) : 1)});
}

Tensor Flatten::backward_impl(const Tensor& dy) { return ops::to_layout(dy.view(in_shape_), in_layout_); }

}  // namespace ttq
