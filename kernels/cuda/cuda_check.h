// Checked CUDA calls: a failure throws ttq::Error naming the call, the status string, file, line.
// CUDA_CHECK_NOTHROW prints instead, for destructors. Both clear the thread's last error first, so
// a recoverable failure (out of memory, an invalid argument) is not reported again by the next
// cudaGetLastError() under another call's name; sticky errors (a kernel fault) stay regardless.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdio>

#include "engine/core/error.h"

#define CUDA_CHECK(call)                                                                   \
  do {                                                                                     \
    cudaError_t ttq_cuda_err_ = (call);                                                    \
    if (ttq_cuda_err_ != cudaSuccess) (void)cudaGetLastError();                            \
    TTQ_CHECK(ttq_cuda_err_ == cudaSuccess,                                                \
              #call << " failed: " << cudaGetErrorName(ttq_cuda_err_) << " ("              \
                    << cudaGetErrorString(ttq_cuda_err_) << ")");                          \
  } while (0)

#define CUDA_CHECK_NOTHROW(call)                                                           \
  do {                                                                                     \
    cudaError_t ttq_cuda_err_ = (call);                                                    \
    if (ttq_cuda_err_ != cudaSuccess) {                                                    \
      (void)cudaGetLastError();                                                            \
      std::fprintf(stderr, "%s failed: %s [%s:%d]\n", #call,                               \
                   cudaGetErrorString(ttq_cuda_err_), __FILE__, __LINE__);                 \
    }                                                                                      \
  } while (0)
