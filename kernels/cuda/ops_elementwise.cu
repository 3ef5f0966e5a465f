// The project's own CUDA ops of kernels/cuda/ops_cuda.h: pooling to a vector, ReLU, the option-A
// shortcut, elementwise arithmetic, TTQ on one tensor, the optimizer updates, softmax
// cross-entropy and top-k counting. Semantics are those of the reference kernels
// (kernels/cpu/ops_ref.h) and of the CPU paths in kernels/ops.cpp; the per-element TTQ and
// optimizer formulas are the shared ones (kernels/ttq_math.h, kernels/optim_math.h).
//
// Every kernel is enqueued on cudaStreamPerThread (the stream device memory is allocated on), runs
// grid-stride loops over int64 indices, and is checked with cudaGetLastError right after launch.
//
// Determinism: no float atomics anywhere. Row reductions (global average pool, softmax) run one
// warp per row: lane j folds elements j, j + 32, ... in order, then a fixed xor-shuffle tree
// combines the lanes (commutative adds, so every lane ends with the same bits). The mean loss
// over rows is summed in double by one thread in row order. The TTQ reductions are those of
// kernels/cuda/ttq_kernels.cu (fixed-order partials). Top-k counting sums integers (exact, in any
// order). So the same inputs give bitwise identical outputs on every run.
//
// Exactness against the CPU: the elementwise ops, the shortcut, the average-pool backward, the
// ternary codes and the softmax gradient do the CPU's float operations in the CPU's order and
// match bitwise. Sums (average pool forward, softmax, TTQ scale gradients) are formed in double in
// another order and agree to rounding. The optimizer updates may differ by an ulp because nvcc
// contracts a*b+c into fused multiply-adds.
//
// bf16 (precision "bf16"). The activation kernels (global average pool, ReLU, shortcut, add,
// accumulate, softmax cross-entropy, top-k) are templates on the stored element type, instantiated
// for float and ttq::bf16: they load through load() (bf16 widened to f32, exact), do exactly the
// f32 kernel's arithmetic, and store through store() (one round-to-nearest-even per output
// element), see kernels/cuda/bf16_device.cuh. So a bf16 op gives the CPU emulation's result (the
// f32 reference on the widened inputs, rounded): bitwise where the f32 kernel matches the CPU
// bitwise (ReLU, add, accumulate, shortcut, average-pool backward, softmax gradient, top-k), and
// to within one bf16 rounding of it elsewhere. Also here: the f32 <-> bf16 casts, f32 += bf16
// accumulation, and TTQ forward writing w_t in bf16.
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>

#include "kernels/act_math.h"
#include "kernels/cuda/bf16_device.cuh"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/ops_cuda.h"
#include "kernels/cuda/ttq_kernels.h"
#include "kernels/optim_math.h"
#include "kernels/ttq_math.h"

namespace ttq::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kWarp = 32;
constexpr int kWarpsPerBlock = kThreads / kWarp;
constexpr int64_t kMaxBlocks = 8192;  // grid-stride loops cover the rest
constexpr unsigned kFullMask = 0xffffffffu;

// All work goes on the per-thread default stream, like the device allocations.
inline cudaStream_t stream() { return cudaStreamPerThread; }

// Blocks for one thread per item, capped (the kernels loop with a grid stride).
unsigned blocks_for_items(int64_t items) {
  return static_cast<unsigned>(std::clamp<int64_t>((items + kThreads - 1) / kThreads, 1, kMaxBlocks));
}
// Blocks for one warp per row, capped.
unsigned blocks_for_rows(int64_t rows) {
  return static_cast<unsigned>(std::clamp<int64_t>((rows + kWarpsPerBlock - 1) / kWarpsPerBlock, 1, kMaxBlocks));
}

void check_count(const char* op, int64_t count) {
  TTQ_CHECK(count >= 0, op << ": negative element count " << count);
}

