#include "engine/data/synthetic.h"

#include <cstring>

#include "engine/core/rng.h"

namespace ttq {

SyntheticDataset::SyntheticDataset(const InputSpec& spec, int64_t size, float noise, uint64_t seed, int64_t offset)
    : spec_(spec), size_(size), noise_(noise), seed_(seed), offset_(offset) {
  TTQ_CHECK(size > 0 && spec.classes > 1 && spec.channels > 0 && spec.height > 0 && spec.width > 0,
            "synthetic data: invalid size " << size << " or input spec");
  int64_t per = 0, all = 0;
  TTQ_CHECK(!__builtin_mul_overflow(spec.channels, spec.height, &per) && !__builtin_mul_overflow(per, spec.width, &per) &&
                !__builtin_mul_overflow(spec.classes, per, &all) && all <= (int64_t{1} << 28),
            "synthetic data: " << spec.classes << " class prototypes of " << spec.channels << "x" << spec.height << "x"
                               << spec.width << " are more than 2^28 values");
  prototypes_.resize(static_cast<size_t>(all));
  Rng rng(seed);
  for (auto& v : prototypes_) v = static_cast<float>(rng.normal());
}

int32_t SyntheticDataset::fetch(int64_t index, bool, Rng&, float* out) const {
  const int64_t per = spec_.channels * spec_.height * spec_.width;
  uint64_t key = seed_ ^ (0x5851f42d4c957f2dULL * static_cast<uint64_t>(offset_ + index + 1));
  Rng rng(Rng::splitmix64(key));
  const int32_t label = static_cast<int32_t>(rng.below(static_cast<uint64_t>(spec_.classes)));
  const float* proto = prototypes_.data() + label * per;
  for (int64_t j = 0; j < per; ++j) out[j] = proto[j] + noise_ * static_cast<float>(rng.normal());
  return label;
}

Batch SyntheticDataset::batch(int64_t begin, int64_t count) const {
  const int64_t per = spec_.channels * spec_.height * spec_.width;
  Batch b;
  b.images = Tensor::empty({count, spec_.channels, spec_.height, spec_.width});
  b.labels.resize(static_cast<size_t>(count));
  Rng unused;
  for (int64_t k = 0; k < count; ++k)
    b.labels[k] = fetch((begin + k) % size_, false, unused, b.images.data<float>() + k * per);
  return b;
}

}  // namespace ttq
