// QuantizableLayer: the shared part of Conv2d and Linear, whose weight may be ternary.
// Without a quantizer the layer computes with its weight as is; with one, forward uses the
// quantized weights w_t and backward routes dL/dw_t through the quantizer.
#pragma once

#include <memory>
#include <string>

#include "engine/nn/module.h"
#include "engine/quant/ternary.h"

namespace ttq {

class QuantizableLayer : public Module {
 public:
  using Module::Module;

  Parameter& weight() { return weight_; }
  bool has_bias() const { return has_bias_; }
  Parameter& bias() { return bias_; }

  // Makes the weight ternary (registers "<path>.wp" and "<path>.wn" when the scales train).
  void enable_ternary(const TernaryConfig& cfg);
  bool is_ternary() const { return quant_ != nullptr; }
  TernaryQuantizer* quantizer() { return quant_.get(); }
  // The trainable scales of a ternary layer (throws for a full-precision one).
  Parameter& wp();
  Parameter& wn();

  // Deferred ternary backward, switched on by a TernaryPass (engine/quant/ternary_pass.h): the
  // layer's backward then adds dL/dw_t into ternary_weight_grad() and leaves the latent weight's,
  // Wp's and Wn's gradients alone; the pass computes those later from dL/dw_t, for all layers at
  // once (after the data-parallel all-reduce of dL/dw_t, when there is one: the TTQ backward is
  // linear in dL/dw_t, so reducing it is the same as reducing the three gradients).
  void set_defer_ternary_backward(bool on);
  bool defers_ternary_backward() const { return defer_; }
  // dL/dw_t, the weight's shape and device (allocated and zeroed on first use).
  Tensor& ternary_weight_grad();
  // A step of the pass starts: w_t and the codes are computed (the next forward uses them as they
  // are), and dL/dw_t holds nothing for this step yet: the next backward writes it in place.
  void begin_ternary_step() { prepared_ = ternary_grad_empty_ = true; }
  // No backward has filled dL/dw_t since begin_ternary_step() (its contents are stale).
  bool ternary_grad_empty() const { return ternary_grad_empty_; }

 protected:
  void init_weight(const Shape& shape, bool bias, int64_t bias_size);
  // The weights to compute with this step, in `dtype` (the input's): w_t for a ternary layer, the
  // weight otherwise, converted (into a cached copy) when its dtype differs, e.g. the bf16 copy of
  // an f32 weight under precision "bf16".
  const Tensor& effective_weight(DType dtype);
  // The weights the last forward computed with (for its backward).
  const Tensor& forward_weight() const;
  // Scratch of the weight's shape, in the dtype the layer computed in, for dL/d(effective weight),
  // and (when the layer has a bias) an f32 one for dL/dbias; fill them, then call
  // accumulate_grads(), which adds them into the f32 gradients (or dL/dw_t).
  Tensor& weight_grad_scratch();
  Tensor& bias_grad_scratch();
  void accumulate_grads();

 private:
  Parameter weight_, bias_;
  bool has_bias_ = false;
  std::unique_ptr<TernaryQuantizer> quant_;
  Tensor dw_scratch_, db_scratch_;
  Tensor ternary_grad_;
  Tensor w_cast_;                       // the weights converted to the compute dtype, when needed
  const Tensor* forward_w_ = nullptr;   // what the last forward computed with
  DType compute_dtype_ = DType::F32;
  bool defer_ = false, prepared_ = false, ternary_grad_empty_ = false;
};

}  // namespace ttq
