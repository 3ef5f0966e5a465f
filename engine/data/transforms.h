// Turning stored images into network inputs: normalisation and the CIFAR-style augmentation
// (zero padding + random crop, horizontal flip). All randomness comes from the Rng passed in,
// which the loader seeds from (seed, epoch, sample index).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "engine/core/rng.h"
#include "engine/data/image_set.h"

namespace ttq {

struct Normalization {
  // "channel": (x/255 - mean[c]) / std[c]. "pixel_mean": (x - mean[c,h,w]) / 128 with x in 0..255
  // (the TTQ authors' CIFAR input). "none": x / 255.
  std::string kind = "channel";
  std::vector<float> mean, std;  // per channel (in 0..1 units), or per pixel for pixel_mean (0..255)

  // Statistics of a training set.
  static Normalization channel_stats(const ImageSet& train);
  static Normalization pixel_mean(const ImageSet& train);
  static Normalization none(int64_t channels);
};

struct Augment {
  int64_t pad = 0;          // black (raw 0) padding on every side before the random crop, normalised after (0: no crop)
  bool hflip = false;       // random horizontal flip with probability 1/2
};

// Writes the normalised (and, when augment is set, augmented) C x H x W float image.
void transform_image(const uint8_t* src, const InputSpec& spec, const Normalization& norm, const Augment& aug,
                     bool augment, Rng& rng, float* out);

}  // namespace ttq
