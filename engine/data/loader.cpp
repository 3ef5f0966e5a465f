#include "engine/data/loader.h"

namespace ttq {

ImageSetSource::ImageSetSource(std::shared_ptr<const ImageSet> set, Normalization norm, Augment aug)
    : set_(std::move(set)), norm_(std::move(norm)), aug_(aug) {
  TTQ_CHECK(set_ && set_->size() > 0, "data: empty image set");
  const bool per_pixel = norm_.kind == "pixel_mean";
  const size_t want = per_pixel ? static_cast<size_t>(set_->spec.channels * set_->spec.height * set_->spec.width)
                                : static_cast<size_t>(set_->spec.channels);
  TTQ_CHECK(norm_.mean.size() == want && (per_pixel || norm_.std.size() == want),
            "data: normalisation of kind '" << norm_.kind << "' has " << norm_.mean.size() << " means for "
                                            << set_->name << " (expected " << want << ")");
}

int32_t ImageSetSource::fetch(int64_t index, bool augment, Rng& rng, float* out) const {
  transform_image(set_->image(index), set_->spec, norm_, aug_, augment, rng, out);
  return set_->labels[index];
}

Loader::Loader(std::shared_ptr<const SampleSource> source, const LoaderConfig& cfg) : src_(std::move(source)), cfg_(cfg) {
  TTQ_CHECK(cfg.batch_size > 0, "loader: batch_size must be positive, got " << cfg.batch_size);
  TTQ_CHECK(cfg.world >= 1 && cfg.rank >= 0 && cfg.rank < cfg.world, "loader: bad rank " << cfg.rank << " of " << cfg.world);
  TTQ_CHECK(cfg.workers >= 0 && cfg.prefetch >= 1, "loader: workers must be >= 0 and prefetch >= 1");
  TTQ_CHECK(batches_per_epoch() > 0, "loader: " << src_->size() << " samples make no batch of " << cfg.batch_size
                                                << " x " << cfg.world << " ranks");
}

Loader::~Loader() { stop_workers(); }

int64_t Loader::batches_per_epoch() const {
  const int64_t global = cfg_.batch_size * cfg_.world;
  return cfg_.drop_last ? src_->size() / global : (src_->size() + global - 1) / global;
}

std::vector<int64_t> Loader::permutation(int64_t epoch) const {
  std::vector<int64_t> p(static_cast<size_t>(src_->size()));
  for (int64_t i = 0; i < src_->size(); ++i) p[i] = i;
  if (!cfg_.shuffle) return p;
  uint64_t key = cfg_.seed * 0x9e3779b97f4a7c15ULL + static_cast<uint64_t>(epoch) + 1;
  Rng rng(Rng::splitmix64(key));
  for (int64_t i = src_->size() - 1; i > 0; --i) std::swap(p[i], p[rng.below(static_cast<uint64_t>(i + 1))]);
  return p;
}

std::vector<int64_t> Loader::batch_indices(int64_t epoch, int64_t b) const {
  std::vector<int64_t> other;  // the current epoch's order is read in place, not copied per batch
  const std::vector<int64_t>& p = epoch == epoch_ ? perm_ : (other = permutation(epoch));
  const int64_t global = cfg_.batch_size * cfg_.world;
  const int64_t gbegin = b * global;
  const int64_t gend = std::min<int64_t>(gbegin + global, src_->size());
  // Split the global batch evenly; with a short last batch the first ranks get one more.
  const int64_t n = gend - gbegin, base = n / cfg_.world, extra = n % cfg_.world;
  const int64_t begin = gbegin + cfg_.rank * base + std::min<int64_t>(cfg_.rank, extra);
  const int64_t count = base + (cfg_.rank < extra ? 1 : 0);
  return std::vector<int64_t>(p.begin() + begin, p.begin() + begin + count);
}

Batch Loader::make_batch(int64_t epoch, int64_t b) const {
  const std::vector<int64_t> idx = batch_indices(epoch, b);
  const InputSpec s = src_->spec();
  const int64_t per = s.channels * s.height * s.width;
  Batch out;
  out.images = Tensor::empty({static_cast<int64_t>(idx.size()), s.channels, s.height, s.width});
  out.labels.resize(idx.size());
  for (size_t k = 0; k < idx.size(); ++k) {
    uint64_t key = (cfg_.seed * 0x9e3779b97f4a7c15ULL) ^ (static_cast<uint64_t>(epoch) * 0xbf58476d1ce4e5b9ULL) ^
                   (static_cast<uint64_t>(idx[k]) * 0x94d049bb133111ebULL);
    Rng rng(Rng::splitmix64(key));
    out.labels[k] = src_->fetch(idx[k], cfg_.augment, rng, out.images.data<float>() + k * per);
  }
  return out;
}

void Loader::stop_workers() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  for (auto& t : threads_) t.join();
  threads_.clear();
  stopping_ = false;
}

void Loader::start_epoch(int64_t epoch, int64_t first_batch) {
  stop_workers();
  TTQ_CHECK(first_batch >= 0 && first_batch <= batches_per_epoch(),
            "loader: cannot start epoch " << epoch << " at batch " << first_batch << " of " << batches_per_epoch());
  perm_ = permutation(epoch);
  epoch_ = epoch;
  next_to_make_ = next_to_give_ = first_batch;
  end_ = batches_per_epoch();
  ready_.clear();
  error_ = nullptr;
  for (int i = 0; i < cfg_.workers; ++i) threads_.emplace_back([this] { worker_loop(); });
}

void Loader::worker_loop() {
  while (true) {
    int64_t b;
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [&] { return stopping_ || next_to_make_ >= end_ || next_to_make_ < next_to_give_ + cfg_.prefetch; });
      if (stopping_ || next_to_make_ >= end_) return;
      b = next_to_make_++;
    }
    Batch batch;
    std::exception_ptr err;
    try {
      batch = make_batch(epoch_, b);
    } catch (...) {
      err = std::current_exception();
    }
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (err && !error_) error_ = err;
      ready_[b] = std::move(batch);
    }
    cv_.notify_all();
  }
}

bool Loader::next(Batch& out) {
  TTQ_CHECK(epoch_ >= 0, "loader: next() before start_epoch()");
  if (next_to_give_ >= end_) return false;
  if (cfg_.workers == 0) {
    out = make_batch(epoch_, next_to_give_++);
    return true;
  }
  std::unique_lock<std::mutex> lock(mu_);
  cv_.wait(lock, [&] { return error_ || ready_.count(next_to_give_); });
  if (error_) std::rethrow_exception(error_);
  out = std::move(ready_[next_to_give_]);
  ready_.erase(next_to_give_);
  ++next_to_give_;
  lock.unlock();
  cv_.notify_all();
  return true;
}

}  // namespace ttq
