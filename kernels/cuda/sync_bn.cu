// The pieces of synchronised batch norm on the GPU (kernels/ops.h bn_channel_sums,
// bn_backward_sums, bn_normalize, bn_backward_dx; engine/dist/sync_batchnorm.cpp all-reduces the
// sums on the host between them). Templated on the stored activation type, float or bf16
// (kernels/cuda/bf16_device.cuh: bf16 is widened to f32 on load, exactly, and an output is rounded
// from f32 to bf16 once, on store).
//
// Sums use the deterministic chunked scheme of kernels/cuda/channel_reduce.cuh: a channel's
// m = N * S elements in chunks of kChunk, one block per (channel, chunk) folding its chunk in
// double (per thread in order, then a fixed tree) into its own partial slot, and a finishing
// kernel (one block per channel) folding the partials in chunk order; a channel of one chunk is
// summed by one block straight into the output. S == 1 (rows of C, such as channels-last input)
// always runs the coalesced rows partials, then the finishing kernel. Grids depend on the shape
// only: sums are bitwise repeatable on any GPU. They add in another order than the CPU loops (kernels/ops.cpp), so the
// two agree to rounding.
//
// Elementwise passes (y, dx) walk the tensor grid-stride in flat order. Every double operation is
// an explicit _rn intrinsic, so nvcc contracts nothing into fused multiply-adds and each output
// element is the CPU's double expression, bit for bit, given the same statistics and sums:
//   y  = (float)((((double)x - mean) * inv_std) * gamma + beta)
//   dx = (float)(k * ((count * dy - sdy) - xhat * sdyx)), k = (gamma * inv_std) / count,
//        xhat = (double)(x - mean_f32) * inv_std_f32 (the difference in f32)
// and the terms of the sums are the CPU's terms: x, ((double)x - mean)^2, dy, dy * xhat.
#include <cuda_runtime_api.h>

#include <cstdint>

#include "kernels/cuda/bf16_device.cuh"
#include "kernels/cuda/channel_reduce.cuh"
#include "kernels/cuda/context.h"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/ops_cuda.h"

