// Data-parallel training on one machine without MPI: gradient bucket planning, the tcp backend
// with ranks as threads of this process (all-reduce sizes, sums, broadcast, rendezvous through a
// file, a stalled and a dead rank), synchronised batch norm against one large batch, sharded
// evaluation, and N ranks with per-rank batch B against one rank with batch N*B.
#include <gtest/gtest.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <functional>
#include <thread>

#include "engine/dist/comm_tcp.h"
#include "engine/dist/data_parallel.h"
#include "engine/dist/gpu_util.h"
#include "engine/dist/grad_reducer.h"
#include "engine/dist/sync_batchnorm.h"
#include "engine/nn/batchnorm.h"
#include "engine/nn/quantizable.h"
#include "engine/train/checkpoint.h"
#include "engine/train/experiment.h"
#include "engine/train/trainer.h"
#include "kernels/ops.h"
#include "tests/dist_test_util.h"
#include "tests/test_util.h"

using namespace ttq;
namespace tt = ttq::testing;
using tt::TempDir;

namespace {

using ttq::testing::run_ranks;

double seconds_since(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
}

// Two ranks as threads meet through the rendezvous file; the peer starts first (and reads what
// the file holds then), rank 0 after delay_ms. Returns how many ranks then summed 1 + 1 = 2.
int join_two_ranks_late_root(const std::string& rendezvous, int delay_ms, double timeout_s) {
  std::atomic<int> ok{0};
  std::vector<std::thread> th;
  for (int r = 1; r >= 0; --r)
    th.emplace_back([&, r] {
      if (r == 0) std::this_thread::sleep_for(std::chrono::milliseconds(delay_ms));
      TcpOptions o;
      o.rank = r;
      o.world = 2;
      o.rendezvous = rendezvous;
      o.timeout_s = timeout_s;
      TcpCommunicator c(o);
      int64_t one = 1;
      c.all_reduce_sum(&one, 1, "a test value");
      if (one == 2) ++ok;
    });
  for (auto& t : th) t.join();
  return ok.load();
}

}  // namespace

// ---- bucket planning -----------------------------------------------------------------------

TEST(BucketPlan, FirstBucketSmallThenAboutTheBucketSize) {
  const int64_t MiB = 1 << 20;
  // floats: 0.38 MiB, 0.76 MiB, 11.4 MiB, 15.3 MiB, 30.5 MiB (larger than a bucket), 40 B
  const std::vector<int64_t> n{100000, 200000, 3000000, 4000000, 8000000, 10};
  const BucketPlan p = plan_buckets(n, 1 * MiB, 25 * MiB);
  // A bucket closes once it holds at least its size: 1.14 MiB, 26.7 MiB, 30.5 MiB, the rest.
  ASSERT_EQ(p.buckets.size(), 4u);
  EXPECT_EQ(p.buckets[0].items, (std::vector<size_t>{0, 1}));
  EXPECT_EQ(p.buckets[1].items, (std::vector<size_t>{2, 3}));
  EXPECT_EQ(p.buckets[2].items, (std::vector<size_t>{4}));
  EXPECT_EQ(p.buckets[3].items, (std::vector<size_t>{5}));
  EXPECT_EQ(p.buckets[1].offsets, (std::vector<int64_t>{0, 3000000}));
  EXPECT_EQ(p.buckets[1].numel, 7000000);
  // The same input gives the same plan (and signature); another input another signature.
  EXPECT_EQ(plan_buckets(n, 1 * MiB, 25 * MiB).signature(), p.signature());
  std::vector<int64_t> n2 = n;
  n2[5] = 11;
  EXPECT_NE(plan_buckets(n2, 1 * MiB, 25 * MiB).signature(), p.signature());
  EXPECT_NE(plan_buckets(n, 2 * MiB, 25 * MiB).signature(), p.signature());
  // Small tensors share one bucket until it is full.
  EXPECT_EQ(plan_buckets({1, 2, 3}, MiB, MiB).buckets.size(), 1u);
}

TEST(BucketPlan, Resnet20TensorsInReverseLayerOrder) {
  Model m = build_model(json{{"name", "resnet20"}}, InputSpec{3, 32, 32, 10}, 1);
  ReducerOptions ro;
  ro.first_bucket_mb = 0.05;
  ro.bucket_mb = 0.25;
  GradientReducer red(*m.net, std::make_shared<SingleProcessCommunicator>(), ro);
  const auto& items = red.tensors();
  ASSERT_FALSE(items.empty());
  // The last layer first, the first conv last (bias before weight within a layer).
  EXPECT_EQ(items.front().name, "fc.bias");
  EXPECT_EQ(items[1].name, "fc.weight");
  EXPECT_EQ(items.back().name, "conv1.weight");
  int64_t trainable = 0;
  size_t count = 0;
  for (auto& np : m.net->named_parameters())
    if (np.param->trainable) {
      trainable += np.param->value.numel();
      ++count;
    }
  EXPECT_EQ(red.total_numel(), trainable);
  EXPECT_EQ(items.size(), count);
  // 1.03 MiB of gradients: every bucket but the last holds at least its size, and no more than
  // one tensor past it; each tensor is in exactly one bucket, in order.
  const auto& bs = red.plan().buckets;
  ASSERT_GE(bs.size(), 4u);
  size_t next = 0;
  int64_t sum = 0;
  for (size_t b = 0; b < bs.size(); ++b) {
    const int64_t cap = b == 0 ? int64_t(0.05 * 1048576) : int64_t(0.25 * 1048576);
    if (b + 1 < bs.size()) {
      EXPECT_GE(bs[b].numel * 4, cap) << b;
      EXPECT_LT((bs[b].numel - items[bs[b].items.back()].numel) * 4, cap) << b;
    }
    for (size_t i : bs[b].items) EXPECT_EQ(i, next++);
    sum += bs[b].numel;
  }
  EXPECT_EQ(next, items.size());
  EXPECT_EQ(sum, trainable);
}

