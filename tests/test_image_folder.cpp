// ImageNet-style folders on a tiny generated tree of JPEGs (RGB, grayscale, CMYK, progressive, a
// truncated file): class mapping and file order, list files, the evaluation transform against
// exact expectations, augmentation determinism, DCT-scaled decoding, corrupt-file skipping and
// the error mode, and the "imagenet" data set of an experiment (parsing, loading, a loader run).
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <set>

#include "engine/data/image_folder.h"
#include "engine/data/jpeg.h"
#include "engine/train/data_sets.h"
#include "engine/train/experiment.h"
#include "engine/train/trainer.h"
#include "tests/test_util.h"

using namespace ttq;
using ttq::testing::error_of;
using ttq::testing::TempDir;
using ttq::testing::write_bytes;
namespace fs = std::filesystem;

namespace {

#define SKIP_WITHOUT_TURBOJPEG() \
  if (!jpeg_supported()) GTEST_SKIP() << "built without TurboJPEG (JPEG decoding unavailable)"

std::vector<uint8_t> photo_like(int w, int h, uint64_t seed) {
  Rng rng(seed);
  const double fx = 0.01 + 0.02 * rng.uniform(), fy = 0.01 + 0.02 * rng.uniform();
  std::vector<uint8_t> p(static_cast<size_t>(w) * h * 3);
  for (int y = 0; y < h; ++y)
    for (int x = 0; x < w; ++x)
      for (int c = 0; c < 3; ++c) {
        const double v = 128 + 60 * std::sin(x * fx * (c + 1)) * std::cos(y * fy) + 40.0 * (x + y) / (w + h) - 20 +
                         8 * (rng.uniform() - 0.5);
        p[(static_cast<size_t>(y) * w + x) * 3 + c] = static_cast<uint8_t>(std::clamp(v, 0.0, 255.0));
      }
  return p;
}

void save(const std::string& path, const std::vector<uint8_t>& bytes) {
  fs::create_directories(fs::path(path).parent_path());
  write_bytes(path, std::string(bytes.begin(), bytes.end()));
}

void save_rgb(const std::string& path, int w, int h, uint64_t seed, bool progressive = false) {
  const auto p = photo_like(w, h, seed);
  save(path, encode_jpeg(p.data(), w, h, JpegColor::rgb, 92, progressive));
}

void save_gray(const std::string& path, int w, int h) {
  std::vector<uint8_t> g(static_cast<size_t>(w) * h);
  for (int i = 0; i < w * h; ++i) g[i] = static_cast<uint8_t>(60 + (i % w) % 120);
  save(path, encode_jpeg(g.data(), w, h, JpegColor::gray, 92));
}

void save_cmyk(const std::string& path, int w, int h) {
  const auto p = photo_like(w, h, 99);
  std::vector<uint8_t> q(static_cast<size_t>(w) * h * 4);
  for (int i = 0; i < w * h; ++i) {
    for (int c = 0; c < 3; ++c) q[4 * i + c] = p[3 * i + c];
    q[4 * i + 3] = 230;
  }
  save(path, encode_jpeg(q.data(), w, h, JpegColor::cmyk, 92));
}

void save_constant(const std::string& path, int w, int h, uint8_t r, uint8_t g, uint8_t b) {
  std::vector<uint8_t> p(static_cast<size_t>(w) * h * 3);
  for (size_t i = 0; i < p.size(); i += 3) {
    p[i] = r;
    p[i + 1] = g;
    p[i + 2] = b;
  }
  save(path, encode_jpeg(p.data(), w, h, JpegColor::rgb, 95));
}

// root/train/{ant,bee,cat} (created out of order), root/val/{ant,cat}; sorted samples:
// 0 ant/a1.JPEG  1 ant/a2.jpg (gray)  2 ant/sub/a3.JPEG (256x300)  3 bee/b1.jpeg (CMYK)
// 4 bee/b2.JPEG (progressive)  5 bee/b_bad.JPEG (truncated)  6 cat/c1.JPEG (constant)  7 cat/c2.Jpg (1500x1125)
struct Tree {
  TempDir tmp;
  std::string root = tmp.file("imagenet");
  Tree() {
    const std::string t = root + "/train";
    save_rgb(t + "/cat/c2.Jpg", 1500, 1125, 7);
    save_constant(t + "/cat/c1.JPEG", 500, 375, 30, 140, 220);
    save_cmyk(t + "/bee/b1.jpeg", 240, 240);
    save_rgb(t + "/bee/b2.JPEG", 320, 240, 2, true);
    const auto good = encode_jpeg(photo_like(300, 260, 5).data(), 300, 260, JpegColor::rgb, 92);
    save(t + "/bee/b_bad.JPEG", std::vector<uint8_t>(good.begin(), good.begin() + good.size() / 2));
    save_rgb(t + "/ant/a1.JPEG", 300, 260, 1);
    save_gray(t + "/ant/a2.jpg", 200, 240);
    save_rgb(t + "/ant/sub/a3.JPEG", 256, 300, 3);
    write_bytes(t + "/ant/notes.txt", "not an image");
    save_rgb(root + "/val/cat/v2.JPEG", 400, 300, 11);
    save_rgb(root + "/val/ant/v1.JPEG", 300, 400, 12);
  }
};

ImageFolderOptions options(int size = 224, int resize = 256) {
  ImageFolderOptions o;
  o.image_size = size;
  o.resize = resize;
  return o;
}

std::vector<float> fetch(const ImageFolderSource& s, int64_t i, bool augment, uint64_t seed, int32_t* label = nullptr) {
  const InputSpec sp = s.spec();
  std::vector<float> out(static_cast<size_t>(3 * sp.height * sp.width));
  Rng rng(seed);
  const int32_t l = s.fetch(i, augment, rng, out.data());
  if (label) *label = l;
  return out;
}

json imagenet_config(const std::string& root) {
  json j = json::parse(R"({
    "name": "inet", "seed": 5,
    "data": {"dataset": "imagenet", "image_size": 32, "resize": 40, "workers": 2},
    "model": {"name": "small_convnet"},
    "stages": [{"name": "fp", "epochs": 1, "batch_size": 4}]
  })");
  j["data"]["root"] = root;
  return j;
}

}  // namespace

