// The ops the layers, the quantizer and the optimizers call, on tensors. Each checks that its
// tensors share one device and have the expected sizes, then runs the CPU kernels
// (kernels/cpu/ops.h: oneDNN or reference) or the CUDA ones. Gradient outputs are overwritten
// unless the name ends in "_accumulate".
//
// Dtypes. Activations (inputs, outputs and their gradients), the weights a conv/linear computes
// with and its weight gradient are all f32 or all bf16 (precision "bf16"); biases and their
// gradients, BatchNorm parameters and statistics, probabilities, the loss, TTQ latent weights,
// scales and gradients, and optimizer state are always f32. On the GPU the bf16 ops run bf16
// kernels (f32 arithmetic, one rounding per output element, except a biased convolution: cuDNN
// rounds its output, then the bias is added and rounded again); on the CPU a bf16 op widens its
// inputs to f32, runs the f32 kernel and rounds the outputs: the reference the GPU is tested
// against.
//
// Layouts. Activations of 4-D ops may be channels-last (NHWC storage, Layout::ChannelsLast); an
// op's activations and their gradients then all are, its outputs must be allocated so
// (Tensor::empty_like), and weights stay contiguous (OIHW). Elementwise ops (ReLU, add,
// accumulate, cast) run on the storage as it is, in either layout. On the GPU, convolutions
// (symmetric padding, no bias) and batch norm run NHWC kernels; every other channels-last op, and
// every one on the CPU, runs the contiguous op on NCHW copies of its activations and permutes the
// results back, so the CPU's channels-last results are bitwise its contiguous ones.
#pragma once

#include <cstdint>

#include "engine/core/tensor.h"
#include "kernels/op_shapes.h"
#include "kernels/ttq_math.h"

