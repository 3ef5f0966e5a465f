// Per-channel reductions and channel-aware elementwise walks over N x C x S tensors (NCHW,
// S = H * W): channel ch's m = N * S elements are N segments of S contiguous elements, C * S
// apart. S == 1 is a matrix of m rows of C (1-d batch norm, and a channels-last tensor, which
// enters as (N * H * W) x C x 1: op_shapes.h channels_first_rows). Used by the bf16 batch norm
// (kernels/cuda/ops_bf16.cu), the synchronised batch norm pieces (kernels/cuda/sync_bn.cu) and the
// bf16 convolution bias helpers (kernels/cuda/dnn_helpers.cu). nvcc only; everything runs on
// cudaStreamPerThread.
//
// Deterministic reductions. A channel's elements j = b * S + i (j < m) are cut into chunks of
// kChunk elements, chunks = ceil(m / kChunk) per channel. A 1-D grid of C * chunks blocks of
// kThreads threads runs over (channel, chunk): block ch * chunks + k folds chunk k of channel ch.
// Thread t takes the groups of V consecutive elements starting at
// j = k * kChunk + (t + r * kThreads) * V, r = 0, 1, ..., in that order, folding them in double;
// cub::BlockReduce combines the threads in a fixed tree and the block writes its partial to its
// own slot ch * chunks + k. A finishing kernel (one block per channel, fold_partials) folds the
// channel's partials: thread t takes partials t, t + kThreads, ... in chunk order, then the same
// fixed tree. kChunk, the grid and V depend on the shape alone (never on the GPU or on pointer
// alignment), so sums are bitwise repeatable. A channel of one chunk (m <= kChunk) needs no
// finishing step: callers then run one block per channel and fuse their passes into one kernel.
//
// Rows (S == 1). One block per channel would read one element per row, C apart (a 32-byte sector
// for every 2 or 4 useful bytes). Instead the block's threads lie across the channels: a block
// covers ct channels (a power of two from 32 to kThreads, the smallest >= C) and rt = kThreads / ct
// rows at a time; thread t takes channel g * ct + t % ct and rows r0 + t / ct, + rt, ... of its
// chunk of row_chunk = rt * kRowIters rows, in order, so a warp reads consecutive channels of one
// row. The block's rt partial sums of a channel are added in order of t / ct and written to the
// channel's slot for the chunk, ch * chunks + k (chunks = ceil(m / row_chunk)); the grid is
// chunks x ceil(C / ct) blocks, block k * groups + g. The finishing kernels are those above, and
// rows always take that path (single_chunk() is false).
//
// Index arithmetic: no division per element. A thread divides once, for its first element
// (b, i) = (j / S, j % S); each later element of the thread is a fixed step further (kThreads * V
// elements in a chunk, the grid's width in a flat walk) and the host precomputes the step's
// quotient and remainder, so a thread advances its 64-bit flat index, its in-segment position
// and (flat walks) its channel by additions, with one carry when the position passes S. Flat
// indices stay int64: a tensor may exceed 2^31 elements.
//
// Elementwise passes walk the whole tensor grid-stride in flat order (coalesced for any S) with
// a fixed grid (make_flat) and get each group's channel from the walk.
//
// Groups: V = 4 when S % 4 == 0 (a group then never straddles a segment: chunks and walks start
// at multiples of 4), else V = 1. A group is read and written with one vector access when every
// pointer involved is aligned for it (vec), else element by element: the same values in the same
// order, so alignment never changes a result.
#pragma once

#include <cuda_runtime.h>

#include <cub/block/block_reduce.cuh>

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "engine/core/bf16.h"
#include "engine/core/error.h"
#include "kernels/cuda/bf16_device.cuh"
#include "kernels/cuda/channel_walk.h"
#include "kernels/cuda/cuda_check.h"