// Stream-ordered scratch device memory, freed (stream-ordered) when the scope ends: work enqueued
// before the free completes before the memory is reused.
class Scratch {
 public:
  explicit Scratch(size_t nbytes) {
    CUDA_CHECK(cudaMallocAsync(&p_, std::max<size_t>(nbytes, 1), stream()));
  }
  ~Scratch() {
    if (p_) CUDA_CHECK_NOTHROW(cudaFreeAsync(p_, stream()));
  }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  void* get() const { return p_; }

 private:
  void* p_ = nullptr;
};

#define TTQ_GRID_STRIDE(i, n)                                                                \
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < (n); \
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)

// Warp-uniform loop over rows, one warp per row; `lane` is the thread's lane in its warp.
#define TTQ_WARP_ROWS(row, rows)                                                                           \
  for (int64_t row = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / kWarp; row < (rows); \
       row += static_cast<int64_t>(gridDim.x) * blockDim.x / kWarp)

// Fixed xor-butterfly over the warp; every lane ends with the same value.
__device__ __forceinline__ double warp_sum(double v) {
  for (int off = kWarp / 2; off > 0; off /= 2) v += __shfl_xor_sync(kFullMask, v, off);
  return v;
}
__device__ __forceinline__ long long warp_sum(long long v) {
  for (int off = kWarp / 2; off > 0; off /= 2) v += __shfl_xor_sync(kFullMask, v, off);
  return v;
}
__device__ __forceinline__ float warp_max(float v) {
  for (int off = kWarp / 2; off > 0; off /= 2) v = fmaxf(v, __shfl_xor_sync(kFullMask, v, off));
  return v;
}

// ---- global average pool -----------------------------------------------------------------------

// y[row] = (sum_j x[row * hw + j]) / hw, summed in double.
template <class T>
__global__ void avgpool_forward_kernel(int64_t rows, int64_t hw, const T* __restrict__ x, T* __restrict__ y) {
  const int lane = threadIdx.x % kWarp;
  TTQ_WARP_ROWS(row, rows) {
    const T* xp = x + row * hw;
    double acc = 0.0;
    for (int64_t j = lane; j < hw; j += kWarp) acc += load(xp, j);
    acc = warp_sum(acc);
    if (lane == 0) store(y, row, static_cast<float>(acc / static_cast<double>(hw)));
  }
}

template <class T>
__global__ void avgpool_backward_kernel(int64_t total, int64_t hw, const T* __restrict__ dy, T* __restrict__ dx) {
  const float div = static_cast<float>(hw);
  TTQ_GRID_STRIDE(i, total) store(dx, i, load(dy, i / hw) / div);
}

// ---- elementwise ---------------------------------------------------------------------------------
// No __restrict__: relu_forward may run in place and add's output may alias an input.

template <class T>
__global__ void relu_forward_kernel(int64_t count, const T* x, T* y) {
  TTQ_GRID_STRIDE(i, count) {
    const float v = load(x, i);
    store(y, i, math::relu_passes(v) ? v : 0.0f);
  }
}

template <class T>
__global__ void relu_backward_kernel(int64_t count, const T* y, const T* dy, T* dx) {
  TTQ_GRID_STRIDE(i, count) store(dx, i, math::relu_passes(load(y, i)) ? load(dy, i) : 0.0f);
}

template <class T>
__global__ void add_kernel(int64_t count, const T* a, const T* b, T* out) {
  TTQ_GRID_STRIDE(i, count) store(out, i, load(a, i) + load(b, i));
}

// dst (TD) += src (TS): f32 += f32, bf16 += bf16, f32 += bf16.
template <class TD, class TS>
__global__ void add_accumulate_kernel(int64_t count, TD* dst, const TS* src) {
  TTQ_GRID_STRIDE(i, count) store(dst, i, load(dst, i) + load(src, i));
}

// dst = src in dst's type (f32 -> bf16 rounds to nearest even, bf16 -> f32 is exact).
template <class TD, class TS>
__global__ void cast_kernel(int64_t count, const TS* __restrict__ src, TD* __restrict__ dst) {
  TTQ_GRID_STRIDE(i, count) store(dst, i, load(src, i));
}

