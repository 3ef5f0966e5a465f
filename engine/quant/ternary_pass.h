// TernaryPass: the TTQ work of one training step for all ternary layers of a model together.
// Without it, each ternary layer quantizes its weights in its own forward and runs its TTQ
// backward inside its own backward (per-layer kernels). With it, a step reads
//
//   pass.forward();            // D, codes and w_t of every ternary layer (GPU: a few fused launches)
//   net.forward(x); loss; net.backward(dy);   // ternary layers leave dL/dw_t, nothing else
//   [all-reduce the gradients]               // data parallel: dL/dw_t in place of latent/Wp/Wn grads
//   pass.backward();           // latent grads += scaled dL/dw_t, Wp/Wn grads += dL/dWp, dL/dWn (GPU: fused)
//   optimizer.step(lr);
//
// and gives the same numbers as the per-layer path. While a pass exists its layers defer their
// ternary backward (QuantizableLayer::defers_ternary_backward); destroying it switches them back.
#pragma once

#include <memory>
#include <vector>

#include "engine/nn/module.h"
#include "kernels/ttq_layers.h"

namespace ttq {

class QuantizableLayer;

class TernaryPass {
 public:
  // Takes the model's ternary layers as they are now (quantize the model first); call after
  // moving the model to its device (a later move is noticed and re-planned).
  // compute_dtype: the dtype the layers compute in (the model input's): w_t is written in it.
  explicit TernaryPass(Module& net, DType compute_dtype = DType::F32);
  ~TernaryPass();
  TernaryPass(const TernaryPass&) = delete;
  TernaryPass& operator=(const TernaryPass&) = delete;

  // Starts a step: D, codes and w_t for the next forward; each layer's dL/dw_t starts afresh (the
  // next backward writes it in place).
  void forward();
  // Ends a step's backward: turns each layer's dL/dw_t into the gradients of the latent weight,
  // Wp and Wn, added into them (like every gradient, they accumulate until zero_grad: two
  // forward/backward/pass.backward rounds give the gradient of both micro-batches).
  void backward();

  bool empty() const { return layers_.empty(); }
  const std::vector<QuantizableLayer*>& layers() const { return layers_; }
  // GPU kernel launches per forward / backward (0 on the CPU).
  int forward_launches() const { return set_ ? set_->forward_launches() : 0; }
  int backward_launches() const { return set_ ? set_->backward_launches() : 0; }

 private:
  std::vector<QuantizableLayer*> layers_;
  std::unique_ptr<ops::TtqLayerSet> set_;
};

}  // namespace ttq
