// Helper kernels for the cuDNN/cuBLAS ops (see dnn_helpers.h). Element-type templates load and
// store through kernels/cuda/bf16_device.cuh and are instantiated at the end of this file.
#include "kernels/cuda/dnn_helpers.h"

#include <cuda_runtime.h>

#include <algorithm>

#include "kernels/cuda/bf16_device.cuh"
#include "kernels/cuda/channel_reduce.cuh"
#include "kernels/cuda/context.h"
#include "kernels/cuda/cuda_check.h"

namespace ttq::cuda::helpers {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = 65535;

#define TTQ_HELPER_LOOP(i, n)                                                              \
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < (n);   \
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)

unsigned blocks_for(int64_t n) {
  return static_cast<unsigned>(std::clamp<int64_t>((n + kThreads - 1) / kThreads, 1, kMaxBlocks));
}

// Launches kernel over n elements (nothing for n <= 0) on cudaStreamPerThread.
template <class Kernel, class... Args>
void launch(int64_t n, Kernel kernel, Args... args) {
  if (n <= 0) return;
  kernel<<<blocks_for(n), kThreads, 0, cudaStreamPerThread>>>(n, args...);
  CUDA_CHECK(cudaGetLastError());
}

// Copies move the stored values unchanged (bf16 -> f32 -> bf16 is exact).
template <class T>
__global__ void pad_kernel(int64_t total, int64_t h, int64_t w, int64_t top, int64_t left, int64_t hp,
                           int64_t wp, float value, const T* src, T* dst) {
  TTQ_HELPER_LOOP(i, total) {
    const int64_t x = i % wp, y = (i / wp) % hp, p = i / (wp * hp);
    const int64_t sy = y - top, sx = x - left;
    store(dst, i, (sy >= 0 && sy < h && sx >= 0 && sx < w) ? load(src, (p * h + sy) * w + sx) : value);
  }
}

template <class T>
__global__ void crop_kernel(int64_t total, int64_t hp, int64_t wp, int64_t top, int64_t left, int64_t h,
                            int64_t w, const T* src, T* dst) {
  TTQ_HELPER_LOOP(i, total) {
    const int64_t x = i % w, y = (i / w) % h, p = i / (w * h);
    store(dst, i, load(src, (p * hp + y + top) * wp + x + left));
  }
}

__global__ void exclude_rescale_kernel(int64_t total, PoolGeom g, const float* src, float* dst) {
  TTQ_HELPER_LOOP(i, total) {
    const int64_t ox = i % g.ow, oy = (i / g.ow) % g.oh;
    const int64_t count = window_count(g, oy, ox);
    // count >= 1 whenever padding < window (Pool2dShape::validate); guard anyway.
    dst[i] = count > 0 ? src[i] * (static_cast<float>(g.kh * g.kw) / static_cast<float>(count)) : 0.0f;
  }
}

// argmax[o] = the first maximum of output window o (kernels/cuda/pool_walk.h window_argmax), an
// index into its plane, -1 for a window of padding only.
template <class T>
__global__ void maxpool_argmax_kernel(int64_t total, PoolGeom g, const T* x, int32_t* argmax) {
  TTQ_HELPER_LOOP(o, total) {
    const int64_t ox = o % g.ow, oy = (o / g.ow) % g.oh, p = o / (g.ow * g.oh);
    const T* xp = x + p * g.h * g.w;
    argmax[o] = static_cast<int32_t>(window_argmax(g, [&](int64_t i) { return load(xp, i); }, oy, ox));
  }
}

template <class T>
__global__ void maxpool_gather_kernel(int64_t total, PoolGeom g, const int32_t* argmax, const T* dy, T* dx) {
  TTQ_HELPER_LOOP(i, total) {
    const int64_t ix = i % g.w, iy = (i / g.w) % g.h, p = i / (g.w * g.h);
    const int32_t* ap = argmax + p * g.oh * g.ow;
    const T* dyp = dy + p * g.oh * g.ow;
    store(dx, i,
          maxpool_input_grad(g, [&](int64_t o) { return static_cast<int64_t>(ap[o]); },
                             [&](int64_t o) { return load(dyp, o); }, iy, ix));
  }
}

__global__ void bn_var_kernel(int64_t c, float eps, const float* inv_std, float* var) {
  TTQ_HELPER_LOOP(i, c) {
    const double is = inv_std[i];
    const double v = 1.0 / (is * is) - static_cast<double>(eps);
    var[i] = static_cast<float>(v > 0.0 ? v : 0.0);
  }
}

__global__ void broadcast_rows_kernel(int64_t total, int64_t out, const float* bias, float* y) {
  TTQ_HELPER_LOOP(i, total) y[i] = bias[i % out];
}

template <class T>
__global__ void column_sums_kernel(int64_t out, int64_t n, const T* m, float* sums) {
  TTQ_HELPER_LOOP(o, out) {
    double acc = 0.0;
    for (int64_t b = 0; b < n; ++b) acc += load(m, b * out + o);
    sums[o] = static_cast<float>(acc);
  }
}

__global__ void add_bias_rows_kernel(int64_t total, int64_t out, const float* acc, const float* bias, bf16* y) {
  TTQ_HELPER_LOOP(i, total) store(y, i, bias ? acc[i] + bias[i % out] : acc[i]);
}

// y += bias[channel] over the whole tensor, grid-stride (kernels/cuda/channel_reduce.cuh walk).
template <int V>
__global__ void __launch_bounds__(chan::kThreads)
    add_channel_bias_kernel(chan::Flat w, const float* __restrict__ bias, bf16* y, bool vec) {
  chan::for_flat<V>(w, [&](int64_t e, int64_t ch) {
    const float b = bias[ch];
    float v[V];
    chan::load_group<V>(y, e, vec, v);
#pragma unroll
    for (int i = 0; i < V; ++i) v[i] = v[i] + b;
    chan::store_group<V>(y, e, vec, v);
  });
}

