// Device memory and discovery. Implemented by kernels/cuda/device_cuda.cpp when the CUDA backend
// is built, and by kernels/cpu/device_fallback.cpp (which reports "no GPU") otherwise.
#pragma once

#include <cstddef>
#include <memory>
#include <string>
#include <vector>

#include "engine/core/tensor.h"

namespace ttq {

// Number of usable CUDA devices; 0 when the runtime or driver is absent or fails (never throws).
int cuda_device_count();
// One line that says which GPUs were found, or why none can be used.
std::string cuda_device_summary();
bool cuda_built();

void* device_malloc(size_t nbytes);
void device_free_nothrow(void* p);
void device_copy(void* dst, Device dst_dev, const void* src, Device src_dev, size_t nbytes);
void device_memset_zero(void* p, size_t nbytes);
// Waits until the calling thread's stream (cudaStreamPerThread) has finished its work.
void device_synchronize();

// Host-to-device copies that overlap the computation. Each of `slots` slots has a staging area in
// pinned host memory; upload() copies the pieces there and enqueues the device copies on a
// dedicated copy stream. The compute stream (cudaStreamPerThread of the thread that calls
// acquire/release) is ordered against the copies by events, never by a host wait:
//   upload(s, ...)   the copy starts once the compute stream has passed the last release(s);
//   acquire(s)       later compute work waits for the slot's copies;
//   release(s)       the compute work enqueued so far is the last to read the slot's data.
// The host waits only before refilling a slot's staging area whose previous copy still runs. The
// device destinations must be allocated and ready (see device_synchronize) before upload().
// Without a GPU: a plain memcpy, and acquire/release do nothing.
struct UploadPiece {
  void* dst = nullptr;        // device memory
  const void* src = nullptr;  // any host memory
  size_t bytes = 0;
};
class AsyncUploader {
 public:
  explicit AsyncUploader(int slots);
  ~AsyncUploader();
  AsyncUploader(const AsyncUploader&) = delete;
  AsyncUploader& operator=(const AsyncUploader&) = delete;
  void upload(int slot, const std::vector<UploadPiece>& pieces);
  void acquire(int slot);
  void release(int slot);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Time marks on the compute stream: CUDA events for a CUDA timeline (what the GPU did between two
// marks), the host clock for a CPU one. elapsed_ms waits for the later mark.
class DeviceTimeline {
 public:
  DeviceTimeline(Device device, int marks);
  ~DeviceTimeline();
  DeviceTimeline(const DeviceTimeline&) = delete;
  DeviceTimeline& operator=(const DeviceTimeline&) = delete;
  void mark(int i);
  double elapsed_ms(int from, int to);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace ttq