TEST(ImageFolder, ClassesAndFilesInTorchvisionOrder) {
  SKIP_WITHOUT_TURBOJPEG();
  Tree t;
  const ImageFolderIndex idx = scan_image_folder(t.root + "/train");
  EXPECT_EQ(idx.classes, (std::vector<std::string>{"ant", "bee", "cat"}));
  ASSERT_EQ(idx.size(), 8);
  const std::vector<std::string> names{"ant/a1.JPEG", "ant/a2.jpg",   "ant/sub/a3.JPEG", "bee/b1.jpeg",
                                       "bee/b2.JPEG", "bee/b_bad.JPEG", "cat/c1.JPEG",     "cat/c2.Jpg"};
  const std::vector<int32_t> labels{0, 0, 0, 1, 1, 1, 2, 2};
  for (int64_t i = 0; i < 8; ++i) {
    EXPECT_EQ(idx.relative_path(i), names[i]);
    EXPECT_EQ(idx.label(i), labels[i]);
  }
  EXPECT_EQ(idx.path(6), t.root + "/train/cat/c1.JPEG");
  // Validation folders take the training classes' labels.
  const ImageFolderIndex val = scan_image_folder(t.root + "/val", idx.classes);
  ASSERT_EQ(val.size(), 2);
  EXPECT_EQ(val.relative_path(0), "ant/v1.JPEG");
  EXPECT_EQ(val.label(0), 0);
  EXPECT_EQ(val.label(1), 2);
}

