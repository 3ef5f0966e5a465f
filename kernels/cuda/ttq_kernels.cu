// CUDA TTQ kernels, per tensor: threshold, ternarize, backward (see ttq_kernels.h).
//
// Deterministic reductions: a reduction kernel runs reduce_blocks(n) blocks (a function of n
// only); every thread folds its grid-stride elements in order, cub::BlockReduce combines a block
// in a fixed tree, the block writes one partial to the workspace, and a single-block finish kernel
// folds the partials in a fixed order and writes the scalar results to device memory.
//
// Sparsity threshold: a radix select on the bit patterns of |w| (for non-negative floats the
// uint32 pattern orders like the value). Four passes, one 8-bit digit each from the top: count
// the digits of the elements whose higher digits match the prefix found so far, then one block
// finds the bin holding rank k and extends the prefix. After the last digit the prefix is exactly
// the bit pattern of the k-th smallest |w|. The digit arithmetic is kernels/cuda/radix_walk.h,
// which tests/test_radix_walk.cpp runs on the host against the CPU threshold.
//
// Ternarize writes w_t in f32 or bf16 (one kernel template on the output type): the bf16 values
// are Wp, 0, -Wn rounded to nearest even; the codes do not depend on the output type.
#include "kernels/cuda/ttq_kernels.h"

#include <cub/block/block_scan.cuh>

#include <algorithm>

#include "kernels/cuda/bf16_device.cuh"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/radix_walk.h"
#include "kernels/cuda/ttq_device.cuh"

