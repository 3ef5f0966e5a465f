// bf16 batch norm and pooling (precision "bf16", kernels/cuda/ops_cuda.h): the project's own
// kernels instead of cuDNN, whose legacy batch-norm and pooling support for bf16 data cannot be
// verified here. Built whether or not cuDNN is found. bf16 activations are widened to f32 on load
// and every output element is rounded to bf16 once on store (kernels/cuda/bf16_device.cuh); batch
// norm parameters, statistics and parameter gradients are f32.
//
// Semantics are those of the reference kernels (kernels/cpu/ops_ref.cpp) on the widened inputs,
// the CPU emulation the tests compare with:
//   * Pooling: gather kernels, one thread per output element (forward) or per input element
//     (backward; max pooling's first computes each window's first maximum), no atomics. Max: the first maximum in row-major window order (strict >),
//     padding never selected; a window with no input position gives -inf. Its gradient is routed
//     to that first maximum (kernels/cuda/dnn_helpers.cu maxpool_backward, shared with the f32
//     path). Average: the window's input positions summed in double in row-major order, divided
//     by the reference's count (padded positions inside the padded extent count when
//     count_include_pad is set, asymmetric padding included); the gradient of an input element
//     sums dy / count in float over the windows containing it, in increasing output order. The
//     reference's float operations in the reference's order: bitwise equal to the emulation. The
//     per-element window arithmetic is kernels/cuda/pool_walk.h (pool_output,
//     avgpool_input_grad), which tests/test_pool_walk.cpp checks against the reference on the
//     CPU.
//   * Batch norm (spatial, N x C x S). Per-channel sums use the deterministic chunked scheme of
//     kernels/cuda/channel_reduce.cuh: each channel's m = N * S elements are cut into chunks of
//     16384 (kChunk); a grid of C * chunks blocks of 256 threads folds one chunk per block (per
//     thread in order in double, then cub::BlockReduce in a fixed tree) into its own partial slot,
//     and a finishing kernel (one block per channel) folds the channel's partials in chunk order.
//     Chunking and grids depend on the shape only, so results are bitwise repeatable on any GPU.
//     No division per element: threads advance their indices by precomputed steps. Partials and
//     per-channel double statistics live in a stream-ordered temporary (DeviceBuffer,
//     cudaStreamPerThread).
//     Training forward, m > kChunk: sum partials, mean kernel, partials of (x - mean)^2, variance
//     kernel (statistics, running statistics), then y over the whole tensor, grid-stride (five
//     launches; ResNet-18's first BN, 256 x 64 x 112 x 112: 196 chunks a channel, 12544 blocks).
//     Backward, m > kChunk: partials of (sum dy, sum dy * xhat), a finishing kernel (dgamma,
//     dbeta, the per-channel dx constants), then dx grid-stride (three launches). m <= kChunk (a
//     channel is one chunk): one fused kernel, one block per channel, for either (one launch).
//     S == 1 (1-d batch norm, and channels-last input as N*H*W rows of C): the partials come
//     from the rows reduction (threads across the channels, coalesced) and always take the
//     partials + finishing path.
//     Forward: mean, then the biased variance as the mean of (x - mean)^2 (two passes, as the
//     reference), inv_std = 1 / sqrt(var + eps), y = (x - mean) * inv_std * gamma + beta in double
//     rounded to f32 then bf16; the running statistics are updated as the CPU path does
//     (kernels/ops.cpp): running = (1 - momentum) * running + momentum * batch with the unbiased
//     variance var * m / (m - 1) (m = 1 is refused before: kernels/ops.cpp).
//     Inference (grid-stride): scale = gamma / sqrt(running_var + eps), shift = beta -
//     running_mean * scale, y = x * scale + shift in f32 without fused multiply-adds (the
//     reference's operations).
//     Backward: the reference's formula, xhat = (x - mean) * inv_std, dgamma = sum dy * xhat,
//     dbeta = sum dy, dx = gamma * inv_std / m * (m * dy - dbeta - xhat * dgamma) in double (m * dy
//     in f32, as the reference's int64 * float product).
//     Sums are formed in another order than the reference loop, so statistics and outputs agree
//     to rounding, not bitwise.
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "kernels/cuda/bf16_device.cuh"
#include "kernels/cuda/channel_reduce.cuh"
#include "kernels/cuda/context.h"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/dnn_helpers.h"
#include "kernels/cuda/ops_cuda.h"

