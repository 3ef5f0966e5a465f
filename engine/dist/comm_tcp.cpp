#include "engine/dist/comm_tcp.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <sstream>
#include <thread>

#include "engine/dist/backends.h"

namespace ttq {

namespace {

using clock_type = std::chrono::steady_clock;
using detail::size_str;

constexpr char kMagic[8] = {'T', 'T', 'Q', 'R', 'D', 'V', '1', '\0'};
constexpr uint32_t kMsgMagic = 0x54545143u;  // "TTQC"

enum : int32_t { kOk = 0, kStale = 1, kWrongWorld = 2, kBadRank = 3 };

struct Hello {
  char magic[8];
  uint64_t nonce;
  int32_t rank, world, local_rank, host_len;
};
struct Reply {
  int32_t status, local_rank, local_world, world;
};
// Every message of a collective starts with this, so ranks that disagree on the order or size
// of their collectives get an error instead of each other's bytes.
struct MsgHeader {
  uint32_t magic;
  uint32_t op;
  uint64_t bytes;
  uint64_t seq;
};
enum : uint32_t { kOpReduceF32 = 1, kOpReduceF64 = 2, kOpReduceI64 = 3, kOpBroadcast = 4 };

const char* op_name(uint32_t op) {
  switch (op) {
    case kOpReduceF32: return "float all-reduce";
    case kOpReduceF64: return "double all-reduce";
    case kOpReduceI64: return "integer all-reduce";
    case kOpBroadcast: return "broadcast";
  }
  return "unknown operation";
}

std::string errno_str() { return std::strerror(errno); }

std::string fmt_seconds(double s) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%g s", s);
  return buf;
}

void set_nonblocking(int fd) {
  const int flags = fcntl(fd, F_GETFL, 0);
  fcntl(fd, F_SETFL, flags | O_NONBLOCK);
}

void set_nodelay(int fd) {
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

std::string host_name() {
  char buf[256] = {0};
  if (gethostname(buf, sizeof buf - 1) != 0) return "localhost";
  return buf;
}

const char* env_or_null(const char* k) {
  const char* v = std::getenv(k);
  return v && *v ? v : nullptr;
}

// Reads the rendezvous file; false while it is absent or incomplete.
bool read_rendezvous(const std::string& path, std::string& host, int& port, uint64_t& nonce, int& world) {
  std::ifstream in(path);
  if (!in) return false;
  std::string tag, version;
  if (!(in >> tag >> version) || tag != "ttq-rendezvous" || version != "1") return false;
  std::string key;
  bool h = false, p = false, n = false, w = false;
  while (in >> key) {
    if (key == "host") h = static_cast<bool>(in >> host);
    else if (key == "port") p = static_cast<bool>(in >> port);
    else if (key == "nonce") n = static_cast<bool>(in >> std::hex >> nonce >> std::dec);
    else if (key == "world") w = static_cast<bool>(in >> world);
    else return false;
  }
  return h && p && n && w;
}

enum class Io { Ok, Timeout, Closed, Broken };

struct IoResult {
  Io status = Io::Ok;
  std::string detail;  // errno text for Broken
};

}  // namespace

struct TcpCommunicator::Deadline {
  clock_type::time_point end;
  double seconds;
  explicit Deadline(double s) : end(clock_type::now() + std::chrono::duration_cast<clock_type::duration>(std::chrono::duration<double>(s))), seconds(s) {}
  bool expired() const { return clock_type::now() >= end; }
  // poll() timeout in ms: the rest of the deadline, at most 200 ms at a time.
  int poll_ms() const {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(end - clock_type::now()).count();
    return static_cast<int>(std::clamp<int64_t>(left, 0, 200));
  }
};

namespace {

// Sends / receives the whole buffer before the deadline (polls at most 200 ms at a time).
template <typename D> IoResult io_send(int fd, const void* p, size_t n, const D& d) {
  const char* c = static_cast<const char*>(p);
  while (n > 0) {
    pollfd pf{fd, POLLOUT, 0};
    const int pr = ::poll(&pf, 1, d.poll_ms());
    if (pr == 0 || (pr < 0 && errno == EINTR)) {
      if (d.expired()) return {Io::Timeout, ""};
      continue;
    }
    const ssize_t k = ::send(fd, c, n, MSG_NOSIGNAL);
    if (k < 0) {
      if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) continue;
      return {Io::Broken, errno_str()};
    }
    c += k;
    n -= static_cast<size_t>(k);
  }
  return {};
}

template <typename D> IoResult io_recv(int fd, void* p, size_t n, const D& d) {
  char* c = static_cast<char*>(p);
  while (n > 0) {
    pollfd pf{fd, POLLIN, 0};
    const int pr = ::poll(&pf, 1, d.poll_ms());
    if (pr == 0 || (pr < 0 && errno == EINTR)) {
      if (d.expired()) return {Io::Timeout, ""};
      continue;
    }
    const ssize_t k = ::recv(fd, c, n, 0);
    if (k == 0) return {Io::Closed, ""};
    if (k < 0) {
      if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) continue;
      return {Io::Broken, errno_str()};
    }
    c += k;
    n -= static_cast<size_t>(k);
  }
  return {};
}

