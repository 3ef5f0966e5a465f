// Building the training and test sample sources an experiment asks for.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "engine/data/loader.h"
#include "engine/data/transforms.h"
#include "engine/train/experiment.h"

namespace ttq {

// What a trained model needs from its training set to be evaluated, stored with its checkpoints:
// the input, the normalisation statistics (fashion_mnist, mnist and cifar compute theirs from the
// training images) and, for imagenet, the class names (the validation images' labels follow the
// training folder's classes).
struct TrainingSetInfo {
  InputSpec input;
  Normalization norm;                // kind "" for synthetic data
  std::vector<std::string> classes;  // imagenet only
  json to_json() const;
  // Checks sizes and types; errors name `where`.
  static TrainingSetInfo from_json(const json& j, const std::string& where);
};

struct DataSets {
  std::shared_ptr<const SampleSource> train, test;  // train is null from load_test_set
  InputSpec spec;
  std::string description;  // "fashion_mnist: 60000 train, 10000 test, 1x28x28, 10 classes"
  TrainingSetInfo info;
};

DataSets load_data_sets(const DataConfig& cfg, uint64_t seed);
// The test set alone, with what the training set gave (no training file is read).
DataSets load_test_set(const DataConfig& cfg, uint64_t seed, const TrainingSetInfo& info);

// n samples of a source: the first n, or (spread) n evenly spaced ones, sample i being
// i * size / n of the source (for data sets stored class by class).
class SubsetSource : public SampleSource {
 public:
  SubsetSource(std::shared_ptr<const SampleSource> src, int64_t n, bool spread = false);
  int64_t size() const override { return n_; }
  InputSpec spec() const override { return src_->spec(); }
  int32_t fetch(int64_t index, bool augment, Rng& rng, float* out) const override {
    return src_->fetch(source_index(index), augment, rng, out);
  }
  int64_t source_index(int64_t index) const { return spread_ ? index * src_->size() / n_ : index; }
  int64_t skipped_samples() const override { return src_->skipped_samples(); }

 private:
  std::shared_ptr<const SampleSource> src_;
  int64_t n_;
  bool spread_;
};

}  // namespace ttq
