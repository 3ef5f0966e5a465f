// Data-parallel gradient averaging: flat buckets, all-reduced while the backward pass goes on.
//
// Plan (plan_buckets): the tensors to reduce, in reverse layer order (about the order the backward
// pass finishes them), are packed greedily into flat buckets, each closed as soon as it holds at
// least its size (as PyTorch's DDP does): first_bucket_mb for the first (small, so communication
// starts early in the backward pass), bucket_mb for the others; a tensor is never split, so a
// bucket ends at most one tensor past its size. The plan depends only on the model and the two
// sizes, so it is the same on every rank; the reducer checks that against rank 0's when built.
//
// A step: the reducer hooks every module's backward (Module::set_backward_hook). When a module's
// backward is done its tensors are copied into their bucket; a complete bucket is handed to the
// communicator at once (all_reduce_average_async: the communication thread on the CPU, the
// communication stream on the GPU), buckets strictly in plan order so every rank starts the same
// collectives in the same order. When the model's own backward ends (the hook of the root module)
// the reducer starts what is left, waits for every bucket and copies the averages back into the
// gradients: net.backward() returns with averaged gradients, so a training step needs no change
// (forward, loss, net.backward(), [TernaryPass::backward()], optimizer step).
//
// The first hook of each step checks that the model still has the tensors the plan was made for
// (a stage that quantizes layers adds Wp/Wn; a TernaryPass switches layers to dL/dw_t) and plans
// again when not, on every rank at the same point.
//
// What a module contributes is decided in one place, tensors_to_reduce(): a ternary layer whose
// TTQ backward is deferred (QuantizableLayer::defers_ternary_backward, a TernaryPass exists)
// contributes dL/dw_t and its bias gradient; the pass then computes the latent, Wp and Wn gradients
// from the averaged dL/dw_t on every rank (the TTQ backward is linear in dL/dw_t and the codes and
// scales are the same everywhere, so this equals averaging those gradients). Every other module
// contributes the gradients of its own trainable parameters (Wp/Wn included).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "engine/dist/communicator.h"
#include "engine/nn/module.h"

namespace ttq {

struct BucketPlan {
  struct Bucket {
    std::vector<size_t> items;     // indices into the tensor list, in order
    std::vector<int64_t> offsets;  // element offset of each item in the flat buffer
    int64_t numel = 0;
  };
  std::vector<Bucket> buckets;
  // A checksum of the sizes and the bucket boundaries (compared across ranks).
  uint64_t signature() const;
};

// numels: element counts of the f32 tensors in the order they become ready.
BucketPlan plan_buckets(const std::vector<int64_t>& numels, int64_t first_bucket_bytes, int64_t bucket_bytes);

// One tensor to average. get() returns it at the moment of use (a layer may reallocate it).
struct ReduceTensor {
  std::string name;
  int64_t numel = 0;
  std::function<Tensor&()> get;
  Module* module = nullptr;
  bool deferred_ternary = false;  // dL/dw_t of a deferring ternary layer
};

// The tensors a module contributes to the all-reduce (its own, not its children's).
std::vector<ReduceTensor> tensors_to_reduce(Module& m);

struct ReducerOptions {
  double bucket_mb = 25.0;
  double first_bucket_mb = 1.0;
  bool overlap = true;  // false: start every bucket in finish() (to measure what overlap saves)
};

class GradientReducer {
 public:
  // Plans the buckets over net's modules in reverse order and installs the backward hooks. Build
  // it after the model is on its device. Collective: every rank builds its reducer at the same point.
  GradientReducer(Module& net, std::shared_ptr<Communicator> comm, const ReducerOptions& o);
  ~GradientReducer();  // removes the hooks; buffers are freed after the all-reduces launched on them
  GradientReducer(const GradientReducer&) = delete;
  GradientReducer& operator=(const GradientReducer&) = delete;

  // Starts the buckets not started yet, waits for all and writes the averages into the gradients;
  // runs by itself at the end of net.backward() (a no-op when no backward ran since the last one).
  // Throws (naming the bucket) when a collective fails or times out.
  void finish();
  // On device buffers, the next finish() (and the first after a new plan) waits on the host, with
  // the timeout, for its all-reduces (Communicator::sync_device) instead of only fencing the
  // previous step: for a step after which something blocks on the device without a timeout.
  void sync_at_next_finish() { sync_next_finish_ = true; }

  const BucketPlan& plan() const { return plan_; }
  const std::vector<ReduceTensor>& tensors() const { return items_; }
  int64_t total_numel() const { return total_numel_; }
  // Seconds finish() spent waiting for communication in the last step (what was not overlapped,
  // plus any wait for a slower rank), and when that step's finish() began (steady clock seconds:
  // the end of this rank's backward pass; comparable between the processes of one machine).
  // Host backends only: with nccl the device waits, and this is the host's enqueue time.
  double last_wait_seconds() const { return last_wait_s_; }
  double last_finish_start() const { return last_finish_start_; }
  // "3 buckets (1.00, 25.00, 20.73 MiB), 46.73 MiB of gradients"
  std::string describe() const;

 private:
  void build_plan();
  uint64_t fingerprint();
  void on_backward(Module& m);
  void pack(size_t item);
  void unpack(size_t item);
  void launch_ready();
  void launch(size_t bucket);
  void reset_step();
  bool sync_next_finish_ = false;
  // On device buffers: the compute stream waits for every all-reduce launched and not yet waited
  // for (no host wait), so that nothing frees or reuses a buffer a collective still writes.
  void order_after_launched_work() noexcept;

  Module& net_;
  std::shared_ptr<Communicator> comm_;
  ReducerOptions opt_;
  std::vector<ReduceTensor> items_;
  BucketPlan plan_;
  std::vector<size_t> item_bucket_;
  std::vector<int64_t> item_offset_;
  std::unordered_map<Module*, std::vector<size_t>> module_items_;
  std::vector<Tensor> buffers_;
  std::vector<int64_t> pending_;  // items of each bucket not packed yet this step
  std::vector<char> packed_;
  std::vector<std::unique_ptr<CommWork>> works_;
  size_t next_launch_ = 0;
  bool step_started_ = false;
  uint64_t planned_fingerprint_ = 0;
  int64_t total_numel_ = 0;
  double last_wait_s_ = 0.0, last_finish_start_ = 0.0;
};

}  // namespace ttq
