#include "engine/data/image_set.h"

#include <sys/stat.h>
#ifdef TTQ_HAVE_ZLIB
#include <zlib.h>
#endif

#include <cerrno>
#include <cstring>
#include <fstream>

namespace ttq {

namespace {

bool file_exists(const std::string& p) {
  struct stat st{};
  return ::stat(p.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

uint32_t be32(const uint8_t* p) {
  return (uint32_t(p[0]) << 24) | (uint32_t(p[1]) << 16) | (uint32_t(p[2]) << 8) | uint32_t(p[3]);
}

// The first of path, path + ".gz" that exists; an error listing both otherwise.
std::string find_file(const std::string& dir, const std::string& base, const std::string& what) {
  for (const std::string& cand : {dir + "/" + base, dir + "/" + base + ".gz"})
    if (file_exists(cand)) return cand;
  TTQ_FAIL(what << ": missing file '" << dir << "/" << base << "' (or '" << base << ".gz')");
}

}  // namespace

std::vector<uint8_t> read_maybe_gzip(const std::string& path, size_t max_bytes) {
  TTQ_CHECK(file_exists(path), "missing file '" << path << "'");
#ifndef TTQ_HAVE_ZLIB
  std::ifstream in(path, std::ios::binary);
  TTQ_CHECK(in, "cannot open '" << path << "': " << std::strerror(errno));
  std::vector<uint8_t> raw((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  TTQ_CHECK(!(raw.size() >= 2 && raw[0] == 0x1f && raw[1] == 0x8b),
            "'" << path << "' is gzip-compressed but this build has no zlib: gunzip it first");
  return raw;
#else
  gzFile f = gzopen(path.c_str(), "rb");
  TTQ_CHECK(f != nullptr, "cannot open '" << path << "': " << std::strerror(errno));
  std::vector<uint8_t> out;
  std::vector<uint8_t> buf(1 << 20);
  while (true) {
    const int n = gzread(f, buf.data(), static_cast<unsigned>(buf.size()));
    if (n < 0) {
      int errnum = 0;
      const std::string msg = gzerror(f, &errnum);
      gzclose(f);
      TTQ_FAIL("'" << path << "': corrupt or truncated gzip data (" << msg << ")");
    }
    if (n == 0) break;
    if (out.size() + static_cast<size_t>(n) > max_bytes) {
      gzclose(f);
      TTQ_FAIL("'" << path << "' decompresses to more than " << max_bytes
                   << " bytes: not a data file (a damaged or hostile archive)");
    }
    out.insert(out.end(), buf.begin(), buf.begin() + n);
  }
  // gzread stops quietly at a truncated gzip stream; gzclose reports it.
  const int rc = gzclose(f);
  TTQ_CHECK(rc == Z_OK, "'" << path << "': corrupt or truncated gzip data (zlib error " << rc << ")");
  return out;
#endif
}

ImageSet read_idx(const std::string& images_path, const std::string& labels_path, int64_t classes,
                  const std::string& name) {
  const std::vector<uint8_t> img = read_maybe_gzip(images_path);
  const std::vector<uint8_t> lab = read_maybe_gzip(labels_path);
  TTQ_CHECK(img.size() >= 16, "'" << images_path << "': too short for an IDX image header (" << img.size() << " bytes)");
  TTQ_CHECK(be32(img.data()) == 0x00000803,
            "'" << images_path << "': wrong magic 0x" << std::hex << be32(img.data()) << " (expected 0x00000803, u8 images)");
  TTQ_CHECK(lab.size() >= 8, "'" << labels_path << "': too short for an IDX label header (" << lab.size() << " bytes)");
  TTQ_CHECK(be32(lab.data()) == 0x00000801,
            "'" << labels_path << "': wrong magic 0x" << std::hex << be32(lab.data()) << " (expected 0x00000801, u8 labels)");
  const int64_t n = be32(img.data() + 4), h = be32(img.data() + 8), w = be32(img.data() + 12);
  const int64_t nl = be32(lab.data() + 4);
  TTQ_CHECK(n > 0, "'" << images_path << "': the header says it holds no images");
  TTQ_CHECK(h > 0 && w > 0 && h <= 4096 && w <= 4096, "'" << images_path << "': implausible image size " << h << "x" << w);
  TTQ_CHECK(static_cast<int64_t>(img.size()) == 16 + n * h * w,
            "'" << images_path << "': header says " << n << " images of " << h << "x" << w << " (" << 16 + n * h * w
                << " bytes) but the file has " << img.size() << " bytes" << (static_cast<int64_t>(img.size()) < 16 + n * h * w ? " (truncated)" : ""));
  TTQ_CHECK(static_cast<int64_t>(lab.size()) == 8 + nl,
            "'" << labels_path << "': header says " << nl << " labels but the file has " << lab.size() - 8
                << " label bytes" << (static_cast<int64_t>(lab.size()) < 8 + nl ? " (truncated)" : ""));
  TTQ_CHECK(n == nl, "'" << images_path << "' has " << n << " images but '" << labels_path << "' has " << nl << " labels");
  ImageSet s;
  s.name = name;
  s.spec = {1, h, w, classes};
  s.pixels.assign(img.begin() + 16, img.end());
  s.labels.resize(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    const int32_t l = lab[8 + i];
    TTQ_CHECK(l < classes, "'" << labels_path << "': label " << l << " of sample " << i << " outside [0, " << classes << ")");
    s.labels[i] = l;
  }
  return s;
}

ImageSet load_mnist_like(const std::string& root, bool train, const std::string& name) {
  const std::string prefix = train ? "train" : "t10k";
  const std::string images = find_file(root, prefix + "-images-idx3-ubyte", name);
  const std::string labels = find_file(root, prefix + "-labels-idx1-ubyte", name);
  return read_idx(images, labels, 10, name + (train ? "/train" : "/test"));
}

namespace {

ImageSet read_cifar_files(const std::vector<std::string>& files, int label_bytes, int64_t classes,
                          const std::string& name) {
  constexpr int64_t kPixels = 3 * 32 * 32;
  const int64_t record = label_bytes + kPixels;
  ImageSet s;
  s.name = name;
  s.spec = {3, 32, 32, classes};
  for (const auto& f : files) {
    const std::vector<uint8_t> bytes = read_maybe_gzip(f);
    TTQ_CHECK(!bytes.empty() && bytes.size() % record == 0,
              "'" << f << "': " << bytes.size() << " bytes is not a whole number of " << record
                  << "-byte CIFAR records (truncated or wrong file)");
    const int64_t n = static_cast<int64_t>(bytes.size()) / record;
    for (int64_t i = 0; i < n; ++i) {
      const uint8_t* r = bytes.data() + i * record;
      const int32_t l = r[label_bytes - 1];
      TTQ_CHECK(l < classes, "'" << f << "': label " << l << " of record " << i << " outside [0, " << classes << ")");
      s.labels.push_back(l);
      s.pixels.insert(s.pixels.end(), r + label_bytes, r + record);
    }
  }
  return s;
}

std::string cifar_dir(const std::string& root, const std::string& sub, const std::string& probe) {
  if (file_exists(root + "/" + probe) || file_exists(root + "/" + probe + ".gz")) return root;
  return root + "/" + sub;
}

}  // namespace

ImageSet load_cifar10(const std::string& root, bool train) {
  const std::string dir = cifar_dir(root, "cifar-10-batches-bin", "test_batch.bin");
  std::vector<std::string> files;
  if (train)
    for (int i = 1; i <= 5; ++i) files.push_back(find_file(dir, "data_batch_" + std::to_string(i) + ".bin", "cifar10"));
  else
    files.push_back(find_file(dir, "test_batch.bin", "cifar10"));
  return read_cifar_files(files, 1, 10, train ? "cifar10/train" : "cifar10/test");
}

ImageSet load_cifar100(const std::string& root, bool train) {
  const std::string dir = cifar_dir(root, "cifar-100-binary", "test.bin");
  return read_cifar_files({find_file(dir, train ? "train.bin" : "test.bin", "cifar100")}, 2, 100,
                          train ? "cifar100/train" : "cifar100/test");
}

}  // namespace ttq
