// The bf16 CUDA ops (precision "bf16", kernels/cuda/ops_cuda.h) against the CPU emulation, through
// the tensor ops of kernels/ops.h: the same op on bf16 CPU tensors widens the inputs to f32, runs
// the f32 reference kernel and rounds the outputs to bf16, and the CUDA tensors run the bf16
// kernels. The CPU side runs the reference kernels (not oneDNN) while these tests run.
//
// Tolerances. Bitwise where the GPU does the reference's float operations in its order and rounds
// once: casts, ReLU, add, accumulate (bf16 += bf16 and f32 += bf16), the shortcut, the global
// average-pool gradient, the softmax gradient, max pooling forward and backward, TTQ codes and
// bf16 w_t. Elsewhere sums are formed in another order (cuDNN, cuBLAS, block reductions) and a
// biased convolution output is rounded twice, so a bf16 output may land one or two bf16 ulps away:
// |got - want| <= 1e-2 * max|want| + 2^-6 * |want|. f32 outputs of those ops (bias gradients,
// batch-norm statistics and parameter gradients, probabilities) use f32 tolerances. Every GPU
// result is computed twice (outputs starting as garbage) and the runs must agree bitwise. Also:
// the multi-tensor TTQ pass with bf16 w_t gives the codes, D and scale of the f32 pass and
// w_t == round_bf16(f32 w_t) bitwise. Skips where no GPU (or no CUDA build) exists.
#include <gtest/gtest.h>

#ifdef TTQ_HAVE_CUDA

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "engine/core/bf16.h"
#include "engine/core/tensor.h"
#include "kernels/cpu/ops.h"
#include "kernels/cuda/ttq_multi.h"
#include "kernels/device.h"
#include "kernels/ops.h"
#include "kernels/ttq_math.h"
#include "tests/gpu_test_util.h"
#include "tests/test_util.h"