TEST(ImageFolder, BadFoldersAreNamed) {
  TempDir d;
  std::string e = error_of([&] { scan_image_folder(d.file("nope/train")); });
  EXPECT_NE(e.find("'" + d.file("nope/train") + "' does not exist"), std::string::npos) << e;
  fs::create_directories(d.file("flat"));
  write_bytes(d.file("flat/x.JPEG"), "x");
  e = error_of([&] { scan_image_folder(d.file("flat")); });
  EXPECT_NE(e.find("'" + d.file("flat") + "' has no class folders"), std::string::npos) << e;
  fs::create_directories(d.file("t/empty"));
  fs::create_directories(d.file("t/full"));
  write_bytes(d.file("t/full/a.jpg"), "x");
  write_bytes(d.file("t/empty/readme.txt"), "x");
  e = error_of([&] { scan_image_folder(d.file("t")); });
  EXPECT_NE(e.find("class folder '" + d.file("t") + "/empty' has no JPEG files"), std::string::npos) << e;
  fs::remove_all(d.file("t/empty"));
  e = error_of([&] { scan_image_folder(d.file("t"), {"other"}); });
  EXPECT_NE(e.find("class folder '" + d.file("t") + "/full' is not one of the 1 training classes"), std::string::npos) << e;
}

// A second way to a folder (a link) is walked once, under the path first in name order, and a
// folder with a JPEG name is never an image; a link back to a folder above (a loop, which made
// the scan endless) is an error naming it.
TEST(ImageFolder, LinkedFoldersAreWalkedOnceAndLoopsRefused) {
  TempDir d;
  fs::create_directories(d.file("t/c1/sub"));
  fs::create_directories(d.file("t/c2"));
  write_bytes(d.file("t/c1/a.jpg"), "x");
  write_bytes(d.file("t/c1/sub/b.jpg"), "x");
  write_bytes(d.file("t/c2/c.jpg"), "x");
  fs::create_directories(d.file("t/c2/folder.jpg"));
  fs::create_directory_symlink("sub", d.file("t/c1/again"));  // a second way to c1/sub
  const ImageFolderIndex idx = scan_image_folder(d.file("t"));
  std::vector<std::string> names;
  for (int64_t i = 0; i < idx.size(); ++i) names.push_back(idx.relative_path(i));
  EXPECT_EQ(names, (std::vector<std::string>{"c1/a.jpg", "c1/again/b.jpg", "c2/c.jpg"}));
  fs::create_directory_symlink("..", d.file("t/c1/sub/up"));  // c1/sub/up -> c1
  const std::string loop = error_of([&] { scan_image_folder(d.file("t")); });
  EXPECT_NE(loop.find("leads back to a folder above it"), std::string::npos) << loop;
  EXPECT_NE(loop.find("/up'"), std::string::npos) << loop;
  // A list entry naming a folder is no file.
  fs::create_directories(d.file("v/x.JPEG"));
  write_bytes(d.file("v/list.txt"), "x.JPEG 0\n");
  const std::string e = error_of([&] { read_image_list(d.file("v"), d.file("v/list.txt"), {"c1", "c2"}); });
  EXPECT_NE(e.find("line 1: no file '" + d.file("v") + "/x.JPEG'"), std::string::npos) << e;
}

