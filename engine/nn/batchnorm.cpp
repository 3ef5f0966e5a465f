#include "engine/nn/batchnorm.h"

#include "engine/dist/communicator.h"
#include "engine/dist/sync_batchnorm.h"
#include "kernels/ops.h"

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
  Tensor y = Tensor::empty_like(x);
  forward_was_training_ = training();
  if (!training()) {
    ops::batchnorm_forward_infer(s, x, gamma_.value, beta_.value, running_mean_, running_var_, eps_, y);
    return y;
  }
  if (!mean_.defined() || mean_.device() != x.device()) {
    mean_ = Tensor::empty({c_}, DType::F32, x.device());
    var_ = Tensor::empty({c_}, DType::F32, x.device());
    inv_std_ = Tensor::empty({c_}, DType::F32, x.device());
  }
  if (sync_ && sync_->world() > 1)
    sync_count_ = sync_batchnorm_forward_train(*sync_, s, x, gamma_.value, beta_.value, eps_, momentum_, running_mean_,
                                               running_var_, y, mean_, var_, inv_std_);
  else
    ops::batchnorm_forward_train(s, x, gamma_.value, beta_.value, eps_, momentum_, running_mean_, running_var_, y,
                                 mean_, var_, inv_std_);
  x_ = x;
  return y;
}

Tensor BatchNorm::backward_impl(const Tensor& dy) {
  TTQ_CHECK(forward_was_training_, who() << ": backward after an evaluation-mode forward is not supported");
  TTQ_CHECK(dy.shape() == x_.shape(), who() << ": gradient " << shape_str(dy.shape()) << " does not match input "
                                            << shape_str(x_.shape()));
  const BatchNormShape s = shape_of(x_);
  Tensor dx = Tensor::empty_like(x_);
  Tensor dgamma = Tensor::empty({c_}, DType::F32, x_.device()), dbeta = Tensor::empty({c_}, DType::F32, x_.device());
  if (sync_ && sync_->world() > 1)
    sync_batchnorm_backward(*sync_, s, sync_count_, x_, dy, gamma_.value, mean_, inv_std_, dx, dgamma, dbeta);
  else
    ops::batchnorm_backward(s, x_, dy, gamma_.value, mean_, inv_std_, eps_, dx, dgamma, dbeta);
  ops::add_accumulate(gamma_.grad, dgamma);
  ops::add_accumulate(beta_.grad, dbeta);
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
