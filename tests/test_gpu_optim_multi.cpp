// The one-launch multi-tensor SGD / Adam on the GPU against the per-tensor CPU updates, over
// tensors whose sizes straddle the chunk boundaries, with a different lr / wd per group.
#include <gtest/gtest.h>

#include <cmath>

#include "kernels/device.h"
#include "kernels/ops.h"
#include "kernels/optim_multi.h"
#include "tests/test_util.h"

using namespace ttq;

namespace {

const int64_t kSizes[] = {1, 7, 4095, 4096, 4097, 100000, 0, 33};

struct Set {
  std::vector<Tensor> p, g, s1, s2;
  std::vector<ops::OptimTensorRefs> refs(bool momentum, bool adam) {
    std::vector<ops::OptimTensorRefs> r;
    for (size_t i = 0; i < p.size(); ++i)
      r.push_back({&p[i], &g[i], (momentum || adam) ? &s1[i] : nullptr, adam ? &s2[i] : nullptr,
                   static_cast<int>(i % ops::kParamGroups)});
    return r;
  }
  Set to(Device d) const {
    Set o;
    for (size_t i = 0; i < p.size(); ++i) {
      o.p.push_back(p[i].to(d));
      o.g.push_back(g[i].to(d));
      o.s1.push_back(s1[i].to(d));
      o.s2.push_back(s2[i].to(d));
    }
    return o;
  }
};

Set make_set(uint64_t seed) {
  Set s;
  for (int64_t n : kSizes) {
    s.p.push_back(ttq::testing::random_tensor({n}, seed++));
    s.g.push_back(ttq::testing::random_tensor({n}, seed++));
    s.s1.push_back(ttq::testing::random_tensor({n}, seed++));
    // Second moments are >= 0; away from 0, so Adam's step (lr / sqrt(v)) does not magnify ulps.
    s.s2.push_back(ttq::testing::random_tensor({n}, seed++, 0.1f, 1.0f));
  }
  return s;
}

ops::GroupRates rates() {
  ops::GroupRates r;
  r.lr = {0.1f, 0.05f, 0.2f, 0.01f, 0.03f, 0.15f, 0.07f, 0.02f};  // every group, so every tensor moves
  r.wd = {1e-4f, 0.0f, 0.0f, 2e-4f, 5e-4f, 0.0f, 1e-3f, 3e-4f};
  return r;
}

void expect_close(const Set& gpu, const Set& cpu, bool adam) {
  for (size_t i = 0; i < cpu.p.size(); ++i) {
    SCOPED_TRACE("tensor " + std::to_string(i) + " of " + std::to_string(cpu.p[i].numel()));
    // The same per-element math; nvcc may contract to FMA where g++ does not: ~1 ulp.
    EXPECT_TRUE(ttq::testing::all_close(gpu.p[i].to(Device::CPU), cpu.p[i], 1e-6, 1e-6));
    EXPECT_TRUE(ttq::testing::all_close(gpu.s1[i].to(Device::CPU), cpu.s1[i], 1e-6, 1e-6));
    if (adam) {
      EXPECT_TRUE(ttq::testing::all_close(gpu.s2[i].to(Device::CPU), cpu.s2[i], 1e-6, 1e-6));
    }
  }
}

}  // namespace

TEST(GpuOptimMulti, SgdMatchesTheCpuInOneLaunch) {
  if (cuda_device_count() == 0) GTEST_SKIP() << cuda_device_summary();
  for (bool nesterov : {false, true}) {
    Set cpu = make_set(1);
    Set gpu = cpu.to(Device::CUDA);
    ops::MultiTensorOptimizer mc(cpu.refs(true, false)), mg(gpu.refs(true, false));
    for (bool first : {true, false, false}) {
      mc.sgd(rates(), 0.9f, nesterov, first);
      mg.sgd(rates(), 0.9f, nesterov, first);
    }
    EXPECT_EQ(mg.launches(), 1);
    expect_close(gpu, cpu, false);
  }
}

TEST(GpuOptimMulti, SgdWithoutMomentum) {
  if (cuda_device_count() == 0) GTEST_SKIP() << cuda_device_summary();
  Set cpu = make_set(5);
  Set gpu = cpu.to(Device::CUDA);
  ops::MultiTensorOptimizer mc(cpu.refs(false, false)), mg(gpu.refs(false, false));
  mc.sgd(rates(), 0.0f, false, true);
  mg.sgd(rates(), 0.0f, false, true);
  expect_close(gpu, cpu, false);
}

TEST(GpuOptimMulti, AdamMatchesTheCpu) {
  if (cuda_device_count() == 0) GTEST_SKIP() << cuda_device_summary();
  Set cpu = make_set(9);
  Set gpu = cpu.to(Device::CUDA);
  ops::MultiTensorOptimizer mc(cpu.refs(false, true)), mg(gpu.refs(false, true));
  for (int t = 1; t <= 3; ++t) {
    const float bc1 = 1.0f - std::pow(0.9f, t), bc2 = 1.0f - std::pow(0.999f, t);
    mc.adam(rates(), 0.9f, 0.999f, 1e-5f, bc1, bc2);
    mg.adam(rates(), 0.9f, 0.999f, 1e-5f, bc1, bc2);
  }
  expect_close(gpu, cpu, true);
}

TEST(GpuOptimMulti, NoticesReplacedStorage) {
  if (cuda_device_count() == 0) GTEST_SKIP() << cuda_device_summary();
  Set cpu = make_set(13);
  Set gpu = cpu.to(Device::CUDA);
  ops::MultiTensorOptimizer mc(cpu.refs(true, false)), mg(gpu.refs(true, false));
  mc.sgd(rates(), 0.9f, false, true);
  mg.sgd(rates(), 0.9f, false, true);
  // A checkpoint load may give a state tensor new storage: the table must follow it.
  Tensor fresh = ttq::testing::random_tensor({kSizes[2]}, 99);
  cpu.s1[2] = fresh;
  gpu.s1[2] = fresh.to(Device::CUDA);
  mc.sgd(rates(), 0.9f, false, false);
  mg.sgd(rates(), 0.9f, false, false);
  expect_close(gpu, cpu, false);
}
