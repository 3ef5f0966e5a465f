#include "kernels/ops.h"

#include <algorithm>
#include <initializer_list>

#include "kernels/act_math.h"
#include "kernels/cpu/ops.h"
#include "kernels/cpu/ops_ref.h"
#include "kernels/cpu/ttq_cpu.h"
#include "kernels/optim_math.h"
#ifdef TTQ_HAVE_CUDA
#include "kernels/cuda/ops_cuda.h"
#endif

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

#ifdef TTQ_HAVE_CUDA
// Runs the CUDA call for CUDA tensors and the CPU call otherwise.
#define TTQ_DISPATCH(dev, cpu_call, cuda_call) \
  do {                                         \
    if ((dev) == Device::CUDA) {               \
      cuda_call;                               \
    } else {                                   \
      cpu_call;                                \
    }                                          \
  } while (0)
#else
#define TTQ_DISPATCH(dev, cpu_call, cuda_call)                                       \
  do {                                                                               \
    TTQ_CHECK((dev) == Device::CPU, "CUDA tensors in a build without the CUDA backend"); \
    cpu_call;                                                                        \
  } while (0)
#endif

const float* cptr(const Tensor* t) { return t ? t->data_ptr<float>() : nullptr; }
float* mptr(Tensor* t) { return t ? t->data_ptr<float>() : nullptr; }

// ---- bf16 ------------------------------------------------------------------------------------
// The activation dtype of an op: the listed tensors (nulls skipped) are all f32 or all bf16.
DType act_dtype(const char* op, std::initializer_list<const Tensor*> ts) {
  DType dt = DType::F32;
  bool first = true;
  for (const Tensor* t : ts) {
    if (!t) continue;
    TTQ_CHECK(t->dtype() == DType::F32 || t->dtype() == DType::BF16,
              op << ": expects f32 or bf16 tensors, got " << t->str());
    if (first) {
      dt = t->dtype();
      first = false;
    }
    TTQ_CHECK(t->dtype() == dt, op << ": mixes " << dtype_name(dt) << " and " << t->str()
                                   << " (activations, the weights computed with and their gradients share one dtype)");
  }
  return dt;
}

// Tensors that stay f32 whatever the precision (biases, BatchNorm parameters and statistics).
void expect_f32(const char* op, std::initializer_list<const Tensor*> ts) {
  for (const Tensor* t : ts)
    if (t) TTQ_CHECK(t->dtype() == DType::F32, op << ": expects an f32 tensor, got " << t->str());
}

void bf16_to_f32_cpu(int64_t n, const bf16* src, float* dst) {
  for (int64_t i = 0; i < n; ++i) dst[i] = to_float(src[i]);
}
void f32_to_bf16_cpu(int64_t n, const float* src, bf16* dst) {
  for (int64_t i = 0; i < n; ++i) dst[i] = to_bf16(src[i]);
}

// CPU emulation of a bf16 op: the f32 op runs on widened inputs into f32 outputs, which are then
// rounded into the bf16 ones.
Tensor widen(const Tensor& t) {
  if (t.dtype() == DType::F32) return t;
  Tensor f = Tensor::empty(t.shape(), DType::F32, Device::CPU, t.layout());
  bf16_to_f32_cpu(t.numel(), t.data<bf16>(), f.data<float>());
  return f;
}
Tensor f32_like(const Tensor& t) { return Tensor::empty(t.shape(), DType::F32, Device::CPU, t.layout()); }
void narrow_into(const Tensor& f, Tensor& dst) {
  if (dst.dtype() == DType::F32) return;  // the op wrote dst itself
  f32_to_bf16_cpu(dst.numel(), f.data<float>(), dst.data<bf16>());
}

#ifdef TTQ_HAVE_CUDA
#define TTQ_CUDA_CALL(call) call
#else
#define TTQ_CUDA_CALL(call) TTQ_FAIL("CUDA tensors in a build without the CUDA backend")
#endif

// The bf16 branch of an op: on the CPU, `emulate` (the f32 op on widened tensors); on the GPU,
// the bf16 CUDA kernel.
#define TTQ_BF16_DISPATCH(dev, emulate, cuda_call) \
  do {                                             \
    if ((dev) == Device::CPU) {                    \
      emulate;                                     \
    } else {                                       \
      TTQ_CUDA_CALL(cuda_call);                    \
    }                                              \
  } while (0)

const bf16* cbptr(const Tensor& t) { return t.data_ptr<bf16>(); }
bf16* mbptr(const Tensor& t) { return t.data_ptr<bf16>(); }

// ---- channels-last -------------------------------------------------------------------------
// The layout of an op's activations: the listed tensors (nulls skipped) share one.
Layout act_layout(const char* op, std::initializer_list<const Tensor*> ts) {
  Layout l = Layout::Contiguous;
  bool first = true;
  for (const Tensor* t : ts) {
    if (!t) continue;
    if (first) {
      l = t->layout();
      first = false;
    }
    TTQ_CHECK(t->layout() == l, op << ": mixes " << layout_name(l) << " and " << t->str()
                                   << " (an op's activations and their gradients share one layout)");
  }
  return l;
}

// Weights are OIHW whatever the activations' layout.
void expect_contiguous(const char* op, const Tensor& t, const char* what) {
  TTQ_CHECK(t.layout() == Layout::Contiguous, op << ": " << what << " must be contiguous, got " << t.str());
}

// Channels-last ops that a device has no kernel for run on contiguous copies: the activation
// inputs are permuted to NCHW, the op runs, and its outputs are permuted back. On the CPU this is
// every channels-last op (the reference: bitwise the contiguous op's result); on the GPU, the
// geometries the NHWC kernels do not take.
Tensor contig(const Tensor& t) { return to_layout(t, Layout::Contiguous); }
Tensor contig_like(const Tensor& t) { return Tensor::empty(t.shape(), t.dtype(), t.device()); }

// cuDNN runs a channels-last convolution natively when the padding is symmetric (the explicit
// padding helpers are NCHW) and there is no bias (cuDNN's bias broadcasting is not used on NHWC).
bool native_channels_last_conv(Device dev, const Conv2dShape& s, bool has_bias) {
  return dev == Device::CUDA && !has_bias && s.pad_t == s.pad_b && s.pad_l == s.pad_r;
}

}  // namespace

// ---- layouts ---------------------------------------------------------------------------------
namespace {
template <class T>
void permute_cpu(int64_t n, int64_t c, int64_t hw, bool to_channels_last, const T* src, T* dst) {
#pragma omp parallel for schedule(static)
  for (int64_t b = 0; b < n; ++b) {
    const T* s = src + b * c * hw;
    T* d = dst + b * c * hw;
    if (to_channels_last) {
      for (int64_t ch = 0; ch < c; ++ch)
        for (int64_t i = 0; i < hw; ++i) d[i * c + ch] = s[ch * hw + i];
    } else {
      for (int64_t ch = 0; ch < c; ++ch)
        for (int64_t i = 0; i < hw; ++i) d[ch * hw + i] = s[i * c + ch];
    }
  }
}
}  // namespace

void to_layout(const Tensor& src, Tensor& dst) {
  const Device dev = common_device("to_layout", {&src, &dst});
  TTQ_CHECK(src.shape() == dst.shape() && src.dtype() == dst.dtype(),
            "to_layout: " << src.str() << " into " << dst.str() << " (shape and dtype must agree)");
  if (src.layout() == dst.layout()) {
    if (src.raw() != dst.raw()) dst.copy_from(src);
    return;
  }
  TTQ_CHECK(src.raw() != dst.raw(), "to_layout: " << src.str() << " into itself");
  const int64_t n = src.dim(0), c = src.dim(1), hw = src.dim(2) * src.dim(3);
  const bool to_cl = dst.channels_last();
  if (dev == Device::CPU) {
    switch (dtype_size(src.dtype())) {
      case 2:
        permute_cpu(n, c, hw, to_cl, static_cast<const uint16_t*>(src.raw()), static_cast<uint16_t*>(dst.raw()));
        break;
      case 4:
        permute_cpu(n, c, hw, to_cl, static_cast<const uint32_t*>(src.raw()), static_cast<uint32_t*>(dst.raw()));
        break;
      default: TTQ_FAIL("to_layout: " << src.str() << " (2- or 4-byte elements only)");
    }
    return;
  }
  TTQ_CUDA_CALL(cuda::permute_layout(n, c, hw, to_cl, dtype_size(src.dtype()), src.raw(), dst.raw()));
}

