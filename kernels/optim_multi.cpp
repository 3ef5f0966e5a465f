#include "kernels/optim_multi.h"

#include "kernels/ops.h"
#ifdef TTQ_HAVE_CUDA
#include "kernels/cuda/optim_multi.h"
#endif

namespace ttq::ops {

#ifdef TTQ_HAVE_CUDA
static_assert(kParamGroups == cuda::kOptimGroups, "the same parameter groups on both sides");
struct MultiTensorOptimizer::Gpu {
  std::unique_ptr<cuda::OptimMultiTensor> multi;
};
#else
struct MultiTensorOptimizer::Gpu {};
#endif


MultiTensorOptimizer::MultiTensorOptimizer(std::vector<OptimTensorRefs> tensors) : tensors_(std::move(tensors)) {
  bool first = true;
  for (size_t i = 0; i < tensors_.size(); ++i) {
    const OptimTensorRefs& t = tensors_[i];
    TTQ_CHECK(t.p && t.g, "multi-tensor optimizer: tensor " << i << " lacks its value or gradient");
    TTQ_CHECK(t.group >= 0 && t.group < kParamGroups, "multi-tensor optimizer: tensor " << i << " has group "
                                                                                         << t.group);
    for (const Tensor* x : {static_cast<const Tensor*>(t.p), t.g, static_cast<const Tensor*>(t.s1),
                            static_cast<const Tensor*>(t.s2)}) {
      if (!x) continue;
      TTQ_CHECK(x->numel() == t.p->numel(), "multi-tensor optimizer: tensor " << i << ": " << x->str()
                                                                              << " does not match " << t.p->str());
      if (first) device_ = x->device();
      first = false;
      TTQ_CHECK(x->device() == device_, "multi-tensor optimizer: tensors on different devices (" << x->str() << ")");
    }
  }
  std::vector<const Tensor*> watched;
  for (const auto& t : tensors_) watched.insert(watched.end(), {t.p, t.g, t.s1, t.s2});
  watch_.watch(std::move(watched));
}

MultiTensorOptimizer::~MultiTensorOptimizer() = default;

void MultiTensorOptimizer::refresh() {
#ifdef TTQ_HAVE_CUDA
  if (gpu_ && gpu_->multi && !watch_.moved()) return;
  std::vector<cuda::OptimMultiTensorEntry> entries;
  for (const auto& t : tensors_) {
    TTQ_CHECK(t.p->device() == Device::CUDA && t.g->device() == Device::CUDA &&
                  (!t.s1 || t.s1->device() == Device::CUDA) && (!t.s2 || t.s2->device() == Device::CUDA),
              "multi-tensor optimizer: a parameter, its gradient or its optimizer state is not on the GPU ("
                  << t.p->str() << "); create the optimizer after moving the model");
    cuda::OptimMultiTensorEntry e;
    e.p = t.p->data_ptr<float>();
    e.g = t.g->data_ptr<float>();
    e.s1 = t.s1 ? t.s1->data_ptr<float>() : nullptr;
    e.s2 = t.s2 ? t.s2->data_ptr<float>() : nullptr;
    e.n = t.p->numel();
    e.group = t.group;
    entries.push_back(e);
  }
  if (!gpu_) gpu_ = std::make_unique<Gpu>();
  gpu_->multi.reset();
  gpu_->multi = std::make_unique<cuda::OptimMultiTensor>(std::move(entries));
  watch_.remember();
#endif
}

#ifdef TTQ_HAVE_CUDA
namespace {
cuda::OptimGroupValues to_cuda(const GroupRates& r) {
  cuda::OptimGroupValues v;
  for (int k = 0; k < kParamGroups; ++k) {
    v.lr[k] = r.lr[k];
    v.wd[k] = r.wd[k];
  }
  return v;
}
}  // namespace
#endif

void MultiTensorOptimizer::sgd(const GroupRates& rates, float momentum, bool nesterov, bool first_step) {
  if (device_ == Device::CUDA) {
#ifdef TTQ_HAVE_CUDA
    refresh();
    gpu_->multi->sgd(cudaStreamPerThread, to_cuda(rates), momentum, nesterov, first_step);
    return;
#endif
  }
  for (auto& t : tensors_)
    sgd_update(*t.p, *t.g, t.s1, rates.lr[t.group], momentum, rates.wd[t.group], nesterov, first_step);
}

void MultiTensorOptimizer::adam(const GroupRates& rates, float beta1, float beta2, float eps, float bc1, float bc2) {
  if (device_ == Device::CUDA) {
#ifdef TTQ_HAVE_CUDA
    refresh();
    gpu_->multi->adam(cudaStreamPerThread, to_cuda(rates), beta1, beta2, eps, bc1, bc2);
    return;
#endif
  }
  for (auto& t : tensors_) {
    TTQ_CHECK(t.s1 && t.s2, "multi-tensor Adam: tensor " << t.p->str() << " lacks its moments");
    adam_update(*t.p, *t.g, *t.s1, *t.s2, rates.lr[t.group], beta1, beta2, eps, rates.wd[t.group], bc1, bc2);
  }
}

int MultiTensorOptimizer::launches() const {
#ifdef TTQ_HAVE_CUDA
  if (gpu_ && gpu_->multi) return gpu_->multi->launches();
#endif
  return 0;
}

}  // namespace ttq::ops
