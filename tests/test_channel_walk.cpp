// The geometry of the GPU's per-channel reductions (kernels/cuda/channel_walk.h), run on the host
// over every block and thread of each grid: every element of every channel is visited exactly
// once, by a thread working on its channel, in groups that never straddle a segment; every partial
// slot is written exactly once; the flat walks give each group its channel. These are the same
// functions the CUDA kernels call with blockIdx.x / threadIdx.x, so an indexing slip in the
// no-division stepping shows up here, without a GPU.
#include <gtest/gtest.h>

#include <cstdint>
#include <string>
#include <vector>

#include "kernels/cuda/channel_walk.h"

using namespace ttq::cuda::chan;

namespace {

struct Shape3 {
  int64_t n, c, s;
};

std::string name(const Shape3& t) {
  return std::to_string(t.n) + "x" + std::to_string(t.c) + "x" + std::to_string(t.s);
}

// n x c x s shapes: segments of 4k, odd and single elements (rows), one and several chunks, one
// and several channel groups, a last chunk or grid stride that ends mid-segment.
const Shape3 kShapes[] = {
    {1, 1, 1},      {3, 5, 7},      {2, 3, 16},   {4, 6, 12544 / 4},  {5, 2, 6000},  // 15000 / channel
    {40, 3, 441},   {33, 5, 529},   {2, 64, 16},  {300, 10, 1},       {17, 33, 1},
    {5000, 7, 1},   {1100, 300, 1}, {70, 3, 1000}, {1, 4, 16384 * 2 + 4}, {9, 2, 4097},
    // More groups than the flat walks' grid (4096 x 256): threads take several, stepping with carries.
    {2, 3, 400001}, {2, 3, 1048576}, {700001, 3, 1},
};

}  // namespace

TEST(ChannelWalk, ChunkedPlanVisitsEveryElementOnceWithItsChannel) {
  for (const Shape3& t : kShapes) {
    const Plan p = make_plan("test", t.n, t.c, t.s);
    if (p.rows) continue;
    SCOPED_TRACE(name(t));
    const int64_t total = t.n * t.c * t.s;
    std::vector<int> seen(static_cast<size_t>(total), 0), slot_written(static_cast<size_t>(p.blocks()), 0);
    for (int64_t block = 0; block < p.blocks(); ++block) {
      const ChunkBlock b = chunk_block(p, block);
      ASSERT_LT(b.ch, t.c);
      ASSERT_LT(b.k, p.chunks);
      ++slot_written[static_cast<size_t>(b.ch * p.chunks + b.k)];
      for (int tid = 0; tid < kThreads; ++tid) {
        auto visit = [&](int64_t idx) {
          ASSERT_GE(idx, 0);
          ASSERT_LE(idx + p.v, total);
          ASSERT_EQ((idx / t.s) % t.c, b.ch) << "element " << idx << " is not in channel " << b.ch;
          ASSERT_EQ(idx / t.s, (idx + p.v - 1) / t.s) << "a group straddles a segment at " << idx;
          const int64_t j = (idx / (t.c * t.s)) * t.s + idx % t.s;  // position within the channel
          ASSERT_EQ(j / kChunk, b.k) << "element " << idx << " outside chunk " << b.k;
          for (int e = 0; e < p.v; ++e) ++seen[static_cast<size_t>(idx + e)];
        };
        if (p.v == kVec)
          chunk_walk<kVec>(p, b.ch, b.k, tid, visit);
        else
          chunk_walk<1>(p, b.ch, b.k, tid, visit);
      }
    }
    for (int64_t i = 0; i < total; ++i) ASSERT_EQ(seen[static_cast<size_t>(i)], 1) << "element " << i;
    for (int w : slot_written) ASSERT_EQ(w, 1);
  }
}

TEST(ChannelWalk, RowsPlanVisitsEveryElementOnceAndWritesEverySlotOnce) {
  int rows_shapes = 0;
  for (const Shape3& t : kShapes) {
    const Plan p = make_plan("test", t.n, t.c, t.s);
    if (!p.rows) continue;
    ++rows_shapes;
    SCOPED_TRACE(name(t));
    ASSERT_EQ(kThreads % p.ct, 0);
    ASSERT_GE(p.ct * p.groups, t.c);
    ASSERT_FALSE(p.single_chunk());  // rows always take the partials + finishing path
    const int64_t total = t.n * t.c;
    std::vector<int> seen(static_cast<size_t>(total), 0), slot_written(static_cast<size_t>(t.c * p.chunks), 0);
    for (int64_t block = 0; block < p.blocks(); ++block) {
      for (int tid = 0; tid < kThreads; ++tid) {
        const RowsShare r = rows_share(p, block, tid);
        if (!r.active) {
          ASSERT_FALSE(r.writes);
          continue;
        }
        ASSERT_LT(r.ch, t.c);
        ASSERT_LE(r.end, t.n);
        for (int64_t row = r.first; row < r.end; row += p.rt) ++seen[static_cast<size_t>(row * t.c + r.ch)];
        if (r.writes) {
          ASSERT_EQ(r.slot, r.ch * p.chunks + r.k);
          ++slot_written[static_cast<size_t>(r.slot)];
          // The writer adds the shares of threads tid + i * ct: the same channel and chunk.
          for (int i = 1; i < p.rt; ++i) {
            const RowsShare o = rows_share(p, block, tid + i * p.ct);
            ASSERT_EQ(o.ch, r.ch);
            ASSERT_EQ(o.k, r.k);
          }
        }
      }
    }
    for (int64_t i = 0; i < total; ++i) ASSERT_EQ(seen[static_cast<size_t>(i)], 1) << "element " << i;
    for (int w : slot_written) ASSERT_EQ(w, 1);
  }
  EXPECT_GE(rows_shapes, 5);
}

TEST(ChannelWalk, FlatWalkGivesEveryGroupItsChannelOnce) {
  for (const Shape3& t : kShapes) {
    SCOPED_TRACE(name(t));
    const Flat f = make_flat(t.n, t.c, t.s);
    const int64_t total = t.n * t.c * t.s;
    std::vector<int> seen(static_cast<size_t>(total), 0);
    for (int64_t block = 0; block < f.blocks; ++block) {
      for (int tid = 0; tid < kThreads; ++tid) {
        auto visit = [&](int64_t e, int64_t ch) {
          ASSERT_LE(e + f.v, total);
          ASSERT_EQ((e / t.s) % t.c, ch) << "group at " << e;
          for (int k = 0; k < f.v; ++k) ++seen[static_cast<size_t>(e + k)];
        };
        if (f.v == kVec)
          flat_walk<kVec>(f, block, tid, visit);
        else
          flat_walk<1>(f, block, tid, visit);
      }
    }
    for (int64_t i = 0; i < total; ++i) ASSERT_EQ(seen[static_cast<size_t>(i)], 1) << "element " << i;
  }
}

TEST(ChannelWalk, PlansRefuseEmptyShapes) {
  EXPECT_THROW(make_plan("test", 0, 3, 4), ttq::Error);
  EXPECT_THROW(make_flat(2, 0, 4), ttq::Error);
}