// Same as std::max(p, lo) (NaN and -0 stay as they are), not fmaxf.
__global__ void clamp_min_kernel(int64_t count, float* p, float lo) {
  TTQ_GRID_STRIDE(i, count) {
    const float v = p[i];
    p[i] = v < lo ? lo : v;
  }
}

// ---- option-A shortcut ---------------------------------------------------------------------------

// One thread per output element: the average over the stride x stride window clipped to the
// input (double, the reference's order), or 0 in the padded channels.
template <class T>
__global__ void shortcut_a_forward_kernel(int64_t n, int64_t c_in, int64_t h, int64_t w, int64_t c_out,
                                          int64_t pad_before, int64_t stride, int64_t oh, int64_t ow,
                                          const T* __restrict__ x, T* __restrict__ y) {
  const int64_t total = n * c_out * oh * ow;
  TTQ_GRID_STRIDE(i, total) {
    const int64_t ox = i % ow;
    int64_t t = i / ow;
    const int64_t oy = t % oh;
    t /= oh;
    const int64_t co = t % c_out;
    const int64_t b = t / c_out;
    const int64_t c = co - pad_before;
    if (c < 0 || c >= c_in) {
      store(y, i, 0.0f);
      continue;
    }
    const T* xp = x + (b * c_in + c) * h * w;
    const int64_t y_end = min(h, oy * stride + stride), x_end = min(w, ox * stride + stride);
    double acc = 0.0;
    int64_t cnt = 0;
    for (int64_t iy = oy * stride; iy < y_end; ++iy)
      for (int64_t ix = ox * stride; ix < x_end; ++ix, ++cnt) acc += load(xp, iy * w + ix);
    store(y, i, static_cast<float>(acc / static_cast<double>(cnt)));
  }
}

// One thread per input element: its window's gradient divided by the window's size.
template <class T>
__global__ void shortcut_a_backward_kernel(int64_t n, int64_t c_in, int64_t h, int64_t w, int64_t c_out,
                                           int64_t pad_before, int64_t stride, int64_t oh, int64_t ow,
                                           const T* __restrict__ dy, T* __restrict__ dx) {
  const int64_t total = n * c_in * h * w;
  TTQ_GRID_STRIDE(i, total) {
    const int64_t ix = i % w;
    int64_t t = i / w;
    const int64_t iy = t % h;
    t /= h;
    const int64_t c = t % c_in;
    const int64_t b = t / c_in;
    const int64_t oy = iy / stride, ox = ix / stride;
    const int64_t cnt = (min(h, oy * stride + stride) - oy * stride) * (min(w, ox * stride + stride) - ox * stride);
    store(dx, i, load(dy, ((b * c_out + c + pad_before) * oh + oy) * ow + ox) / static_cast<float>(cnt));
  }
}

// ---- TTQ -----------------------------------------------------------------------------------------

// dwp += tmp[0], dwn += tmp[1] (float adds, as the CPU path does with the rounded sums).
__global__ void add_scale_grads_kernel(const float* tmp, float* dwp, float* dwn) {
  if (blockIdx.x == 0 && threadIdx.x == 0) {
    *dwp = *dwp + tmp[0];
    *dwn = *dwn + tmp[1];
  }
}

// ---- optimizers ----------------------------------------------------------------------------------

__global__ void sgd_kernel(int64_t count, float* __restrict__ p, const float* __restrict__ g,
                           float* __restrict__ buf, float lr, float momentum, float wd, bool nesterov,
                           bool first_step) {
  TTQ_GRID_STRIDE(i, count) {
    float w = p[i];
    float unused = 0.0f;
    float b = buf ? buf[i] : unused;
    math::sgd_update(w, g[i], b, lr, momentum, wd, nesterov, first_step);
    p[i] = w;
    if (buf) buf[i] = b;
  }
}

__global__ void adam_kernel(int64_t count, float* __restrict__ p, const float* __restrict__ g,
                            float* __restrict__ m, float* __restrict__ v, float lr, float beta1, float beta2,
                            float eps, float wd, float bc1, float bc2) {
  TTQ_GRID_STRIDE(i, count) {
    float w = p[i], mi = m[i], vi = v[i];
    math::adam_update(w, g[i], mi, vi, lr, beta1, beta2, eps, wd, bc1, bc2);
    p[i] = w;
    m[i] = mi;
    v[i] = vi;
  }
}

