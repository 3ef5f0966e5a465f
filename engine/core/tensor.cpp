#include "engine/core/tensor.h"

#include <cstdlib>
#include <cstring>
#include <sstream>

#include "kernels/device.h"

namespace ttq {

size_t dtype_size(DType dt) {
  switch (dt) {
    case DType::F32: return 4;
    case DType::BF16: return 2;
    case DType::I8: return 1;
    case DType::U8: return 1;
    case DType::I32: return 4;
    case DType::I64: return 8;
    case DType::F64: return 8;
  }
  return 0;
}

const char* dtype_name(DType dt) {
  switch (dt) {
    case DType::F32: return "f32";
    case DType::BF16: return "bf16";
    case DType::I8: return "i8";
    case DType::U8: return "u8";
    case DType::I32: return "i32";
    case DType::I64: return "i64";
    case DType::F64: return "f64";
  }
  return "?";
}

const char* device_name(Device d) { return d == Device::CPU ? "cpu" : "cuda"; }

const char* layout_name(Layout l) { return l == Layout::Contiguous ? "contiguous" : "channels_last"; }

std::string shape_str(const Shape& s) {
  std::ostringstream os;
  os << "[";
  for (size_t i = 0; i < s.size(); ++i) os << (i ? ", " : "") << s[i];
  os << "]";
  return os.str();
}

int64_t shape_numel(const Shape& s) {
  int64_t n = 1;
  for (int64_t d : s) n *= d;
  return n;
}

Storage::Storage(size_t nbytes, Device device) : nbytes_(nbytes), device_(device) {
  if (nbytes == 0) return;
  if (device == Device::CPU) {
    // 64-byte alignment for vector loads; size rounded up as aligned_alloc requires.
    size_t rounded = (nbytes + 63) / 64 * 64;
    data_ = std::aligned_alloc(64, rounded);
    TTQ_CHECK(data_ != nullptr, "out of host memory allocating " << nbytes << " bytes");
  } else {
    data_ = device_malloc(nbytes);
  }
}

Storage::Storage(void* external, size_t nbytes, Device device)
    : data_(external), nbytes_(nbytes), device_(device), owning_(false) {}

Storage::~Storage() {
  if (!owning_ || data_ == nullptr) return;
  if (device_ == Device::CPU)
    std::free(data_);
  else
    device_free_nothrow(data_);
}

Tensor Tensor::empty(const Shape& shape, DType dtype, Device device, Layout layout) {
  for (int64_t d : shape) TTQ_CHECK(d >= 0, "negative dimension in shape " << shape_str(shape));
  TTQ_CHECK(layout == Layout::Contiguous || shape.size() == 4,
            "a channels-last tensor must be 4-D [N, C, H, W], not " << shape_str(shape));
  Tensor t;
  t.shape_ = shape;
  t.dtype_ = dtype;
  t.layout_ = layout;
  t.storage_ = std::make_shared<Storage>(static_cast<size_t>(shape_numel(shape)) * dtype_size(dtype), device);
  return t;
}

Tensor Tensor::empty_like(const Tensor& t) { return empty(t.shape_, t.dtype_, t.device(), t.layout_); }

Tensor Tensor::zeros(const Shape& shape, DType dtype, Device device) {
  Tensor t = empty(shape, dtype, device);
  t.zero();
  return t;
}

Tensor Tensor::full(const Shape& shape, float value) {
  Tensor t = empty(shape);
  t.fill(value);
  return t;
}

namespace {
template <typename T> Tensor tensor_from(const Shape& shape, const std::vector<T>& values) {
  TTQ_CHECK(shape_numel(shape) == static_cast<int64_t>(values.size()),
            "from_vector: shape " << shape_str(shape) << " needs " << shape_numel(shape)
                                  << " values, got " << values.size());
  Tensor t = Tensor::empty(shape, dtype_of<T>());
  if (!values.empty()) std::memcpy(t.data<T>(), values.data(), values.size() * sizeof(T));
  return t;
}
}  // namespace

Tensor Tensor::from_vector(const Shape& shape, const std::vector<float>& values) { return tensor_from(shape, values); }
Tensor Tensor::from_int32(const std::vector<int32_t>& values) {
  return tensor_from({static_cast<int64_t>(values.size())}, values);
}

Tensor Tensor::from_blob(void* data, const Shape& shape, DType dtype, Device device) {
  Tensor t;
  t.shape_ = shape;
  t.dtype_ = dtype;
  t.storage_ = std::make_shared<Storage>(data, static_cast<size_t>(shape_numel(shape)) * dtype_size(dtype), device);
  return t;
}

int64_t Tensor::dim(int i) const {
  int n = ndim();
  if (i < 0) i += n;
  TTQ_CHECK(i >= 0 && i < n, "dim(" << i << ") out of range for shape " << shape_str(shape_));
  return shape_[i];
}

Device Tensor::device() const { return storage_ ? storage_->device() : Device::CPU; }

void* Tensor::raw() const {
  TTQ_CHECK(defined(), "raw() on an undefined tensor");
  return static_cast<char*>(storage_->data()) + offset_;
}

Tensor Tensor::view(const Shape& shape) const {
  TTQ_CHECK(shape_numel(shape) == numel(),
            "view " << shape_str(shape) << " of a tensor with shape " << shape_str(shape_));
  TTQ_CHECK(layout_ == Layout::Contiguous || shape == shape_,
            "view " << shape_str(shape) << " of " << str() << ": convert it to contiguous first (ops::to_layout)");
  Tensor t = *this;
  t.shape_ = shape;
  return t;
}

Tensor Tensor::slice(int64_t begin, int64_t end) const {
  TTQ_CHECK(ndim() >= 1 && 0 <= begin && begin <= end && end <= shape_[0],
            "slice [" << begin << ", " << end << ") of shape " << shape_str(shape_));
  Tensor t = *this;
  int64_t row = shape_numel(shape_) / (shape_[0] ? shape_[0] : 1);
  t.offset_ += static_cast<size_t>(begin * row) * dtype_size(dtype_);
  t.shape_[0] = end - begin;
  return t;
}

Tensor Tensor::clone() const {
  Tensor t = empty_like(*this);
  t.copy_from(*this);
  return t;
}

Tensor Tensor::to(Device d) const {
  if (device() == d) return *this;
  Tensor t = empty(shape_, dtype_, d, layout_);
  t.copy_from(*this);
  return t;
}

void Tensor::copy_from(const Tensor& src) {
  TTQ_CHECK(src.shape_ == shape_ && src.dtype_ == dtype_ && src.layout_ == layout_,
            "copy_from: " << src.str() << " into " << str());
  if (nbytes() == 0) return;
  if (device() == Device::CPU && src.device() == Device::CPU)
    std::memcpy(raw(), src.raw(), nbytes());
  else
    device_copy(raw(), device(), src.raw(), src.device(), nbytes());
}

void Tensor::fill(float value) {
  TTQ_CHECK(dtype_ == DType::F32 && device() == Device::CPU, "fill on " << str());
  float* p = data<float>();
  for (int64_t i = 0, n = numel(); i < n; ++i) p[i] = value;
}

void Tensor::zero() {
  if (nbytes() == 0) return;
  if (device() == Device::CPU)
    std::memset(raw(), 0, nbytes());
  else
    device_memset_zero(raw(), nbytes());
}

std::string Tensor::str() const {
  std::ostringstream os;
  os << dtype_name(dtype_) << shape_str(shape_) << " " << device_name(device());
  if (layout_ != Layout::Contiguous) os << " " << layout_name(layout_);
  return os.str();
}

}  // namespace ttq
