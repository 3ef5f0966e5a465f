// Device memory through CUDA's stream-ordered allocator pool, and device discovery that treats
// any runtime failure (no driver, no device) as "no GPU".
#include <cuda_runtime_api.h>

#include <sstream>

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

void* device_malloc(size_t nbytes) {
  void* p = nullptr;
  CUDA_CHECK(cudaMallocAsync(&p, nbytes, cudaStreamPerThread));
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

}  // namespace ttq
