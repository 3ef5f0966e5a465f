// The mpi backend: CPU buffers, MPI_Iallreduce in place on a duplicate of MPI_COMM_WORLD.
//
// MPI lives on the communication thread (engine/dist/comm_thread.h): that thread calls
// MPI_Init_thread(MPI_THREAD_FUNNELED), makes every MPI call and MPI_Finalize, so MPI is "main
// thread only" as FUNNELED requires while the training thread goes on computing. Every collective
// is non-blocking and polled with MPI_Test until it completes or timeout_s passes; a timeout marks
// the communicator broken and throws, and abort() calls MPI_Abort (from the failing thread, the
// one exception to the rule above: it ends the job). Errors come back as codes (MPI_ERRORS_RETURN)
// and become ttq::Error naming the call and the rank.
#include "engine/dist/backends.h"

#ifdef TTQ_HAVE_MPI

#include <mpi.h>

#include <algorithm>
#include <chrono>
#include <climits>
#include <cstdio>
#include <cstring>
#include <mutex>
#include <thread>
#include <vector>

#include "engine/dist/comm_thread.h"

namespace ttq {

namespace {

using clock_type = std::chrono::steady_clock;
using detail::size_str;

std::string mpi_error(int code) {
  char buf[MPI_MAX_ERROR_STRING] = {0};
  int len = 0;
  if (MPI_Error_string(code, buf, &len) != MPI_SUCCESS) return "MPI error " + std::to_string(code);
  return std::string(buf, static_cast<size_t>(len));
}

class MpiCommunicator : public Communicator {
 public:
  explicit MpiCommunicator(double timeout_s) {
    timeout_s_ = timeout_s;
    thread_.run([this] { init(); });
  }
  ~MpiCommunicator() override { shutdown(); }

  // MPI_Finalize on the communication thread (skipped after a failed collective: it could wait
  // for the rank that failed), then joins it.
  void shutdown() noexcept {
    thread_.stop([this] {
      if (owns_mpi_ && !broken_) {
        int finalized = 0;
        MPI_Finalized(&finalized);
        if (!finalized) MPI_Finalize();
      }
      finalized_ = true;
    });
  }

  const char* backend() const override { return "mpi"; }
  bool broken() const override { return broken_; }

  std::unique_ptr<CommWork> all_reduce_average_async(Tensor& data) override {
    TTQ_CHECK(data.dtype() == DType::F32 && data.device() == Device::CPU,
              "distributed (mpi): all-reduce needs an f32 CPU tensor, got " << data.str());
    float* p = data.data<float>();
    const int64_t n = data.numel();
    // The task holds the tensor's storage: should its owner go first (an error unwinding the
    // backward pass), the communication thread still writes into live memory.
    return thread_.submit([this, keep = data, p, n] {
      (void)keep;
      reduce_sum(p, n, MPI_FLOAT, sizeof(float), "gradient all-reduce");
      if (world_ > 1) {
        const float inv = 1.0f / static_cast<float>(world_);
        for (int64_t i = 0; i < n; ++i) p[i] *= inv;
      }
    });
  }
  void all_reduce_sum(double* data, int64_t n, const char* what) override {
    thread_.run([&] { reduce_sum(data, n, MPI_DOUBLE, sizeof(double), ("all-reduce of " + std::string(what)).c_str()); });
  }
  void all_reduce_sum(int64_t* data, int64_t n, const char* what) override {
    thread_.run([&] { reduce_sum(data, n, MPI_INT64_T, sizeof(int64_t), ("all-reduce of " + std::string(what)).c_str()); });
  }
  void broadcast(void* data, size_t bytes, int root) override {
    TTQ_CHECK(root >= 0 && root < world_, "distributed (mpi): broadcast root " << root << " is not a rank of " << world_);
    thread_.run([&] {
      check_usable("broadcast");
      char* p = static_cast<char*>(data);
      for (size_t done = 0; done < bytes;) {
        const int count = static_cast<int>(std::min<size_t>(bytes - done, size_t{1} << 30));
        MPI_Request req;
        call(MPI_Ibcast(p + done, count, MPI_BYTE, root, comm_, &req), "MPI_Ibcast");
        wait(req, "broadcast of " + size_str(bytes) + " from rank " + std::to_string(root));
        done += static_cast<size_t>(count);
      }
    });
  }
  void barrier() override {
    thread_.run([&] {
      check_usable("barrier");
      MPI_Request req;
      call(MPI_Ibarrier(comm_, &req), "MPI_Ibarrier");
      wait(req, "barrier");
    });
  }
  void abort(const std::string& reason) noexcept override {
    broken_ = true;
    int inited = 0, finalized = 0;
    MPI_Initialized(&inited);
    MPI_Finalized(&finalized);
    (void)reason;  // the caller has printed it
    if (inited && !finalized) {
      std::fflush(stdout);
      std::fflush(stderr);
      MPI_Abort(MPI_COMM_WORLD, 1);
    }
  }