Tensor to_layout(const Tensor& src, Layout layout) {
  if (src.layout() == layout) return src;
  Tensor dst = Tensor::empty(src.shape(), src.dtype(), src.device(), layout);
  to_layout(src, dst);
  return dst;
}

Tensor to_compute_format(const Tensor& x, ComputeFormat f) {
  const Tensor c = cast_to(x, f.dtype);
  return c.ndim() == 4 ? to_layout(c, f.layout) : c;
}

void conv2d_forward(const Conv2dShape& shape, const Tensor& x, const Tensor& w, const Tensor* bias, Tensor& y) {
  const Device dev = common_device("conv2d_forward", {&x, &w, bias, &y});
  Conv2dShape s = shape;
  expect("conv2d_forward", x, s.in_numel(), "input");
  expect("conv2d_forward", w, s.weight_numel(), "weight");
  expect("conv2d_forward", y, s.out_numel(), "output");
  expect_f32("conv2d_forward", {bias});
  expect_contiguous("conv2d_forward", w, "weight");
  s.channels_last = act_layout("conv2d_forward", {&x, &y}) == Layout::ChannelsLast;
  if (s.channels_last && !native_channels_last_conv(dev, s, bias != nullptr)) {
    Tensor yc = contig_like(y);
    conv2d_forward(shape, contig(x), w, bias, yc);
    to_layout(yc, y);
    return;
  }
  if (act_dtype("conv2d_forward", {&x, &w, &y}) == DType::BF16) {
    TTQ_BF16_DISPATCH(dev, Tensor yf = f32_like(y); conv2d_forward(s, widen(x), widen(w), bias, yf); narrow_into(yf, y),
                      cuda::conv2d_forward(s, cbptr(x), cbptr(w), cptr(bias), mbptr(y)));
    return;
  }
  TTQ_DISPATCH(dev, cpu::conv2d_forward(s, x.data_ptr<float>(), w.data_ptr<float>(), cptr(bias), y.data_ptr<float>()),
               cuda::conv2d_forward(s, x.data_ptr<float>(), w.data_ptr<float>(), cptr(bias), y.data_ptr<float>()));
}

void conv2d_backward_data(const Conv2dShape& shape, const Tensor& dy, const Tensor& w, Tensor& dx) {
  const Device dev = common_device("conv2d_backward_data", {&dy, &w, &dx});
  Conv2dShape s = shape;
  expect("conv2d_backward_data", dy, s.out_numel(), "output gradient");
  expect("conv2d_backward_data", dx, s.in_numel(), "input gradient");
  expect("conv2d_backward_data", w, s.weight_numel(), "weight");
  expect_contiguous("conv2d_backward_data", w, "weight");
  s.channels_last = act_layout("conv2d_backward_data", {&dy, &dx}) == Layout::ChannelsLast;
  if (s.channels_last && !native_channels_last_conv(dev, s, false)) {
    Tensor dxc = contig_like(dx);
    conv2d_backward_data(shape, contig(dy), w, dxc);
    to_layout(dxc, dx);
    return;
  }
  if (act_dtype("conv2d_backward_data", {&dy, &w, &dx}) == DType::BF16) {
    TTQ_BF16_DISPATCH(dev, Tensor dxf = f32_like(dx); conv2d_backward_data(s, widen(dy), widen(w), dxf); narrow_into(dxf, dx),
                      cuda::conv2d_backward_data(s, cbptr(dy), cbptr(w), mbptr(dx)));
    return;
  }
  TTQ_DISPATCH(dev, cpu::conv2d_backward_data(s, dy.data_ptr<float>(), w.data_ptr<float>(), dx.data_ptr<float>()),
               cuda::conv2d_backward_data(s, dy.data_ptr<float>(), w.data_ptr<float>(), dx.data_ptr<float>()));
}

void conv2d_backward_weights(const Conv2dShape& shape, const Tensor& x, const Tensor& dy, Tensor& dw,
                             Tensor* dbias) {
  const Device dev = common_device("conv2d_backward_weights", {&x, &dy, &dw, dbias});
  Conv2dShape s = shape;
  expect("conv2d_backward_weights", dw, s.weight_numel(), "weight gradient");
  expect("conv2d_backward_weights", x, s.in_numel(), "input");
  expect("conv2d_backward_weights", dy, s.out_numel(), "output gradient");
  expect_f32("conv2d_backward_weights", {dbias});
  expect_contiguous("conv2d_backward_weights", dw, "weight gradient");
  s.channels_last = act_layout("conv2d_backward_weights", {&x, &dy}) == Layout::ChannelsLast;
  if (s.channels_last && !native_channels_last_conv(dev, s, dbias != nullptr)) {
    conv2d_backward_weights(shape, contig(x), contig(dy), dw, dbias);
    return;
  }
  if (act_dtype("conv2d_backward_weights", {&x, &dy, &dw}) == DType::BF16) {
    TTQ_BF16_DISPATCH(dev, Tensor dwf = f32_like(dw);
                      conv2d_backward_weights(s, widen(x), widen(dy), dwf, dbias); narrow_into(dwf, dw),
                      cuda::conv2d_backward_weights(s, cbptr(x), cbptr(dy), mbptr(dw), mptr(dbias)));
    return;
  }
  TTQ_DISPATCH(dev, cpu::conv2d_backward_weights(s, x.data_ptr<float>(), dy.data_ptr<float>(), dw.data_ptr<float>(), mptr(dbias)),
               cuda::conv2d_backward_weights(s, x.data_ptr<float>(), dy.data_ptr<float>(), dw.data_ptr<float>(), mptr(dbias)));
}

void pool2d_forward(PoolKind kind, const Pool2dShape& s, const Tensor& x, Tensor& y) {
  const Device dev = common_device("pool2d_forward", {&x, &y});
  expect("pool2d_forward", y, s.out_numel(), "output");
  expect("pool2d_forward", x, s.in_numel(), "input");
  if (act_layout("pool2d_forward", {&x, &y}) == Layout::ChannelsLast) {  // no NHWC pooling kernels
    Tensor yc = contig_like(y);
    pool2d_forward(kind, s, contig(x), yc);
    to_layout(yc, y);
    return;
  }
  if (act_dtype("pool2d_forward", {&x, &y}) == DType::BF16) {
    TTQ_BF16_DISPATCH(dev, Tensor yf = f32_like(y); pool2d_forward(kind, s, widen(x), yf); narrow_into(yf, y),
                      cuda::pool2d_forward(kind, s, cbptr(x), mbptr(y)));
    return;
  }
  TTQ_DISPATCH(dev, cpu::pool2d_forward(kind, s, x.data_ptr<float>(), y.data_ptr<float>()),
               cuda::pool2d_forward(kind, s, x.data_ptr<float>(), y.data_ptr<float>()));
}

void pool2d_backward(PoolKind kind, const Pool2dShape& s, const Tensor& x, const Tensor& dy, Tensor& dx) {
  const Device dev = common_device("pool2d_backward", {&x, &dy, &dx});
  expect("pool2d_backward", dx, s.in_numel(), "input gradient");
  expect("pool2d_backward", x, s.in_numel(), "input");
  expect("pool2d_backward", dy, s.out_numel(), "output gradient");
  if (act_layout("pool2d_backward", {&x, &dy, &dx}) == Layout::ChannelsLast) {
    Tensor dxc = contig_like(dx);
    pool2d_backward(kind, s, contig(x), contig(dy), dxc);
    to_layout(dxc, dx);
    return;
  }
  if (act_dtype("pool2d_backward", {&x, &dy, &dx}) == DType::BF16) {
    TTQ_BF16_DISPATCH(dev, Tensor dxf = f32_like(dx); pool2d_backward(kind, s, widen(x), widen(dy), dxf);
                      narrow_into(dxf, dx),
                      cuda::pool2d_backward(kind, s, cbptr(x), cbptr(dy), mbptr(dx)));
    return;
  }
  TTQ_DISPATCH(dev, cpu::pool2d_backward(kind, s, x.data_ptr<float>(), dy.data_ptr<float>(), dx.data_ptr<float>()),
               cuda::pool2d_backward(kind, s, x.data_ptr<float>(), dy.data_ptr<float>(), dx.data_ptr<float>()));
}

