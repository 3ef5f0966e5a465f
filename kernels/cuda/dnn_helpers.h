// Small CUDA kernels around the cuDNN and cuBLAS calls (kernels/cuda/ops_cudnn.cpp,
// kernels/cuda/ops_cublas.cpp, kernels/cuda/ops_bf16.cu): explicit padding for the asymmetric
// pads cuDNN cannot express, the first-maximum max-pool gradient, the average-pool divisor fix,
// batch-norm variance, the Linear bias, and the bias handling of the bf16 convolution and Linear.
// All take device pointers and run on cudaStreamPerThread. None uses atomics: every output element
// is written by one thread that sums in a fixed order, or comes from block reductions in fixed
// trees over a fixed partition (the per-channel helpers, kernels/cuda/channel_reduce.cuh), so
// results are bitwise-repeatable. Plain C++ header.
//
// Templates on the element type T are instantiated for float and ttq::bf16 (kernels/cuda/
// dnn_helpers.cu); bf16 values are widened to f32 on load and rounded to nearest even once on
// store (kernels/cuda/bf16_device.cuh).
#pragma once

#include <cstddef>
#include <cstdint>

#include "engine/core/bf16.h"
#include "kernels/cuda/pool_walk.h"  // PoolGeom and the window arithmetic

namespace ttq::cuda::helpers {

// planes arrays of h x w -> planes arrays of hp x wp holding the input at row `top`, column
// `left`, and `value` everywhere else (value is exact in bf16 for the 0 and -inf used).
template <class T>
void pad_planes(int64_t planes, int64_t h, int64_t w, int64_t top, int64_t left, int64_t hp, int64_t wp,
                float value, const T* src, T* dst);
// planes arrays of hp x wp -> their h x w windows starting at row `top`, column `left`.
template <class T>
void crop_planes(int64_t planes, int64_t hp, int64_t wp, int64_t top, int64_t left, int64_t h, int64_t w,
                 const T* src, T* dst);

// dst[p, oy, ox] = src[p, oy, ox] * (kh * kw) / count(oy, ox), count = the window's positions
// inside the (unpadded) input: turns an average that divides by the whole window into one that
// excludes padding (forward), or scales the output gradient the same way (backward).
// src == dst is allowed.
void avgpool_exclude_rescale(const PoolGeom& g, const float* src, float* dst);

// Max-pool gradient, gathered per input element: dx[i] = sum of dy over the windows whose first
// maximum (row-major window order, strict >, padding never selected) is i, summed in float in
// increasing output order: exactly the reference kernel's routing and rounding (then one rounding
// to bf16 for T = bf16). Two kernels: every window's first maximum into a stream-ordered int32
// temporary (planes x oh x ow), then the gather, which reads those instead of rescanning every
// window that contains the element.
template <class T>
void maxpool_backward(const PoolGeom& g, const T* x, const T* dy, T* dx);

// var[c] = max(0, 1 / inv_std[c]^2 - eps) (biased batch variance from cuDNN's saved inverse std).
void bn_var_from_inv_std(int64_t c, float eps, const float* inv_std, float* var);

// y[b, o] = bias[o] for b < n, o < out (row-major n x out).
void broadcast_rows(int64_t n, int64_t out, const float* bias, float* y);
// sums[o] = sum over b of m[b, o] (row-major n x out), accumulated in double in order of b.
template <class T>
void column_sums(int64_t n, int64_t out, const T* m, float* sums);

// y[b, o] = round_bf16(acc[b, o] + bias[o]) (acc alone when bias is null): the bf16 Linear output
// from its f32 GEMM result, rounded once.
void add_bias_rows(int64_t n, int64_t out, const float* acc, const float* bias, bf16* y);
// y[b, c, i] = round_bf16(y[b, c, i] + bias[c]) over n x c x spatial (NCHW, spatial = H*W): one
// grid-stride pass that carries each element's channel (no division per element).
void add_channel_bias(int64_t n, int64_t c, int64_t spatial, const float* bias, bf16* y);
// sums[c] = sum over b, i of m[b, c, i] (n x c x spatial) in double, rounded to f32 (0 when
// n * spatial == 0). The chunked scheme of kernels/cuda/channel_reduce.cuh: each channel's
// n * spatial elements are cut into chunks of 16384, one block a (channel, chunk) folds its chunk
// (each thread in order, then a fixed tree) into its own partial, and one block a channel folds
// the partials in chunk order (a second launch, and a stream-ordered temporary for the partials,
// only when a channel has more than one chunk). Partition and order depend on the shape only.
template <class T>
void channel_sums(int64_t n, int64_t c, int64_t spatial, const T* m, float* sums);

// `bytes` bytes at p set to 0 on cudaStreamPerThread (nothing when p is null or bytes is 0).
void zero_fill_bytes(void* p, size_t bytes);

}  // namespace ttq::cuda::helpers