 private:
  void init() {
    int inited = 0;
    MPI_Initialized(&inited);
    if (!inited) {
      int provided = 0;
      const int rc = MPI_Init_thread(nullptr, nullptr, MPI_THREAD_FUNNELED, &provided);
      TTQ_CHECK(rc == MPI_SUCCESS, "distributed (mpi): MPI_Init_thread failed: " << mpi_error(rc));
      TTQ_CHECK(provided >= MPI_THREAD_FUNNELED,
                "distributed (mpi): the MPI library offers thread level " << provided << ", below MPI_THREAD_FUNNELED");
      owns_mpi_ = true;
    } else {
      int provided = 0;
      MPI_Query_thread(&provided);
      TTQ_CHECK(provided >= MPI_THREAD_SERIALIZED,
                "distributed (mpi): MPI was initialised by someone else with a thread level below "
                "MPI_THREAD_SERIALIZED; the engine calls MPI from its communication thread");
    }
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank_);
    MPI_Comm_size(MPI_COMM_WORLD, &world_);
    MPI_Request req;
    call(MPI_Comm_idup(MPI_COMM_WORLD, &comm_, &req), "MPI_Comm_idup");
    wait(req, "setting up the communicator");
    MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN);
    // Local rank: the order among the ranks with the same processor (host) name.
    std::vector<char> names(static_cast<size_t>(world_) * MPI_MAX_PROCESSOR_NAME, '\0');
    char mine[MPI_MAX_PROCESSOR_NAME] = {0};
    int len = 0;
    MPI_Get_processor_name(mine, &len);
    call(MPI_Iallgather(mine, MPI_MAX_PROCESSOR_NAME, MPI_CHAR, names.data(), MPI_MAX_PROCESSOR_NAME, MPI_CHAR, comm_,
                        &req),
         "MPI_Iallgather");
    wait(req, "exchanging host names");
    local_rank_ = local_world_ = 0;
    for (int r = 0; r < world_; ++r) {
      if (std::strncmp(names.data() + static_cast<size_t>(r) * MPI_MAX_PROCESSOR_NAME, mine, MPI_MAX_PROCESSOR_NAME) != 0)
        continue;
      ++local_world_;
      if (r < rank_) ++local_rank_;
    }
  }

  void reduce_sum(void* data, int64_t n, MPI_Datatype type, size_t elem, const char* what) {
    check_usable(what);
    if (world_ == 1) return;
    const std::string label = std::string(what) + " (" + size_str(static_cast<size_t>(n) * elem) + ")";
    char* p = static_cast<char*>(data);
    for (int64_t done = 0; done < n;) {
      const int count = static_cast<int>(std::min<int64_t>(n - done, int64_t{1} << 30));
      MPI_Request req;
      call(MPI_Iallreduce(MPI_IN_PLACE, p + done * static_cast<int64_t>(elem), count, type, MPI_SUM, comm_, &req),
           "MPI_Iallreduce");
      wait(req, label);
      done += count;
    }
  }

  void call(int rc, const char* fn) {
    if (rc != MPI_SUCCESS) fail("distributed (mpi): " + std::string(fn) + " failed on " + who() + ": " + mpi_error(rc));
  }