// One block per channel: sums[ch] = the channel's partials folded in chunk order.
__global__ void __launch_bounds__(chan::kThreads)
    channel_sums_finish_kernel(chan::Plan p, const double* partials, float* sums) {
  __shared__ chan::ReduceStorage<double> tmp;
  const int64_t ch = blockIdx.x;
  const double total = chan::fold_partials(partials + ch * p.chunks, p.chunks, tmp);
  if (threadIdx.x == 0) sums[ch] = static_cast<float>(total);
}

}  // namespace

template <class T>
void pad_planes(int64_t planes, int64_t h, int64_t w, int64_t top, int64_t left, int64_t hp, int64_t wp,
                float value, const T* src, T* dst) {
  launch(planes * hp * wp, pad_kernel<T>, h, w, top, left, hp, wp, value, src, dst);
}

template <class T>
void crop_planes(int64_t planes, int64_t hp, int64_t wp, int64_t top, int64_t left, int64_t h, int64_t w,
                 const T* src, T* dst) {
  launch(planes * h * w, crop_kernel<T>, hp, wp, top, left, h, w, src, dst);
}

void avgpool_exclude_rescale(const PoolGeom& g, const float* src, float* dst) {
  launch(g.planes * g.oh * g.ow, exclude_rescale_kernel, g, src, dst);
}

template <class T>
void maxpool_backward(const PoolGeom& g, const T* x, const T* dy, T* dx) {
  TTQ_CHECK(g.h * g.w <= int64_t{0x7fffffff}, "maxpool_backward (CUDA): planes of " << g.h << " x " << g.w
                                                                                   << " exceed int32 indices");
  const int64_t outputs = g.planes * g.oh * g.ow;
  DeviceBuffer argmax(sizeof(int32_t) * static_cast<size_t>(outputs > 0 ? outputs : 0));
  launch(outputs, maxpool_argmax_kernel<T>, g, x, static_cast<int32_t*>(argmax.get()));
  launch(g.planes * g.h * g.w, maxpool_gather_kernel<T>, g, static_cast<const int32_t*>(argmax.get()), dy, dx);
}

void bn_var_from_inv_std(int64_t c, float eps, const float* inv_std, float* var) {
  launch(c, bn_var_kernel, eps, inv_std, var);
}

void broadcast_rows(int64_t n, int64_t out, const float* bias, float* y) {
  launch(n * out, broadcast_rows_kernel, out, bias, y);
}

template <class T>
void column_sums(int64_t n, int64_t out, const T* m, float* sums) {
  launch(out, column_sums_kernel<T>, n, m, sums);
}

void add_bias_rows(int64_t n, int64_t out, const float* acc, const float* bias, bf16* y) {
  launch(n * out, add_bias_rows_kernel, out, acc, bias, y);
}

void add_channel_bias(int64_t n, int64_t c, int64_t spatial, const float* bias, bf16* y) {
  if (n <= 0 || c <= 0 || spatial <= 0) return;
  const chan::Flat f = chan::make_flat(n, c, spatial);
  const bool vec = chan::vec_aligned(f.v, y);
  chan::with_width(f.v, [&](auto w) {
    add_channel_bias_kernel<decltype(w)::value><<<f.blocks, chan::kThreads, 0, cudaStreamPerThread>>>(f, bias, y, vec);
  });
  CUDA_CHECK(cudaGetLastError());
}

void zero_fill_bytes(void* p, size_t bytes) {
  if (p && bytes > 0) CUDA_CHECK(cudaMemsetAsync(p, 0, bytes, cudaStreamPerThread));
}

template <class T>
void channel_sums(int64_t n, int64_t c, int64_t spatial, const T* m, float* sums) {
  if (c <= 0) return;
  TTQ_CHECK(n >= 0 && spatial >= 0, "channel_sums: negative size " << n << "x" << c << "x" << spatial);
  if (n == 0 || spatial == 0) {  // empty sums
    CUDA_CHECK(cudaMemsetAsync(sums, 0, static_cast<size_t>(c) * sizeof(float), cudaStreamPerThread));
    return;
  }
  const chan::Plan p = chan::make_plan("channel_sums", n, c, spatial);
  const chan::SumTerm<T> term{m, chan::vec_aligned(p.v, m)};
  if (p.single_chunk()) {  // the block's sum is the channel's
    chan::launch_partials(p, term, sums);
    return;
  }
  DeviceBuffer partials(sizeof(double) * static_cast<size_t>(p.c * p.chunks));
  chan::launch_partials(p, term, static_cast<double*>(partials.get()));
  channel_sums_finish_kernel<<<static_cast<unsigned>(p.c), chan::kThreads, 0, cudaStreamPerThread>>>(
      p, static_cast<const double*>(partials.get()), sums);
  CUDA_CHECK(cudaGetLastError());
}

// ---- instantiations: f32 and bf16 -----------------------------------------------------------
#define TTQ_HELPERS_INSTANTIATE(T)                                                                              \
  template void pad_planes<T>(int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, float, const T*, T*); \
  template void crop_planes<T>(int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, const T*, T*);      \
  template void maxpool_backward<T>(const PoolGeom&, const T*, const T*, T*);                                    \
  template void column_sums<T>(int64_t, int64_t, const T*, float*);                                              \
  template void channel_sums<T>(int64_t, int64_t, int64_t, const T*, float*);
TTQ_HELPERS_INSTANTIATE(float)
TTQ_HELPERS_INSTANTIATE(bf16)
#undef TTQ_HELPERS_INSTANTIATE

}  // namespace ttq::cuda::helpers
