// Evaluation, AlexNet and RandomResizedCrop plans, and rendering a plan (see crop_plan.h).
#include "engine/data/crop_plan.h"

#include <algorithm>
#include <cmath>

#include "engine/core/error.h"

namespace ttq {

namespace {

// Python's round(): half to even (nearbyint in the default rounding mode).
int py_round(double v) { return static_cast<int>(std::nearbyint(v)); }

CropPlan full_image_plan(int width, int height, int size) {
  TTQ_CHECK(width > 0 && height > 0 && size > 0, "crop plan: bad image size " << width << "x" << height);
  CropPlan p;
  p.width = width;
  p.height = height;
  p.box = Box{0, 0, double(width), double(height)};
  p.out_size = size;
  return p;
}

int min_decode(int resized, double box_side, int full_side) {
  // full_side * s >= resized * full_side / box_side  <=>  box_side * s >= resized
  return static_cast<int>(std::ceil(static_cast<double>(resized) * full_side / box_side - 1e-9));
}

}  // namespace

int CropPlan::min_decode_width() const { return min_decode(resized_width, box.x1 - box.x0, width); }
int CropPlan::min_decode_height() const { return min_decode(resized_height, box.y1 - box.y0, height); }

CropPlan plan_eval(int width, int height, int resize, int size) {
  TTQ_CHECK(resize >= size, "crop plan: resize " << resize << " is smaller than the crop " << size);
  CropPlan p = full_image_plan(width, height, size);
  if (width <= height) {
    p.resized_width = resize;
    p.resized_height = static_cast<int>(int64_t(resize) * height / width);
  } else {
    p.resized_height = resize;
    p.resized_width = static_cast<int>(int64_t(resize) * width / height);
  }
  p.crop_x = py_round((p.resized_width - size) / 2.0);
  p.crop_y = py_round((p.resized_height - size) / 2.0);
  return p;
}

CropPlan plan_alexnet(int width, int height, int size, Rng& rng) {
  CropPlan p = full_image_plan(width, height, size);
  const int hi = size * 11 / 8;  // 308 for 224
  const int short_side = size + static_cast<int>(rng.below(static_cast<uint64_t>(hi - size)));
  const double scale = static_cast<double>(short_side) / std::min(width, height);
  const double sx = scale * rng.uniform(0.85, 1.15);
  const double sy = scale * rng.uniform(0.85, 1.15);
  p.resized_width = static_cast<int>(std::max<double>(size, std::min<double>(width, sx * width)));
  p.resized_height = static_cast<int>(std::max<double>(size, std::min<double>(height, sy * height)));
  p.crop_x = static_cast<int>(rng.below(static_cast<uint64_t>(p.resized_width - size + 1)));
  p.crop_y = static_cast<int>(rng.below(static_cast<uint64_t>(p.resized_height - size + 1)));
  p.flip = rng.uniform() < 0.5;
  return p;
}

CropPlan plan_random_resized_crop(int width, int height, int size, Rng& rng, double scale_lo, double scale_hi,
                                  double ratio_lo, double ratio_hi) {
  CropPlan p = full_image_plan(width, height, size);
  const double area = static_cast<double>(width) * height;
  const double log_lo = std::log(ratio_lo), log_hi = std::log(ratio_hi);
  int w = 0, h = 0, i = 0, j = 0;
  bool found = false;
  for (int attempt = 0; attempt < 10 && !found; ++attempt) {
    const double target_area = area * rng.uniform(scale_lo, scale_hi);
    const double aspect = std::exp(rng.uniform(log_lo, log_hi));
    w = py_round(std::sqrt(target_area * aspect));
    h = py_round(std::sqrt(target_area / aspect));
    if (0 < w && w <= width && 0 < h && h <= height) {
      i = static_cast<int>(rng.below(static_cast<uint64_t>(height - h + 1)));
      j = static_cast<int>(rng.below(static_cast<uint64_t>(width - w + 1)));
      found = true;
    }
  }
  if (!found) {  // torchvision's fallback: the central crop of the nearest allowed aspect ratio
    const double in_ratio = static_cast<double>(width) / height;
    if (in_ratio < std::min(ratio_lo, ratio_hi)) {
      w = width;
      h = py_round(w / std::min(ratio_lo, ratio_hi));
    } else if (in_ratio > std::max(ratio_lo, ratio_hi)) {
      h = height;
      w = py_round(h * std::max(ratio_lo, ratio_hi));
    } else {
      w = width;
      h = height;
    }
    i = (height - h) / 2;
    j = (width - w) / 2;
  }
  p.box = Box{double(j), double(i), double(j + w), double(i + h)};
  p.resized_width = p.resized_height = size;
  p.flip = rng.uniform() < 0.5;
  return p;
}

std::vector<float> normalization_lut(const Normalization& norm) {
  TTQ_CHECK(norm.kind == "channel" || norm.kind == "none",
            "data: normalisation '" << norm.kind << "' is not available for JPEG images (use channel or none)");
  TTQ_CHECK(norm.kind == "none" || (norm.mean.size() == 3 && norm.std.size() == 3),
            "data: channel normalisation needs 3 means and 3 standard deviations");
  std::vector<float> lut(3 * 256);
  for (int c = 0; c < 3; ++c)
    for (int v = 0; v < 256; ++v) {
      const float raw = static_cast<float>(v);
      lut[c * 256 + v] = norm.kind == "none" ? raw / 255.0f : (raw / 255.0f - norm.mean[c]) / norm.std[c];
    }
  return lut;
}

void render_crop(const JpegImage& img, const CropPlan& plan, const float* lut, float* out) {
  TTQ_CHECK(img.full_width == plan.width && img.full_height == plan.height,
            "crop plan for a " << plan.width << "x" << plan.height << " image applied to a " << img.full_width << "x"
                               << img.full_height << " one");
  const double s = img.scale.value();
  // The box in decoded pixels; the scaled image covers exactly full_size * s of them.
  Box box{plan.box.x0 * s, plan.box.y0 * s, plan.box.x1 * s, plan.box.y1 * s};
  box.x1 = std::min(box.x1, double(img.width));
  box.y1 = std::min(box.y1, double(img.height));
  const int n = plan.out_size;
  thread_local std::vector<uint8_t> crop;
  crop.resize(static_cast<size_t>(n) * n * 3);
  resize_rgb(RgbView{img.rgb.data(), img.width, img.height, int64_t(img.width) * 3}, box, plan.resized_width,
             plan.resized_height, plan.crop_x, plan.crop_y, n, n, crop.data());
  const int64_t plane = int64_t(n) * n;
  for (int y = 0; y < n; ++y) {
    const uint8_t* row = crop.data() + int64_t(y) * n * 3;
    float* r = out + int64_t(y) * n;
    float* g = r + plane;
    float* b = g + plane;
    for (int x = 0; x < n; ++x) {
      const int sx = plan.flip ? n - 1 - x : x;
      r[x] = lut[row[3 * sx]];
      g[x] = lut[256 + row[3 * sx + 1]];
      b[x] = lut[512 + row[3 * sx + 2]];
    }
  }
}

}  // namespace ttq
