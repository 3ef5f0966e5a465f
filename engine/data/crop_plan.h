// The ImageNet-style image transforms as plans: which source rectangle of a full-resolution
// image is resized to which size, which part of that is kept, whether it is flipped. A plan
// depends only on the image's stored size and the Rng, so the same sample always gets the same
// plan whatever DCT scale it is then decoded at; render_crop applies it to the decoded pixels
// and writes the normalised float C x H x W input.
//
// - plan_eval: torchvision Resize(resize) + CenterCrop(size): the short side becomes `resize`,
//   the long side int(resize * long / short); the crop's top-left corner is
//   round((resized - size) / 2) with Python's round (half to even).
// - plan_alexnet: the TTQ authors' AlexNet training input (tw-imagenet-alexnet.py): a short
//   side s drawn uniformly from the integers [size, size * 11 / 8) ([224, 308) for 224), per-axis
//   factors s / short * U(0.85, 1.15) drawn independently for x and y, each new side
//   int(max(size, min(side, factor * side))) (as in the authors' code, an axis is never enlarged
//   beyond its stored size except to reach `size`), then a uniformly random size x size crop
//   (every position possible) and a horizontal flip with probability 1/2. The authors resized
//   with OpenCV's bicubic filter; here it is the antialiased bilinear filter of resize.h.
// - plan_random_resized_crop: torchvision RandomResizedCrop(size, scale, ratio) with its
//   10-attempt search (area fraction ~ U(scale), log aspect ratio ~ U(log ratio), sides rounded
//   half to even, kept when they fit, then a uniform position) and its centre-crop fallback,
//   followed by a horizontal flip with probability 1/2.
#pragma once

#include <cstdint>
#include <vector>

#include "engine/core/rng.h"
#include "engine/data/jpeg.h"
#include "engine/data/resize.h"
#include "engine/data/transforms.h"

namespace ttq {

struct CropPlan {
  int width = 0, height = 0;          // the image's stored (full-resolution) size
  Box box;                            // source rectangle, in full-resolution pixels
  int resized_width = 0, resized_height = 0;  // the box is resized to this
  int crop_x = 0, crop_y = 0;         // top-left corner of the output in the resized box
  int out_size = 0;                   // the output is out_size x out_size
  bool flip = false;                  // mirror left-right

  // The smallest full-image decode size (for choose_jpeg_scale) at which the box still has at
  // least resized_width x resized_height pixels, so that decoding at a reduced DCT scale never
  // leaves the final resize an enlargement it would not otherwise be.
  int min_decode_width() const;
  int min_decode_height() const;
};

CropPlan plan_eval(int width, int height, int resize, int size);
CropPlan plan_alexnet(int width, int height, int size, Rng& rng);
CropPlan plan_random_resized_crop(int width, int height, int size, Rng& rng, double scale_lo = 0.08,
                                  double scale_hi = 1.0, double ratio_lo = 3.0 / 4.0, double ratio_hi = 4.0 / 3.0);

// 3 x 256 floats: lut[c * 256 + v] = (v / 255 - mean[c]) / std[c] (kind "channel"; "none" has mean
// 0 and std 1), the same float arithmetic as transform_image.
std::vector<float> normalization_lut(const Normalization& norm);

// Applies a plan to an image decoded at img.scale and writes 3 x out_size x out_size floats.
void render_crop(const JpegImage& img, const CropPlan& plan, const float* lut, float* out);

}  // namespace ttq
