#include "engine/quant/ternary.h"

#include <algorithm>

#include "kernels/cpu/ttq_cpu.h"
#include "kernels/ops.h"

namespace ttq {

void TernaryConfig::validate() const {
  TTQ_CHECK(t >= 0.0f && t < 1.0f, "threshold factor t must be in [0, 1), got " << t);
  TTQ_CHECK(r >= 0.0 && r < 1.0, "target sparsity r must be in [0, 1), got " << r);
  TTQ_CHECK(!(per_channel_scales && mode == math::ThresholdMode::Twn),
            "per-channel scales need trained scales; mode twn has one fixed scale per layer");
}

bool TernaryConfig::trains_like(const TernaryConfig& o) const {
  return mode == o.mode && clamp_scales == o.clamp_scales && per_channel_scales == o.per_channel_scales &&
         (mode != math::ThresholdMode::Max || t == o.t) && (mode != math::ThresholdMode::Sparsity || r == o.r);
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

int64_t TernaryQuantizer::scale_count(const Tensor& latent) const {
  if (!cfg_.per_channel_scales) return 1;
  TTQ_CHECK(latent.ndim() >= 1 && latent.shape()[0] >= 1,
            "layer '" << layer_ << "': per-channel scales need weights with an output dimension, got " << latent.str());
  return latent.shape()[0];
}

void TernaryQuantizer::init(const Tensor& latent) {
  const int64_t channels = scale_count(latent);
  if (wp_.value.numel() != channels) {
    for (Parameter* p : {&wp_, &wn_}) {
      p->init({channels}, ParamKind::Scale);
      p->value.fill(1.0f);
    }
  }
  if (cfg_.init_scales_from_weights && trainable_scales()) {
    const Tensor w = latent.to(Device::CPU);  // once, at quantization time
    const float d = cpu::ttq_threshold(cfg_.mode, w.data<float>(), w.numel(), cfg_.t, cfg_.r).threshold;
    // One row per scale pair (the whole tensor when there is one): a row's means are the
    // per-tensor ones of its slice.
    const std::vector<cpu::SetMeans> means = cpu::ttq_set_means_channels(w.data<float>(), w.numel(), channels, d);
    Tensor p = Tensor::empty({channels}), n = Tensor::empty({channels});
    for (int64_t c = 0; c < channels; ++c) {  // an empty set keeps 1.0
      p.data<float>()[c] = means[c].positive > 0.0f ? means[c].positive : 1.0f;
      n.data<float>()[c] = means[c].negative > 0.0f ? means[c].negative : 1.0f;
    }
    wp_.value.copy_from(p);
    wn_.value.copy_from(n);
  }
  forward(latent);
}

void TernaryQuantizer::ensure_buffers(const Tensor& latent) {
  const Device dev = latent.device();
  TTQ_CHECK(!trainable_scales() || wp_.value.numel() == scale_count(latent),
            "layer '" << layer_ << "': Wp " << wp_.value.str() << " does not fit the weights " << latent.str()
                      << (cfg_.per_channel_scales ? " (one scale per output channel)" : " (one scale per layer)"));
  // Trained scales are parameters of the layer and move with it (Module::to); TWN's fixed Wp/Wn
  // are not registered, so they follow the latent weights here.
  for (Parameter* p : {&wp_, &wn_})
    if (p->value.device() != dev) {
      p->value = p->value.to(dev);
      if (p->grad.defined()) p->grad = p->grad.to(dev);
    }
  if (!w_t_.defined() || w_t_.shape() != latent.shape() || w_t_.device() != dev) {
    w_t_ = Tensor::empty(latent.shape(), w_t_dtype_, dev);
    codes_ = Tensor::empty(latent.shape(), DType::I8, dev);
    threshold_ = Tensor::zeros({1}, DType::F32, dev);
    twn_scale_ = Tensor::zeros({1}, DType::F32, dev);
    has_codes_ = false;
  } else if (w_t_.dtype() != w_t_dtype_) {
    w_t_ = Tensor::empty(latent.shape(), w_t_dtype_, dev);  // the codes stay valid; w_t is rewritten next forward
  }
}

void TernaryQuantizer::set_quantized_dtype(DType dtype) {
  TTQ_CHECK(dtype == DType::F32 || dtype == DType::BF16,
            "layer '" << layer_ << "': quantized weights must be f32 or bf16, not " << dtype_name(dtype));
  w_t_dtype_ = dtype;
}

void TernaryQuantizer::prepare_scales() {
  if (cfg_.clamp_scales) {
    ops::clamp_min_inplace(wp_.value, 0.0f);
    ops::clamp_min_inplace(wn_.value, 0.0f);
  }
}

ops::TtqLayerRefs TernaryQuantizer::layer_refs(const Tensor& latent, const Tensor& g, Tensor& latent_grad) {
  ensure_buffers(latent);
  ops::TtqLayerRefs r;
  r.mode = cfg_.mode;
  r.t = cfg_.t;
  r.r = cfg_.r;
  r.latent = &latent;
  r.wp = &wp_.value;
  r.wn = &wn_.value;
  r.threshold = &threshold_;
  r.twn_scale = &twn_scale_;
  r.w_t = &w_t_;
  r.codes = &codes_;
  r.g = &g;
  r.latent_grad = &latent_grad;
  if (trainable_scales()) {
    r.dwp = &wp_.grad;
    r.dwn = &wn_.grad;
  }
  return r;
}

const Tensor& TernaryQuantizer::forward(const Tensor& latent) {
  ensure_buffers(latent);
  prepare_scales();
  ops::ttq_forward(cfg_.mode, cfg_.t, cfg_.r, latent, wp_.value, wn_.value, threshold_, twn_scale_, w_t_, codes_);
  has_codes_ = true;
  return w_t_;
}

void TernaryQuantizer::backward(const Tensor& g, Tensor& latent_grad) {
  TTQ_CHECK(has_codes_, "layer '" << layer_ << "': ternary backward before any forward");
  TTQ_CHECK(g.shape() == codes_.shape() && latent_grad.shape() == codes_.shape(),
            "layer '" << layer_ << "': ternary backward got gradient " << g.str() << " and latent grad "
                      << latent_grad.str() << " for weights " << codes_.str());
  ops::ttq_backward_accumulate(codes_, g, wp_.value, wn_.value, trainable_scales(), latent_grad, wp_.grad, wn_.grad);
}

TernaryStats TernaryQuantizer::stats() const {
  TTQ_CHECK(has_codes_, "layer '" << layer_ << "': no ternary statistics before a forward pass");
  const Tensor codes = codes_.to(Device::CPU);
  TernaryStats st;
  st.threshold = threshold_.to(Device::CPU).data<float>()[0];
  if (trainable_scales()) {
    auto mean = [](const Tensor& t) {
      const Tensor h = t.to(Device::CPU);
      double s = 0.0;
      for (int64_t i = 0; i < h.numel(); ++i) s += h.data<float>()[i];
      return static_cast<float>(s / static_cast<double>(h.numel()));
    };
    st.wp = mean(wp_.value);
    st.wn = mean(wn_.value);
  } else {
    st.wp = st.wn = twn_scale_.to(Device::CPU).data<float>()[0];
  }
  const int8_t* c = codes.data<int8_t>();
  for (int64_t i = 0, n = codes.numel(); i < n; ++i) {
    st.positive += c[i] > 0;
    st.negative += c[i] < 0;
  }
  st.zeros = codes.numel() - st.positive - st.negative;
  return st;
}

}  // namespace ttq
