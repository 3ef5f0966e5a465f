// The tcp backend: data-parallel collectives over TCP sockets for launches without MPI.
//
// Rendezvous: every rank is given RANK, WORLD_SIZE and the path of a file on a filesystem all
// ranks see (TTQ_RENDEZVOUS). Rank 0 listens on a free port (TTQ_RENDEZVOUS_PORT to pick one) and
// writes "host port nonce world" to that file atomically; the other ranks read it, connect and
// present the nonce, so a stale file left by an earlier run is recognised and waited out. Rank 0
// removes the file once everybody is connected. The host is this machine's name, or
// TTQ_RENDEZVOUS_HOST. Use one file per job.
//
// Collectives: rank 0 is the hub. An all-reduce sends every rank's buffer to rank 0, which sums
// them in rank order (the same result on every rank, bit for bit) and sends the result back.
// Every socket operation polls with the deadline of the collective, so a stalled rank makes the
// others fail after timeout_s and a dead one (its sockets closed by the kernel) at once.
#pragma once

#include <atomic>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "engine/dist/comm_thread.h"
#include "engine/dist/communicator.h"

namespace ttq {

struct TcpOptions {
  int rank = 0, world = 1;
  int local_rank = -1;     // -1: counted among the ranks with the same host name
  std::string rendezvous;  // file path, on a filesystem shared by all ranks
  double timeout_s = 300.0;
  std::string advertise_host;  // "" : TTQ_RENDEZVOUS_HOST, else gethostname()
  int port = 0;                // 0 : TTQ_RENDEZVOUS_PORT, else any free port
};

class TcpCommunicator : public Communicator {
 public:
  // Connects all ranks (blocks until everybody arrived, at most timeout_s).
  explicit TcpCommunicator(const TcpOptions& o);
  ~TcpCommunicator() override;

  const char* backend() const override { return "tcp"; }
  std::unique_ptr<CommWork> all_reduce_average_async(Tensor& data) override;
  void all_reduce_sum(double* data, int64_t n, const char* what) override;
  void all_reduce_sum(int64_t* data, int64_t n, const char* what) override;
  void broadcast(void* data, size_t bytes, int root) override;
  void barrier() override;
  void abort(const std::string& reason) noexcept override;
  bool broken() const override { return broken_.load(); }

 private:
  struct Deadline;
  void rendezvous_root(const TcpOptions& o);
  void rendezvous_peer(const TcpOptions& o);
  // On the communication thread:
  template <typename T> void reduce_sum(T* data, int64_t n, const char* what);
  void do_broadcast(void* data, size_t bytes, int root);
  // Whole-buffer socket I/O until the deadline; a failure becomes fail() naming the peer.
  void send_all(int fd, const void* p, size_t n, int peer, const Deadline& d, const std::string& what);
  void recv_all(int fd, void* p, size_t n, int peer, const Deadline& d, const std::string& what);
  [[noreturn]] void fail(const std::string& msg);
  void check_usable(const char* what);
  void close_all() noexcept;

  uint64_t seq_ = 0;       // collectives so far (communication thread only)
  std::vector<int> fds_;  // rank 0: socket per rank (fds_[0] unused); others: fds_[0] to rank 0
  int listen_fd_ = -1;
  std::string rendezvous_;
  std::atomic<bool> broken_{false};
  std::mutex err_mu_;
  std::string first_error_;
  CommThread thread_;
};

}  // namespace ttq