namespace ttq::cuda::chan {

// Whether groups of v elements at p can be moved with one vector access (v == kVec).
template <class T>
bool vec_aligned(int v, const T* p) {
  return v == kVec && reinterpret_cast<uintptr_t>(p) % (kVec * sizeof(T)) == 0;
}

// Calls f(std::integral_constant<int, V>) with V = v (kVec or 1): a kernel template per width.
template <class F>
void with_width(int v, F&& f) {
  if (v == kVec)
    f(std::integral_constant<int, kVec>{});
  else
    f(std::integral_constant<int, 1>{});
}

// ---- device: walks ------------------------------------------------------------------------------
// The walks of kernels/cuda/channel_walk.h for this thread (blockDim.x must be kThreads).

// f(idx) for each group of this thread in chunk k of channel ch, in order; idx is the flat index
// of the group's first element.
template <int V, class F>
__device__ __forceinline__ void for_chunk(const Plan& p, int64_t ch, int64_t k, F&& f) {
  chunk_walk<V>(p, ch, k, static_cast<int>(threadIdx.x), f);
}

// f(e, ch) for each group of this thread in a flat grid-stride walk (grid f.blocks x kThreads):
// e the flat index of the group's first element, ch its channel.
template <int V, class F>
__device__ __forceinline__ void for_flat(const Flat& w, F&& f) {
  flat_walk<V>(w, blockIdx.x, static_cast<int>(threadIdx.x), f);
}

// ---- device: groups -----------------------------------------------------------------------------

// out[e] = p[idx + e] widened to float, e < V.
template <int V, class T>
__device__ __forceinline__ void load_group(const T* p, int64_t idx, bool vec, float (&out)[V]) {
  if constexpr (V == kVec) {
    if (vec) {
      if constexpr (std::is_same_v<T, float>) {
        const float4 q = *reinterpret_cast<const float4*>(p + idx);
        out[0] = q.x;
        out[1] = q.y;
        out[2] = q.z;
        out[3] = q.w;
      } else {
        static_assert(std::is_same_v<T, bf16>);
        const uint2 q = *reinterpret_cast<const uint2*>(p + idx);  // element 0 in the low half
        out[0] = __uint_as_float(q.x << 16);
        out[1] = __uint_as_float(q.x & 0xffff0000u);
        out[2] = __uint_as_float(q.y << 16);
        out[3] = __uint_as_float(q.y & 0xffff0000u);
      }
      return;
    }
  }
#pragma unroll
  for (int e = 0; e < V; ++e) out[e] = load(p, idx + e);
}

// p[idx + e] = v[e] (rounded to nearest even for bf16, as store()), e < V.
template <int V, class T>
__device__ __forceinline__ void store_group(T* p, int64_t idx, bool vec, const float (&v)[V]) {
  if constexpr (V == kVec) {
    if (vec) {
      if constexpr (std::is_same_v<T, float>) {
        *reinterpret_cast<float4*>(p + idx) = make_float4(v[0], v[1], v[2], v[3]);
      } else {
        static_assert(std::is_same_v<T, bf16>);
        unsigned b[kVec];
#pragma unroll
        for (int e = 0; e < kVec; ++e) b[e] = __bfloat16_as_ushort(__float2bfloat16_rn(v[e]));
        *reinterpret_cast<uint2*>(p + idx) = make_uint2(b[0] | (b[1] << 16), b[2] | (b[3] << 16));
      }
      return;
    }
  }
#pragma unroll
  for (int e = 0; e < V; ++e) store(p, idx + e, v[e]);
}

// ---- device: block sums -------------------------------------------------------------------------

struct Pair {
  double a, b;
};
__device__ __forceinline__ Pair operator+(const Pair& x, const Pair& y) { return {x.a + y.a, x.b + y.b}; }

struct Plus {
  template <class A>
  __device__ __forceinline__ A operator()(const A& x, const A& y) const {
    return x + y;
  }
};

template <class Acc>
using BlockReduce = cub::BlockReduce<Acc, kThreads>;
template <class Acc>
using ReduceStorage = typename BlockReduce<Acc>::TempStorage;

// The block's sum of v in a fixed tree, valid in thread 0.
template <class Acc>
__device__ __forceinline__ Acc block_sum(const Acc& v, ReduceStorage<Acc>& tmp) {
  return BlockReduce<Acc>(tmp).Reduce(v, Plus{});
}

// The block's sum of v, in every thread. tmp and slot may be reused right away: the second
// barrier orders the next reduction after every thread has read this one.
template <class Acc>
__device__ Acc block_sum_all(const Acc& v, ReduceStorage<Acc>& tmp, Acc& slot) {
  const Acc r = block_sum(v, tmp);
  if (threadIdx.x == 0) slot = r;
  __syncthreads();
  const Acc out = slot;
  __syncthreads();
  return out;
}

// The sum of partials[0 .. count): thread t folds t, t + kThreads, ... in order, then the block's
// fixed tree. Valid in thread 0.
template <class Acc>
__device__ Acc fold_partials(const Acc* partials, int64_t count, ReduceStorage<Acc>& tmp) {
  Acc acc{};
  for (int64_t k = threadIdx.x; k < count; k += kThreads) acc = acc + partials[k];
  return block_sum(acc, tmp);
}

// Sum of the chunk's elements of x (this thread's share), in double.
template <int V, class T>
__device__ __forceinline__ double fold_sum(const Plan& p, int64_t ch, int64_t k, const T* x, bool vec) {
  double acc = 0.0;
  for_chunk<V>(p, ch, k, [&](int64_t idx) {
    float v[V];
    load_group<V>(x, idx, vec, v);
#pragma unroll
    for (int e = 0; e < V; ++e) acc += v[e];
  });
  return acc;
}

// Term for partials_kernel: the chunk sums of x.
template <class T>
struct SumTerm {
  using Acc = double;
  const T* x;
  bool vec;
  template <int V>
  __device__ double fold(const Plan& p, int64_t ch, int64_t k) const {
    return fold_sum<V>(p, ch, k, x, vec);
  }
  // Rows layout: the sum over rows r, r + step, ... < end of column ch (row length c).
  __device__ double rows(int64_t ch, int64_t r, int64_t end, int step, int64_t c) const {
    double acc = 0.0;
    for (; r < end; r += step) acc += load(x, r * c + ch);
    return acc;
  }
};

// Block ch * chunks + k writes out[blockIdx.x] = the chunk's sum of term (Term::fold<V> gives a
// thread's share), converted to Out. With one chunk per channel, out[ch] is the channel's sum.
// static, as launch_partials: each translation unit has its own kernels (no instantiation of one
// kernel registered from two fat binaries).
template <int V, class Term, class Out>
static __global__ void __launch_bounds__(kThreads) partials_kernel(Plan p, Term term, Out* out) {
  using Acc = typename Term::Acc;
  __shared__ ReduceStorage<Acc> tmp;
  const ChunkBlock b = chunk_block(p, blockIdx.x);
  const Acc r = block_sum(term.template fold<V>(p, b.ch, b.k), tmp);
  if (threadIdx.x == 0) out[blockIdx.x] = static_cast<Out>(r);
}

// The rows layout (S == 1, see the file comment): block k * groups + g writes the partials of
// chunk k for the channels of group g, out[ch * chunks + k] (Term::rows gives a thread's share).
template <class Term, class Out>
static __global__ void __launch_bounds__(kThreads) rows_partials_kernel(Plan p, Term term, Out* out) {
  using Acc = typename Term::Acc;
  __shared__ Acc part[kThreads];
  const RowsShare r = rows_share(p, blockIdx.x, static_cast<int>(threadIdx.x));
  Acc acc{};
  if (r.active) acc = term.rows(r.ch, r.first, r.end, p.rt, p.c);
  part[threadIdx.x] = acc;
  __syncthreads();
  if (!r.writes) return;  // the channel's first thread adds the block's rt shares in order
  Acc sum = part[threadIdx.x];
  for (int i = 1; i < p.rt; ++i) sum = sum + part[threadIdx.x + i * p.ct];
  out[r.slot] = static_cast<Out>(sum);
}

// Runs partials_kernel (or, for rows, rows_partials_kernel) over p's grid on cudaStreamPerThread.
template <class Term, class Out>
static void launch_partials(const Plan& p, const Term& term, Out* out) {
  if (p.rows) {
    rows_partials_kernel<Term, Out><<<p.blocks(), kThreads, 0, cudaStreamPerThread>>>(p, term, out);
  } else {
    with_width(p.v, [&](auto w) {
      partials_kernel<decltype(w)::value, Term, Out><<<p.blocks(), kThreads, 0, cudaStreamPerThread>>>(p, term, out);
    });
  }
  CUDA_CHECK(cudaGetLastError());
}

// ---- batch-norm sums (bf16 batch norm and synchronised batch norm) ------------------------------

// acc + ((double)v - mu)^2, no fused operations.
__device__ __forceinline__ double add_sq_dev(double acc, float v, double mu) {
  const double d = __dsub_rn(static_cast<double>(v), mu);
  return __dadd_rn(acc, __dmul_rn(d, d));
}

// This thread's share of chunk k of channel ch: sum of ((double)x - mu)^2, no fused operations.
template <int V, class T>
__device__ double fold_sq_dev(const Plan& p, int64_t ch, int64_t k, const T* x, bool vec, double mu) {
  double acc = 0.0;
  for_chunk<V>(p, ch, k, [&](int64_t idx) {
    float v[V];
    load_group<V>(x, idx, vec, v);
#pragma unroll
    for (int e = 0; e < V; ++e) acc = add_sq_dev(acc, v[e], mu);
  });
  return acc;
}

// A partials_kernel term: per (channel, chunk), the sum of squared deviations from mean[ch].
template <class T>
struct SqDevTerm {
  using Acc = double;
  const T* x;
  const double* mean;
  bool vec;
  template <int V>
  __device__ double fold(const Plan& p, int64_t ch, int64_t k) const {
    return fold_sq_dev<V>(p, ch, k, x, vec, mean[ch]);
  }
  __device__ double rows(int64_t ch, int64_t r, int64_t end, int step, int64_t c) const {
    const double mu = mean[ch];
    double acc = 0.0;
    for (; r < end; r += step) acc = add_sq_dev(acc, load(x, r * c + ch), mu);
    return acc;
  }
};

// xhat of the CPU reference: the f32 difference x - mean, widened, times the f32 inverse std
// widened; no fused operations.
__device__ __forceinline__ double xhat_of(float x, float mean_c, double is) {
  return __dmul_rn(static_cast<double>(__fsub_rn(x, mean_c)), is);
}

// acc += (dy, dy * xhat) for one element, no fused operations.
__device__ __forceinline__ void add_dy_xhat(Pair& acc, float x, float dy, float mean_c, double is) {
  const double gd = static_cast<double>(dy);
  acc.a = __dadd_rn(acc.a, gd);
  acc.b = __dadd_rn(acc.b, __dmul_rn(gd, xhat_of(x, mean_c, is)));
}

// This thread's share of chunk k of channel ch: (sum dy, sum dy * xhat) in double.
template <int V, class T>
__device__ Pair fold_dy_xhat(const Plan& p, int64_t ch, int64_t k, const T* x, const T* dy, bool vec, float mean_c,
                             double is) {
  Pair acc{0.0, 0.0};
  for_chunk<V>(p, ch, k, [&](int64_t idx) {
    float xv[V], g[V];
    load_group<V>(x, idx, vec, xv);
    load_group<V>(dy, idx, vec, g);
#pragma unroll
    for (int e = 0; e < V; ++e) add_dy_xhat(acc, xv[e], g[e], mean_c, is);
  });
  return acc;
}

// A partials_kernel term: per (channel, chunk), (sum dy, sum dy * xhat).
template <class T>
struct BackwardSumTerm {
  using Acc = Pair;
  const T* x;
  const T* dy;
  const float* mean;
  const float* inv_std;
  bool vec;
  template <int V>
  __device__ Pair fold(const Plan& p, int64_t ch, int64_t k) const {
    return fold_dy_xhat<V>(p, ch, k, x, dy, vec, mean[ch], static_cast<double>(inv_std[ch]));
  }
  __device__ Pair rows(int64_t ch, int64_t r, int64_t end, int step, int64_t c) const {
    const float mean_c = mean[ch];
    const double is = static_cast<double>(inv_std[ch]);
    Pair acc{0.0, 0.0};
    for (; r < end; r += step) add_dy_xhat(acc, load(x, r * c + ch), load(dy, r * c + ch), mean_c, is);
    return acc;
  }
};

}  // namespace ttq::cuda::chan