namespace ttq::cuda {
namespace {

using chan::Flat;
using chan::Pair;
using chan::Plan;

inline cudaStream_t stream() { return cudaStreamPerThread; }

// ---- sums ---------------------------------------------------------------------------------------

using chan::BackwardSumTerm;
using chan::SqDevTerm;
using chan::xhat_of;

// One block per channel: sums[ch] = the channel's partials folded in chunk order.
__global__ void __launch_bounds__(chan::kThreads) finish_sums_kernel(Plan p, const double* partials, double* sums) {
  __shared__ chan::ReduceStorage<double> tmp;
  const int64_t ch = blockIdx.x;
  const double r = chan::fold_partials(partials + ch * p.chunks, p.chunks, tmp);
  if (threadIdx.x == 0) sums[ch] = r;
}

// One block per channel: [sum dy | sum dy * xhat] from the channel's partials.
__global__ void __launch_bounds__(chan::kThreads)
    finish_backward_sums_kernel(Plan p, const Pair* partials, double* sums) {
  __shared__ chan::ReduceStorage<Pair> tmp;
  const int64_t ch = blockIdx.x;
  const Pair r = chan::fold_partials(partials + ch * p.chunks, p.chunks, tmp);
  if (threadIdx.x == 0) {
    sums[ch] = r.a;
    sums[p.c + ch] = r.b;
  }
}

// A one-chunk channel (m <= kChunk): one block per channel, straight into the output layout.
template <int V, class T>
__global__ void __launch_bounds__(chan::kThreads)
    backward_sums_single_kernel(Plan p, BackwardSumTerm<T> term, double* sums) {
  __shared__ chan::ReduceStorage<Pair> tmp;
  const int64_t ch = blockIdx.x;
  const Pair r = chan::block_sum(term.template fold<V>(p, ch, 0), tmp);
  if (threadIdx.x == 0) {
    sums[ch] = r.a;
    sums[p.c + ch] = r.b;
  }
}

// ---- elementwise --------------------------------------------------------------------------------

template <int V, class T>
__global__ void __launch_bounds__(chan::kThreads)
    normalize_kernel(Flat w, const T* __restrict__ x, const double* __restrict__ mean,
                     const double* __restrict__ inv_std, const float* __restrict__ gamma,
                     const float* __restrict__ beta, T* __restrict__ y, bool vec) {
  chan::for_flat<V>(w, [&](int64_t e, int64_t ch) {
    const double mu = mean[ch], is = inv_std[ch];
    const double g = static_cast<double>(gamma[ch]), b = static_cast<double>(beta[ch]);
    float v[V];
    chan::load_group<V>(x, e, vec, v);
#pragma unroll
    for (int i = 0; i < V; ++i)
      v[i] = static_cast<float>(__dadd_rn(__dmul_rn(__dmul_rn(__dsub_rn(static_cast<double>(v[i]), mu), is), g), b));
    chan::store_group<V>(y, e, vec, v);
  });
}

// The per-channel constants of dx: k = (gamma * inv_std) / count and the two global sums.
struct DxCoef {
  double k, sdy, sdyx;
};

__global__ void dx_coef_kernel(int64_t c, const float* __restrict__ gamma, const float* __restrict__ inv_std,
                               const double* __restrict__ sums, double count, DxCoef* __restrict__ coef) {
  const int64_t ch = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (ch >= c) return;
  coef[ch] = {__ddiv_rn(__dmul_rn(static_cast<double>(gamma[ch]), static_cast<double>(inv_std[ch])), count),
              sums[ch], sums[c + ch]};
}

template <int V, class T>
__global__ void __launch_bounds__(chan::kThreads)
    dx_kernel(Flat w, double count, const T* __restrict__ x, const T* __restrict__ dy,
              const float* __restrict__ mean, const float* __restrict__ inv_std,
              const DxCoef* __restrict__ coef, T* __restrict__ dx, bool vec) {
  chan::for_flat<V>(w, [&](int64_t e, int64_t ch) {
    const float mean_c = mean[ch];
    const double is = static_cast<double>(inv_std[ch]);
    const DxCoef c = coef[ch];
    float xv[V], g[V];
    chan::load_group<V>(x, e, vec, xv);
    chan::load_group<V>(dy, e, vec, g);
#pragma unroll
    for (int i = 0; i < V; ++i) {
      const double xhat = xhat_of(xv[i], mean_c, is);
      const double t =
          __dsub_rn(__dsub_rn(__dmul_rn(count, static_cast<double>(g[i])), c.sdy), __dmul_rn(xhat, c.sdyx));
      xv[i] = static_cast<float>(__dmul_rn(c.k, t));
    }
    chan::store_group<V>(dx, e, vec, xv);
  });
}

// ---- host side ----------------------------------------------------------------------------------

void check_shape(const char* op, const BatchNormShape& s) {
  TTQ_CHECK(s.n >= 0 && s.c >= 0 && s.s >= 0, op << ": negative size " << s.n << "x" << s.c << "x" << s.s);
  TTQ_CHECK(s.c <= 0x7fffffff, op << ": " << s.c << " channels exceed the grid");
}

// Zero sums for channels without values (n * s == 0).
void zero_sums(double* sums, int64_t count) {
  CUDA_CHECK(cudaMemsetAsync(sums, 0, sizeof(double) * static_cast<size_t>(count), stream()));
}

template <class T>
void channel_sums(const BatchNormShape& shape, const T* x, const double* mean, double* sums) {
  const BatchNormShape s = channels_first_rows(shape);  // channels-last: N*S rows of C
  const char* op = "bn_channel_sums (CUDA)";
  check_shape(op, s);
  if (s.c == 0) return;
  if (s.n * s.s == 0) return zero_sums(sums, s.c);
  const Plan p = chan::make_plan(op, s.n, s.c, s.s);
  const bool vec = chan::vec_aligned(p.v, x);
  if (p.single_chunk()) {  // partials_kernel writes the channel's sum to sums[ch]
    if (mean)
      chan::launch_partials(p, SqDevTerm<T>{x, mean, vec}, sums);
    else
      chan::launch_partials(p, chan::SumTerm<T>{x, vec}, sums);
    return;
  }
  DeviceBuffer scratch(sizeof(double) * static_cast<size_t>(p.c * p.chunks));
  double* partials = static_cast<double*>(scratch.get());
  if (mean)
    chan::launch_partials(p, SqDevTerm<T>{x, mean, vec}, partials);
  else
    chan::launch_partials(p, chan::SumTerm<T>{x, vec}, partials);
  finish_sums_kernel<<<static_cast<unsigned>(p.c), chan::kThreads, 0, stream()>>>(p, partials, sums);
  CUDA_CHECK(cudaGetLastError());
}

template <class T>
void backward_sums(const BatchNormShape& shape, const T* x, const T* dy, const float* mean, const float* inv_std,
                   double* sums) {
  const BatchNormShape s = channels_first_rows(shape);  // channels-last: N*S rows of C
  const char* op = "bn_backward_sums (CUDA)";
  check_shape(op, s);
  if (s.c == 0) return;
  if (s.n * s.s == 0) return zero_sums(sums, 2 * s.c);
  const Plan p = chan::make_plan(op, s.n, s.c, s.s);
  const bool vec = chan::vec_aligned(p.v, x) && chan::vec_aligned(p.v, dy);
  const BackwardSumTerm<T> term{x, dy, mean, inv_std, vec};
  if (p.single_chunk()) {
    chan::with_width(p.v, [&](auto w) {
      backward_sums_single_kernel<decltype(w)::value, T>
          <<<p.blocks(), chan::kThreads, 0, stream()>>>(p, term, sums);
    });
    CUDA_CHECK(cudaGetLastError());
    return;
  }
  DeviceBuffer scratch(sizeof(Pair) * static_cast<size_t>(p.c * p.chunks));
  Pair* partials = static_cast<Pair*>(scratch.get());
  chan::launch_partials(p, term, partials);
  finish_backward_sums_kernel<<<static_cast<unsigned>(p.c), chan::kThreads, 0, stream()>>>(p, partials, sums);
  CUDA_CHECK(cudaGetLastError());
}

template <class T>
void normalize(const BatchNormShape& shape, const T* x, const double* mean, const double* inv_std, const float* gamma,
               const float* beta, T* y) {
  const BatchNormShape s = channels_first_rows(shape);  // channels-last: N*S rows of C
  check_shape("bn_normalize (CUDA)", s);
  if (s.numel() == 0) return;
  const Flat f = chan::make_flat(s.n, s.c, s.s);
  const bool vec = chan::vec_aligned(f.v, x) && chan::vec_aligned(f.v, y);
  chan::with_width(f.v, [&](auto w) {
    normalize_kernel<decltype(w)::value, T>
        <<<f.blocks, chan::kThreads, 0, stream()>>>(f, x, mean, inv_std, gamma, beta, y, vec);
  });
  CUDA_CHECK(cudaGetLastError());
}

template <class T>
void backward_dx(const BatchNormShape& shape, const T* x, const T* dy, const float* mean, const float* inv_std,
                 const float* gamma, const double* sums, double count, T* dx) {
  const BatchNormShape s = channels_first_rows(shape);  // channels-last: N*S rows of C
  check_shape("bn_backward_dx (CUDA)", s);
  if (s.numel() == 0) return;
  DeviceBuffer scratch(sizeof(DxCoef) * static_cast<size_t>(s.c));
  DxCoef* coef = static_cast<DxCoef*>(scratch.get());
  const unsigned coef_blocks = static_cast<unsigned>((s.c + chan::kThreads - 1) / chan::kThreads);
  dx_coef_kernel<<<coef_blocks, chan::kThreads, 0, stream()>>>(s.c, gamma, inv_std, sums, count, coef);
  CUDA_CHECK(cudaGetLastError());
  const Flat f = chan::make_flat(s.n, s.c, s.s);
  const bool vec = chan::vec_aligned(f.v, x) && chan::vec_aligned(f.v, dy) && chan::vec_aligned(f.v, dx);
  chan::with_width(f.v, [&](auto w) {
    dx_kernel<decltype(w)::value, T>
        <<<f.blocks, chan::kThreads, 0, stream()>>>(f, count, x, dy, mean, inv_std, coef, dx, vec);
  });
  CUDA_CHECK(cudaGetLastError());
}

}  // namespace

void bn_channel_sums(const BatchNormShape& s, const float* x, const double* mean, double* sums) {
  channel_sums(s, x, mean, sums);
}
void bn_channel_sums(const BatchNormShape& s, const bf16* x, const double* mean, double* sums) {
  channel_sums(s, x, mean, sums);
}

void bn_backward_sums(const BatchNormShape& s, const float* x, const float* dy, const float* mean,
                      const float* inv_std, double* sums) {
  backward_sums(s, x, dy, mean, inv_std, sums);
}
void bn_backward_sums(const BatchNormShape& s, const bf16* x, const bf16* dy, const float* mean,
                      const float* inv_std, double* sums) {
  backward_sums(s, x, dy, mean, inv_std, sums);
}

void bn_normalize(const BatchNormShape& s, const float* x, const double* mean, const double* inv_std,
                  const float* gamma, const float* beta, float* y) {
  normalize(s, x, mean, inv_std, gamma, beta, y);
}
void bn_normalize(const BatchNormShape& s, const bf16* x, const double* mean, const double* inv_std,
                  const float* gamma, const float* beta, bf16* y) {
  normalize(s, x, mean, inv_std, gamma, beta, y);
}

void bn_backward_dx(const BatchNormShape& s, const float* x, const float* dy, const float* mean,
                    const float* inv_std, const float* gamma, const double* sums, double count, float* dx) {
  backward_dx(s, x, dy, mean, inv_std, gamma, sums, count, dx);
}
void bn_backward_dx(const BatchNormShape& s, const bf16* x, const bf16* dy, const float* mean,
                    const float* inv_std, const float* gamma, const double* sums, double count, bf16* dx) {
  backward_dx(s, x, dy, mean, inv_std, gamma, sums, count, dx);
}

}  // namespace ttq::cuda