TEST(ImageFolder, ListFilesInTheCommonFormats) {
  TempDir d;
  const std::string val = d.file("val");
  fs::create_directories(val);
  for (const char* f : {"ILSVRC2012_val_00000001.JPEG", "ILSVRC2012_val_00000002.JPEG", "ILSVRC2012_val_00000003.JPEG"})
    write_bytes(val + "/" + f, "x");
  const std::vector<std::string> classes{"n01", "n02", "n03"};
  // "name index", in any order, with comments and blank lines.
  write_bytes(d.file("a.txt"), "# val labels\n\nILSVRC2012_val_00000003.JPEG 0\nILSVRC2012_val_00000001.JPEG 2\n");
  ImageFolderIndex idx = read_image_list(val, d.file("a.txt"), classes);
  ASSERT_EQ(idx.size(), 2);
  EXPECT_EQ(idx.relative_path(0), "ILSVRC2012_val_00000001.JPEG");  // ordered by name
  EXPECT_EQ(idx.label(0), 2);
  EXPECT_EQ(idx.label(1), 0);
  EXPECT_EQ(idx.path(1), val + "/ILSVRC2012_val_00000003.JPEG");
  // LOC_val_solution.csv: a header, names without extension, "wnid x y x y ..." after a comma.
  write_bytes(d.file("b.csv"),
              "ImageId,PredictionString\nILSVRC2012_val_00000002,n03 1 2 3 4 n03 5 6 7 8\n"
              "ILSVRC2012_val_00000001,n02 1 2 3 4\n");
  idx = read_image_list(val, d.file("b.csv"), classes);
  ASSERT_EQ(idx.size(), 2);
  EXPECT_EQ(idx.relative_path(1), "ILSVRC2012_val_00000002.JPEG");
  EXPECT_EQ(idx.label(0), 1);
  EXPECT_EQ(idx.label(1), 2);
  // Errors name the list file and line.
  std::string e = error_of([&] { read_image_list(val, d.file("missing.txt"), classes); });
  EXPECT_NE(e.find("cannot read the image list '" + d.file("missing.txt") + "'"), std::string::npos) << e;
  write_bytes(d.file("c.txt"), "ILSVRC2012_val_00000001.JPEG 1\nILSVRC2012_val_00000002.JPEG 3\n");
  e = error_of([&] { read_image_list(val, d.file("c.txt"), classes); });
  EXPECT_NE(e.find("'" + d.file("c.txt") + "' line 2: '3' is neither a class index below 3"), std::string::npos) << e;
  write_bytes(d.file("d.txt"), "ILSVRC2012_val_00000001.JPEG n01\nILSVRC2012_val_00000009.JPEG n02\n");
  e = error_of([&] { read_image_list(val, d.file("d.txt"), classes); });
  EXPECT_NE(e.find("line 2: no file '" + val + "/ILSVRC2012_val_00000009.JPEG'"), std::string::npos) << e;
  write_bytes(d.file("e.txt"), "ILSVRC2012_val_00000001.JPEG n01\nILSVRC2012_val_00000001.JPEG n02\n");
  e = error_of([&] { read_image_list(val, d.file("e.txt"), classes); });
  EXPECT_NE(e.find("listed twice"), std::string::npos) << e;
}

TEST(ImageFolderSource, EvalTransformMatchesHandComputedExpectations) {
  SKIP_WITHOUT_TURBOJPEG();
  Tree t;
  const ImageFolderSource src(scan_image_folder(t.root + "/train"), options());
  EXPECT_EQ(src.spec().channels, 3);
  EXPECT_EQ(src.spec().height, 224);
  EXPECT_EQ(src.spec().classes, 3);
  const float mean[3] = {0.485f, 0.456f, 0.406f}, sd[3] = {0.229f, 0.224f, 0.225f};
  // Sample 2 is 256 x 300: no resize, the crop is pixels [16, 240) x [38, 262) of the decoded image.
  const JpegImage dec = decode_jpeg_file(src.index().path(2));
  ASSERT_EQ(dec.width, 256);
  int32_t label = -1;
  const auto out = fetch(src, 2, false, 0, &label);
  EXPECT_EQ(label, 0);
  for (int c = 0; c < 3; ++c)
    for (int y = 0; y < 224; ++y)
      for (int x = 0; x < 224; ++x) {
        const float raw = dec.rgb[((38 + y) * 256 + 16 + x) * 3 + c];
        ASSERT_EQ(out[(c * 224 + y) * 224 + x], (raw / 255.0f - mean[c]) / sd[c]);
      }
  // Sample 6 is a constant (30, 140, 220) image: every output pixel is that colour.
  const auto flat = fetch(src, 6, false, 0, &label);
  EXPECT_EQ(label, 2);
  const int rgb[3] = {30, 140, 220};
  for (int c = 0; c < 3; ++c)
    for (int i = 0; i < 224 * 224; ++i)
      ASSERT_NEAR(flat[c * 224 * 224 + i], (rgb[c] / 255.0f - mean[c]) / sd[c], 1.5f / 255 / sd[c]);
  // The evaluation ignores the Rng.
  EXPECT_EQ(fetch(src, 7, false, 1), fetch(src, 7, false, 2));
}

