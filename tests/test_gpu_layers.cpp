// The cuDNN/cuBLAS layer ops (kernels/cuda/ops_cudnn.cpp, kernels/cuda/ops_cublas.cpp) against
// the reference kernels (kernels/cpu/ops_ref.h): convolution (strides, asymmetric padding,
// groups, with and without bias), pooling (max with ties, average including and excluding
// padding, symmetric and asymmetric padding), batch norm (2-d and 1-d; training, inference,
// backward) and Linear (with and without bias, with and without dx). Every op runs twice to check
// that results are bitwise identical (deterministic algorithms), and gradient outputs start
// filled with garbage to check they are overwritten. Tolerances: atol = rtol = 1e-4 *
// sqrt(reduction length). Skips where no GPU (or no CUDA build) exists.
#include <gtest/gtest.h>

#ifdef TTQ_HAVE_CUDA

#include <algorithm>
#include <cmath>
#include <cstring>
#include <ostream>
#include <string>
#include <vector>

#include "kernels/cpu/ops_ref.h"
#include "kernels/cuda/ops_cuda.h"
#include "kernels/device.h"
#include "kernels/ops.h"
#include "tests/test_util.h"

namespace ttq {
namespace {

Tensor gpu(const Tensor& t) { return t.to(Device::CUDA); }
Tensor cpu(const Tensor& t) { return t.to(Device::CPU); }
// A device tensor filled with a value no op produces by accident: outputs must overwrite it.
Tensor gpu_garbage(const Shape& s) { return gpu(Tensor::full(s, 7.25f)); }
Tensor cpu_empty(const Shape& s) { return Tensor::empty(s); }

double tol(int64_t reduction) { return 1e-4 * std::sqrt(static_cast<double>(std::max<int64_t>(reduction, 1))); }

::testing::AssertionResult matches(const Tensor& got_device, const Tensor& want, int64_t reduction) {
  const Tensor got = cpu(got_device);
  return testing::all_close(got, want, tol(reduction), tol(reduction));
}

// Bitwise equality of two device tensors, naming the first difference.
::testing::AssertionResult same_bits(const Tensor& a_device, const Tensor& b_device) {
  const Tensor a = cpu(a_device), b = cpu(b_device);
  if (a.numel() != b.numel()) return ::testing::AssertionFailure() << "sizes " << a.numel() << " vs " << b.numel();
  const float* pa = a.data<float>();
  const float* pb = b.data<float>();
  for (int64_t i = 0; i < a.numel(); ++i)
    if (std::memcmp(pa + i, pb + i, sizeof(float)) != 0)
      return ::testing::AssertionFailure() << "runs differ at [" << i << "]: " << pa[i] << " vs " << pb[i];
  return ::testing::AssertionSuccess();
}

// Exact equality with a host tensor.
::testing::AssertionResult exactly(const Tensor& got_device, const Tensor& want) {
  const Tensor got = cpu(got_device);
  const float* pg = got.data<float>();
  const float* pw = want.data<float>();
  for (int64_t i = 0; i < want.numel(); ++i)
    if (!(pg[i] == pw[i] || (std::isnan(pg[i]) && std::isnan(pw[i]))))
      return ::testing::AssertionFailure() << "first difference at [" << i << "]: " << pg[i] << " vs " << pw[i];
  return ::testing::AssertionSuccess();
}

float* dp(const Tensor& t) { return t.data<float>(); }

// A CUDA build without cuDNN or cuBLAS keeps refusing stubs for these ops.
#ifdef TTQ_HAVE_CUDNN
#define TTQ_REQUIRE_CUDNN() (void)0
#else
#define TTQ_REQUIRE_CUDNN() GTEST_SKIP() << "built without cuDNN"
#endif
#ifdef TTQ_HAVE_CUBLAS
#define TTQ_REQUIRE_CUBLAS() (void)0
#else
#define TTQ_REQUIRE_CUBLAS() GTEST_SKIP() << "built without cuBLAS"
#endif

// ---- convolution ----------------------------------------------------------------------------

struct ConvCase {
  const char* name;
  Conv2dShape s;
  bool bias;
};

Conv2dShape conv(int64_t n, int64_t c_in, int64_t h, int64_t w, int64_t c_out, int64_t kh, int64_t kw, int64_t sh,
                 int64_t sw, int64_t pt, int64_t pl, int64_t pb, int64_t pr, int64_t groups) {
  Conv2dShape s;
  s.n = n, s.c_in = c_in, s.h = h, s.w = w, s.c_out = c_out, s.kh = kh, s.kw = kw;
  s.stride_h = sh, s.stride_w = sw, s.pad_t = pt, s.pad_l = pl, s.pad_b = pb, s.pad_r = pr, s.groups = groups;
  return s;
}

Conv2dShape conv_same(int64_t n, int64_t c_in, int64_t h, int64_t w, int64_t c_out, int64_t k, int64_t stride,
                      int64_t groups) {
  Conv2dShape s = conv(n, c_in, h, w, c_out, k, k, stride, stride, 0, 0, 0, 0, groups);
  set_padding(s, true, 0);
  return s;
}

const ConvCase kConvCases[] = {
    {"k3_s1_pad1_bias", conv(2, 3, 7, 9, 4, 3, 3, 1, 1, 1, 1, 1, 1, 1), true},
    {"k3_s2_same_asym_groups2", conv_same(2, 4, 8, 8, 6, 3, 2, 2), false},
    {"k5x3_s2x1_asym_both_groups3_bias", conv(1, 6, 10, 7, 6, 5, 3, 2, 1, 2, 1, 1, 0, 3), true},
    {"depthwise_k3_asym", conv(2, 8, 9, 6, 8, 3, 3, 1, 1, 1, 0, 2, 1, 8), true},
    {"k1_s2_nopad", conv(3, 5, 9, 9, 7, 1, 1, 2, 2, 0, 0, 0, 0, 1), true},
    {"k2_rows_in_padding", conv(2, 3, 5, 5, 2, 2, 2, 1, 1, 3, 0, 0, 2, 1), true},
    {"k4_s2_same_even", conv_same(2, 3, 10, 11, 5, 4, 2, 1), true},
    {"k3_s1_pad1_wide", conv(4, 16, 16, 16, 32, 3, 3, 1, 1, 1, 1, 1, 1, 1), false},
    {"k7_s2_pad3_stem", conv(2, 3, 32, 32, 16, 7, 7, 2, 2, 3, 3, 3, 3, 1), true},
};

void PrintTo(const ConvCase& c, std::ostream* os) { *os << c.name << " " << c.s.str() << (c.bias ? " bias" : ""); }

class GpuConv : public ::testing::TestWithParam<ConvCase> {};

TEST_P(GpuConv, MatchesReferenceAndRepeats) {
  if (cuda_device_count() == 0) GTEST_SKIP() << cuda_device_summary();
  TTQ_REQUIRE_CUDNN();
  const ConvCase& c = GetParam();
  const Conv2dShape& s = c.s;
  s.validate("test");
  const Shape xs{s.n, s.c_in, s.h, s.w}, ws{s.c_out, s.c_in_per_group(), s.kh, s.kw}, ys{s.n, s.c_out, s.out_h(), s.out_w()};
  const Tensor x = testing::random_tensor(xs, 11), w = testing::random_tensor(ws, 12);
  const Tensor b = testing::random_tensor({s.c_out}, 13), dy = testing::random_tensor(ys, 14);

  // Reference.
  Tensor y_ref = cpu_empty(ys), dx_ref = cpu_empty(xs), dw_ref = cpu_empty(ws), db_ref = cpu_empty({s.c_out});
  ref::conv2d_forward(s, dp(x), dp(w), c.bias ? dp(b) : nullptr, dp(y_ref));
  ref::conv2d_backward_data(s, dp(dy), dp(w), dp(dx_ref));
  ref::conv2d_backward_weights(s, dp(x), dp(dy), dp(dw_ref), c.bias ? dp(db_ref) : nullptr);

  const Tensor xg = gpu(x), wg = gpu(w), bg = gpu(b), dyg = gpu(dy);
  Tensor y[2], dx[2], dw[2], db[2];
  for (int run = 0; run < 2; ++run) {
    y[run] = gpu_garbage(ys);
    dx[run] = gpu_garbage(xs);
    dw[run] = gpu_garbage(ws);
    db[run] = gpu_garbage({s.c_out});
    cuda::conv2d_forward(s, dp(xg), dp(wg), c.bias ? dp(bg) : nullptr, dp(y[run]));
    cuda::conv2d_backward_data(s, dp(dyg), dp(wg), dp(dx[run]));
    cuda::conv2d_backward_weights(s, dp(xg), dp(dyg), dp(dw[run]), c.bias ? dp(db[run]) : nullptr);
  }
  const int64_t k_fwd = s.c_in_per_group() * s.kh * s.kw, k_data = s.c_out_per_group() * s.kh * s.kw;
  const int64_t k_weights = s.n * s.out_h() * s.out_w();
  EXPECT_TRUE(matches(y[0], y_ref, k_fwd)) << "forward " << s.str();
  EXPECT_TRUE(matches(dx[0], dx_ref, k_data)) << "backward data " << s.str();
  EXPECT_TRUE(matches(dw[0], dw_ref, k_weights)) << "backward weights " << s.str();
  if (c.bias) {
    EXPECT_TRUE(matches(db[0], db_ref, k_weights)) << "bias gradient " << s.str();
  }
  EXPECT_TRUE(same_bits(y[0], y[1])) << "forward " << s.str();
  EXPECT_TRUE(same_bits(dx[0], dx[1])) << "backward data " << s.str();
  EXPECT_TRUE(same_bits(dw[0], dw[1])) << "backward weights " << s.str();
  if (c.bias) {
    EXPECT_TRUE(same_bits(db[0], db[1])) << "bias gradient " << s.str();
  }
}

INSTANTIATE_TEST_SUITE_P(Shapes, GpuConv, ::testing::ValuesIn(kConvCases),
                         [](const ::testing::TestParamInfo<ConvCase>& info) { return std::string(info.param.name); });

// The tensor-level ops dispatch CUDA tensors to the CUDA kernels.
TEST(GpuConvDispatch, TensorOpsRunOnTheGpu) {
  if (cuda_device_count() == 0) GTEST_SKIP() << cuda_device_summary();
  TTQ_REQUIRE_CUDNN();
  const Conv2dShape s = conv_same(2, 4, 6, 6, 4, 3, 1, 2);
  const Tensor x = testing::random_tensor({s.n, s.c_in, s.h, s.w}, 21);
  const Tensor w = testing::random_tensor({s.c_out, s.c_in_per_group(), s.kh, s.kw}, 22);
  const Tensor b = testing::random_tensor({s.c_out}, 23);
  Tensor y_ref = cpu_empty({s.n, s.c_out, s.out_h(), s.out_w()});
  ops::conv2d_forward(s, x, w, &b, y_ref);
  const Tensor xg = gpu(x), wg = gpu(w), bg = gpu(b);
  Tensor yg = gpu_garbage(y_ref.shape());
  ops::conv2d_forward(s, xg, wg, &bg, yg);
  EXPECT_EQ(yg.device(), Device::CUDA);
  EXPECT_TRUE(matches(yg, y_ref, s.c_in_per_group() * s.kh * s.kw));
}

// ---- pooling --------------------------------------------------------------------------------

struct PoolCase {
  const char* name;
  PoolKind kind;
  Pool2dShape s;
};

Pool2dShape pool(int64_t n, int64_t c, int64_t h, int64_t w, int64_t kh, int64_t kw, int64_t sh, int64_t sw,
                 int64_t pt, int64_t pl, int64_t pb, int64_t pr, bool include_pad) {
  Pool2dShape s;
  s.n = n, s.c = c, s.h = h, s.w = w, s.kh = kh, s.kw = kw, s.stride_h = sh, s.stride_w = sw;
  s.pad_t = pt, s.pad_l = pl, s.pad_b = pb, s.pad_r = pr, s.count_include_pad = include_pad;
  return s;
}

Pool2dShape pool_same(int64_t n, int64_t c, int64_t h, int64_t w, int64_t k, int64_t stride, bool include_pad) {
  Pool2dShape s = pool(n, c, h, w, k, k, stride, stride, 0, 0, 0, 0, include_pad);
  set_padding(s, true, 0);
  return s;
}

const PoolCase kPoolCases[] = {
    {"max_k2_s2", PoolKind::Max, pool(2, 3, 8, 8, 2, 2, 2, 2, 0, 0, 0, 0, true)},
    {"max_k3_s2_pad1", PoolKind::Max, pool(2, 3, 9, 9, 3, 3, 2, 2, 1, 1, 1, 1, true)},
    {"max_k3_s2_same_asym", PoolKind::Max, pool_same(2, 4, 8, 8, 3, 2, true)},
    {"max_k3_s1_asym_both", PoolKind::Max, pool(1, 2, 7, 6, 3, 3, 1, 1, 2, 0, 1, 2, true)},
    {"max_k2x3_s1x2_asym", PoolKind::Max, pool(2, 2, 6, 9, 2, 3, 1, 2, 1, 0, 0, 2, true)},
    {"avg_k2_s2", PoolKind::Avg, pool(2, 3, 8, 8, 2, 2, 2, 2, 0, 0, 0, 0, true)},
    {"avg_k3_s2_pad1_include", PoolKind::Avg, pool(2, 3, 9, 9, 3, 3, 2, 2, 1, 1, 1, 1, true)},
    {"avg_k3_s2_pad1_exclude", PoolKind::Avg, pool(2, 3, 9, 9, 3, 3, 2, 2, 1, 1, 1, 1, false)},
    {"avg_k3_s2_same_asym_include", PoolKind::Avg, pool_same(2, 4, 8, 8, 3, 2, true)},
    {"avg_k3_s2_same_asym_exclude", PoolKind::Avg, pool_same(2, 4, 8, 8, 3, 2, false)},
    {"avg_k3_s1_asym_both_include", PoolKind::Avg, pool(1, 2, 7, 6, 3, 3, 1, 1, 2, 0, 1, 2, true)},
    {"avg_k3_s1_asym_both_exclude", PoolKind::Avg, pool(1, 2, 7, 6, 3, 3, 1, 1, 2, 0, 1, 2, false)},
    {"avg_k2x3_s1x2_asym_exclude", PoolKind::Avg, pool(2, 2, 6, 9, 2, 3, 1, 2, 1, 0, 0, 2, false)},
};

void PrintTo(const PoolCase& c, std::ostream* os) {
  *os << c.name << (c.kind == PoolKind::Max ? " max " : " avg ") << c.s.str()
      << (c.s.count_include_pad ? " count_include_pad" : "");
}

class GpuPool : public ::testing::TestWithParam<PoolCase> {};

TEST_P(GpuPool, MatchesReferenceAndRepeats) {
  if (cuda_device_count() == 0) GTEST_SKIP() << cuda_device_summary();
  TTQ_REQUIRE_CUDNN();
  const PoolCase& c = GetParam();
  const Pool2dShape& s = c.s;
  s.validate("test");
  const Shape xs{s.n, s.c, s.h, s.w}, ys{s.n, s.c, s.out_h(), s.out_w()};
  Tensor x = testing::random_tensor(xs, 31);
  if (c.kind == PoolKind::Max) {
    // A few levels only: windows with several equal maxima check first-maximum routing.
    float* p = dp(x);
    for (int64_t i = 0; i < x.numel(); ++i) p[i] = std::round(p[i] * 2.0f) / 2.0f;
  }
  const Tensor dy = testing::random_tensor(ys, 32);
  Tensor y_ref = cpu_empty(ys), dx_ref = cpu_empty(xs);
  ref::pool2d_forward(c.kind, s, dp(x), dp(y_ref));
  ref::pool2d_backward(c.kind, s, dp(x), dp(dy), dp(dx_ref));

  const Tensor xg = gpu(x), dyg = gpu(dy);
  Tensor y[2], dx[2];
  for (int run = 0; run < 2; ++run) {
    y[run] = gpu_garbage(ys);
    dx[run] = gpu_garbage(xs);
    cuda::pool2d_forward(c.kind, s, dp(xg), dp(y[run]));
    cuda::pool2d_backward(c.kind, s, dp(xg), dp(dyg), dp(dx[run]));
  }
  if (c.kind == PoolKind::Max) {
    // A maximum is exact, and the gradient sums the same floats in the same order.
    EXPECT_TRUE(exactly(y[0], y_ref)) << "forward " << s.str();
    EXPECT_TRUE(exactly(dx[0], dx_ref)) << "backward " << s.str();
  } else {
    EXPECT_TRUE(matches(y[0], y_ref, s.kh * s.kw)) << "forward " << s.str();
    EXPECT_TRUE(matches(dx[0], dx_ref, s.kh * s.kw)) << "backward " << s.str();
  }
  EXPECT_TRUE(same_bits(y[0], y[1])) << "forward " << s.str();
  EXPECT_TRUE(same_bits(dx[0], dx[1])) << "backward " << s.str();
}

INSTANTIATE_TEST_SUITE_P(Shapes, GpuPool, ::testing::ValuesIn(kPoolCases),
                         [](const ::testing::TestParamInfo<PoolCase>& info) { return std::string(info.param.name); });

// ---- batch norm -----------------------------------------------------------------------------

struct BnCase {
  const char* name;
  BatchNormShape s;
};

const BnCase kBnCases[] = {
    {"bn2d_small", {4, 5, 6 * 7}},
    {"bn2d_wide", {8, 3, 32 * 32}},
    {"bn2d_many_channels", {2, 64, 4 * 4}},
    {"bn1d", {16, 10, 1}},
    {"bn1d_batch2", {2, 7, 1}},
};

void PrintTo(const BnCase& c, std::ostream* os) { *os << c.name << " " << c.s.n << "x" << c.s.c << "x" << c.s.s; }

class GpuBatchNorm : public ::testing::TestWithParam<BnCase> {};

TEST_P(GpuBatchNorm, TrainingForwardMatchesReferenceAndRepeats) {
  if (cuda_device_count() == 0) GTEST_SKIP() << cuda_device_summary();
  TTQ_REQUIRE_CUDNN();
  const BatchNormShape& s = GetParam().s;
  const float eps = 1e-5f, momentum = 0.1f;
  const Shape xs{s.n, s.c, s.s}, cs{s.c};
  // An offset and scale per tensor, so mean and variance are far from 0 and 1.
  Tensor x = testing::random_tensor(xs, 41, -2.0f, 3.0f);
  const Tensor gamma = testing::random_tensor(cs, 42, 0.5f, 1.5f), beta = testing::random_tensor(cs, 43);
  const Tensor rm0 = testing::random_tensor(cs, 44), rv0 = testing::random_tensor(cs, 45, 0.5f, 2.0f);

  Tensor y_ref = cpu_empty(xs), mean_ref = cpu_empty(cs), var_ref = cpu_empty(cs), is_ref = cpu_empty(cs);
  ref::batchnorm_forward_train(s, dp(x), dp(gamma), dp(beta), eps, dp(y_ref), dp(mean_ref), dp(var_ref), dp(is_ref));
  // Running statistics as the CPU path updates them (kernels/ops.cpp), unbiased variance.
  Tensor rm_ref = cpu_empty(cs), rv_ref = cpu_empty(cs);
  const double m = static_cast<double>(s.n * s.s);
  for (int64_t c = 0; c < s.c; ++c) {
    dp(rm_ref)[c] = (1.0f - momentum) * dp(rm0)[c] + momentum * dp(mean_ref)[c];
    dp(rv_ref)[c] = static_cast<float>((1.0 - momentum) * dp(rv0)[c] + momentum * dp(var_ref)[c] * m / (m - 1.0));
  }

  const Tensor xg = gpu(x), gg = gpu(gamma), bg = gpu(beta);
  Tensor y[2], mean[2], var[2], is[2], rm[2], rv[2];
  for (int run = 0; run < 2; ++run) {
    y[run] = gpu_garbage(xs);
    mean[run] = gpu_garbage(cs);
    var[run] = gpu_garbage(cs);
    is[run] = gpu_garbage(cs);
    rm[run] = gpu(rm0);
    rv[run] = gpu(rv0);
    cuda::batchnorm_forward_train(s, dp(xg), dp(gg), dp(bg), eps, momentum, dp(rm[run]), dp(rv[run]), dp(y[run]),
                                  dp(mean[run]), dp(var[run]), dp(is[run]));
  }
  const int64_t k = s.n * s.s;
  EXPECT_TRUE(matches(y[0], y_ref, k)) << "y";
  EXPECT_TRUE(matches(mean[0], mean_ref, k)) << "mean";
  EXPECT_TRUE(matches(var[0], var_ref, k)) << "biased variance";
  EXPECT_TRUE(matches(is[0], is_ref, k)) << "inverse std";
  EXPECT_TRUE(matches(rm[0], rm_ref, k)) << "running mean";
  EXPECT_TRUE(matches(rv[0], rv_ref, k)) << "running variance (unbiased)";
  for (Tensor* t : {y, mean, var, is, rm, rv}) EXPECT_TRUE(same_bits(t[0], t[1]));
}

TEST_P(GpuBatchNorm, InferenceMatchesReference) {
  if (cuda_device_count() == 0) GTEST_SKIP() << cuda_device_summary();
  TTQ_REQUIRE_CUDNN();
  const BatchNormShape& s = GetParam().s;
  const float eps = 1e-3f;
  const Shape xs{s.n, s.c, s.s}, cs{s.c};
  const Tensor x = testing::random_tensor(xs, 51, -2.0f, 3.0f);
  const Tensor gamma = testing::random_tensor(cs, 52, 0.5f, 1.5f), beta = testing::random_tensor(cs, 53);
  const Tensor rm = testing::random_tensor(cs, 54), rv = testing::random_tensor(cs, 55, 0.5f, 2.0f);
  Tensor y_ref = cpu_empty(xs);
  ref::batchnorm_forward_infer(s, dp(x), dp(gamma), dp(beta), dp(rm), dp(rv), eps, dp(y_ref));
  const Tensor xg = gpu(x), gg = gpu(gamma), bg = gpu(beta), rmg = gpu(rm), rvg = gpu(rv);
  Tensor y = gpu_garbage(xs);
  cuda::batchnorm_forward_infer(s, dp(xg), dp(gg), dp(bg), dp(rmg), dp(rvg), eps, dp(y));
  EXPECT_TRUE(matches(y, y_ref, 1));
}

TEST_P(GpuBatchNorm, BackwardMatchesReferenceAndRepeats) {
  if (cuda_device_count() == 0) GTEST_SKIP() << cuda_device_summary();
  TTQ_REQUIRE_CUDNN();
  const BatchNormShape& s = GetParam().s;
  const float eps = 1e-5f;
  const Shape xs{s.n, s.c, s.s}, cs{s.c};
  const Tensor x = testing::random_tensor(xs, 61, -2.0f, 3.0f), dy = testing::random_tensor(xs, 62);
  const Tensor gamma = testing::random_tensor(cs, 63, 0.5f, 1.5f), beta = testing::random_tensor(cs, 64);
  // Saved statistics from the reference forward pass (what the layer hands to the backward).
  Tensor y_ref = cpu_empty(xs), mean = cpu_empty(cs), var = cpu_empty(cs), inv_std = cpu_empty(cs);
  ref::batchnorm_forward_train(s, dp(x), dp(gamma), dp(beta), eps, dp(y_ref), dp(mean), dp(var), dp(inv_std));
  Tensor dx_ref = cpu_empty(xs), dg_ref = cpu_empty(cs), db_ref = cpu_empty(cs);
  ref::batchnorm_backward(s, dp(x), dp(dy), dp(gamma), dp(mean), dp(inv_std), dp(dx_ref), dp(dg_ref), dp(db_ref));

  const Tensor xg = gpu(x), dyg = gpu(dy), gg = gpu(gamma), mg = gpu(mean), isg = gpu(inv_std);
  Tensor dx[2], dg[2], db[2];
  for (int run = 0; run < 2; ++run) {
    dx[run] = gpu_garbage(xs);
    dg[run] = gpu_garbage(cs);
    db[run] = gpu_garbage(cs);
    cuda::batchnorm_backward(s, dp(xg), dp(dyg), dp(gg), dp(mg), dp(isg), eps, dp(dx[run]), dp(dg[run]), dp(db[run]));
  }
  const int64_t k = s.n * s.s;
  EXPECT_TRUE(matches(dx[0], dx_ref, k)) << "dx";
  EXPECT_TRUE(matches(dg[0], dg_ref, k)) << "dgamma";
  EXPECT_TRUE(matches(db[0], db_ref, k)) << "dbeta";
  for (Tensor* t : {dx, dg, db}) EXPECT_TRUE(same_bits(t[0], t[1]));
}

INSTANTIATE_TEST_SUITE_P(Shapes, GpuBatchNorm, ::testing::ValuesIn(kBnCases),
                         [](const ::testing::TestParamInfo<BnCase>& info) { return std::string(info.param.name); });

// ---- linear ---------------------------------------------------------------------------------

struct LinearCase {
  const char* name;
  int64_t n, in, out;
  bool bias, want_dx;
};

const LinearCase kLinearCases[] = {
    {"one_by_one", 1, 1, 1, true, true},
    {"small_bias", 5, 7, 3, true, true},
    {"small_nobias", 5, 7, 3, false, true},
    {"classifier", 64, 300, 10, true, true},
    {"odd_sizes_no_dx", 3, 17, 129, true, false},
    {"wide_nobias_no_dx", 33, 257, 65, false, false},
};

void PrintTo(const LinearCase& c, std::ostream* os) {
  *os << c.name << " n=" << c.n << " in=" << c.in << " out=" << c.out << (c.bias ? " bias" : "") << (c.want_dx ? " dx" : "");
}

class GpuLinear : public ::testing::TestWithParam<LinearCase> {};

TEST_P(GpuLinear, MatchesReferenceAndRepeats) {
  if (cuda_device_count() == 0) GTEST_SKIP() << cuda_device_summary();
  TTQ_REQUIRE_CUBLAS();
  const LinearCase& c = GetParam();
  const Shape xs{c.n, c.in}, ws{c.out, c.in}, ys{c.n, c.out}, bs{c.out};
  const Tensor x = testing::random_tensor(xs, 71), w = testing::random_tensor(ws, 72);
  const Tensor b = testing::random_tensor(bs, 73), dy = testing::random_tensor(ys, 74);
  Tensor y_ref = cpu_empty(ys), dx_ref = cpu_empty(xs), dw_ref = cpu_empty(ws), db_ref = cpu_empty(bs);
  ref::linear_forward(c.n, c.in, c.out, dp(x), dp(w), c.bias ? dp(b) : nullptr, dp(y_ref));
  ref::linear_backward(c.n, c.in, c.out, dp(x), dp(w), dp(dy), dp(dx_ref), dp(dw_ref), c.bias ? dp(db_ref) : nullptr);

  const Tensor xg = gpu(x), wg = gpu(w), bg = gpu(b), dyg = gpu(dy);
  Tensor y[2], dx[2], dw[2], db[2];
  for (int run = 0; run < 2; ++run) {
    y[run] = gpu_garbage(ys);
    dx[run] = gpu_garbage(xs);
    dw[run] = gpu_garbage(ws);
    db[run] = gpu_garbage(bs);
    cuda::linear_forward(c.n, c.in, c.out, dp(xg), dp(wg), c.bias ? dp(bg) : nullptr, dp(y[run]));
    cuda::linear_backward(c.n, c.in, c.out, dp(xg), dp(wg), dp(dyg), c.want_dx ? dp(dx[run]) : nullptr, dp(dw[run]),
                          c.bias ? dp(db[run]) : nullptr);
  }
  EXPECT_TRUE(matches(y[0], y_ref, c.in)) << "forward";
  EXPECT_TRUE(matches(dw[0], dw_ref, c.n)) << "weight gradient";
  EXPECT_TRUE(same_bits(y[0], y[1])) << "forward";
  EXPECT_TRUE(same_bits(dw[0], dw[1])) << "weight gradient";
  if (c.want_dx) {
    EXPECT_TRUE(matches(dx[0], dx_ref, c.out)) << "input gradient";
    EXPECT_TRUE(same_bits(dx[0], dx[1])) << "input gradient";
  } else {
    EXPECT_TRUE(exactly(dx[0], Tensor::full(xs, 7.25f))) << "dx == null must leave the buffer alone";
  }
  if (c.bias) {
    EXPECT_TRUE(matches(db[0], db_ref, c.n)) << "bias gradient";
    EXPECT_TRUE(same_bits(db[0], db[1])) << "bias gradient";
  }
}

INSTANTIATE_TEST_SUITE_P(Shapes, GpuLinear, ::testing::ValuesIn(kLinearCases),
                         [](const ::testing::TestParamInfo<LinearCase>& info) { return std::string(info.param.name); });

// The tensor-level op dispatches CUDA tensors to cuBLAS.
TEST(GpuLinearDispatch, TensorOpsRunOnTheGpu) {
  if (cuda_device_count() == 0) GTEST_SKIP() << cuda_device_summary();
  TTQ_REQUIRE_CUBLAS();
  const Tensor x = testing::random_tensor({4, 9}, 81), w = testing::random_tensor({5, 9}, 82);
  const Tensor b = testing::random_tensor({5}, 83);
  Tensor y_ref = cpu_empty({4, 5});
  ops::linear_forward(x, w, &b, y_ref);
  const Tensor xg = gpu(x), wg = gpu(w), bg = gpu(b);
  Tensor yg = gpu_garbage({4, 5});
  ops::linear_forward(xg, wg, &bg, yg);
  EXPECT_EQ(yg.device(), Device::CUDA);
  EXPECT_TRUE(matches(yg, y_ref, 9));
}

}  // namespace
}  // namespace ttq

#else  // !TTQ_HAVE_CUDA

TEST(GpuLayers, NotBuilt) { GTEST_SKIP() << "built without the CUDA backend"; }

#endif