// ---- softmax cross-entropy -------------------------------------------------------------------------

// One warp per row: max, log-sum-exp and probabilities, and the row's loss
// -sum_k target_k * log p_k (double) into row_loss[row]. A label outside [0, classes) makes the
// row's loss NaN, so the mean is NaN and the trainer's finite-loss check reports it (the labels
// stay on the device: no check on the host).
template <class T>
__global__ void softmax_xent_rows_kernel(int64_t n, int64_t classes, const T* __restrict__ logits,
                                         const int32_t* __restrict__ labels, float label_smoothing,
                                         float* __restrict__ probs, double* __restrict__ row_loss) {
  const int lane = threadIdx.x % kWarp;
  const double off = static_cast<double>(label_smoothing) / static_cast<double>(classes);
  const double on = 1.0 - label_smoothing;
  TTQ_WARP_ROWS(row, n) {
    const T* z = logits + row * classes;
    float* p = probs + row * classes;
    const int64_t label = labels[row];
    float zmax = -INFINITY;
    for (int64_t k = lane; k < classes; k += kWarp) zmax = fmaxf(zmax, load(z, k));
    zmax = warp_max(zmax);
    double sum = 0.0;
    for (int64_t k = lane; k < classes; k += kWarp) sum += exp(static_cast<double>(load(z, k)) - zmax);
    sum = warp_sum(sum);
    const double log_sum = log(sum) + zmax;
    double loss = 0.0;
    for (int64_t k = lane; k < classes; k += kWarp) {
      const double logp = load(z, k) - log_sum;
      p[k] = static_cast<float>(exp(logp));
      const double target = off + (k == label ? on : 0.0);
      loss -= target * logp;
    }
    loss = warp_sum(loss);
    if (lane == 0) row_loss[row] = (label >= 0 && label < classes) ? loss : static_cast<double>(NAN);
  }
}

// One thread: the mean of the row losses, summed in row order.
__global__ void mean_loss_kernel(int64_t n, const double* __restrict__ row_loss, float* __restrict__ loss) {
  if (blockIdx.x == 0 && threadIdx.x == 0) {
    double total = 0.0;
    for (int64_t i = 0; i < n; ++i) total += row_loss[i];
    *loss = static_cast<float>(total / static_cast<double>(n));
  }
}

// dlogits = (probs - target) / n in float, the reference's operations.
template <class T>
__global__ void softmax_xent_backward_kernel(int64_t n, int64_t classes, const float* __restrict__ probs,
                                             const int32_t* __restrict__ labels, float label_smoothing,
                                             T* __restrict__ dlogits) {
  const float off = label_smoothing / static_cast<float>(classes);
  const float inv_n = 1.0f / static_cast<float>(n);
  const int64_t total = n * classes;
  TTQ_GRID_STRIDE(i, total) {
    const int64_t row = i / classes, k = i % classes;
    const float target = off + (k == labels[row] ? 1.0f - label_smoothing : 0.0f);
    store(dlogits, i, (probs[i] - target) * inv_n);
  }
}

// ---- top-k ---------------------------------------------------------------------------------------

// One warp per row: the label's rank (classes with a larger logit, or an equal one at a lower
// index); the row counts when the rank is below k. Rows with a label outside [0, classes) never
// count.
template <class T>
__global__ void topk_kernel(int64_t n, int64_t classes, const T* __restrict__ logits,
                            const int32_t* __restrict__ labels, int k, unsigned long long* __restrict__ correct) {
  const int lane = threadIdx.x % kWarp;
  TTQ_WARP_ROWS(row, n) {
    const int64_t label = labels[row];
    if (label < 0 || label >= classes) continue;  // warp-uniform
    const T* z = logits + row * classes;
    const float target = load(z, label);
    long long above = 0;
    for (int64_t j = lane; j < classes; j += kWarp) {
      const float v = load(z, j);
      above += math::ranks_before(v, j, target, label) ? 1 : 0;
    }
    above = warp_sum(above);
    if (lane == 0 && above < k) atomicAdd(correct, 1ull);
  }
}

}  // namespace