TEST(ImageFolderSource, AugmentationDependsOnlyOnTheRandomStream) {
  SKIP_WITHOUT_TURBOJPEG();
  Tree t;
  for (const char* aug : {"random_resized_crop", "alexnet"}) {
    SCOPED_TRACE(aug);
    ImageFolderOptions o = options(64, 73);
    o.train_augment = aug;
    const ImageFolderSource src(scan_image_folder(t.root + "/train"), o);
    for (int64_t i : {0, 1, 3, 4, 7}) {
      const auto a = fetch(src, i, true, 1234), b = fetch(src, i, true, 1234);
      EXPECT_EQ(a, b) << i;
      EXPECT_NE(a, fetch(src, i, true, 999)) << i;
      for (float v : a) ASSERT_TRUE(std::isfinite(v));
    }
    EXPECT_NE(fetch(src, 0, true, 1234), fetch(src, 1, true, 1234));
  }
}

TEST(ImageFolderSource, ScaledDecodeChangesLittle) {
  SKIP_WITHOUT_TURBOJPEG();
  Tree t;
  ImageFolderOptions scaled = options(), full = options();
  scaled.norm = full.norm = Normalization::none(3);
  full.scaled_decode = false;
  const ImageFolderSource a(scan_image_folder(t.root + "/train"), scaled);
  const ImageFolderSource b(scan_image_folder(t.root + "/train"), full);
  // Sample 7 is 1500 x 1125: the evaluation resize to 341 x 256 lets it decode at 1/4 (375 x 282).
  const CropPlan p = plan_eval(1500, 1125, 256, 224);
  const JpegScale s = choose_jpeg_scale(1500, 1125, p.min_decode_width(), p.min_decode_height());
  EXPECT_EQ(s.num * 4, s.denom);
  for (bool augment : {false, true})
    for (uint64_t seed : {1, 2, 3}) {
      const auto x = fetch(a, 7, augment, seed), y = fetch(b, 7, augment, seed);
      double mad = 0;
      for (size_t i = 0; i < x.size(); ++i) mad += std::fabs(x[i] - y[i]);
      mad /= x.size();
      EXPECT_LT(mad, 1.5 / 255) << "augment " << augment << " seed " << seed;  // within 1.5 grey levels
    }
}