namespace ttq::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = 65535;

inline cudaStream_t stream() { return cudaStreamPerThread; }

unsigned blocks_for(int64_t n) {
  return static_cast<unsigned>(std::clamp<int64_t>((n + kThreads - 1) / kThreads, 1, kMaxBlocks));
}

#define TTQ_BF16_LOOP(i, n)                                                                \
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < (n);   \
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)

// ---- pooling ------------------------------------------------------------------------------------

// One thread per output element: kernels/cuda/pool_walk.h pool_output on the widened inputs,
// rounded once.
__global__ void pool_forward_kernel(int64_t total, bool is_max, Pool2dShape s, int64_t oh, int64_t ow,
                                    const bf16* __restrict__ x, bf16* __restrict__ y) {
  TTQ_BF16_LOOP(i, total) {
    const int64_t ox = i % ow, oy = (i / ow) % oh, p = i / (ow * oh);
    const bf16* xp = x + p * s.h * s.w;
    store(y, i, helpers::pool_output(s, is_max, [&](int64_t k) { return load(xp, k); }, oy, ox));
  }
}

// Average pooling gradient, one thread per input element (pool_walk.h avgpool_input_grad).
__global__ void avgpool_backward_kernel(int64_t total, Pool2dShape s, int64_t oh, int64_t ow,
                                        const bf16* __restrict__ dy, bf16* __restrict__ dx) {
  const helpers::PoolGeom g = helpers::pool_geom(s, oh, ow);
  TTQ_BF16_LOOP(i, total) {
    const int64_t ix = i % s.w, iy = (i / s.w) % s.h, p = i / (s.w * s.h);
    const bf16* dyp = dy + p * oh * ow;
    store(dx, i, helpers::avgpool_input_grad(s, g, [&](int64_t o) { return load(dyp, o); }, iy, ix));
  }
}

// ---- batch norm ---------------------------------------------------------------------------------

using chan::Flat;
using chan::Pair;
using chan::Plan;

// y of the group at idx: (x - mean) * inv_std * gamma + beta in double, rounded to f32, then to
// bf16 on store.
template <int V>
__device__ __forceinline__ void bn_y_group(const bf16* __restrict__ x, bf16* __restrict__ y, int64_t idx, bool vec,
                                           double mu, double is, double g, double b) {
  float v[V];
  chan::load_group<V>(x, idx, vec, v);
#pragma unroll
  for (int e = 0; e < V; ++e) v[e] = static_cast<float>((v[e] - mu) * is * g + b);
  chan::store_group<V>(y, idx, vec, v);
}

// The saved statistics and running statistics of channel ch (thread 0 of one block).
__device__ void bn_store_stats(int64_t ch, int64_t m, double mu, double v, double is, float momentum,
                               float* running_mean, float* running_var, float* mean, float* var, float* inv_std) {
  const float mean_f = static_cast<float>(mu), var_f = static_cast<float>(v);
  mean[ch] = mean_f;
  var[ch] = var_f;
  inv_std[ch] = static_cast<float>(is);
  // As kernels/ops.cpp updates them on the CPU (f32 arithmetic), unbiased running variance.
  const double md = static_cast<double>(m);
  const float unbias = m > 1 ? static_cast<float>(md / (md - 1.0)) : 1.0f;
  running_mean[ch] = __fadd_rn(__fmul_rn(1.0f - momentum, running_mean[ch]), __fmul_rn(momentum, mean_f));
  running_var[ch] =
      __fadd_rn(__fmul_rn(1.0f - momentum, running_var[ch]), __fmul_rn(__fmul_rn(momentum, var_f), unbias));
}

// Sums of squared deviations from the channel's mean (in double, from bn_mean_kernel):
// chan::fold_sq_dev and chan::SqDevTerm (kernels/cuda/channel_reduce.cuh).

