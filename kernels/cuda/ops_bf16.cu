// bf16 batch norm and pooling (precision "bf16", kernels/cuda/ops_cuda.h): the project's own
// kernels instead of cuDNN, whose legacy batch-norm and pooling support for bf16 data cannot be
// verified here. Built whether or not cuDNN is found. bf16 activations are widened to f32 on load
// and every output element is rounded to bf16 once on store (kernels/cuda/bf16_device.cuh); batch
// norm parameters, statistics and parameter gradients are f32.
//
// Semantics are those of the reference kernels (kernels/cpu/ops_ref.cpp) on the widened inputs,
// the CPU emulation the tests compare with:
//   * Pooling: gather kernels, one thread per output element (forward) or per input element
//     (backward), no atomics. Max: the first maximum in row-major window order (strict >),
//     padding never selected; a window with no input position gives -inf. Its gradient is routed
//     to that first maximum (kernels/cuda/dnn_helpers.cu maxpool_backward, shared with the f32
//     path). Average: the window's input positions summed in double in row-major order, divided
//     by the reference's count (padded positions inside the padded extent count when
//     count_include_pad is set, asymmetric padding included); the gradient of an input element
//     sums dy / count in float over the windows containing it, in increasing output order. The
//     reference's float operations in the reference's order: bitwise equal to the emulation.
//   * Batch norm (spatial, N x C x S): training forward and backward run one thread block per
//     channel. Each thread folds its elements (j = t, t + kBnThreads, ... of the channel's
//     m = N * S, in order) in double and cub::BlockReduce combines the threads in a fixed tree, so
//     results are bitwise repeatable. Forward: mean, then the biased variance as the mean of
//     (x - mean)^2 (two passes, as the reference), inv_std = 1 / sqrt(var + eps), y in double
//     rounded to f32 then bf16; the running statistics are updated as the CPU path does
//     (kernels/ops.cpp): running = (1 - momentum) * running + momentum * batch with the unbiased
//     variance var * m / (m - 1) (m = 1: the biased one, instead of the reference's NaN).
//     Inference: scale = gamma / sqrt(running_var + eps), shift = beta - running_mean * scale,
//     y = x * scale + shift in f32 without fused multiply-adds (the reference's operations).
//     Backward: the reference's formula, xhat = (x - mean) * inv_std, dgamma = sum dy * xhat,
//     dbeta = sum dy, dx = gamma * inv_std / m * (m * dy - dbeta - xhat * dgamma) in double (m * dy
//     in f32, as the reference's int64 * float product).
//     Sums are formed in another order than the reference loop, so statistics and outputs agree
//     to rounding, not bitwise.
#include <cuda_runtime_api.h>

#include <cub/block/block_reduce.cuh>

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "kernels/cuda/bf16_device.cuh"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/dnn_helpers.h"
#include "kernels/cuda/ops_cuda.h"

namespace ttq::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kBnThreads = 512;
constexpr int64_t kMaxBlocks = 65535;

inline cudaStream_t stream() { return cudaStreamPerThread; }

unsigned blocks_for(int64_t n) {
  return static_cast<unsigned>(std::clamp<int64_t>((n + kThreads - 1) / kThreads, 1, kMaxBlocks));
}

#define TTQ_BF16_LOOP(i, n)                                                                \
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < (n);   \
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)

// ---- pooling ------------------------------------------------------------------------------------

// The reference's divisor for window (oy, ox) (ops_ref.cpp for_window): the input positions, plus
// the padded ones inside the padded extent when count_include_pad is set.
__device__ int64_t window_count(const Pool2dShape& s, int64_t oy, int64_t ox) {
  const int64_t y0 = oy * s.stride_h - s.pad_t, x0 = ox * s.stride_w - s.pad_l;
  if (s.count_include_pad) {
    const int64_t rows = min(y0 + s.kh, s.h + s.pad_b) - y0;
    const int64_t cols = min(x0 + s.kw, s.w + s.pad_r) - x0;
    return max(rows, int64_t{0}) * max(cols, int64_t{0});
  }
  const int64_t rows = min(y0 + s.kh, s.h) - max(y0, int64_t{0});
  const int64_t cols = min(x0 + s.kw, s.w) - max(x0, int64_t{0});
  return max(rows, int64_t{0}) * max(cols, int64_t{0});
}

