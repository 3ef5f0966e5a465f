#include "engine/data/transforms.h"

#include <cmath>

namespace ttq {

Normalization Normalization::channel_stats(const ImageSet& train) {
  const int64_t c = train.spec.channels, hw = train.spec.height * train.spec.width;
  std::vector<double> sum(c, 0.0), sq(c, 0.0);
  for (int64_t i = 0; i < train.size(); ++i) {
    const uint8_t* img = train.image(i);
    for (int64_t ch = 0; ch < c; ++ch)
      for (int64_t j = 0; j < hw; ++j) {
        const double v = img[ch * hw + j] / 255.0;
        sum[ch] += v;
        sq[ch] += v * v;
      }
  }
  Normalization n;
  n.kind = "channel";
  const double count = static_cast<double>(train.size() * hw);
  for (int64_t ch = 0; ch < c; ++ch) {
    const double m = sum[ch] / count;
    n.mean.push_back(static_cast<float>(m));
    n.std.push_back(static_cast<float>(std::sqrt(std::max(sq[ch] / count - m * m, 1e-12))));
  }
  return n;
}

Normalization Normalization::pixel_mean(const ImageSet& train) {
  const int64_t per = train.spec.channels * train.spec.height * train.spec.width;
  std::vector<double> sum(per, 0.0);
  for (int64_t i = 0; i < train.size(); ++i) {
    const uint8_t* img = train.image(i);
    for (int64_t j = 0; j < per; ++j) sum[j] += img[j];
  }
  Normalization n;
  n.kind = "pixel_mean";
  for (double s : sum) n.mean.push_back(static_cast<float>(s / train.size()));
  return n;
}

Normalization Normalization::none(int64_t channels) {
  Normalization n;
  n.kind = "none";
  n.mean.assign(channels, 0.0f);
  n.std.assign(channels, 1.0f);
  return n;
}

void transform_image(const uint8_t* src, const InputSpec& spec, const Normalization& norm, const Augment& aug,
                     bool augment, Rng& rng, float* out) {
  const int64_t c = spec.channels, h = spec.height, w = spec.width;
  // Random choices are drawn in a fixed order whether or not they are used, so enabling one
  // augmentation does not shift the others' random streams.
  const int64_t span = 2 * aug.pad + 1;
  const int64_t dy = static_cast<int64_t>(rng.below(static_cast<uint64_t>(span))) - aug.pad;
  const int64_t dx = static_cast<int64_t>(rng.below(static_cast<uint64_t>(span))) - aug.pad;
  const bool flip = rng.uniform() < 0.5;
  const int64_t oy = augment ? dy : 0, ox = augment ? dx : 0;
  const bool do_flip = augment && aug.hflip && flip;
  const bool per_pixel = norm.kind == "pixel_mean";
  for (int64_t ch = 0; ch < c; ++ch) {
    for (int64_t y = 0; y < h; ++y) {
      for (int64_t x = 0; x < w; ++x) {
        const int64_t sy = y + oy, sx0 = x + ox;
        const int64_t sx = do_flip ? (w - 1 - x) + ox : sx0;
        // Pad with black, crop, flip, then normalise (the authors' CIFAR order, and torchvision's
        // RandomCrop(padding) before Normalize): a padded pixel is a raw 0, and the per-pixel
        // mean subtracted is the one of the output position.
        const bool inside = sy >= 0 && sy < h && sx >= 0 && sx < w;
        const float raw = inside ? static_cast<float>(src[(ch * h + sy) * w + sx]) : 0.0f;
        const int64_t o = (ch * h + y) * w + x;
        out[o] = per_pixel ? (raw - norm.mean[o]) / 128.0f : (raw / 255.0f - norm.mean[ch]) / norm.std[ch];
      }
    }
  }
}

}  // namespace ttq
