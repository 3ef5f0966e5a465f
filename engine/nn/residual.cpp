#include "engine/nn/residual.h"

#include "kernels/ops.h"

namespace ttq {

void Residual::set_shortcut(const std::string& name, std::shared_ptr<Module> m) {
  TTQ_CHECK(!shortcut_, who() << ": shortcut already set");
  shortcut_ = register_module(name, std::move(m));
}

Tensor Residual::forward_impl(const Tensor& x) {
  Tensor h = x;
  for (auto& m : body_) h = m->forward(h);
  Tensor s = shortcut_ ? shortcut_->forward(x) : x;
  TTQ_CHECK(h.shape() == s.shape(), who() << ": body output " << shape_str(h.shape())
                                          << " and shortcut output " << shape_str(s.shape()) << " differ");
  Tensor y = Tensor::empty_like(h);
  ops::add(h, s, y);
  if (relu_after_add_) ops::relu_forward(y, y);
  y_ = y;
  return y;
}

Tensor Residual::backward_impl(const Tensor& dy) {
  TTQ_CHECK(dy.shape() == y_.shape(), who() << ": gradient " << shape_str(dy.shape()) << " does not match output "
                                            << shape_str(y_.shape()));
  Tensor g = dy;
  if (relu_after_add_) {
    g = Tensor::empty_like(dy);
    ops::relu_backward(y_, dy, g);
  }
  Tensor gb = g;
  for (auto it = body_.rbegin(); it != body_.rend(); ++it) gb = (*it)->backward(gb);
  Tensor gs = shortcut_ ? shortcut_->backward(g) : g;
  Tensor dx = Tensor::empty_like(gb);
  ops::add(gb, gs, dx);
  y_ = Tensor();
  return dx;
}

ShortcutA::ShortcutA(int64_t in_channels, int64_t out_channels, int64_t stride)
    : Module("ShortcutA"), in_(in_channels), out_(out_channels), stride_(stride) {
  TTQ_CHECK(in_channels > 0 && out_channels >= in_channels && stride > 0,
            "ShortcutA: needs 0 < in_channels <= out_channels and stride > 0 (in " << in_channels << ", out "
                                                                                  << out_channels << ", stride " << stride << ")");
}

void ShortcutA::check_input(const Tensor& x) const {
  TTQ_CHECK(x.ndim() == 4 && x.dim(1) == in_,
            who() << ": expects input [N, " << in_ << ", H, W], got " << shape_str(x.shape()));
}

Tensor ShortcutA::forward_impl(const Tensor& x) {
  in_shape_ = x.shape();
  in_layout_ = x.layout();
  const int64_t oh = (x.dim(2) + stride_ - 1) / stride_, ow = (x.dim(3) + stride_ - 1) / stride_;
  Tensor y = Tensor::empty({x.dim(0), out_, oh, ow}, x.dtype(), x.device(), x.layout());
  ops::shortcut_a_forward(stride_, x, y);
  return y;
}

Tensor ShortcutA::backward_impl(const Tensor& dy) {
  Tensor dx = Tensor::empty(in_shape_, dy.dtype(), dy.device(), in_layout_);
  ops::shortcut_a_backward(stride_, dy, dx);
  return dx;
}

}  // namespace ttq
