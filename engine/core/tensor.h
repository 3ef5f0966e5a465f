// Tensor: a shape, a dtype, a device, a memory layout and a view into (possibly shared) storage.
// Dense, row-major in the order the layout names: a 4-D image tensor's shape is always
// [N, C, H, W]; Layout::Contiguous stores it in that order (NCHW), Layout::ChannelsLast in
// N, H, W, C order (NHWC, PyTorch's torch.channels_last). Every other tensor is contiguous.
// Views share storage with their source.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "engine/core/bf16.h"
#include "engine/core/error.h"

namespace ttq {

enum class DType : uint8_t { F32, BF16, I8, U8, I32, I64, F64 };
enum class Device : uint8_t { CPU, CUDA };
enum class Layout : uint8_t { Contiguous, ChannelsLast };

// What a model computes in: its input is converted to this dtype and layout, and every layer
// follows its input (config "precision" and "memory_format").
struct ComputeFormat {
  DType dtype = DType::F32;
  Layout layout = Layout::Contiguous;
  ComputeFormat() = default;
  // Explicit from a dtype alone, so that no call drops a layout by passing just a dtype.
  explicit ComputeFormat(DType d) : dtype(d) {}
  ComputeFormat(DType d, Layout l) : dtype(d), layout(l) {}
};

size_t dtype_size(DType dt);
const char* dtype_name(DType dt);
const char* device_name(Device d);
const char* layout_name(Layout l);  // "contiguous", "channels_last"

using Shape = std::vector<int64_t>;
std::string shape_str(const Shape& s);
int64_t shape_numel(const Shape& s);

// Owns (or, for external memory, merely refers to) a block of bytes on one device.
class Storage {
 public:
  Storage(size_t nbytes, Device device);                 // owning
  Storage(void* external, size_t nbytes, Device device);  // non-owning
  ~Storage();
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;

  void* data() const { return data_; }
  size_t nbytes() const { return nbytes_; }
  Device device() const { return device_; }

 private:
  void* data_ = nullptr;
  size_t nbytes_ = 0;
  Device device_ = Device::CPU;
  bool owning_ = true;
};

template <typename T> constexpr DType dtype_of();
template <> constexpr DType dtype_of<float>() { return DType::F32; }
template <> constexpr DType dtype_of<bf16>() { return DType::BF16; }
template <> constexpr DType dtype_of<int8_t>() { return DType::I8; }
template <> constexpr DType dtype_of<uint8_t>() { return DType::U8; }
template <> constexpr DType dtype_of<int32_t>() { return DType::I32; }
template <> constexpr DType dtype_of<int64_t>() { return DType::I64; }
template <> constexpr DType dtype_of<double>() { return DType::F64; }

class Tensor {
 public:
  Tensor() = default;

  // layout ChannelsLast needs a 4-D shape.
  static Tensor empty(const Shape& shape, DType dtype = DType::F32, Device device = Device::CPU,
                      Layout layout = Layout::Contiguous);
  // Uninitialised, with t's shape, dtype, device and layout.
  static Tensor empty_like(const Tensor& t);
  static Tensor zeros(const Shape& shape, DType dtype = DType::F32, Device device = Device::CPU);
  static Tensor full(const Shape& shape, float value);
  static Tensor from_vector(const Shape& shape, const std::vector<float>& values);
  static Tensor from_int32(const std::vector<int32_t>& values);  // i32 [values.size()]
  // Wraps memory the caller keeps alive; nothing is freed when the tensor goes.
  static Tensor from_blob(void* data, const Shape& shape, DType dtype, Device device = Device::CPU);

  bool defined() const { return storage_ != nullptr; }
  const Shape& shape() const { return shape_; }
  int64_t dim(int i) const;
  int ndim() const { return static_cast<int>(shape_.size()); }
  int64_t numel() const { return shape_numel(shape_); }
  size_t nbytes() const { return static_cast<size_t>(numel()) * dtype_size(dtype_); }
  DType dtype() const { return dtype_; }
  Device device() const;
  Layout layout() const { return layout_; }
  bool channels_last() const { return layout_ == Layout::ChannelsLast; }

  // The elements, for host code: only a CPU tensor has them in host memory. A CUDA tensor is an
  // error that names it (copy it with to(Device::CPU), or hand data_ptr<T>() to a device kernel).
  template <typename T> T* data() const {
    T* p = data_ptr<T>();
    TTQ_CHECK(storage_->device() == Device::CPU,
              "data<" << dtype_name(dtype_) << ">() on " << str()
                      << ": host code cannot read device memory; copy the tensor with to(Device::CPU) first");
    return p;
  }
  // The address of the first element on the tensor's own device (a device pointer for a CUDA
  // tensor): what the dispatch in kernels/ passes to a CPU or CUDA kernel. Never dereferenced by
  // host code unless the tensor is known to be on the CPU.
  template <typename T> T* data_ptr() const {
    TTQ_CHECK(defined(), "data() on an undefined tensor");
    TTQ_CHECK(dtype_of<T>() == dtype_, "data<" << dtype_name(dtype_of<T>()) << ">() on a "
                                               << dtype_name(dtype_) << " tensor");
    return reinterpret_cast<T*>(static_cast<char*>(storage_->data()) + offset_);
  }
  // The untyped data_ptr(): the address on the tensor's own device.
  void* raw() const;

  // Same storage, new shape (numel must agree). A channels-last tensor only views itself: its
  // elements are not in the order of its shape (convert it with ops::to_layout first).
  Tensor view(const Shape& shape) const;
  // Rows [begin, end) of the first dimension, sharing storage.
  Tensor slice(int64_t begin, int64_t end) const;
  // A new tensor with its own storage holding a copy of the values, in the same layout.
  Tensor clone() const;
  // This tensor on the given device: itself when already there, else a copy (same layout).
  Tensor to(Device d) const;
  // Byte copy: src must have this tensor's shape, dtype and layout.
  void copy_from(const Tensor& src);

  void fill(float value);
  void zero();

  // Number of tensors sharing this storage, for tests of view semantics.
  long use_count() const { return storage_.use_count(); }
  std::string str() const;  // "f32[2, 3, 4] cpu", "bf16[8, 16, 4, 4] cuda channels_last"

 private:
  std::shared_ptr<Storage> storage_;
  size_t offset_ = 0;  // bytes
  Shape shape_;
  DType dtype_ = DType::F32;
  Layout layout_ = Layout::Contiguous;
};

}  // namespace ttq
