#include "engine/nn/quantizable.h"

#include "kernels/ops.h"

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

void QuantizableLayer::set_defer_ternary_backward(bool on) {
  TTQ_CHECK(!on || quant_, who() << ": only a ternary layer can defer its ternary backward");
  defer_ = on;
}

Tensor& QuantizableLayer::ternary_weight_grad() {
  TTQ_CHECK(quant_, who() << ": has no ternary weight gradient, it is full precision");
  const Tensor& w = weight_.value;
  if (!ternary_grad_.defined() || ternary_grad_.shape() != w.shape() || ternary_grad_.device() != w.device())
    ternary_grad_ = Tensor::zeros(w.shape(), DType::F32, w.device());
  return ternary_grad_;
}

const Tensor& QuantizableLayer::effective_weight(DType dtype) {
  const Tensor* w = &weight_.value;
  if (quant_ && prepared_) {
    prepared_ = false;
    w = &quant_->quantized();
  } else if (quant_) {
    w = &quant_->forward(weight_.value);
  }
  if (w->dtype() != dtype) {
    if (!w_cast_.defined() || w_cast_.shape() != w->shape() || w_cast_.device() != w->device() ||
        w_cast_.dtype() != dtype)
      w_cast_ = Tensor::empty(w->shape(), dtype, w->device());
    ops::cast(*w, w_cast_);
    w = &w_cast_;
  }
  compute_dtype_ = dtype;
  forward_w_ = w;
  return *w;
}

const Tensor& QuantizableLayer::forward_weight() const {
  TTQ_CHECK(forward_w_, who() << ": backward before any forward");
  return *forward_w_;
}

Tensor& QuantizableLayer::weight_grad_scratch() {
  // First backward of an f32 pass step: the convolution writes dL/dw_t straight into its place.
  if (defer_ && ternary_grad_empty_ && compute_dtype_ == DType::F32) return ternary_weight_grad();
  const Tensor& w = weight_.value;
  if (!dw_scratch_.defined() || dw_scratch_.shape() != w.shape() || dw_scratch_.device() != w.device() ||
      dw_scratch_.dtype() != compute_dtype_)
    dw_scratch_ = Tensor::empty(w.shape(), compute_dtype_, w.device());
  return dw_scratch_;
}

Tensor& QuantizableLayer::bias_grad_scratch() {
  TTQ_CHECK(has_bias_, who() << ": has no bias");
  if (!db_scratch_.defined() || db_scratch_.device() != bias_.value.device())
    db_scratch_ = Tensor::empty(bias_.value.shape(), DType::F32, bias_.value.device());
  return db_scratch_;
}

void QuantizableLayer::accumulate_grads() {
  if (quant_ && defer_) {
    if (ternary_grad_empty_) {
      // f32: written in place by weight_grad_scratch()'s caller; bf16: widened into place.
      if (compute_dtype_ != DType::F32) ops::cast(dw_scratch_, ternary_weight_grad());
      ternary_grad_empty_ = false;
    } else {
      ops::add_accumulate(ternary_weight_grad(), dw_scratch_);
    }
  } else if (quant_) {
    quant_->backward(ops::cast_to(dw_scratch_, DType::F32), weight_.grad);
  } else {
    ops::add_accumulate(weight_.grad, dw_scratch_);
  }
  if (has_bias_) ops::add_accumulate(bias_.grad, db_scratch_);
}

}  // namespace ttq
