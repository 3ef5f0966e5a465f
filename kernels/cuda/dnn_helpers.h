// Small CUDA kernels around the cuDNN and cuBLAS calls (kernels/cuda/ops_cudnn.cpp,
// kernels/cuda/ops_cublas.cpp): explicit padding for the asymmetric pads cuDNN cannot express,
// the first-maximum max-pool gradient, the average-pool divisor fix, batch-norm variance, and the
// Linear bias. All take device pointers and run on cudaStreamPerThread. None uses atomics: every
// output element is written by one thread that sums in a fixed order, so results are
// bitwise-repeatable. Plain C++ header.
#pragma once

#include <cstdint>

namespace ttq::cuda::helpers {

// planes arrays of h x w -> planes arrays of hp x wp holding the input at row `top`, column
// `left`, and `value` everywhere else.
void pad_planes(int64_t planes, int64_t h, int64_t w, int64_t top, int64_t left, int64_t hp, int64_t wp,
                float value, const float* src, float* dst);
// planes arrays of hp x wp -> their h x w windows starting at row `top`, column `left`.
void crop_planes(int64_t planes, int64_t hp, int64_t wp, int64_t top, int64_t left, int64_t h, int64_t w,
                 const float* src, float* dst);

// Pooling geometry as the reference kernel sees it (kernels/op_shapes.h Pool2dShape).
struct PoolGeom {
  int64_t planes, h, w, oh, ow, kh, kw, stride_h, stride_w, pad_t, pad_l;
};

// dst[p, oy, ox] = src[p, oy, ox] * (kh * kw) / count(oy, ox), count = the window's positions
// inside the (unpadded) input: turns an average that divides by the whole window into one that
// excludes padding (forward), or scales the output gradient the same way (backward).
// src == dst is allowed.
void avgpool_exclude_rescale(const PoolGeom& g, const float* src, float* dst);

// Max-pool gradient, gathered per input element: dx[i] = sum of dy over the windows whose first
// maximum (row-major window order, strict >, padding never selected) is i, summed in increasing
// output order: exactly the reference kernel's routing and rounding.
void maxpool_backward(const PoolGeom& g, const float* x, const float* dy, float* dx);

// var[c] = max(0, 1 / inv_std[c]^2 - eps) (biased batch variance from cuDNN's saved inverse std).
void bn_var_from_inv_std(int64_t c, float eps, const float* inv_std, float* var);

// y[b, o] = bias[o] for b < n, o < out (row-major n x out).
void broadcast_rows(int64_t n, int64_t out, const float* bias, float* y);
// sums[o] = sum over b of m[b, o] (row-major n x out), accumulated in double in order of b.
void column_sums(int64_t n, int64_t out, const float* m, float* sums);

}  // namespace ttq::cuda::helpers
