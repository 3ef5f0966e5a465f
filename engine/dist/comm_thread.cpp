#include "engine/dist/comm_thread.h"

namespace ttq {

class CommThread::Work : public CommWork {
 public:
  Work(std::shared_ptr<Task> t, std::atomic<int>& waiters) : task_(std::move(t)), waiters_(waiters) {}
  void wait() override {
    std::unique_lock<std::mutex> lock(task_->mu);
    if (!task_->done) {
      waiters_.fetch_add(1, std::memory_order_relaxed);
      task_->cv.wait(lock, [&] { return task_->done; });
      waiters_.fetch_sub(1, std::memory_order_relaxed);
    }
    if (task_->error) std::rethrow_exception(task_->error);
  }

 private:
  std::shared_ptr<Task> task_;
  std::atomic<int>& waiters_;
};

CommThread::CommThread() : thread_([this] { loop(); }) {}

CommThread::~CommThread() { stop(); }

std::unique_ptr<CommWork> CommThread::submit(std::function<void()> fn) {
  auto task = std::make_shared<Task>();
  task->fn = std::move(fn);
  {
    std::lock_guard<std::mutex> lock(mu_);
    TTQ_CHECK(!stopping_, "distributed: the communication thread has stopped");
    queue_.push_back(task);
  }
  cv_.notify_one();
  return std::make_unique<Work>(std::move(task), waiters_);
}

void CommThread::run(std::function<void()> fn) {
  // Counted as waiting from the start, so the backend polls at full speed for this one.
  struct Waiting {
    std::atomic<int>& n;
    explicit Waiting(std::atomic<int>& w) : n(w) { n.fetch_add(1, std::memory_order_relaxed); }
    ~Waiting() { n.fetch_sub(1, std::memory_order_relaxed); }
  } waiting(waiters_);
  submit(std::move(fn))->wait();
}

void CommThread::stop(std::function<void()> last) noexcept {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopping_) return;
    if (last) {
      auto task = std::make_shared<Task>();
      task->fn = std::move(last);
      queue_.push_back(task);
    }
    stopping_ = true;
  }
  cv_.notify_one();
  if (thread_.joinable()) thread_.join();
}

void CommThread::loop() {
  while (true) {
    std::shared_ptr<Task> task;
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [&] { return stopping_ || !queue_.empty(); });
      if (queue_.empty()) return;  // stopping, nothing left
      task = queue_.front();
      queue_.pop_front();
    }
    std::exception_ptr err;
    try {
      task->fn();
    } catch (...) {
      err = std::current_exception();
    }
    {
      std::lock_guard<std::mutex> lock(task->mu);
      task->error = err;
      task->done = true;
    }
    task->cv.notify_all();
  }
}

}  // namespace ttq