namespace ttq {
namespace {

using namespace gpu_test;
using math::ThresholdMode;

// A case test of this file: skips where no GPU is found; the CPU emulation runs the reference
// kernels.
template <class Case>
class Bf16CaseTest : public GpuCaseTest<Case> {
  const ReferenceKernels reference_;
};

// ---- tensors ----------------------------------------------------------------------------------

// A bf16 CPU copy of an f32 CPU tensor (round to nearest even).
Tensor to_bf16_host(const Tensor& f) {
  Tensor b = Tensor::empty(f.shape(), DType::BF16);
  const float* src = f.data<float>();
  bf16* dst = b.data<bf16>();
  for (int64_t i = 0; i < f.numel(); ++i) dst[i] = to_bf16(src[i]);
  return b;
}

// An f32 CPU tensor with the values of t (f32 or bf16, any device).
Tensor widen_host(const Tensor& t) {
  const Tensor h = host(t);
  if (h.dtype() == DType::F32) return h;
  Tensor f = Tensor::empty(h.shape());
  const bf16* src = h.data<bf16>();
  float* dst = f.data<float>();
  for (int64_t i = 0; i < h.numel(); ++i) dst[i] = to_float(src[i]);
  return f;
}

// Uniform in [lo, hi), rounded to bf16 (CPU).
Tensor random_bf16(const Shape& shape, uint64_t seed, float lo = -1.0f, float hi = 1.0f) {
  return to_bf16_host(testing::random_tensor(shape, seed, lo, hi));
}

Tensor cpu_empty(const Shape& s, DType dt = DType::BF16) { return Tensor::empty(s, dt); }
Tensor gpu_empty(const Shape& s, DType dt = DType::BF16) { return Tensor::empty(s, dt, Device::CUDA); }
// A garbage-filled device tensor (gpu_test::gpu_garbage), bf16 unless told.
Tensor gpu_garbage(const Shape& s, DType dt = DType::BF16) { return gpu_test::gpu_garbage(s, dt); }

// ---- comparisons ------------------------------------------------------------------------------

// bf16 outputs against the emulation: |got - want| <= atol_frac * max|want| + 2^-6 * |want| (two
// bf16 ulps relative, plus an absolute term for values that cancel).
constexpr double kBf16Rtol = 1.0 / 64.0;
::testing::AssertionResult close_bf16(const Tensor& got, const Tensor& want, double atol_frac = 1e-2) {
  const Tensor g = widen_host(got), w = widen_host(want);
  double max_abs = 0.0;
  for (int64_t i = 0; i < w.numel(); ++i) max_abs = std::max(max_abs, std::fabs(static_cast<double>(w.data<float>()[i])));
  return testing::all_close(g, w, atol_frac * max_abs, kBf16Rtol);
}

// f32 outputs (sums of the same values in another order).
::testing::AssertionResult close_f32(const Tensor& got, const Tensor& want, double atol, double rtol) {
  return testing::all_close(host(got), host(want), atol, rtol);
}

// ---- casts and elementwise ops ------------------------------------------------------------------

TEST(GpuBf16, CastsMatchHostRoundingBitwise) {
  if (cuda_device_count() == 0) GTEST_SKIP() << cuda_device_summary();
  for (int64_t n : {int64_t{16}, int64_t{1000}, int64_t{(1 << 22) + 3}}) {
    SCOPED_TRACE("n=" + std::to_string(n));
    Tensor f = testing::random_tensor({n}, 10 + n, -3.0f, 3.0f);
    // Ties (to even, both directions), signed zeros, infinities, overflow to inf, subnormals.
    const float specials[] = {0.0f,
                              -0.0f,
                              std::ldexp(1.0f + std::ldexp(1.0f, -8), 0),      // tie -> 1
                              std::ldexp(1.0f + 3 * std::ldexp(1.0f, -8), 3),  // tie -> up (even)
                              -(1.0f + std::ldexp(1.0f, -8) + std::ldexp(1.0f, -20)),
                              std::numeric_limits<float>::infinity(),
                              -std::numeric_limits<float>::infinity(),
                              std::numeric_limits<float>::max(),
                              -std::numeric_limits<float>::max(),
                              1e-40f,
                              -3e-39f,
                              std::numeric_limits<float>::denorm_min(),
                              std::numeric_limits<float>::min(),
                              65504.5f,
                              1e30f,
                              -7.0e-20f};
    for (size_t i = 0; i < sizeof specials / sizeof specials[0] && static_cast<int64_t>(i) < n; ++i)
      f.data<float>()[i] = specials[i];
    const Tensor want = to_bf16_host(f);

    Tensor b_dev = gpu_empty({n});
    ops::cast(gpu(f), b_dev);
    EXPECT_TRUE(bitwise_equal(b_dev, want)) << "f32 -> bf16";
    EXPECT_TRUE(bitwise_equal(ops::cast_to(gpu(f), DType::BF16), want)) << "cast_to bf16";
    EXPECT_TRUE(bitwise_equal(ops::cast_to(f, DType::BF16), want)) << "CPU cast";

    Tensor f_dev = gpu_empty({n}, DType::F32);
    ops::cast(b_dev, f_dev);
    EXPECT_TRUE(bitwise_equal(f_dev, widen_host(want))) << "bf16 -> f32";
    EXPECT_TRUE(bitwise_equal(ops::cast_to(b_dev, DType::F32), widen_host(want))) << "cast_to f32";
  }
}

TEST(GpuBf16, ReluBitwise) {
  if (cuda_device_count() == 0) GTEST_SKIP() << cuda_device_summary();
  for (int64_t n : {int64_t{1}, int64_t{1000}, int64_t{(1 << 23) + 5}}) {
    SCOPED_TRACE("n=" + std::to_string(n));
    Tensor x = random_bf16({n}, 100 + n);
    x.data<bf16>()[0] = to_bf16(0.0f);
    if (n > 2) x.data<bf16>()[2] = to_bf16(-0.0f);
    Tensor y = cpu_empty({n});
    ops::relu_forward(x, y);
    Tensor y_dev = gpu_garbage({n});
    ops::relu_forward(gpu(x), y_dev);
    EXPECT_TRUE(bitwise_equal(y_dev, y));
    Tensor inplace = gpu(x);
    ops::relu_forward(inplace, inplace);
    EXPECT_TRUE(bitwise_equal(inplace, y));

    const Tensor dy = random_bf16({n}, 200 + n);
    Tensor dx = cpu_empty({n});
    ops::relu_backward(y, dy, dx);
    Tensor dx_dev = gpu_garbage({n});
    ops::relu_backward(y_dev, gpu(dy), dx_dev);
    EXPECT_TRUE(bitwise_equal(dx_dev, dx));
  }
}

TEST(GpuBf16, AddAndAccumulateBitwise) {
  if (cuda_device_count() == 0) GTEST_SKIP() << cuda_device_summary();
  for (int64_t n : {int64_t{3}, int64_t{4099}, int64_t{(1 << 22) + 1}}) {
    SCOPED_TRACE("n=" + std::to_string(n));
    const Tensor a = random_bf16({n}, 400 + n), b = random_bf16({n}, 500 + n);
    Tensor out = cpu_empty({n});
    ops::add(a, b, out);
    const Tensor a_dev = gpu(a), b_dev = gpu(b);
    Tensor out_dev = gpu_garbage({n});
    ops::add(a_dev, b_dev, out_dev);
    EXPECT_TRUE(bitwise_equal(out_dev, out)) << "add";
    Tensor alias_a = gpu(a);
    ops::add(alias_a, b_dev, alias_a);
    EXPECT_TRUE(bitwise_equal(alias_a, out)) << "add into a";
    Tensor alias_b = gpu(b);
    ops::add(a_dev, alias_b, alias_b);
    EXPECT_TRUE(bitwise_equal(alias_b, out)) << "add into b";

    Tensor acc = a.clone();
    ops::add_accumulate(acc, b);
    Tensor acc_dev = gpu(a);
    ops::add_accumulate(acc_dev, b_dev);
    EXPECT_TRUE(bitwise_equal(acc_dev, acc)) << "bf16 += bf16";

    // An f32 gradient accumulating the bf16 gradient of a bf16 weight copy.
    const Tensor g32 = testing::random_tensor({n}, 600 + n);
    Tensor acc32 = g32.clone();
    ops::add_accumulate(acc32, b);
    Tensor acc32_dev = gpu(g32);
    ops::add_accumulate(acc32_dev, b_dev);
    EXPECT_TRUE(bitwise_equal(acc32_dev, acc32)) << "f32 += bf16";
  }
}

TEST(GpuBf16, ShortcutABitwise) {
  if (cuda_device_count() == 0) GTEST_SKIP() << cuda_device_summary();
  uint64_t seed = 300;
  for (const ShortcutCase& c : kShortcutCases) {
    SCOPED_TRACE(c.str());
    const Shape xs = c.x_shape(), ys = c.y_shape();
    const Tensor x = random_bf16(xs, ++seed);
    Tensor y = cpu_empty(ys);
    ops::shortcut_a_forward(c.stride, x, y);
    Tensor y_dev = gpu_garbage(ys);  // the padded channels must be written as zeros
    ops::shortcut_a_forward(c.stride, gpu(x), y_dev);
    EXPECT_TRUE(bitwise_equal(y_dev, y));

    const Tensor dy = random_bf16(ys, ++seed);
    Tensor dx = cpu_empty(xs);
    ops::shortcut_a_backward(c.stride, dy, dx);
    Tensor dx_dev = gpu_garbage(xs);
    ops::shortcut_a_backward(c.stride, gpu(dy), dx_dev);
    EXPECT_TRUE(bitwise_equal(dx_dev, dx));
  }
}

TEST(GpuBf16, GlobalAvgPool) {
  if (cuda_device_count() == 0) GTEST_SKIP() << cuda_device_summary();
  uint64_t seed = 20;
  for (const Shape& shape : {Shape{3, 5, 7, 9}, Shape{2, 4, 1, 1}, Shape{2, 3, 33, 35}, Shape{64, 64, 8, 8}}) {
    SCOPED_TRACE(shape_str(shape));
    const Shape ys{shape[0], shape[1]};
    const Tensor x = random_bf16(shape, ++seed);
    Tensor y = cpu_empty(ys);
    ops::global_avgpool_forward(x, y);
    const Tensor x_dev = gpu(x);
    Tensor y_dev[2];
    for (Tensor& t : y_dev) {
      t = gpu_garbage(ys);
      ops::global_avgpool_forward(x_dev, t);
    }
    EXPECT_TRUE(close_bf16(y_dev[0], y)) << "forward";  // sums in another order
    EXPECT_TRUE(bitwise_equal(y_dev[1], y_dev[0])) << "forward repeat";

    const Tensor dy = random_bf16(ys, ++seed);
    Tensor dx = cpu_empty(shape);
    ops::global_avgpool_backward(dy, dx);
    Tensor dx_dev = gpu_garbage(shape);
    ops::global_avgpool_backward(gpu(dy), dx_dev);
    EXPECT_TRUE(bitwise_equal(dx_dev, dx)) << "backward";
  }
}

// ---- loss and accuracy ----------------------------------------------------------------------------

struct XentCase {
  int64_t n, classes;
  float smoothing;
};

TEST(GpuBf16, SoftmaxCrossEntropyAndTopk) {
  if (cuda_device_count() == 0) GTEST_SKIP() << cuda_device_summary();
  uint64_t seed = 1700;
  for (const XentCase& c : {XentCase{1, 1, 0.0f}, XentCase{7, 10, 0.0f}, XentCase{128, 10, 0.1f},
                            XentCase{33, 1000, 0.1f}, XentCase{5, 37, 0.3f}}) {
    SCOPED_TRACE("n=" + std::to_string(c.n) + " classes=" + std::to_string(c.classes) +
                 " smoothing=" + std::to_string(c.smoothing));
    const Shape ls{c.n, c.classes};
    const Tensor logits = random_bf16(ls, ++seed, -8.0f, 8.0f);
    const Tensor labels = int_labels(c.n, c.classes, ++seed);
    Tensor probs = cpu_empty(ls, DType::F32);
    const double want = ops::softmax_xent_forward(logits, labels, c.smoothing, probs);

    const Tensor logits_dev = gpu(logits), labels_dev = gpu(labels);
    Tensor probs_dev[2];
    double loss[2] = {0.0, 0.0};
    for (int run = 0; run < 2; ++run) {
      probs_dev[run] = gpu_garbage(ls, DType::F32);
      loss[run] = ops::softmax_xent_forward(logits_dev, labels_dev, c.smoothing, probs_dev[run]);
    }
    EXPECT_NEAR(loss[0], want, 1e-6 * std::fabs(want) + 1e-7);
    EXPECT_TRUE(close_f32(probs_dev[0], probs, 1e-12, 1e-6));  // f32 probabilities of the same logits
    EXPECT_EQ(loss[1], loss[0]);
    EXPECT_TRUE(bitwise_equal(probs_dev[1], probs_dev[0]));

    // Backward from the same probabilities on both sides: the same float, rounded once.
    Tensor dlogits = cpu_empty(ls);
    ops::softmax_xent_backward(probs, labels, c.smoothing, dlogits);
    Tensor dlogits_dev = gpu_garbage(ls);
    ops::softmax_xent_backward(gpu(probs), labels_dev, c.smoothing, dlogits_dev);
    EXPECT_TRUE(bitwise_equal(dlogits_dev, dlogits));
  }

  // Top-k on bf16 logits, with many ties (ties go to the lower index).
  for (int64_t classes : {int64_t{1}, int64_t{10}, int64_t{1000}}) {
    for (int64_t n : {int64_t{1}, int64_t{300}, int64_t{4096}}) {
      Tensor f = testing::random_tensor({n, classes}, ++seed);
      for (int64_t i = 0; i < f.numel(); ++i) f.data<float>()[i] = std::round(f.data<float>()[i] * 4.0f) / 4.0f;
      const Tensor logits = to_bf16_host(f), labels = int_labels(n, classes, ++seed);
      const Tensor logits_dev = gpu(logits), labels_dev = gpu(labels);
      for (int k : {1, 5}) {
        SCOPED_TRACE("classes=" + std::to_string(classes) + " n=" + std::to_string(n) + " k=" + std::to_string(k));
        const int64_t want = ops::count_topk_correct(logits, labels, k);
        EXPECT_EQ(ops::count_topk_correct(logits_dev, labels_dev, k), want);
        EXPECT_EQ(ops::count_topk_correct(logits_dev, labels_dev, k), want);
      }
    }
  }
}

// ---- convolution ----------------------------------------------------------------------------

const std::vector<ConvCase> kConvCases = conv_cases({
    {"k3_s1_pad1_resnet_block", conv(8, 64, 16, 16, 64, 3, 3, 1, 1, 1, 1, 1, 1, 1), true},
    // n * out_h * out_w > 16384: the bias gradient's chunked channel sums (groups of 4, and of 1)
    {"k3_s1_pad1_bias_batch32", conv(32, 3, 24, 24, 8, 3, 3, 1, 1, 1, 1, 1, 1, 1), true},
    {"k3_s1_pad1_bias_batch40_odd", conv(40, 2, 21, 21, 4, 3, 3, 1, 1, 1, 1, 1, 1, 1), true},
});

class GpuBf16Conv : public Bf16CaseTest<ConvCase> {};

TEST_P(GpuBf16Conv, MatchesEmulationAndRepeats) {
  TTQ_REQUIRE_CUDNN();
  const ConvCase& c = GetParam();
  const Conv2dShape& s = c.s;
  const auto [xs, ws, ys, bs] = c.shapes();
  const Tensor x = random_bf16(xs, 11), w = random_bf16(ws, 12), dy = random_bf16(ys, 14);
  const Tensor b = testing::random_tensor(bs, 13);  // biases stay f32

  Tensor y_ref = cpu_empty(ys), dx_ref = cpu_empty(xs), dw_ref = cpu_empty(ws), db_ref = cpu_empty(bs, DType::F32);
  ops::conv2d_forward(s, x, w, c.bias ? &b : nullptr, y_ref);
  ops::conv2d_backward_data(s, dy, w, dx_ref);
  ops::conv2d_backward_weights(s, x, dy, dw_ref, c.bias ? &db_ref : nullptr);

  const Tensor xg = gpu(x), wg = gpu(w), bg = gpu(b), dyg = gpu(dy);
  Runs y(ys, DType::BF16), dx(xs, DType::BF16), dw(ws, DType::BF16), db(bs, DType::F32);
  for (int run = 0; run < 2; ++run) {
    ops::conv2d_forward(s, xg, wg, c.bias ? &bg : nullptr, y[run]);
    ops::conv2d_backward_data(s, dyg, wg, dx[run]);
    ops::conv2d_backward_weights(s, xg, dyg, dw[run], c.bias ? &db[run] : nullptr);
  }
  EXPECT_EQ(y[0].dtype(), DType::BF16);
  EXPECT_TRUE(close_bf16(y[0], y_ref)) << "forward " << s.str();
  EXPECT_TRUE(close_bf16(dx[0], dx_ref)) << "backward data " << s.str();
  EXPECT_TRUE(close_bf16(dw[0], dw_ref)) << "backward weights " << s.str();
  const int64_t k_bias = s.n * s.out_h() * s.out_w();
  if (c.bias) {
    EXPECT_TRUE(close_f32(db[0], db_ref, tol(k_bias), tol(k_bias))) << "bias gradient " << s.str();
  }
  EXPECT_TRUE(y.repeats()) << "forward repeat";
  EXPECT_TRUE(dx.repeats()) << "backward data repeat";
  EXPECT_TRUE(dw.repeats()) << "backward weights repeat";
  if (c.bias) {
    EXPECT_TRUE(db.repeats()) << "bias gradient repeat";
  }
}

INSTANTIATE_TEST_SUITE_P(Shapes, GpuBf16Conv, ::testing::ValuesIn(kConvCases), CaseName{});

// ---- pooling --------------------------------------------------------------------------------

const std::vector<PoolCase> kPoolCases =
    pool_cases({{"max_k3_s2_pad1_stem", PoolKind::Max, pool(8, 64, 32, 32, 3, 3, 2, 2, 1, 1, 1, 1, true)}});

class GpuBf16Pool : public Bf16CaseTest<PoolCase> {};

TEST_P(GpuBf16Pool, MatchesEmulationAndRepeats) {
  const PoolCase& c = GetParam();
  const Pool2dShape& s = c.s;
  const auto [xs, ys] = c.shapes();
  Tensor xf = testing::random_tensor(xs, 31);
  if (c.kind == PoolKind::Max) {  // a few levels only: equal maxima check first-maximum routing
    float* p = xf.data<float>();
    for (int64_t i = 0; i < xf.numel(); ++i) p[i] = std::round(p[i] * 2.0f) / 2.0f;
  }
  const Tensor x = to_bf16_host(xf), dy = random_bf16(ys, 32);
  Tensor y_ref = cpu_empty(ys), dx_ref = cpu_empty(xs);
  ops::pool2d_forward(c.kind, s, x, y_ref);
  ops::pool2d_backward(c.kind, s, x, dy, dx_ref);

  const Tensor xg = gpu(x), dyg = gpu(dy);
  Runs y(ys, DType::BF16), dx(xs, DType::BF16);
  for (int run = 0; run < 2; ++run) {
    ops::pool2d_forward(c.kind, s, xg, y[run]);
    ops::pool2d_backward(c.kind, s, xg, dyg, dx[run]);
  }
  if (c.kind == PoolKind::Max) {  // a maximum is exact; the gradient sums the same floats in order
    EXPECT_TRUE(bitwise_equal(y[0], y_ref)) << "forward " << s.str();
    EXPECT_TRUE(bitwise_equal(dx[0], dx_ref)) << "backward " << s.str();
  } else {
    EXPECT_TRUE(close_bf16(y[0], y_ref)) << "forward " << s.str();
    EXPECT_TRUE(close_bf16(dx[0], dx_ref)) << "backward " << s.str();
  }
  EXPECT_TRUE(y.repeats()) << "forward repeat";
  EXPECT_TRUE(dx.repeats()) << "backward repeat";
}

INSTANTIATE_TEST_SUITE_P(Shapes, GpuBf16Pool, ::testing::ValuesIn(kPoolCases), CaseName{});

// ---- batch norm -----------------------------------------------------------------------------

const std::vector<BnCase> kBnCases = bn_cases({
    {"bn2d_resnet", {16, 32, 16 * 16}},
    // N * S > 16384: the chunked reductions (kernels/cuda/channel_reduce.cuh) and grid-stride passes
    {"bn2d_chunked", {32, 3, 56 * 56}},
    {"bn2d_chunked_odd", {40, 2, 25 * 25}},
    {"bn1d_chunked", {20000, 3, 1}},
});

class GpuBf16BatchNorm : public Bf16CaseTest<BnCase> {};

TEST_P(GpuBf16BatchNorm, TrainingForwardMatchesEmulationAndRepeats) {
  const BatchNormShape& s = GetParam().s;
  const float eps = 1e-5f, momentum = 0.1f;
  const Shape xs{s.n, s.c, s.s}, cs{s.c};
  // An offset and scale per tensor, so mean and variance are far from 0 and 1.
  const Tensor x = random_bf16(xs, 41, -2.0f, 3.0f);
  const Tensor gamma = testing::random_tensor(cs, 42, 0.5f, 1.5f), beta = testing::random_tensor(cs, 43);
  const Tensor rm0 = testing::random_tensor(cs, 44), rv0 = testing::random_tensor(cs, 45, 0.5f, 2.0f);

  Tensor y_ref = cpu_empty(xs), mean_ref = cpu_empty(cs, DType::F32), var_ref = cpu_empty(cs, DType::F32);
  Tensor is_ref = cpu_empty(cs, DType::F32), rm_ref = rm0.clone(), rv_ref = rv0.clone();
  ops::batchnorm_forward_train(s, x, gamma, beta, eps, momentum, rm_ref, rv_ref, y_ref, mean_ref, var_ref, is_ref);

  const Tensor xg = gpu(x), gg = gpu(gamma), bg = gpu(beta);
  Runs y(xs, DType::BF16), mean(cs, DType::F32), var(cs, DType::F32), is(cs, DType::F32), rm(rm0), rv(rv0);
  for (int run = 0; run < 2; ++run) {
    ops::batchnorm_forward_train(s, xg, gg, bg, eps, momentum, rm[run], rv[run], y[run], mean[run], var[run], is[run]);
  }
  // Statistics: double sums of the same values in another order, rounded to f32.
  EXPECT_TRUE(close_bf16(y[0], y_ref)) << "y";
  EXPECT_TRUE(close_f32(mean[0], mean_ref, 1e-6, 1e-5)) << "mean";
  EXPECT_TRUE(close_f32(var[0], var_ref, 1e-6, 1e-5)) << "biased variance";
  EXPECT_TRUE(close_f32(is[0], is_ref, 1e-6, 1e-5)) << "inverse std";
  EXPECT_TRUE(close_f32(rm[0], rm_ref, 1e-6, 1e-5)) << "running mean";
  EXPECT_TRUE(close_f32(rv[0], rv_ref, 1e-6, 1e-5)) << "running variance (unbiased)";
  for (const Runs* t : {&y, &mean, &var, &is, &rm, &rv}) EXPECT_TRUE(t->repeats());
}

TEST_P(GpuBf16BatchNorm, InferenceMatchesEmulation) {
  const BatchNormShape& s = GetParam().s;
  const float eps = 1e-3f;
  const Shape xs{s.n, s.c, s.s}, cs{s.c};
  const Tensor x = random_bf16(xs, 51, -2.0f, 3.0f);
  const Tensor gamma = testing::random_tensor(cs, 52, 0.5f, 1.5f), beta = testing::random_tensor(cs, 53);
  const Tensor rm = testing::random_tensor(cs, 54), rv = testing::random_tensor(cs, 55, 0.5f, 2.0f);
  Tensor y_ref = cpu_empty(xs);
  ops::batchnorm_forward_infer(s, x, gamma, beta, rm, rv, eps, y_ref);
  Tensor y = gpu_garbage(xs);
  ops::batchnorm_forward_infer(s, gpu(x), gpu(gamma), gpu(beta), gpu(rm), gpu(rv), eps, y);
  EXPECT_TRUE(close_bf16(y, y_ref));
}

TEST_P(GpuBf16BatchNorm, BackwardMatchesEmulationAndRepeats) {
  const BatchNormShape& s = GetParam().s;
  const float eps = 1e-5f, momentum = 0.1f;
  const Shape xs{s.n, s.c, s.s}, cs{s.c};
  const Tensor x = random_bf16(xs, 61, -2.0f, 3.0f), dy = random_bf16(xs, 62);
  const Tensor gamma = testing::random_tensor(cs, 63, 0.5f, 1.5f), beta = testing::random_tensor(cs, 64);
  // Saved statistics from the CPU forward pass (what the layer hands to the backward).
  Tensor y = cpu_empty(xs), mean = cpu_empty(cs, DType::F32), var = cpu_empty(cs, DType::F32);
  Tensor inv_std = cpu_empty(cs, DType::F32), rm = Tensor::zeros(cs), rv = Tensor::full(cs, 1.0f);
  ops::batchnorm_forward_train(s, x, gamma, beta, eps, momentum, rm, rv, y, mean, var, inv_std);
  Tensor dx_ref = cpu_empty(xs), dg_ref = cpu_empty(cs, DType::F32), db_ref = cpu_empty(cs, DType::F32);
  ops::batchnorm_backward(s, x, dy, gamma, mean, inv_std, eps, dx_ref, dg_ref, db_ref);

  const Tensor xg = gpu(x), dyg = gpu(dy), gg = gpu(gamma), mg = gpu(mean), isg = gpu(inv_std);
  Runs dx(xs, DType::BF16), dg(cs, DType::F32), db(cs, DType::F32);
  for (int run = 0; run < 2; ++run) {
    ops::batchnorm_backward(s, xg, dyg, gg, mg, isg, eps, dx[run], dg[run], db[run]);
  }
  const int64_t k = s.n * s.s;
  EXPECT_TRUE(close_bf16(dx[0], dx_ref)) << "dx";
  EXPECT_TRUE(close_f32(dg[0], dg_ref, tol(k), tol(k))) << "dgamma";
  EXPECT_TRUE(close_f32(db[0], db_ref, tol(k), tol(k))) << "dbeta";
  for (const Runs* t : {&dx, &dg, &db}) EXPECT_TRUE(t->repeats());
}

INSTANTIATE_TEST_SUITE_P(Shapes, GpuBf16BatchNorm, ::testing::ValuesIn(kBnCases), CaseName{});

// ---- linear ---------------------------------------------------------------------------------

const std::vector<LinearCase> kLinearCases = linear_cases({{"resnet_fc", 128, 512, 1000, true, true}});

class GpuBf16Linear : public Bf16CaseTest<LinearCase> {};

TEST_P(GpuBf16Linear, MatchesEmulationAndRepeats) {
  TTQ_REQUIRE_CUBLAS();
  const LinearCase& c = GetParam();
  const auto [xs, ws, ys, bs] = c.shapes();
  const Tensor x = random_bf16(xs, 71), w = random_bf16(ws, 72), dy = random_bf16(ys, 74);
  const Tensor b = testing::random_tensor(bs, 73);
  Tensor y_ref = cpu_empty(ys), dx_ref = cpu_empty(xs), dw_ref = cpu_empty(ws), db_ref = cpu_empty(bs, DType::F32);
  ops::linear_forward(x, w, c.bias ? &b : nullptr, y_ref);
  ops::linear_backward(x, w, dy, c.want_dx ? &dx_ref : nullptr, dw_ref, c.bias ? &db_ref : nullptr);

  const Tensor xg = gpu(x), wg = gpu(w), bg = gpu(b), dyg = gpu(dy);
  Runs y(ys, DType::BF16), dx(xs, DType::BF16), dw(ws, DType::BF16), db(bs, DType::F32);
  for (int run = 0; run < 2; ++run) {
    ops::linear_forward(xg, wg, c.bias ? &bg : nullptr, y[run]);
    ops::linear_backward(xg, wg, dyg, c.want_dx ? &dx[run] : nullptr, dw[run], c.bias ? &db[run] : nullptr);
  }
  EXPECT_TRUE(close_bf16(y[0], y_ref)) << "forward";
  EXPECT_TRUE(close_bf16(dw[0], dw_ref)) << "weight gradient";
  EXPECT_TRUE(y.repeats()) << "forward repeat";
  EXPECT_TRUE(dw.repeats()) << "weight gradient repeat";
  if (c.want_dx) {
    EXPECT_TRUE(close_bf16(dx[0], dx_ref)) << "input gradient";
    EXPECT_TRUE(dx.repeats()) << "input gradient repeat";
  } else {
    EXPECT_TRUE(bitwise_equal(dx[0], to_bf16_host(Tensor::full(xs, 7.25f)))) << "dx == null must leave the buffer alone";
  }
  if (c.bias) {
    EXPECT_TRUE(close_f32(db[0], db_ref, tol(c.n), tol(c.n))) << "bias gradient";
    EXPECT_TRUE(db.repeats()) << "bias gradient repeat";
  }
}

INSTANTIATE_TEST_SUITE_P(Shapes, GpuBf16Linear, ::testing::ValuesIn(kLinearCases), CaseName{});

// ---- TTQ ----------------------------------------------------------------------------------------

// Per tensor: bf16 w_t is the f32 w_t rounded, codes and D are those of the f32 op; outside TWN
// (whose D sums in another order on the CPU) also bitwise the CPU emulation.
TEST(GpuBf16, TtqForwardWritesRoundedWeights) {
  if (cuda_device_count() == 0) GTEST_SKIP() << cuda_device_summary();
  for (ThresholdMode mode : {ThresholdMode::Max, ThresholdMode::Sparsity, ThresholdMode::Twn}) {
    for (int64_t n : {int64_t{1}, int64_t{1000}, int64_t{3 * 3 * 64 * 64 + 5}, int64_t{(1 << 20) + 3}}) {
      SCOPED_TRACE(std::string(mode_name(mode)) + " n=" + std::to_string(n));
      const Tensor latent = testing::random_tensor({n}, 800 + n);
      const Tensor wp = scalar(1.3f), wn = scalar(0.7f);  // 0.7 is not a bf16 value: rounded
      const Tensor latent_dev = gpu(latent), wp_dev = gpu(wp), wn_dev = gpu(wn);

      Tensor th32 = gpu_empty({1}, DType::F32), sc32 = gpu_empty({1}, DType::F32);
      Tensor w_t32 = gpu_empty({n}, DType::F32), codes32 = gpu_empty({n}, DType::I8);
      ops::ttq_forward(mode, 0.05f, 0.4, latent_dev, wp_dev, wn_dev, th32, sc32, w_t32, codes32);

      Tensor th[2], sc[2], w_t[2], codes[2];
      for (int run = 0; run < 2; ++run) {
        th[run] = gpu_garbage({1}, DType::F32);
        sc[run] = gpu_garbage({1}, DType::F32);
        w_t[run] = gpu_garbage({n});
        codes[run] = gpu_empty({n}, DType::I8);
        ops::ttq_forward(mode, 0.05f, 0.4, latent_dev, wp_dev, wn_dev, th[run], sc[run], w_t[run], codes[run]);
      }
      EXPECT_TRUE(bitwise_equal(th[0], th32)) << "D";
      EXPECT_TRUE(bitwise_equal(sc[0], sc32)) << "TWN scale";
      EXPECT_TRUE(bitwise_equal(codes[0], codes32)) << "codes";
      EXPECT_TRUE(bitwise_equal(w_t[0], to_bf16_host(host(w_t32)))) << "w_t == round_bf16(f32 w_t)";
      for (Tensor* t : {th, sc, w_t, codes}) EXPECT_TRUE(bitwise_equal(t[1], t[0]));

      if (mode != ThresholdMode::Twn) {  // selections: the CPU's D exactly
        Tensor th_cpu = Tensor::empty({1}), sc_cpu = Tensor::empty({1}), w_t_cpu = cpu_empty({n});
        Tensor codes_cpu = Tensor::empty({n}, DType::I8);
        ops::ttq_forward(mode, 0.05f, 0.4, latent, wp, wn, th_cpu, sc_cpu, w_t_cpu, codes_cpu);
        EXPECT_TRUE(bitwise_equal(codes[0], codes_cpu)) << "codes vs CPU";
        EXPECT_TRUE(bitwise_equal(w_t[0], w_t_cpu)) << "w_t vs CPU";
      }
    }
  }
}

// An uninitialised device array of n T's, freed on scope exit.
template <class T>
class DeviceArray {
 public:
  explicit DeviceArray(int64_t n) : n_(n), p_(static_cast<T*>(device_malloc(std::max<size_t>(bytes(), 1)))) {}
  ~DeviceArray() { device_free_nothrow(p_); }
  DeviceArray(const DeviceArray&) = delete;
  DeviceArray& operator=(const DeviceArray&) = delete;
  T* get() const { return p_; }
  void upload(const std::vector<T>& host_values) {
    ASSERT_EQ(static_cast<int64_t>(host_values.size()), n_);
    device_copy(p_, Device::CUDA, host_values.data(), Device::CPU, bytes());
  }
  std::vector<T> download() const {
    std::vector<T> out(static_cast<size_t>(n_));
    device_copy(out.data(), Device::CPU, p_, Device::CUDA, bytes());
    return out;
  }

