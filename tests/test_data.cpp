// Data: IDX and CIFAR readers on good and bad files, the real Fashion-MNIST when installed,
// transforms, and the loader's determinism, sharding and resumption.
#include <gtest/gtest.h>

#ifdef TTQ_HAVE_ZLIB
#include <zlib.h>
#endif

#include <algorithm>
#include <fstream>
#include <set>

#include "engine/data/image_set.h"
#include "engine/data/loader.h"
#include "tests/test_util.h"

using namespace ttq;
using ttq::testing::error_of;
using ttq::testing::TempDir;
using ttq::testing::be32;
using ttq::testing::idx_images;
using ttq::testing::idx_labels;
using ttq::testing::write_bytes;

namespace {

#ifdef TTQ_HAVE_ZLIB
void write_gz(const std::string& path, const std::string& bytes) {
  gzFile f = gzopen(path.c_str(), "wb");
  gzwrite(f, bytes.data(), static_cast<unsigned>(bytes.size()));
  gzclose(f);
}
#define SKIP_WITHOUT_ZLIB() (void)0
#else
#define SKIP_WITHOUT_ZLIB() GTEST_SKIP() << "built without zlib: gzip-compressed files are not readable"
void write_gz(const std::string&, const std::string&) { FAIL() << "built without zlib"; }
#endif

}  // namespace

TEST(Idx, ReadsRawAndGzip) {
  SKIP_WITHOUT_ZLIB();
  TempDir d;
  write_bytes(d.file("train-images-idx3-ubyte"), idx_images(5, 4, 3));
  write_gz(d.file("train-labels-idx1-ubyte.gz"), idx_labels(5));
  ImageSet s = load_mnist_like(d.path(), true, "fmnist");
  EXPECT_EQ(s.size(), 5);
  EXPECT_EQ(s.spec.channels, 1);
  EXPECT_EQ(s.spec.height, 4);
  EXPECT_EQ(s.spec.width, 3);
  EXPECT_EQ(s.labels[3], 3);
  EXPECT_EQ(s.image(1)[0], static_cast<uint8_t>((12 * 7) & 0xff));
}

TEST(Idx, BadFilesNameTheFileAndProblem) {
  TempDir d;
  const std::string img = d.file("i"), lab = d.file("l");
  auto err = [&] { return error_of([&] { read_idx(img, lab, 10, "t"); }); };

  write_bytes(img, idx_images(5, 4, 4, 0x804));
  write_bytes(lab, idx_labels(5));
  EXPECT_NE(err().find("wrong magic"), std::string::npos) << err();

  std::string trunc = idx_images(5, 4, 4);
  write_bytes(img, trunc.substr(0, trunc.size() - 3));
  EXPECT_NE(err().find("(truncated)"), std::string::npos) << err();
  EXPECT_NE(err().find("'" + img + "'"), std::string::npos) << err();

  write_bytes(img, idx_images(5, 4, 4));
  write_bytes(lab, idx_labels(6));
  EXPECT_NE(err().find("has 5 images but"), std::string::npos) << err();

  write_bytes(img, idx_images(12, 4, 4));
  write_bytes(lab, idx_labels(12, 12));  // labels i % 13: sample 10 has label 10
  EXPECT_NE(err().find("label 10 of sample 10"), std::string::npos) << err();
  EXPECT_NE(err().find("outside [0, 10)"), std::string::npos) << err();

#ifdef TTQ_HAVE_ZLIB
  write_gz(d.file("full.gz"), idx_labels(5000));
  const std::string gz_full = ttq::testing::read_bytes(d.file("full.gz"));
  write_bytes(lab + ".gz", gz_full.substr(0, gz_full.size() / 2));
  EXPECT_NE(error_of([&] { read_idx(img, lab + ".gz", 10, "t"); }).find("corrupt or truncated gzip"), std::string::npos);
  // A file that expands past the limit (a gzip bomb) is refused, naming it, before memory runs out.
  write_gz(d.file("big.gz"), std::string(3 << 20, '\0'));
  EXPECT_EQ(read_maybe_gzip(d.file("big.gz"), 3 << 20).size(), size_t{3} << 20);
  const std::string bomb = error_of([&] { read_maybe_gzip(d.file("big.gz"), 1 << 20); });
  EXPECT_NE(bomb.find("'" + d.file("big.gz") + "' decompresses to more than 1048576 bytes"), std::string::npos) << bomb;
#endif

  write_bytes(img, idx_images(0, 4, 4));
  write_bytes(lab, idx_labels(0));
  EXPECT_NE(err().find("'" + img + "': the header says it holds no images"), std::string::npos) << err();

  const std::string missing = error_of([&] { load_mnist_like(d.file("nowhere"), false, "fmnist"); });
  EXPECT_NE(missing.find("missing file"), std::string::npos) << missing;
  EXPECT_NE(missing.find("t10k-images-idx3-ubyte"), std::string::npos) << missing;
}