// x and dy of the group at idx.
template <int V>
__device__ __forceinline__ void bn_load_pair(const bf16* __restrict__ x, const bf16* __restrict__ dy, int64_t idx,
                                             bool vec, float (&xv)[V], float (&g)[V]) {
  chan::load_group<V>(x, idx, vec, xv);
  chan::load_group<V>(dy, idx, vec, g);
}

// (sum dy, sum dy * xhat) per chunk, and xhat itself: chan::fold_dy_xhat, chan::BackwardSumTerm and
// chan::xhat_of (kernels/cuda/channel_reduce.cuh), shared with the synchronised batch norm.

// Per-channel constants of dx: k = gamma * inv_std / m and the two sums, all double.
struct BackwardCoef {
  double k, sum_dy, sum_dy_xhat;
};

__device__ __forceinline__ BackwardCoef bn_backward_coef(float gamma, float inv_std, int64_t m, const Pair& sums) {
  return {static_cast<double>(gamma) * static_cast<double>(inv_std) / static_cast<double>(m), sums.a, sums.b};
}

// dx of the group at idx: k * (m * dy - sum dy - xhat * sum dy xhat) in double, m * dy in f32 (the
// reference's int64 * float product), rounded to f32, then to bf16 on store.
template <int V>
__device__ __forceinline__ void bn_dx_group(const bf16* __restrict__ x, const bf16* __restrict__ dy,
                                            bf16* __restrict__ dx, int64_t idx, bool vec, float mean_c, double is,
                                            float mf, const BackwardCoef& c) {
  float xv[V], g[V];
  bn_load_pair<V>(x, dy, idx, vec, xv, g);
#pragma unroll
  for (int e = 0; e < V; ++e) {
    const double mdy = __fmul_rn(mf, g[e]);
    xv[e] = static_cast<float>(c.k * (mdy - c.sum_dy - chan::xhat_of(xv[e], mean_c, is) * c.sum_dy_xhat));
  }
  chan::store_group<V>(dx, idx, vec, xv);
}

// Training forward of a one-chunk channel (m <= kChunk), everything in one block per channel.
template <int V>
__global__ void __launch_bounds__(chan::kThreads)
    bn_train_single_kernel(Plan p, const bf16* __restrict__ x, const float* __restrict__ gamma,
                           const float* __restrict__ beta, float eps, float momentum, float* running_mean,
                           float* running_var, bf16* __restrict__ y, float* mean, float* var, float* inv_std,
                           bool vec) {
  __shared__ chan::ReduceStorage<double> tmp;
  __shared__ double slot;
  const int64_t ch = blockIdx.x;
  const double md = static_cast<double>(p.m);
  const double mu = chan::block_sum_all(chan::fold_sum<V>(p, ch, 0, x, vec), tmp, slot) / md;
  const double v = chan::block_sum_all(chan::fold_sq_dev<V>(p, ch, 0, x, vec, mu), tmp, slot) / md;
  const double is = 1.0 / sqrt(v + static_cast<double>(eps));
  const double g = gamma[ch], b = beta[ch];
  chan::for_chunk<V>(p, ch, 0, [&](int64_t idx) { bn_y_group<V>(x, y, idx, vec, mu, is, g, b); });
  if (threadIdx.x == 0) bn_store_stats(ch, p.m, mu, v, is, momentum, running_mean, running_var, mean, var, inv_std);
}

// Finishing kernels, one block per channel: fold the channel's partials in chunk order.
__global__ void __launch_bounds__(chan::kThreads) bn_mean_kernel(Plan p, const double* partials, double* mu) {
  __shared__ chan::ReduceStorage<double> tmp;
  const int64_t ch = blockIdx.x;
  const double sum = chan::fold_partials(partials + ch * p.chunks, p.chunks, tmp);
  if (threadIdx.x == 0) mu[ch] = sum / static_cast<double>(p.m);
}

__global__ void __launch_bounds__(chan::kThreads)
    bn_variance_kernel(Plan p, const double* partials, const double* mu, float eps, float momentum,
                       float* running_mean, float* running_var, float* mean, float* var, float* inv_std,
                       double* is_out) {
  __shared__ chan::ReduceStorage<double> tmp;
  const int64_t ch = blockIdx.x;
  const double sq = chan::fold_partials(partials + ch * p.chunks, p.chunks, tmp);
  if (threadIdx.x == 0) {
    const double v = sq / static_cast<double>(p.m);
    const double is = 1.0 / sqrt(v + static_cast<double>(eps));
    is_out[ch] = is;
    bn_store_stats(ch, p.m, mu[ch], v, is, momentum, running_mean, running_var, mean, var, inv_std);
  }
}