namespace {
void update_running_stats_cpu(const BatchNormShape& s, float momentum, const Tensor& mean, const Tensor& var,
                              Tensor& running_mean, Tensor& running_var) {
  const double m = static_cast<double>(s.n * s.s);
  const float unbias = static_cast<float>(m / (m - 1.0));
  float* rm = running_mean.data<float>();
  float* rv = running_var.data<float>();
  for (int64_t c = 0; c < s.c; ++c) {
    rm[c] = (1.0f - momentum) * rm[c] + momentum * mean.data<float>()[c];
    rv[c] = (1.0f - momentum) * rv[c] + momentum * var.data<float>()[c] * unbias;
  }
}
}  // namespace

void batchnorm_forward_train(const BatchNormShape& shape, const Tensor& x, const Tensor& gamma, const Tensor& beta,
                             float eps, float momentum, Tensor& running_mean, Tensor& running_var, Tensor& y,
                             Tensor& mean, Tensor& var, Tensor& inv_std) {
  const Device dev = common_device("batchnorm_forward_train",
                                   {&x, &gamma, &beta, &running_mean, &running_var, &y, &mean, &var, &inv_std});
  // As PyTorch: one value per channel has no batch variance to normalise by (nor an unbiased one).
  TTQ_CHECK(shape.c == 0 || shape.n * shape.s != 1,
            "batchnorm_forward_train: training needs more than one value per channel, got input "
                << shape.n << "x" << shape.c << "x" << shape.s << " (N x C x H*W)");
  BatchNormShape s = shape;
  s.channels_last = act_layout("batchnorm_forward_train", {&x, &y}) == Layout::ChannelsLast;
  if (s.channels_last && dev == Device::CPU) {
    Tensor yc = contig_like(y);
    batchnorm_forward_train(shape, contig(x), gamma, beta, eps, momentum, running_mean, running_var, yc, mean, var,
                            inv_std);
    to_layout(yc, y);
    return;
  }
  expect("batchnorm_forward_train", x, s.numel(), "input");
  expect_f32("batchnorm_forward_train", {&gamma, &beta, &running_mean, &running_var, &mean, &var, &inv_std});
  if (act_dtype("batchnorm_forward_train", {&x, &y}) == DType::BF16) {
    TTQ_BF16_DISPATCH(dev, Tensor yf = f32_like(y);
                      batchnorm_forward_train(s, widen(x), gamma, beta, eps, momentum, running_mean, running_var, yf,
                                              mean, var, inv_std);
                      narrow_into(yf, y),
                      cuda::batchnorm_forward_train(s, cbptr(x), gamma.data_ptr<float>(), beta.data_ptr<float>(), eps, momentum,
                                                    running_mean.data_ptr<float>(), running_var.data_ptr<float>(), mbptr(y),
                                                    mean.data_ptr<float>(), var.data_ptr<float>(), inv_std.data_ptr<float>()));
    return;
  }
  TTQ_DISPATCH(dev,
               cpu::batchnorm_forward_train(s, x.data_ptr<float>(), gamma.data_ptr<float>(), beta.data_ptr<float>(), eps,
                                            y.data_ptr<float>(), mean.data_ptr<float>(), var.data_ptr<float>(),
                                            inv_std.data_ptr<float>());
               update_running_stats_cpu(s, momentum, mean, var, running_mean, running_var),
               cuda::batchnorm_forward_train(s, x.data_ptr<float>(), gamma.data_ptr<float>(), beta.data_ptr<float>(), eps,
                                             momentum, running_mean.data_ptr<float>(), running_var.data_ptr<float>(),
                                             y.data_ptr<float>(), mean.data_ptr<float>(), var.data_ptr<float>(),
                                             inv_std.data_ptr<float>()));
}

void batchnorm_forward_infer(const BatchNormShape& shape, const Tensor& x, const Tensor& gamma, const Tensor& beta,
                             const Tensor& running_mean, const Tensor& running_var, float eps, Tensor& y) {
  const Device dev = common_device("batchnorm_forward_infer", {&x, &gamma, &beta, &running_mean, &running_var, &y});
  BatchNormShape s = shape;
  s.channels_last = act_layout("batchnorm_forward_infer", {&x, &y}) == Layout::ChannelsLast;
  if (s.channels_last && dev == Device::CPU) {
    Tensor yc = contig_like(y);
    batchnorm_forward_infer(shape, contig(x), gamma, beta, running_mean, running_var, eps, yc);
    to_layout(yc, y);
    return;
  }
  expect("batchnorm_forward_infer", x, s.numel(), "input");
  expect_f32("batchnorm_forward_infer", {&gamma, &beta, &running_mean, &running_var});
  if (act_dtype("batchnorm_forward_infer", {&x, &y}) == DType::BF16) {
    TTQ_BF16_DISPATCH(dev, Tensor yf = f32_like(y);
                      batchnorm_forward_infer(s, widen(x), gamma, beta, running_mean, running_var, eps, yf);
                      narrow_into(yf, y),
                      cuda::batchnorm_forward_infer(s, cbptr(x), gamma.data_ptr<float>(), beta.data_ptr<float>(),
                                                    running_mean.data_ptr<float>(), running_var.data_ptr<float>(), eps,
                                                    mbptr(y)));
    return;
  }
  TTQ_DISPATCH(dev,
               cpu::batchnorm_forward_infer(s, x.data_ptr<float>(), gamma.data_ptr<float>(), beta.data_ptr<float>(),
                                            running_mean.data_ptr<float>(), running_var.data_ptr<float>(), eps,
                                            y.data_ptr<float>()),
               cuda::batchnorm_forward_infer(s, x.data_ptr<float>(), gamma.data_ptr<float>(), beta.data_ptr<float>(),
                                             running_mean.data_ptr<float>(), running_var.data_ptr<float>(), eps,
                                             y.data_ptr<float>()));
}

void batchnorm_backward(const BatchNormShape& shape, const Tensor& x, const Tensor& dy, const Tensor& gamma,
                        const Tensor& mean, const Tensor& inv_std, float eps, Tensor& dx, Tensor& dgamma,
                        Tensor& dbeta) {
  const Device dev = common_device("batchnorm_backward", {&x, &dy, &gamma, &mean, &inv_std, &dx, &dgamma, &dbeta});
  BatchNormShape s = shape;
  s.channels_last = act_layout("batchnorm_backward", {&x, &dy, &dx}) == Layout::ChannelsLast;
  if (s.channels_last && dev == Device::CPU) {
    Tensor dxc = contig_like(dx);
    batchnorm_backward(shape, contig(x), contig(dy), gamma, mean, inv_std, eps, dxc, dgamma, dbeta);
    to_layout(dxc, dx);
    return;
  }
  (void)eps;  // cuDNN takes it with the saved statistics; the CPU kernels use inv_std
  expect("batchnorm_backward", dy, s.numel(), "output gradient");
  expect_f32("batchnorm_backward", {&gamma, &mean, &inv_std, &dgamma, &dbeta});
  if (act_dtype("batchnorm_backward", {&x, &dy, &dx}) == DType::BF16) {
    TTQ_BF16_DISPATCH(dev, Tensor dxf = f32_like(dx);
                      batchnorm_backward(s, widen(x), widen(dy), gamma, mean, inv_std, eps, dxf, dgamma, dbeta);
                      narrow_into(dxf, dx),
                      cuda::batchnorm_backward(s, cbptr(x), cbptr(dy), gamma.data_ptr<float>(), mean.data_ptr<float>(),
                                               inv_std.data_ptr<float>(), eps, mbptr(dx), dgamma.data_ptr<float>(),
                                               dbeta.data_ptr<float>()));
    return;
  }
  TTQ_DISPATCH(dev,
               cpu::batchnorm_backward(s, x.data_ptr<float>(), dy.data_ptr<float>(), gamma.data_ptr<float>(), mean.data_ptr<float>(),
                                       inv_std.data_ptr<float>(), dx.data_ptr<float>(), dgamma.data_ptr<float>(),
                                       dbeta.data_ptr<float>()),
               cuda::batchnorm_backward(s, x.data_ptr<float>(), dy.data_ptr<float>(), gamma.data_ptr<float>(), mean.data_ptr<float>(),
                                        inv_std.data_ptr<float>(), eps, dx.data_ptr<float>(), dgamma.data_ptr<float>(),
                                        dbeta.data_ptr<float>()));
}