// ---- host entry points ---------------------------------------------------------------------------
// Each op is one template (float or bf16 activations) with a thin overload per type.

namespace {

template <class T>
void global_avgpool_forward_impl(int64_t n, int64_t c, int64_t hw, const T* x, T* y) {
  check_count("global_avgpool_forward", n * c);
  const int64_t rows = n * c;
  if (rows == 0) return;
  avgpool_forward_kernel<T><<<blocks_for_rows(rows), kThreads, 0, stream()>>>(rows, hw, x, y);
  CUDA_CHECK(cudaGetLastError());
}

template <class T>
void global_avgpool_backward_impl(int64_t n, int64_t c, int64_t hw, const T* dy, T* dx) {
  const int64_t total = n * c * hw;
  check_count("global_avgpool_backward", total);
  if (total == 0) return;
  avgpool_backward_kernel<T><<<blocks_for_items(total), kThreads, 0, stream()>>>(total, hw, dy, dx);
  CUDA_CHECK(cudaGetLastError());
}

template <class T>
void relu_forward_impl(int64_t count, const T* x, T* y) {
  check_count("relu_forward", count);
  if (count == 0) return;
  relu_forward_kernel<T><<<blocks_for_items(count), kThreads, 0, stream()>>>(count, x, y);
  CUDA_CHECK(cudaGetLastError());
}

template <class T>
void relu_backward_impl(int64_t count, const T* y, const T* dy, T* dx) {
  check_count("relu_backward", count);
  if (count == 0) return;
  relu_backward_kernel<T><<<blocks_for_items(count), kThreads, 0, stream()>>>(count, y, dy, dx);
  CUDA_CHECK(cudaGetLastError());
}

void check_shortcut(const char* op, int64_t c_in, int64_t c_out, int64_t pad_before, int64_t stride) {
  TTQ_CHECK(stride >= 1, op << ": stride " << stride);
  TTQ_CHECK(pad_before >= 0 && pad_before + c_in <= c_out,
            op << ": " << c_in << " channels with " << pad_before << " in front do not fit in " << c_out);
}

template <class T>
void shortcut_a_forward_impl(int64_t n, int64_t c_in, int64_t h, int64_t w, int64_t c_out, int64_t pad_before,
                             int64_t stride, const T* x, T* y) {
  check_shortcut("shortcut_a_forward", c_in, c_out, pad_before, stride);
  const int64_t oh = (h + stride - 1) / stride, ow = (w + stride - 1) / stride;
  const int64_t total = n * c_out * oh * ow;
  check_count("shortcut_a_forward", total);
  if (total == 0) return;
  shortcut_a_forward_kernel<T><<<blocks_for_items(total), kThreads, 0, stream()>>>(n, c_in, h, w, c_out, pad_before,
                                                                                   stride, oh, ow, x, y);
  CUDA_CHECK(cudaGetLastError());
}

template <class T>
void shortcut_a_backward_impl(int64_t n, int64_t c_in, int64_t h, int64_t w, int64_t c_out, int64_t pad_before,
                              int64_t stride, const T* dy, T* dx) {
  check_shortcut("shortcut_a_backward", c_in, c_out, pad_before, stride);
  const int64_t oh = (h + stride - 1) / stride, ow = (w + stride - 1) / stride;
  const int64_t total = n * c_in * h * w;
  check_count("shortcut_a_backward", total);
  if (total == 0) return;
  shortcut_a_backward_kernel<T><<<blocks_for_items(total), kThreads, 0, stream()>>>(n, c_in, h, w, c_out, pad_before,
                                                                                    stride, oh, ow, dy, dx);
  CUDA_CHECK(cudaGetLastError());
}

template <class T>
void add_impl(int64_t count, const T* a, const T* b, T* out) {
  check_count("add", count);
  if (count == 0) return;
  add_kernel<T><<<blocks_for_items(count), kThreads, 0, stream()>>>(count, a, b, out);
  CUDA_CHECK(cudaGetLastError());
}

template <class TD, class TS>
void add_accumulate_impl(int64_t count, TD* dst, const TS* src) {
  check_count("add_accumulate", count);
  if (count == 0) return;
  add_accumulate_kernel<TD, TS><<<blocks_for_items(count), kThreads, 0, stream()>>>(count, dst, src);
  CUDA_CHECK(cudaGetLastError());
}

template <class TD, class TS>
void cast_impl(int64_t count, const TS* src, TD* dst) {
  check_count("cast", count);
  if (count == 0) return;
  cast_kernel<TD, TS><<<blocks_for_items(count), kThreads, 0, stream()>>>(count, src, dst);
  CUDA_CHECK(cudaGetLastError());
}

template <class T>
void ttq_forward_impl(math::ThresholdMode mode, float t, double r, const float* latent, int64_t n, int64_t channels,
                      const float* wp, const float* wn, float* threshold, float* twn_scale, T* w_t, int8_t* codes) {
  check_count("ttq_forward", n);
  const size_t ws_bytes = ttq_workspace_bytes(n);
  Scratch ws(ws_bytes);
  // Writes D, and the TWN scale (0 in the other modes), both in device memory.
  ttq_threshold(mode, latent, n, t, r, threshold, twn_scale, ws.get(), ws_bytes, stream());
  const bool twn = mode == math::ThresholdMode::Twn;
  if (!twn && channels > 1)
    ttq_ternarize_channels(latent, n, channels, threshold, wp, wn, w_t, codes, stream());
  else
    ttq_ternarize(latent, n, threshold, twn ? twn_scale : wp, twn ? twn_scale : wn, w_t, codes, stream());
}

template <class T>
void softmax_xent_forward_impl(int64_t n, int64_t classes, const T* logits, const int32_t* labels,
                               float label_smoothing, float* probs, float* loss) {
  TTQ_CHECK(n > 0 && classes > 0, "softmax_xent_forward: " << n << " rows of " << classes << " classes");
  Scratch row_loss(static_cast<size_t>(n) * sizeof(double));
  auto* rl = static_cast<double*>(row_loss.get());
  softmax_xent_rows_kernel<T><<<blocks_for_rows(n), kThreads, 0, stream()>>>(n, classes, logits, labels,
                                                                             label_smoothing, probs, rl);
  CUDA_CHECK(cudaGetLastError());
  mean_loss_kernel<<<1, 1, 0, stream()>>>(n, rl, loss);
  CUDA_CHECK(cudaGetLastError());
}

template <class T>
void softmax_xent_backward_impl(int64_t n, int64_t classes, const float* probs, const int32_t* labels,
                                float label_smoothing, T* dlogits) {
  TTQ_CHECK(n >= 0 && classes >= 0, "softmax_xent_backward: " << n << " rows of " << classes << " classes");
  const int64_t total = n * classes;
  if (total == 0) return;
  softmax_xent_backward_kernel<T><<<blocks_for_items(total), kThreads, 0, stream()>>>(n, classes, probs, labels,
                                                                                      label_smoothing, dlogits);
  CUDA_CHECK(cudaGetLastError());
}

template <class T>
void count_topk_correct_impl(int64_t n, int64_t classes, const T* logits, const int32_t* labels, int k,
                             int64_t* correct) {
  TTQ_CHECK(n >= 0 && classes >= 0, "count_topk_correct: " << n << " rows of " << classes << " classes");
  static_assert(sizeof(int64_t) == sizeof(unsigned long long));
  CUDA_CHECK(cudaMemsetAsync(correct, 0, sizeof(int64_t), stream()));
  if (n == 0 || classes == 0) return;
  topk_kernel<T><<<blocks_for_rows(n), kThreads, 0, stream()>>>(n, classes, logits, labels, k,
                                                                reinterpret_cast<unsigned long long*>(correct));
  CUDA_CHECK(cudaGetLastError());
}

}  // namespace

