// Plain descriptions of the op geometries, shared by the reference, oneDNN and CUDA kernels.
#pragma once

#include <cstdint>
#include <string>

namespace ttq {

// 2-D convolution over NCHW input, OIHW weights (I = C_in / groups). Padding may be asymmetric
// (pad_t/pad_l before, pad_b/pad_r after), as TensorFlow's "same" needs for even totals.
// channels_last: input and output (and their gradients) are stored NHWC; set by kernels/ops.cpp
// for the CUDA kernels that take that layout natively (the weights stay OIHW). The CPU kernels
// take NCHW only.
struct Conv2dShape {
  int64_t n = 1, c_in = 1, h = 1, w = 1;
  int64_t c_out = 1, kh = 1, kw = 1;
  int64_t stride_h = 1, stride_w = 1;
  int64_t pad_t = 0, pad_l = 0, pad_b = 0, pad_r = 0;
  int64_t groups = 1;
  bool channels_last = false;

  int64_t out_h() const { return (h + pad_t + pad_b - kh) / stride_h + 1; }
  int64_t out_w() const { return (w + pad_l + pad_r - kw) / stride_w + 1; }
  int64_t c_in_per_group() const { return c_in / groups; }
  int64_t c_out_per_group() const { return c_out / groups; }
  int64_t weight_numel() const { return c_out * c_in_per_group() * kh * kw; }
  int64_t in_numel() const { return n * c_in * h * w; }
  int64_t out_numel() const { return n * c_out * out_h() * out_w(); }
  // Throws ttq::Error when the geometry is impossible.
  void validate(const std::string& who) const;
  std::string str() const;
};

enum class PoolKind { Max, Avg };

struct Pool2dShape {
  int64_t n = 1, c = 1, h = 1, w = 1;
  int64_t kh = 2, kw = 2, stride_h = 2, stride_w = 2;
  int64_t pad_t = 0, pad_l = 0, pad_b = 0, pad_r = 0;
  // Average pooling only: whether padded positions count in the divisor (PyTorch's default true,
  // TensorFlow's "same" pooling false).
  bool count_include_pad = true;

  int64_t out_h() const { return (h + pad_t + pad_b - kh) / stride_h + 1; }
  int64_t out_w() const { return (w + pad_l + pad_r - kw) / stride_w + 1; }
  int64_t in_numel() const { return n * c * h * w; }
  int64_t out_numel() const { return n * c * out_h() * out_w(); }
  void validate(const std::string& who) const;
  std::string str() const;
};

// Batch norm over N x C x S (S = H*W for 2-d, 1 for 1-d). channels_last: stored N x S x C, set
// by kernels/ops.cpp for the CUDA kernels (as Conv2dShape::channels_last).
struct BatchNormShape {
  int64_t n = 1, c = 1, s = 1;
  bool channels_last = false;
  int64_t numel() const { return n * c * s; }
};

// The same problem as channels-first rows: a channels-last N x S x C tensor is N*S rows of C
// values, i.e. an (N*S) x C x 1 tensor in NCHW order, with the same per-channel values (and the
// same count per channel). Kernels written for N x C x S take channels-last input through it.
inline BatchNormShape channels_first_rows(const BatchNormShape& s) {
  if (!s.channels_last) return s;
  BatchNormShape r;
  r.n = s.n * s.s;
  r.c = s.c;
  r.s = 1;
  return r;
}

// Padding that TensorFlow's "same" gives for one spatial axis: {before, after}.
struct PadPair {
  int64_t before = 0, after = 0;
};
PadPair same_padding(int64_t in, int64_t kernel, int64_t stride);

// Sets s.pad_t/l/b/r for a conv or pool geometry: TensorFlow "same" padding when `same`,
// otherwise `pad` on every side.
template <typename S> void set_padding(S& s, bool same, int64_t pad) {
  if (same) {
    const PadPair ph = same_padding(s.h, s.kh, s.stride_h), pw = same_padding(s.w, s.kw, s.stride_w);
    s.pad_t = ph.before;
    s.pad_b = ph.after;
    s.pad_l = pw.before;
    s.pad_r = pw.after;
  } else {
    s.pad_t = s.pad_b = s.pad_l = s.pad_r = pad;
  }
}

}  // namespace ttq