namespace ttq::cuda {
namespace {

using ttq_device::kThreads;
using ttq_device::MaxOp;
using ttq_device::Pair;
using ttq_device::SumOp;
using ttq_device::block_reduce;

constexpr int64_t kMaxReduceBlocks = 1024;  // partials per reduction
constexpr int64_t kMaxMapBlocks = 8192;     // elementwise kernels

constexpr int kRadixBins = radix::kBins;
constexpr int kRadixPasses = radix::kPasses;

// Sparsity-select progress: the digits of the answer found so far and the rank of the answer
// among the elements that share them.
struct SelectState {
  uint32_t prefix;
  int64_t rank;
};

int64_t blocks_for(int64_t n, int64_t cap) {
  return std::clamp<int64_t>((n + kThreads - 1) / kThreads, 1, cap);
}
int64_t reduce_blocks(int64_t n) { return blocks_for(n, kMaxReduceBlocks); }

// Workspace: reduce_blocks(n) partials, then the radix histograms (one per pass), then the state.
struct Workspace {
  Pair* partials;
  unsigned long long* hist;
  SelectState* select;
};
size_t hist_offset(int64_t n) { return static_cast<size_t>(reduce_blocks(n)) * sizeof(Pair); }
constexpr size_t kHistBytes = sizeof(unsigned long long) * kRadixPasses * kRadixBins;
static_assert(kHistBytes % alignof(SelectState) == 0);

Workspace carve(void* ws, size_t ws_bytes, int64_t n) {
  TTQ_CHECK(n >= 0, "TTQ kernels: negative element count " << n);
  TTQ_CHECK(ws != nullptr && ws_bytes >= ttq_workspace_bytes(n),
            "TTQ kernels: workspace of " << ws_bytes << " bytes, need " << ttq_workspace_bytes(n));
  TTQ_CHECK(reinterpret_cast<uintptr_t>(ws) % alignof(Pair) == 0,
            "TTQ kernels: workspace not " << alignof(Pair) << "-byte aligned");
  char* base = static_cast<char*>(ws);
  return {reinterpret_cast<Pair*>(base),
          reinterpret_cast<unsigned long long*>(base + hist_offset(n)),
          reinterpret_cast<SelectState*>(base + hist_offset(n) + kHistBytes)};
}

#define TTQ_GRID_STRIDE(i, n)                                                         \
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < (n); \
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)

// ---- reductions: per-block partials, then one finishing block --------------------------------

__global__ void max_abs_partials(const float* w, int64_t n, Pair* partials) {
  float m = 0.0f;  // fmaxf skips NaN like std::max(m, NaN) in the CPU loop
  TTQ_GRID_STRIDE(i, n) m = fmaxf(m, fabsf(w[i]));
  const Pair r = block_reduce(Pair{m, 0.0}, MaxOp{});
  if (threadIdx.x == 0) partials[blockIdx.x] = r;
}

// (sum |w|, count) over all w (NaN included, as the CPU's sum), or only over |w| > *d when d is
// given.
__global__ void sum_abs_partials(const float* w, int64_t n, const float* d, Pair* partials) {
  const float above = d ? *d : 0.0f;
  Pair s{0.0, 0.0};
  TTQ_GRID_STRIDE(i, n) {
    const float a = fabsf(w[i]);
    if (!d || a > above) {
      s.a += a;
      s.b += 1.0;
    }
  }
  const Pair r = block_reduce(s, SumOp{});
  if (threadIdx.x == 0) partials[blockIdx.x] = r;
}

__global__ void backward_partials(const int8_t* codes, const float* g, int64_t n, const float* wp,
                                  const float* wn, bool scale_latent, float* latent_grad,
                                  Pair* partials) {
  const float p = scale_latent ? *wp : 0.0f;
  const float m = scale_latent ? *wn : 0.0f;
  Pair s{0.0, 0.0};
  TTQ_GRID_STRIDE(i, n) ttq_device::backward_element(i, codes, g, p, m, scale_latent, latent_grad, s);
  const Pair r = block_reduce(s, SumOp{});
  if (threadIdx.x == 0) partials[blockIdx.x] = r;
}

// One block: folds the partials (identity (0, 0), valid for sums and for maxima of |w|).
template <class Op, class Finish>
__global__ void finish_kernel(const Pair* partials, int nparts, Op op, Finish finish) {
  Pair v{0.0, 0.0};
  for (int i = threadIdx.x; i < nparts; i += kThreads) v = op(v, partials[i]);
  const Pair r = block_reduce(v, op);
  if (threadIdx.x == 0) finish(r);
}

struct FinishMax {
  float t;
  float* d;
  float* twn_scale;
  __device__ void operator()(const Pair& r) const {
    *d = math::threshold_from_max(static_cast<float>(r.a), t);
    if (twn_scale) *twn_scale = 0.0f;
  }
};
struct FinishTwnThreshold {
  int64_t n;
  float* d;
  __device__ void operator()(const Pair& r) const {
    *d = math::twn_threshold(static_cast<float>(r.a / static_cast<double>(n)));
  }
};
struct FinishTwnScale {
  float* twn_scale;
  __device__ void operator()(const Pair& r) const {
    *twn_scale = r.b > 0.0 ? static_cast<float>(r.a / r.b) : 0.0f;
  }
};
struct FinishBackward {
  float* dwp;
  float* dwn;
  __device__ void operator()(const Pair& r) const {
    *dwp = static_cast<float>(r.a);
    *dwn = static_cast<float>(r.b);
  }
};

template <class Op, class Finish>
void launch_finish(const Pair* partials, int64_t n, Op op, Finish finish, cudaStream_t stream) {
  finish_kernel<<<1, kThreads, 0, stream>>>(partials, static_cast<int>(reduce_blocks(n)), op,
                                            finish);
  CUDA_CHECK(cudaGetLastError());
}

// ---- sparsity: radix select on the bit patterns of |w| ---------------------------------------

// hist[digit] += number of w whose |w| has the current prefix (all digits above this pass's).
__global__ void radix_histogram(const float* w, int64_t n, int pass, const SelectState* state,
                                unsigned long long* hist) {
  __shared__ unsigned int local[kRadixBins];
  for (int b = threadIdx.x; b < kRadixBins; b += blockDim.x) local[b] = 0;
  __syncthreads();
  const uint32_t prefix = pass == 0 ? 0u : state->prefix;
  TTQ_GRID_STRIDE(i, n) {
    const uint32_t bits = radix::abs_bits(w[i]);
    if (radix::in_prefix(bits, pass, prefix)) atomicAdd(&local[radix::digit(bits, pass)], 1u);
  }
  __syncthreads();
  for (int b = threadIdx.x; b < kRadixBins; b += blockDim.x)
    if (local[b]) atomicAdd(&hist[b], static_cast<unsigned long long>(local[b]));
}

// One block, one thread per digit: the digit whose count range holds the rank extends the prefix.
// The rank is first_rank on pass 0 and carried in the state afterwards.
__global__ void radix_select(const unsigned long long* hist, int pass, int64_t first_rank,
                             SelectState* state, float* d) {
  using Scan = cub::BlockScan<unsigned long long, kRadixBins>;
  __shared__ typename Scan::TempStorage tmp;
  const uint32_t prefix = pass == 0 ? 0u : state->prefix;
  const auto rank = static_cast<unsigned long long>(pass == 0 ? first_rank : state->rank);
  const int digit = threadIdx.x;
  const unsigned long long count = hist[digit];
  unsigned long long below = 0;
  Scan(tmp).ExclusiveSum(count, below);
  __syncthreads();  // every thread has read the state before one thread rewrites it
  const radix::Step s = radix::select_step(pass, prefix, rank, digit, below, count);
  if (s.holds) {
    state->prefix = s.prefix;
    state->rank = static_cast<int64_t>(s.rank);
    if (pass == kRadixPasses - 1) *d = radix::from_bits(s.prefix);
  }
}

// ---- elementwise ------------------------------------------------------------------------------

template <class TOut>
__global__ void ternarize_kernel(const float* w, int64_t n, const float* d, const float* wp,
                                 const float* wn, TOut* w_t, int8_t* codes) {
  const float dv = *d, p = *wp, m = *wn;
  TTQ_GRID_STRIDE(i, n) {
    const int8_t code = math::ternary_code(w[i], dv);
    codes[i] = code;
    store(w_t, i, math::ternary_value(code, p, m));
  }
}

template <class TOut>
void ternarize(const float* w, int64_t n, const float* d, const float* wp, const float* wn,
               TOut* w_t, int8_t* codes, cudaStream_t stream) {
  TTQ_CHECK(n >= 0, "ttq_ternarize: negative element count " << n);
  if (n == 0) return;
  ternarize_kernel<TOut><<<static_cast<unsigned>(blocks_for(n, kMaxMapBlocks)), kThreads, 0, stream>>>(
      w, n, d, wp, wn, w_t, codes);
  CUDA_CHECK(cudaGetLastError());
}

// Per-output-channel scales: block c ternarizes row c with wp[c], wn[c].
template <class TOut>
__global__ void __launch_bounds__(kThreads)
    ternarize_channels_kernel(const float* w, int64_t per, const float* d, const float* wp, const float* wn,
                              TOut* w_t, int8_t* codes) {
  const int64_t c = blockIdx.x;
  ttq_device::ternarize_row(w, c * per, (c + 1) * per, *d, wp[c], wn[c], w_t, codes);
}

__global__ void __launch_bounds__(kThreads)
    backward_channels_kernel(const int8_t* codes, const float* g, int64_t per, const float* wp, const float* wn,
                             float* latent_grad, float* dwp, float* dwn) {
  const int64_t c = blockIdx.x;
  ttq_device::backward_row(codes, g, c * per, (c + 1) * per, c, wp, wn, latent_grad, dwp, dwn);
}

// Rows of a per-channel tensor, checked: one block each.
int64_t rows_of(const char* what, int64_t n, int64_t channels) {
  TTQ_CHECK(n >= 0 && math::scale_rows_fit(channels, n) && channels <= 0x7fffffff,
            what << ": " << channels << " channels do not divide " << n << " weights into rows");
  return n / channels;
}

template <class TOut>
void ternarize_channels(const float* w, int64_t n, int64_t channels, const float* d, const float* wp,
                        const float* wn, TOut* w_t, int8_t* codes, cudaStream_t stream) {
  const int64_t per = rows_of("ttq_ternarize_channels", n, channels);
  if (n == 0) return;
  ternarize_channels_kernel<TOut><<<static_cast<unsigned>(channels), kThreads, 0, stream>>>(w, per, d, wp, wn,
                                                                                         w_t, codes);
  CUDA_CHECK(cudaGetLastError());
}

void zero_scalar(float* p, cudaStream_t stream) {
  if (p) CUDA_CHECK(cudaMemsetAsync(p, 0, sizeof(float), stream));
}

}  // namespace

