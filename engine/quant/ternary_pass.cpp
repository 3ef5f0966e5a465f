#include "engine/quant/ternary_pass.h"

#include "engine/nn/quantizable.h"
#include "engine/quant/quantize_model.h"

namespace ttq {

TernaryPass::TernaryPass(Module& net, DType compute_dtype) {
  std::vector<ops::TtqLayerRefs> refs;
  for (QuantizableLayer* l : quantizable_layers(net)) {
    if (!l->is_ternary()) continue;
    layers_.push_back(l);
    l->quantizer()->set_quantized_dtype(compute_dtype);
    refs.push_back(l->quantizer()->layer_refs(l->weight().value, l->ternary_weight_grad(), l->weight().grad));
  }
  set_ = std::make_unique<ops::TtqLayerSet>(std::move(refs));
  for (QuantizableLayer* l : layers_) l->set_defer_ternary_backward(true);
}

TernaryPass::~TernaryPass() {
  for (QuantizableLayer* l : layers_) {
    l->set_defer_ternary_backward(false);
    l->quantizer()->set_quantized_dtype(DType::F32);  // a layer on its own writes f32 w_t again
  }
}

void TernaryPass::forward() {
  if (layers_.empty()) return;
  for (QuantizableLayer* l : layers_) {
    // Re-sizes the buffers if the model moved device since the last step; the set re-plans then.
    (void)l->quantizer()->layer_refs(l->weight().value, l->ternary_weight_grad(), l->weight().grad);
    l->quantizer()->prepare_scales();
  }
  set_->forward();
  for (QuantizableLayer* l : layers_) {
    l->quantizer()->forward_done();
    l->begin_ternary_step();
  }
}

void TernaryPass::backward() {
  if (layers_.empty()) return;
  // A layer the backward pass did not reach contributes no gradient (its dL/dw_t is last step's).
  for (QuantizableLayer* l : layers_)
    if (l->ternary_grad_empty()) l->ternary_weight_grad().zero();
  set_->backward();
}

}  // namespace ttq
