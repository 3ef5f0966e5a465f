// Data-parallel training over MPI, run by ctest as `mpirun -np 2 test_dist_mpi`: all-reduce
// correctness over sizes (odd ones included) and identical results on every rank, sharded
// evaluation counting every test sample once, and 2 ranks with per-rank batch B giving the same
// weights as 1 rank with batch 2B (synchronised batch norm, full precision then TTQ), through the
// training step and through a whole experiment. Its own main(): MPI is set up once for all tests.
#include <gtest/gtest.h>

#include <fstream>

#include <cmath>
#include <cstring>
#include <filesystem>

#include "engine/dist/communicator.h"
#include "engine/train/checkpoint.h"
#include "engine/train/experiment.h"
#include "engine/train/trainer.h"
#include "tests/dist_test_util.h"
#include "tests/test_util.h"

using namespace ttq;
namespace tt = ttq::testing;

namespace {

std::shared_ptr<Communicator> g_comm;

// rank 0's bytes on every rank equal this rank's?
bool same_on_every_rank(const void* p, size_t bytes) {
  std::vector<char> root(static_cast<const char*>(p), static_cast<const char*>(p) + bytes);
  g_comm->broadcast(root.data(), bytes, 0);
  int64_t differs = std::memcmp(root.data(), p, bytes) != 0;
  g_comm->all_reduce_sum(&differs, 1, "the differences");
  return differs == 0;
}

bool same_run_on_every_rank(const tt::DpRun& run) {
  bool same = true;
  for (const auto& [name, v] : run.tensors) same = same_on_every_rank(v.data(), v.size() * sizeof(float)) && same;
  return same;
}

// A folder made by rank 0 and known to every rank (removed by rank 0 at the end).
class SharedTempDir {
 public:
  SharedTempDir() {
    char path[4096] = {0};
    if (g_comm->is_root()) {
      dir_ = std::make_unique<tt::TempDir>();
      std::strncpy(path, dir_->path().c_str(), sizeof path - 1);
    }
    g_comm->broadcast(path, sizeof path, 0);
    path_ = path;
  }
  ~SharedTempDir() { g_comm->barrier(); }
  std::string file(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::unique_ptr<tt::TempDir> dir_;
  std::string path_;
};

}  // namespace

TEST(MpiBackend, RanksAndHosts) {
  EXPECT_STREQ(g_comm->backend(), "mpi");
  EXPECT_EQ(g_comm->world(), 2);
  EXPECT_EQ(g_comm->local_world(), 2);  // one machine
  EXPECT_EQ(g_comm->local_rank(), g_comm->rank());
}

TEST(MpiBackend, AllReduceOverSizesIncludingOddOnes) {
  const int r = g_comm->rank(), w = g_comm->world();
  auto value = [](int rank, int64_t i) { return static_cast<float>((i % 97) * 0.25 + rank * 1.5 - (i % 13)); };
  for (int64_t n : {int64_t{1}, int64_t{7}, int64_t{1000}, int64_t{262147}, int64_t{3000001}}) {
    Tensor t = Tensor::empty({n});
    for (int64_t i = 0; i < n; ++i) t.data<float>()[i] = value(r, i);
    g_comm->all_reduce_average(t);
    int64_t bad = 0;
    for (int64_t i = 0; i < n; ++i) {
      double want = 0.0;
      for (int q = 0; q < w; ++q) want += value(q, i);
      want /= w;
      bad += std::abs(t.data<float>()[i] - want) > 1e-6 * (1.0 + std::abs(want));
    }
    EXPECT_EQ(bad, 0) << "size " << n;
    EXPECT_TRUE(same_on_every_rank(t.raw(), t.nbytes())) << "size " << n;
  }
  double d[2] = {0.5 * r, 1.0};
  g_comm->all_reduce_sum(d, 2, "test doubles");
  EXPECT_DOUBLE_EQ(d[0], 0.5);
  EXPECT_DOUBLE_EQ(d[1], 2.0);
  int64_t k[2] = {r, int64_t(1) << 40};
  g_comm->all_reduce_sum(k, 2, "test integers");
  EXPECT_EQ(k[0], 1);
  EXPECT_EQ(k[1], int64_t(2) << 40);
  std::vector<char> bytes(100003, r == 1 ? 'x' : 'o');
  g_comm->broadcast(bytes.data(), bytes.size(), 1);
  EXPECT_EQ(std::count(bytes.begin(), bytes.end(), 'x'), 100003);
  g_comm->barrier();
}

TEST(MpiDataParallel, EvaluationCountsEverySampleOnce) {
  const InputSpec spec{1, 8, 8, 4};
  auto test = std::make_shared<SyntheticDataset>(spec, 1001, 1.0f, 5, int64_t(1) << 40);
  Model m = build_model(json{{"name", "small_convnet"}}, spec, 9);
  const EvalResult single = evaluate(*m.net, test, 100, 0);
  const EvalResult dist = evaluate(*m.net, test, 100, 1, g_comm.get());  // 1001 = 4 global batches of 200, the last 1
  EXPECT_EQ(single.samples, 1001);
  EXPECT_EQ(dist.samples, 1001);
  EXPECT_DOUBLE_EQ(dist.top1_error, single.top1_error);
  EXPECT_DOUBLE_EQ(dist.top5_error, single.top5_error);
  EXPECT_NEAR(dist.loss, single.loss, 1e-6 * std::abs(single.loss));
}

TEST(MpiDataParallel, TwoRanksMatchOneRankWithTheGlobalBatch) {
  const tt::DpRun one = tt::train_small_convnet(std::make_shared<SingleProcessCommunicator>(), 32, false, 6, 6);
  const tt::DpRun two = tt::train_small_convnet(g_comm, 16, true, 6, 6);
  EXPECT_GE(two.buckets, 3u);
  std::string where;
  const double worst = tt::worst_mismatch(two, one, 1e-3, &where);
  if (g_comm->is_root())
    std::printf("2 ranks x 16 vs 1 rank x 32 (sync BN, 6 + 6 steps, %zu buckets): largest relative difference %.3g (%s)\n",
                two.buckets, worst, where.c_str());
  EXPECT_LT(worst, 2e-4) << "at " << where;
  EXPECT_TRUE(same_run_on_every_rank(two));  // the replicas stay identical
  // Per-rank batch norm: another computation, but the replicas still agree.
  const tt::DpRun per_rank = tt::train_small_convnet(g_comm, 16, false, 6, 6);
  EXPECT_TRUE(same_run_on_every_rank(per_rank));
  EXPECT_GT(tt::worst_mismatch(per_rank, one, 1e-3), 1e-3);
}

TEST(MpiDataParallel, ExperimentMatchesOneProcessWithTheGlobalBatch) {
  SharedTempDir dir;
  json j = read_json_file(std::string(TTQ_SOURCE_DIR) + "/configs/synthetic_smoke.json");
  j["data"]["workers"] = 1;
  j["stages"][0]["epochs"] = 1;
  j["stages"][1]["epochs"] = 1;
  j["distributed"] = {{"sync_bn", true}, {"bucket_mb", 0.004}, {"first_bucket_mb", 0.001}};
  json two = j, one = j;
  two["output_dir"] = dir.file("two");
  for (auto& st : two["stages"]) st["batch_size"] = 16;
  one["output_dir"] = dir.file("one");
  one["distributed"]["backend"] = "none";
  for (auto& st : one["stages"]) st["batch_size"] = 32;
  TrainOptions o;
  o.quiet = true;
  o.comm = g_comm;
  const RunSummary s2 = train_experiment(parse_experiment(two), o);
  if (g_comm->is_root()) {
    TrainOptions o1;
    o1.quiet = true;
    o1.comm = std::make_shared<SingleProcessCommunicator>();
    const RunSummary s1 = train_experiment(parse_experiment(one), o1);
    const Checkpoint a = read_checkpoint(dir.file("two/last.safetensors"));
    const Checkpoint b = read_checkpoint(dir.file("one/last.safetensors"));
    EXPECT_EQ(a.state.world, 2);
    EXPECT_EQ(b.state.world, 1);
    EXPECT_EQ(a.state.global_step, b.state.global_step);
    ASSERT_EQ(a.file.names(), b.file.names());
    double worst = 0.0;
    std::string where;
    for (const auto& name : a.file.names()) {
      const Tensor ta = a.file.tensor(name), tb = b.file.tensor(name);
      ASSERT_EQ(ta.numel(), tb.numel()) << name;
      if (ta.dtype() != DType::F32) continue;
      for (int64_t i = 0; i < ta.numel(); ++i) {
        const double x = ta.data<float>()[i], y = tb.data<float>()[i];
        const double r = std::abs(x - y) / (1e-3 + std::abs(y));
        if (r > worst) {
          worst = r;
          where = name;
        }
      }
    }
    std::printf("experiment, 2 ranks x 16 vs 1 rank x 32: largest relative difference %.3g (%s)\n", worst, where.c_str());
    EXPECT_LT(worst, 1e-3) << where;
    EXPECT_NEAR(s2.stages.back().test_top1_error, s1.stages.back().test_top1_error, 2.0 / 512);
    // The step records carry the loss over all ranks: that of the one process with the global batch.
    auto step_losses = [](const std::string& path) {
      std::vector<double> out;
      std::ifstream in(path);
      std::string line;
      while (std::getline(in, line)) {
        const json r = json::parse(line);
        if (r.at("type") == "step") out.push_back(r.at("loss").get<double>());
      }
      return out;
    };
    const std::vector<double> l2 = step_losses(dir.file("two/metrics.jsonl")), l1 = step_losses(dir.file("one/metrics.jsonl"));
    ASSERT_FALSE(l1.empty());
    ASSERT_EQ(l2.size(), l1.size());
    for (size_t i = 0; i < l1.size(); ++i) EXPECT_NEAR(l2[i], l1[i], 1e-3 * (1 + l1[i])) << "step record " << i;
  }
}

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  DistConfig dc;
  dc.backend = "mpi";
  dc.timeout_s = 60;
  int rc = 1;
  try {
    g_comm = make_communicator(dc, false);
    if (g_comm->world() != 2) {
      std::fprintf(stderr, "test_dist_mpi: run it with mpirun -np 2 (got %d ranks)\n", g_comm->world());
      shutdown_communication();
      return 1;
    }
    rc = RUN_ALL_TESTS();
    int64_t failed = rc != 0;
    g_comm->all_reduce_sum(&failed, 1, "the failures");  // every rank fails when one does
    rc = failed ? 1 : 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "test_dist_mpi: %s\n", e.what());
    if (g_comm) g_comm->abort(e.what());
    return 1;
  }
  g_comm.reset();
  shutdown_communication();
  return rc;
}
