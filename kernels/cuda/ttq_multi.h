// TTQ forward and backward for all quantized layers of a model together (multi-tensor): a table of
// layers lives in device memory, and each pass is a constant number of kernel launches fixed by
// the multi-tensor plan (kernels/multi_tensor.h), not one launch per layer. Nothing here
// synchronises with the host after construction: D, Wp, Wn and the scale gradients stay in device
// memory, read and written by the kernels.
//
// Per step, on one stream:
//   forward:  1. per (layer, chunk) block: partial max|w| (Max layers) or sum|w| (Twn layers),
//                one launch per plan launch;
//             2. one finishing launch (one block per layer) folds each layer's partials in chunk
//                order and writes D (Max: t * max|w|; Twn: 0.7 * mean|w|);
//             3. Twn layers only: partial (sum, count) of |w| over |w| > D, one launch per plan
//                launch, and one finishing launch writing the TWN scale;
//             4. Sparsity layers: NOT fused yet. D is the per-tensor radix select of
//                kernels/cuda/ttq_kernels.h (cuda::ttq_threshold), one call (a memset and eight
//                small kernels) per sparsity layer, still without a host synchronisation;
//             5. ternarize: codes and w_t for every layer, one launch per plan launch (layers with
//                per-output-channel scales: one block per (layer, row) of the row pass instead).
//   backward: 1. per (layer, chunk) block: latent_grad += scale * g and the partial sums (double)
//                of the dL/dWp and dL/dWn terms (minus sign for Wn), one launch per plan launch;
//             2. one finishing launch adding dL/dWp and dL/dWn into each layer's gradients
//                (1 and 2 only when some layer with one scale pair holds weights);
//             3. layers with per-output-channel scales: one block per (layer, row) updates the
//                row's latent gradient and adds the row's sums into dwp[row], dwn[row] itself.
//
// Deterministic: which block handles which (layer, chunk) is fixed by the plan, a thread walks its
// elements of the chunk in a fixed order, a block combines its threads in a fixed tree
// (cub::BlockReduce), each block writes its partial to its own slot, and the finishing kernel folds
// a layer's partials in a fixed order. No float atomics: two runs give bitwise identical results.
// Max and Sparsity give exactly the CPU's D (selections); Twn sums in double in another order than
// the CPU loop (kernels/cpu/ttq_cpu.cpp), so its D and scale can differ in the last bit.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>
#include <vector>

#include "engine/core/bf16.h"
#include "kernels/multi_tensor.h"
#include "kernels/ttq_math.h"

namespace ttq::cuda {

// One quantized layer. All pointers are device pointers and must stay valid (same addresses) for
// the life of the TtqMultiTensor built from it; "device scalar" means one float in device memory.
struct TtqMultiLayer {
  // ---- forward ----
  const float* w = nullptr;    // latent weights W~, n elements
  int64_t n = 0;
  float* w_t = nullptr;        // out: quantized weights, n elements, in f32 ...
  bf16* w_t_bf16 = nullptr;    // ... or in bf16 (precision "bf16"): exactly one of the two is set
  int8_t* codes = nullptr;     // out: ternary codes (+1, 0, -1), n elements; read by backward
  const float* wp = nullptr;   // Wp: `channels` device floats (Max, Sparsity; unused and may be null for Twn)
  const float* wn = nullptr;   // Wn (same)
  int64_t channels = 1;        // 1: one Wp/Wn per layer. C > 1 (not Twn): per-output-channel scales,
                               // row c = elements [c * n / C, (c + 1) * n / C) uses wp[c], wn[c] and
                               // its gradients go to dwp[c], dwn[c]; C must divide n. D stays per layer.
  float* d = nullptr;          // out: device scalar D (always required)
  float* twn_scale = nullptr;  // out: device scalar. Twn: required, the fixed scale used as both
                               // magnitudes (mean |w| over |w| > D). Other modes: 0 is written
                               // when non-null.
  math::ThresholdMode mode = math::ThresholdMode::Max;
  float t = 0.05f;             // Max: D = t * max|W~|
  double r = 0.0;              // Sparsity: target fraction of zeros
  // ---- backward (needed only by backward(); may be null while only forward() is used) ----
  const float* g = nullptr;      // dL/dw_t, n elements
  float* latent_grad = nullptr;  // dL/dW~ is ADDED here (Wp*g / g / Wn*g; Twn: plain g)
  float* dwp = nullptr;          // in/out: `channels` device floats, dL/dWp added into them; may be null
                                 // (Twn: the sums over the +/- codes are still added when given, as
                                 // cuda::ttq_backward writes them; the engine passes null, TWN's
                                 // scale is not trained)
  float* dwn = nullptr;          // in/out: the same for dL/dWn (minus sign included); may be null
};

namespace detail {
// Device-table entries (plain data, filled on the host at construction).
struct MultiBlock {   // one thread block of a pass: which layer, which chunk of it
  int32_t layer;
  int32_t pad_;
  int64_t chunk;
};
struct MultiRange {   // a layer's partials in a pass: [first, first + count), in chunk order
  int64_t first;
  int64_t count;
};

// The blocks of one kind of pass over a subset of the layers (the others have size 0 in it),
// from plan_multi_tensor. Global block id = position in `blocks`; a layer's blocks are
// contiguous and in chunk order, so its partials are ranges[layer].
struct MultiPass {
  struct Launch {
    int64_t first_block;  // global block id of this launch's block 0
    int blocks;
  };
  std::vector<Launch> launches;
  std::vector<MultiBlock> host_blocks;          // uploaded at construction
  std::vector<MultiRange> host_ranges;          // one per layer
  const MultiBlock* blocks = nullptr;           // the device copies
  const MultiRange* ranges = nullptr;
  int64_t total_blocks() const { return static_cast<int64_t>(host_blocks.size()); }
};
MultiPass plan_pass(const std::vector<int64_t>& sizes, const MultiTensorLimits& limits);
// One block per row: rows[l] blocks (layer l, chunk = row index) for each layer, in layer order,
// at most limits.max_blocks per launch. No ranges (each block finishes its own row).
MultiPass plan_rows(const std::vector<int64_t>& rows, const MultiTensorLimits& limits);

// One cudaMalloc, freed (CUDA_CHECK_NOTHROW) on destruction, also when a constructor throws.
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  ~DeviceBuffer();
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  void allocate(size_t bytes);  // once
  void* get() const { return p_; }