// ---- synchronised batch norm pieces ------------------------------------------------------------
namespace {

// The loops of synchronised batch norm on the CPU: one channel per OpenMP iteration, its values
// in order (n, then i), so the sums are deterministic whatever the thread count.
void bn_channel_sums_cpu(const BatchNormShape& s, const float* x, const double* mean, double* sums) {
  const int64_t C = s.c;
  if (mean) {
#pragma omp parallel for schedule(static)
    for (int64_t c = 0; c < C; ++c) {
      double a = 0.0;
      const double m = mean[c];
      for (int64_t n = 0; n < s.n; ++n) {
        const float* p = x + (n * C + c) * s.s;
        for (int64_t i = 0; i < s.s; ++i) a += (p[i] - m) * (p[i] - m);
      }
      sums[c] = a;
    }
    return;
  }
#pragma omp parallel for schedule(static)
  for (int64_t c = 0; c < C; ++c) {
    double a = 0.0;
    for (int64_t n = 0; n < s.n; ++n) {
      const float* p = x + (n * C + c) * s.s;
      for (int64_t i = 0; i < s.s; ++i) a += p[i];
    }
    sums[c] = a;
  }
}

void bn_backward_sums_cpu(const BatchNormShape& s, const float* x, const float* dy, const float* mean,
                          const float* inv_std, double* sums) {
  const int64_t C = s.c;
#pragma omp parallel for schedule(static)
  for (int64_t c = 0; c < C; ++c) {
    double sdy = 0.0, sdyx = 0.0;
    for (int64_t n = 0; n < s.n; ++n) {
      const float* p = x + (n * C + c) * s.s;
      const float* d = dy + (n * C + c) * s.s;
      for (int64_t i = 0; i < s.s; ++i) {
        const double xhat = (p[i] - mean[c]) * static_cast<double>(inv_std[c]);
        sdy += d[i];
        sdyx += d[i] * xhat;
      }
    }
    sums[c] = sdy;
    sums[C + c] = sdyx;
  }
}

void bn_normalize_cpu(const BatchNormShape& s, const float* x, const double* mean, const double* inv_std,
                      const float* gamma, const float* beta, float* y) {
  const int64_t C = s.c;
#pragma omp parallel for schedule(static)
  for (int64_t c = 0; c < C; ++c) {
    const double m = mean[c], is = inv_std[c];
    for (int64_t n = 0; n < s.n; ++n) {
      const float* p = x + (n * C + c) * s.s;
      float* q = y + (n * C + c) * s.s;
      for (int64_t i = 0; i < s.s; ++i) q[i] = static_cast<float>((p[i] - m) * is * gamma[c] + beta[c]);
    }
  }
}

void bn_backward_dx_cpu(const BatchNormShape& s, const float* x, const float* dy, const float* mean,
                        const float* inv_std, const float* gamma, const double* sums, double count, float* dx) {
  const int64_t C = s.c;
#pragma omp parallel for schedule(static)
  for (int64_t c = 0; c < C; ++c) {
    const double k = gamma[c] * static_cast<double>(inv_std[c]) / count;
    const double sdy = sums[c], sdyx = sums[C + c];
    for (int64_t n = 0; n < s.n; ++n) {
      const float* p = x + (n * C + c) * s.s;
      const float* d = dy + (n * C + c) * s.s;
      float* q = dx + (n * C + c) * s.s;
      for (int64_t i = 0; i < s.s; ++i) {
        const double xhat = (p[i] - mean[c]) * static_cast<double>(inv_std[c]);
        q[i] = static_cast<float>(k * (count * d[i] - sdy - xhat * sdyx));
      }
    }
  }
}

// f64 tensors (the sums and the double statistics of synchronised batch norm) of n elements.
void expect_f64(const char* op, const Tensor& t, int64_t n, const char* what) {
  TTQ_CHECK(t.dtype() == DType::F64, op << ": " << what << " must be f64, got " << t.str());
  expect(op, t, n, what);
}

const double* cdptr(const Tensor* t) { return t ? t->data_ptr<double>() : nullptr; }

}  // namespace

void bn_channel_sums(const BatchNormShape& shape, const Tensor& x, const Tensor* mean, Tensor& sums) {
  const char* op = "bn_channel_sums";
  const Device dev = common_device(op, {&x, mean, &sums});
  BatchNormShape s = shape;
  s.channels_last = x.channels_last();
  if (s.channels_last && dev == Device::CPU) return bn_channel_sums(shape, contig(x), mean, sums);
  expect(op, x, s.numel(), "input");
  if (mean) expect_f64(op, *mean, s.c, "mean");
  expect_f64(op, sums, s.c, "sums");
  if (act_dtype(op, {&x}) == DType::BF16) {
    TTQ_BF16_DISPATCH(dev, bn_channel_sums(s, widen(x), mean, sums),
                      cuda::bn_channel_sums(s, cbptr(x), cdptr(mean), sums.data_ptr<double>()));
    return;
  }
  TTQ_DISPATCH(dev, bn_channel_sums_cpu(s, x.data_ptr<float>(), cdptr(mean), sums.data_ptr<double>()),
               cuda::bn_channel_sums(s, x.data_ptr<float>(), cdptr(mean), sums.data_ptr<double>()));
}

void bn_backward_sums(const BatchNormShape& shape, const Tensor& x, const Tensor& dy, const Tensor& mean,
                      const Tensor& inv_std, Tensor& sums) {
  const char* op = "bn_backward_sums";
  const Device dev = common_device(op, {&x, &dy, &mean, &inv_std, &sums});
  BatchNormShape s = shape;
  s.channels_last = act_layout(op, {&x, &dy}) == Layout::ChannelsLast;
  if (s.channels_last && dev == Device::CPU) return bn_backward_sums(shape, contig(x), contig(dy), mean, inv_std, sums);
  expect(op, x, s.numel(), "input");
  expect(op, dy, s.numel(), "output gradient");
  expect_f32(op, {&mean, &inv_std});
  expect(op, mean, s.c, "mean");
  expect(op, inv_std, s.c, "inverse standard deviation");
  expect_f64(op, sums, 2 * s.c, "sums");
  if (act_dtype(op, {&x, &dy}) == DType::BF16) {
    TTQ_BF16_DISPATCH(dev, bn_backward_sums(s, widen(x), widen(dy), mean, inv_std, sums),
                      cuda::bn_backward_sums(s, cbptr(x), cbptr(dy), mean.data_ptr<float>(), inv_std.data_ptr<float>(),
                                             sums.data_ptr<double>()));
    return;
  }
  TTQ_DISPATCH(dev,
               bn_backward_sums_cpu(s, x.data_ptr<float>(), dy.data_ptr<float>(), mean.data_ptr<float>(), inv_std.data_ptr<float>(),
                                    sums.data_ptr<double>()),
               cuda::bn_backward_sums(s, x.data_ptr<float>(), dy.data_ptr<float>(), mean.data_ptr<float>(),
                                      inv_std.data_ptr<float>(), sums.data_ptr<double>()));
}

void bn_normalize(const BatchNormShape& shape, const Tensor& x, const Tensor& mean, const Tensor& inv_std,
                  const Tensor& gamma, const Tensor& beta, Tensor& y) {
  const char* op = "bn_normalize";
  const Device dev = common_device(op, {&x, &mean, &inv_std, &gamma, &beta, &y});
  BatchNormShape s = shape;
  s.channels_last = act_layout(op, {&x, &y}) == Layout::ChannelsLast;
  if (s.channels_last && dev == Device::CPU) {
    Tensor yc = contig_like(y);
    bn_normalize(shape, contig(x), mean, inv_std, gamma, beta, yc);
    to_layout(yc, y);
    return;
  }
  expect(op, x, s.numel(), "input");
  expect(op, y, s.numel(), "output");
  expect_f64(op, mean, s.c, "mean");
  expect_f64(op, inv_std, s.c, "inverse standard deviation");
  expect_f32(op, {&gamma, &beta});
  expect(op, gamma, s.c, "gamma");
  expect(op, beta, s.c, "beta");
  if (act_dtype(op, {&x, &y}) == DType::BF16) {
    TTQ_BF16_DISPATCH(dev, Tensor yf = f32_like(y); bn_normalize(s, widen(x), mean, inv_std, gamma, beta, yf);
                      narrow_into(yf, y),
                      cuda::bn_normalize(s, cbptr(x), mean.data_ptr<double>(), inv_std.data_ptr<double>(),
                                         gamma.data_ptr<float>(), beta.data_ptr<float>(), mbptr(y)));
    return;
  }
  TTQ_DISPATCH(dev,
               bn_normalize_cpu(s, x.data_ptr<float>(), mean.data_ptr<double>(), inv_std.data_ptr<double>(), gamma.data_ptr<float>(),
                                beta.data_ptr<float>(), y.data_ptr<float>()),
               cuda::bn_normalize(s, x.data_ptr<float>(), mean.data_ptr<double>(), inv_std.data_ptr<double>(),
                                  gamma.data_ptr<float>(), beta.data_ptr<float>(), y.data_ptr<float>()));
}

