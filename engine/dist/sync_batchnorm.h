// Synchronised batch norm for data-parallel training: the training-mode statistics are those of
// the global batch (every rank's samples), so N ranks with per-rank batch B compute what one rank
// with batch N*B computes. Forward: one all-reduce of the per-channel sums and counts (for the mean),
// one of the sums of squared deviations from that mean (a two-pass variance, no cancellation).
// Backward: one all-reduce of the per-channel sums of dy and dy*xhat. Sums are in double. The
// gradients of gamma and beta stay per-rank sums: the gradient reducer averages them like every
// other gradient.
//
// CPU and GPU tensors, f32 or bf16 activations (x, y, dy, dx; everything per channel is f32), on
// every backend: the per-channel sums are formed where the tensors live (kernels/ops.h
// bn_channel_sums, bn_backward_sums: deterministic, in double), copied to the host (on the GPU
// after Communicator::sync_device, so a dead peer under nccl is an error, not a hang) and summed
// over the ranks with the host all_reduce_sum; the host computes the statistics in double and
// uploads what bn_normalize and bn_backward_dx need. The [C] statistics, running statistics and
// parameter gradients are written from the host. Each call waits for the device several times
// (the statistics are needed before anything downstream can run).
#pragma once

#include <cstdint>

#include "engine/core/tensor.h"
#include "kernels/op_shapes.h"

namespace ttq {

class Communicator;

// Same outputs as ops::batchnorm_forward_train (y, mean, biased var, inv_std, running statistics
// updated with the unbiased global variance), over all ranks. Returns the global count per channel.
int64_t sync_batchnorm_forward_train(Communicator& comm, const BatchNormShape& s, const Tensor& x, const Tensor& gamma,
                                     const Tensor& beta, float eps, float momentum, Tensor& running_mean,
                                     Tensor& running_var, Tensor& y, Tensor& mean, Tensor& var, Tensor& inv_std);

// dx with the global sums; dgamma, dbeta: this rank's sums. global_count: from the forward pass.
void sync_batchnorm_backward(Communicator& comm, const BatchNormShape& s, int64_t global_count, const Tensor& x,
                             const Tensor& dy, const Tensor& gamma, const Tensor& mean, const Tensor& inv_std,
                             Tensor& dx, Tensor& dgamma, Tensor& dbeta);

}  // namespace ttq
