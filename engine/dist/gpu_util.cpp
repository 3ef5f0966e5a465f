#include "engine/dist/gpu_util.h"

#include "engine/dist/communicator.h"

#ifdef TTQ_HAVE_CUDA
#include <cuda_runtime_api.h>

#include "kernels/cuda/cuda_check.h"
#endif

namespace ttq {

#ifdef TTQ_HAVE_CUDA

void select_local_gpu(const Communicator& comm) {
  int count = 0;
  CUDA_CHECK(cudaGetDeviceCount(&count));
  TTQ_CHECK(comm.local_rank() < count,
            "distributed: " << comm.who() << " is local rank " << comm.local_rank() << " of " << comm.local_world()
                            << " on its node, which has " << count << " GPU" << (count == 1 ? "" : "s")
                            << ": start at most one process per GPU");
  CUDA_CHECK(cudaSetDevice(comm.local_rank()));
}

void device_copy_async(void* dst, const void* src, size_t bytes) {
  CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, cudaStreamPerThread));
}

#else

void select_local_gpu(const Communicator& comm) {
  TTQ_FAIL("distributed: " << comm.who() << " was asked to bind to a GPU but this build has no CUDA");
}

void device_copy_async(void*, const void*, size_t) { TTQ_FAIL("distributed: device copy without CUDA in the build"); }

#endif

}  // namespace ttq
