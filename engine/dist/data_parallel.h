// The trainer's side of data-parallel training, in one object: the run's communicator, the model's
// start from rank 0's weights, synchronised batch norm when configured, the gradient reducer
// (engine/dist/grad_reducer.h), the averaging of BatchNorm running statistics before evaluation
// and checkpoints, and sums over ranks of the counters that metrics report. With one process every
// call is a no-op.
//
// Where the work sits in a step: each rank runs forward, loss and backward on its own shard of
// the global batch; during the backward pass the reducer all-reduces gradient buckets as they are
// finished, and net.backward() returns with the averaged gradients; the optimizer step then runs
// the same update on every rank, so the replicas stay identical.
#pragma once

#include <exception>
#include <memory>
#include <string>

#include "engine/dist/communicator.h"
#include "engine/dist/grad_reducer.h"
#include "engine/nn/module.h"

namespace ttq {

class DataParallel {
 public:
  // device: where the model trains (a GPU run binds each rank to GPU local_rank here).
  DataParallel(std::shared_ptr<Communicator> comm, const DistConfig& cfg, Device device);
  ~DataParallel();
  DataParallel(const DataParallel&) = delete;
  DataParallel& operator=(const DataParallel&) = delete;

  Communicator& comm() { return *comm_; }
  const std::shared_ptr<Communicator>& comm_ptr() const { return comm_; }
  int rank() const { return comm_->rank(); }
  int world() const { return comm_->world(); }
  bool root() const { return comm_->is_root(); }
  bool active() const { return comm_->world() > 1; }

  // Once the model is built, loaded and on its device: every rank takes rank 0's parameters and
  // buffers, BatchNorm layers synchronise their statistics when sync_bn is on, and the gradient
  // reducer is installed (it lives, and keeps the model alive, as long as this object). Collective.
  void attach(std::shared_ptr<Module> net);
  // Averages every f32 buffer (BatchNorm running statistics, which per-rank batch norm leaves
  // different on every rank), so all ranks evaluate and rank 0 saves the same model. Collective.
  void average_buffers(Module& net);
  // Sums over all ranks, in place. Collective.
  // Waits (with the timeout and the backend's error checks) for the device work enqueued so far,
  // collectives included, before the host reads results (nccl; nothing to do otherwise).
  void sync_device(const std::string& what);
  // A training stage (a new optimizer) starts: its first step waits on the host, with the
  // timeout, for its all-reduces before the optimizer's one-time set-up (whose uploads would
  // otherwise block without a timeout behind a collective of a dead peer).
  void begin_stage();
  // Sums over the ranks, in place; `what` names the data for errors.
  void sum(double* v, int64_t n, const char* what);
  void sum(int64_t* v, int64_t n, const char* what);
  // Mean of one value over the ranks. Collective.
  double mean(double v);

  // Where the run stands ("stage 'fp', epoch 3") and its last checkpoint, for the errors of the
  // collectives outside a training step (evaluation, sums, statistics, checkpoints).
  void set_context(std::string where, std::string checkpoint);
  // Runs fn; a ttq::Error from it is rethrown naming the context.
  template <typename F> auto guarded(F&& fn) -> decltype(fn()) {
    try {
      return fn();
    } catch (const Error& e) {
      rethrow_in_context(e);
    }
  }

  // While alive: should an exception leave its scope, the communicator's device collectives are
  // aborted first (Communicator::abort_device), before the destructors of what was made earlier
  // in the scope (the batch feed, the optimizer's and the TTQ pass's device tables) wait for the
  // device. The error is reported, and the host connection aborted, further up.
  class AbortOnUnwind {
   public:
    explicit AbortOnUnwind(DataParallel& dp) : dp_(dp), uncaught_(std::uncaught_exceptions()) {}
    ~AbortOnUnwind() {
      if (std::uncaught_exceptions() > uncaught_ && dp_.active()) dp_.comm_->abort_device();
    }
    AbortOnUnwind(const AbortOnUnwind&) = delete;
    AbortOnUnwind& operator=(const AbortOnUnwind&) = delete;

   private:
    DataParallel& dp_;
    int uncaught_;
  };

  GradientReducer* reducer() { return reducer_.get(); }
  // "2 ranks (mpi), 1 node, 2 per node"
  std::string describe() const;

 private:
  [[noreturn]] void rethrow_in_context(const Error& e) const;

  std::shared_ptr<Communicator> comm_;
  DistConfig cfg_;
  std::string where_, checkpoint_;
  Device device_;
  std::shared_ptr<Module> net_;
  std::unique_ptr<GradientReducer> reducer_;
};

}  // namespace ttq
