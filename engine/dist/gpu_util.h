// The few CUDA runtime calls data-parallel training needs outside the kernels: binding a rank to
// its GPU and stream-ordered device copies for packing gradient buckets. Without CUDA in the
// build, binding is an error and copies of device memory cannot happen. The rules for choosing
// and checking a rank's GPU are plain functions, tested without a GPU.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace ttq {

class Communicator;

// Makes the rank's GPU the calling thread's device (call before the model moves to the GPU): see
// local_gpu_index. exclusive (NCCL, which needs one GPU per rank): the ranks also exchange their
// GPUs' UUIDs, a collective, and two ranks on one GPU are an error on every rank.
void select_local_gpu(Communicator& comm, bool exclusive);

// The GPU index a rank takes among the `visible` ones of its process: its local rank when the node
// shows every local rank a GPU of its own (visible >= local_world); GPU 0 when the process sees a
// single GPU (a launcher that gives each rank its own: srun --gpus-per-task=1, one GPU per
// container, CUDA_VISIBLE_DEVICES per rank). Otherwise an error naming `who` and the counts.
int local_gpu_index(int visible, int local_rank, int local_world, const std::string& who);

using GpuUuid = std::array<uint8_t, 16>;
// The first two ranks (by rank) whose GPUs have the same UUID, or {-1, -1}.
std::pair<int, int> ranks_sharing_a_gpu(const std::vector<GpuUuid>& uuid_of_rank);
// "GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx", as nvidia-smi -L shows it.
std::string gpu_uuid_str(const GpuUuid& u);

// dst = src for device memory, enqueued on the calling thread's stream (cudaStreamPerThread, the
// stream the ops and allocations use), without waiting for it.
void device_copy_async(void* dst, const void* src, size_t bytes);

}  // namespace ttq