void bn_backward_dx(const BatchNormShape& shape, const Tensor& x, const Tensor& dy, const Tensor& mean,
                    const Tensor& inv_std, const Tensor& gamma, const Tensor& sums, double count, Tensor& dx) {
  const char* op = "bn_backward_dx";
  const Device dev = common_device(op, {&x, &dy, &mean, &inv_std, &gamma, &sums, &dx});
  BatchNormShape s = shape;
  s.channels_last = act_layout(op, {&x, &dy, &dx}) == Layout::ChannelsLast;
  if (s.channels_last && dev == Device::CPU) {
    Tensor dxc = contig_like(dx);
    bn_backward_dx(shape, contig(x), contig(dy), mean, inv_std, gamma, sums, count, dxc);
    to_layout(dxc, dx);
    return;
  }
  expect(op, x, s.numel(), "input");
  expect(op, dy, s.numel(), "output gradient");
  expect(op, dx, s.numel(), "input gradient");
  expect_f32(op, {&mean, &inv_std, &gamma});
  expect(op, mean, s.c, "mean");
  expect(op, inv_std, s.c, "inverse standard deviation");
  expect(op, gamma, s.c, "gamma");
  expect_f64(op, sums, 2 * s.c, "sums");
  TTQ_CHECK(count > 0, op << ": the global count must be positive, got " << count);
  if (act_dtype(op, {&x, &dy, &dx}) == DType::BF16) {
    TTQ_BF16_DISPATCH(dev, Tensor dxf = f32_like(dx);
                      bn_backward_dx(s, widen(x), widen(dy), mean, inv_std, gamma, sums, count, dxf);
                      narrow_into(dxf, dx),
                      cuda::bn_backward_dx(s, cbptr(x), cbptr(dy), mean.data_ptr<float>(), inv_std.data_ptr<float>(),
                                           gamma.data_ptr<float>(), sums.data_ptr<double>(), count, mbptr(dx)));
    return;
  }
  TTQ_DISPATCH(dev,
               bn_backward_dx_cpu(s, x.data_ptr<float>(), dy.data_ptr<float>(), mean.data_ptr<float>(), inv_std.data_ptr<float>(),
                                  gamma.data_ptr<float>(), sums.data_ptr<double>(), count, dx.data_ptr<float>()),
               cuda::bn_backward_dx(s, x.data_ptr<float>(), dy.data_ptr<float>(), mean.data_ptr<float>(), inv_std.data_ptr<float>(),
                                    gamma.data_ptr<float>(), sums.data_ptr<double>(), count, dx.data_ptr<float>()));
}

void linear_forward(const Tensor& x, const Tensor& w, const Tensor* bias, Tensor& y) {
  const Device dev = common_device("linear_forward", {&x, &w, bias, &y});
  const int64_t n = x.dim(0), in = w.dim(1), out = w.dim(0);
  expect("linear_forward", x, n * in, "input");
  expect("linear_forward", y, n * out, "output");
  expect_f32("linear_forward", {bias});
  expect_contiguous("linear_forward", x, "input");  // a channels-last input is flattened first
  if (act_dtype("linear_forward", {&x, &w, &y}) == DType::BF16) {
    TTQ_BF16_DISPATCH(dev, Tensor yf = f32_like(y); linear_forward(widen(x), widen(w), bias, yf); narrow_into(yf, y),
                      cuda::linear_forward(n, in, out, cbptr(x), cbptr(w), cptr(bias), mbptr(y)));
    return;
  }
  TTQ_DISPATCH(dev, cpu::linear_forward(n, in, out, x.data_ptr<float>(), w.data_ptr<float>(), cptr(bias), y.data_ptr<float>()),
               cuda::linear_forward(n, in, out, x.data_ptr<float>(), w.data_ptr<float>(), cptr(bias), y.data_ptr<float>()));
}

void linear_backward(const Tensor& x, const Tensor& w, const Tensor& dy, Tensor* dx, Tensor& dw, Tensor* dbias) {
  const Device dev = common_device("linear_backward", {&x, &w, &dy, dx, &dw, dbias});
  const int64_t n = x.dim(0), in = w.dim(1), out = w.dim(0);
  expect("linear_backward", dy, n * out, "output gradient");
  expect("linear_backward", x, n * in, "input");
  expect("linear_backward", dw, out * in, "weight gradient");
  if (dx) expect("linear_backward", *dx, n * in, "input gradient");
  if (dbias) expect("linear_backward", *dbias, out, "bias gradient");
  expect_f32("linear_backward", {dbias});
  expect_contiguous("linear_backward", x, "input");
  if (dx) expect_contiguous("linear_backward", *dx, "input gradient");
  if (act_dtype("linear_backward", {&x, &w, &dy, dx, &dw}) == DType::BF16) {
    if (dev == Device::CPU) {
      Tensor dxf = dx ? f32_like(*dx) : Tensor(), dwf = f32_like(dw);
      linear_backward(widen(x), widen(w), widen(dy), dx ? &dxf : nullptr, dwf, dbias);
      if (dx) narrow_into(dxf, *dx);
      narrow_into(dwf, dw);
    } else {
      TTQ_CUDA_CALL(cuda::linear_backward(n, in, out, cbptr(x), cbptr(w), cbptr(dy), dx ? mbptr(*dx) : nullptr,
                                          mbptr(dw), mptr(dbias)));
    }
    return;
  }
  TTQ_DISPATCH(dev,
               cpu::linear_backward(n, in, out, x.data_ptr<float>(), w.data_ptr<float>(), dy.data_ptr<float>(), mptr(dx),
                                    dw.data_ptr<float>(), mptr(dbias)),
               cuda::linear_backward(n, in, out, x.data_ptr<float>(), w.data_ptr<float>(), dy.data_ptr<float>(), mptr(dx),
                                     dw.data_ptr<float>(), mptr(dbias)));
}

void global_avgpool_forward(const Tensor& x, Tensor& y) {
  const Device dev = common_device("global_avgpool_forward", {&x, &y});
  if (x.channels_last()) return global_avgpool_forward(contig(x), y);  // y: [N, C]
  expect("global_avgpool_forward", y, x.dim(0) * x.dim(1), "output");
  const int64_t n = x.dim(0), c = x.dim(1), hw = x.dim(2) * x.dim(3);
  if (act_dtype("global_avgpool_forward", {&x, &y}) == DType::BF16) {
    TTQ_BF16_DISPATCH(dev, Tensor yf = f32_like(y); global_avgpool_forward(widen(x), yf); narrow_into(yf, y),
                      cuda::global_avgpool_forward(n, c, hw, cbptr(x), mbptr(y)));
    return;
  }
  TTQ_DISPATCH(dev, ref::global_avgpool_forward(n, c, hw, x.data_ptr<float>(), y.data_ptr<float>()),
               cuda::global_avgpool_forward(n, c, hw, x.data_ptr<float>(), y.data_ptr<float>()));
}

