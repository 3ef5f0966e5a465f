// The data loader: background worker threads assemble batches ahead of the training loop.
// Every random choice depends only on (seed, epoch, sample index): the epoch's permutation on
// (seed, epoch), a sample's augmentation on (seed, epoch, index). Thread timing never changes a
// batch, so runs are reproducible and a resumed run sees the same batches.
#pragma once

#include <condition_variable>
#include <exception>
#include <map>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "engine/data/batch.h"
#include "engine/data/transforms.h"

namespace ttq {

// Something that can produce sample i as a float C x H x W image and a label.
class SampleSource {
 public:
  virtual ~SampleSource() = default;
  virtual int64_t size() const = 0;
  virtual InputSpec spec() const = 0;
  // augment: apply the training augmentation (drawing from rng); otherwise rng is unused.
  virtual int32_t fetch(int64_t index, bool augment, Rng& rng, float* out) const = 0;
  // Samples replaced so far because their file could not be read (see ImageFolderSource).
  virtual int64_t skipped_samples() const { return 0; }
};

// An ImageSet with its normalisation and augmentation.
class ImageSetSource : public SampleSource {
 public:
  ImageSetSource(std::shared_ptr<const ImageSet> set, Normalization norm, Augment aug);
  int64_t size() const override { return set_->size(); }
  InputSpec spec() const override { return set_->spec; }
  int32_t fetch(int64_t index, bool augment, Rng& rng, float* out) const override;

 private:
  std::shared_ptr<const ImageSet> set_;
  Normalization norm_;
  Augment aug_;
};

struct LoaderConfig {
  int64_t batch_size = 128;  // per rank
  bool shuffle = true;
  bool augment = true;
  bool drop_last = true;     // drop the last incomplete batch (training); false keeps it (evaluation)
  int workers = 2;
  int prefetch = 4;          // batches prepared ahead
  uint64_t seed = 0;
  int rank = 0, world = 1;   // each rank takes its slice of every global batch
};

class Loader {
 public:
  Loader(std::shared_ptr<const SampleSource> source, const LoaderConfig& cfg);
  ~Loader();
  Loader(const Loader&) = delete;
  Loader& operator=(const Loader&) = delete;

  int64_t batches_per_epoch() const;
  // Starts epoch `epoch` at batch `first_batch` (for resuming mid-epoch).
  void start_epoch(int64_t epoch, int64_t first_batch = 0);
  // The next batch of the epoch, or false when the epoch is done. Rethrows worker errors.
  bool next(Batch& out);

  // The sample indices of batch b of the given epoch for this rank (pure function, for tests).
  std::vector<int64_t> batch_indices(int64_t epoch, int64_t b) const;

 private:
  void stop_workers();
  void worker_loop();
  Batch make_batch(int64_t epoch, int64_t b) const;
  std::vector<int64_t> permutation(int64_t epoch) const;

  std::shared_ptr<const SampleSource> src_;
  LoaderConfig cfg_;
  std::vector<int64_t> perm_;
  int64_t epoch_ = -1, next_to_make_ = 0, next_to_give_ = 0, end_ = 0;
  bool stopping_ = false;
  std::map<int64_t, Batch> ready_;
  std::exception_ptr error_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<std::thread> threads_;
};

}  // namespace ttq
