// oneDNN implementations of the CPU fast path (built only when oneDNN is found). Same
// signatures and semantics as ttq::ref; primitives are created once per shape and cached.
#pragma once

#include <cstdint>

#include "kernels/op_shapes.h"

namespace ttq::onednn {

void conv2d_forward(const Conv2dShape& s, const float* x, const float* w, const float* bias, float* y);
void conv2d_backward_data(const Conv2dShape& s, const float* dy, const float* w, float* dx);
void conv2d_backward_weights(const Conv2dShape& s, const float* x, const float* dy, float* dw, float* dbias);
void pool2d_forward(PoolKind kind, const Pool2dShape& s, const float* x, float* y);
void pool2d_backward(PoolKind kind, const Pool2dShape& s, const float* x, const float* dy, float* dx);
void batchnorm_forward_train(const BatchNormShape& s, const float* x, const float* gamma,
                             const float* beta, float eps, float* y, float* mean, float* var,
                             float* inv_std);
void batchnorm_forward_infer(const BatchNormShape& s, const float* x, const float* gamma,
                             const float* beta, const float* running_mean,
                             const float* running_var, float eps, float* y);
void batchnorm_backward(const BatchNormShape& s, const float* x, const float* dy,
                        const float* gamma, const float* mean, const float* inv_std, float* dx,
                        float* dgamma, float* dbeta);
void linear_forward(int64_t n, int64_t in, int64_t out, const float* x, const float* w,
                    const float* bias, float* y);
void linear_backward(int64_t n, int64_t in, int64_t out, const float* x, const float* w,
                     const float* dy, float* dx, float* dw, float* dbias);

}  // namespace ttq::onednn
