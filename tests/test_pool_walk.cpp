// The window arithmetic of the GPU pooling kernels (kernels/cuda/pool_walk.h), run on the host:
// the two-kernel max-pool gradient (every window's first maximum, then a gather per input element
// over the windows that contain it) gives the reference kernel's gradient bitwise, ties and
// asymmetric padding included; so do the per-element pooling output (max, average with and
// without padding in the divisor) and average-pool gradient of the bf16 kernels, in f32;
// windows_containing lists exactly the windows that cover a position; window_count and
// pool_divisor count what the reference counts. These are the functions the CUDA
// kernels call per element, so an off-by-one in them shows up here, without a GPU.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "kernels/cpu/ops_ref.h"
#include "kernels/cuda/pool_walk.h"
#include "kernels/op_shapes.h"
#include "tests/test_util.h"

using namespace ttq;
using ttq::cuda::helpers::avgpool_input_grad;
using ttq::cuda::helpers::pool_divisor;
using ttq::cuda::helpers::pool_output;
using ttq::cuda::helpers::PoolGeom;
using ttq::cuda::helpers::window_argmax;
using ttq::cuda::helpers::window_count;
using ttq::cuda::helpers::windows_containing;
using ttq::cuda::helpers::WindowRange;

namespace {

Pool2dShape pool(int64_t n, int64_t c, int64_t h, int64_t w, int64_t k_h, int64_t k_w, int64_t s_h, int64_t s_w,
                 int64_t pt, int64_t pl, int64_t pb, int64_t pr) {
  Pool2dShape s;
  s.n = n, s.c = c, s.h = h, s.w = w, s.kh = k_h, s.kw = k_w, s.stride_h = s_h, s.stride_w = s_w;
  s.pad_t = pt, s.pad_l = pl, s.pad_b = pb, s.pad_r = pr;
  return s;
}

PoolGeom geom(const Pool2dShape& s) { return ttq::cuda::helpers::pool_geom(s, s.out_h(), s.out_w()); }

std::vector<Pool2dShape> shapes() {
  std::vector<Pool2dShape> out = {
      pool(2, 3, 8, 8, 2, 2, 2, 2, 0, 0, 0, 0),    pool(2, 3, 9, 9, 3, 3, 2, 2, 1, 1, 1, 1),
      pool(1, 2, 7, 6, 3, 3, 1, 1, 2, 0, 1, 2),    pool(2, 2, 6, 9, 2, 3, 1, 2, 1, 0, 0, 2),
      pool(1, 4, 13, 11, 3, 3, 2, 2, 1, 1, 1, 1),  pool(1, 1, 5, 5, 5, 5, 1, 1, 2, 2, 2, 2),
      pool(1, 2, 10, 10, 2, 2, 3, 3, 0, 0, 0, 0),  // stride > kernel: positions in no window
  };
  Pool2dShape same = pool(2, 4, 8, 8, 3, 3, 2, 2, 0, 0, 0, 0);
  set_padding(same, true, 0);  // TensorFlow "same": asymmetric
  out.push_back(same);
  Pool2dShape same_odd = pool(1, 3, 56, 55, 3, 3, 2, 2, 0, 0, 0, 0);
  set_padding(same_odd, true, 0);
  out.push_back(same_odd);
  return out;
}

}  // namespace

