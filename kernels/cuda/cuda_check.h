// Checked CUDA calls: a failure throws ttq::Error naming the call, the status string, file, line.
// CUDA_CHECK_NOTHROW prints instead, for destructors.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdio>

#include "engine/core/error.h"

#define CUDA_CHECK(call)                                                                   \
  do {                                                                                     \
    cudaError_t ttq_cuda_err_ = (call);                                                    \
    TTQ_CHECK(ttq_cuda_err_ == cudaSuccess,                                                \
              #call << " failed: " << cudaGetErrorName(ttq_cuda_err_) << " ("              \
                    << cudaGetErrorString(ttq_cuda_err_) << ")");                          \
  } while (0)

#define CUDA_CHECK_NOTHROW(call)                                                           \
  do {                                                                                     \
    cudaError_t ttq_cuda_err_ = (call);                                                    \
    if (ttq_cuda_err_ != cudaSuccess)                                                      \
      std::fprintf(stderr, "%s failed: %s [%s:%d]\n", #call,                               \
                   cudaGetErrorString(ttq_cuda_err_), __FILE__, __LINE__);                 \
  } while (0)
