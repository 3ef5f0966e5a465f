// TernaryQuantizer: the TTQ state and passes of one quantized layer (kernels/ttq_math.h holds the
// per-element formulas). It owns the trainable magnitudes Wp and Wn, computes the threshold D each
// forward pass, keeps one int8 code per weight for the backward pass, and turns dL/dw_t into the
// scaled latent gradient plus dL/dWp and dL/dWn.
#pragma once

#include <string>

#include "engine/core/tensor.h"
#include "engine/nn/module.h"
#include "kernels/ttq_layers.h"
#include "kernels/ttq_math.h"

namespace ttq {

struct TernaryConfig {
  math::ThresholdMode mode = math::ThresholdMode::Max;
  float t = 0.05f;  // Max mode: D = t * max|W~|
  double r = 0.0;   // Sparsity mode: target fraction of zeros, in [0, 1)
  // Initialise Wp/Wn to the mean |W~| over I_p / I_n instead of 1.0 (an empty set keeps 1.0).
  bool init_scales_from_weights = false;
  // Keep Wp, Wn >= 0: negative values are clamped to 0 at the start of each forward pass.
  bool clamp_scales = false;
  // One Wp and one Wn per output channel (a conv's C_out, a linear's out: the weight's first
  // dimension) instead of one per layer. D stays one threshold per layer. Not with Twn.
  bool per_channel_scales = false;

  void validate() const;  // throws on t outside [0, 1), r outside [0, 1), per-channel Twn
  // Whether a layer quantized with o trains as one quantized with these settings (the mode, its
  // own parameter, clamping, per-channel scales; the one-time initialisation does not count).
  bool trains_like(const TernaryConfig& o) const;
};

const char* threshold_mode_name(math::ThresholdMode m);
// "max", "sparsity", "twn"; throws naming the valid choices otherwise.
math::ThresholdMode parse_threshold_mode(const std::string& s);

// What a quantized layer looks like now.
struct TernaryStats {
  float threshold = 0.0f;  // D
  float wp = 0.0f, wn = 0.0f;  // per-channel scales: their mean over the channels
  int64_t positive = 0, negative = 0, zeros = 0;
  double sparsity() const {
    const int64_t n = positive + negative + zeros;
    return n ? static_cast<double>(zeros) / n : 0.0;
  }
};

class TernaryQuantizer {
 public:
  // `layer` names the owning layer in error messages.
  TernaryQuantizer(const TernaryConfig& cfg, std::string layer);

  // Sets Wp/Wn (1.0, or from the weights when configured; per-channel: one each per row of
  // `latent`) and computes the first codes.
  void init(const Tensor& latent);

  // Latent weights -> quantized weights w_t (valid until the next forward). Saves the codes.
  const Tensor& forward(const Tensor& latent);
  // g = dL/dw_t. Adds the scaled latent gradient into latent_grad and dL/dWp, dL/dWn into the
  // scales' gradients (TWN: plain straight-through gradient, no scale gradients).
  void backward(const Tensor& g, Tensor& latent_grad);

  // For a TernaryPass: this layer's tensors as one entry of a multi-layer TTQ op (buffers sized
  // for `latent`, g = dL/dw_t). After the op's forward, call forward_done().
  ops::TtqLayerRefs layer_refs(const Tensor& latent, const Tensor& g, Tensor& latent_grad);
  // Applies the per-step scale options (clamp_scales) before a forward pass run elsewhere.
  void prepare_scales();
  void forward_done() { has_codes_ = true; }

  const TernaryConfig& config() const { return cfg_; }
  bool trainable_scales() const { return cfg_.mode != math::ThresholdMode::Twn; }
  Parameter& wp() { return wp_; }
  Parameter& wn() { return wn_; }
  // The dtype w_t is written in: f32 (default) or bf16, the dtype the layer computes in.
  void set_quantized_dtype(DType dtype);
  DType quantized_dtype() const { return w_t_dtype_; }
  const Tensor& codes() const { return codes_; }
  const Tensor& quantized() const { return w_t_; }
  // D, the scales in use (TWN: its fixed scale for both) and the code counts of the last forward
  // pass, computed on demand (a device-to-host copy on the GPU, so not every step).
  TernaryStats stats() const;

 private:
  TernaryConfig cfg_;
  std::string layer_;
  Parameter wp_, wn_;
  Tensor w_t_, codes_, threshold_, twn_scale_;
  bool has_codes_ = false;
  DType w_t_dtype_ = DType::F32;

  void ensure_buffers(const Tensor& latent);
  int64_t scale_count(const Tensor& latent) const;  // 1, or latent's first dimension (per-channel)
};

}  // namespace ttq
