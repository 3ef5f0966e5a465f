// BatchFeed: training batches on the model's device, copied ahead of time. On the GPU, while
// step k computes, batch k+1 is already being copied through pinned staging memory on a copy
// stream (kernels/device.h AsyncUploader); the compute stream waits for it with an event, so no
// step waits on the host for its data. On the CPU the loader's batches are used as they are.
// Under precision "bf16" and memory_format "channels_last" the images are converted on the device
// after the copy (the copy stays f32 NCHW: converting on the host would cost the training thread
// more than the halved copy saves).
#pragma once

#include <cstdint>

#include "engine/data/loader.h"
#include "kernels/device.h"

namespace ttq {

struct DeviceBatch {
  Tensor images;        // [N, C, H, W] on the device, in the feed's dtype and layout
  Tensor labels;        // [N] int32 on the device
  int64_t size = 0;     // N
};

class BatchFeed {
 public:
  // The loader's epoch must have been started; the feed takes its batches in order.
  // format: the dtype (f32 or bf16) and layout the model computes in.
  BatchFeed(Loader& loader, Device device, ComputeFormat format = {});
  // The next batch, or false when the epoch is done. A batch stays valid until the following
  // call: on the GPU that call also marks the previous batch's slot free for reuse once the work
  // enqueued so far has run.
  bool next(DeviceBatch& out);

 private:
  struct Slot {
    DeviceBatch batch;  // images: f32, as copied
    Tensor converted;   // the images in format_ (when not f32 contiguous), reused
    Tensor cast;        // bf16 channels-last: the bf16 images before the permutation, reused
    bool full = false;
  };
  bool fetch(int slot);

  Loader& loader_;
  Device device_;
  ComputeFormat format_;
  Slot slots_[2];
  // Declared after the slots, so destroyed before them: its destructor waits for the copies in
  // flight before the slots' device buffers are released.
  std::unique_ptr<AsyncUploader> uploader_;
  int current_ = -1;     // the slot handed out by the last next()
  bool started_ = false;
};

}  // namespace ttq
