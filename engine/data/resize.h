// Resampling of 8-bit RGB images: bilinear with antialiasing, i.e. a triangle filter whose
// support widens by the downscale factor (Pillow's BILINEAR resize, which torchvision uses for
// PIL images and matches with antialias=True on tensors). Separable: a horizontal pass into an
// 8-bit intermediate, then a vertical pass, as Pillow does, in 14-bit fixed point (Pillow uses 22
// bits; the results stay within one level of the exact filter and may differ from Pillow's by
// one level), integer arithmetic only, so results are identical on every machine whether or not
// the SSSE3 horizontal pass is used.
//
// Geometry (Pillow's): the source box [x0, x1) maps onto out_width output pixels; output pixel i
// is centred at x0 + (i + 0.5) * (x1 - x0) / out_width, and its filter takes the source pixels
// within (1 x max(1, scale)) of that centre, pixel x counting as centred at x + 0.5. Taps are
// limited to the source pixels the box touches ([floor(x0), ceil(x1)) clipped to the image), so
// resizing a box equals cropping it first and resizing the crop, as torchvision's resized_crop
// does.
#pragma once

#include <cstdint>
#include <vector>

namespace ttq {

// An 8-bit RGB image in memory: height rows of width x 3 bytes, `stride` bytes apart.
struct RgbView {
  const uint8_t* data = nullptr;
  int width = 0, height = 0;
  int64_t stride = 0;
};

// A source rectangle in pixel coordinates (fractional allowed); pixel x covers [x, x + 1).
struct Box {
  double x0 = 0, y0 = 0, x1 = 0, y1 = 0;
};

// Resizes `box` of src to out_width x out_height and writes the part [rx, rx + rw) x [ry, ry + rh)
// of that result to dst (rw x rh x 3 bytes, row-major); only that part is computed.
void resize_rgb(const RgbView& src, const Box& box, int out_width, int out_height, int rx, int ry, int rw, int rh,
                uint8_t* dst);

// The same computed without SIMD (for tests: it must give identical bytes).
void resize_rgb_portable(const RgbView& src, const Box& box, int out_width, int out_height, int rx, int ry, int rw,
                         int rh, uint8_t* dst);

// The whole source resized to out_width x out_height.
std::vector<uint8_t> resize_rgb(const RgbView& src, int out_width, int out_height);

}  // namespace ttq
