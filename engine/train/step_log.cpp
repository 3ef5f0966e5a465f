#include "engine/train/step_log.h"

namespace ttq {

StepLog::StepLog(Device device, int64_t capacity)
    : capacity_(capacity),
      loss_(Tensor::zeros({capacity}, DType::F32, device)),
      correct_(Tensor::zeros({capacity}, DType::I64, device)) {
  TTQ_CHECK(capacity > 0, "StepLog: capacity must be positive, got " << capacity);
}

Tensor StepLog::loss_slot() {
  TTQ_CHECK(!full(), "StepLog: full; read() the pending steps first");
  return loss_.slice(pending_, pending_ + 1);
}

Tensor StepLog::correct_slot() {
  TTQ_CHECK(!full(), "StepLog: full; read() the pending steps first");
  return correct_.slice(pending_, pending_ + 1);
}

void StepLog::commit(int64_t batch) {
  TTQ_CHECK(!full(), "StepLog: commit on a full log");
  batch_.push_back(batch);
  ++pending_;
}

std::vector<LoggedStep> StepLog::read() {
  std::vector<LoggedStep> out;
  if (pending_ == 0) return out;
  const Tensor loss = loss_.slice(0, pending_).to(Device::CPU);
  const Tensor correct = correct_.slice(0, pending_).to(Device::CPU);
  for (int64_t i = 0; i < pending_; ++i)
    out.push_back({static_cast<double>(loss.data<float>()[i]), correct.data<int64_t>()[i],
                   batch_[static_cast<size_t>(i)]});
  pending_ = 0;
  batch_.clear();
  return out;
}

}  // namespace ttq