TEST(ImageFolderSource, CorruptFilesAreSkippedCountedAndNamedOnce) {
  SKIP_WITHOUT_TURBOJPEG();
  Tree t;
  const ImageFolderSource src(scan_image_folder(t.root + "/train"), options(64, 73));
  const std::string bad = t.root + "/train/bee/b_bad.JPEG";
  ::testing::internal::CaptureStderr();
  int32_t label = -1;
  const auto replaced = fetch(src, 5, true, 77, &label);
  const auto again = fetch(src, 5, true, 77);
  const std::string err = ::testing::internal::GetCapturedStderr();
  // Sample 5 is replaced by sample 6 with the same random draws.
  EXPECT_EQ(label, 2);
  EXPECT_EQ(replaced, fetch(src, 6, true, 77));
  EXPECT_EQ(again, replaced);
  EXPECT_EQ(src.skipped(), 2);
  EXPECT_EQ(src.corrupt_files(), 1);
  EXPECT_EQ(static_cast<const SampleSource&>(src).skipped_samples(), 2);  // what the trainer reports
  EXPECT_NE(err.find(bad), std::string::npos) << err;
  EXPECT_EQ(err.find(bad), err.rfind(bad)) << "warned more than once: " << err;
  // Error mode: the file is named.
  ImageFolderOptions strict = options(64, 73);
  strict.on_corrupt = "error";
  const ImageFolderSource src2(scan_image_folder(t.root + "/train"), strict);
  const std::string e = error_of([&] { fetch(src2, 5, false, 0); });
  EXPECT_NE(e.find("'" + bad + "'"), std::string::npos) << e;
  EXPECT_EQ(src2.corrupt_files(), 0);
  // Other kinds of bad file: not a JPEG, empty, vanished after the scan.
  write_bytes(t.root + "/train/ant/a1.JPEG", "\x89PNG\r\n\x1a\nreally a png");
  write_bytes(t.root + "/train/ant/a2.jpg", "");
  const ImageFolderSource src3(scan_image_folder(t.root + "/train"), options(64, 73));
  fs::remove(t.root + "/train/ant/sub/a3.JPEG");
  ::testing::internal::CaptureStderr();
  fetch(src3, 0, true, 1, &label);
  const std::string err3 = ::testing::internal::GetCapturedStderr();
  EXPECT_EQ(label, 1);  // the first readable one is sample 3 (bee)
  EXPECT_EQ(src3.corrupt_files(), 3);
  EXPECT_EQ(src3.skipped(), 1);
  EXPECT_NE(err3.find("holds a PNG image, not a JPEG"), std::string::npos) << err3;
  EXPECT_NE(err3.find("is empty"), std::string::npos) << err3;
  EXPECT_NE(err3.find("cannot open '" + t.root + "/train/ant/sub/a3.JPEG'"), std::string::npos) << err3;
}

TEST(ImageNetExperiment, ParsingRefusesUnknownAndBadKeys) {
  TempDir d;
  const json j = imagenet_config(d.file("inet"));
  ExperimentConfig c = parse_experiment(j);
  EXPECT_EQ(c.data.dataset, "imagenet");
  EXPECT_EQ(c.data.image_size, 32);
  EXPECT_EQ(c.data.train_augment, "random_resized_crop");
  EXPECT_EQ(c.data.on_corrupt, "skip");
  EXPECT_EQ(c.resolved["data"]["val_list"], "");
  EXPECT_EQ(c.resolved["data"]["scaled_decode"], true);
  json dflt = j;
  dflt["data"].erase("root");
  EXPECT_EQ(parse_experiment(dflt).data.root, "/data/imagenet");
  auto err = [](json x) { return error_of([&] { parse_experiment(x); }); };
  json typo = j;
  typo["data"]["val_lists"] = "x.txt";
  EXPECT_NE(err(typo).find("unknown key 'data.val_lists' (did you mean 'data.val_list'?)"), std::string::npos) << err(typo);
  json cifar_aug = j;
  cifar_aug["data"]["augment"] = {{"pad", 4}};
  EXPECT_NE(err(cifar_aug).find("unknown key 'data.augment'"), std::string::npos) << err(cifar_aug);
  json bad_aug = j;
  bad_aug["data"]["train_augment"] = "rrc";
  EXPECT_NE(err(bad_aug).find("'data.train_augment' must be random_resized_crop or alexnet"), std::string::npos);
  json bad_resize = j;
  bad_resize["data"]["resize"] = 16;
  EXPECT_NE(err(bad_resize).find("'data.resize' must be >= image_size"), std::string::npos) << err(bad_resize);
  json pm = j;
  pm["data"]["normalize"] = "pixel_mean";
  EXPECT_NE(err(pm).find("'data.normalize'"), std::string::npos);
  json corrupt = j;
  corrupt["data"]["on_corrupt"] = "ignore";
  EXPECT_NE(err(corrupt).find("'data.on_corrupt' must be skip or error"), std::string::npos);
  // A missing root is named when the data set is loaded.
  const std::string e = error_of([&] { load_data_sets(c.data, c.seed); });
  if (jpeg_supported())
    EXPECT_NE(e.find("the imagenet folder '" + d.file("inet") + "' (config key 'data.root') does not exist"),
              std::string::npos) << e;
  else
    EXPECT_NE(e.find("lacks TurboJPEG"), std::string::npos) << e;
}