TEST(PoolWalk, MaxPoolGradientOfTheTwoKernelsIsTheReferenceBitwise) {
  uint64_t seed = 0;
  for (const Pool2dShape& s : shapes()) {
    SCOPED_TRACE(s.str());
    s.validate("test");
    const PoolGeom g = geom(s);
    Tensor x = ttq::testing::random_tensor({s.n, s.c, s.h, s.w}, ++seed);
    // Many ties: the first maximum in window order must win, as in the reference; and some NaN,
    // a few of them side by side (two NaN in one window: the last one takes the gradient).
    for (int64_t i = 0; i < x.numel(); ++i) x.data<float>()[i] = std::round(x.data<float>()[i] * 2.0f);
    for (int64_t i = 5; i < x.numel(); i += 37) {
      x.data<float>()[i] = std::numeric_limits<float>::quiet_NaN();
      if (i + 1 < x.numel()) x.data<float>()[i + 1] = std::numeric_limits<float>::quiet_NaN();
    }
    const Tensor dy = ttq::testing::random_tensor({s.n, s.c, s.out_h(), s.out_w()}, ++seed);
    Tensor want = Tensor::empty(x.shape());
    ref::pool2d_backward(PoolKind::Max, s, x.data<float>(), dy.data<float>(), want.data<float>());

    // Kernel 1: every window's first maximum.
    std::vector<int32_t> argmax(static_cast<size_t>(g.planes * g.oh * g.ow));
    for (int64_t o = 0; o < static_cast<int64_t>(argmax.size()); ++o) {
      const int64_t ox = o % g.ow, oy = (o / g.ow) % g.oh, p = o / (g.ow * g.oh);
      const float* xp = x.data<float>() + p * g.h * g.w;
      argmax[static_cast<size_t>(o)] =
          static_cast<int32_t>(window_argmax(g, [&](int64_t i) { return xp[i]; }, oy, ox));
    }
    // Kernel 2: the gather per input element, in increasing output order.
    Tensor got = Tensor::empty(x.shape());
    for (int64_t i = 0; i < x.numel(); ++i) {
      const int64_t ix = i % g.w, iy = (i / g.w) % g.h, p = i / (g.w * g.h);
      const int32_t* ap = argmax.data() + p * g.oh * g.ow;
      const float* dyp = dy.data<float>() + p * g.oh * g.ow;
      got.data<float>()[i] = ttq::cuda::helpers::maxpool_input_grad(
          g, [&](int64_t o) { return static_cast<int64_t>(ap[o]); }, [&](int64_t o) { return dyp[o]; }, iy, ix);
    }
    ASSERT_EQ(std::memcmp(got.raw(), want.raw(), got.nbytes()), 0);
  }
}

TEST(PoolWalk, WindowsContainingAndWindowCountMatchBruteForce) {
  for (const Pool2dShape& s : shapes()) {
    SCOPED_TRACE(s.str());
    const PoolGeom g = geom(s);
    for (int64_t iy = 0; iy < g.h; ++iy)
      for (int64_t ix = 0; ix < g.w; ++ix) {
        const WindowRange r = windows_containing(g, iy, ix);
        for (int64_t oy = 0; oy < g.oh; ++oy)
          for (int64_t ox = 0; ox < g.ow; ++ox) {
            const int64_t y0 = oy * g.stride_h - g.pad_t, x0 = ox * g.stride_w - g.pad_l;
            const bool covers = iy >= y0 && iy < y0 + g.kh && ix >= x0 && ix < x0 + g.kw;
            const bool listed = oy >= r.oy_lo && oy <= r.oy_hi && ox >= r.ox_lo && ox <= r.ox_hi;
            ASSERT_EQ(listed, covers) << "input (" << iy << ", " << ix << "), window (" << oy << ", " << ox << ")";
          }
      }
    for (int64_t oy = 0; oy < g.oh; ++oy)
      for (int64_t ox = 0; ox < g.ow; ++ox) {
        int64_t count = 0;
        for (int64_t ky = 0; ky < g.kh; ++ky)
          for (int64_t kx = 0; kx < g.kw; ++kx) {
            const int64_t iy = oy * g.stride_h - g.pad_t + ky, ix = ox * g.stride_w - g.pad_l + kx;
            count += (iy >= 0 && iy < g.h && ix >= 0 && ix < g.w) ? 1 : 0;
          }
        ASSERT_EQ(window_count(g, oy, ox), count) << "window (" << oy << ", " << ox << ")";
      }
  }
}