 private:
  void* p_ = nullptr;
};
}  // namespace detail

// Built once per model (layer sizes and buffer addresses fixed; rebuild if any changes), on the
// device current at construction; forward/backward must run on that device. Host-side per-step
// options of TernaryQuantizer (e.g. clamping Wp/Wn) are not applied here.
class TtqMultiTensor {
 public:
  // The tables live in device memory, so launches are not limited by kernel-argument space: the
  // defaults put any model up to ~1G weights in one launch per pass (the row pass of per-channel
  // layers: up to 65 536 channel rows per launch). Smaller limits (tests) split a pass into more
  // launches without changing what it computes per (layer, chunk) or (layer, row).
  static MultiTensorLimits default_limits();

  // Validates the layers, plans the launches, and uploads the tables (cudaMalloc/cudaMemcpy on the
  // current device: construction may synchronise). Throws ttq::Error on invalid input.
  explicit TtqMultiTensor(std::vector<TtqMultiLayer> layers,
                          const MultiTensorLimits& limits = default_limits());
  ~TtqMultiTensor();
  TtqMultiTensor(const TtqMultiTensor&) = delete;
  TtqMultiTensor& operator=(const TtqMultiTensor&) = delete;

  // Enqueue a pass on the stream; no host synchronisation. Forward and backward share no
  // workspace, but two calls of the same pass must be ordered (same stream, or events): each
  // reuses its own partials buffer. Wp/Wn are read on the device when the kernels run.
  void forward(cudaStream_t stream);
  void backward(cudaStream_t stream);  // throws if a non-empty layer lacks g or latent_grad

  // Kernel launches a forward pass enqueues outside the sparsity layers, and the number of
  // sparsity layers (each adds one cuda::ttq_threshold call). Backward: every launch it enqueues.
  int fused_forward_launches() const;
  int sparsity_layers() const { return static_cast<int>(sparsity_.size()); }
  int backward_launches() const;

  const std::vector<TtqMultiLayer>& layers() const { return layers_; }

 private:
  std::vector<TtqMultiLayer> layers_;
  MultiTensorLimits limits_;
  bool has_max_or_twn_ = false, has_twn_ = false, backward_ready_ = true;
  std::vector<int> sparsity_;  // indices of the sparsity layers
  detail::MultiPass threshold_pass_;  // Max and Twn layers: max|w| or sum|w|
  detail::MultiPass twn_pass_;        // Twn layers: sum and count of |w| over |w| > D
  detail::MultiPass all_pass_;        // layers with one Wp/Wn: ternarize, backward
  detail::MultiPass row_pass_;        // layers with per-channel scales: ternarize, backward by row
  detail::DeviceBuffer tables_;        // layers, then each pass's blocks and ranges
  const TtqMultiLayer* layers_dev_ = nullptr;  // inside tables_
  detail::DeviceBuffer forward_partials_, backward_partials_;
  detail::DeviceBuffer sparsity_workspace_;
  size_t sparsity_workspace_bytes_ = 0;
};

}  // namespace ttq::cuda
