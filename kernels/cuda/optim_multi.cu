// Multi-tensor SGD and Adam (see optim_multi.h). One thread block per (tensor, chunk); thread j
// updates elements begin + j, begin + j + blockDim.x, ... Elements are independent, so the result
// does not depend on the plan.
#include "kernels/cuda/optim_multi.h"

#include <algorithm>
#include <cstring>
#include <type_traits>

#include "kernels/cuda/cuda_check.h"
#include "kernels/optim_math.h"

namespace ttq::cuda {

static_assert(std::is_trivially_copyable_v<OptimMultiTensorEntry>, "copied to the device");

namespace {

constexpr int kThreads = 256;

struct Work {
  const OptimMultiTensorEntry* t;
  int64_t begin, end;
};

__device__ Work block_work(const OptimMultiTensorEntry* tensors, const detail::MultiBlock* blocks,
                           int64_t first_block, int64_t chunk) {
  const detail::MultiBlock e = blocks[first_block + blockIdx.x];
  const OptimMultiTensorEntry* t = tensors + e.layer;
  const int64_t begin = e.chunk * chunk;
  return {t, begin, begin + chunk < t->n ? begin + chunk : t->n};
}

__global__ void __launch_bounds__(kThreads)
    sgd_blocks(const OptimMultiTensorEntry* tensors, const detail::MultiBlock* blocks, int64_t first_block,
               int64_t chunk, OptimGroupValues groups, float momentum, bool nesterov, bool first_step) {
  const Work w = block_work(tensors, blocks, first_block, chunk);
  float* __restrict__ p = w.t->p;
  const float* __restrict__ g = w.t->g;
  float* __restrict__ buf = w.t->s1;
  const float lr = groups.lr[w.t->group], wd = groups.wd[w.t->group];
  for (int64_t i = w.begin + threadIdx.x; i < w.end; i += kThreads) {
    float v = p[i], b = buf ? buf[i] : 0.0f;
    math::sgd_update(v, g[i], b, lr, momentum, wd, nesterov, first_step);
    p[i] = v;
    if (buf) buf[i] = b;
  }
}

__global__ void __launch_bounds__(kThreads)
    adam_blocks(const OptimMultiTensorEntry* tensors, const detail::MultiBlock* blocks, int64_t first_block,
                int64_t chunk, OptimGroupValues groups, float beta1, float beta2, float eps, float bc1, float bc2) {
  const Work w = block_work(tensors, blocks, first_block, chunk);
  float* __restrict__ p = w.t->p;
  const float* __restrict__ g = w.t->g;
  float* __restrict__ m = w.t->s1;
  float* __restrict__ v = w.t->s2;
  const float lr = groups.lr[w.t->group], wd = groups.wd[w.t->group];
  for (int64_t i = w.begin + threadIdx.x; i < w.end; i += kThreads) {
    float x = p[i], mi = m[i], vi = v[i];
    math::adam_update(x, g[i], mi, vi, lr, beta1, beta2, eps, wd, bc1, bc2);
    p[i] = x;
    m[i] = mi;
    v[i] = vi;
  }
}

size_t align_up(size_t x, size_t a) { return (x + a - 1) / a * a; }

}  // namespace

OptimMultiTensor::OptimMultiTensor(std::vector<OptimMultiTensorEntry> tensors) : tensors_(std::move(tensors)) {
  limits_ = TtqMultiTensor::default_limits();
  limits_.chunk = 4096;  // 16 elements per thread: enough blocks for small models
  std::vector<int64_t> sizes;
  for (size_t i = 0; i < tensors_.size(); ++i) {
    const auto& t = tensors_[i];
    TTQ_CHECK(t.n >= 0, "multi-tensor optimizer: tensor " << i << " has negative size " << t.n);
    TTQ_CHECK(t.n == 0 || (t.p && t.g), "multi-tensor optimizer: tensor " << i << " lacks its value or gradient");
    TTQ_CHECK(t.group >= 0 && t.group < kOptimGroups, "multi-tensor optimizer: tensor " << i << " has group "
                                                                                        << t.group);
    sizes.push_back(t.n);
  }
  pass_ = detail::plan_pass(sizes, limits_);
  const size_t tensors_bytes = align_up(tensors_.size() * sizeof(OptimMultiTensorEntry), 256);
  const size_t blocks_bytes = pass_.host_blocks.size() * sizeof(detail::MultiBlock);
  std::vector<char> staging(tensors_bytes + blocks_bytes);
  if (!tensors_.empty()) std::memcpy(staging.data(), tensors_.data(), tensors_.size() * sizeof(tensors_[0]));
  if (blocks_bytes) std::memcpy(staging.data() + tensors_bytes, pass_.host_blocks.data(), blocks_bytes);
  tables_.allocate(staging.size());
  // Copied and waited for here: the kernels may run on any stream, a non-blocking one included.
  if (!staging.empty()) {
    CUDA_CHECK(cudaMemcpyAsync(tables_.get(), staging.data(), staging.size(), cudaMemcpyHostToDevice,
                               cudaStreamPerThread));
    CUDA_CHECK(cudaStreamSynchronize(cudaStreamPerThread));
  }
  const char* base = static_cast<const char*>(tables_.get());
  tensors_dev_ = reinterpret_cast<const OptimMultiTensorEntry*>(base);
  pass_.blocks = reinterpret_cast<const detail::MultiBlock*>(base + tensors_bytes);
}

OptimMultiTensor::~OptimMultiTensor() = default;

void OptimMultiTensor::sgd(cudaStream_t stream, const OptimGroupValues& groups, float momentum, bool nesterov,
                           bool first_step) {
  if (momentum != 0.0f)
    for (const auto& t : tensors_)
      TTQ_CHECK(t.n == 0 || t.s1, "multi-tensor SGD: momentum " << momentum << " for a tensor without a buffer");
  for (const auto& launch : pass_.launches) {
    sgd_blocks<<<launch.blocks, kThreads, 0, stream>>>(tensors_dev_, pass_.blocks, launch.first_block,
                                                       limits_.chunk, groups, momentum, nesterov, first_step);
    CUDA_CHECK(cudaGetLastError());
  }
}

void OptimMultiTensor::adam(cudaStream_t stream, const OptimGroupValues& groups, float beta1, float beta2, float eps,
                            float bc1, float bc2) {
  for (const auto& t : tensors_)
    TTQ_CHECK(t.n == 0 || (t.s1 && t.s2), "multi-tensor Adam: a tensor lacks its moments");
  for (const auto& launch : pass_.launches) {
    adam_blocks<<<launch.blocks, kThreads, 0, stream>>>(tensors_dev_, pass_.blocks, launch.first_block, limits_.chunk,
                                                        groups, beta1, beta2, eps, bc1, bc2);
    CUDA_CHECK(cudaGetLastError());
  }
}

}  // namespace ttq::cuda