TEST(ImageNetExperiment, LoadsThroughTheExperimentAndRunsTheLoader) {
  SKIP_WITHOUT_TURBOJPEG();
  Tree t;
  ExperimentConfig c = parse_experiment(imagenet_config(t.root));
  DataSets d = load_data_sets(c.data, c.seed);
  EXPECT_EQ(d.spec.channels, 3);
  EXPECT_EQ(d.spec.height, 32);
  EXPECT_EQ(d.spec.width, 32);
  EXPECT_EQ(d.spec.classes, 3);
  EXPECT_EQ(d.description, "imagenet: 8 train, 2 test, 3x32x32, 3 classes");
  auto run = [&](const DataSets& ds, bool train) {
    LoaderConfig lc;
    lc.batch_size = 4;
    lc.workers = 2;
    lc.seed = c.seed;
    lc.augment = train;
    lc.shuffle = train;
    lc.drop_last = train;
    Loader loader(train ? ds.train : ds.test, lc);
    std::vector<float> all;
    std::vector<int32_t> labels;
    for (int64_t epoch = 0; epoch < 2; ++epoch) {
      loader.start_epoch(epoch);
      Batch b;
      while (loader.next(b)) {
        EXPECT_EQ(b.images.shape()[1], 3);
        EXPECT_EQ(b.images.shape()[2], 32);
        const float* p = b.images.data<float>();
        all.insert(all.end(), p, p + b.images.numel());
        labels.insert(labels.end(), b.labels.begin(), b.labels.end());
      }
    }
    return std::make_pair(all, labels);
  };
  ::testing::internal::CaptureStderr();  // the truncated training file is reported
  const auto first = run(d, true);
  DataSets d2 = load_data_sets(c.data, c.seed);
  const auto second = run(d2, true);
  const std::string err = ::testing::internal::GetCapturedStderr();
  EXPECT_NE(err.find("b_bad.JPEG"), std::string::npos) << err;
  EXPECT_EQ(first.first.size(), 2u * 2 * 4 * 3 * 32 * 32);  // 2 epochs x 2 batches x 4 images
  EXPECT_EQ(first, second);                                  // reproducible
  for (int32_t l : first.second) EXPECT_TRUE(l >= 0 && l < 3);
  for (float v : first.first) ASSERT_TRUE(std::isfinite(v));
  const auto val = run(d, false);
  EXPECT_EQ(val.second, (std::vector<int32_t>{0, 2, 0, 2}));
  // Subsets of ImageNet are spread over the classes.
  c.data.train_subset = 4;
  const DataSets sub = load_data_sets(c.data, c.seed);
  ASSERT_EQ(sub.train->size(), 4);
  std::vector<int32_t> sub_labels;
  std::vector<float> buf(3 * 32 * 32);
  for (int64_t i = 0; i < 4; ++i) {
    Rng rng(0);
    ::testing::internal::CaptureStderr();
    sub_labels.push_back(sub.train->fetch(i, false, rng, buf.data()));
    ::testing::internal::GetCapturedStderr();
  }
  EXPECT_EQ(sub_labels, (std::vector<int32_t>{0, 0, 1, 2}));  // samples 0, 2, 4, 6
}

