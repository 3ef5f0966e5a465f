#include "engine/quant/ternary.h"

#include <algorithm>

#include "kernels/cpu/ttq_cpu.h"

namespace ttq {

void TernaryConfig::validate() const {
  TTQ_CHECK(t >= 0.0f && t < 1.0f, "threshold factor t must be in [0, 1), got " << t);
  TTQ_CHECK(r >= 0.0 && r < 1.0, "target sparsity r must be in [0, 1), got " << r);
}

const char* threshold_mode_name(math::ThresholdMode m) {
  switch (m) {
    case math::ThresholdMode::Max: return "max";
    case math::ThresholdMode::Sparsity: return "sparsity";
    case math::ThresholdMode::Twn: return "twn";
  }
  return "?";
}

math::ThresholdMode parse_threshold_mode(const std::string& s) {
  if (s == "max") return math::ThresholdMode::Max;
  if (s == "sparsity") return math::ThresholdMode::Sparsity;
  if (s == "twn") return math::ThresholdMode::Twn;
  TTQ_FAIL("unknown threshold mode '" << s << "' (expected one of: max, sparsity, twn)");
}

TernaryQuantizer::TernaryQuantizer(const TernaryConfig& cfg, std::string layer)
    : cfg_(cfg), layer_(std::move(layer)) {
  cfg_.validate();
  wp_.init({1}, ParamKind::Scale);
  wn_.init({1}, ParamKind::Scale);
  wp_.value.fill(1.0f);
  wn_.value.fill(1.0f);
  wp_.trainable = wn_.trainable = trainable_scales();
}

void TernaryQuantizer::init(const Tensor& latent) {
  if (cfg_.init_scales_from_weights && trainable_scales()) {
    const float d = cpu::ttq_threshold(cfg_.mode, latent.data<float>(), latent.numel(), cfg_.t, cfg_.r).threshold;
    const auto means = cpu::ttq_set_means(latent.data<float>(), latent.numel(), d);
    wp_.value.data<float>()[0] = means.positive > 0.0f ? means.positive : 1.0f;
    wn_.value.data<float>()[0] = means.negative > 0.0f ? means.negative : 1.0f;
  }
  forward(latent);
}

float TernaryQuantizer::scale_p() const {
  return trainable_scales() ? wp_.value.data<float>()[0] : twn_scale_;
}
float TernaryQuantizer::scale_n() const {
  return trainable_scales() ? wn_.value.data<float>()[0] : twn_scale_;
}

const Tensor& TernaryQuantizer::forward(const Tensor& latent) {
  const int64_t n = latent.numel();
  if (!w_t_.defined() || w_t_.shape() != latent.shape()) {
    w_t_ = Tensor::empty(latent.shape());
    codes_ = Tensor::empty(latent.shape(), DType::I8);
  }
  if (cfg_.clamp_scales) {
    for (Parameter* p : {&wp_, &wn_}) p->value.data<float>()[0] = std::max(0.0f, p->value.data<float>()[0]);
  }
  const auto th = cpu::ttq_threshold(cfg_.mode, latent.data<float>(), n, cfg_.t, cfg_.r);
  twn_scale_ = th.twn_scale;
  const float wp = scale_p(), wn = scale_n();
  const auto counts = cpu::ttq_ternarize(latent.data<float>(), n, th.threshold, wp, wn,
                                         w_t_.data<float>(), codes_.data<int8_t>());
  stats_.threshold = th.threshold;
  stats_.wp = wp;
  stats_.wn = wn;
  stats_.positive = counts.positive;
  stats_.negative = counts.negative;
  stats_.zeros = n - counts.positive - counts.negative;
  has_codes_ = true;
  return w_t_;
}

void TernaryQuantizer::backward(const Tensor& g, Tensor& latent_grad) {
  TTQ_CHECK(has_codes_, "layer '" << layer_ << "': ternary backward before any forward");
  TTQ_CHECK(g.shape() == codes_.shape() && latent_grad.shape() == codes_.shape(),
            "layer '" << layer_ << "': ternary backward got gradient " << g.str() << " and latent grad "
                      << latent_grad.str() << " for weights " << codes_.str());
  const auto sums = cpu::ttq_backward(codes_.data<int8_t>(), g.data<float>(), g.numel(), scale_p(),
                                      scale_n(), trainable_scales(), latent_grad.data<float>());
  if (trainable_scales()) {
    wp_.grad.data<float>()[0] += static_cast<float>(sums.wp);
    wn_.grad.data<float>()[0] += static_cast<float>(sums.wn);
  }
}

}  // namespace ttq
