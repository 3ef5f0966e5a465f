#include "engine/nn/batchnorm.h"

#include "kernels/cpu/ops.h"

namespace ttq {

BatchNorm::BatchNorm(int64_t channels, int spatial_dims, float eps, float momentum)
    : Module(spatial_dims == 2 ? "BatchNorm2d" : "BatchNorm1d"),
      c_(channels), spatial_dims_(spatial_dims), eps_(eps), momentum_(momentum) {
  TTQ_CHECK(channels > 0, "BatchNorm: channels must be positive, got " << channels);
  TTQ_CHECK(spatial_dims == 0 || spatial_dims == 2, "BatchNorm: spatial_dims must be 0 or 2");
  TTQ_CHECK(eps > 0.0f, "BatchNorm: eps must be positive, got " << eps);
  TTQ_CHECK(momentum >= 0.0f && momentum <= 1.0f, "BatchNorm: momentum must be in [0, 1], got " << momentum);
  gamma_.init({channels}, ParamKind::Norm);
  beta_.init({channels}, ParamKind::Norm);
  gamma_.value.fill(1.0f);
  running_mean_ = Tensor::zeros({channels});
  running_var_ = Tensor::full({channels}, 1.0f);
  register_parameter("weight", &gamma_);
  register_parameter("bias", &beta_);
  register_buffer("running_mean", &running_mean_);
  register_buffer("running_var", &running_var_);
}

BatchNormShape BatchNorm::shape_of(const Tensor& x) const {
  return {x.dim(0), c_, spatial_dims_ == 2 ? x.dim(2) * x.dim(3) : 1};
}

void BatchNorm::check_input(const Tensor& x) const {
  const int want = spatial_dims_ + 2;
  TTQ_CHECK(x.ndim() == want && x.dim(1) == c_,
            who() << ": expects input [N, " << c_ << (spatial_dims_ == 2 ? ", H, W" : "") << "], got "
                  << shape_str(x.shape()));
  if (training()) {
    const auto s = shape_of(x);
    TTQ_CHECK(s.n * s.s > 1, who() << ": training needs more than one value per channel, got input "
                                   << shape_str(x.shape()));
  }
}

Tensor BatchNorm::forward_impl(const Tensor& x) {
  const BatchNormShape s = shape_of(x);
  Tensor y = Tensor::empty(x.shape());
  forward_was_training_ = training();
  if (!training()) {
    cpu::batchnorm_forward_infer(s, x.data<float>(), gamma_.value.data<float>(), beta_.value.data<float>(),
                                 running_mean_.data<float>(), running_var_.data<float>(), eps_, y.data<float>());
    return y;
  }
  if (!mean_.defined()) {
    mean_ = Tensor::empty({c_});
    var_ = Tensor::empty({c_});
    inv_std_ = Tensor::empty({c_});
  }
  cpu::batchnorm_forward_train(s, x.data<float>(), gamma_.value.data<float>(), beta_.value.data<float>(), eps_,
                               y.data<float>(), mean_.data<float>(), var_.data<float>(), inv_std_.data<float>());
  const double m = static_cast<double>(s.n * s.s);
  const float unbias = static_cast<float>(m / (m - 1.0));
  float* rm = running_mean_.data<float>();
  float* rv = running_var_.data<float>();
  for (int64_t c = 0; c < c_; ++c) {
    rm[c] = (1.0f - momentum_) * rm[c] + momentum_ * mean_.data<float>()[c];
    rv[c] = (1.0f - momentum_) * rv[c] + momentum_ * var_.data<float>()[c] * unbias;
  }
  x_ = x;
  return y;
}

Tensor BatchNorm::backward_impl(const Tensor& dy) {
  TTQ_CHECK(forward_was_training_, who() << ": backward after an evaluation-mode forward is not supported");
  TTQ_CHECK(dy.shape() == x_.shape(), who() << ": gradient " << shape_str(dy.shape()) << " does not match input "
                                            << shape_str(x_.shape()));
  const BatchNormShape s = shape_of(x_);
  Tensor dx = Tensor::empty(x_.shape());
  Tensor dgamma = Tensor::empty({c_}), dbeta = Tensor::empty({c_});
  cpu::batchnorm_backward(s, x_.data<float>(), dy.data<float>(), gamma_.value.data<float>(), mean_.data<float>(),
                          inv_std_.data<float>(), dx.data<float>(), dgamma.data<float>(), dbeta.data<float>());
  float* gg = gamma_.grad.data<float>();
  float* gb = beta_.grad.data<float>();
  for (int64_t c = 0; c < c_; ++c) {
    gg[c] += dgamma.data<float>()[c];
    gb[c] += dbeta.data<float>()[c];
  }
  x_ = Tensor();
  return dx;
}

std::shared_ptr<BatchNorm> make_batchnorm2d(int64_t channels, float eps, float momentum) {
  return std::make_shared<BatchNorm>(channels, 2, eps, momentum);
}
std::shared_ptr<BatchNorm> make_batchnorm1d(int64_t channels, float eps, float momentum) {
  return std::make_shared<BatchNorm>(channels, 0, eps, momentum);
}

}  // namespace ttq
