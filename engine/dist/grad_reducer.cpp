#include "engine/dist/grad_reducer.h"

#include <chrono>
#include <cstdio>
#include <cstring>
#include <sstream>

#include "engine/dist/gpu_util.h"
#include "engine/nn/quantizable.h"

namespace ttq {

uint64_t BucketPlan::signature() const {
  // FNV-1a over (bucket count, per bucket: item count, per item: index, offset, bucket size).
  uint64_t h = 1469598103934665603ULL;
  auto mix = [&](uint64_t v) {
    for (int i = 0; i < 8; ++i) {
      h ^= (v >> (8 * i)) & 0xff;
      h *= 1099511628211ULL;
    }
  };
  mix(buckets.size());
  for (const auto& b : buckets) {
    mix(b.items.size());
    for (size_t i = 0; i < b.items.size(); ++i) {
      mix(b.items[i]);
      mix(static_cast<uint64_t>(b.offsets[i]));
    }
    mix(static_cast<uint64_t>(b.numel));
  }
  return h;
}

BucketPlan plan_buckets(const std::vector<int64_t>& numels, int64_t first_bucket_bytes, int64_t bucket_bytes) {
  TTQ_CHECK(first_bucket_bytes > 0 && bucket_bytes > 0,
            "distributed: bucket sizes must be positive (first " << first_bucket_bytes << " B, then " << bucket_bytes
                                                                 << " B)");
  BucketPlan plan;
  BucketPlan::Bucket cur;
  int64_t cap = first_bucket_bytes;
  for (size_t i = 0; i < numels.size(); ++i) {
    TTQ_CHECK(numels[i] >= 0, "distributed: tensor " << i << " has a negative size");
    cur.items.push_back(i);
    cur.offsets.push_back(cur.numel);
    cur.numel += numels[i];
    if (cur.numel * static_cast<int64_t>(sizeof(float)) >= cap) {  // full: start the next one
      plan.buckets.push_back(std::move(cur));
      cur = BucketPlan::Bucket{};
      cap = bucket_bytes;
    }
  }
  if (!cur.items.empty()) plan.buckets.push_back(std::move(cur));
  return plan;
}

// ---- what each module contributes (the one place that decides it) -----------------------------

std::vector<ReduceTensor> tensors_to_reduce(Module& m) {
  std::vector<ReduceTensor> out;
  const std::string prefix = m.path().empty() ? std::string() : m.path() + ".";
  auto* q = dynamic_cast<QuantizableLayer*>(&m);
  if (q && q->is_ternary() && q->defers_ternary_backward()) {
    // dL/dw_t in place of the latent weight's, Wp's and Wn's gradients: TernaryPass::backward()
    // derives those from the averaged dL/dw_t, identically on every rank.
    out.push_back({prefix + "weight (dL/dw_t)", q->weight().value.numel(),
                   [q]() -> Tensor& { return q->ternary_weight_grad(); }, &m, true});
    if (q->has_bias() && q->bias().trainable) {
      Parameter* b = &q->bias();
      out.push_back({prefix + "bias", b->value.numel(), [b]() -> Tensor& { return b->grad; }, &m, false});
    }
    return out;
  }
  for (auto& np : m.named_parameters()) {
    if (np.name.find('.') != std::string::npos) continue;  // a child's parameter
    if (!np.param->trainable) continue;
    Parameter* p = np.param;
    out.push_back({prefix + np.name, p->value.numel(), [p]() -> Tensor& { return p->grad; }, &m, false});
  }
  return out;
}

// ---- the reducer -------------------------------------------------------------------------------

GradientReducer::GradientReducer(Module& net, std::shared_ptr<Communicator> comm, const ReducerOptions& o)
    : net_(net), comm_(std::move(comm)), opt_(o) {
  TTQ_CHECK(comm_, "distributed: gradient reducer without a communicator");
  TTQ_CHECK(o.bucket_mb > 0 && o.first_bucket_mb > 0,
            "distributed: bucket_mb and first_bucket_mb must be positive (" << o.bucket_mb << ", " << o.first_bucket_mb
                                                                            << ")");
  build_plan();
  net_.set_backward_hook([this](Module& m) { on_backward(m); });
}

uint64_t GradientReducer::fingerprint() {
  uint64_t h = 1469598103934665603ULL;
  auto mix = [&](uint64_t v) {
    h ^= v;
    h *= 1099511628211ULL;
  };
  auto modules = net_.named_modules();
  for (auto it = modules.rbegin(); it != modules.rend(); ++it)
    for (const auto& t : tensors_to_reduce(*it->second)) {
      mix(reinterpret_cast<uintptr_t>(it->second));
      mix(static_cast<uint64_t>(t.numel));
      mix(t.deferred_ternary ? 1 : 2);
    }
  return h;
}

void GradientReducer::build_plan() {
  order_after_launched_work();
  items_.clear();
  module_items_.clear();
  buffers_.clear();
  total_numel_ = 0;
  auto modules = net_.named_modules();
  for (auto it = modules.rbegin(); it != modules.rend(); ++it) {
    Module* m = it->second;
    std::vector<ReduceTensor> ts = tensors_to_reduce(*m);
    // Within a module, reverse registration order too (bias before weight, like PyTorch's DDP).
    for (auto t = ts.rbegin(); t != ts.rend(); ++t) {
      module_items_[m].push_back(items_.size());
      items_.push_back(std::move(*t));
    }
  }
  std::vector<int64_t> numels;
  for (const auto& t : items_) {
    numels.push_back(t.numel);
    total_numel_ += t.numel;
  }
  plan_ = plan_buckets(numels, static_cast<int64_t>(opt_.first_bucket_mb * 1048576.0),
                       static_cast<int64_t>(opt_.bucket_mb * 1048576.0));
  // Same plan on every rank, or the all-reduces would mix different tensors.
  const uint64_t sig[2] = {plan_.signature(), static_cast<uint64_t>(total_numel_)};
  uint64_t root_sig[2] = {sig[0], sig[1]};
  comm_->broadcast(root_sig, sizeof root_sig, 0);
  TTQ_CHECK(root_sig[0] == sig[0] && root_sig[1] == sig[1],
            "distributed: the gradient buckets of " << comm_->who() << " (" << plan_.buckets.size() << " buckets, "
                                                    << total_numel_ << " values) differ from rank 0's ("
                                                    << root_sig[1] << " values): the ranks built different models, "
                                                                      "quantized different layers or use different bucket sizes");
  item_bucket_.assign(items_.size(), 0);
  item_offset_.assign(items_.size(), 0);
  for (size_t b = 0; b < plan_.buckets.size(); ++b) {
    const auto& bk = plan_.buckets[b];
    for (size_t k = 0; k < bk.items.size(); ++k) {
      item_bucket_[bk.items[k]] = b;
      item_offset_[bk.items[k]] = bk.offsets[k];
    }
    buffers_.push_back(Tensor::zeros({bk.numel}, DType::F32, comm_->buffer_device()));
  }
  works_.clear();
  works_.resize(plan_.buckets.size());
  planned_fingerprint_ = fingerprint();
  sync_next_finish_ = true;
  reset_step();
}

GradientReducer::~GradientReducer() {
  net_.set_backward_hook({});
  order_after_launched_work();
}

void GradientReducer::order_after_launched_work() noexcept {
  // Device buffers are freed (and handed out again) in the compute stream's order; a step that
  // ended early (an exception in the backward pass) may have left all-reduces running on the
  // communication stream that still write them. Host backends wait in their own way.
  if (!comm_ || comm_->buffer_device() != Device::CUDA) return;
  for (auto& w : works_) {
    if (!w) continue;
    try {
      w->wait_on_device();
    } catch (...) {  // a CUDA error here leaves nothing better to do
    }
  }
}

void GradientReducer::reset_step() {
  order_after_launched_work();
  step_started_ = false;
  pending_.assign(plan_.buckets.size(), 0);
  for (size_t b = 0; b < plan_.buckets.size(); ++b) pending_[b] = static_cast<int64_t>(plan_.buckets[b].items.size());
  packed_.assign(items_.size(), 0);
  for (auto& w : works_) w.reset();
  next_launch_ = 0;
}

void GradientReducer::on_backward(Module& m) {
  if (!step_started_) {
    // The model may have changed since the plan (layers made ternary, a TernaryPass created).
    if (fingerprint() != planned_fingerprint_) build_plan();
    step_started_ = true;
  }
  auto it = module_items_.find(&m);
  if (it != module_items_.end()) {
    for (size_t i : it->second) {
      TTQ_CHECK(!packed_[i], "distributed: " << m.who() << " ran its backward twice in one step");
      pack(i);
      packed_[i] = 1;
      --pending_[item_bucket_[i]];
    }
    launch_ready();
  }
  if (&m == &net_) finish();  // the whole backward pass is done
}

namespace {

void copy_values(Tensor& dst, const Tensor& src) {
  if (dst.device() == src.device()) {
    if (dst.nbytes() == 0) return;
    if (dst.device() == Device::CPU)
      std::memcpy(dst.raw(), src.raw(), dst.nbytes());
    else
      device_copy_async(dst.raw(), src.raw(), dst.nbytes());
  } else {
    dst.copy_from(src);  // staged through the host (a GPU model with a CPU backend)
  }
}

}  // namespace

void GradientReducer::pack(size_t i) {
  const ReduceTensor& t = items_[i];
  Tensor& g = t.get();
  TTQ_CHECK(g.defined() && g.numel() == t.numel && g.dtype() == DType::F32,
            "distributed: gradient '" << t.name << "' is " << (g.defined() ? g.str() : std::string("undefined"))
                                      << ", the bucket plan expects " << t.numel << " f32 values");
  Tensor flat_src = g.view({t.numel});
  Tensor dst = buffers_[item_bucket_[i]].slice(item_offset_[i], item_offset_[i] + t.numel);
  copy_values(dst, flat_src);
}

void GradientReducer::unpack(size_t i) {
  const ReduceTensor& t = items_[i];
  Tensor g = t.get().view({t.numel});
  Tensor src = buffers_[item_bucket_[i]].slice(item_offset_[i], item_offset_[i] + t.numel);
  copy_values(g, src);
}

void GradientReducer::launch(size_t b) {
  try {
    works_[b] = comm_->all_reduce_average_async(buffers_[b]);
  } catch (const Error& e) {
    TTQ_FAIL("gradient bucket " << b + 1 << " of " << plan_.buckets.size() << ": " << e.what());
  }
}

void GradientReducer::launch_ready() {
  if (!opt_.overlap) return;
  while (next_launch_ < plan_.buckets.size() && pending_[next_launch_] == 0) launch(next_launch_++);
}

void GradientReducer::finish() {
  if (!step_started_) return;
  last_finish_start_ = std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
  // Tensors whose module did not run a backward this step still take part (with the values they
  // hold), so every rank starts the same collectives.
  for (size_t i = 0; i < items_.size(); ++i)
    if (!packed_[i]) {
      pack(i);
      packed_[i] = 1;
      --pending_[item_bucket_[i]];
    }
  while (next_launch_ < plan_.buckets.size()) launch(next_launch_++);
  const auto t0 = std::chrono::steady_clock::now();
  // GPU buffers (nccl): the stream waits for the buckets and the host goes on; the step fence
  // below bounds how far it runs ahead and turns a dead peer into an error.
  const bool on_device = comm_->buffer_device() == Device::CUDA;
  for (size_t b = 0; b < works_.size(); ++b) {
    try {
      if (on_device)
        works_[b]->wait_on_device();
      else
        works_[b]->wait();
    } catch (const Error& e) {
      TTQ_FAIL("gradient bucket " << b + 1 << " of " << plan_.buckets.size() << ": " << e.what());
    }
  }
  last_wait_s_ = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  for (size_t i = 0; i < items_.size(); ++i) unpack(i);
  reset_step();
  if (!on_device) return;
  if (sync_next_finish_) {
    sync_next_finish_ = false;
    comm_->sync_device("the gradient all-reduces of the first step after a new bucket plan or stage");
  } else {
    comm_->step_fence();
  }
}

std::string GradientReducer::describe() const {
  std::ostringstream os;
  char buf[32];
  os << plan_.buckets.size() << " gradient bucket" << (plan_.buckets.size() == 1 ? "" : "s") << " (";
  for (size_t b = 0; b < plan_.buckets.size(); ++b) {
    if (b == 4 && plan_.buckets.size() > 5) {
      os << ", ...";
      break;
    }
    std::snprintf(buf, sizeof buf, "%s%.2f", b ? ", " : "", plan_.buckets[b].numel * 4.0 / 1048576.0);
    os << buf;
  }
  std::snprintf(buf, sizeof buf, "%.2f", total_numel_ * 4.0 / 1048576.0);
  os << " MiB), " << buf << " MiB of gradients in " << items_.size() << " tensors";
  return os.str();
}

}  // namespace ttq
