#include "engine/nn/conv2d.h"

#include "kernels/ops.h"

namespace ttq {

Conv2d::Conv2d(const Conv2dOptions& o) : QuantizableLayer("Conv2d"), opt_(o) {
  TTQ_CHECK(o.in_channels > 0 && o.out_channels > 0 && o.kernel_h > 0 && o.kernel_w > 0 &&
                o.stride > 0 && o.padding >= 0 && o.groups > 0,
            "Conv2d: invalid options (in " << o.in_channels << ", out " << o.out_channels << ", kernel "
                                           << o.kernel_h << "x" << o.kernel_w << ", stride " << o.stride
                                           << ", padding " << o.padding << ", groups " << o.groups << ")");
  TTQ_CHECK(o.in_channels % o.groups == 0 && o.out_channels % o.groups == 0,
            "Conv2d: groups=" << o.groups << " must divide in_channels=" << o.in_channels
                              << " and out_channels=" << o.out_channels);
  init_weight({o.out_channels, o.in_channels / o.groups, o.kernel_h, o.kernel_w}, o.bias, o.out_channels);
}

Conv2d::Conv2d(int64_t in, int64_t out, int64_t kernel, int64_t stride, int64_t padding,
               int64_t groups, bool bias)
    : Conv2d(Conv2dOptions{in, out, kernel, kernel, stride, padding, false, groups, bias}) {}

Conv2dShape Conv2d::shape_for(const Shape& x) const {
  Conv2dShape s;
  s.n = x[0];
  s.c_in = x[1];
  s.h = x[2];
  s.w = x[3];
  s.c_out = opt_.out_channels;
  s.kh = opt_.kernel_h;
  s.kw = opt_.kernel_w;
  s.stride_h = s.stride_w = opt_.stride;
  s.groups = opt_.groups;
  set_padding(s, opt_.same_padding, opt_.padding);
  return s;
}

void Conv2d::check_input(const Tensor& x) const {
  TTQ_CHECK(x.ndim() == 4 && x.dim(1) == opt_.in_channels,
            who() << ": expects input [N, " << opt_.in_channels << ", H, W], got " << shape_str(x.shape()));
  shape_for(x.shape()).validate(who());
}

Tensor Conv2d::forward_impl(const Tensor& x) {
  s_ = shape_for(x.shape());
  const Tensor& w = effective_weight(x.dtype());
  Tensor y = Tensor::empty({s_.n, s_.c_out, s_.out_h(), s_.out_w()}, x.dtype(), x.device(), x.layout());
  ops::conv2d_forward(s_, x, w, has_bias() ? &bias().value : nullptr, y);
  x_ = x;
  return y;
}

Tensor Conv2d::backward_impl(const Tensor& dy) {
  TTQ_CHECK(dy.shape() == Shape({s_.n, s_.c_out, s_.out_h(), s_.out_w()}),
            who() << ": gradient " << shape_str(dy.shape()) << " does not match the output of the forward pass");
  const Tensor& w = forward_weight();
  Tensor dx = Tensor::empty_like(x_);
  ops::conv2d_backward_data(s_, dy, w, dx);
  ops::conv2d_backward_weights(s_, x_, dy, weight_grad_scratch(), has_bias() ? &bias_grad_scratch() : nullptr);
  accumulate_grads();
  x_ = Tensor();
  return dx;
}

}  // namespace ttq
