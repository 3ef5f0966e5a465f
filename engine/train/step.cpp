#include "engine/train/step.h"

#include <cmath>

#include "kernels/ops.h"

namespace ttq {

StepResult train_step(Module& net, CrossEntropyLoss& loss, Optimizer& opt, const Batch& batch, double lr,
                      TernaryPass* pass, ComputeFormat compute) {
  const Device device = net.device();
  const int64_t n = static_cast<int64_t>(batch.labels.size());
  const DeviceBatch db{ops::to_compute_format(batch.images.to(device), compute),
                       Tensor::from_int32(batch.labels).to(device), n};
  StepLog log(device, 1);
  train_step(net, loss, opt, db, lr, pass, log);
  const LoggedStep s = log.read().at(0);
  TTQ_CHECK(std::isfinite(s.loss), "loss: not finite (" << s.loss << "); logits contain NaN or Inf, or a label is outside the classes");
  return {s.loss, s.correct};
}

void train_step(Module& net, CrossEntropyLoss& loss, Optimizer& opt, const DeviceBatch& batch, double lr,
                TernaryPass* pass, StepLog& log) {
  net.train(true);
  opt.zero_grad();
  if (pass) pass->forward();
  Tensor logits = net.forward(batch.images);
  TTQ_CHECK(logits.ndim() == 2 && logits.dim(0) == batch.size,
            "train step: the model gives " << logits.str() << " for a batch of " << batch.size);
  Tensor loss_slot = log.loss_slot(), correct_slot = log.correct_slot();
  loss.forward_into(logits, batch.labels, loss_slot);
  ops::count_topk_correct_into(logits, batch.labels, 1, correct_slot);
  log.commit(batch.size);
  net.backward(loss.backward());
  if (pass) pass->backward();
  opt.step(lr);
}

StepResult eval_step(Module& net, CrossEntropyLoss& loss, const Batch& batch, ComputeFormat compute) {
  const bool was_training = net.training();
  net.eval();
  Tensor logits = net.forward(ops::to_compute_format(batch.images.to(net.device()), compute));
  StepResult r;
  r.loss = loss.forward(logits, batch.labels);
  r.correct = count_topk_correct(logits, batch.labels, 1);
  net.train(was_training);
  return r;
}

}  // namespace ttq
