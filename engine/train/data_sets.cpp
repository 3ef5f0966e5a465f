#include "engine/train/data_sets.h"

#include <filesystem>
#include <sstream>

#include "engine/data/image_folder.h"
#include "engine/data/image_set.h"
#include "engine/data/synthetic.h"

namespace ttq {

SubsetSource::SubsetSource(std::shared_ptr<const SampleSource> src, int64_t n, bool spread)
    : src_(std::move(src)), n_(n), spread_(spread) {
  TTQ_CHECK(n > 0 && n <= src_->size(), "data: subset of " << n << " from " << src_->size() << " samples");
}

namespace {

// The data set's folder, named with its config key.
void check_root(const DataConfig& cfg) {
  std::error_code ec;
  TTQ_CHECK(std::filesystem::is_directory(cfg.root, ec),
            "data: the " << cfg.dataset << " folder '" << cfg.root << "' (config key 'data.root') "
                         << (std::filesystem::exists(cfg.root, ec) ? "is not a folder" : "does not exist"));
}

// root/train/<class>/*.JPEG and root/val/<class>/*.JPEG (or root/val + a list file).
DataSets load_imagenet(const DataConfig& cfg) {
  TTQ_CHECK(jpeg_supported(), "data: the imagenet data set needs JPEG decoding, but this build lacks TurboJPEG "
                              "(install libturbojpeg0-dev, or set TURBOJPEG_ROOT, and reconfigure with "
                              "-DTTQ_WITH_TURBOJPEG=ON)");
  check_root(cfg);
  ImageFolderOptions opt;
  opt.image_size = cfg.image_size;
  opt.resize = cfg.resize;
  opt.train_augment = cfg.train_augment;
  opt.on_corrupt = cfg.on_corrupt;
  opt.scaled_decode = cfg.scaled_decode;
  opt.norm = cfg.normalize == "none" ? Normalization::none(3) : imagenet_normalization();
  ImageFolderIndex train = scan_image_folder(cfg.root + "/train");
  const std::vector<std::string> classes = train.classes;
  const std::string val_dir = cfg.root + "/val";
  if (cfg.val_list.empty() && std::filesystem::is_directory(val_dir)) {
    bool has_class_folder = false;
    std::error_code ec;
    for (std::filesystem::directory_iterator it(val_dir, ec), end; !ec && it != end; it.increment(ec))
      if (it->is_directory(ec)) {
        has_class_folder = true;
        break;
      }
    TTQ_CHECK(!ec, "data: cannot list '" << val_dir << "': " << ec.message());
    TTQ_CHECK(has_class_folder, "data: '" << val_dir << "' has no class folders; set data.val_list to a file "
                                          << "labelling its images (engine/data/image_folder.h gives the format)");
  }
  ImageFolderIndex val = cfg.val_list.empty() ? scan_image_folder(val_dir, classes)
                                              : read_image_list(val_dir, cfg.val_list, classes);
  DataSets d;
  d.train = std::make_shared<ImageFolderSource>(std::move(train), opt);
  d.test = std::make_shared<ImageFolderSource>(std::move(val), opt);
  d.spec = d.train->spec();
  return d;
}

}  // namespace

DataSets load_data_sets(const DataConfig& cfg, uint64_t seed) {
  DataSets d;
  if (cfg.dataset == "synthetic") {
    d.spec = {1, cfg.synthetic_size, cfg.synthetic_size, cfg.synthetic_classes};
    const float noise = static_cast<float>(cfg.synthetic_noise);
    d.train = std::make_shared<SyntheticDataset>(d.spec, cfg.synthetic_train, noise, seed, 0);
    d.test = std::make_shared<SyntheticDataset>(d.spec, cfg.synthetic_test, noise, seed, int64_t(1) << 40);
  } else if (cfg.dataset == "imagenet") {
    d = load_imagenet(cfg);
  } else {
    std::shared_ptr<ImageSet> train, test;
    check_root(cfg);
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
  // ImageNet folders are stored class by class: its subsets are spread over the whole set.
  const bool spread = cfg.dataset == "imagenet";
  if (cfg.train_subset > 0 && cfg.train_subset < d.train->size())
    d.train = std::make_shared<SubsetSource>(d.train, cfg.train_subset, spread);
  if (cfg.test_subset > 0 && cfg.test_subset < d.test->size())
    d.test = std::make_shared<SubsetSource>(d.test, cfg.test_subset, spread);
  std::ostringstream os;
  os << cfg.dataset << ": " << d.train->size() << " train, " << d.test->size() << " test, " << d.spec.channels << "x"
     << d.spec.height << "x" << d.spec.width << ", " << d.spec.classes << " classes";
  d.description = os.str();
  return d;
}

}  // namespace ttq
