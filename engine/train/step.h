// One optimisation step: forward, loss, backward, update.
#pragma once

#include "engine/data/batch.h"
#include "engine/nn/loss.h"
#include "engine/nn/module.h"
#include "engine/optim/optimizer.h"
#include "engine/quant/ternary_pass.h"
#include "engine/train/batch_feed.h"
#include "engine/train/step_log.h"

namespace ttq {

struct StepResult {
  double loss = 0.0;
  int64_t correct = 0;  // top-1
};

// With a TernaryPass (one per training stage of a model with ternary layers), the TTQ work of all
// ternary layers runs together before the forward pass and after the backward pass (fused on the
// GPU); without one, each layer runs its own. Both give the same step. compute: the dtype and
// layout the model computes in (the images are converted to them; a pass must have been made for
// the dtype).
StepResult train_step(Module& net, CrossEntropyLoss& loss, Optimizer& opt, const Batch& batch, double lr,
                      TernaryPass* pass = nullptr, ComputeFormat compute = {});

// The same step on a batch already on the model's device, without any host synchronisation: the
// loss and the top-1 count go to the log's next slots (log must not be full). The trainer's step.
void train_step(Module& net, CrossEntropyLoss& loss, Optimizer& opt, const DeviceBatch& batch, double lr,
                TernaryPass* pass, StepLog& log);

// Evaluation-mode forward over one batch (the model is returned to its previous mode).
StepResult eval_step(Module& net, CrossEntropyLoss& loss, const Batch& batch, ComputeFormat compute = {});

}  // namespace ttq