// One thread per output element.
__global__ void pool_forward_kernel(int64_t total, bool is_max, Pool2dShape s, int64_t oh, int64_t ow,
                                    const bf16* __restrict__ x, bf16* __restrict__ y) {
  TTQ_BF16_LOOP(i, total) {
    const int64_t ox = i % ow, oy = (i / ow) % oh, p = i / (ow * oh);
    const bf16* xp = x + p * s.h * s.w;
    const int64_t y0 = oy * s.stride_h - s.pad_t, x0 = ox * s.stride_w - s.pad_l;
    const int64_t ky0 = max(-y0, int64_t{0}), ky1 = min(s.kh, s.h - y0);
    const int64_t kx0 = max(-x0, int64_t{0}), kx1 = min(s.kw, s.w - x0);
    if (is_max) {
      float m = -INFINITY;
      for (int64_t ky = ky0; ky < ky1; ++ky)
        for (int64_t kx = kx0; kx < kx1; ++kx) {
          const float v = load(xp, (y0 + ky) * s.w + x0 + kx);
          m = m < v ? v : m;  // std::max(m, v)
        }
      store(y, i, m);
    } else {
      double acc = 0.0;
      for (int64_t ky = ky0; ky < ky1; ++ky)
        for (int64_t kx = kx0; kx < kx1; ++kx) acc += load(xp, (y0 + ky) * s.w + x0 + kx);
      const int64_t cnt = window_count(s, oy, ox);
      store(y, i, cnt ? static_cast<float>(acc / static_cast<double>(cnt)) : 0.0f);
    }
  }
}

// Average pooling gradient, one thread per input element: the sum over the windows containing it
// of dy / count, in float, in increasing (oy, ox) order (the reference's scatter order).
__global__ void avgpool_backward_kernel(int64_t total, Pool2dShape s, int64_t oh, int64_t ow,
                                        const bf16* __restrict__ dy, bf16* __restrict__ dx) {
  TTQ_BF16_LOOP(i, total) {
    const int64_t ix = i % s.w, iy = (i / s.w) % s.h, p = i / (s.w * s.h);
    const bf16* dyp = dy + p * oh * ow;
    // Windows containing (iy, ix): oy * stride - pad_t <= iy < oy * stride - pad_t + kh.
    const int64_t ty = iy + s.pad_t, tx = ix + s.pad_l;
    const int64_t oy_lo = ty >= s.kh ? (ty - s.kh) / s.stride_h + 1 : 0;
    const int64_t oy_hi = min(ty / s.stride_h, oh - 1);
    const int64_t ox_lo = tx >= s.kw ? (tx - s.kw) / s.stride_w + 1 : 0;
    const int64_t ox_hi = min(tx / s.stride_w, ow - 1);
    float acc = 0.0f;
    for (int64_t oy = oy_lo; oy <= oy_hi; ++oy)
      for (int64_t ox = ox_lo; ox <= ox_hi; ++ox) {
        const int64_t cnt = window_count(s, oy, ox);
        if (cnt == 0) continue;
        acc += load(dyp, oy * ow + ox) / static_cast<float>(cnt);
      }
    store(dx, i, acc);
  }
}

// ---- batch norm ---------------------------------------------------------------------------------

using BnReduce = cub::BlockReduce<double, kBnThreads>;

