// One optimisation step: forward, loss, backward, update.
#pragma once

#include "engine/data/batch.h"
#include "engine/nn/loss.h"
#include "engine/nn/module.h"
#include "engine/optim/optimizer.h"

namespace ttq {

struct StepResult {
  double loss = 0.0;
  int64_t correct = 0;  // top-1
};

StepResult train_step(Module& net, CrossEntropyLoss& loss, Optimizer& opt, const Batch& batch, double lr);

// Evaluation-mode forward over one batch (the model is returned to its previous mode).
StepResult eval_step(Module& net, CrossEntropyLoss& loss, const Batch& batch);

}  // namespace ttq