namespace ttq::ops {

// ---- layers --------------------------------------------------------------------------------
void conv2d_forward(const Conv2dShape& s, const Tensor& x, const Tensor& w, const Tensor* bias, Tensor& y);
void conv2d_backward_data(const Conv2dShape& s, const Tensor& dy, const Tensor& w, Tensor& dx);
void conv2d_backward_weights(const Conv2dShape& s, const Tensor& x, const Tensor& dy, Tensor& dw, Tensor* dbias);

void pool2d_forward(PoolKind kind, const Pool2dShape& s, const Tensor& x, Tensor& y);
void pool2d_backward(PoolKind kind, const Pool2dShape& s, const Tensor& x, const Tensor& dy, Tensor& dx);

// Training-mode batch norm; also updates the running statistics PyTorch's way
// (running = (1 - momentum) * running + momentum * batch, unbiased variance).
void batchnorm_forward_train(const BatchNormShape& s, const Tensor& x, const Tensor& gamma, const Tensor& beta,
                             float eps, float momentum, Tensor& running_mean, Tensor& running_var, Tensor& y,
                             Tensor& mean, Tensor& var, Tensor& inv_std);
void batchnorm_forward_infer(const BatchNormShape& s, const Tensor& x, const Tensor& gamma, const Tensor& beta,
                             const Tensor& running_mean, const Tensor& running_var, float eps, Tensor& y);
void batchnorm_backward(const BatchNormShape& s, const Tensor& x, const Tensor& dy, const Tensor& gamma,
                        const Tensor& mean, const Tensor& inv_std, float eps, Tensor& dx, Tensor& dgamma,
                        Tensor& dbeta);

// The pieces of synchronised batch norm (engine/dist/sync_batchnorm.cpp), which all-reduces the
// per-channel sums between them on the host. x, dy, y, dx: the activations, f32 or bf16 (one
// dtype); sums, f64 "mean" and "inv_std": f64 [C] or [2C]; gamma, beta and f32 statistics: f32
// [C]. Sums are formed in double in a fixed order (bitwise repeatable on one device; the CPU and
// the GPU add in different orders, so they agree to rounding). Per element, the CPU and the GPU
// evaluate the same double expressions without fused multiply-adds.
//   bn_channel_sums   sums[c] = sum of x over channel c (mean null), or of (x - mean[c])^2 with
//                     mean f64 [C]: sums f64 [C]
//   bn_backward_sums  sums = [sum dy (C) | sum dy * xhat (C)], f64 [2C], with
//                     xhat = (x - mean[c]) * (double)inv_std[c] (the difference in f32); mean,
//                     inv_std: f32 [C] (the forward pass's saved statistics)
//   bn_normalize      y = (x - mean[c]) * inv_std[c] * gamma[c] + beta[c] in double, mean and
//                     inv_std f64 [C]; converted to f32 (and bf16 y from that f32, as every bf16
//                     batch-norm kernel)
//   bn_backward_dx    dx = k * (count * dy - sdy - xhat * sdyx), k = gamma[c] * inv_std[c] /
//                     count, in double, xhat as above; sums: the global [sum dy | sum dy * xhat],
//                     f64 [2C]; count: the global number of values per channel
void bn_channel_sums(const BatchNormShape& s, const Tensor& x, const Tensor* mean, Tensor& sums);
void bn_backward_sums(const BatchNormShape& s, const Tensor& x, const Tensor& dy, const Tensor& mean,
                      const Tensor& inv_std, Tensor& sums);
void bn_normalize(const BatchNormShape& s, const Tensor& x, const Tensor& mean, const Tensor& inv_std,
                  const Tensor& gamma, const Tensor& beta, Tensor& y);
void bn_backward_dx(const BatchNormShape& s, const Tensor& x, const Tensor& dy, const Tensor& mean,
                    const Tensor& inv_std, const Tensor& gamma, const Tensor& sums, double count, Tensor& dx);

void linear_forward(const Tensor& x, const Tensor& w, const Tensor* bias, Tensor& y);
// dx may be null.
void linear_backward(const Tensor& x, const Tensor& w, const Tensor& dy, Tensor* dx, Tensor& dw, Tensor* dbias);

void global_avgpool_forward(const Tensor& x, Tensor& y);     // [N, C, H, W] -> [N, C]
void global_avgpool_backward(const Tensor& dy, Tensor& dx);  // dx has the input's shape

void relu_forward(const Tensor& x, Tensor& y);
void relu_backward(const Tensor& y, const Tensor& dy, Tensor& dx);

void shortcut_a_forward(int64_t stride, const Tensor& x, Tensor& y);
void shortcut_a_backward(int64_t stride, const Tensor& dy, Tensor& dx);

// out = a + b (elementwise, same shapes; out may alias a or b).
void add(const Tensor& a, const Tensor& b, Tensor& out);
// dst += src (same dtype, or an f32 dst and a bf16 src)
void add_accumulate(Tensor& dst, const Tensor& src);
// t = max(t, lo)
void clamp_min_inplace(Tensor& t, float lo);
// dst = src converted to dst's dtype (f32 <-> bf16, rounding to nearest even; a plain copy when
// the dtypes agree). Same device, same number of elements.
void cast(const Tensor& src, Tensor& dst);
// A new tensor: src in dtype (src itself when it already has it).
Tensor cast_to(const Tensor& src, DType dtype);
// dst = src in dst's layout: the NCHW <-> NHWC permutation of a 4-D tensor (a plain copy when the
// layouts agree). Same shape, dtype (2- or 4-byte elements) and device; dst must not alias src.
void to_layout(const Tensor& src, Tensor& dst);
// A new tensor: src in layout (src itself when it already has it).
Tensor to_layout(const Tensor& src, Layout layout);
// A model input in the compute format: cast to its dtype, then (4-D inputs) to its layout.
Tensor to_compute_format(const Tensor& x, ComputeFormat f);

// ---- loss ----------------------------------------------------------------------------------
// labels: int32 [N] on the logits' device. Returns the mean loss (a device-to-host read on the GPU).
double softmax_xent_forward(const Tensor& logits, const Tensor& labels, float label_smoothing, Tensor& probs);
void softmax_xent_backward(const Tensor& probs, const Tensor& labels, float label_smoothing, Tensor& dlogits);
int64_t count_topk_correct(const Tensor& logits, const Tensor& labels, int k);
// The same without reading anything back: the mean loss goes to loss_out (f32 [1]) and the count
// to correct_out (i64 [1]), both on the logits' device (e.g. slots of a per-step log on the GPU).
void softmax_xent_forward_into(const Tensor& logits, const Tensor& labels, float label_smoothing, Tensor& probs,
                               Tensor& loss_out);
void count_topk_correct_into(const Tensor& logits, const Tensor& labels, int k, Tensor& correct_out);

// ---- TTQ -----------------------------------------------------------------------------------
// Threshold, codes and quantized weights of one layer. wp, wn: the scales on the weights' device
// (read, not written), both of 1 element (one per layer) or of C elements, C dividing the weight
// count: per-output-channel scales, row c of the weights (n / C of them, a conv's output channel)
// using wp[c], wn[c]. D is one value per layer either way. threshold and twn_scale: [1] outputs.
// Twn mode takes its one fixed scale from twn_scale and ignores wp and wn.
void ttq_forward(math::ThresholdMode mode, float t, double r, const Tensor& latent, const Tensor& wp,
                 const Tensor& wn, Tensor& threshold, Tensor& twn_scale, Tensor& w_t, Tensor& codes);
// latent_grad += scale(code) * g (plain g when scale_latent is false); dwp, dwn (the scales'
// size) += the scale gradients. wp, wn are the scales used in the forward pass.
void ttq_backward_accumulate(const Tensor& codes, const Tensor& g, const Tensor& wp, const Tensor& wn,
                             bool scale_latent, Tensor& latent_grad, Tensor& dwp, Tensor& dwn);

// ---- optimizers (one parameter tensor) ------------------------------------------------------
void sgd_update(Tensor& p, const Tensor& g, Tensor* momentum_buf, float lr, float momentum, float wd,
                bool nesterov, bool first_step);
void adam_update(Tensor& p, const Tensor& g, Tensor& m, Tensor& v, float lr, float beta1, float beta2, float eps,
                 float wd, float bc1, float bc2);

}  // namespace ttq::ops