  // Polls the request until it completes. At first, and whenever the training thread waits for
  // it, polls back to back (yielding); while that thread still computes (a bucket launched early
  // in the backward pass), sleeps between polls, 10 us doubling up to 200 us, so polling takes
  // little from the cores the computation needs (mpirun binds a rank's threads to one core).
  void wait(MPI_Request& req, const std::string& what) {
    const auto deadline =
        clock_type::now() + std::chrono::duration_cast<clock_type::duration>(std::chrono::duration<double>(timeout_s_));
    int64_t nap_us = 10;
    for (int polls = 0;; ++polls) {
      int flag = 0;
      const int rc = MPI_Test(&req, &flag, MPI_STATUS_IGNORE);
      if (rc != MPI_SUCCESS) fail("distributed (mpi): " + what + " failed on " + who() + ": " + mpi_error(rc));
      if (flag) return;
      if (clock_type::now() >= deadline) {
        char secs[32];
        std::snprintf(secs, sizeof secs, "%g s", timeout_s_);
        fail("distributed (mpi): " + what + " timed out after " + secs + " on " + who() +
             ": a rank died, stalled or left the run (distributed.timeout_s)");
      }
      if (polls < 200 || thread_.waiters() > 0) {  // a caller may be about to wait: poll at once
        std::this_thread::yield();
        nap_us = 10;
      } else {
        std::this_thread::sleep_for(std::chrono::microseconds(nap_us));
        nap_us = std::min<int64_t>(2 * nap_us, 200);
      }
    }
  }

  [[noreturn]] void fail(const std::string& msg) {
    {
      std::lock_guard<std::mutex> lock(err_mu_);
      if (first_error_.empty()) first_error_ = msg;
    }
    broken_ = true;
    TTQ_FAIL(msg);
  }

  void check_usable(const char* what) {
    TTQ_CHECK(!finalized_, "distributed (mpi): " << what << " after MPI was finalized");
    if (!broken_) return;
    std::lock_guard<std::mutex> lock(err_mu_);
    TTQ_FAIL("distributed (mpi): cannot start " << what << " on " << who() << ": an earlier collective failed ("
                                                << first_error_ << ")");
  }

  MPI_Comm comm_ = MPI_COMM_NULL;
  bool owns_mpi_ = false;
  std::atomic<bool> broken_{false};
  bool finalized_ = false;
  std::mutex err_mu_;
  std::string first_error_;
  CommThread thread_;
};

std::mutex g_mpi_mu;
std::shared_ptr<MpiCommunicator> g_mpi;
bool g_mpi_done = false;

// Finalizes MPI at exit when the program did not call shutdown_communication().
struct MpiAtExit {
  ~MpiAtExit() { detail::shutdown_mpi(); }
} g_mpi_at_exit;

}  // namespace

namespace detail {

std::shared_ptr<Communicator> mpi_world_communicator(double timeout_s) {
  std::lock_guard<std::mutex> lock(g_mpi_mu);
  TTQ_CHECK(!g_mpi_done, "distributed (mpi): MPI was already finalized in this process and cannot start again");
  if (!g_mpi) g_mpi = std::make_shared<MpiCommunicator>(timeout_s);
  g_mpi->set_timeout(timeout_s);
  return g_mpi;
}

void shutdown_mpi() noexcept {
  std::shared_ptr<MpiCommunicator> c;
  {
    std::lock_guard<std::mutex> lock(g_mpi_mu);
    c = std::move(g_mpi);
    if (c) g_mpi_done = true;
  }
  if (c) c->shutdown();
}

}  // namespace detail

}  // namespace ttq

#else  // no MPI in this build

namespace ttq::detail {

std::shared_ptr<Communicator> mpi_world_communicator(double) {
  TTQ_FAIL("distributed: this build has no MPI (install libopenmpi-dev and rebuild; `ttq info` shows what the build has)");
}

void shutdown_mpi() noexcept {}

}  // namespace ttq::detail

#endif