void global_avgpool_backward(const Tensor& dy, Tensor& dx) {
  const Device dev = common_device("global_avgpool_backward", {&dy, &dx});
  if (dx.channels_last()) {
    Tensor dxc = contig_like(dx);
    global_avgpool_backward(dy, dxc);
    to_layout(dxc, dx);
    return;
  }
  expect("global_avgpool_backward", dy, dx.dim(0) * dx.dim(1), "output gradient");
  const int64_t n = dx.dim(0), c = dx.dim(1), hw = dx.dim(2) * dx.dim(3);
  if (act_dtype("global_avgpool_backward", {&dy, &dx}) == DType::BF16) {
    TTQ_BF16_DISPATCH(dev, Tensor dxf = f32_like(dx); global_avgpool_backward(widen(dy), dxf); narrow_into(dxf, dx),
                      cuda::global_avgpool_backward(n, c, hw, cbptr(dy), mbptr(dx)));
    return;
  }
  TTQ_DISPATCH(dev, ref::global_avgpool_backward(n, c, hw, dy.data_ptr<float>(), dx.data_ptr<float>()),
               cuda::global_avgpool_backward(n, c, hw, dy.data_ptr<float>(), dx.data_ptr<float>()));
}

void relu_forward(const Tensor& x, Tensor& y) {
  const Device dev = common_device("relu_forward", {&x, &y});
  expect("relu_forward", y, x.numel(), "output");
  act_layout("relu_forward", {&x, &y});  // elementwise: any layout, the same for all
  if (act_dtype("relu_forward", {&x, &y}) == DType::BF16) {
    TTQ_BF16_DISPATCH(dev, Tensor yf = f32_like(y); relu_forward(widen(x), yf); narrow_into(yf, y),
                      cuda::relu_forward(x.numel(), cbptr(x), mbptr(y)));
    return;
  }
  TTQ_DISPATCH(dev, ref::relu_forward(x.numel(), x.data_ptr<float>(), y.data_ptr<float>()),
               cuda::relu_forward(x.numel(), x.data_ptr<float>(), y.data_ptr<float>()));
}

void relu_backward(const Tensor& y, const Tensor& dy, Tensor& dx) {
  const Device dev = common_device("relu_backward", {&y, &dy, &dx});
  expect("relu_backward", dy, y.numel(), "output gradient");
  expect("relu_backward", dx, y.numel(), "input gradient");
  act_layout("relu_backward", {&y, &dy, &dx});
  if (act_dtype("relu_backward", {&y, &dy, &dx}) == DType::BF16) {
    TTQ_BF16_DISPATCH(dev, Tensor dxf = f32_like(dx); relu_backward(widen(y), widen(dy), dxf); narrow_into(dxf, dx),
                      cuda::relu_backward(y.numel(), cbptr(y), cbptr(dy), mbptr(dx)));
    return;
  }
  TTQ_DISPATCH(dev, ref::relu_backward(y.numel(), y.data_ptr<float>(), dy.data_ptr<float>(), dx.data_ptr<float>()),
               cuda::relu_backward(y.numel(), y.data_ptr<float>(), dy.data_ptr<float>(), dx.data_ptr<float>()));
}

void shortcut_a_forward(int64_t stride, const Tensor& x, Tensor& y) {
  const Device dev = common_device("shortcut_a_forward", {&x, &y});
  if (act_layout("shortcut_a_forward", {&x, &y}) == Layout::ChannelsLast) {
    Tensor yc = contig_like(y);
    shortcut_a_forward(stride, contig(x), yc);
    to_layout(yc, y);
    return;
  }
  const int64_t c_out = y.dim(1), pad = (c_out - x.dim(1)) / 2;
  if (act_dtype("shortcut_a_forward", {&x, &y}) == DType::BF16) {
    TTQ_BF16_DISPATCH(dev, Tensor yf = f32_like(y); shortcut_a_forward(stride, widen(x), yf); narrow_into(yf, y),
                      cuda::shortcut_a_forward(x.dim(0), x.dim(1), x.dim(2), x.dim(3), c_out, pad, stride, cbptr(x),
                                               mbptr(y)));
    return;
  }
  TTQ_DISPATCH(dev,
               ref::shortcut_a_forward(x.dim(0), x.dim(1), x.dim(2), x.dim(3), c_out, pad, stride, x.data_ptr<float>(),
                                       y.data_ptr<float>()),
               cuda::shortcut_a_forward(x.dim(0), x.dim(1), x.dim(2), x.dim(3), c_out, pad, stride, x.data_ptr<float>(),
                                        y.data_ptr<float>()));
}

void shortcut_a_backward(int64_t stride, const Tensor& dy, Tensor& dx) {
  const Device dev = common_device("shortcut_a_backward", {&dy, &dx});
  if (act_layout("shortcut_a_backward", {&dy, &dx}) == Layout::ChannelsLast) {
    Tensor dxc = contig_like(dx);
    shortcut_a_backward(stride, contig(dy), dxc);
    to_layout(dxc, dx);
    return;
  }
  const int64_t c_out = dy.dim(1), pad = (c_out - dx.dim(1)) / 2;
  if (act_dtype("shortcut_a_backward", {&dy, &dx}) == DType::BF16) {
    TTQ_BF16_DISPATCH(dev, Tensor dxf = f32_like(dx); shortcut_a_backward(stride, widen(dy), dxf); narrow_into(dxf, dx),
                      cuda::shortcut_a_backward(dx.dim(0), dx.dim(1), dx.dim(2), dx.dim(3), c_out, pad, stride,
                                                cbptr(dy), mbptr(dx)));
    return;
  }
  TTQ_DISPATCH(dev,
               ref::shortcut_a_backward(dx.dim(0), dx.dim(1), dx.dim(2), dx.dim(3), c_out, pad, stride,
                                        dy.data_ptr<float>(), dx.data_ptr<float>()),
               cuda::shortcut_a_backward(dx.dim(0), dx.dim(1), dx.dim(2), dx.dim(3), c_out, pad, stride,
                                         dy.data_ptr<float>(), dx.data_ptr<float>()));
}

namespace {
// Host labels must index a class: the CPU loops read logits[label]. (On the GPU a label outside
// [0, classes) makes the row's loss NaN, which the finite-loss checks report, without a sync.)
void check_labels(const char* op, const Tensor& labels, int64_t classes) {
  const int32_t* l = labels.data<int32_t>();
  for (int64_t i = 0; i < labels.numel(); ++i)
    TTQ_CHECK(l[i] >= 0 && l[i] < classes,
              op << ": label " << l[i] << " of row " << i << " is outside [0, " << classes << ")");
}

int64_t count_topk_cpu(int64_t n, int64_t c, const float* logits, const int32_t* labels, int k) {
  int64_t correct = 0;
  for (int64_t b = 0; b < n; ++b) {
    const float* z = logits + b * c;
    const float target = z[labels[b]];
    int64_t above = 0;  // classes ranked before the label (math::ranks_before)
    for (int64_t j = 0; j < c; ++j) above += math::ranks_before(z[j], j, target, labels[b]);
    if (above < k) ++correct;
  }
  return correct;
}
}  // namespace

double softmax_xent_forward(const Tensor& logits, const Tensor& labels, float label_smoothing, Tensor& probs) {
  const Device dev = common_device("softmax_xent_forward", {&logits, &labels, &probs});
  const int64_t n = logits.dim(0), c = logits.dim(1);
  expect("softmax_xent_forward", labels, n, "labels");
  expect("softmax_xent_forward", probs, n * c, "probabilities");
  expect_f32("softmax_xent_forward", {&probs});
  act_dtype("softmax_xent_forward", {&logits});
  if (dev == Device::CUDA) {
    Tensor out = Tensor::empty({1}, DType::F32, Device::CUDA);
    softmax_xent_forward_into(logits, labels, label_smoothing, probs, out);
    return out.to(Device::CPU).data<float>()[0];
  }
  check_labels("softmax_xent_forward", labels, c);
  return ref::softmax_xent_forward(n, c, widen(logits).data<float>(), labels.data<int32_t>(), label_smoothing,
                                   probs.data<float>());
}

