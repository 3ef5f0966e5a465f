#include "engine/io/safetensors.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>

#include "engine/config/json_reader.h"

namespace ttq {

namespace {

const char* st_dtype(DType d) {
  switch (d) {
    case DType::F32: return "F32";
    case DType::BF16: return "BF16";
    case DType::I8: return "I8";
    case DType::U8: return "U8";
    case DType::I32: return "I32";
    case DType::I64: return "I64";
    case DType::F64: return "F64";
  }
  return "?";
}

bool parse_st_dtype(const std::string& s, DType& out) {
  const std::pair<const char*, DType> table[] = {
      {"F32", DType::F32}, {"BF16", DType::BF16}, {"I8", DType::I8}, {"U8", DType::U8}, {"I32", DType::I32}, {"I64", DType::I64},
      {"F64", DType::F64}};
  for (const auto& [name, dt] : table)
    if (s == name) {
      out = dt;
      return true;
    }
  return false;
}

}  // namespace

void write_file_atomic(const std::string& path, const std::string& bytes) {
  const std::string tmp = path + ".tmp";
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  TTQ_CHECK(fd >= 0, "cannot write '" << path << "' (creating '" << tmp << "' beside it): " << std::strerror(errno));
  size_t done = 0;
  while (done < bytes.size()) {
    const ssize_t n = ::write(fd, bytes.data() + done, bytes.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      const int err = errno;
      ::close(fd);
      ::unlink(tmp.c_str());
      TTQ_FAIL("cannot write '" << tmp << "': " << std::strerror(err));
    }
    done += static_cast<size_t>(n);
  }
  const int synced = ::fsync(fd) == 0 ? 0 : errno;
  const int closed = ::close(fd) == 0 ? 0 : errno;  // closed whether or not fsync worked
  if (synced != 0 || closed != 0) {
    ::unlink(tmp.c_str());
    TTQ_FAIL("cannot flush '" << tmp << "': " << std::strerror(synced != 0 ? synced : closed));
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    const int err = errno;
    ::unlink(tmp.c_str());
    TTQ_FAIL("cannot rename '" << tmp << "' to '" << path << "': " << std::strerror(err));
  }
  // Make the rename itself durable.
  const size_t slash = path.find_last_of('/');
  const std::string dir = slash == std::string::npos ? std::string(".") : path.substr(0, slash == 0 ? 1 : slash);
  const int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY);
  if (dfd >= 0) {
    ::fsync(dfd);
    ::close(dfd);
  }
}

void SafeTensorsWriter::add(const std::string& name, const Tensor& t) {
  TTQ_CHECK(t.defined() && t.device() == Device::CPU, "safetensors: tensor '" << name << "' must be a CPU tensor");
  for (const auto& e : entries_) TTQ_CHECK(e.name != name, "safetensors: duplicate tensor name '" << name << "'");
  TTQ_CHECK(name != "__metadata__", "safetensors: reserved tensor name");
  Entry e{name, t.dtype(), t.shape(), std::vector<char>(t.nbytes())};
  if (t.nbytes()) std::memcpy(e.bytes.data(), t.raw(), t.nbytes());
  entries_.push_back(std::move(e));
}

void SafeTensorsWriter::add_metadata(const std::string& key, const std::string& value) { metadata_[key] = value; }

void SafeTensorsWriter::write(const std::string& path) const {
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata_.empty()) header["__metadata__"] = metadata_;
  uint64_t offset = 0;
  for (const auto& e : entries_) {
    header[e.name] = {{"dtype", st_dtype(e.dtype)}, {"shape", e.shape}, {"data_offsets", {offset, offset + e.bytes.size()}}};
    offset += e.bytes.size();
  }
  std::string h = header.dump();
  while ((8 + h.size()) % 8 != 0) h.push_back(' ');  // align the data section
  std::string out;
  out.reserve(8 + h.size() + offset);
  uint64_t len = h.size();
  for (int i = 0; i < 8; ++i) out.push_back(static_cast<char>((len >> (8 * i)) & 0xff));
  out += h;
  for (const auto& e : entries_) out.append(e.bytes.data(), e.bytes.size());
  write_file_atomic(path, out);
}

std::string safetensors_format(const std::string& path) noexcept {
  try {
    std::ifstream in(path, std::ios::binary);
    unsigned char head[8];
    if (!in || !in.read(reinterpret_cast<char*>(head), 8)) return "";
    uint64_t len = 0;
    for (int i = 0; i < 8; ++i) len |= static_cast<uint64_t>(head[i]) << (8 * i);
    if (len > (uint64_t{1} << 27)) return "";
    std::string header(len, '\0');
    if (!in.read(header.data(), static_cast<std::streamsize>(len))) return "";
    const nlohmann::json j = nlohmann::json::parse(header, json_depth_limit("'" + path + "': header"));
    const auto meta = j.find("__metadata__");
    if (meta == j.end() || !meta->is_object()) return "";
    const auto format = meta->find("format");
    return format != meta->end() && format->is_string() ? format->get<std::string>() : "";
  } catch (const std::exception&) {
    return "";
  }
}