// Element j of channel ch (j < n * spatial): sample j / spatial, position j % spatial.
__device__ __forceinline__ int64_t bn_index(int64_t j, int64_t c, int64_t spatial, int64_t ch) {
  const int64_t b = j / spatial;
  return (b * c + ch) * spatial + (j - b * spatial);
}

// Block sum of v (every thread gets the result). tmp is reused: the barrier before the write of
// the broadcast slot also orders the next reduction after every thread has read this one.
__device__ double bn_block_sum(double v, typename BnReduce::TempStorage& tmp, double* shared_result) {
  const double r = BnReduce(tmp).Sum(v);
  if (threadIdx.x == 0) *shared_result = r;
  __syncthreads();
  const double out = *shared_result;
  __syncthreads();  // everyone has read it (and tmp is free again) before the next reduction
  return out;
}

// One block per channel (blockIdx.x).
__global__ void __launch_bounds__(kBnThreads)
    bn_train_kernel(BatchNormShape s, const bf16* __restrict__ x, const float* __restrict__ gamma,
                    const float* __restrict__ beta, float eps, float momentum, float* running_mean,
                    float* running_var, bf16* __restrict__ y, float* mean, float* var, float* inv_std) {
  __shared__ typename BnReduce::TempStorage tmp;
  __shared__ double result;
  const int64_t ch = blockIdx.x;
  const int64_t m = s.n * s.s;
  double sum = 0.0;
  for (int64_t j = threadIdx.x; j < m; j += kBnThreads) sum += load(x, bn_index(j, s.c, s.s, ch));
  const double mu = bn_block_sum(sum, tmp, &result) / static_cast<double>(m);
  double sq = 0.0;
  for (int64_t j = threadIdx.x; j < m; j += kBnThreads) {
    const double d = load(x, bn_index(j, s.c, s.s, ch)) - mu;
    sq += d * d;
  }
  const double v = bn_block_sum(sq, tmp, &result) / static_cast<double>(m);
  const double is = 1.0 / sqrt(v + static_cast<double>(eps));
  const double g = gamma[ch], b = beta[ch];
  for (int64_t j = threadIdx.x; j < m; j += kBnThreads) {
    const int64_t idx = bn_index(j, s.c, s.s, ch);
    store(y, idx, static_cast<float>((load(x, idx) - mu) * is * g + b));
  }
  if (threadIdx.x == 0) {
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
}

// Elementwise: y = x * scale[c] + shift[c] with the reference's f32 operations (no FMA).
__global__ void bn_infer_kernel(int64_t total, BatchNormShape s, const bf16* __restrict__ x,
                                const float* __restrict__ gamma, const float* __restrict__ beta,
                                const float* __restrict__ running_mean, const float* __restrict__ running_var,
                                float eps, bf16* __restrict__ y) {
  TTQ_BF16_LOOP(i, total) {
    const int64_t ch = (i / s.s) % s.c;
    const float is = __fdiv_rn(1.0f, __fsqrt_rn(__fadd_rn(running_var[ch], eps)));
    const float scale = __fmul_rn(gamma[ch], is);
    const float shift = __fsub_rn(beta[ch], __fmul_rn(running_mean[ch], scale));
    store(y, i, __fadd_rn(__fmul_rn(load(x, i), scale), shift));
  }
}

// One block per channel (blockIdx.x).
__global__ void __launch_bounds__(kBnThreads)
    bn_backward_kernel(BatchNormShape s, const bf16* __restrict__ x, const bf16* __restrict__ dy,
                       const float* __restrict__ gamma, const float* __restrict__ mean,
                       const float* __restrict__ inv_std, bf16* __restrict__ dx, float* dgamma, float* dbeta) {
  __shared__ typename BnReduce::TempStorage tmp;
  __shared__ double result;
  const int64_t ch = blockIdx.x;
  const int64_t m = s.n * s.s;
  const float mean_c = mean[ch];
  const double is = inv_std[ch];
  double sum_dy = 0.0, sum_dy_xhat = 0.0;
  for (int64_t j = threadIdx.x; j < m; j += kBnThreads) {
    const int64_t idx = bn_index(j, s.c, s.s, ch);
    const double xhat = static_cast<double>(load(x, idx) - mean_c) * is;  // f32 difference, as the reference
    const double g = load(dy, idx);
    sum_dy += g;
    sum_dy_xhat += g * xhat;
  }
  sum_dy = bn_block_sum(sum_dy, tmp, &result);
  sum_dy_xhat = bn_block_sum(sum_dy_xhat, tmp, &result);
  if (threadIdx.x == 0) {
    dgamma[ch] = static_cast<float>(sum_dy_xhat);
    dbeta[ch] = static_cast<float>(sum_dy);
  }
  const double k = static_cast<double>(gamma[ch]) * is / static_cast<double>(m);
  const float mf = static_cast<float>(m);
  for (int64_t j = threadIdx.x; j < m; j += kBnThreads) {
    const int64_t idx = bn_index(j, s.c, s.s, ch);
    const double xhat = static_cast<double>(load(x, idx) - mean_c) * is;
    // m * dy in f32, as the reference's int64 * float product.
    const double mdy = __fmul_rn(mf, load(dy, idx));
    store(dx, idx, static_cast<float>(k * (mdy - sum_dy - xhat * sum_dy_xhat)));
  }
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
    const helpers::PoolGeom g{s.n * s.c, s.h, s.w, s.out_h(), s.out_w(), s.kh, s.kw,
                              s.stride_h, s.stride_w, s.pad_t, s.pad_l};
    helpers::maxpool_backward(g, x, dy, dx);
    return;
  }
  const int64_t total = s.in_numel();
  if (total <= 0) return;
  avgpool_backward_kernel<<<blocks_for(total), kThreads, 0, stream()>>>(total, s, s.out_h(), s.out_w(), dy, dx);
  CUDA_CHECK(cudaGetLastError());
}

