// A fixed synthetic classification problem for tests and smoke runs: each class has a
// random prototype image; a sample is its class prototype plus Gaussian noise. Sample i is a pure
// function of (seed, i), so any slice can be regenerated exactly.
#pragma once

#include "engine/data/batch.h"
#include "engine/data/loader.h"
#include "models/model.h"

namespace ttq {

class SyntheticDataset : public SampleSource {
 public:
  // Samples offset .. offset + size - 1 of the problem defined by (spec, noise, seed): a training
  // and a test set share the prototypes and differ in offset.
  SyntheticDataset(const InputSpec& spec, int64_t size, float noise, uint64_t seed, int64_t offset = 0);
  int64_t size() const override { return size_; }
  InputSpec spec() const override { return spec_; }
  int32_t fetch(int64_t index, bool augment, Rng& rng, float* out) const override;
  // Samples [begin, begin + count), wrapping around the end.
  Batch batch(int64_t begin, int64_t count) const;

 private:
  InputSpec spec_;
  int64_t size_;
  float noise_;
  uint64_t seed_;
  int64_t offset_;
  std::vector<float> prototypes_;  // classes x C x H x W
};

}  // namespace ttq
