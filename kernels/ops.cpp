#include "kernels/ops.h"

#include <algorithm>
#include <initializer_list>

#include "kernels/cpu/ops.h"
#include "kernels/cpu/ops_ref.h"
#include "kernels/cpu/ttq_cpu.h"
#include "kernels/optim_math.h"

namespace ttq::ops {

namespace {

// All tensors on one device, f32 unless noted by the caller; returns that device.
Device common_device(const char* op, std::initializer_list<const Tensor*> ts) {
  Device d = Device::CPU;
  bool first = true;
  for (const Tensor* t : ts) {
    if (!t) continue;
    TTQ_CHECK(t->defined(), op << ": undefined tensor argument");
    if (first) {
      d = t->device();
      first = false;
    }
    TTQ_CHECK(t->device() == d, op << ": tensors on different devices (" << t->str() << ")");
  }
  return d;
}

void expect(const char* op, const Tensor& t, int64_t numel, const char* what) {
  TTQ_CHECK(t.numel() == numel, op << ": " << what << " has " << t.numel() << " elements (" << t.str() << "), expected "
                                   << numel);
}

[[noreturn]] void no_cuda(const char* op) {
  TTQ_FAIL(op << " on CUDA tensors: the CUDA layer backend is not available in this version");
}

#define TTQ_CPU_ONLY(op, ...) \
  if (common_device(op, {__VA_ARGS__}) != Device::CPU) no_cuda(op)

const float* cptr(const Tensor* t) { return t ? t->data<float>() : nullptr; }
float* mptr(Tensor* t) { return t ? t->data<float>() : nullptr; }

}  // namespace

void conv2d_forward(const Conv2dShape& s, const Tensor& x, const Tensor& w, const Tensor* bias, Tensor& y) {
  TTQ_CPU_ONLY("conv2d_forward", &x, &w, bias, &y);
  expect("conv2d_forward", x, s.in_numel(), "input");
  expect("conv2d_forward", w, s.weight_numel(), "weight");
  expect("conv2d_forward", y, s.out_numel(), "output");
  cpu::conv2d_forward(s, x.data<float>(), w.data<float>(), cptr(bias), y.data<float>());
}

void conv2d_backward_data(const Conv2dShape& s, const Tensor& dy, const Tensor& w, Tensor& dx) {
  TTQ_CPU_ONLY("conv2d_backward_data", &dy, &w, &dx);
  expect("conv2d_backward_data", dy, s.out_numel(), "output gradient");
  expect("conv2d_backward_data", dx, s.in_numel(), "input gradient");
  cpu::conv2d_backward_data(s, dy.data<float>(), w.data<float>(), dx.data<float>());
}

void conv2d_backward_weights(const Conv2dShape& s, const Tensor& x, const Tensor& dy, Tensor& dw, Tensor* dbias) {
  TTQ_CPU_ONLY("conv2d_backward_weights", &x, &dy, &dw, dbias);
  expect("conv2d_backward_weights", dw, s.weight_numel(), "weight gradient");
  cpu::conv2d_backward_weights(s, x.data<float>(), dy.data<float>(), dw.data<float>(), mptr(dbias));
}

void pool2d_forward(PoolKind kind, const Pool2dShape& s, const Tensor& x, Tensor& y) {
  TTQ_CPU_ONLY("pool2d_forward", &x, &y);
  expect("pool2d_forward", y, s.out_numel(), "output");
  cpu::pool2d_forward(kind, s, x.data<float>(), y.data<float>());
}

void pool2d_backward(PoolKind kind, const Pool2dShape& s, const Tensor& x, const Tensor& dy, Tensor& dx) {
  TTQ_CPU_ONLY("pool2d_backward", &x, &dy, &dx);
  expect("pool2d_backward", dx, s.in_numel(), "input gradient");
  cpu::pool2d_backward(kind, s, x.data<float>(), dy.data<float>(), dx.data<float>());
}

void batchnorm_forward_train(const BatchNormShape& s, const Tensor& x, const Tensor& gamma, const Tensor& beta,
                             float eps, float momentum, Tensor& running_mean, Tensor& running_var, Tensor& y,
                             Tensor& mean, Tensor& var, Tensor& inv_std) {
  TTQ_CPU_ONLY("batchnorm_forward_train", &x, &gamma, &beta, &running_mean, &running_var, &y, &mean, &var, &inv_std);
  expect("batchnorm_forward_train", x, s.numel(), "input");
  cpu::batchnorm_forward_train(s, x.data<float>(), gamma.data<float>(), beta.data<float>(), eps, y.data<float>(),
                               mean.data<float>(), var.data<float>(), inv_std.data<float>());
  const double m = static_cast<double>(s.n * s.s);
  const float unbias = static_cast<float>(m / (m - 1.0));
  float* rm = running_mean.data<float>();
  float* rv = running_var.data<float>();
  for (int64_t c = 0; c < s.c; ++c) {
    rm[c] = (1.0f - momentum) * rm[c] + momentum * mean.data<float>()[c];
    rv[c] = (1.0f - momentum) * rv[c] + momentum * var.data<float>()[c] * unbias;
  }
}

void batchnorm_forward_infer(const BatchNormShape& s, const Tensor& x, const Tensor& gamma, const Tensor& beta,
                             const Tensor& running_mean, const Tensor& running_var, float eps, Tensor& y) {
  TTQ_CPU_ONLY("batchnorm_forward_infer", &x, &gamma, &beta, &running_mean, &running_var, &y);
  expect("batchnorm_forward_infer", x, s.numel(), "input");
  cpu::batchnorm_forward_infer(s, x.data<float>(), gamma.data<float>(), beta.data<float>(), running_mean.data<float>(),
                               running_var.data<float>(), eps, y.data<float>());
}

void batchnorm_backward(const BatchNormShape& s, const Tensor& x, const Tensor& dy, const Tensor& gamma,
                        const Tensor& mean, const Tensor& inv_std, Tensor& dx, Tensor& dgamma, Tensor& dbeta) {
  TTQ_CPU_ONLY("batchnorm_backward", &x, &dy, &gamma, &mean, &inv_std, &dx, &dgamma, &dbeta);
  expect("batchnorm_backward", dy, s.numel(), "output gradient");
  cpu::batchnorm_backward(s, x.data<float>(), dy.data<float>(), gamma.data<float>(), mean.data<float>(),
                          inv_std.data<float>(), dx.data<float>(), dgamma.data<float>(), dbeta.data<float>());
}

void linear_forward(const Tensor& x, const Tensor& w, const Tensor* bias, Tensor& y) {
  TTQ_CPU_ONLY("linear_forward", &x, &w, bias, &y);
  const int64_t n = x.dim(0), in = w.dim(1), out = w.dim(0);
  expect("linear_forward", x, n * in, "input");
  expect("linear_forward", y, n * out, "output");
  cpu::linear_forward(n, in, out, x.data<float>(), w.data<float>(), cptr(bias), y.data<float>());
}

void linear_backward(const Tensor& x, const Tensor& w, const Tensor& dy, Tensor* dx, Tensor& dw, Tensor* dbias) {
  TTQ_CPU_ONLY("linear_backward", &x, &w, &dy, dx, &dw, dbias);
  const int64_t n = x.dim(0), in = w.dim(1), out = w.dim(0);
  expect("linear_backward", dy, n * out, "output gradient");
  cpu::linear_backward(n, in, out, x.data<float>(), w.data<float>(), dy.data<float>(), mptr(dx), dw.data<float>(),
                       mptr(dbias));
}

void global_avgpool_forward(const Tensor& x, Tensor& y) {
  TTQ_CPU_ONLY("global_avgpool_forward", &x, &y);
  expect("global_avgpool_forward", y, x.dim(0) * x.dim(1), "output");
  ref::global_avgpool_forward(x.dim(0), x.dim(1), x.dim(2) * x.dim(3), x.data<float>(), y.data<float>());
}

void global_avgpool_backward(const Tensor& dy, Tensor& dx) {
  TTQ_CPU_ONLY("global_avgpool_backward", &dy, &dx);
  expect("global_avgpool_backward", dy, dx.dim(0) * dx.dim(1), "output gradient");
  ref::global_avgpool_backward(dx.dim(0), dx.dim(1), dx.dim(2) * dx.dim(3), dy.data<float>(), dx.data<float>());
}

void relu_forward(const Tensor& x, Tensor& y) {
  TTQ_CPU_ONLY("relu_forward", &x, &y);
  expect("relu_forward", y, x.numel(), "output");
  ref::relu_forward(x.numel(), x.data<float>(), y.data<float>());
}

void relu_backward(const Tensor& y, const Tensor& dy, Tensor& dx) {
  TTQ_CPU_ONLY("relu_backward", &y, &dy, &dx);
  expect("relu_backward", dy, y.numel(), "output gradient");
  expect("relu_backward", dx, y.numel(), "input gradient");
  ref::relu_backward(y.numel(), y.data<float>(), dy.data<float>(), dx.data<float>());
}

void shortcut_a_forward(int64_t stride, const Tensor& x, Tensor& y) {
  TTQ_CPU_ONLY("shortcut_a_forward", &x, &y);
  const int64_t c_out = y.dim(1);
  ref::shortcut_a_forward(x.dim(0), x.dim(1), x.dim(2), x.dim(3), c_out, (c_out - x.dim(1)) / 2, stride,
                          x.data<float>(), y.data<float>());
}

void shortcut_a_backward(int64_t stride, const Tensor& dy, Tensor& dx) {
  TTQ_CPU_ONLY("shortcut_a_backward", &dy, &dx);
  const int64_t c_out = dy.dim(1);
  ref::shortcut_a_backward(dx.dim(0), dx.dim(1), dx.dim(2), dx.dim(3), c_out, (c_out - dx.dim(1)) / 2, stride,
                           dy.data<float>(), dx.data<float>());
}

void add(const Tensor& a, const Tensor& b, Tensor& out) {
  TTQ_CPU_ONLY("add", &a, &b, &out);
  TTQ_CHECK(a.shape() == b.shape() && out.numel() == a.numel(),
            "add: shapes " << shape_str(a.shape()) << " and " << shape_str(b.shape()) << " into " << shape_str(out.shape()));
  const float* pa = a.data<float>();
  const float* pb = b.data<float>();
  float* po = out.data<float>();
  for (int64_t i = 0, n = a.numel(); i < n; ++i) po[i] = pa[i] + pb[i];
}

void add_accumulate(Tensor& dst, const Tensor& src) {
  TTQ_CPU_ONLY("add_accumulate", &dst, &src);
  expect("add_accumulate", src, dst.numel(), "source");
  float* d = dst.data<float>();
  const float* s = src.data<float>();
  for (int64_t i = 0, n = dst.numel(); i < n; ++i) d[i] += s[i];
}

void clamp_min_inplace(Tensor& t, float lo) {
  TTQ_CPU_ONLY("clamp_min_inplace", &t);
  float* p = t.data<float>();
  for (int64_t i = 0, n = t.numel(); i < n; ++i) p[i] = std::max(p[i], lo);
}

void ttq_forward(math::ThresholdMode mode, float t, double r, const Tensor& latent, const Tensor& wp, const Tensor& wn,
                 Tensor& threshold, Tensor& twn_scale, Tensor& w_t, Tensor& codes) {
  TTQ_CPU_ONLY("ttq_forward", &latent, &wp, &wn, &threshold, &twn_scale, &w_t, &codes);
  const int64_t n = latent.numel();
  expect("ttq_forward", w_t, n, "quantized weights");
  expect("ttq_forward", codes, n, "codes");
  const cpu::ThresholdResult th = cpu::ttq_threshold(mode, latent.data<float>(), n, t, r);
  threshold.data<float>()[0] = th.threshold;
  twn_scale.data<float>()[0] = th.twn_scale;
  const bool twn = mode == math::ThresholdMode::Twn;
  cpu::ttq_ternarize(latent.data<float>(), n, th.threshold, twn ? th.twn_scale : wp.data<float>()[0],
                     twn ? th.twn_scale : wn.data<float>()[0], w_t.data<float>(), codes.data<int8_t>());
}

void ttq_backward_accumulate(const Tensor& codes, const Tensor& g, const Tensor& wp, const Tensor& wn,
                             bool scale_latent, Tensor& latent_grad, Tensor& dwp, Tensor& dwn) {
  TTQ_CPU_ONLY("ttq_backward_accumulate", &codes, &g, &wp, &wn, &latent_grad, &dwp, &dwn);
  const int64_t n = codes.numel();
  expect("ttq_backward_accumulate", g, n, "gradient");
  expect("ttq_backward_accumulate", latent_grad, n, "latent gradient");
  const cpu::ScaleGrads sums = cpu::ttq_backward(codes.data<int8_t>(), g.data<float>(), n, wp.data<float>()[0],
                                                 wn.data<float>()[0], scale_latent, latent_grad.data<float>());
  if (scale_latent) {
    dwp.data<float>()[0] += static_cast<float>(sums.wp);
    dwn.data<float>()[0] += static_cast<float>(sums.wn);
  }
}

void sgd_update(Tensor& p, const Tensor& g, Tensor* momentum_buf, float lr, float momentum, float wd, bool nesterov,
                bool first_step) {
  TTQ_CPU_ONLY("sgd_update", &p, &g, momentum_buf);
  expect("sgd_update", g, p.numel(), "gradient");
  float* w = p.data<float>();
  const float* gr = g.data<float>();
  float* buf = mptr(momentum_buf);
  float unused = 0.0f;
  for (int64_t i = 0, n = p.numel(); i < n; ++i)
    math::sgd_update(w[i], gr[i], buf ? buf[i] : unused, lr, momentum, wd, nesterov, first_step);
}

void adam_update(Tensor& p, const Tensor& g, Tensor& m, Tensor& v, float lr, float beta1, float beta2, float eps,
                 float wd, float bc1, float bc2) {
  TTQ_CPU_ONLY("adam_update", &p, &g, &m, &v);
  expect("adam_update", g, p.numel(), "gradient");
  float* w = p.data<float>();
  const float* gr = g.data<float>();
  float* pm = m.data<float>();
  float* pv = v.data<float>();
  for (int64_t i = 0, n = p.numel(); i < n; ++i)
    math::adam_update(w[i], gr[i], pm[i], pv[i], lr, beta1, beta2, eps, wd, bc1, bc2);
}

}  // namespace ttq::ops
