#include "engine/dist/communicator.h"

#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <sstream>

#include "engine/dist/backends.h"
#include "engine/dist/comm_tcp.h"
#include "kernels/device.h"

namespace ttq {

namespace {

const char* env_value(const char* name) {
  const char* v = std::getenv(name);
  return v && *v ? v : nullptr;
}

int env_int(const char* name, int fallback) {
  const char* v = env_value(name);
  if (!v) return fallback;
  char* end = nullptr;
  const long x = std::strtol(v, &end, 10);
  TTQ_CHECK(end && *end == '\0' && x >= 0 && x < (1L << 30),
            "distributed: environment variable " << name << "='" << v << "' is not a non-negative integer");
  return static_cast<int>(x);
}

class DoneWork : public CommWork {
 public:
  void wait() override {}
};

std::mutex g_mu;
std::shared_ptr<Communicator> g_current;  // kept alive until shutdown, so an error path can abort it

}  // namespace

void Communicator::set_timeout(double seconds) {
  TTQ_CHECK(seconds > 0, "distributed: timeout must be positive, got " << seconds);
  timeout_s_ = seconds;
}

std::string Communicator::who() const {
  std::ostringstream os;
  os << "rank " << rank_ << " of " << world_;
  return os.str();
}

std::unique_ptr<CommWork> SingleProcessCommunicator::all_reduce_average_async(Tensor&) {
  return std::make_unique<DoneWork>();
}

LaunchInfo detect_launch() {
  LaunchInfo li;
  // MPI launchers: Open MPI's mpirun, MPICH/Intel MPI (Hydra, PMI), PMIx (srun --mpi=pmix), MVAPICH.
  static const char* kMpiVars[] = {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMI_RANK", "PMIX_RANK", "MV2_COMM_WORLD_SIZE"};
  for (const char* v : kMpiVars)
    if (env_value(v)) li.launcher = "mpi";
  if (li.launcher == "mpi") {
    li.world = env_int("OMPI_COMM_WORLD_SIZE", env_int("PMI_SIZE", env_int("MV2_COMM_WORLD_SIZE", env_int("SLURM_NTASKS", -1))));
    li.rank = env_int("OMPI_COMM_WORLD_RANK", env_int("PMI_RANK", env_int("PMIX_RANK", env_int("MV2_COMM_WORLD_RANK", 0))));
    li.local_rank = env_int("OMPI_COMM_WORLD_LOCAL_RANK", env_int("MPI_LOCALRANKID", env_int("MV2_COMM_WORLD_LOCAL_RANK", -1)));
    return li;
  }
  if (env_value("RANK") || env_value("WORLD_SIZE")) {
    TTQ_CHECK(env_value("RANK") && env_value("WORLD_SIZE"),
              "distributed: set both RANK and WORLD_SIZE (and TTQ_RENDEZVOUS) to launch without MPI; only "
                  << (env_value("RANK") ? "RANK" : "WORLD_SIZE") << " is set");
    li.launcher = "env";
    li.rank = env_int("RANK", 0);
    li.world = env_int("WORLD_SIZE", 1);
    li.local_rank = env_int("LOCAL_RANK", -1);
    if (const char* r = env_value("TTQ_RENDEZVOUS")) li.rendezvous = r;
    TTQ_CHECK(li.world >= 1 && li.rank < li.world,
              "distributed: RANK=" << li.rank << " is not in [0, WORLD_SIZE=" << li.world << ")");
  }
  return li;
}

bool mpi_built() {
#ifdef TTQ_HAVE_MPI
  return true;
#else
  return false;
#endif
}

bool nccl_built() {
#if defined(TTQ_HAVE_NCCL) && defined(TTQ_HAVE_CUDA)
  return true;
#else
  return false;
#endif
}

std::string resolve_backend(const std::string& requested, const LaunchInfo& launch, bool gpu) {
  const std::string how = launch.launcher == "mpi" ? "an MPI launcher" : "RANK/WORLD_SIZE";
  if (requested == "none") {
    TTQ_CHECK(launch.launcher.empty() || launch.world == 1,
              "distributed.backend is 'none' but this process is one of "
                  << (launch.world > 0 ? std::to_string(launch.world) : std::string("several")) << " started by " << how
                  << ": every process would train alone and write the same files; use backend 'auto'");
    return "none";
  }
  if (requested == "mpi") {
    TTQ_CHECK(mpi_built(), "distributed.backend 'mpi': this build has no MPI (install libopenmpi-dev and rebuild; "
                           "`ttq info` shows what the build has)");
    // Without an MPI launcher each process would start MPI alone, as rank 0 of 1, and all of them
    // would train on all the data and write the same files.
    TTQ_CHECK(launch.launcher != "env" || launch.world == 1,
              "distributed.backend 'mpi' but this process is rank " << launch.rank << " of " << launch.world
                  << " started with RANK/WORLD_SIZE, not by an MPI launcher: launch with mpirun (or srun --mpi=pmix), "
                     "or use backend 'tcp' or 'auto' for this launch");
    return "mpi";
  }
  if (requested == "nccl") {
    TTQ_CHECK(nccl_built(), "distributed.backend 'nccl': this build has no NCCL (`ttq info` shows what it has)");
    TTQ_CHECK(gpu, "distributed.backend 'nccl' needs GPU training (\"device\": \"cuda\"); CPU training uses mpi or tcp");
    TTQ_CHECK(launch.launcher != "mpi" || mpi_built(),
              "distributed.backend 'nccl' under an MPI launcher needs MPI in the build to exchange the NCCL id");
    return "nccl";
  }
  if (requested == "tcp") {
    TTQ_CHECK(launch.launcher != "mpi", "distributed.backend 'tcp' is for launches with RANK/WORLD_SIZE/TTQ_RENDEZVOUS, "
                                        "not under an MPI launcher (use 'mpi' or 'auto')");
    return "tcp";
  }
  TTQ_CHECK(requested == "auto", "distributed.backend must be auto, mpi, nccl, tcp or none, got '" << requested << "'");
  if (launch.launcher == "mpi") {
    if (gpu && nccl_built() && mpi_built()) return "nccl";
    TTQ_CHECK(mpi_built(), "this process was started by an MPI launcher but the build has no MPI: rebuild with MPI "
                           "(libopenmpi-dev), or launch with RANK, WORLD_SIZE and TTQ_RENDEZVOUS");
    return "mpi";
  }
  if (launch.launcher == "env") return gpu && nccl_built() ? "nccl" : "tcp";
  return "none";
}

std::shared_ptr<Communicator> make_communicator(const DistConfig& cfg, bool gpu) {
  const LaunchInfo launch = detect_launch();
  // An explicit nccl backend's refusal of CPU training comes after the ranks' agreement check, so
  // a rank without a GPU among ranks with one fails on every rank alike.
  const std::string backend = resolve_backend(cfg.backend, launch, gpu || cfg.backend == "nccl");
  if (backend == "nccl") {
    // NCCL connects its peers during set-up (under its timeout), not at the first all-reduce in
    // step 0's backward pass: its connection buffers are then allocated while the GPU's memory is
    // still free, before the stream-ordered pool holds the activations. A value the user set is
    // kept. Set before any communication thread exists.
    ::setenv("NCCL_RUNTIME_CONNECT", "0", /*overwrite=*/0);
  }
  std::shared_ptr<Communicator> comm;
  auto tcp = [&] {
    TcpOptions o;
    o.rank = launch.rank;
    o.world = launch.world;
    o.local_rank = launch.local_rank;
    o.rendezvous = launch.rendezvous;
    o.timeout_s = cfg.timeout_s;
    return std::make_shared<TcpCommunicator>(o);
  };
  // The host connection: the communicator itself (mpi, tcp), or what bootstraps NCCL and carries
  // its host sums (the launcher's: mpi or tcp, none for one process).
  std::shared_ptr<Communicator> host;
  if (backend == "mpi" || (backend == "nccl" && launch.launcher == "mpi"))
    host = detail::mpi_world_communicator(cfg.timeout_s);
  else if (backend == "tcp" || (backend == "nccl" && launch.launcher == "env"))
    host = tcp();
  else
    host = std::make_shared<SingleProcessCommunicator>();
  check_ranks_agree_on_gpu(*host, gpu);
  if (backend == "nccl") resolve_backend(cfg.backend, launch, gpu);  // its refusal of CPU training
  comm = backend == "nccl" ? detail::make_nccl_communicator(host, cfg.timeout_s) : host;
  comm->set_timeout(cfg.timeout_s);
  std::lock_guard<std::mutex> lock(g_mu);
  g_current = comm;
  return comm;
}

void check_ranks_agree_on_gpu(Communicator& comm, bool gpu) {
  if (comm.world() == 1) return;
  int64_t with_gpu = gpu ? 1 : 0;
  comm.all_reduce_sum(&with_gpu, 1, "the ranks' GPU counts");
  TTQ_CHECK(with_gpu == 0 || with_gpu == comm.world(),
            "distributed: " << with_gpu << " of " << comm.world() << " ranks train on a GPU, " << comm.who()
                            << (gpu ? " on its GPU" : " on its CPU (" + cuda_device_summary() + ")")
                            << ": every rank must have a usable GPU (a node whose GPUs failed must be left out), "
                               "or set \"device\": \"cpu\"");
}

std::shared_ptr<Communicator> current_communicator() {
  std::lock_guard<std::mutex> lock(g_mu);
  return g_current;
}

void shutdown_communication() {
  {
    std::lock_guard<std::mutex> lock(g_mu);
    g_current.reset();
  }
  detail::shutdown_mpi();
}

void broadcast_tensor(Communicator& comm, Tensor& t, int root) {
  if (comm.world() == 1) return;
  if (t.device() == Device::CPU) {
    comm.broadcast(t.raw(), t.nbytes(), root);
    return;
  }
  Tensor host = t.to(Device::CPU);
  comm.broadcast(host.raw(), host.nbytes(), root);
  t.copy_from(host);
}

void all_reduce_average_tensor(Communicator& comm, Tensor& t) {
  TTQ_CHECK(t.dtype() == DType::F32, "distributed: averaging needs an f32 tensor, got " << t.str());
  if (comm.world() == 1) return;
  if (t.device() == comm.buffer_device()) {
    comm.all_reduce_average(t);
    return;
  }
  Tensor staged = t.to(comm.buffer_device());
  comm.all_reduce_average(staged);
  t.copy_from(staged);
}

namespace detail {

std::string size_str(size_t bytes) {
  char buf[64];
  if (bytes >= (1u << 20))
    std::snprintf(buf, sizeof buf, "%.2f MiB", bytes / 1048576.0);
  else
    std::snprintf(buf, sizeof buf, "%zu bytes", bytes);
  return buf;
}

}  // namespace detail

}  // namespace ttq
