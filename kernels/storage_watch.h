// StorageWatch: notices when any of a fixed list of tensors has been given new storage (a move to
// another device, a checkpoint load that replaced a tensor), for objects that cache device
// pointers (the multi-tensor TTQ and optimizer tables). A check compares pointers in place: no
// allocation, cheap enough for every step.
#pragma once

#include <utility>
#include <vector>

#include "engine/core/tensor.h"

namespace ttq {

class StorageWatch {
 public:
  // The tensors to watch (null entries allowed); their current storage counts as seen.
  void watch(std::vector<const Tensor*> tensors) {
    tensors_ = std::move(tensors);
    seen_.assign(tensors_.size(), nullptr);
    remember();
  }
  bool moved() const {
    for (size_t i = 0; i < tensors_.size(); ++i)
      if (data_of(tensors_[i]) != seen_[i]) return true;
    return false;
  }
  void remember() {
    for (size_t i = 0; i < tensors_.size(); ++i) seen_[i] = data_of(tensors_[i]);
  }

 private:
  static const void* data_of(const Tensor* t) { return t && t->defined() ? t->raw() : nullptr; }

  std::vector<const Tensor*> tensors_;
  std::vector<const void*> seen_;
};

}  // namespace ttq
