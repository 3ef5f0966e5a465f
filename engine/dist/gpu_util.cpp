#include "engine/dist/gpu_util.h"

#include <cstdio>
#include <cstring>

#include "engine/core/error.h"
#include "engine/dist/communicator.h"

#ifdef TTQ_HAVE_CUDA
#include <cuda_runtime_api.h>

#include "kernels/cuda/cuda_check.h"
#endif

namespace ttq {

int local_gpu_index(int visible, int local_rank, int local_world, const std::string& who) {
  TTQ_CHECK(visible > 0, "distributed: " << who << " sees no GPU");
  if (visible >= local_world && local_rank < visible) return local_rank;
  if (visible == 1) return 0;
  TTQ_FAIL("distributed: " << who << " is local rank " << local_rank << " of " << local_world
                           << " on its node and sees " << visible
                           << " GPUs: start at most one process per GPU, or give each rank its own "
                              "(CUDA_VISIBLE_DEVICES per rank, srun --gpus-per-task=1)");
}

std::pair<int, int> ranks_sharing_a_gpu(const std::vector<GpuUuid>& uuid_of_rank) {
  for (size_t a = 0; a < uuid_of_rank.size(); ++a)
    for (size_t b = a + 1; b < uuid_of_rank.size(); ++b)
      if (uuid_of_rank[a] == uuid_of_rank[b]) return {static_cast<int>(a), static_cast<int>(b)};
  return {-1, -1};
}

std::string gpu_uuid_str(const GpuUuid& u) {
  std::string s = "GPU-";
  char hex[3];
  for (size_t i = 0; i < u.size(); ++i) {
    if (i == 4 || i == 6 || i == 8 || i == 10) s += '-';
    std::snprintf(hex, sizeof hex, "%02x", u[i]);
    s += hex;
  }
  return s;
}

#ifdef TTQ_HAVE_CUDA

void select_local_gpu(Communicator& comm, bool exclusive) {
  int count = 0;
  CUDA_CHECK(cudaGetDeviceCount(&count));
  const int device = local_gpu_index(count, comm.local_rank(), comm.local_world(), comm.who());
  CUDA_CHECK(cudaSetDevice(device));
  if (!exclusive || comm.world() == 1) return;
  // Every rank's UUID, gathered by a sum in which each rank fills only its own slot.
  cudaDeviceProp prop{};
  CUDA_CHECK(cudaGetDeviceProperties(&prop, device));
  const auto world = static_cast<size_t>(comm.world());
  std::vector<int64_t> slots(2 * world, 0);
  std::memcpy(&slots[2 * static_cast<size_t>(comm.rank())], prop.uuid.bytes, sizeof(GpuUuid));
  comm.all_reduce_sum(slots.data(), static_cast<int64_t>(slots.size()), "the ranks' GPU UUIDs");
  std::vector<GpuUuid> uuids(world);
  for (size_t r = 0; r < world; ++r) std::memcpy(uuids[r].data(), &slots[2 * r], sizeof(GpuUuid));
  const auto [a, b] = ranks_sharing_a_gpu(uuids);
  TTQ_CHECK(a < 0, "distributed (nccl): ranks " << a << " and " << b << " both use " << gpu_uuid_str(uuids[a])
                                                << ": NCCL needs one GPU per rank; give each rank its own "
                                                   "(CUDA_VISIBLE_DEVICES per rank, srun --gpus-per-task=1) or "
                                                   "start fewer ranks per node");
}

void device_copy_async(void* dst, const void* src, size_t bytes) {
  CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, cudaStreamPerThread));
}

#else

void select_local_gpu(Communicator& comm, bool) {
  TTQ_FAIL("distributed: " << comm.who() << " was asked to bind to a GPU but this build has no CUDA");
}

void device_copy_async(void*, const void*, size_t) { TTQ_FAIL("distributed: device copy without CUDA in the build"); }

#endif

}  // namespace ttq