size_t ttq_workspace_bytes(int64_t n) { return hist_offset(n) + kHistBytes + sizeof(SelectState); }

void ttq_threshold(math::ThresholdMode mode, const float* w, int64_t n, float t, double r,
                   float* d_out, float* twn_scale_out, void* workspace, size_t workspace_bytes,
                   cudaStream_t stream) {
  const Workspace ws = carve(workspace, workspace_bytes, n);
  const auto blocks = static_cast<unsigned>(reduce_blocks(n));
  if (n == 0) {  // as on the CPU: D = 0, scale 0
    zero_scalar(d_out, stream);
    zero_scalar(twn_scale_out, stream);
    return;
  }
  switch (mode) {
    case math::ThresholdMode::Max:
      max_abs_partials<<<blocks, kThreads, 0, stream>>>(w, n, ws.partials);
      CUDA_CHECK(cudaGetLastError());
      launch_finish(ws.partials, n, MaxOp{}, FinishMax{t, d_out, twn_scale_out}, stream);
      break;
    case math::ThresholdMode::Sparsity: {
      zero_scalar(twn_scale_out, stream);
      const int64_t k = math::sparsity_rank(r, n);  // a function of r and n only: no sync needed
      if (k < 0) {
        zero_scalar(d_out, stream);
        break;
      }
      CUDA_CHECK(cudaMemsetAsync(ws.hist, 0, kHistBytes, stream));
      for (int pass = 0; pass < kRadixPasses; ++pass) {
        unsigned long long* hist = ws.hist + pass * kRadixBins;
        radix_histogram<<<blocks, kThreads, 0, stream>>>(w, n, pass, ws.select, hist);
        CUDA_CHECK(cudaGetLastError());
        radix_select<<<1, kRadixBins, 0, stream>>>(hist, pass, k, ws.select, d_out);
        CUDA_CHECK(cudaGetLastError());
      }
      break;
    }
    case math::ThresholdMode::Twn:
      sum_abs_partials<<<blocks, kThreads, 0, stream>>>(w, n, nullptr, ws.partials);
      CUDA_CHECK(cudaGetLastError());
      launch_finish(ws.partials, n, SumOp{}, FinishTwnThreshold{n, d_out}, stream);
      if (twn_scale_out) {
        sum_abs_partials<<<blocks, kThreads, 0, stream>>>(w, n, d_out, ws.partials);
        CUDA_CHECK(cudaGetLastError());
        launch_finish(ws.partials, n, SumOp{}, FinishTwnScale{twn_scale_out}, stream);
      }
      break;
    default:
      TTQ_FAIL("unknown threshold mode " << static_cast<int>(mode));
  }
}

