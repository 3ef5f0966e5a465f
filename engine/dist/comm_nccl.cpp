// The nccl backend: gradient buckets averaged on the GPU with ncclAllReduce(ncclAvg) on a
// communication stream of their own.
//
// Set-up: the process binds to GPU local_rank, rank 0 makes the NCCL unique id and the host
// communicator (mpi, or tcp for the env launch) broadcasts it; the NCCL communicator is created
// non-blocking (ncclConfig_t.blocking = 0) so even its set-up polls with a deadline.
// A bucket: an event recorded on the calling thread's stream (cudaStreamPerThread, where the
// backward pass wrote the gradients), the communication stream waits on it, ncclAllReduce runs
// there, and a second event marks the end. wait() polls that event and ncclCommGetAsyncError until
// done, an NCCL error, or timeout_s; an error or a timeout calls ncclCommAbort (so no kernel is
// left waiting for a dead peer) and throws; on success the calling thread's stream waits on the
// event, so the optimizer reads the averaged gradients. The gradient reducer uses wait_on_device()
// instead: the calling thread's stream waits on the event and the host goes on (no host wait per
// step); step_fence() at the end of each step then polls the previous step's end mark (normally
// long done), and sync_device() everything so far before the trainer reads device results, both
// with the same error checks, abort and timeout. Host counters, broadcasts and barriers go through
// the host communicator.
#include "engine/dist/backends.h"

#if defined(TTQ_HAVE_NCCL) && defined(TTQ_HAVE_CUDA)

#include <cuda_runtime_api.h>
#include <nccl.h>

#include <atomic>
#include <chrono>
#include <exception>
#include <cstdio>
#include <mutex>
#include <string>
#include <thread>

#include "engine/dist/gpu_util.h"
#include "kernels/cuda/cuda_check.h"

#if NCCL_VERSION_CODE < NCCL_VERSION(2, 14, 0)
#error "the nccl backend needs NCCL 2.14 or newer (non-blocking communicators, ncclAvg)"
#endif

namespace ttq {

namespace {

using clock_type = std::chrono::steady_clock;
using detail::size_str;

class NcclCommunicator : public Communicator {
 public:
  NcclCommunicator(std::shared_ptr<Communicator> host, double timeout_s) : host_(std::move(host)) {
    rank_ = host_->rank();
    world_ = host_->world();
    local_rank_ = host_->local_rank();
    local_world_ = host_->local_world();
    timeout_s_ = timeout_s;
    try {
      set_up();
    } catch (const std::exception& e) {
      // No destructor runs for a throwing constructor: release what was made, and make the other
      // ranks (waiting in the id broadcast or in their NCCL set-up) fail now, not at the timeout.
      abort_nccl();
      if (stream_) CUDA_CHECK_NOTHROW(cudaStreamDestroy(stream_));
      stream_ = nullptr;
      // MPI's abort ends this process at once: the error is printed here, or nobody would see it.
      if (std::string(host_->backend()) == "mpi") {
        std::fprintf(stderr, "distributed (nccl): set-up failed on %s: %s\n", who().c_str(), e.what());
        std::fflush(stderr);
      }
      host_->abort(e.what());
      throw;
    }
  }

  void set_up() {
    select_local_gpu(*host_, /*exclusive=*/true);
    CUDA_CHECK(cudaGetDevice(&device_));
    CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
    ncclUniqueId id{};
    if (rank_ == 0) {
      const ncclResult_t r = ncclGetUniqueId(&id);
      TTQ_CHECK(r == ncclSuccess, "distributed (nccl): ncclGetUniqueId failed on " << who() << ": "
                                                                                   << ncclGetErrorString(r));
    }
    host_->broadcast(&id, sizeof id, 0);
    ncclConfig_t cfg = NCCL_CONFIG_INITIALIZER;
    cfg.blocking = 0;
    const ncclResult_t r = ncclCommInitRankConfig(&comm_, world_, id, rank_, &cfg);
    launched(r, "ncclCommInitRankConfig");
    wait_ready("setting up the NCCL communicator");
  }

  ~NcclCommunicator() override {
    if (comm_) {
      if (!broken_) {
        // Flush, then free without waiting for anybody; abort if that does not finish in time.
        const ncclResult_t fr = ncclCommFinalize(comm_);
        const auto deadline = clock_type::now() + std::chrono::seconds(10);
        ncclResult_t st = fr == ncclSuccess || fr == ncclInProgress ? ncclInProgress : fr;
        while (st == ncclInProgress && clock_type::now() < deadline) {
          if (ncclCommGetAsyncError(comm_, &st) != ncclSuccess) break;
          if (st != ncclInProgress) break;
          std::this_thread::sleep_for(std::chrono::milliseconds(1));
        }
        if (st == ncclSuccess)
          ncclCommDestroy(comm_);
        else
          ncclCommAbort(comm_);
      } else {
        ncclCommAbort(comm_);
      }
      comm_ = nullptr;
    }
    if (fence_) CUDA_CHECK_NOTHROW(cudaEventDestroy(fence_));
    if (stream_) CUDA_CHECK_NOTHROW(cudaStreamDestroy(stream_));
  }

