// Softmax cross-entropy (mean over the batch, optional label smoothing) and top-k counting.
#pragma once

#include <cstdint>
#include <vector>

#include "engine/core/tensor.h"

namespace ttq {

class CrossEntropyLoss {
 public:
  explicit CrossEntropyLoss(float label_smoothing = 0.0f);
  // logits [N, K], labels: N values in [0, K). Returns the mean loss.
  double forward(const Tensor& logits, const std::vector<int32_t>& labels);
  // The same with the labels already on the logits' device (int32 [N]) and no read-back: the mean
  // loss goes to loss_out (f32 [1] on that device). Labels are not range-checked here (the
  // kernels give an out-of-range label no target mass) and a non-finite loss is the caller's to
  // check when it reads loss_out.
  void forward_into(const Tensor& logits, const Tensor& labels, Tensor& loss_out);
  // dL/dlogits for the last forward, in the logits' dtype (f32 or bf16; the loss itself is f32).
  Tensor backward();

 private:
  float smoothing_;
  Tensor probs_;  // f32 whatever the logits' dtype
  DType logits_dtype_ = DType::F32;  // dL/dlogits comes back in it
  Tensor labels_;  // int32, on the logits' device
};

// Number of rows whose label is among the k largest logits (ties go to the lower class index).
int64_t count_topk_correct(const Tensor& logits, const std::vector<int32_t>& labels, int k);

}  // namespace ttq
