// Device memory through CUDA's stream-ordered allocator pool, and device discovery that treats
// any runtime failure (no driver, no device) as "no GPU".
#include <cuda_runtime_api.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <limits>
#include <sstream>
#include <string>
#include <vector>

#include "kernels/cuda/cuda_check.h"
#include "kernels/device.h"

namespace ttq {

int cuda_device_count() {
  int n = 0;
  cudaError_t err = cudaGetDeviceCount(&n);
  if (err != cudaSuccess) {
    (void)cudaGetLastError();  // clear the sticky error so later queries start clean
    return 0;
  }
  return n;
}

std::string cuda_device_summary() {
  int n = 0;
  cudaError_t err = cudaGetDeviceCount(&n);
  if (err != cudaSuccess) {
    (void)cudaGetLastError();
    return std::string("no GPU: ") + cudaGetErrorString(err);
  }
  if (n == 0) return "no GPU: the CUDA runtime reports 0 devices";
  std::ostringstream os;
  os << n << " GPU" << (n > 1 ? "s" : "") << ":";
  for (int i = 0; i < n; ++i) {
    cudaDeviceProp p{};
    if (cudaGetDeviceProperties(&p, i) == cudaSuccess)
      os << " [" << i << "] " << p.name << " (sm_" << p.major << p.minor << ", "
         << (p.totalGlobalMem >> 20) << " MiB)";
  }
  return os.str();
}

bool cuda_built() { return true; }

namespace {
// The current device's stream-ordered pool keeps the memory freed into it (release threshold:
// unlimited), as a caching allocator does, instead of handing it back to the driver at every
// synchronisation and mapping it again at the next step. Set once per device.
void keep_pool_memory() {
  static std::atomic<uint64_t> done{0};
  int dev = 0;
  CUDA_CHECK(cudaGetDevice(&dev));
  if (dev < 0 || dev >= 64) return;
  const uint64_t bit = uint64_t{1} << dev;
  if (done.load(std::memory_order_relaxed) & bit) return;
  cudaMemPool_t pool = nullptr;
  CUDA_CHECK(cudaDeviceGetDefaultMemPool(&pool, dev));
  uint64_t threshold = std::numeric_limits<uint64_t>::max();
  CUDA_CHECK(cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &threshold));
  done.fetch_or(bit);
}
}  // namespace

void* device_malloc(size_t nbytes) {
  keep_pool_memory();
  void* p = nullptr;
  cudaError_t e = cudaMallocAsync(&p, nbytes, cudaStreamPerThread);
  if (e == cudaErrorMemoryAllocation) {
    // The pool may hold enough freed memory in the wrong pieces: hand its unused memory back to
    // the driver (where it can be mapped again in one piece, and where cuBLAS and NCCL allocate
    // too) and try once more. No wait for the stream, which may be waiting for a collective whose
    // peer is gone.
    (void)cudaGetLastError();
    int dev = 0;
    cudaMemPool_t pool = nullptr;
    CUDA_CHECK(cudaGetDevice(&dev));
    CUDA_CHECK(cudaDeviceGetDefaultMemPool(&pool, dev));
    CUDA_CHECK(cudaMemPoolTrimTo(pool, 0));
    e = cudaMallocAsync(&p, nbytes, cudaStreamPerThread);
  }
  if (e != cudaSuccess) {
    (void)cudaGetLastError();
    size_t free_bytes = 0, total_bytes = 0;
    const bool info = cudaMemGetInfo(&free_bytes, &total_bytes) == cudaSuccess;
    (void)cudaGetLastError();
    TTQ_FAIL("device memory: cannot allocate " << (nbytes >> 20) << " MiB (" << cudaGetErrorName(e) << ": "
                                               << cudaGetErrorString(e) << ")"
                                               << (info ? "; " + std::to_string(free_bytes >> 20) + " of " +
                                                              std::to_string(total_bytes >> 20) + " MiB free"
                                                        : std::string())
                                               << (e == cudaErrorMemoryAllocation
                                                       ? ": a smaller batch_size, or precision \"bf16\", needs less"
                                                       : ""));
  }
  return p;
}

void device_free_nothrow(void* p) { CUDA_CHECK_NOTHROW(cudaFreeAsync(p, cudaStreamPerThread)); }

void device_copy(void* dst, Device, const void* src, Device, size_t nbytes) {
  CUDA_CHECK(cudaMemcpyAsync(dst, src, nbytes, cudaMemcpyDefault, cudaStreamPerThread));
  CUDA_CHECK(cudaStreamSynchronize(cudaStreamPerThread));
}

void device_memset_zero(void* p, size_t nbytes) {
  CUDA_CHECK(cudaMemsetAsync(p, 0, nbytes, cudaStreamPerThread));
}

void device_synchronize() { CUDA_CHECK(cudaStreamSynchronize(cudaStreamPerThread)); }

// ---- AsyncUploader -------------------------------------------------------------------------------

struct AsyncUploader::Impl {
  struct Slot {
    void* staging = nullptr;  // pinned host memory
    size_t capacity = 0;
    cudaEvent_t copied = nullptr, released = nullptr;
    bool copy_pending = false, was_released = false;
  };
  cudaStream_t stream = nullptr;
  std::vector<Slot> slots;

