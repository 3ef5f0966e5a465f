// A fixed synthetic classification problem for tests, demos and benchmarks: each class has a
// random prototype image; a sample is its class prototype plus Gaussian noise. Sample i is a pure
// function of (seed, i), so any slice can be regenerated exactly.
#pragma once

#include "engine/data/batch.h"
#include "models/model.h"

namespace ttq {

class SyntheticDataset {
 public:
  SyntheticDataset(const InputSpec& spec, int64_t size, float noise, uint64_t seed);
  int64_t size() const { return size_; }
  const InputSpec& spec() const { return spec_; }
  // Samples [begin, begin + count), wrapping around the end.
  Batch batch(int64_t begin, int64_t count) const;

 private:
  InputSpec spec_;
  int64_t size_;
  float noise_;
  uint64_t seed_;
  std::vector<float> prototypes_;  // classes x C x H x W
};

}  // namespace ttq