void global_avgpool_forward(int64_t n, int64_t c, int64_t hw, const float* x, float* y) {
  global_avgpool_forward_impl(n, c, hw, x, y);
}
void global_avgpool_forward(int64_t n, int64_t c, int64_t hw, const bf16* x, bf16* y) {
  global_avgpool_forward_impl(n, c, hw, x, y);
}

void global_avgpool_backward(int64_t n, int64_t c, int64_t hw, const float* dy, float* dx) {
  global_avgpool_backward_impl(n, c, hw, dy, dx);
}
void global_avgpool_backward(int64_t n, int64_t c, int64_t hw, const bf16* dy, bf16* dx) {
  global_avgpool_backward_impl(n, c, hw, dy, dx);
}

void relu_forward(int64_t count, const float* x, float* y) { relu_forward_impl(count, x, y); }
void relu_forward(int64_t count, const bf16* x, bf16* y) { relu_forward_impl(count, x, y); }

void relu_backward(int64_t count, const float* y, const float* dy, float* dx) { relu_backward_impl(count, y, dy, dx); }
void relu_backward(int64_t count, const bf16* y, const bf16* dy, bf16* dx) { relu_backward_impl(count, y, dy, dx); }

void shortcut_a_forward(int64_t n, int64_t c_in, int64_t h, int64_t w, int64_t c_out, int64_t pad_before,
                        int64_t stride, const float* x, float* y) {
  shortcut_a_forward_impl(n, c_in, h, w, c_out, pad_before, stride, x, y);
}
void shortcut_a_forward(int64_t n, int64_t c_in, int64_t h, int64_t w, int64_t c_out, int64_t pad_before,
                        int64_t stride, const bf16* x, bf16* y) {
  shortcut_a_forward_impl(n, c_in, h, w, c_out, pad_before, stride, x, y);
}

