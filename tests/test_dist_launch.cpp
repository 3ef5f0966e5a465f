// Data-parallel runs of the `ttq` program as separate processes: launched with RANK / WORLD_SIZE /
// TTQ_RENDEZVOUS (the tcp backend) and with mpirun (when the build has MPI). Each rank gets its
// own output_dir, so "only rank 0 writes" is checked by rank 1's folder not existing. A rank
// killed (SIGKILL) or stalled (SIGSTOP) mid-run makes the run end with an error naming the
// problem, within the configured timeout, and leaves the last checkpoint intact.
#include <gtest/gtest.h>

#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <thread>

#include "engine/train/checkpoint.h"
#include "tests/test_util.h"

using namespace ttq;
namespace tt = ttq::testing;
namespace fs = std::filesystem;

#ifndef TTQ_EXE
#define TTQ_EXE ""
#endif
#ifndef TTQ_MPIEXEC
#define TTQ_MPIEXEC ""
#endif
#ifndef TTQ_MPIEXEC_EXTRA
#define TTQ_MPIEXEC_EXTRA ""
#endif

namespace {

using clock_type = std::chrono::steady_clock;

double since(clock_type::time_point t) { return std::chrono::duration<double>(clock_type::now() - t).count(); }

// A child process with its stdout and stderr in a file; killed (and reaped) on destruction.
class Child {
 public:
  Child(const std::vector<std::string>& argv, const std::map<std::string, std::string>& env, const std::string& log)
      : log_(log) {
    pid_ = ::fork();
    if (pid_ == 0) {
      const int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      ::dup2(fd, 1);
      ::dup2(fd, 2);
      ::setpgid(0, 0);  // its own process group: the whole group can be killed
      for (const auto& [k, v] : env) ::setenv(k.c_str(), v.c_str(), 1);
      std::vector<char*> args;
      for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
      args.push_back(nullptr);
      ::execv(args[0], args.data());
      std::perror("execv");
      ::_exit(127);
    }
  }
  ~Child() {
    if (!done_) {
      ::kill(-pid_, SIGKILL);
      ::kill(pid_, SIGKILL);
      int st = 0;
      ::waitpid(pid_, &st, 0);
    }
  }
  pid_t pid() const { return pid_; }
  // Exit code (128 + signal when killed), or -1 when still running after timeout_s.
  int wait(double timeout_s) {
    const auto t0 = clock_type::now();
    while (!done_) {
      int st = 0;
      const pid_t r = ::waitpid(pid_, &st, WNOHANG);
      if (r == pid_) {
        done_ = true;
        code_ = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
        break;
      }
      if (since(t0) > timeout_s) return -1;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    return code_;
  }
  std::string output() const { return tt::read_bytes(log_); }

 private:
  pid_t pid_ = -1;
  std::string log_;
  bool done_ = false;
  int code_ = -1;
};

bool wait_for_file(const std::string& path, double timeout_s) {
  const auto t0 = clock_type::now();
  while (since(t0) < timeout_s) {
    if (fs::exists(path)) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return false;
}

std::vector<std::string> train_args(const std::string& out, const std::vector<std::string>& extra) {
  std::vector<std::string> a{TTQ_EXE, "train", std::string(TTQ_SOURCE_DIR) + "/configs/synthetic_smoke.json",
                             "--set", "output_dir=" + out, "--set", "data.workers=1"};
  a.insert(a.end(), extra.begin(), extra.end());
  return a;
}

std::map<std::string, std::string> env_launch(int rank, int world, const std::string& rdv) {
  return {{"RANK", std::to_string(rank)}, {"WORLD_SIZE", std::to_string(world)}, {"TTQ_RENDEZVOUS", rdv},
          {"OMP_NUM_THREADS", "1"}, {"OMP_WAIT_POLICY", "PASSIVE"}};
}

std::map<std::string, std::string> mpi_env() {
  return {{"OMPI_ALLOW_RUN_AS_ROOT", "1"}, {"OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1"}, {"OMP_WAIT_POLICY", "PASSIVE"}};
}

std::vector<std::string> mpirun(int np) {
  std::vector<std::string> a{TTQ_MPIEXEC, "-np", std::to_string(np)};
  if (std::strlen(TTQ_MPIEXEC_EXTRA)) a.push_back(TTQ_MPIEXEC_EXTRA);
  return a;
}

// The pid of rank `rank` among the descendants of `parent` (Open MPI: OMPI_COMM_WORLD_RANK).
pid_t find_rank(pid_t parent, int rank, double timeout_s) {
  const auto t0 = clock_type::now();
  const std::string want = "OMPI_COMM_WORLD_RANK=" + std::to_string(rank);
  while (since(t0) < timeout_s) {
    for (const auto& e : fs::directory_iterator("/proc")) {
      const std::string name = e.path().filename();
      if (name.find_first_not_of("0123456789") != std::string::npos) continue;
      std::ifstream stat(e.path() / "stat");
      std::string line;
      std::getline(stat, line);
      const auto close = line.rfind(')');
      if (close == std::string::npos) continue;
      char state = 0;
      int ppid = 0;
      if (std::sscanf(line.c_str() + close + 1, " %c %d", &state, &ppid) != 2) continue;
      // A descendant: walk a few levels up.
      bool below = false;
      for (int p = ppid, depth = 0; p > 1 && depth < 4 && !below; ++depth) {
        if (p == parent) below = true;
        std::ifstream ps("/proc/" + std::to_string(p) + "/stat");
        std::string l;
        std::getline(ps, l);
        const auto c = l.rfind(')');
        if (c == std::string::npos || std::sscanf(l.c_str() + c + 1, " %c %d", &state, &p) != 2) break;
      }
      if (!below) continue;
      std::ifstream env(e.path() / "environ", std::ios::binary);
      const std::string all((std::istreambuf_iterator<char>(env)), std::istreambuf_iterator<char>());
      if (all.find(std::string("\0", 1) + want + std::string("\0", 1)) != std::string::npos || all.rfind(want + '\0', 0) == 0)
        return static_cast<pid_t>(std::stoi(name));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return -1;
}

int count_records(const std::string& metrics, const std::string& type) {
  std::ifstream in(metrics);
  int n = 0;
  for (std::string line; std::getline(in, line);) n += json::parse(line).value("type", "") == type;
  return n;
}

// A complete checkpoint of the 2-rank run, taken every 20 steps or at an epoch end (32 steps of
// 2 x 32 of the 2048 samples).
void expect_intact_checkpoint(const std::string& path) {
  ASSERT_TRUE(fs::exists(path)) << path;
  const Checkpoint ck = read_checkpoint(path);
  EXPECT_EQ(ck.state.world, 2);
  EXPECT_GT(ck.state.global_step, 0);
  EXPECT_TRUE(ck.state.global_step % 20 == 0 || ck.state.global_step % 32 == 0) << ck.state.global_step;
}

const std::vector<std::string> kShort{"--set", "stages.0.epochs=1", "--set", "stages.1.epochs=1"};
// Long enough to be stopped midway; a checkpoint every 20 steps.
const std::vector<std::string> kLong{"--quiet", "--set", "stages.0.epochs=100000", "--set", "checkpoint.every_steps=20"};

}  // namespace

TEST(EnvLaunch, TwoProcessesTrainAndOnlyRankZeroWrites) {
  tt::TempDir dir;
  Child r1(train_args(dir.file("rank1"), kShort), env_launch(1, 2, dir.file("rdv")), dir.file("r1.log"));
  Child r0(train_args(dir.file("rank0"), kShort), env_launch(0, 2, dir.file("rdv")), dir.file("r0.log"));
  EXPECT_EQ(r0.wait(120), 0) << r0.output();
  EXPECT_EQ(r1.wait(30), 0) << r1.output();
  const std::string out = r0.output();
  EXPECT_NE(out.find("Data parallel: 2 ranks (tcp)"), std::string::npos) << out;
  EXPECT_NE(out.find("results in " + dir.file("rank0")), std::string::npos) << out;
  EXPECT_EQ(r1.output(), "");  // rank 1 prints nothing ...
  EXPECT_FALSE(fs::exists(dir.file("rank1")));  // ... and writes nothing
  EXPECT_EQ(count_records(dir.file("rank0/metrics.jsonl"), "epoch"), 2);
  for (const char* f : {"config.json", "last.safetensors", "fp.safetensors", "ttq.safetensors", "summary.json"})
    EXPECT_TRUE(fs::exists(dir.file("rank0/") + f)) << f;
}

TEST(EnvLaunch, AKilledRankEndsTheRunAtOnce) {
  tt::TempDir dir;
  Child r1(train_args(dir.file("rank1"), kLong), env_launch(1, 2, dir.file("rdv")), dir.file("r1.log"));
  Child r0(train_args(dir.file("rank0"), kLong), env_launch(0, 2, dir.file("rdv")), dir.file("r0.log"));
  ASSERT_TRUE(wait_for_file(dir.file("rank0/last.safetensors"), 60)) << r0.output();
  ::kill(r1.pid(), SIGKILL);
  const auto t0 = clock_type::now();
  EXPECT_EQ(r0.wait(20), 1) << r0.output();
  EXPECT_LT(since(t0), 5.0);  // far below the 300 s default timeout: the connection closed
  const std::string err = r0.output();
  EXPECT_NE(err.find("error on rank 0 of 2"), std::string::npos) << err;
  EXPECT_NE(err.find("rank 1"), std::string::npos) << err;
  EXPECT_NE(err.find("is unchanged"), std::string::npos) << err;
  expect_intact_checkpoint(dir.file("rank0/last.safetensors"));
}

TEST(EnvLaunch, AStalledRankEndsTheRunAfterTheTimeout) {
  tt::TempDir dir;
  std::vector<std::string> args = kLong;
  args.insert(args.end(), {"--set", "distributed.timeout_s=2"});
  Child r1(train_args(dir.file("rank1"), args), env_launch(1, 2, dir.file("rdv")), dir.file("r1.log"));
  Child r0(train_args(dir.file("rank0"), args), env_launch(0, 2, dir.file("rdv")), dir.file("r0.log"));
  ASSERT_TRUE(wait_for_file(dir.file("rank0/last.safetensors"), 60)) << r0.output();
  ::kill(r1.pid(), SIGSTOP);
  const auto t0 = clock_type::now();
  EXPECT_EQ(r0.wait(30), 1) << r0.output();
  const double t = since(t0);
  EXPECT_GT(t, 1.5);
  EXPECT_LT(t, 8.0);
  const std::string err = r0.output();
  EXPECT_NE(err.find("timed out after 2 s on rank 0 of 2"), std::string::npos) << err;
  expect_intact_checkpoint(dir.file("rank0/last.safetensors"));
}

TEST(MpiLaunch, TwoProcessesTrainAndOnlyRankZeroWrites) {
  if (!std::strlen(TTQ_MPIEXEC)) GTEST_SKIP() << "this build has no MPI";
  tt::TempDir dir;
  // One program per rank (MPMD), each with its own output folder.
  std::vector<std::string> a = mpirun(1);
  for (const auto& s : train_args(dir.file("rank0"), kShort)) a.push_back(s);
  a.push_back(":");
  a.insert(a.end(), {"-np", "1"});
  for (const auto& s : train_args(dir.file("rank1"), kShort)) a.push_back(s);
  Child run(a, mpi_env(), dir.file("mpi.log"));
  EXPECT_EQ(run.wait(120), 0) << run.output();
  const std::string out = run.output();
  EXPECT_NE(out.find("Data parallel: 2 ranks (mpi)"), std::string::npos) << out;
  EXPECT_NE(out.find("results in " + dir.file("rank0")), std::string::npos) << out;
  EXPECT_EQ(out.find("results in " + dir.file("rank1")), std::string::npos) << out;
  EXPECT_FALSE(fs::exists(dir.file("rank1")));
  EXPECT_EQ(count_records(dir.file("rank0/metrics.jsonl"), "epoch"), 2);
}

TEST(MpiLaunch, AStalledRankEndsTheRunAfterTheTimeout) {
  if (!std::strlen(TTQ_MPIEXEC)) GTEST_SKIP() << "this build has no MPI";
  tt::TempDir dir;
  std::vector<std::string> a = mpirun(2);
  std::vector<std::string> args = kLong;
  args.insert(args.end(), {"--set", "distributed.timeout_s=2"});
  for (const auto& s : train_args(dir.file("run"), args)) a.push_back(s);
  Child run(a, mpi_env(), dir.file("mpi.log"));
  ASSERT_TRUE(wait_for_file(dir.file("run/last.safetensors"), 60)) << run.output();
  const pid_t r1 = find_rank(run.pid(), 1, 10);
  ASSERT_GT(r1, 0) << "rank 1 not found";
  ::kill(r1, SIGSTOP);
  const auto t0 = clock_type::now();
  const int code = run.wait(60);
  const double t = since(t0);
  ::kill(r1, SIGKILL);  // in case mpirun left it
  EXPECT_NE(code, 0) << run.output();
  EXPECT_NE(code, -1) << "mpirun still running after 60 s: " << run.output();
  EXPECT_LT(t, 20.0);
  const std::string out = run.output();
  EXPECT_NE(out.find("timed out after 2 s on rank 0 of 2"), std::string::npos) << out;
  expect_intact_checkpoint(dir.file("run/last.safetensors"));
}

TEST(MpiLaunch, AKilledRankEndsTheRun) {
  if (!std::strlen(TTQ_MPIEXEC)) GTEST_SKIP() << "this build has no MPI";
  tt::TempDir dir;
  std::vector<std::string> a = mpirun(2);
  for (const auto& s : train_args(dir.file("run"), kLong)) a.push_back(s);
  Child run(a, mpi_env(), dir.file("mpi.log"));
  ASSERT_TRUE(wait_for_file(dir.file("run/last.safetensors"), 60)) << run.output();
  const pid_t r1 = find_rank(run.pid(), 1, 10);
  ASSERT_GT(r1, 0) << "rank 1 not found";
  ::kill(r1, SIGKILL);
  const auto t0 = clock_type::now();
  const int code = run.wait(60);
  EXPECT_NE(code, 0) << run.output();
  EXPECT_NE(code, -1) << "mpirun still running after 60 s: " << run.output();
  EXPECT_LT(since(t0), 20.0);
  expect_intact_checkpoint(dir.file("run/last.safetensors"));
}
