// Building the training and test sample sources an experiment asks for.
#pragma once

#include <memory>
#include <string>

#include "engine/data/loader.h"
#include "engine/train/experiment.h"

namespace ttq {

struct DataSets {
  std::shared_ptr<const SampleSource> train, test;
  InputSpec spec;
  std::string description;  // "fashion_mnist: 60000 train, 10000 test, 1x28x28, 10 classes"
};

DataSets load_data_sets(const DataConfig& cfg, uint64_t seed);

// The first n samples of a source.
class SubsetSource : public SampleSource {
 public:
  SubsetSource(std::shared_ptr<const SampleSource> src, int64_t n);
  int64_t size() const override { return n_; }
  InputSpec spec() const override { return src_->spec(); }
  int32_t fetch(int64_t index, bool augment, Rng& rng, float* out) const override {
    return src_->fetch(index, augment, rng, out);
  }

 private:
  std::shared_ptr<const SampleSource> src_;
  int64_t n_;
};

}  // namespace ttq
