#include "engine/nn/pooling.h"

#include "kernels/ops.h"

namespace ttq {

Pool2d::Pool2d(PoolKind kind, const Pool2dOptions& o)
    : Module(kind == PoolKind::Max ? "MaxPool2d" : "AvgPool2d"), kind_(kind), opt_(o) {
  TTQ_CHECK(o.kernel > 0 && o.stride > 0 && o.padding >= 0 && o.padding < o.kernel,
            type() << ": invalid options (kernel " << o.kernel << ", stride " << o.stride << ", padding "
                   << o.padding << ")");
}

Pool2dShape Pool2d::shape_for(const Shape& x) const {
  Pool2dShape s;
  s.n = x[0];
  s.c = x[1];
  s.h = x[2];
  s.w = x[3];
  s.kh = s.kw = opt_.kernel;
  s.stride_h = s.stride_w = opt_.stride;
  s.count_include_pad = opt_.count_include_pad;
  set_padding(s, opt_.same_padding, opt_.padding);
  return s;
}

void Pool2d::check_input(const Tensor& x) const {
  TTQ_CHECK(x.ndim() == 4, who() << ": expects input [N, C, H, W], got " << shape_str(x.shape()));
  shape_for(x.shape()).validate(who());
}

Tensor Pool2d::forward_impl(const Tensor& x) {
  s_ = shape_for(x.shape());
  Tensor y = Tensor::empty({s_.n, s_.c, s_.out_h(), s_.out_w()}, x.dtype(), x.device(), x.layout());
  ops::pool2d_forward(kind_, s_, x, y);
  x_ = x;
  return y;
}

Tensor Pool2d::backward_impl(const Tensor& dy) {
  TTQ_CHECK(dy.shape() == Shape({s_.n, s_.c, s_.out_h(), s_.out_w()}),
            who() << ": gradient " << shape_str(dy.shape()) << " does not match the output of the forward pass");
  Tensor dx = Tensor::empty_like(x_);
  ops::pool2d_backward(kind_, s_, x_, dy, dx);
  x_ = Tensor();
  return dx;
}

std::shared_ptr<Pool2d> make_maxpool2d(const Pool2dOptions& o) { return std::make_shared<Pool2d>(PoolKind::Max, o); }
std::shared_ptr<Pool2d> make_avgpool2d(const Pool2dOptions& o) { return std::make_shared<Pool2d>(PoolKind::Avg, o); }

void GlobalAvgPool2d::check_input(const Tensor& x) const {
  TTQ_CHECK(x.ndim() == 4, who() << ": expects input [N, C, H, W], got " << shape_str(x.shape()));
}

Tensor GlobalAvgPool2d::forward_impl(const Tensor& x) {
  in_shape_ = x.shape();
  in_layout_ = x.layout();
  Tensor y = Tensor::empty({x.dim(0), x.dim(1)}, x.dtype(), x.device());
  ops::global_avgpool_forward(x, y);
  return y;
}

Tensor GlobalAvgPool2d::backward_impl(const Tensor& dy) {
  TTQ_CHECK(dy.shape() == Shape({in_shape_[0], in_shape_[1]}),
            who() << ": gradient " << shape_str(dy.shape()) << " does not match output [" << in_shape_[0] << ", "
                  << in_shape_[1] << "]");
  Tensor dx = Tensor::empty(in_shape_, dy.dtype(), dy.device(), in_layout_);
  ops::global_avgpool_backward(dy, dx);
  return dx;
}

}  // namespace ttq
