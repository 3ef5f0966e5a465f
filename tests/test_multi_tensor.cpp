// The multi-tensor launch plan: every element exactly once, limits respected, 64-bit sizes.
#include <gtest/gtest.h>

#include <map>

#include "engine/core/error.h"
#include "engine/core/rng.h"
#include "kernels/multi_tensor.h"
#ifdef TTQ_HAVE_CUDA
#include "kernels/cuda/ttq_multi.h"
#endif

using namespace ttq;

namespace {

void check_plan(const std::vector<int64_t>& sizes, const MultiTensorLimits& lim) {
  const auto plan = plan_multi_tensor(sizes, lim);
  std::map<int, std::vector<int64_t>> chunks_seen;  // tensor -> chunk indices in order
  for (const auto& l : plan) {
    ASSERT_LE(static_cast<int>(l.tensors.size()), lim.max_tensors);
    ASSERT_LE(static_cast<int>(l.block_slot.size()), lim.max_blocks);
    ASSERT_EQ(l.block_slot.size(), l.block_chunk.size());
    ASSERT_FALSE(l.block_slot.empty());
    for (size_t b = 0; b < l.block_slot.size(); ++b) {
      ASSERT_GE(l.block_slot[b], 0);
      ASSERT_LT(l.block_slot[b], static_cast<int>(l.tensors.size()));
      chunks_seen[l.tensors[l.block_slot[b]]].push_back(l.block_chunk[b]);
    }
  }
  for (size_t t = 0; t < sizes.size(); ++t) {
    const int64_t want = (sizes[t] + lim.chunk - 1) / lim.chunk;
    const auto& got = chunks_seen[static_cast<int>(t)];
    ASSERT_EQ(static_cast<int64_t>(got.size()), want) << "tensor " << t;
    for (int64_t c = 0; c < want; ++c) EXPECT_EQ(got[c], c) << "tensor " << t;  // each chunk once, in order
  }
}

}  // namespace

TEST(MultiTensorPlan, CoversEveryChunkOnceWithinLimits) {
  check_plan({}, {});
  check_plan({0, 0}, {});
  check_plan({1}, {});
  check_plan({5, 0, 7, 3}, {2, 3, 2});
  // ResNet-18's quantized conv weights with the default limits.
  std::vector<int64_t> r18;
  for (int i = 0; i < 4; ++i) r18.push_back(64 * 64 * 9);
  for (int64_t c : {128, 256, 512}) {
    r18.push_back(c * c / 2 * 9);
    r18.push_back(c * c / 2);
    for (int i = 0; i < 3; ++i) r18.push_back(c * c * 9);
  }
  check_plan(r18, {});
  Rng rng(5);
  for (int trial = 0; trial < 200; ++trial) {
    std::vector<int64_t> sizes(rng.below(60));
    for (auto& s : sizes) s = static_cast<int64_t>(rng.below(5000));
    check_plan(sizes, {1 + static_cast<int>(rng.below(8)), 1 + static_cast<int>(rng.below(16)),
                       1 + static_cast<int64_t>(rng.below(700))});
  }
}

TEST(MultiTensorPlan, SixtyFourBitSizes) {
  const int64_t big = (int64_t(1) << 33) + 5;  // more elements than an int can count
  MultiTensorLimits lim;
  lim.chunk = int64_t(1) << 24;
  const auto plan = plan_multi_tensor({big, 3}, lim);
  int64_t blocks = 0;
  for (const auto& l : plan) blocks += static_cast<int64_t>(l.block_slot.size());
  EXPECT_EQ(blocks, (big + lim.chunk - 1) / lim.chunk + 1);
  EXPECT_EQ(plan.back().block_chunk.back(), 0);  // the small tensor's only chunk comes last
  EXPECT_EQ(plan.back().tensors.back(), 1);
}

TEST(MultiTensorPlan, RefusesBadInput) {
  EXPECT_THROW(plan_multi_tensor({-1}), Error);
  EXPECT_THROW(plan_multi_tensor({1}, {0, 1, 1}), Error);
}

#ifdef TTQ_HAVE_CUDA
// The row pass of per-channel layers (host code, no GPU needed): one block per (layer, row), in
// layer and row order, at most max_blocks per launch.
TEST(MultiTensorPlan, RowPassOneBlockPerRow) {
  MultiTensorLimits lim;
  lim.max_blocks = 2;
  const cuda::detail::MultiPass p = cuda::detail::plan_rows({3, 0, 2}, lim);
  ASSERT_EQ(p.launches.size(), 3u);
  EXPECT_EQ(p.launches[0].first_block, 0);
  EXPECT_EQ(p.launches[1].first_block, 2);
  EXPECT_EQ(p.launches[2].first_block, 4);
  EXPECT_EQ(p.launches[2].blocks, 1);
  const std::vector<std::pair<int, int64_t>> want = {{0, 0}, {0, 1}, {0, 2}, {2, 0}, {2, 1}};
  ASSERT_EQ(p.host_blocks.size(), want.size());
  for (size_t b = 0; b < want.size(); ++b) {
    EXPECT_EQ(p.host_blocks[b].layer, want[b].first) << b;
    EXPECT_EQ(p.host_blocks[b].chunk, want[b].second) << b;
  }
  EXPECT_TRUE(cuda::detail::plan_rows({0, 0}, lim).launches.empty());
  lim.max_blocks = 0;
  EXPECT_THROW(cuda::detail::plan_rows({1}, lim), Error);
}
#endif
