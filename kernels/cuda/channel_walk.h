// The geometry of the per-channel reductions and channel-aware walks of
// kernels/cuda/channel_reduce.cuh (see its comment for the scheme): the plans (Plan, Flat), which
// block computes which partial, and which elements each thread of a block visits, in order. Plain
// C++ with host/device functions taking the block and thread index as arguments: the CUDA kernels
// call them with blockIdx.x / threadIdx.x, and tests/test_channel_walk.cpp runs the same functions
// on the host over every block and thread of a grid, checking that each element is visited exactly
// once, with its channel, and each partial slot written exactly once.
#pragma once

#include <algorithm>
#include <cstdint>

#include "engine/core/error.h"
#include "kernels/host_device.h"

namespace ttq::cuda::chan {

constexpr int kThreads = 256;             // threads per block of every kernel built on this
constexpr int kVec = 4;                   // group width when S % 4 == 0
constexpr int64_t kChunk = 16384;         // elements of one channel folded by one block
constexpr int64_t kMaxFlatBlocks = 4096;  // grid of the elementwise walks (then grid-stride)
constexpr int64_t kRowIters = 128;        // rows per thread in a chunk of the rows layout (S == 1)
static_assert(kChunk % (int64_t{kThreads} * kVec) == 0, "a chunk holds whole block steps");

inline int group_width(int64_t s) { return s % kVec == 0 ? kVec : 1; }

// The reduction geometry of an n x c x s tensor (n, c, s > 0).
struct Plan {
  int64_t c = 0, s = 1, cs = 0, m = 0;  // channels, segment length, C * S, elements per channel
  int64_t chunks = 0;                   // chunks per channel: ceil(m / kChunk), rows: ceil(m / row_chunk)
  int64_t step_i = 0, step_idx = 0;     // a thread's step of kThreads * V elements: % S, flat
  int v = 1;                            // group width
  bool rows = false;                    // S == 1: the rows reduction
  int ct = 0, rt = 0;                   // rows: channels per block, rows at a time
  int64_t row_chunk = 0, groups = 0;    // rows: rows per chunk, channel groups of ct
  unsigned blocks() const { return static_cast<unsigned>(rows ? chunks * groups : c * chunks); }
  bool single_chunk() const { return !rows && chunks == 1; }
};

inline Plan make_plan(const char* op, int64_t n, int64_t c, int64_t s) {
  TTQ_CHECK(n > 0 && c > 0 && s > 0, op << ": empty or negative shape " << n << "x" << c << "x" << s);
  Plan p;
  p.c = c;
  p.s = s;
  p.cs = c * s;
  p.m = n * s;
  p.chunks = (p.m + kChunk - 1) / kChunk;
  p.v = group_width(s);
  const int64_t step = int64_t{kThreads} * p.v;
  p.step_i = step % s;
  p.step_idx = step / s * p.cs + p.step_i;
  if (s == 1) {
    p.rows = true;
    p.ct = 32;
    while (p.ct < c && p.ct < kThreads) p.ct *= 2;
    p.rt = kThreads / p.ct;
    p.row_chunk = p.rt * kRowIters;
    p.chunks = (p.m + p.row_chunk - 1) / p.row_chunk;
    p.groups = (c + p.ct - 1) / p.ct;
    TTQ_CHECK(p.chunks <= int64_t{0x7fffffff} / p.groups,
              op << ": " << p.m << " rows of " << c << " channels exceed the grid");
  }
  TTQ_CHECK(p.chunks <= int64_t{0x7fffffff} / c,
            op << ": " << c << " channels of " << p.chunks << " chunks exceed the grid");
  return p;
}

// A fixed-grid flat walk over an n x c x s tensor (n, c, s > 0), groups of V elements.
struct Flat {
  int64_t total = 0, s = 1, c = 1;
  int64_t stride = 0;          // elements between a thread's groups: blocks * kThreads * V
  int64_t st_i = 0, st_c = 0;  // stride % S, (stride / S) % C
  unsigned blocks = 1;
  int v = 1;
};

inline Flat make_flat(int64_t n, int64_t c, int64_t s) {
  TTQ_CHECK(n > 0 && c > 0 && s > 0, "channel walk: empty or negative shape " << n << "x" << c << "x" << s);
  Flat f;
  f.total = n * c * s;
  f.s = s;
  f.c = c;
  f.v = group_width(s);
  const int64_t groups = f.total / f.v;
  f.blocks = static_cast<unsigned>(std::clamp<int64_t>((groups + kThreads - 1) / kThreads, 1, kMaxFlatBlocks));
  f.stride = int64_t{f.blocks} * kThreads * f.v;
  f.st_i = f.stride % s;
  f.st_c = f.stride / s % c;
  return f;
}

// ---- which block does what ----------------------------------------------------------------------

// The (channel, chunk) that block `block` of a chunked (not rows) plan folds; its partial goes to
// slot ch * chunks + k = block.
struct ChunkBlock {
  int64_t ch, k;
};
TTQ_HD ChunkBlock chunk_block(const Plan& p, int64_t block) {
  const int64_t ch = block / p.chunks;
  return {ch, block - ch * p.chunks};
}

// A thread's share in the rows reduction (S == 1): block k * groups + g, thread t takes channel
// ch = g * ct + t % ct (active when ch < C) and rows first, first + rt, ... < end of chunk k.
// The channel's first thread (t < ct) writes the block's sum for the channel to slot
// ch * chunks + k (writes).
struct RowsShare {
  int64_t ch, k, first, end, slot;
  bool active, writes;
};
TTQ_HD RowsShare rows_share(const Plan& p, int64_t block, int tid) {
  RowsShare r;
  r.k = block / p.groups;
  const int64_t g = block - r.k * p.groups;
  const int lane_c = tid % p.ct, lane_r = tid / p.ct;
  r.ch = g * p.ct + lane_c;
  const int64_t r0 = r.k * p.row_chunk;
  r.first = r0 + lane_r;
  r.end = r0 + p.row_chunk < p.m ? r0 + p.row_chunk : p.m;
  r.active = r.ch < p.c;
  r.writes = r.active && lane_r == 0;
  r.slot = r.ch * p.chunks + r.k;
  return r;
}

// ---- which elements a thread visits -------------------------------------------------------------

// f(idx) for each group of thread tid in chunk k of channel ch, in order; idx is the flat index of
// the group's first element. No division per element (see channel_reduce.cuh).
#ifdef __CUDACC__
#pragma nv_exec_check_disable
#endif
template <int V, class F>
TTQ_HD void chunk_walk(const Plan& p, int64_t ch, int64_t k, int tid, F&& f) {
  const int64_t start = k * kChunk;
  const int64_t end = start + kChunk < p.m ? start + kChunk : p.m;
  int64_t j = start + static_cast<int64_t>(tid) * V;
  if (j >= end) return;
  const int64_t b = j / p.s;  // the thread's one division
  int64_t i = j - b * p.s;
  int64_t idx = b * p.cs + ch * p.s + i;
  for (;;) {
    f(idx);
    j += int64_t{kThreads} * V;
    if (j >= end) return;
    i += p.step_i;
    idx += p.step_idx;
    if (i >= p.s) {  // into the next segment of the channel
      i -= p.s;
      idx += p.cs - p.s;
    }
  }
}

// f(e, ch) for each group of thread tid of block `block` in a flat grid-stride walk (grid
// w.blocks x kThreads): e the flat index of the group's first element, ch its channel.
#ifdef __CUDACC__
#pragma nv_exec_check_disable
#endif
template <int V, class F>
TTQ_HD void flat_walk(const Flat& w, int64_t block, int tid, F&& f) {
  int64_t e = (block * kThreads + tid) * V;
  if (e >= w.total) return;
  const int64_t plane = e / w.s;  // the thread's divisions
  int64_t i = e - plane * w.s;
  int64_t ch = plane % w.c;
  for (;;) {
    f(e, ch);
    e += w.stride;
    if (e >= w.total) return;
    i += w.st_i;
    ch += w.st_c;
    if (i >= w.s) {
      i -= w.s;
      ++ch;
    }
    if (ch >= w.c) ch -= w.c;
  }
}

}  // namespace ttq::cuda::chan
