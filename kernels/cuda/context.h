// Library handles and scratch memory for the cuDNN and cuBLAS ops (kernels/cuda/ops_cudnn.cpp,
// kernels/cuda/ops_cublas.cpp).
//
// One DeviceContext per (host thread, CUDA device), created lazily for the current device
// (cudaGetDevice) the first time a thread asks for it. Its cuDNN and cuBLAS handles are bound to
// cudaStreamPerThread, the stream device memory is allocated on (kernels/cuda/device_cuda.cpp),
// so library calls are ordered after the copies and kernels the same thread enqueued before.
// Per thread because cuDNN/cuBLAS handles must not be used by two threads at once and because
// cudaStreamPerThread is a different stream in every thread: a workspace shared between threads
// would be raced on; one per thread is ordered by that thread's stream alone.
//
// Plain C++ header (includable from g++ code). CUDNN_CHECK and CUBLAS_CHECK throw ttq::Error
// naming the call, the status string, file and line; the _NOTHROW variants print instead, for
// destructors.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>

#include "engine/core/error.h"
#include "kernels/cuda/cuda_check.h"

#ifdef TTQ_HAVE_CUDNN
#include <cudnn.h>
#endif
#ifdef TTQ_HAVE_CUBLAS
#include <cublas_v2.h>
#endif

#ifdef TTQ_HAVE_CUDNN
namespace ttq::cuda::detail {
// cuDNN 9's message for the last failed call on this thread (may be empty).
const char* cudnn_last_error();
}  // namespace ttq::cuda::detail

#define CUDNN_CHECK(call)                                                                   \
  do {                                                                                      \
    cudnnStatus_t ttq_cudnn_st_ = (call);                                                   \
    TTQ_CHECK(ttq_cudnn_st_ == CUDNN_STATUS_SUCCESS,                                        \
              #call << " failed: " << cudnnGetErrorString(ttq_cudnn_st_) << " ("           \
                    << static_cast<int>(ttq_cudnn_st_) << ") "                              \
                    << ::ttq::cuda::detail::cudnn_last_error());                            \
  } while (0)

#define CUDNN_CHECK_NOTHROW(call)                                                           \
  do {                                                                                      \
    cudnnStatus_t ttq_cudnn_st_ = (call);                                                   \
    if (ttq_cudnn_st_ != CUDNN_STATUS_SUCCESS)                                              \
      std::fprintf(stderr, "%s failed: %s [%s:%d]\n", #call,                                \
                   cudnnGetErrorString(ttq_cudnn_st_), __FILE__, __LINE__);                 \
  } while (0)
#endif  // TTQ_HAVE_CUDNN

#ifdef TTQ_HAVE_CUBLAS
#define CUBLAS_CHECK(call)                                                                  \
  do {                                                                                      \
    cublasStatus_t ttq_cublas_st_ = (call);                                                 \
    TTQ_CHECK(ttq_cublas_st_ == CUBLAS_STATUS_SUCCESS,                                      \
              #call << " failed: " << cublasGetStatusString(ttq_cublas_st_) << " ("         \
                    << static_cast<int>(ttq_cublas_st_) << ")");                            \
  } while (0)

#define CUBLAS_CHECK_NOTHROW(call)                                                          \
  do {                                                                                      \
    cublasStatus_t ttq_cublas_st_ = (call);                                                 \
    if (ttq_cublas_st_ != CUBLAS_STATUS_SUCCESS)                                            \
      std::fprintf(stderr, "%s failed: %s [%s:%d]\n", #call,                                \
                   cublasGetStatusString(ttq_cublas_st_), __FILE__, __LINE__);              \
  } while (0)
#endif  // TTQ_HAVE_CUBLAS

namespace ttq::cuda {

// Handles and a growable workspace for one device, used by one host thread.
class DeviceContext {
 public:
  // The calling thread's context for the current device, created on first use.
  static DeviceContext& current();

  explicit DeviceContext(int device);
  ~DeviceContext();
  DeviceContext(const DeviceContext&) = delete;
  DeviceContext& operator=(const DeviceContext&) = delete;

  int device() const { return device_; }

#ifdef TTQ_HAVE_CUDNN
  // Created on first call, stream cudaStreamPerThread.
  cudnnHandle_t cudnn();
#endif
#ifdef TTQ_HAVE_CUBLAS
  // Created on first call, stream cudaStreamPerThread, CUBLAS_DEFAULT_MATH (no TF32: fp32
  // products stay fp32 so results match the CPU kernels closely), atomics not allowed
  // (bitwise-repeatable results), host pointer mode.
  cublasHandle_t cublas();
#endif

  // Device scratch of at least `bytes` bytes, valid until the next workspace() call on this
  // context. Grows (never shrinks) by freeing the old block and allocating a larger one, both
  // stream-ordered on cudaStreamPerThread, so work already enqueued on the old block is unharmed.
  // May return nullptr for bytes == 0.
  void* workspace(size_t bytes);
  size_t workspace_bytes() const { return ws_bytes_; }

 private:
  int device_ = 0;
  void* ws_ = nullptr;
  size_t ws_bytes_ = 0;
#ifdef TTQ_HAVE_CUDNN
  cudnnHandle_t cudnn_ = nullptr;
#endif
#ifdef TTQ_HAVE_CUBLAS
  cublasHandle_t cublas_ = nullptr;
#endif
};

// A temporary device array, allocated and freed stream-ordered on cudaStreamPerThread (freeing
// right after enqueueing the last kernel that uses it is safe).
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  explicit DeviceBuffer(size_t bytes);
  ~DeviceBuffer();
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  DeviceBuffer(DeviceBuffer&& o) noexcept : p_(o.p_), bytes_(o.bytes_) {
    o.p_ = nullptr;
    o.bytes_ = 0;
  }
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept {
    if (this != &o) {
      reset();
      p_ = o.p_;
      bytes_ = o.bytes_;
      o.p_ = nullptr;
      o.bytes_ = 0;
    }
    return *this;
  }
  // Frees the array (stream-ordered) and leaves the buffer empty.
  void reset() noexcept;

  void* get() const { return p_; }
  float* f32() const { return static_cast<float*>(p_); }
  size_t bytes() const { return bytes_; }

 private:
  void* p_ = nullptr;
  size_t bytes_ = 0;
};

// Throws unless v fits the int arguments of the cuDNN/cuBLAS legacy APIs.
int to_int(int64_t v, const char* what);

}  // namespace ttq::cuda