  ~Impl() {
    if (stream) CUDA_CHECK_NOTHROW(cudaStreamSynchronize(stream));
    for (Slot& s : slots) {
      if (s.staging) CUDA_CHECK_NOTHROW(cudaFreeHost(s.staging));
      if (s.copied) CUDA_CHECK_NOTHROW(cudaEventDestroy(s.copied));
      if (s.released) CUDA_CHECK_NOTHROW(cudaEventDestroy(s.released));
    }
    if (stream) CUDA_CHECK_NOTHROW(cudaStreamDestroy(stream));
  }
  Slot& slot(int i) {
    TTQ_CHECK(i >= 0 && i < static_cast<int>(slots.size()), "AsyncUploader: no slot " << i);
    return slots[static_cast<size_t>(i)];
  }
};

AsyncUploader::AsyncUploader(int slots) : impl_(std::make_unique<Impl>()) {
  TTQ_CHECK(slots > 0, "AsyncUploader: needs at least one slot, got " << slots);
  CUDA_CHECK(cudaStreamCreateWithFlags(&impl_->stream, cudaStreamNonBlocking));
  impl_->slots.resize(static_cast<size_t>(slots));
  for (auto& s : impl_->slots) {
    CUDA_CHECK(cudaEventCreateWithFlags(&s.copied, cudaEventDisableTiming));
    CUDA_CHECK(cudaEventCreateWithFlags(&s.released, cudaEventDisableTiming));
  }
}

AsyncUploader::~AsyncUploader() = default;

void AsyncUploader::upload(int slot, const std::vector<UploadPiece>& pieces) {
  Impl::Slot& s = impl_->slot(slot);
  size_t total = 0;
  for (const auto& p : pieces) total += (p.bytes + 255) / 256 * 256;
  // The staging area is reused: its previous copy must be done (normally long since).
  if (s.copy_pending) CUDA_CHECK(cudaEventSynchronize(s.copied));
  if (total > s.capacity) {
    if (s.staging) CUDA_CHECK(cudaFreeHost(s.staging));
    s.staging = nullptr;
    s.capacity = 0;
    CUDA_CHECK(cudaMallocHost(&s.staging, total));
    s.capacity = total;
  }
  if (s.was_released) CUDA_CHECK(cudaStreamWaitEvent(impl_->stream, s.released, 0));
  size_t at = 0;
  for (const auto& p : pieces) {
    if (p.bytes == 0) continue;
    char* stage = static_cast<char*>(s.staging) + at;
    std::memcpy(stage, p.src, p.bytes);
    CUDA_CHECK(cudaMemcpyAsync(p.dst, stage, p.bytes, cudaMemcpyHostToDevice, impl_->stream));
    at += (p.bytes + 255) / 256 * 256;
  }
  CUDA_CHECK(cudaEventRecord(s.copied, impl_->stream));
  s.copy_pending = true;
}

void AsyncUploader::acquire(int slot) {
  Impl::Slot& s = impl_->slot(slot);
  if (s.copy_pending) CUDA_CHECK(cudaStreamWaitEvent(cudaStreamPerThread, s.copied, 0));
}

void AsyncUploader::release(int slot) {
  Impl::Slot& s = impl_->slot(slot);
  CUDA_CHECK(cudaEventRecord(s.released, cudaStreamPerThread));
  s.was_released = true;
}

// ---- DeviceTimeline ------------------------------------------------------------------------------

struct DeviceTimeline::Impl {
  Device device = Device::CPU;
  std::vector<cudaEvent_t> events;
  std::vector<std::chrono::steady_clock::time_point> host;
  ~Impl() {
    for (cudaEvent_t e : events)
      if (e) CUDA_CHECK_NOTHROW(cudaEventDestroy(e));
  }
};

DeviceTimeline::DeviceTimeline(Device device, int marks) : impl_(std::make_unique<Impl>()) {
  TTQ_CHECK(marks > 0, "DeviceTimeline: needs marks, got " << marks);
  impl_->device = device;
  if (device == Device::CUDA) {
    impl_->events.assign(static_cast<size_t>(marks), nullptr);
    for (auto& e : impl_->events) CUDA_CHECK(cudaEventCreate(&e));
  } else {
    impl_->host.resize(static_cast<size_t>(marks));
  }
}

DeviceTimeline::~DeviceTimeline() = default;

void DeviceTimeline::mark(int i) {
  if (impl_->device == Device::CUDA)
    CUDA_CHECK(cudaEventRecord(impl_->events.at(static_cast<size_t>(i)), cudaStreamPerThread));
  else
    impl_->host.at(static_cast<size_t>(i)) = std::chrono::steady_clock::now();
}

double DeviceTimeline::elapsed_ms(int from, int to) {
  if (impl_->device != Device::CUDA)
    return std::chrono::duration<double, std::milli>(impl_->host.at(static_cast<size_t>(to)) -
                                                     impl_->host.at(static_cast<size_t>(from)))
        .count();
  cudaEvent_t a = impl_->events.at(static_cast<size_t>(from)), b = impl_->events.at(static_cast<size_t>(to));
  CUDA_CHECK(cudaEventSynchronize(b));
  float ms = 0.0f;
  CUDA_CHECK(cudaEventElapsedTime(&ms, a, b));
  return ms;
}

}  // namespace ttq