// Rendezvous I/O: throws a plain error (the caller decides whether it matters).
template <typename D> void rdv_send(int fd, const void* p, size_t n, const D& d) {
  const IoResult r = io_send(fd, p, n, d);
  TTQ_CHECK(r.status == Io::Ok, (r.status == Io::Timeout ? std::string("timed out") : "connection lost " + r.detail));
}
template <typename D> void rdv_recv(int fd, void* p, size_t n, const D& d) {
  const IoResult r = io_recv(fd, p, n, d);
  TTQ_CHECK(r.status == Io::Ok, (r.status == Io::Timeout ? std::string("timed out")
                                 : r.status == Io::Closed ? std::string("connection closed")
                                                          : "connection lost " + r.detail));
}

}  // namespace

TcpCommunicator::TcpCommunicator(const TcpOptions& o) {
  TTQ_CHECK(o.world >= 1 && o.rank >= 0 && o.rank < o.world,
            "distributed (tcp): RANK " << o.rank << " is not in [0, WORLD_SIZE = " << o.world << ")");
  TTQ_CHECK(o.timeout_s > 0, "distributed (tcp): timeout must be positive, got " << o.timeout_s);
  rank_ = o.rank;
  world_ = o.world;
  timeout_s_ = o.timeout_s;
  local_rank_ = o.local_rank >= 0 ? o.local_rank : 0;
  local_world_ = 1;
  rendezvous_ = o.rendezvous;
  if (world_ == 1) return;
  TTQ_CHECK(!o.rendezvous.empty(), "distributed (tcp): " << world_ << " ranks need a rendezvous file on a filesystem "
                                                          "all of them see: set TTQ_RENDEZVOUS=/shared/path/file");
  try {
    if (rank_ == 0)
      rendezvous_root(o);
    else
      rendezvous_peer(o);
  } catch (...) {
    close_all();
    throw;
  }
}

TcpCommunicator::~TcpCommunicator() {
  thread_.stop();
  close_all();
}

void TcpCommunicator::close_all() noexcept {
  for (int& fd : fds_)
    if (fd >= 0) {
      ::close(fd);
      fd = -1;
    }
  if (listen_fd_ >= 0) {
    ::close(listen_fd_);
    listen_fd_ = -1;
  }
}

