#include "engine/nn/quantizable.h"

namespace ttq {

void QuantizableLayer::init_weight(const Shape& shape, bool bias, int64_t bias_size) {
  weight_.init(shape, ParamKind::Weight);
  register_parameter("weight", &weight_);
  has_bias_ = bias;
  if (bias) {
    bias_.init({bias_size}, ParamKind::Bias);
    register_parameter("bias", &bias_);
  }
}

void QuantizableLayer::enable_ternary(const TernaryConfig& cfg) {
  TTQ_CHECK(!quant_, who() << ": already ternary");
  quant_ = std::make_unique<TernaryQuantizer>(cfg, path());
  quant_->init(weight_.value);
  if (quant_->trainable_scales()) {
    register_parameter("wp", &quant_->wp());
    register_parameter("wn", &quant_->wn());
  }
}

Parameter& QuantizableLayer::wp() {
  TTQ_CHECK(quant_, who() << ": has no Wp, it is full precision");
  return quant_->wp();
}

Parameter& QuantizableLayer::wn() {
  TTQ_CHECK(quant_, who() << ": has no Wn, it is full precision");
  return quant_->wn();
}

const Tensor& QuantizableLayer::effective_weight() {
  return quant_ ? quant_->forward(weight_.value) : weight_.value;
}

Tensor& QuantizableLayer::weight_grad_scratch() {
  if (!dw_scratch_.defined() || dw_scratch_.shape() != weight_.value.shape())
    dw_scratch_ = Tensor::empty(weight_.value.shape());
  return dw_scratch_;
}

Tensor& QuantizableLayer::bias_grad_scratch() {
  TTQ_CHECK(has_bias_, who() << ": has no bias");
  if (!db_scratch_.defined()) db_scratch_ = Tensor::empty(bias_.value.shape());
  return db_scratch_;
}

namespace {
void add_into(Tensor& dst, const Tensor& src) {
  float* d = dst.data<float>();
  const float* s = src.data<float>();
  for (int64_t i = 0, n = dst.numel(); i < n; ++i) d[i] += s[i];
}
}  // namespace

void QuantizableLayer::accumulate_grads() {
  if (quant_)
    quant_->backward(dw_scratch_, weight_.grad);
  else
    add_into(weight_.grad, dw_scratch_);
  if (has_bias_) add_into(bias_.grad, db_scratch_);
}

}  // namespace ttq
