#include "engine/train/data_sets.h"

#include <cmath>
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

// root/train/<class>/*.JPEG and root/val/<class>/*.JPEG (or root/val + a list file). With given
// (the training set's classes), root/train is not read.
DataSets load_imagenet(const DataConfig& cfg, const TrainingSetInfo* given) {
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
  DataSets d;
  std::vector<std::string> classes;
  if (given) {
    TTQ_CHECK(!given->classes.empty(), "data: the stored imagenet training set has no class names");
    classes = given->classes;
  } else {
    ImageFolderIndex train = scan_image_folder(cfg.root + "/train");
    classes = train.classes;
    // Checkpoints keep the class names (JSON text), for evaluating without the training folder.
    for (const auto& c : classes) {
      try {
        (void)json(c).dump();
      } catch (const json::exception&) {
        TTQ_FAIL("data: the class folder '" << cfg.root << "/train/" << c << "' has a name that is not UTF-8; "
                                            << "rename it");
      }
    }
    d.train = std::make_shared<ImageFolderSource>(std::move(train), opt);
  }
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
  d.test = std::make_shared<ImageFolderSource>(std::move(val), opt);
  d.spec = (d.train ? d.train : d.test)->spec();
  d.info.norm = opt.norm;
  d.info.classes = classes;
  return d;
}

// The test set of a stored training set must have its input.
void check_same_input(const TrainingSetInfo& given, const InputSpec& spec, const DataConfig& cfg) {
  const InputSpec& in = given.input;
  TTQ_CHECK(in.channels == spec.channels && in.height == spec.height && in.width == spec.width &&
                in.classes == spec.classes,
            "data: the model was trained on " << in.channels << "x" << in.height << "x" << in.width << " inputs of "
                                              << in.classes << " classes, but " << cfg.dataset << " in '" << cfg.root
                                              << "' has " << spec.channels << "x" << spec.height << "x" << spec.width
                                              << " and " << spec.classes);
}

// Loads the data set; given (the stored training-set information) skips the training files.
DataSets load(const DataConfig& cfg, uint64_t seed, const TrainingSetInfo* given) {
  DataSets d;
  if (cfg.dataset == "synthetic") {
    d.spec = {1, cfg.synthetic_size, cfg.synthetic_size, cfg.synthetic_classes};
    const float noise = static_cast<float>(cfg.synthetic_noise);
    if (!given) d.train = std::make_shared<SyntheticDataset>(d.spec, cfg.synthetic_train, noise, seed, 0);
    d.test = std::make_shared<SyntheticDataset>(d.spec, cfg.synthetic_test, noise, seed, int64_t(1) << 40);
    d.info.norm.kind = "";
    if (given) check_same_input(*given, d.spec, cfg);
  } else if (cfg.dataset == "imagenet") {
    d = load_imagenet(cfg, given);
    if (given) check_same_input(*given, d.spec, cfg);
  } else {
    std::shared_ptr<ImageSet> train, test;
    check_root(cfg);
    if (cfg.dataset == "fashion_mnist" || cfg.dataset == "mnist") {
      if (!given) train = std::make_shared<ImageSet>(load_mnist_like(cfg.root, true, cfg.dataset));
      test = std::make_shared<ImageSet>(load_mnist_like(cfg.root, false, cfg.dataset));
    } else if (cfg.dataset == "cifar10") {
      if (!given) train = std::make_shared<ImageSet>(load_cifar10(cfg.root, true));
      test = std::make_shared<ImageSet>(load_cifar10(cfg.root, false));
    } else {
      if (!given) train = std::make_shared<ImageSet>(load_cifar100(cfg.root, true));
      test = std::make_shared<ImageSet>(load_cifar100(cfg.root, false));
    }
    if (train) {
      d.spec = train->spec;
      TTQ_CHECK(test->spec.channels == d.spec.channels && test->spec.height == d.spec.height &&
                    test->spec.width == d.spec.width,
                "data: train and test images of " << cfg.dataset << " differ in size");
    } else {
      d.spec = test->spec;
      check_same_input(*given, d.spec, cfg);  // before its statistics meet these images
    }
    // Normalisation statistics come from the training images only.
    if (given) {
      d.info.norm = given->norm;
      TTQ_CHECK(d.info.norm.kind == cfg.normalize,
                "data: the stored normalisation is '" << d.info.norm.kind << "', the config's data.normalize '"
                                                      << cfg.normalize << "'");
    } else {
      d.info.norm = cfg.normalize == "channel"      ? Normalization::channel_stats(*train)
                    : cfg.normalize == "pixel_mean" ? Normalization::pixel_mean(*train)
                                                    : Normalization::none(d.spec.channels);
      d.train = std::make_shared<ImageSetSource>(train, d.info.norm, cfg.augment);
    }
    d.test = std::make_shared<ImageSetSource>(test, d.info.norm, cfg.augment);
  }
  d.info.input = d.spec;
  // ImageNet folders are stored class by class: its subsets are spread over the whole set.
  const bool spread = cfg.dataset == "imagenet";
  if (d.train && cfg.train_subset > 0 && cfg.train_subset < d.train->size())
    d.train = std::make_shared<SubsetSource>(d.train, cfg.train_subset, spread);
  if (cfg.test_subset > 0 && cfg.test_subset < d.test->size())
    d.test = std::make_shared<SubsetSource>(d.test, cfg.test_subset, spread);
  std::ostringstream os;
  os << cfg.dataset << ": ";
  if (d.train) os << d.train->size() << " train, ";
  os << d.test->size() << " test, " << d.spec.channels << "x" << d.spec.height << "x" << d.spec.width << ", "
     << d.spec.classes << " classes";
  d.description = os.str();
  return d;
}

}  // namespace

