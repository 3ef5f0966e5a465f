// CUDA versions of the TTQ loops of kernels/cpu/ttq_cpu.h, one quantized tensor at a time, around
// the same per-element math (kernels/ttq_math.h). All pointers are device pointers; scalars that
// one kernel produces and the next consumes (D, Wp, Wn) stay in device memory, so a forward and
// backward pass enqueue work on the stream without ever synchronising with the host.
//
// Reductions are deterministic: the grid size depends only on n, each block writes its partial
// result to the workspace, and one block combines the partials in a fixed order (no float
// atomics), so the same inputs give bitwise identical outputs on every run.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

#include "engine/core/bf16.h"
#include "kernels/ttq_math.h"

namespace ttq::cuda {

// Bytes of device workspace ttq_threshold and ttq_backward need for a tensor of n elements. A
// workspace of this size may be reused by every call on the same stream (calls are stream-ordered).
size_t ttq_workspace_bytes(int64_t n);

// D for one tensor of n latent weights w (t for Max mode, r for Sparsity mode), written to
// *d_out. *twn_scale_out (may be null) receives the TWN scale in Twn mode and 0 otherwise. Max and
// Sparsity give exactly the CPU's value (both are selections); Twn sums in double in another order.
void ttq_threshold(math::ThresholdMode mode, const float* w, int64_t n, float t, double r,
                   float* d_out, float* twn_scale_out, void* workspace, size_t workspace_bytes,
                   cudaStream_t stream);

// codes[i] = ternary_code(w[i], *d), w_t[i] = ternary_value(codes[i], *wp, *wn).
void ttq_ternarize(const float* w, int64_t n, const float* d, const float* wp, const float* wn,
                   float* w_t, int8_t* codes, cudaStream_t stream);
// The same with w_t in bf16 (the three values Wp, 0, -Wn rounded to nearest even).
void ttq_ternarize(const float* w, int64_t n, const float* d, const float* wp, const float* wn,
                   bf16* w_t, int8_t* codes, cudaStream_t stream);

// latent_grad[i] += latent_grad_scale(codes[i], *wp, *wn) * g[i] (plain g when scale_latent is
// false; wp and wn may then be null). *dwp_out = dL/dWp and *dwn_out = dL/dWn (minus sign
// included), summed in double and rounded to float once.
void ttq_backward(const int8_t* codes, const float* g, int64_t n, const float* wp, const float* wn,
                  bool scale_latent, float* latent_grad, float* dwp_out, float* dwn_out,
                  void* workspace, size_t workspace_bytes, cudaStream_t stream);

// Per-output-channel scales: the tensor is `channels` rows of n / channels elements (channels must
// divide n), row c using wp[c], wn[c] (D stays one scalar). One block per row.
void ttq_ternarize_channels(const float* w, int64_t n, int64_t channels, const float* d, const float* wp,
                            const float* wn, float* w_t, int8_t* codes, cudaStream_t stream);
void ttq_ternarize_channels(const float* w, int64_t n, int64_t channels, const float* d, const float* wp,
                            const float* wn, bf16* w_t, int8_t* codes, cudaStream_t stream);
// latent_grad[i] += latent_grad_scale(codes[i], wp[c], wn[c]) * g[i] for i in row c, and ADDS each
// row's dL/dWp and dL/dWn (summed in double, rounded to float once) into dwp[c], dwn[c] (may be
// null). Deterministic: each row is one block's fixed-order fold.
void ttq_backward_channels_accumulate(const int8_t* codes, const float* g, int64_t n, int64_t channels,
                                      const float* wp, const float* wn, float* latent_grad, float* dwp,
                                      float* dwn, cudaStream_t stream);

}  // namespace ttq::cuda
