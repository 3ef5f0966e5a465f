// Device memory and discovery. Implemented by kernels/cuda/device_cuda.cpp when the CUDA backend
// is built, and by kernels/cpu/device_fallback.cpp (which reports "no GPU") otherwise.
#pragma once

#include <cstddef>
#include <string>

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

}  // namespace ttq
