// CUDA versions of the ops in kernels/ops.h, on device pointers, with the argument order of the
// reference kernels (kernels/cpu/ops_ref.h). All work is enqueued on cudaStreamPerThread (the
// stream device memory is allocated on), so calls from one host thread are ordered and need no
// synchronisation between them. cuDNN does convolution, batch norm and pooling; cuBLAS does
// Linear; the rest are the project's kernels. Plain C++ header: includable from g++ code.
#pragma once

#include <cstdint>

#include "engine/core/bf16.h"
#include "kernels/op_shapes.h"
#include "kernels/ttq_math.h"

namespace ttq::cuda {

// ---- cuDNN (kernels/cuda/ops_cudnn.cpp) -----------------------------------------------------
// Tests only: while on, every bf16 or channels-last convolution acts as if cuDNN offered no working
// algorithm for it, so the copies it then runs on (NCHW, then f32) are exercised; and how many
// times, since the program started, a convolution direction ran on such copies.
void refuse_conv_algorithms_for_testing(bool on);
int64_t conv_fallbacks_for_testing();
void conv2d_forward(const Conv2dShape& s, const float* x, const float* w, const float* bias, float* y);
void conv2d_backward_data(const Conv2dShape& s, const float* dy, const float* w, float* dx);
void conv2d_backward_weights(const Conv2dShape& s, const float* x, const float* dy, float* dw, float* dbias);
void pool2d_forward(PoolKind kind, const Pool2dShape& s, const float* x, float* y);
void pool2d_backward(PoolKind kind, const Pool2dShape& s, const float* x, const float* dy, float* dx);
// Also updates the running statistics (PyTorch convention, unbiased running variance).
void batchnorm_forward_train(const BatchNormShape& s, const float* x, const float* gamma, const float* beta,
                             float eps, float momentum, float* running_mean, float* running_var, float* y,
                             float* mean, float* var, float* inv_std);
void batchnorm_forward_infer(const BatchNormShape& s, const float* x, const float* gamma, const float* beta,
                             const float* running_mean, const float* running_var, float eps, float* y);
// eps: the forward pass's epsilon (cuDNN takes it alongside the saved statistics).
void batchnorm_backward(const BatchNormShape& s, const float* x, const float* dy, const float* gamma,
                        const float* mean, const float* inv_std, float eps, float* dx, float* dgamma, float* dbeta);

// ---- cuBLAS (kernels/cuda/ops_cublas.cpp) ---------------------------------------------------
void linear_forward(int64_t n, int64_t in, int64_t out, const float* x, const float* w, const float* bias, float* y);
void linear_backward(int64_t n, int64_t in, int64_t out, const float* x, const float* w, const float* dy, float* dx,
                     float* dw, float* dbias);

// ---- the project's kernels (kernels/cuda/ops_elementwise.cu) ---------------------------------
void global_avgpool_forward(int64_t n, int64_t c, int64_t hw, const float* x, float* y);
void global_avgpool_backward(int64_t n, int64_t c, int64_t hw, const float* dy, float* dx);
void relu_forward(int64_t count, const float* x, float* y);
void relu_backward(int64_t count, const float* y, const float* dy, float* dx);
void shortcut_a_forward(int64_t n, int64_t c_in, int64_t h, int64_t w, int64_t c_out, int64_t pad_before,
                        int64_t stride, const float* x, float* y);
void shortcut_a_backward(int64_t n, int64_t c_in, int64_t h, int64_t w, int64_t c_out, int64_t pad_before,
                         int64_t stride, const float* dy, float* dx);
void add(int64_t count, const float* a, const float* b, float* out);
void add_accumulate(int64_t count, float* dst, const float* src);
// The n tensors of c x hw elements of elem_size bytes (2 or 4): NCHW -> NHWC (to_channels_last),
// or back. A tiled transpose per image (kernels/cuda/layout.cu); dst must not alias src.
void permute_layout(int64_t n, int64_t c, int64_t hw, bool to_channels_last, size_t elem_size, const void* src,
                    void* dst);
void clamp_min_inplace(int64_t count, float* p, float lo);
// TTQ on one tensor (threshold, twn_scale: device scalars; wp, wn, dwp, dwn: `channels` device
// floats, 1 per tensor or 1 per row of n / channels elements). In Twn mode the quantized weights
// use twn_scale for both signs. dwp, dwn are accumulated (+=).
void ttq_forward(math::ThresholdMode mode, float t, double r, const float* latent, int64_t n, int64_t channels,
                 const float* wp, const float* wn, float* threshold, float* twn_scale, float* w_t, int8_t* codes);
void ttq_backward_accumulate(const int8_t* codes, const float* g, int64_t n, int64_t channels, const float* wp,
                             const float* wn, bool scale_latent, float* latent_grad, float* dwp, float* dwn);
void sgd_update(int64_t count, float* p, const float* g, float* momentum_buf, float lr, float momentum, float wd,
                bool nesterov, bool first_step);
void adam_update(int64_t count, float* p, const float* g, float* m, float* v, float lr, float beta1, float beta2,
                 float eps, float wd, float bc1, float bc2);
// Mean softmax cross-entropy: writes probabilities and the mean loss (device scalar, summed in a
// fixed order); labels are int32 on the device.
void softmax_xent_forward(int64_t n, int64_t classes, const float* logits, const int32_t* labels,
                          float label_smoothing, float* probs, float* loss);
void softmax_xent_backward(int64_t n, int64_t classes, const float* probs, const int32_t* labels,
                           float label_smoothing, float* dlogits);
// *correct (device int64) = rows whose label is among the k largest logits (ties to the lower index).
void count_topk_correct(int64_t n, int64_t classes, const float* logits, const int32_t* labels, int k,
                        int64_t* correct);

// ---- bf16 activations (precision "bf16") ------------------------------------------------------
// The same ops with activations, the weights a layer computes with, and their gradients in bf16
// (ttq::bf16 is bit-compatible with __nv_bfloat16). Biases, bias gradients, BatchNorm parameters
// and statistics, probabilities and the loss stay f32. Every kernel computes in f32 (tensor-core
// accumulation in f32 for convolutions and GEMMs) and rounds each output element to bf16 once, on
// store, so the CPU emulation (f32 op on the widened inputs, rounded) is the reference. One
// exception: a convolution with a bias rounds twice (cuDNN's bf16 output, then + bias).
void conv2d_forward(const Conv2dShape& s, const bf16* x, const bf16* w, const float* bias, bf16* y);
void conv2d_backward_data(const Conv2dShape& s, const bf16* dy, const bf16* w, bf16* dx);
void conv2d_backward_weights(const Conv2dShape& s, const bf16* x, const bf16* dy, bf16* dw, float* dbias);
void pool2d_forward(PoolKind kind, const Pool2dShape& s, const bf16* x, bf16* y);
void pool2d_backward(PoolKind kind, const Pool2dShape& s, const bf16* x, const bf16* dy, bf16* dx);
void batchnorm_forward_train(const BatchNormShape& s, const bf16* x, const float* gamma, const float* beta,
                             float eps, float momentum, float* running_mean, float* running_var, bf16* y,
                             float* mean, float* var, float* inv_std);
void batchnorm_forward_infer(const BatchNormShape& s, const bf16* x, const float* gamma, const float* beta,
                             const float* running_mean, const float* running_var, float eps, bf16* y);
void batchnorm_backward(const BatchNormShape& s, const bf16* x, const bf16* dy, const float* gamma,
                        const float* mean, const float* inv_std, float eps, bf16* dx, float* dgamma, float* dbeta);
void linear_forward(int64_t n, int64_t in, int64_t out, const bf16* x, const bf16* w, const float* bias, bf16* y);
void linear_backward(int64_t n, int64_t in, int64_t out, const bf16* x, const bf16* w, const bf16* dy, bf16* dx,
                     bf16* dw, float* dbias);
void global_avgpool_forward(int64_t n, int64_t c, int64_t hw, const bf16* x, bf16* y);
void global_avgpool_backward(int64_t n, int64_t c, int64_t hw, const bf16* dy, bf16* dx);
void relu_forward(int64_t count, const bf16* x, bf16* y);
void relu_backward(int64_t count, const bf16* y, const bf16* dy, bf16* dx);
void shortcut_a_forward(int64_t n, int64_t c_in, int64_t h, int64_t w, int64_t c_out, int64_t pad_before,
                        int64_t stride, const bf16* x, bf16* y);
void shortcut_a_backward(int64_t n, int64_t c_in, int64_t h, int64_t w, int64_t c_out, int64_t pad_before,
                         int64_t stride, const bf16* dy, bf16* dx);
void add(int64_t count, const bf16* a, const bf16* b, bf16* out);
void add_accumulate(int64_t count, bf16* dst, const bf16* src);
// f32 gradients += a bf16 gradient (a weight's f32 gradient from the bf16 one of its bf16 copy).
void add_accumulate(int64_t count, float* dst, const bf16* src);
// Conversions: f32 -> bf16 rounds to nearest even; bf16 -> f32 is exact.
void cast(int64_t count, const float* src, bf16* dst);
void cast(int64_t count, const bf16* src, float* dst);
void softmax_xent_forward(int64_t n, int64_t classes, const bf16* logits, const int32_t* labels,
                          float label_smoothing, float* probs, float* loss);
void softmax_xent_backward(int64_t n, int64_t classes, const float* probs, const int32_t* labels,
                           float label_smoothing, bf16* dlogits);
void count_topk_correct(int64_t n, int64_t classes, const bf16* logits, const int32_t* labels, int k,
                        int64_t* correct);
// TTQ forward writing w_t in bf16 (the codes, D and the scale are those of the f32 version).
void ttq_forward(math::ThresholdMode mode, float t, double r, const float* latent, int64_t n, int64_t channels,
                 const float* wp, const float* wn, float* threshold, float* twn_scale, bf16* w_t, int8_t* codes);

// ---- synchronised batch norm pieces (kernels/cuda/sync_bn.cu) ---------------------------------
// kernels/ops.h bn_channel_sums, bn_backward_sums, bn_normalize, bn_backward_dx, for f32 and
// bf16 activations: per-channel sums in double with the deterministic chunked reductions of
// kernels/cuda/channel_reduce.cuh; mean (null: plain sums), sums, f64 "mean" and "inv_std" are
// device doubles. Only the CUDA toolkit is needed (no cuDNN or cuBLAS).
void bn_channel_sums(const BatchNormShape& s, const float* x, const double* mean, double* sums);
void bn_channel_sums(const BatchNormShape& s, const bf16* x, const double* mean, double* sums);
void bn_backward_sums(const BatchNormShape& s, const float* x, const float* dy, const float* mean,
                      const float* inv_std, double* sums);
void bn_backward_sums(const BatchNormShape& s, const bf16* x, const bf16* dy, const float* mean,
                      const float* inv_std, double* sums);
void bn_normalize(const BatchNormShape& s, const float* x, const double* mean, const double* inv_std,
                  const float* gamma, const float* beta, float* y);
void bn_normalize(const BatchNormShape& s, const bf16* x, const double* mean, const double* inv_std,
                  const float* gamma, const float* beta, bf16* y);
void bn_backward_dx(const BatchNormShape& s, const float* x, const float* dy, const float* mean,
                    const float* inv_std, const float* gamma, const double* sums, double count, float* dx);
void bn_backward_dx(const BatchNormShape& s, const bf16* x, const bf16* dy, const float* mean,
                    const float* inv_std, const float* gamma, const double* sums, double count, bf16* dx);

}  // namespace ttq::cuda