  const char* backend() const override { return "nccl"; }
  Device buffer_device() const override { return Device::CUDA; }
  bool broken() const override { return broken_ || host_->broken(); }
  void set_timeout(double seconds) override {
    Communicator::set_timeout(seconds);
    host_->set_timeout(seconds);
  }

  std::unique_ptr<CommWork> all_reduce_average_async(Tensor& data) override;
  // Host collectives. A failure there (a dead peer) also aborts the NCCL communicator: all-reduces
  // this rank already launched may wait for that peer, and device work queued behind them (and any
  // cudaFree on the way out) would otherwise never finish.
  void all_reduce_sum(double* data, int64_t n, const char* what) override {
    on_host([&] { host_->all_reduce_sum(data, n, what); });
  }
  void all_reduce_sum(int64_t* data, int64_t n, const char* what) override {
    on_host([&] { host_->all_reduce_sum(data, n, what); });
  }
  void broadcast(void* data, size_t bytes, int root) override {
    on_host([&] { host_->broadcast(data, bytes, root); });
  }
  void barrier() override {
    on_host([&] { host_->barrier(); });
  }
  void abort(const std::string& reason) noexcept override {
    abort_nccl();
    host_->abort(reason);
  }
  void abort_device() noexcept override { abort_nccl(); }

  // Polls the enqueue of a non-blocking call (ncclInProgress) until it is done.
  void wait_ready(const std::string& what) {
    const auto deadline = deadline_from_now();
    while (true) {
      ncclResult_t st = ncclSuccess;
      const ncclResult_t r = ncclCommGetAsyncError(comm_, &st);
      if (r != ncclSuccess) fail(what, r);
      if (st == ncclSuccess) return;
      if (st != ncclInProgress) fail(what, st);
      if (clock_type::now() >= deadline) fail_timeout(what);
      std::this_thread::sleep_for(std::chrono::microseconds(20));
    }
  }

  // Waits on the host for `done` (recorded on the communication stream after the collective),
  // then orders the calling thread's stream after it.
  void wait_event(cudaEvent_t done, const std::string& what) {
    poll_event(done, what);
    CUDA_CHECK(cudaStreamWaitEvent(cudaStreamPerThread, done, 0));
  }

  void step_fence() override {
    check_usable("a step");
    cudaEvent_t mark = nullptr;
    CUDA_CHECK(cudaEventCreateWithFlags(&mark, cudaEventDisableTiming));
    CUDA_CHECK(cudaEventRecord(mark, cudaStreamPerThread));
    cudaEvent_t previous = fence_;
    fence_ = mark;
    if (previous) {
      struct Release {
        cudaEvent_t e;
        ~Release() { CUDA_CHECK_NOTHROW(cudaEventDestroy(e)); }
      } release{previous};
      poll_event(previous, "the previous step (its gradient all-reduces)");
    }
  }

  void sync_device(const std::string& what) override {
    check_usable(what.c_str());
    cudaEvent_t mark = nullptr;
    CUDA_CHECK(cudaEventCreateWithFlags(&mark, cudaEventDisableTiming));
    struct Release {
      cudaEvent_t e;
      ~Release() { CUDA_CHECK_NOTHROW(cudaEventDestroy(e)); }
    } release{mark};
    CUDA_CHECK(cudaEventRecord(mark, cudaStreamPerThread));
    poll_event(mark, what);
  }

  // Polls `done` until it completed, checking NCCL's asynchronous error state; an error or
  // timeout_s passing aborts the communicator and throws.
  void poll_event(cudaEvent_t done, const std::string& what) {
    const auto deadline = deadline_from_now();
    for (int spins = 0;; ++spins) {
      const cudaError_t e = cudaEventQuery(done);
      if (e == cudaSuccess) break;
      if (e != cudaErrorNotReady) {
        (void)cudaGetLastError();
        fail_msg("distributed (nccl): " + what + " on " + who() + ": CUDA error " + cudaGetErrorName(e) + " (" +
                 cudaGetErrorString(e) + ")");
      }
      ncclResult_t st = ncclSuccess;
      const ncclResult_t r = ncclCommGetAsyncError(comm_, &st);
      if (r != ncclSuccess) fail(what, r);
      if (st != ncclSuccess && st != ncclInProgress) fail(what, st);
      if (clock_type::now() >= deadline) fail_timeout(what);
      if (spins < 1000)
        std::this_thread::yield();
      else
        std::this_thread::sleep_for(std::chrono::microseconds(20));
    }
  }

 private:
  class Work;