TEST(ImageNetExperiment, FlatValidationFolderWithAListFile) {
  SKIP_WITHOUT_TURBOJPEG();
  Tree t;
  const std::string root = t.tmp.file("flat");
  fs::create_directories(root);
  fs::create_directory_symlink(t.root + "/train", root + "/train");
  save_rgb(root + "/val/ILSVRC2012_val_00000002.JPEG", 300, 200, 21);
  save_rgb(root + "/val/ILSVRC2012_val_00000001.JPEG", 200, 300, 22);
  write_bytes(t.tmp.file("val.txt"), "ILSVRC2012_val_00000001.JPEG,cat\nILSVRC2012_val_00000002.JPEG,bee\n");
  json j = imagenet_config(root);
  j["data"]["val_list"] = t.tmp.file("val.txt");
  ExperimentConfig c = parse_experiment(j);
  DataSets d = load_data_sets(c.data, c.seed);
  ASSERT_EQ(d.test->size(), 2);
  std::vector<float> buf(3 * 32 * 32);
  Rng rng(0);
  EXPECT_EQ(d.test->fetch(0, false, rng, buf.data()), 2);
  EXPECT_EQ(d.test->fetch(1, false, rng, buf.data()), 1);
  // Without the list, the flat folder is refused with a message naming it.
  j["data"].erase("val_list");
  c = parse_experiment(j);
  const std::string e = error_of([&] { load_data_sets(c.data, c.seed); });
  EXPECT_NE(e.find("'" + root + "/val' has no class folders; set data.val_list"), std::string::npos) << e;
}

// The whole path: `ttq train` on the generated folder with ResNet-18 (torchvision's, at 32x32),
// full precision then TTQ; the truncated training image is replaced and reported per epoch.
TEST(ImageNetExperiment, TrainsResNet18FullPrecisionThenTtq) {
  SKIP_WITHOUT_TURBOJPEG();
  Tree t;
  ttq::testing::TempDir out;
  json j = imagenet_config(t.root);
  j["output_dir"] = out.path();
  j["model"] = {{"name", "resnet18"}};
  j["stages"] = json::parse(R"([
    {"name": "fp", "epochs": 1, "batch_size": 4, "optimizer": {"type": "sgd", "lr": 0.01}},
    {"name": "ttq", "epochs": 1, "batch_size": 4, "quantization": {"mode": "max", "t": 0.05},
     "optimizer": {"type": "sgd", "lr": 0.01}}])");
  j["eval"] = {{"batch_size", 2}};
  ::testing::internal::CaptureStderr();
  TrainOptions opt;
  opt.quiet = true;
  const RunSummary s = train_experiment(parse_experiment(j), opt);
  const std::string err = ::testing::internal::GetCapturedStderr();
  EXPECT_NE(err.find("b_bad.JPEG"), std::string::npos) << err;
  ASSERT_EQ(s.stages.size(), 2u);
  EXPECT_FALSE(s.stages[0].ternary);
  EXPECT_TRUE(s.stages[1].ternary);
  for (const auto& st : s.stages) {
    EXPECT_TRUE(std::isfinite(st.test_loss));
    EXPECT_GE(st.test_top1_error, 0.0);
    EXPECT_LE(st.test_top1_error, 1.0);
  }
  // conv1 and fc stay full precision: 19 ternary convolutions.
  int ternary = 0;
  for (const auto& row : s.layer_table) ternary += row[1] != "fp32";
  EXPECT_EQ(ternary, 19);
  // Both epoch records say how many training samples were replacements.
  std::ifstream in(out.file("metrics.jsonl"));
  std::string line;
  int epochs = 0;
  while (std::getline(in, line)) {
    const json r = json::parse(line);
    if (r.at("type") != "epoch") continue;
    ++epochs;
    ASSERT_TRUE(r.contains("train_images_replaced")) << line;
    EXPECT_GE(r.at("train_images_replaced").get<int64_t>(), 1);
  }
  EXPECT_EQ(epochs, 2);
}
