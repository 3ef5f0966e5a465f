#include "engine/train/step.h"

namespace ttq {

StepResult train_step(Module& net, CrossEntropyLoss& loss, Optimizer& opt, const Batch& batch, double lr,
                      TernaryPass* pass) {
  net.train(true);
  opt.zero_grad();
  if (pass) pass->forward();
  Tensor logits = net.forward(batch.images.to(net.device()));
  StepResult r;
  r.loss = loss.forward(logits, batch.labels);
  r.correct = count_topk_correct(logits, batch.labels, 1);
  net.backward(loss.backward());
  if (pass) pass->backward();
  opt.step(lr);
  return r;
}

StepResult eval_step(Module& net, CrossEntropyLoss& loss, const Batch& batch) {
  const bool was_training = net.training();
  net.eval();
  Tensor logits = net.forward(batch.images.to(net.device()));
  StepResult r;
  r.loss = loss.forward(logits, batch.labels);
  r.correct = count_topk_correct(logits, batch.labels, 1);
  net.train(was_training);
  return r;
}

}  // namespace ttq
