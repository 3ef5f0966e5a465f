// TTQ over a set of quantized layers at once: the tensor-level face of the fused multi-tensor
// kernels. On the GPU a forward pass is a constant number of launches for all layers together
// (kernels/cuda/ttq_multi.h) and nothing synchronises with the host; on the CPU it runs the
// per-layer loops of kernels/cpu/ttq_cpu.h one layer after the other. Both give the codes and D of
// ops::ttq_forward and the gradients of ops::ttq_backward_accumulate for every layer.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "engine/core/tensor.h"
#include "kernels/storage_watch.h"
#include "kernels/ttq_math.h"

namespace ttq::ops {

// The tensors of one quantized layer. The Tensor objects must outlive the set; their storage may
// be replaced (the set notices and re-plans), but all of one set live on one device.
struct TtqLayerRefs {
  math::ThresholdMode mode = math::ThresholdMode::Max;
  float t = 0.05f;   // Max mode
  double r = 0.0;    // Sparsity mode
  // forward
  const Tensor* latent = nullptr;  // W~, f32
  const Tensor* wp = nullptr;      // [1], or [C]: per-output-channel scales, C dividing the weight
  const Tensor* wn = nullptr;      // count (row c uses wp[c], wn[c]); ignored in Twn mode
  Tensor* threshold = nullptr;     // out [1]: D
  Tensor* twn_scale = nullptr;     // out [1]: Twn's fixed scale (0 in the other modes)
  Tensor* w_t = nullptr;           // out: quantized weights, latent's size, f32 or bf16
  Tensor* codes = nullptr;         // out: int8 codes, latent's size
  // backward
  const Tensor* g = nullptr;       // dL/dw_t
  Tensor* latent_grad = nullptr;   // += Wp*g / g / Wn*g (Twn: plain g)
  Tensor* dwp = nullptr;           // in/out, Wp's size: dL/dWp, added into (null in Twn mode)
  Tensor* dwn = nullptr;           // in/out, Wn's size: dL/dWn with its minus sign, added into
};

class TtqLayerSet {
 public:
  // Checks every layer's tensors (sizes, dtypes, one device for all). An empty set is allowed.
  explicit TtqLayerSet(std::vector<TtqLayerRefs> layers);
  ~TtqLayerSet();
  TtqLayerSet(const TtqLayerSet&) = delete;
  TtqLayerSet& operator=(const TtqLayerSet&) = delete;

  // D, codes and w_t of every layer from its latent weights and current Wp/Wn.
  void forward();
  // From each layer's g and the codes of the last forward: latent_grad += scaled g, dwp += dL/dWp,
  // dwn += dL/dWn (gradients accumulate until they are zeroed, as everywhere).
  void backward();

  Device device() const { return device_; }
  size_t size() const { return layers_.size(); }
  // Kernel launches per forward / backward on the GPU (0 on the CPU): constant in the number of
  // layers, except one threshold selection per Sparsity layer (and, with per-channel scales, one
  // row-pass launch per 65 536 channel rows of all layers together, in each direction).
  int forward_launches() const;
  int backward_launches() const;

 private:
  void check();  // validates the tensors and sets device_
  void refresh();  // re-checks after a storage change; (re)builds the GPU tables when needed
  void plan();

  std::vector<TtqLayerRefs> layers_;
  Device device_ = Device::CPU;
  StorageWatch watch_;  // the storage the checks (and the GPU tables) were made for
  struct Gpu;
  std::unique_ptr<Gpu> gpu_;
};

}  // namespace ttq::ops