TEST(BucketPlan, DeferredTernaryLayersContributeTheirQuantizedWeightGradient) {
  const InputSpec spec{1, 8, 8, 4};
  Model m = build_model(json{{"name", "small_convnet"}}, spec, 1);
  QuantizeOptions q;
  q.full_precision_layers = m.full_precision_layers;  // conv1
  quantize_model(*m.net, q);
  int64_t trainable = 0;
  for (auto& np : m.net->named_parameters())
    if (np.param->trainable) trainable += np.param->value.numel();
  auto comm = std::make_shared<SingleProcessCommunicator>();
  {
    // Per-layer TTQ backward: the latent weights, Wp and Wn are reduced.
    GradientReducer red(*m.net, comm, ReducerOptions{});
    EXPECT_EQ(red.total_numel(), trainable);
    bool has_wp = false;
    for (const auto& t : red.tensors()) has_wp = has_wp || t.name == "conv2.wp";
    EXPECT_TRUE(has_wp);
  }
  TernaryPass pass(*m.net);
  GradientReducer red(*m.net, comm, ReducerOptions{});
  // dL/dw_t in place of weight, wp and wn for conv2 and fc: two scalars fewer per ternary layer.
  EXPECT_EQ(red.total_numel(), trainable - 4);
  std::vector<std::string> names;
  for (const auto& t : red.tensors()) names.push_back(t.name);
  EXPECT_EQ(names, (std::vector<std::string>{"fc.bias", "fc.weight (dL/dw_t)", "bn2.bias", "bn2.weight",
                                             "conv2.weight (dL/dw_t)", "bn1.bias", "bn1.weight", "conv1.weight"}));
}

TEST(BucketPlan, ReplansWhenTheModelChangesAfterTheReducerWasBuilt) {
  // A reducer built before quantization and before the TernaryPass re-plans at the next backward.
  const InputSpec spec{1, 8, 8, 4};
  Model m = build_model(json{{"name", "small_convnet"}}, spec, 1);
  auto comm = std::make_shared<SingleProcessCommunicator>();
  GradientReducer red(*m.net, comm, ReducerOptions{});
  const int64_t before = red.total_numel();
  QuantizeOptions q;
  q.full_precision_layers = m.full_precision_layers;
  quantize_model(*m.net, q);
  TernaryPass pass(*m.net);
  SyntheticDataset data(spec, 64, 1.0f, 3);
  OptimizerConfig oc;
  auto opt = make_optimizer(m.net->named_parameters(), oc);
  CrossEntropyLoss loss;
  train_step(*m.net, loss, *opt, data.batch(0, 8), 0.01, &pass);
  EXPECT_EQ(red.total_numel(), before);  // + 2 x (wp, wn) - the same 4 as dL/dw_t replaces
  bool deferred = false;
  for (const auto& t : red.tensors()) deferred = deferred || t.deferred_ternary;
  EXPECT_TRUE(deferred);
}

// ---- the tcp backend -----------------------------------------------------------------------

TEST(TcpBackend, AllReduceOverSizesIncludingOddOnes) {
  TempDir dir;
  const int world = 3;
  const std::vector<int64_t> sizes{1, 7, 1000, 262147, 3000001};
  run_ranks(world, dir.file("rdv"), 30, [&](int r, std::shared_ptr<Communicator> c) {
    EXPECT_EQ(c->rank(), r);
    EXPECT_EQ(c->world(), world);
    EXPECT_EQ(c->local_rank(), r);  // one host
    EXPECT_EQ(c->local_world(), world);
    auto value = [](int rank, int64_t i) { return static_cast<float>((i % 97) * 0.25 + rank * 1.5 - (i % 13)); };
    for (int64_t n : sizes) {
      Tensor t = Tensor::empty({n});
      for (int64_t i = 0; i < n; ++i) t.data<float>()[i] = value(r, i);
      c->all_reduce_average(t);
      int64_t bad = 0;
      for (int64_t i = 0; i < n; ++i) {
        // Rank order, then x 1/world: the same float operations as the hub.
        const float want = ((value(0, i) + value(1, i)) + value(2, i)) * (1.0f / world);
        bad += t.data<float>()[i] != want;
      }
      EXPECT_EQ(bad, 0) << "size " << n << " on rank " << r;
    }
    double d[3] = {0.5 * r, 1.0, -2.0 * r};
    c->all_reduce_sum(d, 3, "test doubles");
    EXPECT_DOUBLE_EQ(d[0], 1.5);
    EXPECT_DOUBLE_EQ(d[1], 3.0);
    EXPECT_DOUBLE_EQ(d[2], -6.0);
    int64_t k[2] = {r, int64_t(1) << 40};
    c->all_reduce_sum(k, 2, "test integers");
    EXPECT_EQ(k[0], 3);
    EXPECT_EQ(k[1], int64_t(3) << 40);
    std::vector<char> bytes(100003, static_cast<char>(r == 2 ? 'x' : 'o'));
    c->broadcast(bytes.data(), bytes.size(), 2);
    EXPECT_EQ(std::count(bytes.begin(), bytes.end(), 'x'), 100003);
    c->barrier();
  });
}

