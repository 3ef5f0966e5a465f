// StepLog: each training step's loss and top-1 count, kept on the device that computed them.
// On the GPU a step writes its slot with the loss kernels and nothing waits for it; read() then
// fetches every pending step with one device-to-host copy per field (one synchronisation for many
// steps). On the CPU the slots are host memory and read() costs nothing.
#pragma once

#include <cstdint>
#include <vector>

#include "engine/core/tensor.h"

namespace ttq {

struct LoggedStep {
  double loss = 0.0;     // mean over the batch
  int64_t correct = 0;   // top-1
  int64_t batch = 0;     // samples
};

class StepLog {
 public:
  explicit StepLog(Device device, int64_t capacity = 256);

  // The slots of the next step: a f32 [1] view for the loss and an i64 [1] view for the count.
  // Requires !full().
  Tensor loss_slot();
  Tensor correct_slot();
  // The step whose slots were just handed out has been enqueued.
  void commit(int64_t batch);

  bool full() const { return pending_ == capacity_; }
  int64_t pending() const { return pending_; }
  // The pending steps in order; empties the log.
  std::vector<LoggedStep> read();

 private:
  int64_t capacity_;
  int64_t pending_ = 0;
  Tensor loss_, correct_;  // [capacity] on the device
  std::vector<int64_t> batch_;
};

}  // namespace ttq
