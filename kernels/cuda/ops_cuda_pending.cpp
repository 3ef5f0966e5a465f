// CUDA ops of kernels/cuda/ops_cuda.h that are not written yet: each refuses with a clear error.
// Remove a function from here when its implementation lands.
#include "engine/core/error.h"
#include "kernels/cuda/ops_cuda.h"

namespace ttq::cuda {

#define TTQ_CUDA_PENDING(name) TTQ_FAIL(#name " on CUDA tensors is not implemented yet")

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
                        float*, float*, float*) { TTQ_CUDA_PENDING(batchnorm_backward); }
void linear_forward(int64_t, int64_t, int64_t, const float*, const float*, const float*, float*) { TTQ_CUDA_PENDING(linear_forward); }
void linear_backward(int64_t, int64_t, int64_t, const float*, const float*, const float*, float*, float*, float*) {
  TTQ_CUDA_PENDING(linear_backward);
}
void global_avgpool_forward(int64_t, int64_t, int64_t, const float*, float*) { TTQ_CUDA_PENDING(global_avgpool_forward); }
void global_avgpool_backward(int64_t, int64_t, int64_t, const float*, float*) { TTQ_CUDA_PENDING(global_avgpool_backward); }
void relu_forward(int64_t, const float*, float*) { TTQ_CUDA_PENDING(relu_forward); }
void relu_backward(int64_t, const float*, const float*, float*) { TTQ_CUDA_PENDING(relu_backward); }
void shortcut_a_forward(int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, const float*, float*) {
  TTQ_CUDA_PENDING(shortcut_a_forward);
}
void shortcut_a_backward(int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, const float*, float*) {
  TTQ_CUDA_PENDING(shortcut_a_backward);
}
void add(int64_t, const float*, const float*, float*) { TTQ_CUDA_PENDING(add); }
void add_accumulate(int64_t, float*, const float*) { TTQ_CUDA_PENDING(add_accumulate); }
void clamp_min_inplace(int64_t, float*, float) { TTQ_CUDA_PENDING(clamp_min_inplace); }
void ttq_forward(math::ThresholdMode, float, double, const float*, int64_t, const float*, const float*, float*, float*,
                 float*, int8_t*) { TTQ_CUDA_PENDING(ttq_forward); }
void ttq_backward_accumulate(const int8_t*, const float*, int64_t, const float*, const float*, bool, float*, float*,
                             float*) { TTQ_CUDA_PENDING(ttq_backward_accumulate); }
void sgd_update(int64_t, float*, const float*, float*, float, float, float, bool, bool) { TTQ_CUDA_PENDING(sgd_update); }
void adam_update(int64_t, float*, const float*, float*, float*, float, float, float, float, float, float, float) {
  TTQ_CUDA_PENDING(adam_update);
}
void softmax_xent_forward(int64_t, int64_t, const float*, const int32_t*, float, float*, float*) {
  TTQ_CUDA_PENDING(softmax_xent_forward);
}
void softmax_xent_backward(int64_t, int64_t, const float*, const int32_t*, float, float*) {
  TTQ_CUDA_PENDING(softmax_xent_backward);
}
void count_topk_correct(int64_t, int64_t, const float*, const int32_t*, int, int64_t*) { TTQ_CUDA_PENDING(count_topk_correct); }

}  // namespace ttq::cuda