SafeTensorsFile SafeTensorsFile::read(const std::string& path) {
  SafeTensorsFile f;
  f.path_ = path;
  struct stat st {};
  TTQ_CHECK(::stat(path.c_str(), &st) != 0 || !S_ISDIR(st.st_mode), "'" << path << "' is a folder, not a safetensors file");
  std::ifstream in(path, std::ios::binary);
  TTQ_CHECK(in, "cannot open '" << path << "': " << std::strerror(errno));
  std::vector<char> all;
  try {
    all.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  } catch (const std::exception& e) {  // a read error of the stream
    TTQ_FAIL("cannot read '" << path << "': " << e.what());
  }
  TTQ_CHECK(all.size() >= 8, "'" << path << "' is not a safetensors file: " << all.size() << " bytes, truncated");
  uint64_t len = 0;
  for (int i = 0; i < 8; ++i) len |= static_cast<uint64_t>(static_cast<unsigned char>(all[i])) << (8 * i);
  TTQ_CHECK(len <= all.size() - 8, "'" << path << "': header length " << len << " exceeds the file size "
                                       << all.size() << " (truncated or not a safetensors file)");
  nlohmann::json header;
  try {
    header = nlohmann::json::parse(all.begin() + 8, all.begin() + 8 + static_cast<int64_t>(len),
                                   json_depth_limit("'" + path + "': header"));
  } catch (const nlohmann::json::exception& e) {
    TTQ_FAIL("'" << path << "': header is not valid JSON: " << e.what());
  }
  TTQ_CHECK(header.is_object(), "'" << path << "': header is not a JSON object");
  const uint64_t data_size = all.size() - 8 - len;
  for (auto it = header.begin(); it != header.end(); ++it) {
    if (it.key() == "__metadata__") {
      TTQ_CHECK(it->is_object(), "'" << path << "': __metadata__ is not an object");
      for (auto m = it->begin(); m != it->end(); ++m) {
        TTQ_CHECK(m->is_string(), "'" << path << "': metadata '" << m.key() << "' is not a string");
        f.metadata_[m.key()] = m->get<std::string>();
      }
      continue;
    }
    const auto& v = *it;
    TTQ_CHECK(v.is_object() && v.contains("dtype") && v.contains("shape") && v.contains("data_offsets"),
              "'" << path << "': entry '" << it.key() << "' lacks dtype, shape or data_offsets");
    Entry e{};
    TTQ_CHECK(v["dtype"].is_string() && parse_st_dtype(v["dtype"].get<std::string>(), e.dtype),
              "'" << path << "': tensor '" << it.key() << "' has unsupported dtype " << json_text(v["dtype"]));
    int64_t numel = 1;
    TTQ_CHECK(v["shape"].is_array(), "'" << path << "': tensor '" << it.key() << "' shape is not a list");
    for (const auto& d : v["shape"]) {
      // A dimension, or the product, too large for the bytes a file can hold is a bad shape (the
      // product is checked before it could overflow).
      TTQ_CHECK(d.is_number_unsigned() && d.get<uint64_t>() <= static_cast<uint64_t>(INT64_MAX),
                "'" << path << "': tensor '" << it.key() << "' has a bad dimension " << json_text(d));
      e.shape.push_back(d.get<int64_t>());
      TTQ_CHECK(!__builtin_mul_overflow(numel, e.shape.back(), &numel) && numel <= INT64_MAX / 8,
                "'" << path << "': tensor '" << it.key() << "' has a shape of more elements than any file holds: "
                    << json_text(v["shape"]));
    }
    const auto& off = v["data_offsets"];
    TTQ_CHECK(off.is_array() && off.size() == 2 && off[0].is_number_unsigned() && off[1].is_number_unsigned(),
              "'" << path << "': tensor '" << it.key() << "' has bad data_offsets");
    e.begin = off[0].get<uint64_t>();
    e.end = off[1].get<uint64_t>();
    TTQ_CHECK(e.begin <= e.end && e.end <= data_size,
              "'" << path << "': tensor '" << it.key() << "' bytes [" << e.begin << ", " << e.end
                  << ") lie outside the " << data_size << "-byte data section (truncated file?)");
    TTQ_CHECK(e.end - e.begin == static_cast<uint64_t>(numel) * dtype_size(e.dtype),
              "'" << path << "': tensor '" << it.key() << "' has " << e.end - e.begin << " bytes for shape "
                  << shape_str(e.shape));
    f.index_[it.key()] = e;
  }
  f.data_.assign(all.begin() + 8 + static_cast<int64_t>(len), all.end());
  return f;
}

std::vector<std::string> SafeTensorsFile::names() const {
  std::vector<std::string> out;
  for (const auto& [k, v] : index_) out.push_back(k);
  return out;
}

Tensor SafeTensorsFile::tensor(const std::string& name) const {
  auto it = index_.find(name);
  TTQ_CHECK(it != index_.end(), "'" << path_ << "' has no tensor '" << name << "'");
  Tensor t = Tensor::empty(it->second.shape, it->second.dtype);
  if (t.nbytes()) std::memcpy(t.raw(), data_.data() + it->second.begin, t.nbytes());
  return t;
}

DType SafeTensorsFile::dtype(const std::string& name) const {
  auto it = index_.find(name);
  TTQ_CHECK(it != index_.end(), "'" << path_ << "' has no tensor '" << name << "'");
  return it->second.dtype;
}

Shape SafeTensorsFile::shape(const std::string& name) const {
  auto it = index_.find(name);
  TTQ_CHECK(it != index_.end(), "'" << path_ << "' has no tensor '" << name << "'");
  return it->second.shape;
}

const std::string& SafeTensorsFile::meta(const std::string& key) const {
  auto it = metadata_.find(key);
  TTQ_CHECK(it != metadata_.end(), "'" << path_ << "' has no metadata '" << key << "'");
  return it->second;
}

}  // namespace ttq
