// The communication thread of the CPU backends (mpi, tcp): it runs their collectives one after
// another, in the order they were started, so a gradient bucket's all-reduce proceeds while the
// caller's thread goes on with the backward pass. Blocking collectives are a submit followed by a
// wait. With MPI this thread is also the one that initialises and finalises MPI and makes every
// MPI call (MPI_THREAD_FUNNELED is enough).
#pragma once

#include <atomic>
#include <condition_variable>
#include <deque>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "engine/dist/communicator.h"

namespace ttq {

class CommThread {
 public:
  CommThread();
  ~CommThread();  // stop() if the owner did not
  CommThread(const CommThread&) = delete;
  CommThread& operator=(const CommThread&) = delete;

  // Queues fn; the returned work's wait() blocks until fn ran and rethrows its exception. fn must
  // bound its own running time (the backends poll with deadlines).
  std::unique_ptr<CommWork> submit(std::function<void()> fn);
  // submit(fn)->wait().
  void run(std::function<void()> fn);
  // Runs `last` (may be empty) on the thread after the queued tasks, then ends the thread.
  // Idempotent; never throws.
  void stop(std::function<void()> last = {}) noexcept;
  bool running() const { return thread_.joinable(); }
  // Threads now blocked in a work's wait(): a backend polling for completion can spin while
  // somebody waits and back off (sleep) while the caller computes on the same cores.
  int waiters() const { return waiters_.load(std::memory_order_relaxed); }

 private:
  struct Task {
    std::function<void()> fn;
    std::mutex mu;
    std::condition_variable cv;
    bool done = false;
    std::exception_ptr error;
  };
  class Work;
  void loop();

  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::shared_ptr<Task>> queue_;
  bool stopping_ = false;
  std::atomic<int> waiters_{0};
  std::thread thread_;
};

}  // namespace ttq
