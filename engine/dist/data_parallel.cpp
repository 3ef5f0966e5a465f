#include "engine/dist/data_parallel.h"

#include <algorithm>
#include <cstdlib>
#include <sstream>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "engine/dist/gpu_util.h"
#include "engine/nn/batchnorm.h"

namespace ttq {

DataParallel::DataParallel(std::shared_ptr<Communicator> comm, const DistConfig& cfg, Device device)
    : comm_(std::move(comm)), cfg_(cfg), device_(device) {
  TTQ_CHECK(comm_, "distributed: no communicator");
  if (active() && device_ == Device::CUDA) select_local_gpu(*comm_, /*exclusive=*/false);
#ifdef _OPENMP
  // Several CPU ranks on one node share its cores: without OMP_NUM_THREADS each would start one
  // OpenMP thread per core (mpirun binds ranks to cores, which omp_get_num_procs already sees).
  if (active() && device_ == Device::CPU && comm_->local_world() > 1 && !std::getenv("OMP_NUM_THREADS"))
    omp_set_num_threads(std::max(1, omp_get_num_procs() / comm_->local_world()));
#endif
  // sync_bn works on every device and backend: its per-channel sums cross the ranks through the
  // host all_reduce_sum (engine/dist/sync_batchnorm.h).
}

DataParallel::~DataParallel() {
  reducer_.reset();
  if (net_)
    for (auto& [path, m] : net_->named_modules())
      if (auto* bn = dynamic_cast<BatchNorm*>(m)) bn->set_sync(nullptr);
}

void DataParallel::attach(std::shared_ptr<Module> net_ptr) {
  net_ = std::move(net_ptr);
  Module& net = *net_;
  if (!active()) return;
  for (auto& np : net.named_parameters()) broadcast_tensor(*comm_, np.param->value, 0);
  for (auto& nb : net.named_buffers()) broadcast_tensor(*comm_, *nb.tensor, 0);
  if (cfg_.sync_bn)
    for (auto& [path, m] : net.named_modules())
      if (auto* bn = dynamic_cast<BatchNorm*>(m)) bn->set_sync(comm_);
  ReducerOptions ro;
  ro.bucket_mb = cfg_.bucket_mb;
  ro.first_bucket_mb = cfg_.first_bucket_mb;
  reducer_ = std::make_unique<GradientReducer>(net, comm_, ro);
}

void DataParallel::set_context(std::string where, std::string checkpoint) {
  where_ = std::move(where);
  checkpoint_ = std::move(checkpoint);
}

void DataParallel::rethrow_in_context(const Error& e) const {
  if (where_.empty()) throw e;
  TTQ_FAIL(where_ << ": " << e.what()
                  << (checkpoint_.empty() ? std::string() : " (the last checkpoint, " + checkpoint_ + ", is unchanged)"));
}

void DataParallel::average_buffers(Module& net) {
  if (!active()) return;
  guarded([&] {
    for (auto& nb : net.named_buffers())
      if (nb.tensor->dtype() == DType::F32)
        all_reduce_average_tensor(*comm_, *nb.tensor);
      else
        broadcast_tensor(*comm_, *nb.tensor, 0);
  });
}

void DataParallel::begin_stage() {
  if (reducer_) reducer_->sync_at_next_finish();
}

void DataParallel::sync_device(const std::string& what) {
  if (active()) guarded([&] { comm_->sync_device(what); });
}

void DataParallel::sum(double* v, int64_t n, const char* what) {
  if (active()) guarded([&] { comm_->all_reduce_sum(v, n, what); });
}

void DataParallel::sum(int64_t* v, int64_t n, const char* what) {
  if (active()) guarded([&] { comm_->all_reduce_sum(v, n, what); });
}

double DataParallel::mean(double v) {
  if (!active()) return v;
  sum(&v, 1, "a value averaged over the ranks");
  return v / world();
}

std::string DataParallel::describe() const {
  std::ostringstream os;
  os << world() << " rank" << (world() == 1 ? "" : "s") << " (" << comm_->backend() << "), "
     << comm_->local_world() << " on this node";
  if (cfg_.sync_bn && active()) os << ", synchronised batch norm";
#ifdef _OPENMP
  if (device_ == Device::CPU) os << ", " << omp_get_max_threads() << " OpenMP thread" << (omp_get_max_threads() == 1 ? "" : "s") << " per rank";
#endif
  return os.str();
}

}  // namespace ttq
