#include "engine/train/batch_feed.h"

#include "kernels/ops.h"

namespace ttq {

BatchFeed::BatchFeed(Loader& loader, Device device, ComputeFormat format)
    : loader_(loader), device_(device), format_(format) {
  TTQ_CHECK(format.dtype == DType::F32 || format.dtype == DType::BF16,
            "batch feed: images must be f32 or bf16, not " << dtype_name(format.dtype));
  if (device_ == Device::CUDA) uploader_ = std::make_unique<AsyncUploader>(2);
}

// Takes the loader's next batch into slot s (on the GPU: starts its copy). False at the end.
bool BatchFeed::fetch(int s) {
  Slot& slot = slots_[s];
  Batch b;
  if (!loader_.next(b)) {
    slot.full = false;
    return false;
  }
  const int64_t n = static_cast<int64_t>(b.labels.size());
  TTQ_CHECK(b.images.defined() && b.images.dim(0) == n,
            "batch feed: a batch of " << n << " labels has images " << b.images.str());
  if (device_ == Device::CPU) {
    slot.batch = {b.images, Tensor::from_int32(b.labels), n};
  } else {
    DeviceBatch& d = slot.batch;
    if (!d.images.defined() || d.images.shape() != b.images.shape()) {
      // New device buffers (first batch, or a smaller last batch): allocated on the compute
      // stream, so let that stream get there before the copy stream writes them.
      d.images = Tensor::empty(b.images.shape(), DType::F32, Device::CUDA);
      d.labels = Tensor::empty({n}, DType::I32, Device::CUDA);
      device_synchronize();
    }
    d.size = n;
    uploader_->upload(s, {{d.images.raw(), b.images.raw(), b.images.nbytes()},
                          {d.labels.raw(), b.labels.data(), b.labels.size() * sizeof(int32_t)}});
  }
  slot.full = true;
  return true;
}

bool BatchFeed::next(DeviceBatch& out) {
  if (!started_) {
    started_ = true;
    fetch(0);
    current_ = 1;  // so that the slot handed out first is 0
  } else if (uploader_) {
    uploader_->release(current_);  // the previous step's work is enqueued: its slot frees up after it
  }
  const int s = 1 - current_;
  if (!slots_[s].full) return false;
  if (uploader_) uploader_->acquire(s);
  out = slots_[s].batch;
  const Layout layout = out.images.ndim() == 4 ? format_.layout : Layout::Contiguous;
  if (format_.dtype != DType::F32 || layout != Layout::Contiguous) {
    // On the compute stream, after the copy (acquire made the stream wait for it). The slot's
    // buffer is next overwritten two batches later, by work ordered after this batch's step.
    Tensor& c = slots_[s].converted;
    if (!c.defined() || c.shape() != out.images.shape() || c.device() != out.images.device())
      c = Tensor::empty(out.images.shape(), format_.dtype, out.images.device(), layout);
    if (layout == Layout::Contiguous) {
      ops::cast(out.images, c);
    } else if (format_.dtype == DType::F32) {
      ops::to_layout(out.images, c);
    } else {
      Tensor& t = slots_[s].cast;
      if (!t.defined() || t.shape() != out.images.shape() || t.device() != out.images.device())
        t = Tensor::empty(out.images.shape(), format_.dtype, out.images.device());
      ops::cast(out.images, t);
      ops::to_layout(t, c);
    }
    out.images = c;
  }
  slots_[s].full = false;
  current_ = s;
  // Start the following batch into the other slot while this one computes.
  fetch(1 - s);
  return true;
}

}  // namespace ttq