void TcpCommunicator::rendezvous_root(const TcpOptions& o) {
  const Deadline d(o.timeout_s);
  listen_fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
  TTQ_CHECK(listen_fd_ >= 0, "distributed (tcp): rank 0 cannot create a socket: " << errno_str());
  int one = 1;
  setsockopt(listen_fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  int port = o.port;
  if (port == 0)
    if (const char* p = env_or_null("TTQ_RENDEZVOUS_PORT")) {
      char* end = nullptr;
      const long v = std::strtol(p, &end, 10);
      TTQ_CHECK(end != p && *end == '\0' && v >= 1 && v <= 65535,
                "distributed (tcp): TTQ_RENDEZVOUS_PORT='" << p << "' is not a port number (1 to 65535)");
      port = static_cast<int>(v);
    }
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_ANY);
  addr.sin_port = htons(static_cast<uint16_t>(port));
  TTQ_CHECK(::bind(listen_fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0,
            "distributed (tcp): rank 0 cannot listen on port " << port << ": " << errno_str());
  TTQ_CHECK(::listen(listen_fd_, 256) == 0, "distributed (tcp): listen failed: " << errno_str());
  socklen_t len = sizeof addr;
  getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&addr), &len);
  port = ntohs(addr.sin_port);
  set_nonblocking(listen_fd_);

  std::random_device rd;
  const uint64_t nonce = (static_cast<uint64_t>(rd()) << 32) ^ rd() ^
                         static_cast<uint64_t>(clock_type::now().time_since_epoch().count()) ^
                         (static_cast<uint64_t>(::getpid()) << 16);
  std::string host = o.advertise_host;
  if (host.empty())
    if (const char* h = env_or_null("TTQ_RENDEZVOUS_HOST")) host = h;
  if (host.empty()) host = host_name();
  {
    std::ostringstream os;
    os << "ttq-rendezvous 1\nhost " << host << "\nport " << port << "\nnonce " << std::hex << nonce << std::dec
       << "\nworld " << world_ << "\n";
    const std::string tmp = rendezvous_ + ".tmp." + std::to_string(::getpid());
    {
      std::ofstream out(tmp, std::ios::trunc);
      TTQ_CHECK(out, "distributed (tcp): cannot write the rendezvous file '" << tmp << "': " << errno_str());
      out << os.str();
      out.flush();
      TTQ_CHECK(out, "distributed (tcp): cannot write the rendezvous file '" << tmp << "'");
    }
    TTQ_CHECK(std::rename(tmp.c_str(), rendezvous_.c_str()) == 0,
              "distributed (tcp): cannot move the rendezvous file into place at '" << rendezvous_ << "': " << errno_str());
  }

  fds_.assign(world_, -1);
  std::vector<std::string> hosts(world_);
  std::vector<int> env_local(world_, -1);
  hosts[0] = host_name();
  env_local[0] = o.local_rank;
  int connected = 0;
  while (connected < world_ - 1) {
    if (d.expired()) {
      std::ostringstream missing;
      for (int r = 1; r < world_; ++r)
        if (fds_[r] < 0) missing << " " << r;
      std::error_code ec;
      std::filesystem::remove(rendezvous_, ec);
      TTQ_FAIL("distributed (tcp): rendezvous timed out after " << o.timeout_s << " s: " << connected << " of "
                                                                << world_ - 1 << " ranks reached rank 0 through '"
                                                                << rendezvous_ << "' (missing ranks:" << missing.str()
                                                                << "); check RANK/WORLD_SIZE and that the file is on a "
                                                                   "filesystem every rank sees");
    }
    pollfd p{listen_fd_, POLLIN, 0};
    if (::poll(&p, 1, d.poll_ms()) <= 0) continue;
    const int fd = ::accept(listen_fd_, nullptr, nullptr);
    if (fd < 0) continue;
    set_nonblocking(fd);
    set_nodelay(fd);
    // A peer has 10 s (at most the rest of the deadline) to introduce itself.
    const Deadline hd(std::min(10.0, std::max(0.1, std::chrono::duration<double>(d.end - clock_type::now()).count())));
    Hello h{};
    std::string peer_host;
    try {
      rdv_recv(fd, &h, sizeof h, hd);
      TTQ_CHECK(std::memcmp(h.magic, kMagic, sizeof kMagic) == 0 && h.host_len >= 0 && h.host_len < 4096,
                "not a ttq rank");
      peer_host.resize(static_cast<size_t>(h.host_len));
      if (h.host_len > 0) rdv_recv(fd, peer_host.data(), peer_host.size(), hd);
    } catch (const Error&) {
      ::close(fd);  // a stray or broken connection is not a failure of the run
      continue;
    }
    Reply rep{kOk, 0, 0, world_};
    if (h.nonce != nonce) rep.status = kStale;
    else if (h.world != world_) rep.status = kWrongWorld;
    else if (h.rank <= 0 || h.rank >= world_ || fds_[h.rank] >= 0) rep.status = kBadRank;
    if (rep.status != kOk) {
      try {
        rdv_send(fd, &rep, sizeof rep, hd);
      } catch (const Error&) {
      }
      ::close(fd);
      TTQ_CHECK(rep.status != kWrongWorld, "distributed (tcp): a rank started with WORLD_SIZE=" << h.world
                                                                                               << " joined rank 0, which has WORLD_SIZE=" << world_);
      TTQ_CHECK(rep.status != kBadRank, "distributed (tcp): two ranks, or a rank outside [1, " << world_ - 1
                                                                                            << "], claim RANK=" << h.rank);
      continue;  // stale nonce: that process read an old file and will read it again
    }
    fds_[h.rank] = fd;
    hosts[h.rank] = peer_host;
    env_local[h.rank] = h.local_rank;
    ++connected;
  }
  {
    std::error_code ec;
    std::filesystem::remove(rendezvous_, ec);
  }
  ::close(listen_fd_);
  listen_fd_ = -1;
  // Local ranks: as given (LOCAL_RANK), else the order among the ranks on the same host.
  for (int r = 0; r < world_; ++r) {
    int lr = 0, lw = 0;
    for (int q = 0; q < world_; ++q) {
      if (hosts[q] != hosts[r]) continue;
      ++lw;
      if (q < r) ++lr;
    }
    if (env_local[r] >= 0) lr = env_local[r];
    if (r == 0) {
      local_rank_ = lr;
      local_world_ = lw;
    } else {
      Reply rep{kOk, lr, lw, world_};
      try {
        rdv_send(fds_[r], &rep, sizeof rep, d);
      } catch (const Error& e) {
        TTQ_FAIL("distributed (tcp): rendezvous: rank " << r << " left before the run started (" << e.what() << ")");
      }
    }
  }
}

