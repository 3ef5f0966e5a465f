// Per-thread, per-device cuDNN/cuBLAS handles and workspace (see context.h).
#include "kernels/cuda/context.h"

#include <algorithm>
#include <climits>
#include <map>
#include <memory>

#include "kernels/device.h"

namespace ttq::cuda {

#ifdef TTQ_HAVE_CUDNN
namespace detail {
const char* cudnn_last_error() {
#if CUDNN_MAJOR >= 9
  thread_local char buf[1024];
  buf[0] = '\0';
  cudnnGetLastErrorString(buf, sizeof(buf));
  return buf;
#else
  return "";
#endif
}
}  // namespace detail
#endif

DeviceContext& DeviceContext::current() {
  // Destroyed at thread exit (for the main thread before static destructors and the CUDA
  // runtime's own exit handlers run).
  thread_local std::map<int, std::unique_ptr<DeviceContext>> contexts;
  int dev = 0;
  CUDA_CHECK(cudaGetDevice(&dev));
  auto it = contexts.find(dev);
  if (it == contexts.end()) it = contexts.emplace(dev, std::make_unique<DeviceContext>(dev)).first;
  return *it->second;
}

DeviceContext::DeviceContext(int device) : device_(device) {}

DeviceContext::~DeviceContext() {
  int prev = 0;
  const cudaError_t err = cudaGetDevice(&prev);
  if (err != cudaSuccess) {
    // Runtime already torn down (or unusable): the driver reclaims everything with the process.
    (void)cudaGetLastError();
    return;
  }
  if (prev != device_) CUDA_CHECK_NOTHROW(cudaSetDevice(device_));
#ifdef TTQ_HAVE_CUDNN
  if (cudnn_) CUDNN_CHECK_NOTHROW(cudnnDestroy(cudnn_));
#endif
#ifdef TTQ_HAVE_CUBLAS
  if (cublas_) CUBLAS_CHECK_NOTHROW(cublasDestroy(cublas_));
#endif
  if (ws_) CUDA_CHECK_NOTHROW(cudaFreeAsync(ws_, cudaStreamPerThread));
  if (prev != device_) CUDA_CHECK_NOTHROW(cudaSetDevice(prev));
}

#ifdef TTQ_HAVE_CUDNN
cudnnHandle_t DeviceContext::cudnn() {
  if (!cudnn_) {
    cudnnHandle_t h = nullptr;
    CUDNN_CHECK(cudnnCreate(&h));
    const cudnnStatus_t st = cudnnSetStream(h, cudaStreamPerThread);
    if (st != CUDNN_STATUS_SUCCESS) {
      CUDNN_CHECK_NOTHROW(cudnnDestroy(h));
      CUDNN_CHECK(st);
    }
    cudnn_ = h;
  }
  return cudnn_;
}
#endif

#ifdef TTQ_HAVE_CUBLAS
cublasHandle_t DeviceContext::cublas() {
  if (!cublas_) {
    cublasHandle_t h = nullptr;
    CUBLAS_CHECK(cublasCreate(&h));
    try {
      CUBLAS_CHECK(cublasSetStream(h, cudaStreamPerThread));
      // CUBLAS_DEFAULT_MATH: no TF32 tensor-core down-conversion (and no BF16x9 emulation) for
      // single precision, so fp32 GEMMs match the CPU kernels within tight tolerances.
      // DISALLOW_REDUCED_PRECISION_REDUCTION: a bf16-output GEMM (precision "bf16") reduces in
      // its f32 compute type, split-K partial sums included, and rounds once at the end.
      CUBLAS_CHECK(cublasSetMathMode(
          h, static_cast<cublasMath_t>(CUBLAS_DEFAULT_MATH | CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION)));
      // No atomics: the same call gives bitwise-identical results run after run.
      CUBLAS_CHECK(cublasSetAtomicsMode(h, CUBLAS_ATOMICS_NOT_ALLOWED));
      CUBLAS_CHECK(cublasSetPointerMode(h, CUBLAS_POINTER_MODE_HOST));
    } catch (...) {
      CUBLAS_CHECK_NOTHROW(cublasDestroy(h));
      throw;
    }
    cublas_ = h;
  }
  return cublas_;
}
#endif

void* DeviceContext::workspace(size_t bytes) {
  if (bytes == 0) return ws_;
  if (bytes > ws_bytes_) {
    constexpr size_t kGranule = size_t{1} << 20;
    size_t want = std::max(bytes, ws_bytes_ + ws_bytes_ / 2);
    want = (want + kGranule - 1) / kGranule * kGranule;
    if (ws_) {
      void* old = ws_;
      ws_ = nullptr;
      ws_bytes_ = 0;
      CUDA_CHECK(cudaFreeAsync(old, cudaStreamPerThread));
    }
    ws_ = device_malloc(want);  // the stream-ordered pool, as every device allocation
    ws_bytes_ = want;
  }
  return ws_;
}

DeviceBuffer::DeviceBuffer(size_t bytes) : bytes_(bytes) {
  if (bytes > 0) p_ = device_malloc(bytes);
}

DeviceBuffer::~DeviceBuffer() { reset(); }

void DeviceBuffer::reset() noexcept {
  if (p_) CUDA_CHECK_NOTHROW(cudaFreeAsync(p_, cudaStreamPerThread));
  p_ = nullptr;
  bytes_ = 0;
}

int to_int(int64_t v, const char* what) {
  TTQ_CHECK(v >= 0 && v <= INT_MAX, what << " = " << v << " does not fit the int arguments of cuDNN/cuBLAS");
  return static_cast<int>(v);
}

}  // namespace ttq::cuda
