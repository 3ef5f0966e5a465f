// CUDA ops of kernels/cuda/ops_cuda.h that are not written yet: each refuses with a clear error.
// Remove a function from here when its implementation lands. The bf16 convolutions need cuDNN and
// the bf16 Linear cuBLAS, like the f32 ones; bf16 pooling and batch norm are the project's own
// kernels (kernels/cuda/ops_bf16.cu) and exist in every CUDA build.
#include "engine/core/error.h"
#include "kernels/cuda/ops_cuda.h"

namespace ttq::cuda {

#define TTQ_CUDA_PENDING(name) TTQ_FAIL(#name " on CUDA tensors is not implemented yet")

#ifndef TTQ_HAVE_CUDNN  // implemented in kernels/cuda/ops_cudnn.cpp when cuDNN is found
void conv2d_forward(const Conv2dShape&, const float*, const float*, const float*, float*) { TTQ_CUDA_PENDING(conv2d_forward); }
void conv2d_backward_data(const Conv2dShape&, const float*, const float*, float*) { TTQ_CUDA_PENDING(conv2d_backward_data); }
void conv2d_backward_weights(const Conv2dShape&, const float*, const float*, float*, float*) { TTQ_CUDA_PENDING(conv2d_backward_weights); }
void pool2d_forward(PoolKind, const Pool2dShape&, const float*, float*) { TTQ_CUDA_PENDING(pool2d_forward); }
void pool2d_backward(PoolKind, const Pool2dShape&, const float*, const float*, float*) { TTQ_CUDA_PENDING(pool2d_backward); }
void batchnorm_forward_train(const BatchNormShape&, const float*, const float*, const float*, float, float, float*, float*,
                             float*, float*, float*, float*) { TTQ_CUDA_PENDING(batchnorm_forward_train); }
void batchnorm_forward_infer(const BatchNormShape&, const float*, const float*, const float*, const float*, const float*,
                             float, float*) { TTQ_CUDA_PENDING(batchnorm_forward_infer); }
void batchnorm_backward(const BatchNormShape&, const float*, const float*, const float*, const float*, const float*,
                        float, float*, float*, float*) { TTQ_CUDA_PENDING(batchnorm_backward); }
void refuse_conv_algorithms_for_testing(bool) {}
int64_t conv_fallbacks_for_testing() { return 0; }
// bf16 convolutions (without cuDNN)
void conv2d_forward(const Conv2dShape&, const bf16*, const bf16*, const float*, bf16*) { TTQ_CUDA_PENDING(conv2d_forward); }
void conv2d_backward_data(const Conv2dShape&, const bf16*, const bf16*, bf16*) { TTQ_CUDA_PENDING(conv2d_backward_data); }
void conv2d_backward_weights(const Conv2dShape&, const bf16*, const bf16*, bf16*, float*) { TTQ_CUDA_PENDING(conv2d_backward_weights); }
#endif  // TTQ_HAVE_CUDNN
#ifndef TTQ_HAVE_CUBLAS  // implemented in kernels/cuda/ops_cublas.cpp when cuBLAS is found
void linear_forward(int64_t, int64_t, int64_t, const float*, const float*, const float*, float*) { TTQ_CUDA_PENDING(linear_forward); }
void linear_backward(int64_t, int64_t, int64_t, const float*, const float*, const float*, float*, float*, float*) {
  TTQ_CUDA_PENDING(linear_backward);
}
// bf16 Linear (without cuBLAS)
void linear_forward(int64_t, int64_t, int64_t, const bf16*, const bf16*, const float*, bf16*) { TTQ_CUDA_PENDING(linear_forward); }
void linear_backward(int64_t, int64_t, int64_t, const bf16*, const bf16*, const bf16*, bf16*, bf16*, float*) {
  TTQ_CUDA_PENDING(linear_backward);
}
#endif  // TTQ_HAVE_CUBLAS

}  // namespace ttq::cuda