void TcpCommunicator::rendezvous_peer(const TcpOptions& o) {
  const Deadline d(o.timeout_s);
  std::string last_problem = "the file '" + rendezvous_ + "' did not appear";
  const std::string me = host_name();
  while (true) {
    if (d.expired())
      TTQ_FAIL("distributed (tcp): rendezvous timed out after " << o.timeout_s << " s: rank " << rank_
                                                                << " could not join rank 0 (" << last_problem
                                                                << "); check that rank 0 runs and that '" << rendezvous_
                                                                << "' is on a filesystem every rank sees");
    std::string host;
    int port = 0, file_world = 0;
    uint64_t nonce = 0;
    if (!read_rendezvous(rendezvous_, host, port, nonce, file_world)) {
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
      continue;
    }
    addrinfo hints{};
    hints.ai_family = AF_INET;
    hints.ai_socktype = SOCK_STREAM;
    addrinfo* res = nullptr;
    const std::string port_s = std::to_string(port);
    if (const int rc = getaddrinfo(host.c_str(), port_s.c_str(), &hints, &res); rc != 0) {
      last_problem = "cannot resolve host '" + host + "': " + gai_strerror(rc);
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
      continue;
    }
    int fd = -1;
    for (addrinfo* a = res; a && fd < 0; a = a->ai_next) {
      fd = ::socket(a->ai_family, a->ai_socktype, a->ai_protocol);
      if (fd < 0) continue;
      set_nonblocking(fd);
      int rc = ::connect(fd, a->ai_addr, a->ai_addrlen);
      if (rc != 0 && errno == EINPROGRESS) {
        pollfd p{fd, POLLOUT, 0};
        rc = ::poll(&p, 1, 1000) == 1 ? 0 : -1;
        int err = 0;
        socklen_t len = sizeof err;
        if (rc == 0 && (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0 || err != 0)) {
          errno = err;
          rc = -1;
        }
      }
      if (rc != 0) {
        last_problem = "cannot connect to " + host + ":" + port_s + ": " + errno_str();
        ::close(fd);
        fd = -1;
      }
    }
    freeaddrinfo(res);
    if (fd < 0) {
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
      continue;
    }
    set_nodelay(fd);
    Hello h{};
    std::memcpy(h.magic, kMagic, sizeof kMagic);
    h.nonce = nonce;
    h.rank = rank_;
    h.world = world_;
    h.local_rank = o.local_rank;
    h.host_len = static_cast<int32_t>(me.size());
    Reply rep{};
    const Deadline hd(std::min(10.0, std::max(0.1, std::chrono::duration<double>(d.end - clock_type::now()).count())));
    fds_.assign(1, fd);
    try {
      rdv_send(fd, &h, sizeof h, hd);
      rdv_send(fd, me.data(), me.size(), hd);
      // The reply comes once every rank has connected: wait for it until the full deadline,
      // looking at the rendezvous file every second meanwhile. A file that now names another
      // rank 0 means this one was a stale address (an earlier run's, or anything that accepts
      // and stays silent): leave it and join the new one rather than wait out the deadline.
      for (;;) {
        pollfd p{fd, POLLIN, 0};
        const double left = std::chrono::duration<double>(d.end - clock_type::now()).count();
        const int ready = ::poll(&p, 1, static_cast<int>(std::clamp(left * 1000.0, 0.0, 1000.0)));
        if (ready != 0 || left <= 0) break;  // data, a hang-up or an error: rdv_recv says which
        std::string now_host;
        int now_port = 0, now_world = 0;
        uint64_t now_nonce = 0;
        if (read_rendezvous(rendezvous_, now_host, now_port, now_nonce, now_world) &&
            (now_host != host || now_port != port || now_nonce != nonce))
          TTQ_FAIL("no reply, and '" << rendezvous_ << "' now names rank 0 at " << now_host << ":" << now_port);
      }
      rdv_recv(fd, &rep, sizeof rep, d);
    } catch (const Error& e) {
      last_problem = std::string("rank 0 at ") + host + ":" + port_s + ": " + e.what();
      ::close(fd);
      fds_.clear();
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
      continue;
    }
    if (rep.status == kStale) {
      last_problem = "'" + rendezvous_ + "' was left by an earlier run";
      ::close(fd);
      fds_.clear();
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
      continue;
    }
    if (rep.status != kOk) {
      ::close(fd);
      fds_.clear();
      TTQ_FAIL("distributed (tcp): rank 0 refused rank " << rank_ << ": "
                                                         << (rep.status == kWrongWorld
                                                                 ? "it has WORLD_SIZE=" + std::to_string(rep.world) +
                                                                       ", this rank " + std::to_string(world_)
                                                                 : std::string("another process claims the same RANK")));
    }
    local_rank_ = rep.local_rank;
    local_world_ = rep.local_world;
    return;
  }
}

