// Scanning ImageNet-style folders and list files, and the JPEG sample source (see image_folder.h).
#include "engine/data/image_folder.h"

#include <sys/stat.h>

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <utility>

#include "engine/core/error.h"

namespace ttq {

namespace fs = std::filesystem;

namespace {

bool is_jpeg_name(const std::string& name) {
  const auto dot = name.find_last_of('.');
  if (dot == std::string::npos) return false;
  std::string ext = name.substr(dot + 1);
  for (char& c : ext) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return ext == "jpg" || ext == "jpeg";
}

bool is_dir(const fs::path& p) {
  std::error_code ec;
  return fs::is_directory(p, ec);  // follows symbolic links
}

// The folder p is (device, inode), following links; false when it cannot be read.
bool folder_id(const fs::path& p, std::pair<dev_t, ino_t>& id) {
  struct stat st {};
  if (::stat(p.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) return false;
  id = {st.st_dev, st.st_ino};
  return true;
}

using FolderId = std::pair<dev_t, ino_t>;

// Walks `folder` (relative path `rel` below the class folder) in name order, following links. A
// link back to a folder on the way down (a loop) is an error naming it; a folder reached a second
// way is not entered again (its files count once, under the path found first in name order).
void walk_jpegs(const fs::path& folder, const std::string& rel, std::vector<FolderId>& path_ids,
                std::set<FolderId>& entered, std::vector<std::string>& out) {
  std::vector<fs::path> entries;
  std::error_code ec;
  for (fs::directory_iterator it(folder, ec), end; !ec && it != end; it.increment(ec)) entries.push_back(it->path());
  TTQ_CHECK(!ec, "data: cannot list '" << folder.string() << "': " << ec.message());
  std::sort(entries.begin(), entries.end());
  for (const fs::path& p : entries) {
    const std::string name = p.filename().string(), sub = rel.empty() ? name : rel + "/" + name;
    FolderId id;
    if (folder_id(p, id)) {
      TTQ_CHECK(std::find(path_ids.begin(), path_ids.end(), id) == path_ids.end(),
                "data: '" << p.string() << "' leads back to a folder above it (a loop of links)");
      if (!entered.insert(id).second) continue;
      path_ids.push_back(id);
      walk_jpegs(p, sub, path_ids, entered, out);
      path_ids.pop_back();
    } else if (is_jpeg_name(name)) {
      out.push_back(sub);
    }
  }
}

// The JPEG files under dir (recursively, following links), as paths relative to dir, sorted.
std::vector<std::string> jpeg_files_under(const fs::path& dir) {
  std::vector<std::string> out;
  std::vector<FolderId> path_ids;
  std::set<FolderId> entered;
  FolderId id;
  TTQ_CHECK(folder_id(dir, id), "data: cannot list '" << dir.string() << "'");
  path_ids.push_back(id);
  entered.insert(id);
  walk_jpegs(dir, "", path_ids, entered, out);
  std::sort(out.begin(), out.end());
  return out;
}

std::vector<std::string> class_folders(const std::string& dir) {
  std::error_code ec;
  TTQ_CHECK(fs::exists(dir, ec), "data: image folder '" << dir << "' does not exist");
  TTQ_CHECK(is_dir(dir), "data: '" << dir << "' is not a folder");
  std::vector<std::string> out;
  fs::directory_iterator it(dir, ec), end;
  TTQ_CHECK(!ec, "data: cannot list '" << dir << "': " << ec.message());
  for (; it != end; it.increment(ec)) {
    TTQ_CHECK(!ec, "data: cannot list '" << dir << "': " << ec.message());
    if (is_dir(it->path())) out.push_back(it->path().filename().string());
  }
  std::sort(out.begin(), out.end());
  return out;
}

std::string trim(const std::string& s) {
  size_t a = 0, b = s.size();
  while (a < b && std::isspace(static_cast<unsigned char>(s[a]))) ++a;
  while (b > a && std::isspace(static_cast<unsigned char>(s[b - 1]))) --b;
  return s.substr(a, b - a);
}

}  // namespace

void ImageFolderIndex::add(const std::string& relative_path, int32_t label) {
  names_ += relative_path;
  offsets_.push_back(names_.size());
  labels_.push_back(label);
}

ImageFolderIndex scan_image_folder(const std::string& dir, const std::vector<std::string>& classes) {
  ImageFolderIndex idx;
  idx.dir = dir;
  const std::vector<std::string> found = class_folders(dir);
  TTQ_CHECK(!found.empty(), "data: '" << dir << "' has no class folders (expected <class>/<image>.JPEG)");
  idx.classes = classes.empty() ? found : classes;
  std::map<std::string, int32_t> label_of;
  for (size_t i = 0; i < idx.classes.size(); ++i) label_of[idx.classes[i]] = static_cast<int32_t>(i);
  for (const std::string& c : found) {
    auto it = label_of.find(c);
    TTQ_CHECK(it != label_of.end(),
              "data: class folder '" << dir << "/" << c << "' is not one of the " << idx.classes.size() << " training classes");
    const std::vector<std::string> files = jpeg_files_under(fs::path(dir) / c);
    TTQ_CHECK(!files.empty(), "data: class folder '" << dir << "/" << c << "' has no JPEG files (.jpg, .jpeg)");
    for (const std::string& f : files) idx.add(c + "/" + f, it->second);
  }
  return idx;
}

ImageFolderIndex read_image_list(const std::string& dir, const std::string& list_file,
                                 const std::vector<std::string>& classes) {
  TTQ_CHECK(!classes.empty(), "data: no classes for the image list '" << list_file << "'");
  TTQ_CHECK(is_dir(dir), "data: image folder '" << dir << "' does not exist");
  std::ifstream in(list_file);
  TTQ_CHECK(in, "data: cannot read the image list '" << list_file << "'");
  std::map<std::string, int32_t> label_of;
  for (size_t i = 0; i < classes.size(); ++i) label_of[classes[i]] = static_cast<int32_t>(i);
  // The folder's files, to resolve names given without an extension.
  std::set<std::string> present;
  std::error_code ec;
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    std::error_code type_ec;
    if (fs::is_regular_file(it->path(), type_ec))  // follows links; a folder is never an image
      present.insert(it->path().filename().string());
  }
  TTQ_CHECK(!ec, "data: cannot list '" << dir << "': " << ec.message());