  clock_type::time_point deadline_from_now() const {
    return clock_type::now() + std::chrono::duration_cast<clock_type::duration>(std::chrono::duration<double>(timeout_s_));
  }

  void launched(ncclResult_t r, const char* call) {
    if (r != ncclSuccess && r != ncclInProgress) fail(call, r);
  }

  void abort_nccl() noexcept {
    broken_ = true;
    std::lock_guard<std::mutex> lock(abort_mu_);
    if (comm_) {
      ncclCommAbort(comm_);
      comm_ = nullptr;
    }
  }

  template <class F>
  void on_host(F&& f) {
    try {
      f();
    } catch (...) {
      abort_nccl();
      throw;
    }
  }

  [[noreturn]] void fail_msg(const std::string& msg) {
    abort_nccl();
    TTQ_FAIL(msg);
  }
  [[noreturn]] void fail(const std::string& what, ncclResult_t r) {
    const char* last = ncclGetLastError(comm_);
    fail_msg("distributed (nccl): " + what + " failed on " + who() + ": " + ncclGetErrorString(r) +
             (last && *last ? std::string(" (") + last + ")" : std::string()) +
             (r == ncclRemoteError ? ": another rank failed" : ""));
  }
  [[noreturn]] void fail_timeout(const std::string& what) {
    char secs[32];
    std::snprintf(secs, sizeof secs, "%g s", timeout_s_);
    fail_msg("distributed (nccl): " + what + " timed out after " + secs + " on " + who() +
             ": a rank died, stalled or left the run (distributed.timeout_s); the NCCL communicator was aborted");
  }

  void check_usable(const char* what) {
    TTQ_CHECK(!broken_ && comm_, "distributed (nccl): cannot start " << what << " on " << who()
                                                                     << ": an earlier collective failed");
  }

  std::shared_ptr<Communicator> host_;
  ncclComm_t comm_ = nullptr;
  cudaStream_t stream_ = nullptr;
  cudaEvent_t fence_ = nullptr;  // the last step_fence() mark
  int device_ = 0;
  std::atomic<bool> broken_{false};
  std::mutex abort_mu_;
};

class NcclCommunicator::Work : public CommWork {
 public:
  Work(NcclCommunicator* c, cudaEvent_t done, std::string what) : c_(c), done_(done), what_(std::move(what)) {}
  ~Work() override { CUDA_CHECK_NOTHROW(cudaEventDestroy(done_)); }
  void wait() override {
    if (waited_) return;
    c_->wait_event(done_, what_);
    waited_ = true;
  }
  void wait_on_device() override {
    if (waited_) return;
    CUDA_CHECK(cudaStreamWaitEvent(cudaStreamPerThread, done_, 0));
    waited_ = true;
  }

 private:
  NcclCommunicator* c_;
  cudaEvent_t done_;
  std::string what_;
  bool waited_ = false;
};

std::unique_ptr<CommWork> NcclCommunicator::all_reduce_average_async(Tensor& data) {
  TTQ_CHECK(data.dtype() == DType::F32 && data.device() == Device::CUDA,
            "distributed (nccl): all-reduce needs an f32 GPU tensor, got " << data.str());
  check_usable("an all-reduce");
  const std::string what = "gradient all-reduce (" + size_str(data.nbytes()) + ")";
  cudaEvent_t ready = nullptr, done = nullptr;
  CUDA_CHECK(cudaEventCreateWithFlags(&ready, cudaEventDisableTiming));
  CUDA_CHECK(cudaEventRecord(ready, cudaStreamPerThread));
  CUDA_CHECK(cudaStreamWaitEvent(stream_, ready, 0));
  CUDA_CHECK(cudaEventDestroy(ready));  // released once the recorded work completes
  float* p = data.data_ptr<float>();
  launched(ncclAllReduce(p, p, static_cast<size_t>(data.numel()), ncclFloat32, ncclAvg, comm_, stream_),
           "ncclAllReduce");
  wait_ready("enqueueing the " + what);
  CUDA_CHECK(cudaEventCreateWithFlags(&done, cudaEventDisableTiming));
  CUDA_CHECK(cudaEventRecord(done, stream_));
  return std::make_unique<Work>(this, done, what);
}

}  // namespace

namespace detail {

std::shared_ptr<Communicator> make_nccl_communicator(std::shared_ptr<Communicator> host, double timeout_s) {
  return std::make_shared<NcclCommunicator>(std::move(host), timeout_s);
}

}  // namespace detail

}  // namespace ttq

#else  // no NCCL (or no CUDA) in this build

namespace ttq::detail {

std::shared_ptr<Communicator> make_nccl_communicator(std::shared_ptr<Communicator>, double) {
  TTQ_FAIL("distributed: this build has no NCCL (it needs the CUDA toolkit and NCCL; `ttq info` shows what it has)");
}

}  // namespace ttq::detail

#endif
