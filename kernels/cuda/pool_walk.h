// The window arithmetic of the GPU pooling helpers (kernels/cuda/dnn_helpers.cu): a window's first
// maximum, the windows that contain an input position, a window's count of positions inside the
// input. Plain C++ with host/device functions: the kernels call them per element, and
// tests/test_pool_walk.cpp runs the same functions on the host against the reference kernels
// (kernels/cpu/ops_ref.h), without a GPU.
#pragma once

#include <cstdint>

#include "kernels/act_math.h"
#include "kernels/host_device.h"
#include "kernels/op_shapes.h"

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
      if (best < 0 || math::max_pool_takes(v, m)) {
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

// The max-pool gradient of input (iy, ix) of one plane: the sum of dy over the windows containing
// it whose first maximum (argmax_at(o), from window_argmax) it is, in float, in increasing
// (oy, ox) order: the reference's routing, order and rounding. dy_at(o) reads the output gradient.
#ifdef __CUDACC__
#pragma nv_exec_check_disable
#endif
template <class ArgmaxAt, class DyAt>
TTQ_HD float maxpool_input_grad(const PoolGeom& g, ArgmaxAt&& argmax_at, DyAt&& dy_at, int64_t iy, int64_t ix) {
  const int64_t self = iy * g.w + ix;
  const WindowRange r = windows_containing(g, iy, ix);
  float acc = 0.0f;
  for (int64_t oy = r.oy_lo; oy <= r.oy_hi; ++oy)
    for (int64_t ox = r.ox_lo; ox <= r.ox_hi; ++ox)
      if (argmax_at(oy * g.ow + ox) == self) acc += dy_at(oy * g.ow + ox);
  return acc;
}

// How many positions of window (oy, ox) lie inside the (unpadded) input.
TTQ_HD int64_t window_count(const PoolGeom& g, int64_t oy, int64_t ox) {
  const int64_t y0 = oy * g.stride_h - g.pad_t, x0 = ox * g.stride_w - g.pad_l;
  const int64_t y_end = y0 + g.kh < g.h ? y0 + g.kh : g.h, x_end = x0 + g.kw < g.w ? x0 + g.kw : g.w;
  const int64_t rows = y_end - (y0 > 0 ? y0 : 0), cols = x_end - (x0 > 0 ? x0 : 0);
  return (rows > 0 ? rows : 0) * (cols > 0 ? cols : 0);
}

// The geometry of a Pool2dShape with oh x ow outputs (planes = N * C).
TTQ_HD PoolGeom pool_geom(const Pool2dShape& s, int64_t oh, int64_t ow) {
  return {s.n * s.c, s.h, s.w, oh, ow, s.kh, s.kw, s.stride_h, s.stride_w, s.pad_t, s.pad_l};
}

// The reference's average-pool divisor for window (oy, ox) (kernels/cpu/ops_ref.cpp for_window):
// the window's input positions, plus, with count_include_pad, its padded positions inside the
// padded extent.
TTQ_HD int64_t pool_divisor(const Pool2dShape& s, int64_t oy, int64_t ox) {
  const int64_t y0 = oy * s.stride_h - s.pad_t, x0 = ox * s.stride_w - s.pad_l;
  int64_t rows, cols;
  if (s.count_include_pad) {
    rows = (y0 + s.kh < s.h + s.pad_b ? y0 + s.kh : s.h + s.pad_b) - y0;
    cols = (x0 + s.kw < s.w + s.pad_r ? x0 + s.kw : s.w + s.pad_r) - x0;
  } else {
    rows = (y0 + s.kh < s.h ? y0 + s.kh : s.h) - (y0 > 0 ? y0 : 0);
    cols = (x0 + s.kw < s.w ? x0 + s.kw : s.w) - (x0 > 0 ? x0 : 0);
  }
  return (rows > 0 ? rows : 0) * (cols > 0 ? cols : 0);
}

// Pooling output (oy, ox) of one plane, as the reference computes it: the maximum (-inf for a
// window of padding only), or the sum in double in row-major window order divided by
// pool_divisor (0 when that is 0). at(i) reads the plane's element i as float.
#ifdef __CUDACC__
#pragma nv_exec_check_disable
#endif
template <class At>
TTQ_HD float pool_output(const Pool2dShape& s, bool is_max, At&& at, int64_t oy, int64_t ox) {
  const int64_t y0 = oy * s.stride_h - s.pad_t, x0 = ox * s.stride_w - s.pad_l;
  const int64_t ky0 = y0 < 0 ? -y0 : 0, ky1 = s.kh < s.h - y0 ? s.kh : s.h - y0;
  const int64_t kx0 = x0 < 0 ? -x0 : 0, kx1 = s.kw < s.w - x0 ? s.kw : s.w - x0;
  if (is_max) {
    float m = -__builtin_huge_valf();
    for (int64_t ky = ky0; ky < ky1; ++ky)
      for (int64_t kx = kx0; kx < kx1; ++kx) {
        const float v = at((y0 + ky) * s.w + x0 + kx);
        if (math::max_pool_takes(v, m)) m = v;
      }
    return m;
  }
  double acc = 0.0;
  for (int64_t ky = ky0; ky < ky1; ++ky)
    for (int64_t kx = kx0; kx < kx1; ++kx) acc += at((y0 + ky) * s.w + x0 + kx);
  const int64_t cnt = pool_divisor(s, oy, ox);
  return cnt ? static_cast<float>(acc / static_cast<double>(cnt)) : 0.0f;
}

// The average-pool gradient of input (iy, ix) of one plane: the sum over the windows containing it
// of dy / divisor, in float, in increasing (oy, ox) order (the reference's scatter order and
// rounding). dy_at(o) reads the plane's output gradient o as float.
#ifdef __CUDACC__
#pragma nv_exec_check_disable
#endif
template <class At>
TTQ_HD float avgpool_input_grad(const Pool2dShape& s, const PoolGeom& g, At&& dy_at, int64_t iy, int64_t ix) {
  const WindowRange r = windows_containing(g, iy, ix);
  float acc = 0.0f;
  for (int64_t oy = r.oy_lo; oy <= r.oy_hi; ++oy)
    for (int64_t ox = r.ox_lo; ox <= r.ox_hi; ++ox) {
      const int64_t cnt = pool_divisor(s, oy, ox);
      if (cnt == 0) continue;
      acc += dy_at(oy * g.ow + ox) / static_cast<float>(cnt);
    }
  return acc;
}

}  // namespace ttq::cuda::helpers