void softmax_xent_backward(const Tensor& probs, const Tensor& labels, float label_smoothing, Tensor& dlogits) {
  const Device dev = common_device("softmax_xent_backward", {&probs, &labels, &dlogits});
  const int64_t n = probs.dim(0), c = probs.dim(1);
  expect("softmax_xent_backward", labels, n, "labels");
  expect("softmax_xent_backward", dlogits, n * c, "logit gradient");
  if (dev == Device::CPU) check_labels("softmax_xent_backward", labels, c);
  expect_f32("softmax_xent_backward", {&probs});
  if (act_dtype("softmax_xent_backward", {&dlogits}) == DType::BF16) {
    TTQ_BF16_DISPATCH(dev, Tensor df = f32_like(dlogits); softmax_xent_backward(probs, labels, label_smoothing, df);
                      narrow_into(df, dlogits),
                      cuda::softmax_xent_backward(n, c, probs.data_ptr<float>(), labels.data_ptr<int32_t>(), label_smoothing,
                                                  mbptr(dlogits)));
    return;
  }
  TTQ_DISPATCH(dev,
               ref::softmax_xent_backward(n, c, probs.data_ptr<float>(), labels.data_ptr<int32_t>(), label_smoothing,
                                          dlogits.data_ptr<float>()),
               cuda::softmax_xent_backward(n, c, probs.data_ptr<float>(), labels.data_ptr<int32_t>(), label_smoothing,
                                           dlogits.data_ptr<float>()));
}

void softmax_xent_forward_into(const Tensor& logits, const Tensor& labels, float label_smoothing, Tensor& probs,
                               Tensor& loss_out) {
  const Device dev = common_device("softmax_xent_forward_into", {&logits, &labels, &probs, &loss_out});
  expect("softmax_xent_forward_into", loss_out, 1, "loss output");
  TTQ_CHECK(loss_out.dtype() == DType::F32, "softmax_xent_forward_into: loss output " << loss_out.str());
  if (dev == Device::CPU) {
    loss_out.data<float>()[0] = static_cast<float>(softmax_xent_forward(logits, labels, label_smoothing, probs));
    return;
  }
  const int64_t n = logits.dim(0), c = logits.dim(1);
  expect("softmax_xent_forward_into", labels, n, "labels");
  expect("softmax_xent_forward_into", probs, n * c, "probabilities");
  expect_f32("softmax_xent_forward_into", {&probs});
  if (act_dtype("softmax_xent_forward_into", {&logits}) == DType::BF16) {
    TTQ_CUDA_CALL(cuda::softmax_xent_forward(n, c, cbptr(logits), labels.data_ptr<int32_t>(), label_smoothing,
                                             probs.data_ptr<float>(), loss_out.data_ptr<float>()));
    return;
  }
  TTQ_DISPATCH(dev, (void)0,
               cuda::softmax_xent_forward(n, c, logits.data_ptr<float>(), labels.data_ptr<int32_t>(), label_smoothing,
                                          probs.data_ptr<float>(), loss_out.data_ptr<float>()));
}

void count_topk_correct_into(const Tensor& logits, const Tensor& labels, int k, Tensor& correct_out) {
  const Device dev = common_device("count_topk_correct_into", {&logits, &labels, &correct_out});
  expect("count_topk_correct_into", correct_out, 1, "count output");
  TTQ_CHECK(correct_out.dtype() == DType::I64, "count_topk_correct_into: count output " << correct_out.str());
  if (dev == Device::CPU) {
    correct_out.data<int64_t>()[0] = count_topk_correct(logits, labels, k);
    return;
  }
  const int64_t n = logits.dim(0), c = logits.dim(1);
  (void)c;  // used by the CUDA call only
  expect("count_topk_correct_into", labels, n, "labels");
  if (act_dtype("count_topk_correct_into", {&logits}) == DType::BF16) {
    TTQ_CUDA_CALL(cuda::count_topk_correct(n, c, cbptr(logits), labels.data_ptr<int32_t>(), k, correct_out.data_ptr<int64_t>()));
    return;
  }
  TTQ_DISPATCH(dev, (void)0,
               cuda::count_topk_correct(n, c, logits.data_ptr<float>(), labels.data_ptr<int32_t>(), k,
                                        correct_out.data_ptr<int64_t>()));
}

int64_t count_topk_correct(const Tensor& logits, const Tensor& labels, int k) {
  const Device dev = common_device("count_topk_correct", {&logits, &labels});
  const int64_t n = logits.dim(0), c = logits.dim(1);
  expect("count_topk_correct", labels, n, "labels");
  act_dtype("count_topk_correct", {&logits});
  if (dev == Device::CUDA) {
    Tensor out = Tensor::empty({1}, DType::I64, Device::CUDA);
    count_topk_correct_into(logits, labels, k, out);
    return out.to(Device::CPU).data<int64_t>()[0];
  }
  check_labels("count_topk_correct", labels, c);
  return count_topk_cpu(n, c, widen(logits).data<float>(), labels.data<int32_t>(), k);
}

namespace {
void add_cpu(int64_t n, const float* a, const float* b, float* out) {
#pragma omp parallel for simd schedule(static) if (n >= ref::kElementwiseParallelMin)
  for (int64_t i = 0; i < n; ++i) out[i] = a[i] + b[i];
}
void clamp_cpu(int64_t n, float* p, float lo) {
  for (int64_t i = 0; i < n; ++i) p[i] = std::max(p[i], lo);
}
}  // namespace

void add(const Tensor& a, const Tensor& b, Tensor& out) {
  const Device dev = common_device("add", {&a, &b, &out});
  TTQ_CHECK(a.shape() == b.shape() && out.numel() == a.numel(),
            "add: shapes " << shape_str(a.shape()) << " and " << shape_str(b.shape()) << " into " << shape_str(out.shape()));
  act_layout("add", {&a, &b, &out});
  if (act_dtype("add", {&a, &b, &out}) == DType::BF16) {
    TTQ_BF16_DISPATCH(dev, Tensor of = f32_like(out); add(widen(a), widen(b), of); narrow_into(of, out),
                      cuda::add(a.numel(), cbptr(a), cbptr(b), mbptr(out)));
    return;
  }
  TTQ_DISPATCH(dev, add_cpu(a.numel(), a.data_ptr<float>(), b.data_ptr<float>(), out.data_ptr<float>()),
               cuda::add(a.numel(), a.data_ptr<float>(), b.data_ptr<float>(), out.data_ptr<float>()));
}

void add_accumulate(Tensor& dst, const Tensor& src) {
  const Device dev = common_device("add_accumulate", {&dst, &src});
  expect("add_accumulate", src, dst.numel(), "source");
  act_layout("add_accumulate", {&dst, &src});
  if (dst.dtype() == DType::F32 && src.dtype() == DType::BF16) {  // an f32 gradient += a bf16 one
    TTQ_BF16_DISPATCH(dev, add_accumulate(dst, widen(src)),
                      cuda::add_accumulate(dst.numel(), dst.data_ptr<float>(), cbptr(src)));
    return;
  }
  if (act_dtype("add_accumulate", {&dst, &src}) == DType::BF16) {
    TTQ_BF16_DISPATCH(dev, Tensor df = widen(dst); add_accumulate(df, widen(src)); narrow_into(df, dst),
                      cuda::add_accumulate(dst.numel(), mbptr(dst), cbptr(src)));
    return;
  }
  TTQ_DISPATCH(dev, add_cpu(dst.numel(), dst.data_ptr<float>(), src.data_ptr<float>(), dst.data_ptr<float>()),
               cuda::add_accumulate(dst.numel(), dst.data_ptr<float>(), src.data_ptr<float>()));
}

void cast(const Tensor& src, Tensor& dst) {
  const Device dev = common_device("cast", {&src, &dst});
  expect("cast", dst, src.numel(), "destination");
  act_layout("cast", {&src, &dst});
  if (src.dtype() == dst.dtype()) {
    if (src.raw() != dst.raw()) dst.copy_from(src.view(dst.shape()));
    return;
  }
  const int64_t n = src.numel();
  if (src.dtype() == DType::F32 && dst.dtype() == DType::BF16) {
    TTQ_BF16_DISPATCH(dev, f32_to_bf16_cpu(n, src.data_ptr<float>(), mbptr(dst)),
                      cuda::cast(n, src.data_ptr<float>(), mbptr(dst)));
  } else if (src.dtype() == DType::BF16 && dst.dtype() == DType::F32) {
    TTQ_BF16_DISPATCH(dev, bf16_to_f32_cpu(n, cbptr(src), dst.data_ptr<float>()),
                      cuda::cast(n, cbptr(src), dst.data_ptr<float>()));
  } else {
    TTQ_FAIL("cast: " << src.str() << " to " << dst.str() << " is not supported (f32 <-> bf16 only)");
  }
}

