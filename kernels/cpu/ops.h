// The CPU ops the layers call: each one runs oneDNN when it is built in and selected, and the
// reference kernel otherwise. Same signatures as ttq::ref (kernels/cpu/ops_ref.h).
#pragma once

#include <cstdint>

#include "kernels/op_shapes.h"

namespace ttq::cpu {

enum class Kernels { Reference, OneDNN };

bool onednn_built();
// The process-wide choice; defaults to OneDNN when built, Reference otherwise.
Kernels kernels();
// Throws when OneDNN is asked for in a build without it.
void set_kernels(Kernels k);
const char* kernels_name(Kernels k);

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

}  // namespace ttq::cpu