void TcpCommunicator::fail(const std::string& msg) {
  {
    std::lock_guard<std::mutex> lock(err_mu_);
    if (first_error_.empty()) first_error_ = msg;
  }
  broken_ = true;
  // The others learn at once that this rank stopped communicating.
  for (int fd : fds_)
    if (fd >= 0) ::shutdown(fd, SHUT_RDWR);
  TTQ_FAIL(msg);
}

void TcpCommunicator::check_usable(const char* what) {
  if (!broken_) return;
  std::lock_guard<std::mutex> lock(err_mu_);
  TTQ_FAIL("distributed (tcp): cannot start " << what << " on " << who() << ": an earlier collective failed ("
                                              << first_error_ << ")");
}

void TcpCommunicator::send_all(int fd, const void* p, size_t n, int peer, const Deadline& d, const std::string& what) {
  const IoResult r = io_send(fd, p, n, d);
  if (r.status == Io::Ok) return;
  if (r.status == Io::Timeout)
    fail("distributed (tcp): " + what + " timed out after " + fmt_seconds(d.seconds) + " on " + who() +
         " sending to rank " + std::to_string(peer) + ": a rank died, stalled or left the run (distributed.timeout_s)");
  fail("distributed (tcp): " + what + " on " + who() + ": the connection to rank " + std::to_string(peer) +
       " broke (" + r.detail + "): that process ended or stopped the run");
}