// y over the whole tensor, grid-stride, from the channel's double mean and inverse std.
template <int V>
__global__ void __launch_bounds__(chan::kThreads)
    bn_normalise_kernel(Flat w, const bf16* __restrict__ x, const float* __restrict__ gamma,
                        const float* __restrict__ beta, const double* __restrict__ mu,
                        const double* __restrict__ inv_std, bf16* __restrict__ y, bool vec) {
  chan::for_flat<V>(w, [&](int64_t e, int64_t ch) {
    bn_y_group<V>(x, y, e, vec, mu[ch], inv_std[ch], gamma[ch], beta[ch]);
  });
}

// Inference, grid-stride: y = x * scale[c] + shift[c] with the reference's f32 operations (no FMA).
template <int V>
__global__ void __launch_bounds__(chan::kThreads)
    bn_infer_kernel(Flat w, const bf16* __restrict__ x, const float* __restrict__ gamma,
                    const float* __restrict__ beta, const float* __restrict__ running_mean,
                    const float* __restrict__ running_var, float eps, bf16* __restrict__ y, bool vec) {
  chan::for_flat<V>(w, [&](int64_t e, int64_t ch) {
    const float is = __fdiv_rn(1.0f, __fsqrt_rn(__fadd_rn(running_var[ch], eps)));
    const float scale = __fmul_rn(gamma[ch], is);
    const float shift = __fsub_rn(beta[ch], __fmul_rn(running_mean[ch], scale));
    float val[V];
    chan::load_group<V>(x, e, vec, val);
#pragma unroll
    for (int i = 0; i < V; ++i) val[i] = __fadd_rn(__fmul_rn(val[i], scale), shift);
    chan::store_group<V>(y, e, vec, val);
  });
}

// Backward of a one-chunk channel (m <= kChunk), one block per channel.
template <int V>
__global__ void __launch_bounds__(chan::kThreads)
    bn_backward_single_kernel(Plan p, const bf16* __restrict__ x, const bf16* __restrict__ dy,
                              const float* __restrict__ gamma, const float* __restrict__ mean,
                              const float* __restrict__ inv_std, bf16* __restrict__ dx, float* dgamma, float* dbeta,
                              bool vec) {
  __shared__ chan::ReduceStorage<Pair> tmp;
  __shared__ Pair slot;
  const int64_t ch = blockIdx.x;
  const float mean_c = mean[ch];
  const double is = inv_std[ch];
  const Pair sums = chan::block_sum_all(chan::fold_dy_xhat<V>(p, ch, 0, x, dy, vec, mean_c, is), tmp, slot);
  if (threadIdx.x == 0) {
    dgamma[ch] = static_cast<float>(sums.b);
    dbeta[ch] = static_cast<float>(sums.a);
  }
  const BackwardCoef c = bn_backward_coef(gamma[ch], inv_std[ch], p.m, sums);
  const float mf = static_cast<float>(p.m);
  chan::for_chunk<V>(p, ch, 0, [&](int64_t idx) { bn_dx_group<V>(x, dy, dx, idx, vec, mean_c, is, mf, c); });
}

__global__ void __launch_bounds__(chan::kThreads)
    bn_backward_finish_kernel(Plan p, const Pair* partials, const float* gamma, const float* inv_std,
                              float* dgamma, float* dbeta, BackwardCoef* coef) {
  __shared__ chan::ReduceStorage<Pair> tmp;
  const int64_t ch = blockIdx.x;
  const Pair sums = chan::fold_partials(partials + ch * p.chunks, p.chunks, tmp);
  if (threadIdx.x == 0) {
    dgamma[ch] = static_cast<float>(sums.b);
    dbeta[ch] = static_cast<float>(sums.a);
    coef[ch] = bn_backward_coef(gamma[ch], inv_std[ch], p.m, sums);
  }
}

