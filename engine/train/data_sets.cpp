#include "engine/train/data_sets.h"

#include <sstream>

#include "engine/data/image_set.h"
#include "engine/data/synthetic.h"

namespace ttq {

SubsetSource::SubsetSource(std::shared_ptr<const SampleSource> src, int64_t n) : src_(std::move(src)), n_(n) {
  TTQ_CHECK(n > 0 && n <= src_->size(), "data: subset of " << n << " from " << src_->size() << " samples");
}

DataSets load_data_sets(const DataConfig& cfg, uint64_t seed) {
  DataSets d;
  if (cfg.dataset == "synthetic") {
    d.spec = {1, cfg.synthetic_size, cfg.synthetic_size, cfg.synthetic_classes};
    const float noise = static_cast<float>(cfg.synthetic_noise);
    d.train = std::make_shared<SyntheticDataset>(d.spec, cfg.synthetic_train, noise, seed, 0);
    d.test = std::make_shared<SyntheticDataset>(d.spec, cfg.synthetic_test, noise, seed, int64_t(1) << 40);
  } else {
    std::shared_ptr<ImageSet> train, test;
    if (cfg.dataset == "fashion_mnist" || cfg.dataset == "mnist") {
      train = std::make_shared<ImageSet>(load_mnist_like(cfg.root, true, cfg.dataset));
      test = std::make_shared<ImageSet>(load_mnist_like(cfg.root, false, cfg.dataset));
    } else if (cfg.dataset == "cifar10") {
      train = std::make_shared<ImageSet>(load_cifar10(cfg.root, true));
      test = std::make_shared<ImageSet>(load_cifar10(cfg.root, false));
    } else {
      train = std::make_shared<ImageSet>(load_cifar100(cfg.root, true));
      test = std::make_shared<ImageSet>(load_cifar100(cfg.root, false));
    }
    d.spec = train->spec;
    TTQ_CHECK(test->spec.channels == d.spec.channels && test->spec.height == d.spec.height && test->spec.width == d.spec.width,
              "data: train and test images of " << cfg.dataset << " differ in size");
    // Normalisation statistics come from the training images only.
    Normalization norm = cfg.normalize == "channel"      ? Normalization::channel_stats(*train)
                         : cfg.normalize == "pixel_mean" ? Normalization::pixel_mean(*train)
                                                         : Normalization::none(d.spec.channels);
    d.train = std::make_shared<ImageSetSource>(train, norm, cfg.augment);
    d.test = std::make_shared<ImageSetSource>(test, norm, cfg.augment);
  }
  if (cfg.train_subset > 0 && cfg.train_subset < d.train->size())
    d.train = std::make_shared<SubsetSource>(d.train, cfg.train_subset);
  if (cfg.test_subset > 0 && cfg.test_subset < d.test->size())
    d.test = std::make_shared<SubsetSource>(d.test, cfg.test_subset);
  std::ostringstream os;
  os << cfg.dataset << ": " << d.train->size() << " train, " << d.test->size() << " test, " << d.spec.channels << "x"
     << d.spec.height << "x" << d.spec.width << ", " << d.spec.classes << " classes";
  d.description = os.str();
  return d;
}

}  // namespace ttq
