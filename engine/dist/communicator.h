// Data-parallel communication: which process this is (rank, world size, local rank on its host)
// and the collectives a training step needs, behind one interface with four backends:
//
//   none  one process; every collective is a no-op
//   mpi   CPU buffers, MPI_Iallreduce in place, run on a communication thread (comm_mpi.cpp);
//         launched by mpirun / srun
//   tcp   CPU buffers over TCP sockets (rank 0 is the hub), for launches without MPI: RANK,
//         WORLD_SIZE, LOCAL_RANK and a rendezvous file on a shared filesystem (comm_tcp.cpp)
//   nccl  GPU buffers, ncclAllReduce(ncclAvg) on a communication stream; the NCCL unique id is
//         broadcast over MPI or over the tcp backend (comm_nccl.cpp)
//
// Every collective waits at most timeout_s: a rank that died or stalls makes the others fail with
// an error naming the operation, the timeout and the rank, never hang. After such an error the
// communicator is unusable; abort() then stops the other ranks (MPI_Abort, ncclCommAbort, closed
// sockets). Collectives must be started in the same order on every rank.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "engine/core/tensor.h"

namespace ttq {

// The "distributed" object of an experiment.
struct DistConfig {
  std::string backend = "auto";  // auto | mpi | nccl | tcp | none
  double bucket_mb = 25.0;       // gradient all-reduce bucket size (MiB) ...
  double first_bucket_mb = 1.0;  // ... except the first one, launched early in the backward pass
  double timeout_s = 300.0;      // longest wait in any collective before the run stops with an error
  bool sync_bn = false;          // BatchNorm statistics over the global batch (any device and backend)
};

// How this process was started, from its environment.
struct LaunchInfo {
  std::string launcher;  // "mpi" (mpirun, srun --mpi=...), "env" (RANK / WORLD_SIZE) or "" (one process)
  int rank = 0, world = 1;
  int local_rank = -1;     // -1: not given by the launcher
  std::string rendezvous;  // TTQ_RENDEZVOUS (env launch)
};
LaunchInfo detect_launch();

// A collective in flight. wait() returns once it completed on this rank and throws ttq::Error on
// failure or timeout.
class CommWork {
 public:
  virtual ~CommWork() = default;
  virtual void wait() = 0;
  // Orders the calling thread's later device work after the collective without a host wait (the
  // nccl backend: the stream waits on the collective's event). Failures and timeouts then surface
  // at the next Communicator::step_fence() or sync_device(). Host backends wait, as wait().
  virtual void wait_on_device() { wait(); }
};

class Communicator {
 public:
  virtual ~Communicator() = default;
  Communicator(const Communicator&) = delete;
  Communicator& operator=(const Communicator&) = delete;

  virtual const char* backend() const = 0;
  int rank() const { return rank_; }
  int world() const { return world_; }
  int local_rank() const { return local_rank_; }
  int local_world() const { return local_world_; }
  bool is_root() const { return rank_ == 0; }
  double timeout_s() const { return timeout_s_; }
  virtual void set_timeout(double seconds);
  // "rank 1 of 4": for messages.
  std::string who() const;

  // Where the buffers of all_reduce_average live: the CPU, or the GPU for nccl.
  virtual Device buffer_device() const { return Device::CPU; }

  // Starts averaging a contiguous F32 tensor over all ranks, in place (sum, then x 1/world). The
  // tensor must stay alive and untouched until wait() returned. On the GPU the reduction is
  // ordered after the work the calling thread enqueued so far, and wait() orders later work after it.
  virtual std::unique_ptr<CommWork> all_reduce_average_async(Tensor& data) = 0;
  void all_reduce_average(Tensor& data) { all_reduce_average_async(data)->wait(); }
  // Sums of small host arrays (counters), in place. `what` names the data for errors ("the
  // evaluation counts").
  virtual void all_reduce_sum(double* data, int64_t n, const char* what) = 0;
  virtual void all_reduce_sum(int64_t* data, int64_t n, const char* what) = 0;
  // Host bytes from root to every rank.
  virtual void broadcast(void* data, size_t bytes, int root) = 0;
  virtual void barrier() = 0;
  // Makes every rank stop: MPI_Abort (ends this process too), ncclCommAbort, closing the sockets.
  // Never throws; safe after a failed collective.
  virtual void abort(const std::string& reason) noexcept = 0;
  // Ends the collectives queued on the device (nccl: ncclCommAbort), leaving the host connection
  // as it is; nothing for the host backends. Never throws. For an error unwinding on this rank:
  // what waits for the device afterwards (freeing buffers) cannot wait for a peer that is gone.
  virtual void abort_device() noexcept {}
  // True once a collective failed (the communicator cannot be used any more).
  virtual bool broken() const { return false; }

  // Device-side waits (nccl; nothing to do for the host backends). step_fence() marks the end of a
  // step's device work on the calling thread's stream and waits, with timeout_s and the backend's
  // error checks, for the previous step's mark: the host runs at most one step ahead of the
  // device's collectives, and a dead or stalled peer is an error, not a hang (the next step's
  // work being enqueued while this one runs, no device time is lost). sync_device(what) waits the
  // same way for everything enqueued so far, before the host reads device results.
  virtual void step_fence() {}
  virtual void sync_device(const std::string& what) { (void)what; }

 protected:
  Communicator() = default;
  int rank_ = 0, world_ = 1, local_rank_ = 0, local_world_ = 1;
  double timeout_s_ = 300.0;
};

// One process: rank 0 of 1, every collective returns at once.
class SingleProcessCommunicator : public Communicator {
 public:
  SingleProcessCommunicator() = default;
  const char* backend() const override { return "none"; }
  std::unique_ptr<CommWork> all_reduce_average_async(Tensor& data) override;
  void all_reduce_sum(double*, int64_t, const char*) override {}
  void all_reduce_sum(int64_t*, int64_t, const char*) override {}
  void broadcast(void*, size_t, int) override {}
  void barrier() override {}
  void abort(const std::string&) noexcept override {}
};

// The backend "auto" means for this launch and device: nccl for GPU training when NCCL is built,
// else mpi under an MPI launcher, tcp under an env launch, none for a single process.
std::string resolve_backend(const std::string& requested, const LaunchInfo& launch, bool gpu);

// Creates (or, for mpi, returns the process's) communicator for the config. gpu: the model
// trains on a GPU. The result is also remembered as current_communicator(). Before the backend
// is settled the ranks check, over the host connection, that all or none of them train on a GPU.
std::shared_ptr<Communicator> make_communicator(const DistConfig& cfg, bool gpu);
// Collective: an error on every rank, naming how many ranks have a GPU, unless all or none train
// on one (a node whose GPUs fail would otherwise train on its CPU, or pick another backend, and
// the ranks' later collectives would not match).
void check_ranks_agree_on_gpu(Communicator& comm, bool gpu);
// The communicator make_communicator made last in this process (null before; kept alive until
// shutdown_communication, so the command line can abort() it on an error).
std::shared_ptr<Communicator> current_communicator();
// Ends communication cleanly at the end of the program (joins the communication threads,
// MPI_Finalize). Called by the command line and the test programs; idempotent.
void shutdown_communication();

// Helpers on tensors of any device (staged through the host when the backend needs it).
void broadcast_tensor(Communicator& comm, Tensor& t, int root);
void all_reduce_average_tensor(Communicator& comm, Tensor& t);

// Whether this build has the backend.
bool mpi_built();
bool nccl_built();

}  // namespace ttq
