#include "engine/nn/linear.h"

#include "kernels/ops.h"

namespace ttq {

Linear::Linear(int64_t in_features, int64_t out_features, bool bias)
    : QuantizableLayer("Linear"), in_(in_features), out_(out_features) {
  TTQ_CHECK(in_features > 0 && out_features > 0,
            "Linear: invalid sizes in=" << in_features << " out=" << out_features);
  init_weight({out_features, in_features}, bias, out_features);
}

void Linear::check_input(const Tensor& x) const {
  TTQ_CHECK(x.ndim() == 2 && x.dim(1) == in_,
            who() << ": expects input [N, " << in_ << "], got " << shape_str(x.shape()));
}

Tensor Linear::forward_impl(const Tensor& x) {
  const Tensor& w = effective_weight(x.dtype());
  Tensor y = Tensor::empty({x.dim(0), out_}, x.dtype(), x.device());
  ops::linear_forward(x, w, has_bias() ? &bias().value : nullptr, y);
  x_ = x;
  return y;
}

Tensor Linear::backward_impl(const Tensor& dy) {
  TTQ_CHECK(dy.shape() == Shape({x_.dim(0), out_}),
            who() << ": gradient " << shape_str(dy.shape()) << " does not match output [" << x_.dim(0) << ", " << out_ << "]");
  const Tensor& w = forward_weight();
  Tensor dx = Tensor::empty(x_.shape(), x_.dtype(), x_.device());
  ops::linear_backward(x_, w, dy, &dx, weight_grad_scratch(), has_bias() ? &bias_grad_scratch() : nullptr);
  accumulate_grads();
  x_ = Tensor();
  return dx;
}

}  // namespace ttq
