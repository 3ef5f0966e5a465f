// Fully connected layer: y = x W^T + b, W stored [out, in] as in PyTorch. Accepts [N, in] input.
// The weight may be ternary (see QuantizableLayer).
#pragma once

#include "engine/nn/quantizable.h"

namespace ttq {

class Linear : public QuantizableLayer {
 public:
  Linear(int64_t in_features, int64_t out_features, bool bias = true);
  int64_t in_features() const { return in_; }
  int64_t out_features() const { return out_; }

 protected:
  void check_input(const Tensor& x) const override;
  Tensor forward_impl(const Tensor& x) override;
  Tensor backward_impl(const Tensor& dy) override;

 private:
  int64_t in_, out_;
  Tensor x_;
};

}  // namespace ttq
