// Data parallel with the model on the GPU: two ranks as threads sharing the one GPU over the tcp
// backend (NCCL needs a GPU per rank), so the gradient reducer's device-side buckets, the
// synchronised batch norm's device pieces and the TTQ stage entered on the GPU all run. Two ranks
// x 16 must match one rank x 32 as on the CPU (tests/test_dist.cpp), the replicas must agree bit
// for bit, and the GPU runs must follow the CPU's. Skips where no GPU (or no CUDA build) exists.
#include <gtest/gtest.h>

#ifdef TTQ_HAVE_CUDA

#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "kernels/device.h"
#include "tests/dist_test_util.h"
#include "tests/test_util.h"

using namespace ttq;
using ttq::testing::run_ranks;
using ttq::testing::TempDir;
namespace tt = ttq::testing;

TEST(GpuDataParallel, TwoRanksOnTheGpuMatchOneRankWithTheGlobalBatch) {
  if (cuda_device_count() == 0) GTEST_SKIP() << cuda_device_summary();
  for (const ComputeFormat compute : {ComputeFormat(DType::F32), ComputeFormat(DType::BF16)}) {
    const bool f32 = compute.dtype == DType::F32;
    SCOPED_TRACE(f32 ? "fp32" : "bf16");
    const tt::DpRun one = tt::train_small_convnet(std::make_shared<SingleProcessCommunicator>(), 32, false, 6, 6,
                                                  compute, Device::CUDA);
    const tt::DpRun cpu = tt::train_small_convnet(std::make_shared<SingleProcessCommunicator>(), 32, false, 6, 6,
                                                  compute, Device::CPU);
    TempDir dir;
    std::vector<tt::DpRun> two(2);
    // Both ranks local rank 0: they share GPU 0 (DataParallel binds each rank to its local rank's GPU).
    run_ranks(
        2, dir.file("rdv"), 60,
        [&](int r, std::shared_ptr<Communicator> c) {
          two[r] = tt::train_small_convnet(c, 16, true, 6, 6, compute, Device::CUDA);
        },
        0);
    ASSERT_EQ(two[0].tensors.size(), one.tensors.size());
    EXPECT_GE(two[0].buckets, 3u);
    EXPECT_EQ(tt::worst_mismatch(two[1], two[0], 0.0), 0.0) << "the replicas differ";
    // f32: elementwise, as the CPU test; bf16: differently split batches round differently, so per
    // tensor relative L2 (tests/test_dist.cpp Bf16ReplicasAgreeAndFollowOneRank).
    std::string where, where_cpu;
    const double worst = f32 ? tt::worst_mismatch(two[0], one, 1e-3, &where) : tt::worst_relative_l2(two[0], one, &where);
    const double worst_cpu =
        f32 ? tt::worst_mismatch(one, cpu, 1e-3, &where_cpu) : tt::worst_relative_l2(one, cpu, &where_cpu);
    std::printf("GPU %s: 2 ranks x 16 vs 1 rank x 32: %.3g (%s); 1 rank GPU vs CPU: %.3g (%s)\n",
                f32 ? "fp32" : "bf16", worst, where.c_str(), worst_cpu, where_cpu.c_str());
    EXPECT_LT(worst, f32 ? 2e-4 : 0.1) << "at " << where;
    EXPECT_LT(worst_cpu, f32 ? 2e-3 : 0.1) << "at " << where_cpu;
  }
}

#else
TEST(GpuDataParallel, NotBuilt) { GTEST_SKIP() << "built without the CUDA backend"; }
#endif  // TTQ_HAVE_CUDA