TEST(PoolWalk, PoolingOutputAndAverageGradientAreTheReferenceBitwise) {
  uint64_t seed = 100;
  for (const Pool2dShape& base : shapes()) {
    for (const PoolKind kind : {PoolKind::Max, PoolKind::Avg}) {
      for (const bool include_pad : {true, false}) {
        if (kind == PoolKind::Max && !include_pad) continue;
        Pool2dShape s = base;
        s.count_include_pad = include_pad;
        SCOPED_TRACE(s.str() + (kind == PoolKind::Max ? " max" : include_pad ? " avg include" : " avg exclude"));
        const PoolGeom g = geom(s);
        Tensor x = ttq::testing::random_tensor({s.n, s.c, s.h, s.w}, ++seed);
        if (kind == PoolKind::Max)  // a window holding NaN gives NaN, as the reference (and PyTorch)
          for (int64_t i = 3; i < x.numel(); i += 41) x.data<float>()[i] = std::numeric_limits<float>::quiet_NaN();
        const Tensor dy = ttq::testing::random_tensor({s.n, s.c, s.out_h(), s.out_w()}, ++seed);
        Tensor y_ref = Tensor::empty(dy.shape()), y = Tensor::empty(dy.shape());
        ref::pool2d_forward(kind, s, x.data<float>(), y_ref.data<float>());
        for (int64_t o = 0; o < y.numel(); ++o) {
          const int64_t ox = o % g.ow, oy = (o / g.ow) % g.oh, p = o / (g.ow * g.oh);
          const float* xp = x.data<float>() + p * s.h * s.w;
          y.data<float>()[o] = pool_output(s, kind == PoolKind::Max, [&](int64_t i) { return xp[i]; }, oy, ox);
        }
        ASSERT_EQ(std::memcmp(y.raw(), y_ref.raw(), y.nbytes()), 0) << "forward";
        if (kind == PoolKind::Max) continue;  // the max gradient: the test above
        Tensor dx_ref = Tensor::empty(x.shape()), dx = Tensor::empty(x.shape());
        ref::pool2d_backward(kind, s, x.data<float>(), dy.data<float>(), dx_ref.data<float>());
        for (int64_t i = 0; i < dx.numel(); ++i) {
          const int64_t ix = i % s.w, iy = (i / s.w) % s.h, p = i / (s.w * s.h);
          const float* dyp = dy.data<float>() + p * g.oh * g.ow;
          dx.data<float>()[i] = avgpool_input_grad(s, g, [&](int64_t o) { return dyp[o]; }, iy, ix);
        }
        ASSERT_EQ(std::memcmp(dx.raw(), dx_ref.raw(), dx.nbytes()), 0) << "backward";
      }
    }
  }
}

TEST(PoolWalk, DivisorCountsWhatTheReferenceCounts) {
  for (Pool2dShape s : shapes()) {
    for (const bool include_pad : {true, false}) {
      s.count_include_pad = include_pad;
      SCOPED_TRACE(s.str() + (include_pad ? " include" : " exclude"));
      for (int64_t oy = 0; oy < s.out_h(); ++oy)
        for (int64_t ox = 0; ox < s.out_w(); ++ox) {
          int64_t count = 0;  // positions inside the input, or inside the padded extent
          for (int64_t ky = 0; ky < s.kh; ++ky)
            for (int64_t kx = 0; kx < s.kw; ++kx) {
              const int64_t iy = oy * s.stride_h - s.pad_t + ky, ix = ox * s.stride_w - s.pad_l + kx;
              const bool inside = iy >= 0 && iy < s.h && ix >= 0 && ix < s.w;
              const bool padded = iy >= -s.pad_t && iy < s.h + s.pad_b && ix >= -s.pad_l && ix < s.w + s.pad_r;
              count += (include_pad ? padded : inside) ? 1 : 0;
            }
          ASSERT_EQ(pool_divisor(s, oy, ox), count) << "window (" << oy << ", " << ox << ")";
        }
    }
  }
}