DataSets load_data_sets(const DataConfig& cfg, uint64_t seed) { return load(cfg, seed, nullptr); }

DataSets load_test_set(const DataConfig& cfg, uint64_t seed, const TrainingSetInfo& info) {
  return load(cfg, seed, &info);
}

json TrainingSetInfo::to_json() const {
  json j = {{"input", {{"channels", input.channels}, {"height", input.height}, {"width", input.width},
                       {"classes", input.classes}}},
            {"normalize", {{"kind", norm.kind}, {"mean", norm.mean}, {"std", norm.std}}}};
  if (!classes.empty()) j["classes"] = classes;
  return j;
}

TrainingSetInfo TrainingSetInfo::from_json(const json& j, const std::string& where) {
  TrainingSetInfo t;
  try {
    const json& in = j.at("input");
    auto dim = [&](const char* key) {
      TTQ_CHECK(in.at(key).is_number_integer(), where << ": input " << key << " is not an integer");
      const int64_t v = in.at(key).get<int64_t>();
      TTQ_CHECK(v > 0 && v <= (int64_t{1} << 30), where << ": input " << key << " " << v << " is out of range");
      return v;
    };
    t.input = {dim("channels"), dim("height"), dim("width"), dim("classes")};
    const json& n = j.at("normalize");
    t.norm.kind = n.at("kind").get<std::string>();
    t.norm.mean = n.at("mean").get<std::vector<float>>();
    t.norm.std = n.at("std").get<std::vector<float>>();
    if (j.contains("classes")) t.classes = j.at("classes").get<std::vector<std::string>>();
  } catch (const json::exception& e) {
    TTQ_FAIL(where << ": " << e.what());
  }
  TTQ_CHECK(t.norm.kind.empty() || t.norm.kind == "channel" || t.norm.kind == "pixel_mean" || t.norm.kind == "none",
            where << ": unknown normalisation '" << t.norm.kind << "'");
  TTQ_CHECK(t.classes.empty() || static_cast<int64_t>(t.classes.size()) == t.input.classes,
            where << ": " << t.classes.size() << " class names for " << t.input.classes << " classes");
  // The statistics' sizes follow the kind: one per channel (mean and std), one mean per pixel, none.
  const InputSpec& in = t.input;
  const size_t means = t.norm.kind.empty()              ? 0
                       : t.norm.kind == "pixel_mean" ? static_cast<size_t>(in.channels * in.height * in.width)
                                                     : static_cast<size_t>(in.channels);
  const size_t stds = t.norm.kind == "pixel_mean" ? 0 : means;
  TTQ_CHECK(t.norm.mean.size() == means && t.norm.std.size() == stds,
            where << ": normalisation '" << t.norm.kind << "' of " << in.channels << "x" << in.height << "x" << in.width
                  << " inputs needs " << means << " means and " << stds << " standard deviations, not "
                  << t.norm.mean.size() << " and " << t.norm.std.size());
  for (float m : t.norm.mean) TTQ_CHECK(std::isfinite(m), where << ": a normalisation mean is not finite");
  for (float d : t.norm.std) TTQ_CHECK(std::isfinite(d) && d > 0.0f, where << ": a normalisation std is not positive");
  return t;
}

}  // namespace ttq