void TcpCommunicator::recv_all(int fd, void* p, size_t n, int peer, const Deadline& d, const std::string& what) {
  const IoResult r = io_recv(fd, p, n, d);
  if (r.status == Io::Ok) return;
  if (r.status == Io::Timeout)
    fail("distributed (tcp): " + what + " timed out after " + fmt_seconds(d.seconds) + " on " + who() +
         " waiting for rank " + std::to_string(peer) + ": a rank died, stalled or left the run (distributed.timeout_s)");
  if (r.status == Io::Closed)
    fail("distributed (tcp): rank " + std::to_string(peer) + " closed its connection during " + what + " (" + who() +
         "): that process ended or stopped the run");
  fail("distributed (tcp): " + what + " on " + who() + ": the connection to rank " + std::to_string(peer) +
       " broke (" + r.detail + "): that process ended or stopped the run");
}

namespace {

template <typename T> constexpr uint32_t op_of();
template <> constexpr uint32_t op_of<float>() { return kOpReduceF32; }
template <> constexpr uint32_t op_of<double>() { return kOpReduceF64; }
template <> constexpr uint32_t op_of<int64_t>() { return kOpReduceI64; }

}  // namespace

template <typename T> void TcpCommunicator::reduce_sum(T* data, int64_t n, const char* what) {
  check_usable(what);
  const uint64_t seq = ++seq_;
  const size_t bytes = static_cast<size_t>(n) * sizeof(T);
  const std::string label = std::string(what) + " (" + size_str(bytes) + ")";
  const Deadline d(timeout_s_);
  const MsgHeader mine{kMsgMagic, op_of<T>(), bytes, seq};
  if (rank_ == 0) {
    std::vector<T> scratch(static_cast<size_t>(n));
    for (int r = 1; r < world_; ++r) {
      MsgHeader h{};
      recv_all(fds_[r], &h, sizeof h, r, d, label);
      if (h.magic != kMsgMagic || h.op != mine.op || h.bytes != mine.bytes || h.seq != seq)
        fail("distributed (tcp): rank " + std::to_string(r) + " started a " + op_name(h.op) + " of " +
             size_str(h.bytes) + " where rank 0 started a " + op_name(mine.op) + " of " + size_str(bytes) +
             ": the ranks disagree on the model or on the order of their collectives");
      recv_all(fds_[r], scratch.data(), bytes, r, d, label);
      for (int64_t i = 0; i < n; ++i) data[i] += scratch[static_cast<size_t>(i)];
    }
    if constexpr (std::is_same_v<T, float>) {
      const float inv = 1.0f / static_cast<float>(world_);
      for (int64_t i = 0; i < n; ++i) data[i] *= inv;
    }
    for (int r = 1; r < world_; ++r) {
      send_all(fds_[r], &mine, sizeof mine, r, d, label);
      send_all(fds_[r], data, bytes, r, d, label);
    }
  } else {
    send_all(fds_[0], &mine, sizeof mine, 0, d, label);
    send_all(fds_[0], data, bytes, 0, d, label);
    MsgHeader h{};
    recv_all(fds_[0], &h, sizeof h, 0, d, label);
    if (h.magic != kMsgMagic || h.op != mine.op || h.bytes != mine.bytes || h.seq != seq)
      fail("distributed (tcp): rank 0 answered a " + std::string(op_name(mine.op)) + " of " + size_str(bytes) + " with a " +
           op_name(h.op) + " of " + size_str(h.bytes) + ": the ranks disagree on their collectives");
    recv_all(fds_[0], data, bytes, 0, d, label);
  }
}