TEST(TcpBackend, AStaleRendezvousFileIsWaitedOut) {
  TempDir dir;
  // Left by an earlier run: a port nobody listens on and another nonce.
  tt::write_bytes(dir.file("rdv"), "ttq-rendezvous 1\nhost localhost\nport 1\nnonce 1234\nworld 2\n");
  EXPECT_EQ(join_two_ranks_late_root(dir.file("rdv"), 300, 20), 2);
  EXPECT_FALSE(std::ifstream(dir.file("rdv")).good());  // rank 0 removed it once everybody arrived
}

// A stale file naming something that accepts connections but never answers (an earlier run's
// rank 0 still waiting, any listener): the peer notices the file change and joins the real rank 0
// within about a second, instead of waiting out the whole timeout.
TEST(TcpBackend, AStaleAddressThatNeverAnswersIsLeftForTheNewOne) {
  TempDir dir;
  const int silent = ::socket(AF_INET, SOCK_STREAM, 0);
  ASSERT_GE(silent, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(::bind(silent, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
  ASSERT_EQ(::listen(silent, 8), 0);  // connections complete in the backlog; nothing ever replies
  socklen_t len = sizeof a;
  ASSERT_EQ(::getsockname(silent, reinterpret_cast<sockaddr*>(&a), &len), 0);
  tt::write_bytes(dir.file("rdv"), "ttq-rendezvous 1\nhost 127.0.0.1\nport " + std::to_string(ntohs(a.sin_port)) +
                                       "\nnonce 99\nworld 2\n");
  const auto t0 = std::chrono::steady_clock::now();
  EXPECT_EQ(join_two_ranks_late_root(dir.file("rdv"), 500, 30), 2);
  ::close(silent);
  EXPECT_LT(seconds_since(t0), 10.0);  // not the 30 s timeout
}

TEST(TcpBackend, MissingRanksEndTheRendezvousWithAnError) {
  TempDir dir;
  TcpOptions o;
  o.world = 3;
  o.rendezvous = dir.file("rdv");
  o.timeout_s = 0.5;
  const auto t0 = std::chrono::steady_clock::now();
  const std::string err = tt::error_of([&] { TcpCommunicator c(o); });
  EXPECT_LT(seconds_since(t0), 5.0);
  EXPECT_NE(err.find("rendezvous timed out after 0.5 s"), std::string::npos) << err;
  EXPECT_NE(err.find("missing ranks: 1 2"), std::string::npos) << err;
}

TEST(TcpBackend, ABadRendezvousPortIsAnError) {
  TempDir dir;
  TcpOptions o;
  o.world = 2;  // rank 0 parses the port before it listens
  o.rendezvous = dir.file("rdv");
  o.timeout_s = 0.5;
  for (const char* bad : {"70000", "abc", "0", "-1", "80x"}) {
    SCOPED_TRACE(bad);
    ::setenv("TTQ_RENDEZVOUS_PORT", bad, 1);
    const std::string err = tt::error_of([&] { TcpCommunicator c(o); });
    EXPECT_NE(err.find(std::string("TTQ_RENDEZVOUS_PORT='") + bad + "' is not a port number"), std::string::npos) << err;
  }
  ::unsetenv("TTQ_RENDEZVOUS_PORT");
}

// Backend 'mpi' in processes started with RANK/WORLD_SIZE would give N one-rank MPI jobs that all
// write the same files: refused. One process, or an MPI launcher, may use it.
TEST(Launch, MpiBackendNeedsAnMpiLauncherForSeveralProcesses) {
  if (!mpi_built()) GTEST_SKIP() << "built without MPI";
  LaunchInfo env;
  env.launcher = "env";
  env.rank = 1;
  env.world = 2;
  const std::string err = tt::error_of([&] { resolve_backend("mpi", env, false); });
  EXPECT_NE(err.find("rank 1 of 2 started with RANK/WORLD_SIZE, not by an MPI launcher"), std::string::npos) << err;
  EXPECT_EQ(resolve_backend("tcp", env, false), "tcp");
  EXPECT_EQ(resolve_backend("auto", env, false), "tcp");
  LaunchInfo mpi = env;
  mpi.launcher = "mpi";
  EXPECT_EQ(resolve_backend("mpi", mpi, false), "mpi");
  EXPECT_EQ(resolve_backend("mpi", LaunchInfo{}, false), "mpi");
  env.world = 1;
  env.rank = 0;
  EXPECT_EQ(resolve_backend("mpi", env, false), "mpi");
}

TEST(TcpBackend, AStalledRankMakesTheOthersFailWithinTheTimeout) {
  TempDir dir;
  std::string err0, err1;
  double t_fail = 0;
  run_ranks(2, dir.file("rdv"), 1.0, [&](int r, std::shared_ptr<Communicator> c) {
    Tensor t = Tensor::full({1000}, 1.0f);
    c->all_reduce_average(t);  // both present
    if (r == 1) {
      std::this_thread::sleep_for(std::chrono::milliseconds(2500));  // stalls past rank 0's timeout
      err1 = tt::error_of([&] { c->all_reduce_average(t); });
      return;
    }
    const auto t0 = std::chrono::steady_clock::now();
    err0 = tt::error_of([&] { c->all_reduce_average(t); });
    t_fail = seconds_since(t0);
    // Unusable afterwards, with a message saying why.
    const std::string again = tt::error_of([&] { c->barrier(); });
    EXPECT_NE(again.find("an earlier collective failed"), std::string::npos) << again;
    EXPECT_TRUE(c->broken());
  });
  EXPECT_NE(err0.find("timed out after 1 s on rank 0 of 2 waiting for rank 1"), std::string::npos) << err0;
  EXPECT_GT(t_fail, 0.9);
  EXPECT_LT(t_fail, 4.0);  // the timeout, plus slack for a loaded machine
  // The stalled rank learns it when it comes back: rank 0 closed the connections.
  EXPECT_NE(err1.find("rank 0"), std::string::npos) << err1;
}

TEST(TcpBackend, ADeadRankEndsTheCollectiveAtOnce) {
  TempDir dir;
  std::string err0;
  double t_fail = 0;
  run_ranks(2, dir.file("rdv"), 60.0, [&](int r, std::shared_ptr<Communicator> c) {
    c->barrier();
    if (r == 1) return;  // its communicator is destroyed: the process "died", its sockets closed
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    Tensor t = Tensor::full({10}, 1.0f);
    const auto t0 = std::chrono::steady_clock::now();
    err0 = tt::error_of([&] { c->all_reduce_average(t); });
    t_fail = seconds_since(t0);
  });
  EXPECT_NE(err0.find("rank 1 closed its connection"), std::string::npos) << err0;
  EXPECT_LT(t_fail, 5.0);  // not the 60 s timeout
}

TEST(TcpBackend, AFailedHostSumNamesItsData) {
  TempDir dir;
  std::string err0;
  run_ranks(2, dir.file("rdv"), 60.0, [&](int r, std::shared_ptr<Communicator> c) {
    c->barrier();
    if (r == 1) return;  // gone
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    int64_t counts[2] = {1, 2};
    err0 = tt::error_of([&] { c->all_reduce_sum(counts, 2, "the evaluation counts"); });
  });
  EXPECT_NE(err0.find("all-reduce of the evaluation counts (16 bytes)"), std::string::npos) << err0;
  EXPECT_NE(err0.find("rank 1 closed its connection"), std::string::npos) << err0;
}

// Which GPU a rank binds to: one per local rank when the node shows enough, GPU 0 when each rank
// sees a single one (srun --gpus-per-task=1), an error otherwise.
TEST(GpuBinding, LocalGpuIndex) {
  EXPECT_EQ(local_gpu_index(8, 3, 8, "rank 3"), 3);
  EXPECT_EQ(local_gpu_index(8, 1, 2, "rank 1"), 1);
  EXPECT_EQ(local_gpu_index(1, 5, 8, "rank 5"), 0);  // its own GPU, the only one it sees
  EXPECT_EQ(local_gpu_index(1, 0, 1, "rank 0"), 0);
  const std::string few = tt::error_of([] { local_gpu_index(2, 3, 8, "rank 3 of 8"); });
  EXPECT_NE(few.find("rank 3 of 8 is local rank 3 of 8 on its node and sees 2 GPUs"), std::string::npos) << few;
  EXPECT_NE(tt::error_of([] { local_gpu_index(0, 0, 1, "rank 0"); }).find("sees no GPU"), std::string::npos);
}

TEST(GpuBinding, RanksSharingAGpuAreFound) {
  GpuUuid a{}, b{}, c{};
  a[0] = 1;
  b[0] = 2;
  c[15] = 0xab;
  EXPECT_EQ(ranks_sharing_a_gpu({a, b, c}), std::make_pair(-1, -1));
  EXPECT_EQ(ranks_sharing_a_gpu({a, b, c, b}), std::make_pair(1, 3));
  EXPECT_EQ(ranks_sharing_a_gpu({}), std::make_pair(-1, -1));
  EXPECT_EQ(gpu_uuid_str(c), "GPU-00000000-0000-0000-0000-0000000000ab");
}

// A rank without a GPU among ranks with one: every rank fails, saying how many have one.
TEST(GpuBinding, RanksMustAllOrNoneTrainOnAGpu) {
  TempDir dir;
  std::vector<std::string> err(3);
  run_ranks(3, dir.file("rdv"), 30, [&](int r, std::shared_ptr<Communicator> c) {
    err[r] = tt::error_of([&] { check_ranks_agree_on_gpu(*c, r != 1); });
    check_ranks_agree_on_gpu(*c, false);  // all without: fine
    check_ranks_agree_on_gpu(*c, true);   // all with: fine
  });
  for (int r = 0; r < 3; ++r)
    EXPECT_NE(err[r].find("distributed: 2 of 3 ranks train on a GPU"), std::string::npos) << err[r];
  EXPECT_NE(err[1].find("on its CPU"), std::string::npos) << err[1];
}

// A communicator of two ranks that only counts the aborts of its device collectives.
class CountingComm : public Communicator {
 public:
  CountingComm() { world_ = 2; }
  const char* backend() const override { return "counting"; }
  std::unique_ptr<CommWork> all_reduce_average_async(Tensor&) override { TTQ_FAIL("not used"); }
  void all_reduce_sum(double*, int64_t, const char*) override {}
  void all_reduce_sum(int64_t*, int64_t, const char*) override {}
  void broadcast(void*, size_t, int) override {}
  void barrier() override {}
  void abort(const std::string&) noexcept override {}
  void abort_device() noexcept override { ++device_aborts; }
  int device_aborts = 0;
};

// The guard the training loop holds: the device collectives are aborted only when an exception
// leaves its scope (before the destructors declared earlier in the scope wait for the device).
TEST(DataParallel, DeviceCollectivesAreAbortedOnlyWhenAnErrorUnwinds) {
  auto comm = std::make_shared<CountingComm>();
  DataParallel dp(comm, DistConfig{}, Device::CPU);
  { const DataParallel::AbortOnUnwind guard(dp); }
  EXPECT_EQ(comm->device_aborts, 0);
  EXPECT_THROW(
      {
        const DataParallel::AbortOnUnwind guard(dp);
        TTQ_FAIL("a failed step");
      },
      Error);
  EXPECT_EQ(comm->device_aborts, 1);
  // Made while another exception is already in flight (a destructor during unwinding): only a
  // new one counts.
  try {
    struct Inner {
      DataParallel& dp;
      ~Inner() { const DataParallel::AbortOnUnwind guard(dp); }
    } inner{dp};
    TTQ_FAIL("outer");
  } catch (const Error&) {
  }
  EXPECT_EQ(comm->device_aborts, 1);
}

TEST(TcpBackend, RanksThatDisagreeOnTheirCollectivesGetAnError) {
  TempDir dir;
  std::string err0;
  run_ranks(2, dir.file("rdv"), 5.0, [&](int r, std::shared_ptr<Communicator> c) {
    Tensor t = Tensor::full({r == 0 ? 10 : 11}, 1.0f);
    const std::string e = tt::error_of([&] { c->all_reduce_average(t); });
    if (r == 0) err0 = e;
  });
  EXPECT_NE(err0.find("disagree"), std::string::npos) << err0;
}

// ---- synchronised batch norm -----------------------------------------------------------------

TEST(SyncBatchNorm, TwoHalvesMatchOneBatch) {
  TempDir dir;
  const int64_t N = 6, C = 3, H = 4, W = 5;
  const Tensor x = tt::random_tensor({N, C, H, W}, 1, -2.0f, 3.0f);
  const Tensor dy = tt::random_tensor({N, C, H, W}, 2);
  // One rank, the whole batch.
  BatchNorm full(C, 2, 1e-5f, 0.1f);
  full.weight().value.copy_from(tt::random_tensor({C}, 3, 0.5f, 1.5f));
  full.bias().value.copy_from(tt::random_tensor({C}, 4));
  const Tensor y_full = full.forward(x);
  const Tensor dx_full = full.backward(dy);
  std::vector<Tensor> y(2), dx(2), dgamma(2), rm(2), rv(2);
  run_ranks(2, dir.file("rdv"), 30, [&](int r, std::shared_ptr<Communicator> c) {
    BatchNorm bn(C, 2, 1e-5f, 0.1f);
    bn.weight().value.copy_from(full.weight().value);
    bn.bias().value.copy_from(full.bias().value);
    bn.set_sync(c);
    const Tensor xs = x.slice(r * N / 2, (r + 1) * N / 2).clone();
    const Tensor dys = dy.slice(r * N / 2, (r + 1) * N / 2).clone();
    y[r] = bn.forward(xs).clone();
    dx[r] = bn.backward(dys).clone();
    dgamma[r] = bn.weight().grad.clone();
    rm[r] = bn.running_mean().clone();
    rv[r] = bn.running_var().clone();
  });
  for (int r = 0; r < 2; ++r) {
    EXPECT_TRUE(tt::all_close(y[r], y_full.slice(r * N / 2, (r + 1) * N / 2).clone(), 1e-5, 1e-5));
    EXPECT_TRUE(tt::all_close(rm[r], full.running_mean(), 1e-6, 1e-6));
    EXPECT_TRUE(tt::all_close(rv[r], full.running_var(), 1e-6, 1e-6));
  }
  // Each rank's dy is its own half-batch loss's gradient: twice the global one, so dx is twice
  // the full batch's (what the gradient average then halves for every parameter before it).
  for (int r = 0; r < 2; ++r) {
    Tensor want = dx_full.slice(r * N / 2, (r + 1) * N / 2).clone();
    EXPECT_TRUE(tt::all_close(dx[r], want, 1e-5, 1e-4));
  }
  Tensor dg_sum = dgamma[0].clone();
  ops::add_accumulate(dg_sum, dgamma[1]);
  EXPECT_TRUE(tt::all_close(dg_sum, full.weight().grad, 1e-5, 1e-4));
}

// ---- evaluation and training -------------------------------------------------------------------

TEST(DataParallel, EvaluationCountsEverySampleOnce) {
  TempDir dir;
  const InputSpec spec{1, 8, 8, 4};
  auto test = std::make_shared<SyntheticDataset>(spec, 1001, 1.0f, 5, int64_t(1) << 40);
  Model ref = build_model(json{{"name", "small_convnet"}}, spec, 9);
  const EvalResult single = evaluate(*ref.net, test, 100, 0);
  ASSERT_EQ(single.samples, 1001);
  std::vector<EvalResult> got(3);
  // 1001 samples in global batches of 300: the last one (101) splits 34/34/33.
  run_ranks(3, dir.file("rdv"), 30, [&](int r, std::shared_ptr<Communicator> c) {
    Model m = build_model(json{{"name", "small_convnet"}}, spec, 9);
    got[r] = evaluate(*m.net, test, 100, 1, c.get());
  });
  for (int r = 0; r < 3; ++r) {
    EXPECT_EQ(got[r].samples, 1001);
    EXPECT_DOUBLE_EQ(got[r].top1_error, single.top1_error);
    EXPECT_DOUBLE_EQ(got[r].top5_error, single.top5_error);
    EXPECT_NEAR(got[r].loss, single.loss, 1e-9 * std::abs(single.loss) + 1e-12);
  }
}

// A rank whose outputs are not finite: every rank stops with the cause (the check follows the sums
// over the ranks), not only that rank while the others see a closed connection.
TEST(DataParallel, ANonFiniteEvaluationStopsEveryRankWithTheCause) {
  TempDir dir;
  const InputSpec spec{1, 8, 8, 4};
  auto test = std::make_shared<SyntheticDataset>(spec, 64, 1.0f, 5, int64_t(1) << 40);
  std::vector<std::string> err(2);
  run_ranks(2, dir.file("rdv"), 30, [&](int r, std::shared_ptr<Communicator> c) {
    Model m = build_model(json{{"name", "small_convnet"}}, spec, 9);
    if (r == 1) m.net->named_parameters().back().param->value.data<float>()[0] = std::nanf("");
    err[r] = tt::error_of([&] { evaluate(*m.net, test, 16, 0, c.get()); });
  });
  EXPECT_NE(err[0].find("evaluation: the loss is not finite on another rank"), std::string::npos) << err[0];
  EXPECT_NE(err[1].find("evaluation: the loss is not finite;"), std::string::npos) << err[1];
}

// A step that overflows the weights (a learning rate beyond float's range) right before a
// checkpoint: every rank stops naming the diverged parameter, and nothing is written.
TEST(DataParallel, ADivergedModelStopsEveryRankBeforeTheCheckpoint) {
  TempDir dir;
  json j = read_json_file(std::string(TTQ_SOURCE_DIR) + "/configs/synthetic_smoke.json");
  j["output_dir"] = dir.file("run");
  j["data"]["workers"] = 0;
  j["checkpoint"] = {{"every_steps", 1}};
  j["stages"][0]["optimizer"]["lr"] = 1e39;  // inf as the kernels' float: step 1's loss is finite, its update is not
  const ExperimentConfig cfg = parse_experiment(j);
  std::vector<std::string> err(2);
  run_ranks(2, dir.file("rdv"), 30, [&](int r, std::shared_ptr<Communicator> c) {
    TrainOptions o;
    o.quiet = true;
    o.comm = c;
    err[r] = tt::error_of([&] { train_experiment(cfg, o); });
  });
  for (int r = 0; r < 2; ++r)
    EXPECT_NE(err[r].find("(the model diverged)"), std::string::npos) << "rank " << r << ": " << err[r];
  EXPECT_FALSE(std::filesystem::exists(dir.file("run/last.safetensors")));
}

// Only rank 0 writes run folders, and another rank's may be another folder (a node's own disk):
// every rank takes rank 0's answer to "does the folder hold a run", so all refuse a new run there
// together (rank 1's folder holds none) and all start one in a folder only rank 1 sees a run in.
TEST(DataParallel, RanksTakeRankZerosViewOfTheRunFolder) {
  TempDir dir;
  std::filesystem::create_directories(dir.file("r0/a"));
  std::filesystem::create_directories(dir.file("r1/b"));
  tt::write_bytes(dir.file("r0/a/last.safetensors"), "x");
  tt::write_bytes(dir.file("r1/b/last.safetensors"), "x");
  std::vector<int64_t> first(2, -2);
  std::vector<std::string> err(2), started(2);
  run_ranks(2, dir.file("rdv"), 30, [&](int r, std::shared_ptr<Communicator> c) {
    const std::string mine = dir.file(r == 0 ? "r0" : "r1");
    first[r] = first_folder_holding_a_run({mine + "/b", mine + "/a"}, *c);
    json j = read_json_file(std::string(TTQ_SOURCE_DIR) + "/configs/synthetic_smoke.json");
    j["output_dir"] = mine + "/a";
    j["data"]["workers"] = 0;
    TrainOptions o;
    o.quiet = true;
    o.comm = c;
    err[r] = tt::error_of([&] { train_experiment(parse_experiment(j), o); });
    j["output_dir"] = mine + "/b";
    j["stages"].erase(1);
    j["stages"][0]["epochs"] = 1;
    j["data"]["synthetic"]["train"] = 128;
    started[r] = tt::error_of([&] { train_experiment(parse_experiment(j), o); });
  });
  EXPECT_EQ(first[0], 1);
  EXPECT_EQ(first[1], 1);
  for (int r = 0; r < 2; ++r) {
    EXPECT_NE(err[r].find("/a' already holds a run"), std::string::npos) << "rank " << r << ": " << err[r];
    EXPECT_EQ(started[r], "<no error>") << "rank " << r;
  }
  EXPECT_TRUE(std::filesystem::exists(dir.file("r0/b/stages.json")));
  EXPECT_EQ(tt::read_bytes(dir.file("r1/b/last.safetensors")), "x");  // rank 1 writes nothing
}

TEST(DataParallel, TwoRanksMatchOneRankWithTheGlobalBatch) {
  // Synchronised batch norm makes 2 x 16 the same computation as 1 x 32 (up to rounding), full
  // precision and TTQ with the deferred ternary backward; several gradient buckets.
  const tt::DpRun one = tt::train_small_convnet(std::make_shared<SingleProcessCommunicator>(), 32, false, 6, 6);
  TempDir dir;
  std::vector<tt::DpRun> two(2);
  run_ranks(2, dir.file("rdv"), 60, [&](int r, std::shared_ptr<Communicator> c) {
    two[r] = tt::train_small_convnet(c, 16, true, 6, 6);
  });
  ASSERT_EQ(two[0].tensors.size(), one.tensors.size());
  EXPECT_GE(two[0].buckets, 3u);
  std::string where;
  const double worst = tt::worst_mismatch(two[0], one, 1e-3, &where);
  std::printf("2 ranks x 16 vs 1 rank x 32, %zu buckets: largest relative difference %.3g (%s)\n", two[0].buckets,
              worst, where.c_str());
  EXPECT_LT(worst, 2e-4) << "at " << where;
  // The replicas are identical, bit for bit (everyone gets the hub's sums).
  EXPECT_EQ(tt::worst_mismatch(two[1], two[0], 0.0), 0.0);
  // Per-rank batch norm is a different computation (but the replicas still agree).
  std::vector<tt::DpRun> per_rank(2);
  run_ranks(2, dir.file("rdv2"), 60, [&](int r, std::shared_ptr<Communicator> c) {
    per_rank[r] = tt::train_small_convnet(c, 16, false, 6, 6);
  });
  EXPECT_EQ(tt::worst_mismatch(per_rank[1], per_rank[0], 0.0), 0.0);
  EXPECT_GT(tt::worst_mismatch(per_rank[0], one, 1e-3), 1e-3);
}

TEST(DataParallel, Bf16ReplicasAgreeAndFollowOneRank) {
  // precision bf16: gradients are f32 (what the reducer averages), so the replicas stay identical;
  // against one rank with the global batch the bf16 roundings of differently split batches drift
  // apart a little (a tolerance of bf16's size, not f32's).
  const tt::DpRun one =
      tt::train_small_convnet(std::make_shared<SingleProcessCommunicator>(), 32, false, 6, 6,
                              ComputeFormat(DType::BF16));
  TempDir dir;
  std::vector<tt::DpRun> two(2);
  run_ranks(2, dir.file("rdv"), 60, [&](int r, std::shared_ptr<Communicator> c) {
    two[r] = tt::train_small_convnet(c, 16, true, 6, 6, ComputeFormat(DType::BF16));
  });
  EXPECT_EQ(tt::worst_mismatch(two[1], two[0], 0.0), 0.0);
  // Per tensor ||two - one|| / ||one||: up to ~4% here after 12 steps (conv1, bn1.bias), where a
  // wrong average or wrong statistics would give tens of percent; f32 agrees to 2e-4.
  std::string where;
  const double worst = tt::worst_relative_l2(two[0], one, &where);
  std::printf("bf16: 2 ranks x 16 vs 1 rank x 32: largest relative L2 difference of a tensor %.3g (%s)\n", worst,
              where.c_str());
  EXPECT_LT(worst, 0.1) << where;
}

TEST(DataParallel, ChannelsLastTrainsLikeContiguous) {
  // memory_format channels_last with synchronised batch norm over 2 ranks: the CPU runs every
  // channels-last op on permuted copies, so the runs are bitwise those in contiguous layout.
  TempDir dir;
  std::vector<tt::DpRun> contiguous(2), channels_last(2);
  run_ranks(2, dir.file("rdv1"), 60, [&](int r, std::shared_ptr<Communicator> c) {
    contiguous[r] = tt::train_small_convnet(c, 16, true, 4, 4, ComputeFormat(DType::BF16));
  });
  run_ranks(2, dir.file("rdv2"), 60, [&](int r, std::shared_ptr<Communicator> c) {
    channels_last[r] = tt::train_small_convnet(c, 16, true, 4, 4, {DType::BF16, Layout::ChannelsLast});
  });
  for (int r = 0; r < 2; ++r) {
    EXPECT_EQ(channels_last[r].losses, contiguous[r].losses) << "rank " << r;
    EXPECT_EQ(tt::worst_mismatch(channels_last[r], contiguous[r], 0.0), 0.0) << "rank " << r;
  }
}

TEST(DataParallel, ResumeRefusesAnotherNumberOfRanks) {
  TempDir dir;
  json j = read_json_file(std::string(TTQ_SOURCE_DIR) + "/configs/synthetic_smoke.json");
  j["output_dir"] = dir.file("run");
  j["data"]["workers"] = 0;
  j["checkpoint"] = {{"every_steps", 5}};
  const ExperimentConfig cfg = parse_experiment(j);
  run_ranks(2, dir.file("rdv"), 60, [&](int, std::shared_ptr<Communicator> c) {
    TrainOptions o;
    o.quiet = true;
    o.comm = c;
    o.stop_after_steps = 7;
    train_experiment(cfg, o);
  });
  const Checkpoint ck = read_checkpoint(dir.file("run/last.safetensors"));
  EXPECT_EQ(ck.state.world, 2);
  EXPECT_EQ(ck.state.global_step, 5);
  TrainOptions o;
  o.quiet = true;
  o.resume = true;
  o.comm = std::make_shared<SingleProcessCommunicator>();
  const std::string err = tt::error_of([&] { train_experiment(cfg, o); });
  EXPECT_NE(err.find("was written by a run of 2 ranks, this run has 1"), std::string::npos) << err;
}

TEST(DataParallel, ResumedRunEndsWhereTheUninterruptedOneDoes) {
  TempDir dir;
  json j = read_json_file(std::string(TTQ_SOURCE_DIR) + "/configs/synthetic_smoke.json");
  j["data"]["workers"] = 0;
  j["checkpoint"] = {{"every_steps", 10}};
  j["stages"][0]["epochs"] = 1;
  j["stages"][1]["epochs"] = 1;
  auto run = [&](const std::string& out, int64_t stop, bool resume, const std::string& rdv) {
    json k = j;
    k["output_dir"] = out;
    const ExperimentConfig cfg = parse_experiment(k);
    run_ranks(2, rdv, 60, [&](int, std::shared_ptr<Communicator> c) {
      TrainOptions o;
      o.quiet = true;
      o.comm = c;
      o.stop_after_steps = stop;
      o.resume = resume;
      train_experiment(cfg, o);
    });
  };
  run(dir.file("a"), 0, false, dir.file("r1"));
  run(dir.file("b"), 23, false, dir.file("r2"));  // stops 3 steps past the checkpoint at step 20
  run(dir.file("b"), 0, true, dir.file("r3"));
  const Checkpoint a = read_checkpoint(dir.file("a/last.safetensors"));
  const Checkpoint b = read_checkpoint(dir.file("b/last.safetensors"));
  ASSERT_EQ(a.file.names(), b.file.names());
  for (const auto& name : a.file.names()) {
    const Tensor ta = a.file.tensor(name), tb = b.file.tensor(name);
    ASSERT_EQ(ta.nbytes(), tb.nbytes()) << name;
    EXPECT_EQ(std::memcmp(ta.raw(), tb.raw(), ta.nbytes()), 0) << name;
  }
  // The epoch records (train loss summed over ranks, test error) repeat exactly.
  auto epochs = [](const std::string& path) {
    std::ifstream in(path);
    std::vector<std::string> out;
    for (std::string line; std::getline(in, line);) {
      json r = json::parse(line);
      if (r["type"] == "epoch") out.push_back(std::to_string(r["train_loss"].get<double>()) + " " +
                                              std::to_string(r["test_top1_error"].get<double>()));
    }
    return out;
  };
  EXPECT_EQ(epochs(dir.file("a/metrics.jsonl")), epochs(dir.file("b/metrics.jsonl")));
}
