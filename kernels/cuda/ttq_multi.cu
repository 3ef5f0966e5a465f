// Multi-tensor TTQ forward and backward (see ttq_multi.h).
//
// Every multi-tensor kernel runs one thread block per (layer, chunk) entry of a pass's block
// table. Global block id = launch's first block + blockIdx.x; it indexes both the block table and
// the partials buffer. The block's elements are [chunk * C, min(n, (chunk + 1) * C)); thread j
// handles elements begin + j, begin + j + kThreads, ... in that order, and cub::BlockReduce folds
// the threads in a fixed tree. A finishing kernel runs one block per layer and folds that layer's
// partials (contiguous, in chunk order) the same way. Layers with per-output-channel scales are
// ternarized and back-propagated by the row pass instead: one block per (layer, row) entry, the
// row's elements walked the same way, and that block itself adds the row's scale gradients (no
// partials, no finishing kernel). Nothing depends on scheduling, so results are bitwise
// repeatable. The per-element math is kernels/ttq_math.h, as on the CPU.
//
// w_t in f32 or bf16: each layer sets exactly one of w_t and w_t_bf16 (checked at construction);
// the ternarize kernel branches per block on which one (a layer-uniform branch) and stores through
// kernels/cuda/bf16_device.cuh (bf16: Wp, 0, -Wn rounded to nearest even). Codes, D and the scale
// gradients do not depend on it.
#include "kernels/cuda/ttq_multi.h"

#include <algorithm>
#include <cstring>
#include <limits>
#include <type_traits>

#include "kernels/cuda/bf16_device.cuh"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/ttq_device.cuh"
#include "kernels/cuda/ttq_kernels.h"

