// The window arithmetic of the GPU pooling helpers (kernels/cuda/dnn_helpers.cu): a window's first
// maximum, the windows that contain an input position, a window's count of positions inside the
// input. Plain C++ with host/device functions: the kernels call them per element, and
// tests/test_pool_walk.cpp runs the same functions on the host against the reference kernels
// (kernels/cpu/ops_ref.h), without a GPU.
#pragma once

#include <cstdint>

#include "kernels/host_device.h"

namespace ttq::cuda::helpers {

// Pooling geometry as the reference kernel sees it (kernels/op_shapes.h Pool2dShape): planes of
// h x w in, oh x ow out, windows kh x kw every stride, the padding before each axis.
struct PoolGeom {
  int64_t planes, h, w, oh, ow, kh, kw, stride_h, stride_w, pad_t, pad_l;
};

// The first maximum of window (oy, ox) of one plane, as an index into the plane (iy * w + ix), or
// -1 when the window holds no input position: positions in row-major window order, a later one
// taken only when strictly greater, padding never (the reference's routing). at(i) reads the
// plane's element i as float.
#ifdef __CUDACC__
#pragma nv_exec_check_disable
#endif
template <class At>
TTQ_HD int64_t window_argmax(const PoolGeom& g, At&& at, int64_t oy, int64_t ox) {
  const int64_t y0 = oy * g.stride_h - g.pad_t, x0 = ox * g.stride_w - g.pad_l;
  int64_t best = -1;
  float m = 0.0f;
  for (int64_t ky = 0; ky < g.kh; ++ky) {
    const int64_t iy = y0 + ky;
    if (iy < 0 || iy >= g.h) continue;
    for (int64_t kx = 0; kx < g.kw; ++kx) {
      const int64_t ix = x0 + kx;
      if (ix < 0 || ix >= g.w) continue;
      const float v = at(iy * g.w + ix);
      if (best < 0 || v > m) {
        m = v;
        best = iy * g.w + ix;
      }
    }
  }
  return best;
}

// The output windows containing input position (iy, ix): oy in [oy_lo, oy_hi], ox in [ox_lo,
// ox_hi] (empty when lo > hi). Window oy covers rows oy * stride_h - pad_t ... + kh - 1.
struct WindowRange {
  int64_t oy_lo, oy_hi, ox_lo, ox_hi;
};
TTQ_HD WindowRange windows_containing(const PoolGeom& g, int64_t iy, int64_t ix) {
  const int64_t ty = iy + g.pad_t, tx = ix + g.pad_l;
  WindowRange r;
  r.oy_lo = ty >= g.kh ? (ty - g.kh) / g.stride_h + 1 : 0;
  r.oy_hi = ty / g.stride_h < g.oh - 1 ? ty / g.stride_h : g.oh - 1;
  r.ox_lo = tx >= g.kw ? (tx - g.kw) / g.stride_w + 1 : 0;
  r.ox_hi = tx / g.stride_w < g.ow - 1 ? tx / g.stride_w : g.ow - 1;
  return r;
}

// How many positions of window (oy, ox) lie inside the (unpadded) input.
TTQ_HD int64_t window_count(const PoolGeom& g, int64_t oy, int64_t ox) {
  const int64_t y0 = oy * g.stride_h - g.pad_t, x0 = ox * g.stride_w - g.pad_l;
  const int64_t y_end = y0 + g.kh < g.h ? y0 + g.kh : g.h, x_end = x0 + g.kw < g.w ? x0 + g.kw : g.w;
  const int64_t rows = y_end - (y0 > 0 ? y0 : 0), cols = x_end - (x0 > 0 ? x0 : 0);
  return (rows > 0 ? rows : 0) * (cols > 0 ? cols : 0);
}

}  // namespace ttq::cuda::helpers