TEST(Cifar, ReadsBatchesAndRefusesBadOnes) {
  TempDir d;
  auto records = [](int n, int label_bytes, int label) {
    std::string s;
    for (int i = 0; i < n; ++i) {
      for (int b = 0; b < label_bytes; ++b) s.push_back(static_cast<char>(b == label_bytes - 1 ? (label + i) % 10 : 99));
      for (int p = 0; p < 3072; ++p) s.push_back(static_cast<char>((p + i) & 0xff));
    }
    return s;
  };
  for (int i = 1; i <= 5; ++i) write_bytes(d.file("data_batch_" + std::to_string(i) + ".bin"), records(3, 1, i));
  write_bytes(d.file("test_batch.bin"), records(4, 1, 0));
  ImageSet train = load_cifar10(d.path(), true);
  EXPECT_EQ(train.size(), 15);
  EXPECT_EQ(train.labels[0], 1);
  EXPECT_EQ(train.labels[14], 7);
  EXPECT_EQ(train.image(2)[10], 12);
  EXPECT_EQ(load_cifar10(d.path(), false).size(), 4);

  write_bytes(d.file("test_batch.bin"), records(4, 1, 0).substr(0, 3073 * 4 - 1));
  EXPECT_NE(error_of([&] { load_cifar10(d.path(), false); }).find("not a whole number"), std::string::npos);
  std::string bad = records(1, 1, 0);
  bad[0] = 10;
  write_bytes(d.file("test_batch.bin"), bad);
  EXPECT_NE(error_of([&] { load_cifar10(d.path(), false); }).find("label 10 of record 0"), std::string::npos);
  std::remove(d.file("data_batch_3.bin").c_str());
  EXPECT_NE(error_of([&] { load_cifar10(d.path(), true); }).find("data_batch_3.bin"), std::string::npos);

  write_bytes(d.file("train.bin"), records(2, 2, 5));
  write_bytes(d.file("test.bin"), records(2, 2, 5));
  ImageSet c100 = load_cifar100(d.path(), true);
  EXPECT_EQ(c100.spec.classes, 100);
  EXPECT_EQ(c100.labels[1], 6);  // the fine label
}

TEST(FashionMnist, RealDataSetWhenInstalled) {
  SKIP_WITHOUT_ZLIB();  // the package ships .gz files
  const std::string root = "/usr/share/datasets/fashion-mnist";
  if (!std::ifstream(root + "/t10k-labels-idx1-ubyte.gz")) GTEST_SKIP() << "dataset-fashion-mnist not installed at " << root;
  ImageSet test = load_mnist_like(root, false, "fashion_mnist");
  EXPECT_EQ(test.size(), 10000);
  EXPECT_EQ(test.spec.height, 28);
  std::vector<int> count(10, 0);
  for (int32_t l : test.labels) ++count[l];
  for (int c : count) EXPECT_EQ(c, 1000);  // the test set is balanced
  const Normalization n = Normalization::channel_stats(test);
  EXPECT_NEAR(n.mean[0], 0.2868, 0.002);  // the published Fashion-MNIST statistics
  EXPECT_NEAR(n.std[0], 0.3524, 0.002);
}