// ---- batch norm ---------------------------------------------------------------------------------

void batchnorm_forward_train(const BatchNormShape& s, const bf16* x, const float* gamma, const float* beta,
                             float eps, float momentum, float* running_mean, float* running_var, bf16* y,
                             float* mean, float* var, float* inv_std) {
  check_bn("batchnorm_forward_train (CUDA, bf16)", s);
  if (s.numel() == 0) return;
  bn_train_kernel<<<static_cast<unsigned>(s.c), kBnThreads, 0, stream()>>>(
      s, x, gamma, beta, eps, momentum, running_mean, running_var, y, mean, var, inv_std);
  CUDA_CHECK(cudaGetLastError());
}

void batchnorm_forward_infer(const BatchNormShape& s, const bf16* x, const float* gamma, const float* beta,
                             const float* running_mean, const float* running_var, float eps, bf16* y) {
  check_bn("batchnorm_forward_infer (CUDA, bf16)", s);
  const int64_t total = s.numel();
  if (total == 0) return;
  bn_infer_kernel<<<blocks_for(total), kThreads, 0, stream()>>>(total, s, x, gamma, beta, running_mean, running_var,
                                                                eps, y);
  CUDA_CHECK(cudaGetLastError());
}

void batchnorm_backward(const BatchNormShape& s, const bf16* x, const bf16* dy, const float* gamma,
                        const float* mean, const float* inv_std, float eps, bf16* dx, float* dgamma, float* dbeta) {
  (void)eps;  // the saved inv_std already includes it (the reference's formula)
  check_bn("batchnorm_backward (CUDA, bf16)", s);
  if (s.numel() == 0) return;
  bn_backward_kernel<<<static_cast<unsigned>(s.c), kBnThreads, 0, stream()>>>(s, x, dy, gamma, mean, inv_std, dx,
                                                                              dgamma, dbeta);
  CUDA_CHECK(cudaGetLastError());
}

}  // namespace ttq::cuda
