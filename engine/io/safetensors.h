// The safetensors format (8-byte little-endian header length, a JSON header naming each tensor's
// dtype, shape and byte range, then the raw little-endian data), readable by Python's
// `safetensors` package. Files are written atomically (temporary file, fsync, rename), and
// reading validates everything before handing out a tensor: a truncated or inconsistent file is
// an error naming the file and the problem.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "engine/core/tensor.h"

namespace ttq {

class SafeTensorsWriter {
 public:
  // Copies the tensor's bytes (CPU tensors; F32, I8, U8, I32).
  void add(const std::string& name, const Tensor& t);
  void add_metadata(const std::string& key, const std::string& value);
  // Writes to path + ".tmp", flushes it to disk, then renames it over path.
  void write(const std::string& path) const;

 private:
  struct Entry {
    std::string name;
    DType dtype;
    Shape shape;
    std::vector<char> bytes;
  };
  std::vector<Entry> entries_;
  std::map<std::string, std::string> metadata_;
};

class SafeTensorsFile {
 public:
  // Reads and validates the whole file.
  static SafeTensorsFile read(const std::string& path);

  const std::string& path() const { return path_; }
  bool has(const std::string& name) const { return index_.count(name) != 0; }
  std::vector<std::string> names() const;
  // A copy of the named tensor; throws naming the file when absent.
  Tensor tensor(const std::string& name) const;
  DType dtype(const std::string& name) const;
  Shape shape(const std::string& name) const;
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  // The metadata value, or throws naming the file and key.
  const std::string& meta(const std::string& key) const;

 private:
  struct Entry {
    DType dtype;
    Shape shape;
    uint64_t begin, end;
  };
  std::string path_;
  std::vector<char> data_;
  std::map<std::string, Entry> index_;
  std::map<std::string, std::string> metadata_;
};

// The "format" metadata of a safetensors file, from its header alone (the tensors are not read);
// "" when the file has none or is not a readable safetensors file.
std::string safetensors_format(const std::string& path) noexcept;

// Writes bytes to path atomically (temporary file in the same folder, fsync, rename).
void write_file_atomic(const std::string& path, const std::string& bytes);

}  // namespace ttq
