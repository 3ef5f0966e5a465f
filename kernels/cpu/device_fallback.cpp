// Device functions for builds without the CUDA backend: there is never a GPU.
#ifndef TTQ_HAVE_CUDA
#include <chrono>
#include <vector>

#include "kernels/device.h"

namespace ttq {

int cuda_device_count() { return 0; }
std::string cuda_device_summary() { return "no GPU: built without the CUDA backend"; }
bool cuda_built() { return false; }

void* device_malloc(size_t) { TTQ_FAIL("CUDA tensor requested but this build has no CUDA backend"); }
void device_free_nothrow(void*) {}
void device_copy(void*, Device, const void*, Device, size_t) {
  TTQ_FAIL("device copy requested but this build has no CUDA backend");
}
void device_memset_zero(void*, size_t) {
  TTQ_FAIL("device memset requested but this build has no CUDA backend");
}
void device_synchronize() {}

struct AsyncUploader::Impl {};
AsyncUploader::AsyncUploader(int) {}
AsyncUploader::~AsyncUploader() = default;
void AsyncUploader::upload(int, const std::vector<UploadPiece>&) {
  TTQ_FAIL("device upload requested but this build has no CUDA backend");
}
void AsyncUploader::acquire(int) {}
void AsyncUploader::release(int) {}

struct DeviceTimeline::Impl {
  std::vector<std::chrono::steady_clock::time_point> marks;
};
DeviceTimeline::DeviceTimeline(Device device, int marks) : impl_(std::make_unique<Impl>()) {
  TTQ_CHECK(device == Device::CPU, "a CUDA timeline in a build without the CUDA backend");
  TTQ_CHECK(marks > 0, "DeviceTimeline: needs marks, got " << marks);
  impl_->marks.resize(static_cast<size_t>(marks));
}
DeviceTimeline::~DeviceTimeline() = default;
void DeviceTimeline::mark(int i) { impl_->marks.at(static_cast<size_t>(i)) = std::chrono::steady_clock::now(); }
double DeviceTimeline::elapsed_ms(int from, int to) {
  return std::chrono::duration<double, std::milli>(impl_->marks.at(static_cast<size_t>(to)) -
                                                   impl_->marks.at(static_cast<size_t>(from)))
      .count();
}

}  // namespace ttq
#endif
