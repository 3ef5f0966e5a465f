// The few CUDA runtime calls data-parallel training needs outside the kernels: binding a rank to
// its GPU and stream-ordered device copies for packing gradient buckets. Without CUDA in the
// build, binding is an error and copies of device memory cannot happen.
#pragma once

#include <cstddef>

namespace ttq {

class Communicator;

// Makes GPU local_rank the calling thread's device (call before the model moves to the GPU).
// Several ranks per node need one GPU each: an error names the rank when the node has too few.
void select_local_gpu(const Communicator& comm);

// dst = src for device memory, enqueued on the calling thread's stream (cudaStreamPerThread, the
// stream the ops and allocations use), without waiting for it.
void device_copy_async(void* dst, const void* src, size_t bytes);

}  // namespace ttq
