// Naive reference kernels for every op: the definition the tests trust, and the CPU path when
// oneDNN is absent. Raw pointers + plain shapes, the same argument order as the oneDNN and CUDA
// versions. Gradient outputs are overwritten, never accumulated.
#pragma once

#include <cstdint>

#include "kernels/op_shapes.h"

namespace ttq::ref {

// Elementwise loops of at least this many values are split over the OpenMP threads (below it one
// thread is faster).
constexpr int64_t kElementwiseParallelMin = int64_t{1} << 16;

// y[n, co, oh, ow] = bias[co] + sum_{ci in group, kh, kw} x[n, ci, ...] * w[co, ci', kh, kw]
void conv2d_forward(const Conv2dShape& s, const float* x, const float* w, const float* bias, float* y);
void conv2d_backward_data(const Conv2dShape& s, const float* dy, const float* w, float* dx);
// dbias may be null.
void conv2d_backward_weights(const Conv2dShape& s, const float* x, const float* dy, float* dw, float* dbias);

void pool2d_forward(PoolKind kind, const Pool2dShape& s, const float* x, float* y);
// Max pooling routes each output's gradient to the first maximal input of its window.
void pool2d_backward(PoolKind kind, const Pool2dShape& s, const float* x, const float* dy, float* dx);

// Training-mode batch norm: normalises with the batch mean and biased variance; writes the
// per-channel mean, biased variance and 1/sqrt(var + eps) for the backward pass.
void batchnorm_forward_train(const BatchNormShape& s, const float* x, const float* gamma,
                             const float* beta, float eps, float* y, float* mean, float* var,
                             float* inv_std);
void batchnorm_forward_infer(const BatchNormShape& s, const float* x, const float* gamma,
                             const float* beta, const float* running_mean,
                             const float* running_var, float eps, float* y);
void batchnorm_backward(const BatchNormShape& s, const float* x, const float* dy,
                        const float* gamma, const float* mean, const float* inv_std, float* dx,
                        float* dgamma, float* dbeta);

// y[n, o] = bias[o] + sum_i x[n, i] * w[o, i]   (w is out x in, as PyTorch stores it)
void linear_forward(int64_t n, int64_t in, int64_t out, const float* x, const float* w,
                    const float* bias, float* y);
// dx may be null (first layer); dbias may be null.
void linear_backward(int64_t n, int64_t in, int64_t out, const float* x, const float* w,
                     const float* dy, float* dx, float* dw, float* dbias);

// Global average pool NCHW -> NC.
void global_avgpool_forward(int64_t n, int64_t c, int64_t hw, const float* x, float* y);
void global_avgpool_backward(int64_t n, int64_t c, int64_t hw, const float* dy, float* dx);

void relu_forward(int64_t count, const float* x, float* y);
// Uses the forward output: dx = dy where y > 0.
void relu_backward(int64_t count, const float* y, const float* dy, float* dx);

// Option-A shortcut: 2x2 average pool (stride 2) and zero-padded channels, pad_before channels
// of zeros in front and the rest behind (the authors' code pads in_channels/2 on each side).
void shortcut_a_forward(int64_t n, int64_t c_in, int64_t h, int64_t w, int64_t c_out,
                        int64_t pad_before, int64_t stride, const float* x, float* y);
void shortcut_a_backward(int64_t n, int64_t c_in, int64_t h, int64_t w, int64_t c_out,
                         int64_t pad_before, int64_t stride, const float* dy, float* dx);

// Mean softmax cross-entropy with label smoothing eps: the target is (1-eps) on the label plus
// eps/classes everywhere. Returns the mean loss; writes softmax probabilities to probs.
double softmax_xent_forward(int64_t n, int64_t classes, const float* logits, const int32_t* labels,
                            float label_smoothing, float* probs);
// dlogits = (probs - target) / n
void softmax_xent_backward(int64_t n, int64_t classes, const float* probs, const int32_t* labels,
                           float label_smoothing, float* dlogits);

}  // namespace ttq::ref
