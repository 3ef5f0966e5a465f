#include "engine/dist/sync_batchnorm.h"

#include <cmath>
#include <vector>

#include "engine/dist/communicator.h"

namespace ttq {

namespace {

void require_cpu(const char* what, std::initializer_list<const Tensor*> ts) {
  for (const Tensor* t : ts)
    TTQ_CHECK(t->device() == Device::CPU && t->dtype() == DType::F32,
              "sync_bn: " << what << " runs on f32 CPU tensors (synchronised batch norm is implemented for CPU "
                                     "training), got "
                          << t->str());
}

}  // namespace

int64_t sync_batchnorm_forward_train(Communicator& comm, const BatchNormShape& s, const Tensor& x, const Tensor& gamma,
                                     const Tensor& beta, float eps, float momentum, Tensor& running_mean,
                                     Tensor& running_var, Tensor& y, Tensor& mean, Tensor& var, Tensor& inv_std) {
  require_cpu("forward", {&x, &gamma, &beta, &running_mean, &running_var, &y, &mean, &var, &inv_std});
  const int64_t C = s.c, per = s.n * s.s;
  const float* xp = x.data<float>();
  // Pass 1: sums and count -> global mean.
  std::vector<double> sums(static_cast<size_t>(C) + 1, 0.0);
#pragma omp parallel for schedule(static)
  for (int64_t c = 0; c < C; ++c) {
    double a = 0.0;
    for (int64_t n = 0; n < s.n; ++n) {
      const float* p = xp + (n * C + c) * s.s;
      for (int64_t i = 0; i < s.s; ++i) a += p[i];
    }
    sums[static_cast<size_t>(c)] = a;
  }
  sums[static_cast<size_t>(C)] = static_cast<double>(per);
  comm.all_reduce_sum(sums.data(), C + 1);
  const double count = sums[static_cast<size_t>(C)];
  TTQ_CHECK(count > 1, "sync_bn: training needs more than one value per channel over all ranks, got " << count);
  std::vector<double> mu(static_cast<size_t>(C));
  for (int64_t c = 0; c < C; ++c) mu[static_cast<size_t>(c)] = sums[static_cast<size_t>(c)] / count;
  // Pass 2: squared deviations from the global mean -> global (biased) variance.
  std::vector<double> sq(static_cast<size_t>(C), 0.0);
#pragma omp parallel for schedule(static)
  for (int64_t c = 0; c < C; ++c) {
    double a = 0.0;
    const double m = mu[static_cast<size_t>(c)];
    for (int64_t n = 0; n < s.n; ++n) {
      const float* p = xp + (n * C + c) * s.s;
      for (int64_t i = 0; i < s.s; ++i) a += (p[i] - m) * (p[i] - m);
    }
    sq[static_cast<size_t>(c)] = a;
  }
  comm.all_reduce_sum(sq.data(), C);
  float* yp = y.data<float>();
  float* meanp = mean.data<float>();
  float* varp = var.data<float>();
  float* isp = inv_std.data<float>();
  float* rm = running_mean.data<float>();
  float* rv = running_var.data<float>();
  const float* g = gamma.data<float>();
  const float* b = beta.data<float>();
  const float unbias = static_cast<float>(count / (count - 1.0));
#pragma omp parallel for schedule(static)
  for (int64_t c = 0; c < C; ++c) {
    const double m = mu[static_cast<size_t>(c)];
    const double v = sq[static_cast<size_t>(c)] / count;
    const double is = 1.0 / std::sqrt(v + eps);
    meanp[c] = static_cast<float>(m);
    varp[c] = static_cast<float>(v);
    isp[c] = static_cast<float>(is);
    for (int64_t n = 0; n < s.n; ++n) {
      const float* p = xp + (n * C + c) * s.s;
      float* q = yp + (n * C + c) * s.s;
      for (int64_t i = 0; i < s.s; ++i) q[i] = static_cast<float>((p[i] - m) * is * g[c] + b[c]);
    }
    rm[c] = (1.0f - momentum) * rm[c] + momentum * meanp[c];
    rv[c] = (1.0f - momentum) * rv[c] + momentum * varp[c] * unbias;
  }
  return static_cast<int64_t>(count);
}

void sync_batchnorm_backward(Communicator& comm, const BatchNormShape& s, int64_t global_count, const Tensor& x,
                             const Tensor& dy, const Tensor& gamma, const Tensor& mean, const Tensor& inv_std,
                             Tensor& dx, Tensor& dgamma, Tensor& dbeta) {
  require_cpu("backward", {&x, &dy, &gamma, &mean, &inv_std, &dx, &dgamma, &dbeta});
  TTQ_CHECK(global_count > 1, "sync_bn: backward without a synchronised forward pass");
  const int64_t C = s.c;
  const float* xp = x.data<float>();
  const float* dyp = dy.data<float>();
  const float* meanp = mean.data<float>();
  const float* isp = inv_std.data<float>();
  // [sum dy (C) | sum dy * xhat (C)], this rank's, then global.
  std::vector<double> sums(static_cast<size_t>(2 * C), 0.0);
#pragma omp parallel for schedule(static)
  for (int64_t c = 0; c < C; ++c) {
    double sdy = 0.0, sdyx = 0.0;
    for (int64_t n = 0; n < s.n; ++n) {
      const float* p = xp + (n * C + c) * s.s;
      const float* d = dyp + (n * C + c) * s.s;
      for (int64_t i = 0; i < s.s; ++i) {
        const double xhat = (p[i] - meanp[c]) * static_cast<double>(isp[c]);
        sdy += d[i];
        sdyx += d[i] * xhat;
      }
    }
    sums[static_cast<size_t>(c)] = sdy;
    sums[static_cast<size_t>(C + c)] = sdyx;
  }
  float* dg = dgamma.data<float>();
  float* db = dbeta.data<float>();
  for (int64_t c = 0; c < C; ++c) {
    dg[c] = static_cast<float>(sums[static_cast<size_t>(C + c)]);
    db[c] = static_cast<float>(sums[static_cast<size_t>(c)]);
  }
  comm.all_reduce_sum(sums.data(), 2 * C);
  // Every rank's dy is the gradient of its own mean loss (world x the gradient of the global mean
  // loss), so with global sums and the global count, dx is world x dL/dx, like every other
  // gradient on this rank before the averaging all-reduce.
  const double m = static_cast<double>(global_count);
  const float* g = gamma.data<float>();
  float* dxp = dx.data<float>();
#pragma omp parallel for schedule(static)
  for (int64_t c = 0; c < C; ++c) {
    const double k = g[c] * static_cast<double>(isp[c]) / m;
    const double sdy = sums[static_cast<size_t>(c)], sdyx = sums[static_cast<size_t>(C + c)];
    for (int64_t n = 0; n < s.n; ++n) {
      const float* p = xp + (n * C + c) * s.s;
      const float* d = dyp + (n * C + c) * s.s;
      float* q = dxp + (n * C + c) * s.s;
      for (int64_t i = 0; i < s.s; ++i) {
        const double xhat = (p[i] - meanp[c]) * static_cast<double>(isp[c]);
        q[i] = static_cast<float>(k * (m * d[i] - sdy - xhat * sdyx));
      }
    }
  }
}

}  // namespace ttq