namespace ttq::cuda {

static_assert(std::is_trivially_copyable_v<TtqMultiLayer>, "TtqMultiLayer is copied to the device");
static_assert(std::is_trivially_copyable_v<detail::MultiBlock>);
static_assert(std::is_trivially_copyable_v<detail::MultiRange>);

namespace {

using math::ThresholdMode;

using ttq_device::kThreads;
using ttq_device::MaxOp;
using ttq_device::Pair;
using ttq_device::SumOp;
using ttq_device::block_reduce;

// What one block of a multi-tensor launch works on.
struct BlockWork {
  const TtqMultiLayer* layer;
  int64_t begin, end;  // element range of the chunk
  int64_t id;          // global block id
};

__device__ BlockWork block_work(const TtqMultiLayer* layers, const detail::MultiBlock* blocks,
                                int64_t first_block, int64_t chunk) {
  const int64_t id = first_block + blockIdx.x;
  const detail::MultiBlock e = blocks[id];
  const TtqMultiLayer* layer = layers + e.layer;
  const int64_t begin = e.chunk * chunk;
  const int64_t end = begin + chunk < layer->n ? begin + chunk : layer->n;
  return {layer, begin, end, id};
}

#define TTQ_CHUNK_LOOP(i, work) \
  for (int64_t i = (work).begin + threadIdx.x; i < (work).end; i += kThreads)

// ---- forward -----------------------------------------------------------------------------------

// Max layers: partial max|w| (fmaxf skips NaN, like the CPU loop). Twn layers: partial sum|w|.
__global__ void __launch_bounds__(kThreads)
    threshold_partials(const TtqMultiLayer* layers, const detail::MultiBlock* blocks,
                       int64_t first_block, int64_t chunk, Pair* partials) {
  const BlockWork work = block_work(layers, blocks, first_block, chunk);
  const float* w = work.layer->w;
  Pair r;
  if (work.layer->mode == ThresholdMode::Max) {
    float m = 0.0f;
    TTQ_CHUNK_LOOP(i, work) m = fmaxf(m, fabsf(w[i]));
    r = block_reduce(Pair{m, 0.0}, MaxOp{});
  } else {  // Twn (the only other mode in this pass)
    double s = 0.0;
    TTQ_CHUNK_LOOP(i, work) s += fabsf(w[i]);
    r = block_reduce(Pair{s, 0.0}, SumOp{});
  }
  if (threadIdx.x == 0) partials[work.id] = r;
}

// Twn layers: partial (sum |w|, count) over |w| > D.
__global__ void __launch_bounds__(kThreads)
    twn_scale_partials(const TtqMultiLayer* layers, const detail::MultiBlock* blocks,
                       int64_t first_block, int64_t chunk, Pair* partials) {
  const BlockWork work = block_work(layers, blocks, first_block, chunk);
  const float* w = work.layer->w;
  const float d = *work.layer->d;
  Pair s{0.0, 0.0};
  TTQ_CHUNK_LOOP(i, work) {
    const float a = fabsf(w[i]);
    if (a > d) {
      s.a += a;
      s.b += 1.0;
    }
  }
  const Pair r = block_reduce(s, SumOp{});
  if (threadIdx.x == 0) partials[work.id] = r;
}

// Codes and w_t (TOut: float or bf16) of one block's chunk.
template <class TOut>
__device__ __forceinline__ void ternarize_chunk(const BlockWork& work, const float* w, float d, float p,
                                                float m, TOut* w_t, int8_t* codes) {
  TTQ_CHUNK_LOOP(i, work) {
    const int8_t code = math::ternary_code(w[i], d);
    codes[i] = code;
    store(w_t, i, math::ternary_value(code, p, m));
  }
}

__global__ void __launch_bounds__(kThreads)
    ternarize_blocks(const TtqMultiLayer* layers, const detail::MultiBlock* blocks,
                     int64_t first_block, int64_t chunk) {
  const BlockWork work = block_work(layers, blocks, first_block, chunk);
  const TtqMultiLayer& layer = *work.layer;
  const float d = *layer.d;
  const bool twn = layer.mode == ThresholdMode::Twn;  // TWN: one fixed scale for both signs
  const float p = twn ? *layer.twn_scale : *layer.wp;
  const float m = twn ? *layer.twn_scale : *layer.wn;
  if (layer.w_t)  // exactly one of w_t and w_t_bf16 is set (constructor)
    ternarize_chunk(work, layer.w, d, p, m, layer.w_t, layer.codes);
  else
    ternarize_chunk(work, layer.w, d, p, m, layer.w_t_bf16, layer.codes);
}

// ---- backward ----------------------------------------------------------------------------------

// latent_grad += scale * g (TWN: plain g), partial (sum of dL/dWp terms, sum of dL/dWn terms).
__global__ void __launch_bounds__(kThreads)
    backward_partials(const TtqMultiLayer* layers, const detail::MultiBlock* blocks,
                      int64_t first_block, int64_t chunk, Pair* partials) {
  const BlockWork work = block_work(layers, blocks, first_block, chunk);
  const TtqMultiLayer& layer = *work.layer;
  const bool scale_latent = layer.mode != ThresholdMode::Twn;
  const float p = scale_latent ? *layer.wp : 0.0f;
  const float m = scale_latent ? *layer.wn : 0.0f;
  // In registers: the stores to latent_grad could alias the layer table as far as the compiler knows.
  const int8_t* codes = layer.codes;
  const float* g = layer.g;
  float* latent_grad = layer.latent_grad;
  Pair s{0.0, 0.0};
  TTQ_CHUNK_LOOP(i, work) ttq_device::backward_element(i, codes, g, p, m, scale_latent, latent_grad, s);
  const Pair r = block_reduce(s, SumOp{});
  if (threadIdx.x == 0) partials[work.id] = r;
}

// ---- per-output-channel scales: one block per (layer, row) --------------------------------------

struct RowWork {
  const TtqMultiLayer* layer;
  int64_t row, begin, end;
};

__device__ RowWork row_work(const TtqMultiLayer* layers, const detail::MultiBlock* blocks, int64_t first_block) {
  const detail::MultiBlock e = blocks[first_block + blockIdx.x];
  const TtqMultiLayer* layer = layers + e.layer;
  const int64_t per = layer->n / layer->channels;
  return {layer, e.chunk, e.chunk * per, (e.chunk + 1) * per};
}

__global__ void __launch_bounds__(kThreads)
    ternarize_rows(const TtqMultiLayer* layers, const detail::MultiBlock* blocks, int64_t first_block) {
  const RowWork work = row_work(layers, blocks, first_block);
  const TtqMultiLayer& l = *work.layer;
  const float d = *l.d, p = l.wp[work.row], m = l.wn[work.row];
  if (l.w_t)
    ttq_device::ternarize_row(l.w, work.begin, work.end, d, p, m, l.w_t, l.codes);
  else
    ttq_device::ternarize_row(l.w, work.begin, work.end, d, p, m, l.w_t_bf16, l.codes);
}

__global__ void __launch_bounds__(kThreads)
    backward_rows(const TtqMultiLayer* layers, const detail::MultiBlock* blocks, int64_t first_block) {
  const RowWork work = row_work(layers, blocks, first_block);
  const TtqMultiLayer& l = *work.layer;
  ttq_device::backward_row(l.codes, l.g, work.begin, work.end, work.row, l.wp, l.wn, l.latent_grad, l.dwp, l.dwn);
}

// ---- finishing: one block per layer, its partials in a fixed order -----------------------------

enum class Finish { Threshold, TwnScale, Backward };

template <Finish kKind>
__global__ void __launch_bounds__(kThreads)
    finish_layers(const TtqMultiLayer* layers, const detail::MultiRange* ranges,
                  const Pair* partials) {
  const TtqMultiLayer& layer = layers[blockIdx.x];
  // Layers this pass does not cover return at once (a whole block: no barrier is skipped).
  if (kKind == Finish::Threshold && layer.mode == ThresholdMode::Sparsity) return;
  if (kKind == Finish::TwnScale && layer.mode != ThresholdMode::Twn) return;
  if (kKind == Finish::Backward && layer.channels > 1) return;  // backward_rows added its sums
  const detail::MultiRange range = ranges[blockIdx.x];  // count 0 for an empty layer
  const bool use_max = kKind == Finish::Threshold && layer.mode == ThresholdMode::Max;
  // Identity (0, 0): valid for sums and for maxima of |w|.
  Pair v{0.0, 0.0};
  for (int64_t i = threadIdx.x; i < range.count; i += kThreads) {
    const Pair p = partials[range.first + i];
    v = use_max ? MaxOp{}(v, p) : SumOp{}(v, p);
  }
  const Pair r = use_max ? block_reduce(v, MaxOp{}) : block_reduce(v, SumOp{});
  if (threadIdx.x != 0) return;
  switch (kKind) {
    case Finish::Threshold:
      if (use_max) {
        *layer.d = math::threshold_from_max(static_cast<float>(r.a), layer.t);
        if (layer.twn_scale) *layer.twn_scale = 0.0f;
      } else {  // Twn; an empty layer gets D = 0 like the CPU
        *layer.d = layer.n > 0
                       ? math::twn_threshold(static_cast<float>(r.a / static_cast<double>(layer.n)))
                       : 0.0f;
      }
      break;
    case Finish::TwnScale:
      *layer.twn_scale = r.b > 0.0 ? static_cast<float>(r.a / r.b) : 0.0f;
      break;
    case Finish::Backward:
      // Added, like the latent gradient and every parameter gradient (they accumulate until
      // zero_grad); one thread per layer, so the order is fixed.
      if (layer.dwp) *layer.dwp += static_cast<float>(r.a);
      if (layer.dwn) *layer.dwn += static_cast<float>(r.b);
      break;
  }
}

// ---- host helpers ------------------------------------------------------------------------------

size_t align_up(size_t x, size_t a) { return (x + a - 1) / a * a; }

// Byte layout of the table upload: each piece starts 256-byte aligned.
struct Layout {
  size_t bytes = 0;
  size_t add(size_t n) {
    const size_t at = bytes;
    bytes = align_up(bytes + n, 256);
    return at;
  }
};

template <class T>
size_t add_vector(Layout& layout, const std::vector<T>& v) {
  return layout.add(v.size() * sizeof(T));
}

}  // namespace

// ---- detail ------------------------------------------------------------------------------------

namespace detail {

MultiPass plan_pass(const std::vector<int64_t>& sizes, const MultiTensorLimits& limits) {
  MultiPass pass;
  pass.host_ranges.assign(sizes.size(), MultiRange{0, 0});
  for (const MultiTensorLaunch& launch : plan_multi_tensor(sizes, limits)) {
    pass.launches.push_back({pass.total_blocks(), static_cast<int>(launch.block_slot.size())});
    for (size_t b = 0; b < launch.block_slot.size(); ++b) {
      const int layer = launch.tensors[static_cast<size_t>(launch.block_slot[b])];
      const int64_t chunk = launch.block_chunk[b];
      MultiRange& range = pass.host_ranges[static_cast<size_t>(layer)];
      // The finishing kernels rely on each layer's blocks being contiguous and in chunk order.
      if (chunk == 0) range.first = pass.total_blocks();
      TTQ_CHECK(range.count == chunk && range.first + chunk == pass.total_blocks(),
                "TTQ multi-tensor: the plan does not keep layer " << layer
                                                                  << "'s chunks contiguous");
      ++range.count;
      pass.host_blocks.push_back(MultiBlock{layer, 0, chunk});
    }
  }
  for (size_t l = 0; l < sizes.size(); ++l)
    TTQ_CHECK(pass.host_ranges[l].count == (sizes[l] + limits.chunk - 1) / limits.chunk,
              "TTQ multi-tensor: the plan does not cover layer " << l);
  return pass;
}

MultiPass plan_rows(const std::vector<int64_t>& rows, const MultiTensorLimits& limits) {
  TTQ_CHECK(limits.max_blocks > 0, "TTQ multi-tensor: max_blocks must be positive");
  MultiPass pass;
  for (size_t l = 0; l < rows.size(); ++l)
    for (int64_t r = 0; r < rows[l]; ++r) {
      if (pass.launches.empty() || pass.launches.back().blocks == limits.max_blocks)
        pass.launches.push_back({pass.total_blocks(), 0});
      ++pass.launches.back().blocks;
      pass.host_blocks.push_back(MultiBlock{static_cast<int32_t>(l), 0, r});
    }
  return pass;
}

DeviceBuffer::~DeviceBuffer() {
  if (p_) CUDA_CHECK_NOTHROW(cudaFree(p_));
}

void DeviceBuffer::allocate(size_t bytes) {
  TTQ_CHECK(p_ == nullptr, "DeviceBuffer: allocated twice");
  CUDA_CHECK(cudaMalloc(&p_, std::max<size_t>(bytes, 1)));
}

}  // namespace detail

// ---- TtqMultiTensor ----------------------------------------------------------------------------

MultiTensorLimits TtqMultiTensor::default_limits() {
  MultiTensorLimits limits;
  limits.max_tensors = 1 << 20;  // slots are rows of a device table, not kernel arguments
  limits.max_blocks = 1 << 16;
  limits.chunk = 16384;  // 64 elements per thread
  return limits;
}

TtqMultiTensor::TtqMultiTensor(std::vector<TtqMultiLayer> layers, const MultiTensorLimits& limits)
    : layers_(std::move(layers)), limits_(limits) {
  const size_t count = layers_.size();
  TTQ_CHECK(count <= static_cast<size_t>(std::numeric_limits<int32_t>::max()),
            "TTQ multi-tensor: too many layers (" << count << ")");
  std::vector<int64_t> all(count, 0), threshold(count, 0), twn(count, 0), rows(count, 0);
  for (size_t i = 0; i < count; ++i) {
    const TtqMultiLayer& l = layers_[i];
    TTQ_CHECK(l.n >= 0, "TTQ multi-tensor: layer " << i << " has negative size " << l.n);
    TTQ_CHECK(l.d != nullptr, "TTQ multi-tensor: layer " << i << " has no D output");
    TTQ_CHECK(!(l.w_t && l.w_t_bf16),
              "TTQ multi-tensor: layer " << i << " sets both w_t (f32) and w_t_bf16; exactly one of the two");
    TTQ_CHECK(l.n == 0 || (l.w && (l.w_t || l.w_t_bf16) && l.codes),
              "TTQ multi-tensor: layer " << i << " lacks w, w_t (or w_t_bf16) or codes");
    TTQ_CHECK(math::scale_rows_fit(l.channels, l.n) && l.channels <= std::numeric_limits<int32_t>::max() &&
                  (l.channels == 1 || l.mode != ThresholdMode::Twn),
              "TTQ multi-tensor: layer " << i << " has " << l.channels << " channels for " << l.n
                                         << " weights (per-channel scales need a divisor of n, and not Twn)");
    switch (l.mode) {
      case ThresholdMode::Max:
        TTQ_CHECK(l.wp && l.wn, "TTQ multi-tensor: layer " << i << " lacks Wp or Wn");
        threshold[i] = l.n;
        has_max_or_twn_ = true;
        break;
      case ThresholdMode::Sparsity:
        TTQ_CHECK(l.wp && l.wn, "TTQ multi-tensor: layer " << i << " lacks Wp or Wn");
        sparsity_.push_back(static_cast<int>(i));
        sparsity_workspace_bytes_ = std::max(sparsity_workspace_bytes_, ttq_workspace_bytes(l.n));
        break;
      case ThresholdMode::Twn:
        TTQ_CHECK(l.twn_scale, "TTQ multi-tensor: TWN layer " << i << " has no twn_scale output");
        threshold[i] = twn[i] = l.n;
        has_max_or_twn_ = has_twn_ = true;
        break;
      default:
        TTQ_FAIL("TTQ multi-tensor: layer " << i << " has unknown threshold mode "
                                            << static_cast<int>(l.mode));
    }
    if (l.channels > 1)
      rows[i] = l.n > 0 ? l.channels : 0;  // the row pass ternarizes and back-propagates it
    else
      all[i] = l.n;
    if (l.n > 0 && !(l.g && l.latent_grad)) backward_ready_ = false;
  }
  threshold_pass_ = detail::plan_pass(threshold, limits_);
  twn_pass_ = detail::plan_pass(twn, limits_);
  all_pass_ = detail::plan_pass(all, limits_);
  row_pass_ = detail::plan_rows(rows, limits_);

  // One upload: the layer table, then each pass's blocks and ranges.
  Layout layout;
  const size_t layers_at = add_vector(layout, layers_);
  constexpr int kPasses = 4;
  detail::MultiPass* passes[kPasses] = {&threshold_pass_, &twn_pass_, &all_pass_, &row_pass_};
  size_t blocks_at[kPasses], ranges_at[kPasses];
  for (int p = 0; p < kPasses; ++p) {
    blocks_at[p] = add_vector(layout, passes[p]->host_blocks);
    ranges_at[p] = add_vector(layout, passes[p]->host_ranges);
  }
  std::vector<char> staging(layout.bytes);
  auto put = [&](size_t at, const auto& v) {
    if (!v.empty()) std::memcpy(staging.data() + at, v.data(), v.size() * sizeof(v[0]));
  };
  put(layers_at, layers_);
  for (int p = 0; p < kPasses; ++p) {
    put(blocks_at[p], passes[p]->host_blocks);
    put(ranges_at[p], passes[p]->host_ranges);
  }
  tables_.allocate(layout.bytes);
  // Copied and waited for here: the kernels may run on any stream, a non-blocking one included.
  if (layout.bytes) {
    CUDA_CHECK(cudaMemcpyAsync(tables_.get(), staging.data(), layout.bytes, cudaMemcpyHostToDevice,
                               cudaStreamPerThread));
    CUDA_CHECK(cudaStreamSynchronize(cudaStreamPerThread));
  }
  const char* base = static_cast<const char*>(tables_.get());
  layers_dev_ = reinterpret_cast<const TtqMultiLayer*>(base + layers_at);
  for (int p = 0; p < kPasses; ++p) {
    passes[p]->blocks = reinterpret_cast<const detail::MultiBlock*>(base + blocks_at[p]);
    passes[p]->ranges = reinterpret_cast<const detail::MultiRange*>(base + ranges_at[p]);
  }

  const int64_t forward_parts = std::max(threshold_pass_.total_blocks(), twn_pass_.total_blocks());
  forward_partials_.allocate(static_cast<size_t>(forward_parts) * sizeof(Pair));
  backward_partials_.allocate(static_cast<size_t>(all_pass_.total_blocks()) * sizeof(Pair));
  if (!sparsity_.empty()) sparsity_workspace_.allocate(sparsity_workspace_bytes_);
}

TtqMultiTensor::~TtqMultiTensor() = default;  // the DeviceBuffers free themselves

int TtqMultiTensor::fused_forward_launches() const {
  int n = static_cast<int>(all_pass_.launches.size() + row_pass_.launches.size());
  if (has_max_or_twn_) n += static_cast<int>(threshold_pass_.launches.size()) + 1;
  if (has_twn_) n += static_cast<int>(twn_pass_.launches.size()) + 1;
  return n;
}

int TtqMultiTensor::backward_launches() const {
  const int chunked = all_pass_.launches.empty() ? 0 : static_cast<int>(all_pass_.launches.size()) + 1;
  return chunked + static_cast<int>(row_pass_.launches.size());
}

void TtqMultiTensor::forward(cudaStream_t stream) {
  const auto layer_blocks = static_cast<unsigned>(layers_.size());
  auto* partials = static_cast<Pair*>(forward_partials_.get());
  if (has_max_or_twn_) {
    for (const auto& launch : threshold_pass_.launches) {
      threshold_partials<<<launch.blocks, kThreads, 0, stream>>>(
          layers_dev_, threshold_pass_.blocks, launch.first_block, limits_.chunk, partials);
      CUDA_CHECK(cudaGetLastError());
    }
    finish_layers<Finish::Threshold><<<layer_blocks, kThreads, 0, stream>>>(
        layers_dev_, threshold_pass_.ranges, partials);
    CUDA_CHECK(cudaGetLastError());
  }
  if (has_twn_) {  // needs D: after the threshold finish on the same stream
    for (const auto& launch : twn_pass_.launches) {
      twn_scale_partials<<<launch.blocks, kThreads, 0, stream>>>(
          layers_dev_, twn_pass_.blocks, launch.first_block, limits_.chunk, partials);
      CUDA_CHECK(cudaGetLastError());
    }
    finish_layers<Finish::TwnScale><<<layer_blocks, kThreads, 0, stream>>>(
        layers_dev_, twn_pass_.ranges, partials);
    CUDA_CHECK(cudaGetLastError());
  }
  // Sparsity mode is not fused: the per-tensor radix select, one call per layer (each call checks
  // its own launches).
  for (int i : sparsity_) {
    const TtqMultiLayer& l = layers_[static_cast<size_t>(i)];
    ttq_threshold(ThresholdMode::Sparsity, l.w, l.n, l.t, l.r, l.d, l.twn_scale,
                  sparsity_workspace_.get(), sparsity_workspace_bytes_, stream);
  }
  for (const auto& launch : all_pass_.launches) {
    ternarize_blocks<<<launch.blocks, kThreads, 0, stream>>>(layers_dev_, all_pass_.blocks,
                                                             launch.first_block, limits_.chunk);
    CUDA_CHECK(cudaGetLastError());
  }
  for (const auto& launch : row_pass_.launches) {
    ternarize_rows<<<launch.blocks, kThreads, 0, stream>>>(layers_dev_, row_pass_.blocks, launch.first_block);
    CUDA_CHECK(cudaGetLastError());
  }
}

void TtqMultiTensor::backward(cudaStream_t stream) {
  TTQ_CHECK(backward_ready_, "TTQ multi-tensor backward: a layer lacks g or latent_grad");
  auto* partials = static_cast<Pair*>(backward_partials_.get());
  if (!all_pass_.launches.empty()) {  // some layer with one scale pair and weights
    for (const auto& launch : all_pass_.launches) {
      backward_partials<<<launch.blocks, kThreads, 0, stream>>>(
          layers_dev_, all_pass_.blocks, launch.first_block, limits_.chunk, partials);
      CUDA_CHECK(cudaGetLastError());
    }
    finish_layers<Finish::Backward><<<static_cast<unsigned>(layers_.size()), kThreads, 0, stream>>>(
        layers_dev_, all_pass_.ranges, partials);
    CUDA_CHECK(cudaGetLastError());
  }
  for (const auto& launch : row_pass_.launches) {
    backward_rows<<<launch.blocks, kThreads, 0, stream>>>(layers_dev_, row_pass_.blocks, launch.first_block);
    CUDA_CHECK(cudaGetLastError());
  }
}

}  // namespace ttq::cuda