  std::vector<std::pair<std::string, int32_t>> items;
  std::set<std::string> seen;
  std::string line;
  int64_t line_no = 0;
  bool first_entry = true;
  while (std::getline(in, line)) {
    ++line_no;
    const std::string t = trim(line);
    if (t.empty() || t[0] == '#') continue;
    const size_t sep = t.find_first_of(", \t");
    std::string name = trim(t.substr(0, sep)), label_text;
    if (sep != std::string::npos) {
      std::istringstream rest(t.substr(sep + 1));
      rest >> label_text;  // the first word after the separator
      if (!label_text.empty() && label_text.back() == ',') label_text.pop_back();
    }
    int64_t label = -1;
    const bool numeric = !label_text.empty() && std::all_of(label_text.begin(), label_text.end(), [](char c) {
      return std::isdigit(static_cast<unsigned char>(c));
    });
    if (numeric) {
      label = label_text.size() <= 9 ? std::stoll(label_text) : -1;
      if (label >= static_cast<int64_t>(classes.size())) label = -1;
    } else if (auto it = label_of.find(label_text); it != label_of.end()) {
      label = it->second;
    }
    const bool was_first = first_entry;
    first_entry = false;
    if (label < 0 && was_first) continue;  // a header line
    TTQ_CHECK(label >= 0, "data: '" << list_file << "' line " << line_no << ": '" << label_text
                                    << "' is neither a class index below " << classes.size()
                                    << " nor a class name (line: '" << t << "')");
    if (!present.count(name) && name.find('.') == std::string::npos) {
      for (const char* ext : {".JPEG", ".jpeg", ".jpg", ".JPG"})
        if (present.count(name + ext)) {
          name += ext;
          break;
        }
    }
    TTQ_CHECK(present.count(name), "data: '" << list_file << "' line " << line_no << ": no file '" << dir << "/" << name << "'");
    TTQ_CHECK(seen.insert(name).second, "data: '" << list_file << "' line " << line_no << ": '" << name << "' listed twice");
    items.emplace_back(name, static_cast<int32_t>(label));
  }
  TTQ_CHECK(!in.bad(), "data: error reading the image list '" << list_file << "'");
  TTQ_CHECK(!items.empty(), "data: the image list '" << list_file << "' names no images");
  std::sort(items.begin(), items.end());
  ImageFolderIndex idx;
  idx.dir = dir;
  idx.classes = classes;
  for (const auto& [name, label] : items) idx.add(name, label);
  return idx;
}

Normalization imagenet_normalization() {
  Normalization n;
  n.kind = "channel";
  n.mean = {0.485f, 0.456f, 0.406f};
  n.std = {0.229f, 0.224f, 0.225f};
  return n;
}

ImageFolderSource::ImageFolderSource(ImageFolderIndex index, ImageFolderOptions opt)
    : index_(std::move(index)), opt_(std::move(opt)) {
  TTQ_CHECK(jpeg_supported(), "data: '" << index_.dir << "' holds JPEG images, but this build lacks TurboJPEG "
                                        "(install libturbojpeg0-dev and reconfigure)");
  TTQ_CHECK(index_.size() > 0, "data: no images in '" << index_.dir << "'");
  TTQ_CHECK(opt_.image_size >= 8 && opt_.resize >= opt_.image_size,
            "data: image_size " << opt_.image_size << " must be >= 8 and resize " << opt_.resize << " >= image_size");
  TTQ_CHECK(opt_.train_augment == "random_resized_crop" || opt_.train_augment == "alexnet",
            "data: train_augment must be random_resized_crop or alexnet, got '" << opt_.train_augment << "'");
  TTQ_CHECK(opt_.on_corrupt == "skip" || opt_.on_corrupt == "error",
            "data: on_corrupt must be skip or error, got '" << opt_.on_corrupt << "'");
  lut_ = normalization_lut(opt_.norm);
  bad_ = std::make_unique<std::atomic<uint8_t>[]>(static_cast<size_t>(index_.size()));
  for (int64_t i = 0; i < index_.size(); ++i) bad_[i].store(0, std::memory_order_relaxed);
}

InputSpec ImageFolderSource::spec() const {
  return InputSpec{3, opt_.image_size, opt_.image_size, static_cast<int64_t>(index_.classes.size())};
}

int32_t ImageFolderSource::load(int64_t i, bool augment, Rng& rng, float* out) const {
  thread_local std::vector<uint8_t> bytes;
  thread_local JpegImage img;
  const std::string path = index_.path(i);
  read_file_bytes(path, bytes);
  const JpegHeader hd = read_jpeg_header(bytes.data(), bytes.size(), path);
  const int n = opt_.image_size;
  CropPlan plan;
  if (!augment)
    plan = plan_eval(hd.width, hd.height, opt_.resize, n);
  else if (opt_.train_augment == "alexnet")
    plan = plan_alexnet(hd.width, hd.height, n, rng);
  else
    plan = plan_random_resized_crop(hd.width, hd.height, n, rng);
  const int min_w = opt_.scaled_decode ? plan.min_decode_width() : 0;
  const int min_h = opt_.scaled_decode ? plan.min_decode_height() : 0;
  decode_jpeg(bytes.data(), bytes.size(), path, min_w, min_h, img);
  render_crop(img, plan, lut_.data(), out);
  return index_.label(i);
}

int32_t ImageFolderSource::fetch(int64_t index, bool augment, Rng& rng, float* out) const {
  const int64_t n = index_.size();
  // A replacement is searched among the next images, but a folder where nothing decodes is
  // reported after this many consecutive failures rather than after trying every file.
  constexpr int64_t kMaxConsecutiveFailures = 1000;
  int64_t failures = 0;
  for (int64_t k = 0; k < n; ++k) {
    const int64_t i = (index + k) % n;
    if (bad_[i].load(std::memory_order_relaxed)) continue;
    Rng r = rng;  // a replacement gets the random draws the original sample would have had
    try {
      const int32_t label = load(i, augment, r, out);
      if (k > 0) skipped_.fetch_add(1);
      rng = r;
      return label;
    } catch (const std::exception& e) {
      // ttq::Error messages name the file; anything else (an allocation failure) gets it added.
      const bool named = dynamic_cast<const Error*>(&e) != nullptr;
      const std::string what = named ? e.what() : "'" + index_.path(i) + "': " + e.what();
      if (opt_.on_corrupt == "error") {
        if (named) throw;
        TTQ_FAIL("data: cannot load " << what);
      }
      if (bad_[i].exchange(1) == 0) {
        corrupt_.fetch_add(1);
        std::fprintf(stderr, "warning: skipping unreadable image (sample %lld, replaced by the next readable one): %s\n",
                     static_cast<long long>(i), what.c_str());
      }
      TTQ_CHECK(++failures < kMaxConsecutiveFailures,
                "data: " << kMaxConsecutiveFailures << " consecutive images in '" << index_.dir
                         << "' are unreadable (the last: " << what << "); is this an image folder?");
    }
  }
  TTQ_FAIL("data: no readable image in '" << index_.dir << "' (all " << n << " failed to decode)");
}

}  // namespace ttq