Tensor cast_to(const Tensor& src, DType dtype) {
  if (src.dtype() == dtype) return src;
  Tensor dst = Tensor::empty(src.shape(), dtype, src.device(), src.layout());
  cast(src, dst);
  return dst;
}

void clamp_min_inplace(Tensor& t, float lo) {
  const Device dev = common_device("clamp_min_inplace", {&t});
  TTQ_DISPATCH(dev, clamp_cpu(t.numel(), t.data_ptr<float>(), lo), cuda::clamp_min_inplace(t.numel(), t.data_ptr<float>(), lo));
}

namespace {
void ttq_forward_cpu(math::ThresholdMode mode, float t, double r, const Tensor& latent, const Tensor& wp,
                     const Tensor& wn, Tensor& threshold, Tensor& twn_scale, Tensor& w_t, Tensor& codes) {
  const cpu::ThresholdResult th = cpu::ttq_threshold(mode, latent.data<float>(), latent.numel(), t, r);
  threshold.data<float>()[0] = th.threshold;
  twn_scale.data<float>()[0] = th.twn_scale;
  const bool twn = mode == math::ThresholdMode::Twn;
  if (!twn && wp.numel() > 1) {
    cpu::ttq_ternarize_channels(latent.data<float>(), latent.numel(), wp.numel(), th.threshold, wp.data<float>(),
                                wn.data<float>(), w_t.data<float>(), codes.data<int8_t>());
    return;
  }
  cpu::ttq_ternarize(latent.data<float>(), latent.numel(), th.threshold, twn ? th.twn_scale : wp.data<float>()[0],
                     twn ? th.twn_scale : wn.data<float>()[0], w_t.data<float>(), codes.data<int8_t>());
}

// The number of scales, C: wp and wn alike, 1 or a divisor of the n weights (per-channel).
int64_t scale_channels(const char* op, const Tensor& wp, const Tensor& wn, int64_t n) {
  const int64_t c = wp.numel();
  TTQ_CHECK(wn.numel() == c, op << ": Wp " << wp.str() << " and Wn " << wn.str() << " differ in size");
  TTQ_CHECK(math::scale_rows_fit(c, n),
            op << ": " << c << " scales do not divide the " << n << " weights into rows (1 per layer or 1 per output channel)");
  return c;
}
}  // namespace

void ttq_forward(math::ThresholdMode mode, float t, double r, const Tensor& latent, const Tensor& wp, const Tensor& wn,
                 Tensor& threshold, Tensor& twn_scale, Tensor& w_t, Tensor& codes) {
  const Device dev = common_device("ttq_forward", {&latent, &wp, &wn, &threshold, &twn_scale, &w_t, &codes});
  const int64_t n = latent.numel();
  expect("ttq_forward", w_t, n, "quantized weights");
  expect("ttq_forward", codes, n, "codes");
  expect("ttq_forward", threshold, 1, "threshold");
  expect("ttq_forward", twn_scale, 1, "TWN scale");
  // Checked in every build; only the CUDA kernels take the count (the CPU loops read wp's size).
  [[maybe_unused]] const int64_t channels =
      mode == math::ThresholdMode::Twn ? 1 : scale_channels("ttq_forward", wp, wn, n);
  if (w_t.dtype() == DType::BF16) {
    TTQ_BF16_DISPATCH(dev, Tensor wf = f32_like(w_t);
                      ttq_forward_cpu(mode, t, r, latent, wp, wn, threshold, twn_scale, wf, codes); narrow_into(wf, w_t),
                      cuda::ttq_forward(mode, t, r, latent.data_ptr<float>(), n, channels, wp.data_ptr<float>(),
                                        wn.data_ptr<float>(), threshold.data_ptr<float>(), twn_scale.data_ptr<float>(),
                                        mbptr(w_t), codes.data_ptr<int8_t>()));
    return;
  }
  TTQ_DISPATCH(dev, ttq_forward_cpu(mode, t, r, latent, wp, wn, threshold, twn_scale, w_t, codes),
               cuda::ttq_forward(mode, t, r, latent.data_ptr<float>(), n, channels, wp.data_ptr<float>(),
                                 wn.data_ptr<float>(), threshold.data_ptr<float>(), twn_scale.data_ptr<float>(),
                                 w_t.data_ptr<float>(), codes.data_ptr<int8_t>()));
}

void ttq_backward_accumulate(const Tensor& codes, const Tensor& g, const Tensor& wp, const Tensor& wn,
                             bool scale_latent, Tensor& latent_grad, Tensor& dwp, Tensor& dwn) {
  const Device dev = common_device("ttq_backward_accumulate", {&codes, &g, &wp, &wn, &latent_grad, &dwp, &dwn});
  const int64_t n = codes.numel();
  expect("ttq_backward_accumulate", g, n, "gradient");
  expect("ttq_backward_accumulate", latent_grad, n, "latent gradient");
  const int64_t channels = scale_latent ? scale_channels("ttq_backward_accumulate", wp, wn, n) : 1;
  if (scale_latent) {
    expect("ttq_backward_accumulate", dwp, channels, "Wp gradient");
    expect("ttq_backward_accumulate", dwn, channels, "Wn gradient");
  }
  TTQ_DISPATCH(dev,
               cpu::ttq_backward_accumulate(codes.data<int8_t>(), g.data<float>(), n, channels, wp.data<float>(),
                                            wn.data<float>(), scale_latent, latent_grad.data<float>(),
                                            dwp.data<float>(), dwn.data<float>()),
               cuda::ttq_backward_accumulate(codes.data_ptr<int8_t>(), g.data_ptr<float>(), n, channels,
                                             wp.data_ptr<float>(), wn.data_ptr<float>(), scale_latent,
                                             latent_grad.data_ptr<float>(), dwp.data_ptr<float>(),
                                             dwn.data_ptr<float>()));
}

namespace {
void sgd_cpu(int64_t n, float* w, const float* g, float* buf, float lr, float momentum, float wd, bool nesterov,
             bool first) {
  float unused = 0.0f;
  for (int64_t i = 0; i < n; ++i) math::sgd_update(w[i], g[i], buf ? buf[i] : unused, lr, momentum, wd, nesterov, first);
}
void adam_cpu(int64_t n, float* w, const float* g, float* m, float* v, float lr, float b1, float b2, float eps,
              float wd, float bc1, float bc2) {
  for (int64_t i = 0; i < n; ++i) math::adam_update(w[i], g[i], m[i], v[i], lr, b1, b2, eps, wd, bc1, bc2);
}
}  // namespace

void sgd_update(Tensor& p, const Tensor& g, Tensor* momentum_buf, float lr, float momentum, float wd, bool nesterov,
                bool first_step) {
  const Device dev = common_device("sgd_update", {&p, &g, momentum_buf});
  expect("sgd_update", g, p.numel(), "gradient");
  TTQ_CHECK(momentum == 0.0f || momentum_buf, "sgd_update: momentum " << momentum << " without a momentum buffer");
  if (momentum_buf) expect("sgd_update", *momentum_buf, p.numel(), "momentum buffer");
  TTQ_DISPATCH(dev,
               sgd_cpu(p.numel(), p.data_ptr<float>(), g.data_ptr<float>(), mptr(momentum_buf), lr, momentum, wd, nesterov,
                       first_step),
               cuda::sgd_update(p.numel(), p.data_ptr<float>(), g.data_ptr<float>(), mptr(momentum_buf), lr, momentum, wd,
                                nesterov, first_step));
}

void adam_update(Tensor& p, const Tensor& g, Tensor& m, Tensor& v, float lr, float beta1, float beta2, float eps,
                 float wd, float bc1, float bc2) {
  const Device dev = common_device("adam_update", {&p, &g, &m, &v});
  expect("adam_update", g, p.numel(), "gradient");
  TTQ_DISPATCH(dev,
               adam_cpu(p.numel(), p.data_ptr<float>(), g.data_ptr<float>(), m.data_ptr<float>(), v.data_ptr<float>(), lr, beta1,
                        beta2, eps, wd, bc1, bc2),
               cuda::adam_update(p.numel(), p.data_ptr<float>(), g.data_ptr<float>(), m.data_ptr<float>(), v.data_ptr<float>(), lr,
                                 beta1, beta2, eps, wd, bc1, bc2));
}

}  // namespace ttq::ops