 private:
  size_t bytes() const { return static_cast<size_t>(n_) * sizeof(T); }
  int64_t n_;
  T* p_;
};

template <class T>
::testing::AssertionResult same_bytes(const std::vector<T>& got, const std::vector<T>& want, const char* what) {
  if (got.size() != want.size()) return ::testing::AssertionFailure() << what << ": sizes differ";
  for (size_t i = 0; i < got.size(); ++i)
    if (std::memcmp(&got[i], &want[i], sizeof(T)) != 0)
      return ::testing::AssertionFailure() << what << ": first difference at [" << i << "] of " << got.size();
  return ::testing::AssertionSuccess();
}

struct MultiSpec {
  int64_t n;
  ThresholdMode mode;
  float t;
  double r;
};

// The multi-tensor pass with bf16 w_t against the same pass with f32 w_t: codes, D and TWN scale
// bitwise the same, w_t_bf16 == round_bf16(w_t) bitwise, repeatable; and the layer validation.
TEST(GpuBf16, TtqMultiTensorBf16WeightsMatchF32Pass) {
  if (cuda_device_count() == 0) GTEST_SKIP() << cuda_device_summary();
  const std::vector<MultiSpec> specs = {
      {3 * 3 * 64 * 64, ThresholdMode::Max, 0.05f, 0.0}, {1000, ThresholdMode::Twn, 0.0f, 0.0},
      {4096 + 7, ThresholdMode::Sparsity, 0.0f, 0.4},    {7, ThresholdMode::Max, 0.2f, 0.0},
      {70000, ThresholdMode::Twn, 0.0f, 0.0},           {1, ThresholdMode::Sparsity, 0.0f, 0.5},
      {0, ThresholdMode::Max, 0.05f, 0.0},              {3 * 3 * 128 * 64, ThresholdMode::Max, 0.07f, 0.0},
  };
  std::vector<int64_t> off{0};
  for (const MultiSpec& s : specs) off.push_back(off.back() + s.n);
  const int64_t total = off.back();
  const int64_t layers = static_cast<int64_t>(specs.size());
  enum { kD, kTwn, kWp, kWn, kScalars };

  std::vector<float> w(static_cast<size_t>(total));
  testing::fill_random(w.data(), total, 900);
  std::vector<float> scalars0(static_cast<size_t>(layers * kScalars), -7.0f);
  for (int64_t l = 0; l < layers; ++l) {
    scalars0[static_cast<size_t>(l * kScalars + kWp)] = 1.0f + 0.05f * static_cast<float>(l);
    scalars0[static_cast<size_t>(l * kScalars + kWn)] = 0.6f + 0.03f * static_cast<float>(l);
  }
  DeviceArray<float> w_dev(total), w_t32(total), sc32(layers * kScalars), sc16(layers * kScalars);
  DeviceArray<bf16> w_t16(total);
  DeviceArray<int8_t> codes32(total), codes16(total);
  w_dev.upload(w);

  auto make_layers = [&](bool bf16_out, float* scalars, int8_t* codes) {
    std::vector<cuda::TtqMultiLayer> out;
    for (int64_t l = 0; l < layers; ++l) {
      const MultiSpec& s = specs[static_cast<size_t>(l)];
      const bool twn = s.mode == ThresholdMode::Twn;
      cuda::TtqMultiLayer layer;
      layer.w = w_dev.get() + off[static_cast<size_t>(l)];
      layer.n = s.n;
      if (bf16_out)
        layer.w_t_bf16 = w_t16.get() + off[static_cast<size_t>(l)];
      else
        layer.w_t = w_t32.get() + off[static_cast<size_t>(l)];
      layer.codes = codes + off[static_cast<size_t>(l)];
      layer.wp = twn ? nullptr : scalars + l * kScalars + kWp;
      layer.wn = twn ? nullptr : scalars + l * kScalars + kWn;
      layer.d = scalars + l * kScalars + kD;
      layer.twn_scale = scalars + l * kScalars + kTwn;
      layer.mode = s.mode;
      layer.t = s.t;
      layer.r = s.r;
      out.push_back(layer);
    }
    return out;
  };

  sc32.upload(scalars0);
  cuda::TtqMultiTensor f32_pass(make_layers(false, sc32.get(), codes32.get()));
  f32_pass.forward(cudaStreamPerThread);
  const std::vector<float> w_t_want = w_t32.download();
  const std::vector<int8_t> codes_want = codes32.download();
  const std::vector<float> scalars_want = sc32.download();
  std::vector<bf16> w_t16_want(w_t_want.size());
  for (size_t i = 0; i < w_t_want.size(); ++i) w_t16_want[i] = to_bf16(w_t_want[i]);

  cuda::TtqMultiTensor bf16_pass(make_layers(true, sc16.get(), codes16.get()));
  for (int run = 0; run < 2; ++run) {
    SCOPED_TRACE("run " + std::to_string(run));
    sc16.upload(scalars0);
    w_t16.upload(std::vector<bf16>(static_cast<size_t>(total), to_bf16(-7.0f)));
    codes16.upload(std::vector<int8_t>(static_cast<size_t>(total), int8_t{0x55}));
    bf16_pass.forward(cudaStreamPerThread);
    EXPECT_TRUE(same_bytes(sc16.download(), scalars_want, "D, TWN scale, Wp, Wn"));
    EXPECT_TRUE(same_bytes(codes16.download(), codes_want, "codes"));
    EXPECT_TRUE(same_bytes(w_t16.download(), w_t16_want, "w_t_bf16 vs round_bf16(w_t)"));
  }

  // Exactly one of w_t and w_t_bf16 per non-empty layer.
  auto build = [](std::vector<cuda::TtqMultiLayer> l) { cuda::TtqMultiTensor x(std::move(l)); };
  std::vector<cuda::TtqMultiLayer> both = make_layers(false, sc32.get(), codes32.get());
  both[0].w_t_bf16 = w_t16.get();
  EXPECT_THROW(build(both), Error);
  std::vector<cuda::TtqMultiLayer> neither = make_layers(true, sc32.get(), codes32.get());
  neither[3].w_t_bf16 = nullptr;
  EXPECT_THROW(build(neither), Error);
}

}  // namespace
}  // namespace ttq

#else  // !TTQ_HAVE_CUDA

TEST(GpuBf16, NotBuilt) { GTEST_SKIP() << "built without the CUDA backend"; }

#endif