TEST(Transforms, NormalisationAndAugmentation) {
  ImageSet s;
  s.spec = {1, 3, 3, 2};
  s.pixels = {0, 51, 102, 153, 204, 255, 0, 0, 0};
  s.labels = {0};
  Normalization none = Normalization::none(1);
  Rng rng(1);
  std::vector<float> out(9);
  transform_image(s.image(0), s.spec, none, Augment{}, false, rng, out.data());
  EXPECT_FLOAT_EQ(out[1], 0.2f);
  EXPECT_FLOAT_EQ(out[5], 1.0f);
  // Padding 1 shifts by at most one pixel with zero fill; flipping mirrors columns. Over many
  // draws every shift in [-1, 1]^2 and both flips occur.
  std::set<std::vector<float>> seen;
  for (uint64_t seed = 0; seed < 200; ++seed) {
    Rng r(seed);
    transform_image(s.image(0), s.spec, none, Augment{1, true}, true, r, out.data());
    seen.insert(out);
  }
  EXPECT_EQ(seen.size(), 18u);
  Normalization pm = Normalization::pixel_mean(s);
  transform_image(s.image(0), s.spec, pm, Augment{}, false, rng, out.data());
  for (float v : out) EXPECT_FLOAT_EQ(v, 0.0f);  // one image minus its own mean
}

// Pad with black, crop, then normalise (the spec's CIFAR order, torchvision's RandomCrop before
// Normalize): a padded pixel is a normalised raw 0, not the mean, and the per-pixel mean
// subtracted is the output position's. Every output equals this for one of the nine shifts,
// and all nine occur.
TEST(Transforms, PaddingIsBlackAndThePixelMeanIsTheOutputPositions) {
  ImageSet s;
  s.spec = {1, 3, 3, 2};
  s.pixels = {10, 60, 110, 160, 210, 250, 30, 90, 200,   // image 0
              0, 20, 40, 60, 80, 100, 120, 140, 160};    // image 1 (only for the mean)
  s.labels = {0, 1};
  const Normalization pm = Normalization::pixel_mean(s);
  Normalization ch;
  ch.kind = "channel";
  ch.mean = {0.5f};
  ch.std = {0.25f};
  for (const Normalization* norm : std::initializer_list<const Normalization*>{&pm, &ch}) {
    SCOPED_TRACE(norm->kind);
    auto expected = [&](int oy, int ox) {
      std::vector<float> e(9);
      for (int y = 0; y < 3; ++y)
        for (int x = 0; x < 3; ++x) {
          const int sy = y + oy, sx = x + ox;
          const float raw = sy >= 0 && sy < 3 && sx >= 0 && sx < 3 ? s.pixels[sy * 3 + sx] : 0.0f;
          e[y * 3 + x] = norm->kind == "pixel_mean" ? (raw - norm->mean[y * 3 + x]) / 128.0f
                                                    : (raw / 255.0f - norm->mean[0]) / norm->std[0];
        }
      return e;
    };
    std::set<std::pair<int, int>> shifts;
    std::vector<float> out(9);
    for (uint64_t seed = 0; seed < 200; ++seed) {
      Rng r(seed);
      transform_image(s.image(0), s.spec, *norm, Augment{1, false}, true, r, out.data());
      bool matched = false;
      for (int oy = -1; oy <= 1 && !matched; ++oy)
        for (int ox = -1; ox <= 1 && !matched; ++ox)
          if (out == expected(oy, ox)) {
            matched = true;
            shifts.insert({oy, ox});
          }
      EXPECT_TRUE(matched) << "seed " << seed;
    }
    EXPECT_EQ(shifts.size(), 9u);
  }
}