// dx over the whole tensor, grid-stride.
template <int V>
__global__ void __launch_bounds__(chan::kThreads)
    bn_dx_kernel(Flat w, int64_t m, const bf16* __restrict__ x, const bf16* __restrict__ dy,
                 const float* __restrict__ mean, const float* __restrict__ inv_std,
                 const BackwardCoef* __restrict__ coef, bf16* __restrict__ dx, bool vec) {
  const float mf = static_cast<float>(m);
  chan::for_flat<V>(w, [&](int64_t e, int64_t ch) {
    bn_dx_group<V>(x, dy, dx, e, vec, mean[ch], static_cast<double>(inv_std[ch]), mf, coef[ch]);
  });
}

void check_bn(const char* op, const BatchNormShape& s) {
  TTQ_CHECK(s.n >= 0 && s.c >= 0 && s.s >= 0, op << ": negative size " << s.n << "x" << s.c << "x" << s.s);
  TTQ_CHECK(s.c <= 0x7fffffff, op << ": " << s.c << " channels exceed the grid");
}

}  // namespace

// ---- pooling ------------------------------------------------------------------------------------

void pool2d_forward(PoolKind kind, const Pool2dShape& s, const bf16* x, bf16* y) {
  s.validate("pool2d_forward (CUDA, bf16)");
  const int64_t total = s.out_numel();
  if (total <= 0) return;
  pool_forward_kernel<<<blocks_for(total), kThreads, 0, stream()>>>(total, kind == PoolKind::Max, s, s.out_h(),
                                                                    s.out_w(), x, y);
  CUDA_CHECK(cudaGetLastError());
}

void pool2d_backward(PoolKind kind, const Pool2dShape& s, const bf16* x, const bf16* dy, bf16* dx) {
  s.validate("pool2d_backward (CUDA, bf16)");
  if (kind == PoolKind::Max) {
    helpers::maxpool_backward(helpers::pool_geom(s, s.out_h(), s.out_w()), x, dy, dx);
    return;
  }
  const int64_t total = s.in_numel();
  if (total <= 0) return;
  avgpool_backward_kernel<<<blocks_for(total), kThreads, 0, stream()>>>(total, s, s.out_h(), s.out_w(), dy, dx);
  CUDA_CHECK(cudaGetLastError());
}

// ---- batch norm ---------------------------------------------------------------------------------

void batchnorm_forward_train(const BatchNormShape& shape, const bf16* x, const float* gamma, const float* beta,
                             float eps, float momentum, float* running_mean, float* running_var, bf16* y,
                             float* mean, float* var, float* inv_std) {
  const BatchNormShape s = channels_first_rows(shape);  // channels-last: N*S rows of C
  const char* op = "batchnorm_forward_train (CUDA, bf16)";
  check_bn(op, s);
  if (s.numel() == 0) return;
  const Plan p = chan::make_plan(op, s.n, s.c, s.s);
  const bool vec = chan::vec_aligned(p.v, x) && chan::vec_aligned(p.v, y);
  if (p.single_chunk()) {
    chan::with_width(p.v, [&](auto w) {
      bn_train_single_kernel<decltype(w)::value><<<p.blocks(), chan::kThreads, 0, stream()>>>(
          p, x, gamma, beta, eps, momentum, running_mean, running_var, y, mean, var, inv_std, vec);
    });
    CUDA_CHECK(cudaGetLastError());
    return;
  }
  // Scratch: the partials (reused by both reductions), then the channels' double mean and inv_std.
  const int64_t slots = p.c * p.chunks;
  DeviceBuffer scratch(sizeof(double) * static_cast<size_t>(slots + 2 * p.c));
  double* partials = static_cast<double*>(scratch.get());
  double* mu = partials + slots;
  double* is = mu + p.c;
  const unsigned channels = static_cast<unsigned>(p.c);
  chan::launch_partials(p, chan::SumTerm<bf16>{x, vec}, partials);
  bn_mean_kernel<<<channels, chan::kThreads, 0, stream()>>>(p, partials, mu);
  CUDA_CHECK(cudaGetLastError());
  chan::launch_partials(p, chan::SqDevTerm<bf16>{x, mu, vec}, partials);
  bn_variance_kernel<<<channels, chan::kThreads, 0, stream()>>>(p, partials, mu, eps, momentum, running_mean,
                                                                running_var, mean, var, inv_std, is);
  CUDA_CHECK(cudaGetLastError());
  const Flat f = chan::make_flat(s.n, s.c, s.s);
  chan::with_width(f.v, [&](auto w) {
    bn_normalise_kernel<decltype(w)::value><<<f.blocks, chan::kThreads, 0, stream()>>>(f, x, gamma, beta, mu, is, y,
                                                                                      vec);
  });
  CUDA_CHECK(cudaGetLastError());
}

