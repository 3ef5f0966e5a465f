// Device pieces shared by the per-tensor TTQ kernels (ttq_kernels.cu) and the multi-tensor ones
// (ttq_multi.cu), nvcc only: the (double, double) running pair and its block-wide fold, one
// weight's backward step, and the block-per-row loops of per-output-channel scales. The
// per-element math is kernels/ttq_math.h.
#pragma once

#include <cub/block/block_reduce.cuh>

#include <cstdint>

#include "kernels/cuda/bf16_device.cuh"
#include "kernels/ttq_math.h"

namespace ttq::cuda::ttq_device {

constexpr int kThreads = 256;  // every TTQ kernel's block size

// Two running values per thread: (sum or max, second sum), e.g. (dL/dWp, dL/dWn).
struct Pair {
  double a, b;
};
struct SumOp {
  __device__ Pair operator()(const Pair& x, const Pair& y) const { return {x.a + y.a, x.b + y.b}; }
};
struct MaxOp {
  __device__ Pair operator()(const Pair& x, const Pair& y) const { return {fmax(x.a, y.a), fmax(x.b, y.b)}; }
};

// Block-wide fold of v in a fixed order (cub's tree); the result is valid in thread 0. Every
// thread of the block must call it (callers branch only on per-block values).
template <class Op>
__device__ Pair block_reduce(const Pair& v, Op op) {
  using Reduce = cub::BlockReduce<Pair, kThreads>;
  __shared__ typename Reduce::TempStorage tmp;
  return Reduce(tmp).Reduce(v, op);
}

// One weight of the backward: latent_grad[i] += scale * g[i] (plain g without scale_latent), and
// its dL/dWp, dL/dWn terms added to this thread's running pair s.
__device__ __forceinline__ void backward_element(int64_t i, const int8_t* codes, const float* g, float p, float m,
                                                 bool scale_latent, float* latent_grad, Pair& s) {
  const int8_t code = codes[i];
  const float gi = g[i];
  s.a += math::wp_grad_term(code, gi);
  s.b += math::wn_grad_term(code, gi);
  latent_grad[i] += math::latent_grad_term(code, gi, p, m, scale_latent);
}

// ---- per-output-channel scales: one block per row -----------------------------------------------
// Row c of a tensor of `channels` rows holds elements [c * per, (c + 1) * per) and uses the scales
// wp[c], wn[c]. Thread j walks begin + j, begin + j + kThreads, ... in order and the block folds
// its threads in a fixed tree, so each row's sums are bitwise repeatable.

// Codes and w_t of one row.
template <class TOut>
__device__ __forceinline__ void ternarize_row(const float* w, int64_t begin, int64_t end, float d, float p, float m,
                                              TOut* w_t, int8_t* codes) {
  for (int64_t i = begin + threadIdx.x; i < end; i += kThreads) {
    const int8_t code = math::ternary_code(w[i], d);
    codes[i] = code;
    store(w_t, i, math::ternary_value(code, p, m));
  }
}

// latent_grad += scaled g over one row, and the row's dL/dWp, dL/dWn added into dwp[c], dwn[c]
// (either may be null) by thread 0: one block per row, so no two blocks write one scale.
__device__ __forceinline__ void backward_row(const int8_t* codes, const float* g, int64_t begin, int64_t end,
                                             int64_t c, const float* wp, const float* wn, float* latent_grad,
                                             float* dwp, float* dwn) {
  const float p = wp[c], m = wn[c];
  Pair s{0.0, 0.0};
  for (int64_t i = begin + threadIdx.x; i < end; i += kThreads)
    backward_element(i, codes, g, p, m, true, latent_grad, s);
  const Pair r = block_reduce(s, SumOp{});
  if (threadIdx.x != 0) return;
  if (dwp) dwp[c] += static_cast<float>(r.a);
  if (dwn) dwn[c] += static_cast<float>(r.b);
}

}  // namespace ttq::cuda::ttq_device
