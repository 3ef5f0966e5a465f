#include "engine/nn/loss.h"

#include <cmath>

#include "kernels/ops.h"

namespace ttq {

CrossEntropyLoss::CrossEntropyLoss(float label_smoothing) : smoothing_(label_smoothing) {
  TTQ_CHECK(label_smoothing >= 0.0f && label_smoothing < 1.0f,
            "label_smoothing must be in [0, 1), got " << label_smoothing);
}

namespace {

void check_logits(const Tensor& logits, const std::vector<int32_t>& labels) {
  TTQ_CHECK(logits.ndim() == 2 && logits.dim(0) > 0 && logits.dim(1) > 0,
            "loss: expects logits [N, classes], got " << shape_str(logits.shape()));
  TTQ_CHECK(static_cast<int64_t>(labels.size()) == logits.dim(0),
            "loss: " << labels.size() << " labels for " << logits.dim(0) << " rows of logits");
  for (size_t i = 0; i < labels.size(); ++i)
    TTQ_CHECK(labels[i] >= 0 && labels[i] < logits.dim(1),
              "loss: label " << labels[i] << " at row " << i << " outside [0, " << logits.dim(1) << ")");
}

// The labels as an int32 tensor on the logits' device.
Tensor label_tensor(const std::vector<int32_t>& labels, Device device) {
  return Tensor::from_int32(labels).to(device);
}

}  // namespace

double CrossEntropyLoss::forward(const Tensor& logits, const std::vector<int32_t>& labels) {
  check_logits(logits, labels);
  probs_ = Tensor::empty(logits.shape(), DType::F32, logits.device());
  logits_dtype_ = logits.dtype();
  labels_ = label_tensor(labels, logits.device());
  const double loss = ops::softmax_xent_forward(logits, labels_, smoothing_, probs_);
  TTQ_CHECK(std::isfinite(loss), "loss: not finite (" << loss << "); logits contain NaN or Inf");
  return loss;
}

void CrossEntropyLoss::forward_into(const Tensor& logits, const Tensor& labels, Tensor& loss_out) {
  TTQ_CHECK(logits.ndim() == 2 && logits.dim(0) > 0 && logits.dim(1) > 0,
            "loss: expects logits [N, classes], got " << shape_str(logits.shape()));
  TTQ_CHECK(labels.dtype() == DType::I32 && labels.numel() == logits.dim(0),
            "loss: labels " << labels.str() << " for " << logits.dim(0) << " rows of logits");
  probs_ = Tensor::empty(logits.shape(), DType::F32, logits.device());
  logits_dtype_ = logits.dtype();
  labels_ = labels;
  ops::softmax_xent_forward_into(logits, labels_, smoothing_, probs_, loss_out);
}

Tensor CrossEntropyLoss::backward() {
  TTQ_CHECK(probs_.defined(), "loss: backward without forward");
  Tensor d = Tensor::empty(probs_.shape(), logits_dtype_, probs_.device());
  ops::softmax_xent_backward(probs_, labels_, smoothing_, d);
  return d;
}

int64_t count_topk_correct(const Tensor& logits, const std::vector<int32_t>& labels, int k) {
  check_logits(logits, labels);
  return ops::count_topk_correct(logits, label_tensor(labels, logits.device()), k);
}

}  // namespace ttq
