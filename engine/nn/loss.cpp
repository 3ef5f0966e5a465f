#include "engine/nn/loss.h"

#include <cmath>

#include "kernels/cpu/ops_ref.h"

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
}  // namespace

double CrossEntropyLoss::forward(const Tensor& logits, const std::vector<int32_t>& labels) {
  check_logits(logits, labels);
  probs_ = Tensor::empty(logits.shape());
  labels_ = labels;
  const double loss = ref::softmax_xent_forward(logits.dim(0), logits.dim(1), logits.data<float>(), labels.data(),
                                                smoothing_, probs_.data<float>());
  TTQ_CHECK(std::isfinite(loss), "loss: not finite (" << loss << "); logits contain NaN or Inf");
  return loss;
}

Tensor CrossEntropyLoss::backward() {
  TTQ_CHECK(probs_.defined(), "loss: backward without forward");
  Tensor d = Tensor::empty(probs_.shape());
  ref::softmax_xent_backward(probs_.dim(0), probs_.dim(1), probs_.data<float>(), labels_.data(), smoothing_,
                             d.data<float>());
  return d;
}

int64_t count_topk_correct(const Tensor& logits, const std::vector<int32_t>& labels, int k) {
  check_logits(logits, labels);
  const int64_t n = logits.dim(0), c = logits.dim(1);
  int64_t correct = 0;
  for (int64_t b = 0; b < n; ++b) {
    const float* z = logits.data<float>() + b * c;
    const float target = z[labels[b]];
    // Rank of the label: how many classes score strictly higher, plus earlier ties.
    int64_t above = 0;
    for (int64_t j = 0; j < c; ++j)
      if (z[j] > target || (z[j] == target && j < labels[b])) ++above;
    if (above < k) ++correct;
  }
  return correct;
}

}  // namespace ttq
