// Helper kernels for the cuDNN/cuBLAS ops (see dnn_helpers.h).
#include "kernels/cuda/dnn_helpers.h"

#include <cuda_runtime.h>

#include <algorithm>

#include "kernels/cuda/cuda_check.h"

namespace ttq::cuda::helpers {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = 65535;

#define TTQ_HELPER_LOOP(i, n)                                                              \
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < (n);   \
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)

unsigned blocks_for(int64_t n) {
  return static_cast<unsigned>(std::clamp<int64_t>((n + kThreads - 1) / kThreads, 1, kMaxBlocks));
}

// Launches kernel over n elements (nothing for n <= 0) on cudaStreamPerThread.
template <class Kernel, class... Args>
void launch(int64_t n, Kernel kernel, Args... args) {
  if (n <= 0) return;
  kernel<<<blocks_for(n), kThreads, 0, cudaStreamPerThread>>>(n, args...);
  CUDA_CHECK(cudaGetLastError());
}

__global__ void pad_kernel(int64_t total, int64_t h, int64_t w, int64_t top, int64_t left, int64_t hp,
                           int64_t wp, float value, const float* src, float* dst) {
  TTQ_HELPER_LOOP(i, total) {
    const int64_t x = i % wp, y = (i / wp) % hp, p = i / (wp * hp);
    const int64_t sy = y - top, sx = x - left;
    dst[i] = (sy >= 0 && sy < h && sx >= 0 && sx < w) ? src[(p * h + sy) * w + sx] : value;
  }
}

__global__ void crop_kernel(int64_t total, int64_t hp, int64_t wp, int64_t top, int64_t left, int64_t h,
                            int64_t w, const float* src, float* dst) {
  TTQ_HELPER_LOOP(i, total) {
    const int64_t x = i % w, y = (i / w) % h, p = i / (w * h);
    dst[i] = src[(p * hp + y + top) * wp + x + left];
  }
}

__global__ void exclude_rescale_kernel(int64_t total, PoolGeom g, const float* src, float* dst) {
  TTQ_HELPER_LOOP(i, total) {
    const int64_t ox = i % g.ow, oy = (i / g.ow) % g.oh;
    const int64_t y0 = oy * g.stride_h - g.pad_t, x0 = ox * g.stride_w - g.pad_l;
    const int64_t rows = min(y0 + g.kh, g.h) - max(y0, int64_t{0});
    const int64_t cols = min(x0 + g.kw, g.w) - max(x0, int64_t{0});
    const int64_t count = max(rows, int64_t{0}) * max(cols, int64_t{0});
    // count >= 1 whenever padding < window (Pool2dShape::validate); guard anyway.
    dst[i] = count > 0 ? src[i] * (static_cast<float>(g.kh * g.kw) / static_cast<float>(count)) : 0.0f;
  }
}

// First maximum of window (oy, ox) of plane xp, as a flat index into the plane.
__device__ int64_t window_argmax(const PoolGeom& g, const float* xp, int64_t oy, int64_t ox) {
  const int64_t y0 = oy * g.stride_h - g.pad_t, x0 = ox * g.stride_w - g.pad_l;
  int64_t best = -1;
  float m = 0.0f;
  for (int64_t ky = 0; ky < g.kh; ++ky) {
    const int64_t iy = y0 + ky;
    if (iy < 0 || iy >= g.h) continue;
    for (int64_t kx = 0; kx < g.kw; ++kx) {
      const int64_t ix = x0 + kx;
      if (ix < 0 || ix >= g.w) continue;
      const float v = xp[iy * g.w + ix];
      if (best < 0 || v > m) {
        m = v;
        best = iy * g.w + ix;
      }
    }
  }
  return best;
}

__global__ void maxpool_backward_kernel(int64_t total, PoolGeom g, const float* x, const float* dy, float* dx) {
  TTQ_HELPER_LOOP(i, total) {
    const int64_t ix = i % g.w, iy = (i / g.w) % g.h, p = i / (g.w * g.h);
    const float* xp = x + p * g.h * g.w;
    const float* dyp = dy + p * g.oh * g.ow;
    const int64_t self = iy * g.w + ix;
    // Windows containing (iy, ix): oy * stride - pad_t <= iy < oy * stride - pad_t + kh.
    const int64_t ty = iy + g.pad_t, tx = ix + g.pad_l;
    const int64_t oy_lo = ty >= g.kh ? (ty - g.kh) / g.stride_h + 1 : 0;
    const int64_t oy_hi = min(ty / g.stride_h, g.oh - 1);
    const int64_t ox_lo = tx >= g.kw ? (tx - g.kw) / g.stride_w + 1 : 0;
    const int64_t ox_hi = min(tx / g.stride_w, g.ow - 1);
    float acc = 0.0f;  // float, in increasing (oy, ox): the reference's order and rounding
    for (int64_t oy = oy_lo; oy <= oy_hi; ++oy)
      for (int64_t ox = ox_lo; ox <= ox_hi; ++ox)
        if (window_argmax(g, xp, oy, ox) == self) acc += dyp[oy * g.ow + ox];
    dx[i] = acc;
  }
}

__global__ void bn_var_kernel(int64_t c, float eps, const float* inv_std, float* var) {
  TTQ_HELPER_LOOP(i, c) {
    const double is = inv_std[i];
    const double v = 1.0 / (is * is) - static_cast<double>(eps);
    var[i] = static_cast<float>(v > 0.0 ? v : 0.0);
  }
}

__global__ void broadcast_rows_kernel(int64_t total, int64_t out, const float* bias, float* y) {
  TTQ_HELPER_LOOP(i, total) y[i] = bias[i % out];
}

__global__ void column_sums_kernel(int64_t out, int64_t n, const float* m, float* sums) {
  TTQ_HELPER_LOOP(o, out) {
    double acc = 0.0;
    for (int64_t b = 0; b < n; ++b) acc += m[b * out + o];
    sums[o] = static_cast<float>(acc);
  }
}

}  // namespace

void pad_planes(int64_t planes, int64_t h, int64_t w, int64_t top, int64_t left, int64_t hp, int64_t wp,
                float value, const float* src, float* dst) {
  launch(planes * hp * wp, pad_kernel, h, w, top, left, hp, wp, value, src, dst);
}

void crop_planes(int64_t planes, int64_t hp, int64_t wp, int64_t top, int64_t left, int64_t h, int64_t w,
                 const float* src, float* dst) {
  launch(planes * h * w, crop_kernel, hp, wp, top, left, h, w, src, dst);
}

void avgpool_exclude_rescale(const PoolGeom& g, const float* src, float* dst) {
  launch(g.planes * g.oh * g.ow, exclude_rescale_kernel, g, src, dst);
}

void maxpool_backward(const PoolGeom& g, const float* x, const float* dy, float* dx) {
  launch(g.planes * g.h * g.w, maxpool_backward_kernel, g, x, dy, dx);
}

void bn_var_from_inv_std(int64_t c, float eps, const float* inv_std, float* var) {
  launch(c, bn_var_kernel, eps, inv_std, var);
}

void broadcast_rows(int64_t n, int64_t out, const float* bias, float* y) {
  launch(n * out, broadcast_rows_kernel, out, bias, y);
}

void column_sums(int64_t n, int64_t out, const float* m, float* sums) {
  launch(out, column_sums_kernel, n, m, sums);
}

}  // namespace ttq::cuda::helpers