namespace {

std::shared_ptr<ImageSetSource> tiny_source(int64_t n) {
  auto set = std::make_shared<ImageSet>();
  set->spec = {1, 4, 4, 10};
  for (int64_t i = 0; i < n; ++i) {
    set->labels.push_back(static_cast<int32_t>(i % 10));
    for (int p = 0; p < 16; ++p) set->pixels.push_back(static_cast<uint8_t>((i * 16 + p) & 0xff));
  }
  return std::make_shared<ImageSetSource>(set, Normalization::none(1), Augment{2, true});
}

std::vector<Batch> epoch_batches(Loader& l, int64_t epoch, int64_t first = 0) {
  l.start_epoch(epoch, first);
  std::vector<Batch> out;
  Batch b;
  while (l.next(b)) out.push_back(b);
  return out;
}

bool same(const Batch& a, const Batch& b) {
  return a.labels == b.labels && a.images.shape() == b.images.shape() &&
         std::equal(a.images.data<float>(), a.images.data<float>() + a.images.numel(), b.images.data<float>());
}

}  // namespace

TEST(Loader, BatchesDependOnlyOnSeedEpochAndIndex) {
  auto src = tiny_source(103);
  LoaderConfig c;
  c.batch_size = 10;
  c.seed = 7;
  c.workers = 0;
  Loader serial(src, c);
  c.workers = 3;
  c.prefetch = 2;
  Loader threaded(src, c);
  for (int64_t e = 0; e < 2; ++e) {
    auto a = epoch_batches(serial, e), b = epoch_batches(threaded, e);
    ASSERT_EQ(a.size(), 10u);  // 103 / 10, last partial batch dropped
    ASSERT_EQ(b.size(), a.size());
    for (size_t i = 0; i < a.size(); ++i) EXPECT_TRUE(same(a[i], b[i])) << "epoch " << e << " batch " << i;
  }
  // Different epochs shuffle differently; resuming at batch 4 gives batches 4.. of the full epoch.
  auto e0 = epoch_batches(serial, 0), e1 = epoch_batches(serial, 1), resumed = epoch_batches(threaded, 1, 4);
  EXPECT_FALSE(same(e0[0], e1[0]));
  ASSERT_EQ(resumed.size(), 6u);
  for (size_t i = 0; i < resumed.size(); ++i) EXPECT_TRUE(same(resumed[i], e1[i + 4]));
}

TEST(Loader, ShardsCoverEachSampleOncePerEpoch) {
  auto src = tiny_source(100);
  for (bool drop_last : {true, false}) {
    std::multiset<int64_t> seen;
    int64_t batches = 0;
    for (int rank = 0; rank < 3; ++rank) {
      LoaderConfig c;
      c.batch_size = 8;
      c.world = 3;
      c.rank = rank;
      c.seed = 3;
      c.drop_last = drop_last;
      Loader l(src, c);
      batches = l.batches_per_epoch();
      for (int64_t b = 0; b < l.batches_per_epoch(); ++b)
        for (int64_t i : l.batch_indices(2, b)) seen.insert(i);
    }
    if (drop_last) {
      EXPECT_EQ(batches, 4);  // 100 / 24
      EXPECT_EQ(seen.size(), 96u);
    } else {
      EXPECT_EQ(batches, 5);
      EXPECT_EQ(seen.size(), 100u);
    }
    for (int64_t i : seen) EXPECT_EQ(seen.count(i), 1u) << "sample " << i;
  }
}

TEST(Loader, WorkerErrorsReachTheCaller) {
  class Failing : public SampleSource {
   public:
    int64_t size() const override { return 50; }
    InputSpec spec() const override { return {1, 2, 2, 2}; }
    int32_t fetch(int64_t index, bool, Rng&, float* out) const override {
      TTQ_CHECK(index != 17, "sample 17 is unreadable");
      std::fill(out, out + 4, 0.0f);
      return 0;
    }
  };
  LoaderConfig c;
  c.batch_size = 5;
  c.shuffle = false;
  c.workers = 2;
  Loader l(std::make_shared<Failing>(), c);
  l.start_epoch(0);
  Batch b;
  const std::string e = error_of([&] {
    while (l.next(b)) {
    }
  });
  EXPECT_NE(e.find("sample 17 is unreadable"), std::string::npos) << e;
}