void batchnorm_forward_infer(const BatchNormShape& shape, const bf16* x, const float* gamma, const float* beta,
                             const float* running_mean, const float* running_var, float eps, bf16* y) {
  const BatchNormShape s = channels_first_rows(shape);  // channels-last: N*S rows of C
  check_bn("batchnorm_forward_infer (CUDA, bf16)", s);
  if (s.numel() == 0) return;
  const Flat f = chan::make_flat(s.n, s.c, s.s);
  const bool vec = chan::vec_aligned(f.v, x) && chan::vec_aligned(f.v, y);
  chan::with_width(f.v, [&](auto w) {
    bn_infer_kernel<decltype(w)::value><<<f.blocks, chan::kThreads, 0, stream()>>>(f, x, gamma, beta, running_mean,
                                                                                  running_var, eps, y, vec);
  });
  CUDA_CHECK(cudaGetLastError());
}

void batchnorm_backward(const BatchNormShape& shape, const bf16* x, const bf16* dy, const float* gamma,
                        const float* mean, const float* inv_std, float eps, bf16* dx, float* dgamma, float* dbeta) {
  const BatchNormShape s = channels_first_rows(shape);  // channels-last: N*S rows of C
  (void)eps;  // the saved inv_std already includes it (the reference's formula)
  const char* op = "batchnorm_backward (CUDA, bf16)";
  check_bn(op, s);
  if (s.numel() == 0) {  // no values: the parameter gradients are 0, as on the CPU
    helpers::zero_fill_bytes(dgamma, static_cast<size_t>(s.c) * sizeof(float));
    helpers::zero_fill_bytes(dbeta, static_cast<size_t>(s.c) * sizeof(float));
    return;
  }
  const Plan p = chan::make_plan(op, s.n, s.c, s.s);
  const bool vec = chan::vec_aligned(p.v, x) && chan::vec_aligned(p.v, dy) && chan::vec_aligned(p.v, dx);
  if (p.single_chunk()) {
    chan::with_width(p.v, [&](auto w) {
      bn_backward_single_kernel<decltype(w)::value><<<p.blocks(), chan::kThreads, 0, stream()>>>(
          p, x, dy, gamma, mean, inv_std, dx, dgamma, dbeta, vec);
    });
    CUDA_CHECK(cudaGetLastError());
    return;
  }
  // Scratch: the partials, then the channels' dx constants.
  const int64_t slots = p.c * p.chunks;
  DeviceBuffer scratch(sizeof(Pair) * static_cast<size_t>(slots) + sizeof(BackwardCoef) * static_cast<size_t>(p.c));
  Pair* partials = static_cast<Pair*>(scratch.get());
  BackwardCoef* coef = reinterpret_cast<BackwardCoef*>(partials + slots);
  chan::launch_partials(p, chan::BackwardSumTerm<bf16>{x, dy, mean, inv_std, vec}, partials);
  bn_backward_finish_kernel<<<static_cast<unsigned>(p.c), chan::kThreads, 0, stream()>>>(p, partials, gamma, inv_std,
                                                                                         dgamma, dbeta, coef);
  CUDA_CHECK(cudaGetLastError());
  const Flat f = chan::make_flat(s.n, s.c, s.s);
  chan::with_width(f.v, [&](auto w) {
    bn_dx_kernel<decltype(w)::value><<<f.blocks, chan::kThreads, 0, stream()>>>(f, p.m, x, dy, mean, inv_std, coef,
                                                                               dx, vec);
  });
  CUDA_CHECK(cudaGetLastError());
}

}  // namespace ttq::cuda
