// Device functions for builds without the CUDA backend: there is never a GPU.
#ifndef TTQ_HAVE_CUDA
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

}  // namespace ttq
#endif