void shortcut_a_backward(int64_t n, int64_t c_in, int64_t h, int64_t w, int64_t c_out, int64_t pad_before,
                         int64_t stride, const float* dy, float* dx) {
  shortcut_a_backward_impl(n, c_in, h, w, c_out, pad_before, stride, dy, dx);
}
void shortcut_a_backward(int64_t n, int64_t c_in, int64_t h, int64_t w, int64_t c_out, int64_t pad_before,
                         int64_t stride, const bf16* dy, bf16* dx) {
  shortcut_a_backward_impl(n, c_in, h, w, c_out, pad_before, stride, dy, dx);
}

void add(int64_t count, const float* a, const float* b, float* out) { add_impl(count, a, b, out); }
void add(int64_t count, const bf16* a, const bf16* b, bf16* out) { add_impl(count, a, b, out); }

void add_accumulate(int64_t count, float* dst, const float* src) { add_accumulate_impl(count, dst, src); }
void add_accumulate(int64_t count, bf16* dst, const bf16* src) { add_accumulate_impl(count, dst, src); }
void add_accumulate(int64_t count, float* dst, const bf16* src) { add_accumulate_impl(count, dst, src); }

void cast(int64_t count, const float* src, bf16* dst) { cast_impl(count, src, dst); }
void cast(int64_t count, const bf16* src, float* dst) { cast_impl(count, src, dst); }

void clamp_min_inplace(int64_t count, float* p, float lo) {
  check_count("clamp_min_inplace", count);
  if (count == 0) return;
  clamp_min_kernel<<<blocks_for_items(count), kThreads, 0, stream()>>>(count, p, lo);
  CUDA_CHECK(cudaGetLastError());
}

void ttq_forward(math::ThresholdMode mode, float t, double r, const float* latent, int64_t n, int64_t channels,
                 const float* wp, const float* wn, float* threshold, float* twn_scale, float* w_t, int8_t* codes) {
  ttq_forward_impl(mode, t, r, latent, n, channels, wp, wn, threshold, twn_scale, w_t, codes);
}
void ttq_forward(math::ThresholdMode mode, float t, double r, const float* latent, int64_t n, int64_t channels,
                 const float* wp, const float* wn, float* threshold, float* twn_scale, bf16* w_t, int8_t* codes) {
  ttq_forward_impl(mode, t, r, latent, n, channels, wp, wn, threshold, twn_scale, w_t, codes);
}

