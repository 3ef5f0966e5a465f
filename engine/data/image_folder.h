// ImageNet-style folders of JPEG files and the sample source that decodes and transforms them.
//
// Layout (torchvision's ImageFolder): `<dir>/<class>/**/<file>.jpg|.jpeg` (extension case
// ignored; other files are ignored); classes are the sub-folder names sorted by byte value, as
// Python's sorted() does, labelled 0, 1, ...; the files of a class are found recursively and
// sorted by path, so indices are the same on every machine.
//
// A validation set may instead be a flat folder plus a list file. Each non-empty line of the list
// names one file (relative to the folder) and its label, separated by a comma or white space:
// `ILSVRC2012_val_00000001.JPEG 65` (a class index, 0-based, into the sorted training classes) or
// `ILSVRC2012_val_00000001.JPEG,n01751748` (a class folder name); anything after the label is
// ignored, so ImageNet's LOC_val_solution.csv (`ImageId,PredictionString` with the synset first)
// works as it is. A name without an extension also matches `<name>.JPEG`, `.jpeg` or `.jpg`.
// Lines starting with '#' are comments; a first line whose label is neither a class index nor a
// class name is taken as a header and skipped. Images are ordered by file name.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "engine/data/crop_plan.h"
#include "engine/data/loader.h"

namespace ttq {

// The files of one split: paths relative to `dir`, stored compactly (ImageNet has 1.28 M).
class ImageFolderIndex {
 public:
  std::string dir;
  std::vector<std::string> classes;

  int64_t size() const { return static_cast<int64_t>(labels_.size()); }
  int32_t label(int64_t i) const { return labels_[i]; }
  std::string relative_path(int64_t i) const { return names_.substr(offsets_[i], offsets_[i + 1] - offsets_[i]); }
  std::string path(int64_t i) const { return dir + "/" + relative_path(i); }
  void add(const std::string& relative_path, int32_t label);

 private:
  std::string names_;
  std::vector<uint64_t> offsets_{0};
  std::vector<int32_t> labels_;
};

// `<dir>/<class>/...` with the classes taken from the sub-folders (classes empty) or given (then
// every sub-folder must be one of them; labels index `classes`). Errors name the folder: missing,
// no class folders, a class folder without JPEG files, a folder not among the given classes.
ImageFolderIndex scan_image_folder(const std::string& dir, const std::vector<std::string>& classes = {});

// A flat folder of images labelled by a list file (format above), for the given classes.
ImageFolderIndex read_image_list(const std::string& dir, const std::string& list_file,
                                 const std::vector<std::string>& classes);

// The ImageNet training statistics torchvision uses: mean 0.485, 0.456, 0.406, std 0.229, 0.224, 0.225.
Normalization imagenet_normalization();

struct ImageFolderOptions {
  int image_size = 224;                         // the square network input
  int resize = 256;                             // evaluation: short side before the centre crop
  std::string train_augment = "random_resized_crop";  // random_resized_crop | alexnet
  std::string on_corrupt = "skip";              // skip | error
  bool scaled_decode = true;                    // decode at a reduced DCT scale when the plan allows
  Normalization norm = imagenet_normalization();  // kind channel or none
};

// Produces 3 x image_size x image_size floats per sample: the training augmentation when fetch
// is asked to augment, otherwise the evaluation transform (resize + centre crop); see
// crop_plan.h. Each file is decoded at the smallest DCT scale at which the plan's source
// rectangle still has at least as many pixels as it is resized to (scaled_decode), so the final
// resize is never an enlargement that a full-size decode would not also have been.
//
// An unreadable or corrupt file is, with on_corrupt "skip", replaced by the next readable sample
// (index + 1, wrapping), with the same random draws the original would have had; it is counted
// (skipped(), corrupt_files()), remembered (not read again) and named once on stderr. With
// on_corrupt "error", fetch throws a ttq::Error naming the file.
class ImageFolderSource : public SampleSource {
 public:
  ImageFolderSource(ImageFolderIndex index, ImageFolderOptions opt);
  int64_t size() const override { return index_.size(); }
  InputSpec spec() const override;
  int32_t fetch(int64_t index, bool augment, Rng& rng, float* out) const override;

  const ImageFolderIndex& index() const { return index_; }
  const ImageFolderOptions& options() const { return opt_; }
  // How many fetches were served by a replacement sample, and how many distinct files failed.
  int64_t skipped() const { return skipped_.load(); }
  int64_t skipped_samples() const override { return skipped(); }
  int64_t corrupt_files() const { return corrupt_.load(); }

  // Decodes and transforms sample i without any replacement (throws on a bad file).
  int32_t load(int64_t i, bool augment, Rng& rng, float* out) const;

 private:
  ImageFolderIndex index_;
  ImageFolderOptions opt_;
  std::vector<float> lut_;
  mutable std::unique_ptr<std::atomic<uint8_t>[]> bad_;  // per sample: known to be unreadable
  mutable std::atomic<int64_t> skipped_{0}, corrupt_{0};
};

}  // namespace ttq