void TcpCommunicator::do_broadcast(void* data, size_t bytes, int root) {
  check_usable("broadcast");
  const std::string label = "broadcast of " + size_str(bytes) + " from rank " + std::to_string(root);
  const Deadline d(timeout_s_);
  const uint64_t seq = ++seq_;
  const MsgHeader mine{kMsgMagic, kOpBroadcast, bytes, seq};
  auto expect = [&](int fd, int peer) {
    MsgHeader h{};
    recv_all(fd, &h, sizeof h, peer, d, label);
    if (h.magic != kMsgMagic || h.op != kOpBroadcast || h.bytes != bytes || h.seq != seq)
      fail("distributed (tcp): rank " + std::to_string(peer) + " sent a " + op_name(h.op) + " of " + size_str(h.bytes) +
           " during a " + label + ": the ranks disagree on their collectives");
    recv_all(fd, data, bytes, peer, d, label);
  };
  if (rank_ == 0) {
    if (root != 0) expect(fds_[root], root);
    for (int r = 1; r < world_; ++r) {
      if (r == root) continue;
      send_all(fds_[r], &mine, sizeof mine, r, d, label);
      send_all(fds_[r], data, bytes, r, d, label);
    }
  } else if (rank_ == root) {
    send_all(fds_[0], &mine, sizeof mine, 0, d, label);
    send_all(fds_[0], data, bytes, 0, d, label);
  } else {
    expect(fds_[0], 0);
  }
}

namespace {
class DoneWork : public CommWork {
 public:
  void wait() override {}
};
}  // namespace

std::unique_ptr<CommWork> TcpCommunicator::all_reduce_average_async(Tensor& data) {
  TTQ_CHECK(data.dtype() == DType::F32 && data.device() == Device::CPU,
            "distributed (tcp): all-reduce needs an f32 CPU tensor, got " << data.str());
  if (world_ == 1) return std::make_unique<DoneWork>();
  float* p = data.data<float>();
  const int64_t n = data.numel();
  // The task holds the tensor's storage (see comm_mpi.cpp).
  return thread_.submit([this, keep = data, p, n] {
    (void)keep;
    reduce_sum(p, n, "gradient all-reduce");
  });
}

void TcpCommunicator::all_reduce_sum(double* data, int64_t n, const char* what) {
  if (world_ == 1) return;
  thread_.run([&] { reduce_sum(data, n, ("all-reduce of " + std::string(what)).c_str()); });
}

void TcpCommunicator::all_reduce_sum(int64_t* data, int64_t n, const char* what) {
  if (world_ == 1) return;
  thread_.run([&] { reduce_sum(data, n, ("all-reduce of " + std::string(what)).c_str()); });
}

void TcpCommunicator::broadcast(void* data, size_t bytes, int root) {
  TTQ_CHECK(root >= 0 && root < world_, "distributed (tcp): broadcast root " << root << " is not a rank of " << world_);
  if (world_ == 1) return;
  thread_.run([&] { do_broadcast(data, bytes, root); });
}

void TcpCommunicator::barrier() {
  int64_t one = 1;
  if (world_ == 1) return;
  thread_.run([&] { reduce_sum(&one, 1, "barrier"); });
}

void TcpCommunicator::abort(const std::string& reason) noexcept {
  {
    std::lock_guard<std::mutex> lock(err_mu_);
    if (first_error_.empty()) first_error_ = "aborted: " + reason;
  }
  broken_ = true;
  for (int fd : fds_)
    if (fd >= 0) ::shutdown(fd, SHUT_RDWR);
}

}  // namespace ttq