void ttq_backward_accumulate(const int8_t* codes, const float* g, int64_t n, int64_t channels, const float* wp,
                             const float* wn, bool scale_latent, float* latent_grad, float* dwp, float* dwn) {
  check_count("ttq_backward_accumulate", n);
  if (scale_latent && channels > 1) {  // one block per row adds its own scale gradients: no scratch
    ttq_backward_channels_accumulate(codes, g, n, channels, wp, wn, latent_grad, dwp, dwn, stream());
    return;
  }
  // One allocation: the reduction workspace, then the two rounded scale gradients.
  const size_t ws_bytes = ttq_workspace_bytes(n);
  const size_t tmp_offset = (ws_bytes + alignof(double) - 1) / alignof(double) * alignof(double);
  Scratch scratch(tmp_offset + 2 * sizeof(float));
  float* tmp = reinterpret_cast<float*>(static_cast<char*>(scratch.get()) + tmp_offset);
  ttq_backward(codes, g, n, wp, wn, scale_latent, latent_grad, tmp, tmp + 1, scratch.get(), ws_bytes, stream());
  if (!scale_latent) return;  // TWN: the scale is not trained, no scale gradients
  add_scale_grads_kernel<<<1, 1, 0, stream()>>>(tmp, dwp, dwn);
  CUDA_CHECK(cudaGetLastError());
}

void sgd_update(int64_t count, float* p, const float* g, float* momentum_buf, float lr, float momentum, float wd,
                bool nesterov, bool first_step) {
  check_count("sgd_update", count);
  if (count == 0) return;
  sgd_kernel<<<blocks_for_items(count), kThreads, 0, stream()>>>(count, p, g, momentum_buf, lr, momentum, wd,
                                                                 nesterov, first_step);
  CUDA_CHECK(cudaGetLastError());
}

void adam_update(int64_t count, float* p, const float* g, float* m, float* v, float lr, float beta1, float beta2,
                 float eps, float wd, float bc1, float bc2) {
  check_count("adam_update", count);
  if (count == 0) return;
  adam_kernel<<<blocks_for_items(count), kThreads, 0, stream()>>>(count, p, g, m, v, lr, beta1, beta2, eps, wd, bc1,
                                                                  bc2);
  CUDA_CHECK(cudaGetLastError());
}

void softmax_xent_forward(int64_t n, int64_t classes, const float* logits, const int32_t* labels,
                          float label_smoothing, float* probs, float* loss) {
  softmax_xent_forward_impl(n, classes, logits, labels, label_smoothing, probs, loss);
}
void softmax_xent_forward(int64_t n, int64_t classes, const bf16* logits, const int32_t* labels,
                          float label_smoothing, float* probs, float* loss) {
  softmax_xent_forward_impl(n, classes, logits, labels, label_smoothing, probs, loss);
}

void softmax_xent_backward(int64_t n, int64_t classes, const float* probs, const int32_t* labels,
                           float label_smoothing, float* dlogits) {
  softmax_xent_backward_impl(n, classes, probs, labels, label_smoothing, dlogits);
}
void softmax_xent_backward(int64_t n, int64_t classes, const float* probs, const int32_t* labels,
                           float label_smoothing, bf16* dlogits) {
  softmax_xent_backward_impl(n, classes, probs, labels, label_smoothing, dlogits);
}

void count_topk_correct(int64_t n, int64_t classes, const float* logits, const int32_t* labels, int k,
                        int64_t* correct) {
  count_topk_correct_impl(n, classes, logits, labels, k, correct);
}
void count_topk_correct(int64_t n, int64_t classes, const bf16* logits, const int32_t* labels, int k,
                        int64_t* correct) {
  count_topk_correct_impl(n, classes, logits, labels, k, correct);
}

}  // namespace ttq::cuda