void ttq_ternarize(const float* w, int64_t n, const float* d, const float* wp, const float* wn,
                   float* w_t, int8_t* codes, cudaStream_t stream) {
  ternarize(w, n, d, wp, wn, w_t, codes, stream);
}

void ttq_ternarize(const float* w, int64_t n, const float* d, const float* wp, const float* wn,
                   bf16* w_t, int8_t* codes, cudaStream_t stream) {
  ternarize(w, n, d, wp, wn, w_t, codes, stream);
}

void ttq_backward(const int8_t* codes, const float* g, int64_t n, const float* wp, const float* wn,
                  bool scale_latent, float* latent_grad, float* dwp_out, float* dwn_out,
                  void* workspace, size_t workspace_bytes, cudaStream_t stream) {
  const Workspace ws = carve(workspace, workspace_bytes, n);
  const auto blocks = static_cast<unsigned>(reduce_blocks(n));
  // n == 0 runs too: no element, every partial (0, 0), so both gradients come out 0.
  backward_partials<<<blocks, kThreads, 0, stream>>>(codes, g, n, wp, wn, scale_latent,
                                                     latent_grad, ws.partials);
  CUDA_CHECK(cudaGetLastError());
  launch_finish(ws.partials, n, SumOp{}, FinishBackward{dwp_out, dwn_out}, stream);
}

void ttq_ternarize_channels(const float* w, int64_t n, int64_t channels, const float* d, const float* wp,
                            const float* wn, float* w_t, int8_t* codes, cudaStream_t stream) {
  ternarize_channels(w, n, channels, d, wp, wn, w_t, codes, stream);
}

void ttq_ternarize_channels(const float* w, int64_t n, int64_t channels, const float* d, const float* wp,
                            const float* wn, bf16* w_t, int8_t* codes, cudaStream_t stream) {
  ternarize_channels(w, n, channels, d, wp, wn, w_t, codes, stream);
}

void ttq_backward_channels_accumulate(const int8_t* codes, const float* g, int64_t n, int64_t channels,
                                      const float* wp, const float* wn, float* latent_grad, float* dwp,
                                      float* dwn, cudaStream_t stream) {
  const int64_t per = rows_of("ttq_backward_channels_accumulate", n, channels);
  if (n == 0) return;
  backward_channels_kernel<<<static_cast<unsigned>(channels), kThreads, 0, stream>>>(codes, g, per, wp, wn,
                                                                                     latent_grad, dwp, dwn);
  CUDA_CHECK(cudaGetLastError());
}

}  // namespace ttq::cuda
