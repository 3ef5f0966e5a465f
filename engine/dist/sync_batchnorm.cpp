#include "engine/dist/sync_batchnorm.h"

#include <cmath>
#include <cstring>
#include <initializer_list>
#include <string>
#include <vector>

#include "engine/dist/communicator.h"
#include "kernels/ops.h"

namespace ttq {

namespace {

// The per-channel tensors (gamma, beta, statistics, their gradients): f32 [C] on the activations'
// device.
void check_channel_tensors(const char* what, const Tensor& x, int64_t c, std::initializer_list<const Tensor*> ts) {
  for (const Tensor* t : ts)
    TTQ_CHECK(t->defined() && t->dtype() == DType::F32 && t->numel() == c && t->device() == x.device(),
              "sync_bn: " << what << " expects f32 tensors of " << c << " elements on the input's device ("
                          << x.str() << "), got " << (t->defined() ? t->str() : std::string("an undefined tensor")));
}

// A host copy of a device tensor, or the tensor itself on the CPU. On the GPU the communicator
// first waits (with its timeout and error checks) for the work enqueued so far: under nccl a dead
// peer then makes an error here, not a copy that never returns.
Tensor to_host(Communicator& comm, const Tensor& t, const char* what) {
  if (t.device() == Device::CPU) return t;
  comm.sync_device(what);
  return t.to(Device::CPU);
}

// A new tensor on `device` holding the host values.
Tensor f64_on(Device device, const std::vector<double>& v) {
  Tensor h = Tensor::empty({static_cast<int64_t>(v.size())}, DType::F64);
  if (!v.empty()) std::memcpy(h.data<double>(), v.data(), v.size() * sizeof(double));
  return h.to(device);
}

// dst (f32, any device) = the host values.
void write_f32(Tensor& dst, const std::vector<float>& v) {
  if (dst.device() == Device::CPU)
    std::memcpy(dst.data<float>(), v.data(), v.size() * sizeof(float));
  else
    dst.copy_from(Tensor::from_vector(dst.shape(), v));
}

}  // namespace

int64_t sync_batchnorm_forward_train(Communicator& comm, const BatchNormShape& s, const Tensor& x, const Tensor& gamma,
                                     const Tensor& beta, float eps, float momentum, Tensor& running_mean,
                                     Tensor& running_var, Tensor& y, Tensor& mean, Tensor& var, Tensor& inv_std) {
  const int64_t C = s.c, per = s.n * s.s;
  const size_t uc = static_cast<size_t>(C);
  check_channel_tensors("forward", x, C, {&gamma, &beta, &running_mean, &running_var, &mean, &var, &inv_std});
  const Device dev = x.device();
  // Pass 1: sums and count -> global mean.
  Tensor dsums = Tensor::empty({C}, DType::F64, dev);
  ops::bn_channel_sums(s, x, nullptr, dsums);
  std::vector<double> sums(uc + 1);
  {
    const Tensor h = to_host(comm, dsums, "sync_bn: the batch sums");
    std::memcpy(sums.data(), h.data<double>(), uc * sizeof(double));
  }
  sums[uc] = static_cast<double>(per);
  comm.all_reduce_sum(sums.data(), C + 1, "the sync_bn batch sums");
  const double count = sums[uc];
  TTQ_CHECK(count > 1, "sync_bn: training needs more than one value per channel over all ranks, got " << count);
  std::vector<double> mu(uc);
  for (size_t c = 0; c < uc; ++c) mu[c] = sums[c] / count;
  const Tensor dmu = f64_on(dev, mu);
  // Pass 2: squared deviations from the global mean -> global (biased) variance.
  ops::bn_channel_sums(s, x, &dmu, dsums);
  std::vector<double> sq(uc);
  std::vector<float> rm(uc), rv(uc);
  {
    const Tensor h = to_host(comm, dsums, "sync_bn: the batch's squared deviations");
    std::memcpy(sq.data(), h.data<double>(), uc * sizeof(double));
    // The running statistics ([C], written by nothing since the wait above).
    const Tensor hm = running_mean.to(Device::CPU), hv = running_var.to(Device::CPU);
    std::memcpy(rm.data(), hm.data<float>(), uc * sizeof(float));
    std::memcpy(rv.data(), hv.data<float>(), uc * sizeof(float));
  }
  comm.all_reduce_sum(sq.data(), C, "the sync_bn squared deviations");
  // Statistics on the host, in double; the f32 outputs and running statistics as before.
  std::vector<double> is(uc);
  std::vector<float> meanf(uc), varf(uc), isf(uc);
  const float unbias = static_cast<float>(count / (count - 1.0));
  for (size_t c = 0; c < uc; ++c) {
    const double v = sq[c] / count;
    is[c] = 1.0 / std::sqrt(v + eps);
    meanf[c] = static_cast<float>(mu[c]);
    varf[c] = static_cast<float>(v);
    isf[c] = static_cast<float>(is[c]);
    rm[c] = (1.0f - momentum) * rm[c] + momentum * meanf[c];
    rv[c] = (1.0f - momentum) * rv[c] + momentum * varf[c] * unbias;
  }
  ops::bn_normalize(s, x, dmu, f64_on(dev, is), gamma, beta, y);
  write_f32(mean, meanf);
  write_f32(var, varf);
  write_f32(inv_std, isf);
  write_f32(running_mean, rm);
  write_f32(running_var, rv);
  return static_cast<int64_t>(count);
}

void sync_batchnorm_backward(Communicator& comm, const BatchNormShape& s, int64_t global_count, const Tensor& x,
                             const Tensor& dy, const Tensor& gamma, const Tensor& mean, const Tensor& inv_std,
                             Tensor& dx, Tensor& dgamma, Tensor& dbeta) {
  TTQ_CHECK(global_count > 1, "sync_bn: backward without a synchronised forward pass");
  const int64_t C = s.c;
  const size_t uc = static_cast<size_t>(C);
  check_channel_tensors("backward", x, C, {&gamma, &mean, &inv_std, &dgamma, &dbeta});
  const Device dev = x.device();
  // [sum dy (C) | sum dy * xhat (C)], this rank's, then global.
  Tensor dsums = Tensor::empty({2 * C}, DType::F64, dev);
  ops::bn_backward_sums(s, x, dy, mean, inv_std, dsums);
  std::vector<double> sums(2 * uc);
  {
    const Tensor h = to_host(comm, dsums, "sync_bn: the gradient sums");
    std::memcpy(sums.data(), h.data<double>(), 2 * uc * sizeof(double));
  }
  std::vector<float> dg(uc), db(uc);
  for (size_t c = 0; c < uc; ++c) {
    dg[c] = static_cast<float>(sums[uc + c]);
    db[c] = static_cast<float>(sums[c]);
  }
  write_f32(dgamma, dg);
  write_f32(dbeta, db);
  comm.all_reduce_sum(sums.data(), 2 * C, "the sync_bn gradient sums");
  // Every rank's dy is the gradient of its own mean loss (world x the gradient of the global mean
  // loss), so with global sums and the global count, dx is world x dL/dx, like every other
  // gradient on this rank before the averaging all-reduce.
  ops::bn_backward_dx(s, x, dy, mean, inv_std, gamma, f64_on(dev, sums), static_cast<double>(global_count), dx);
}

}  // namespace ttq
