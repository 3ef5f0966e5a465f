// In-memory labelled image sets (Fashion-MNIST / MNIST IDX files, CIFAR-10/100 binary batches):
// N images of C x H x W bytes and N labels. Readers validate everything and name the file and the
// problem on failure (wrong magic, truncated, sizes that disagree, labels out of range, missing).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "models/model.h"

namespace ttq {

struct ImageSet {
  std::string name;
  InputSpec spec;                // channels, height, width, classes
  std::vector<uint8_t> pixels;   // N x C x H x W
  std::vector<int32_t> labels;   // N
  int64_t size() const { return static_cast<int64_t>(labels.size()); }
  const uint8_t* image(int64_t i) const { return pixels.data() + i * spec.channels * spec.height * spec.width; }
};

// An IDX image file (magic 0x00000803, u8, N x H x W) and label file (0x00000801, u8, N), raw or
// gzip-compressed. Labels must lie in [0, classes).
ImageSet read_idx(const std::string& images_path, const std::string& labels_path, int64_t classes,
                  const std::string& name);

// Fashion-MNIST / MNIST from a folder holding {train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz].
ImageSet load_mnist_like(const std::string& root, bool train, const std::string& name);

// CIFAR-10 binary version: data_batch_1..5.bin / test_batch.bin (records of 1 label byte + 3072
// pixel bytes) in root or root/cifar-10-batches-bin.
ImageSet load_cifar10(const std::string& root, bool train);
// CIFAR-100 binary version: train.bin / test.bin (coarse label, fine label, 3072 pixels); fine
// labels, in root or root/cifar-100-binary.
ImageSet load_cifar100(const std::string& root, bool train);

// The most a compressed data file may expand to (MNIST-like and CIFAR files are tens of MB): a
// damaged or hostile archive is an error, not all of the machine's memory.
constexpr size_t kMaxDataFileBytes = size_t{2} << 30;
// Reads a whole file, transparently gunzipping it when it is gzip-compressed (to at most
// max_bytes, an error naming the file beyond).
std::vector<uint8_t> read_maybe_gzip(const std::string& path, size_t max_bytes = kMaxDataFileBytes);

}  // namespace ttq
