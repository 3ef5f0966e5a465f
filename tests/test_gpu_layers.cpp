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

#include <cmath>
#include <vector>

#include "kernels/cpu/ops_ref.h"
#include "kernels/cuda/ops_cuda.h"
#include "kernels/device.h"
#include "kernels/ops.h"
#include "tests/gpu_test_util.h"
#include "tests/test_util.h"

namespace ttq {
namespace {

using namespace gpu_test;

// A garbage-filled f32 device tensor (gpu_test::gpu_garbage).
Tensor gpu_garbage(const Shape& s) { return gpu_test::gpu_garbage(s, DType::F32); }
Tensor cpu_empty(const Shape& s) { return Tensor::empty(s); }

::testing::AssertionResult matches(const Tensor& got_device, const Tensor& want, int64_t reduction) {
  const Tensor got = host(got_device);
  return testing::all_close(got, want, tol(reduction), tol(reduction));
}

// Exact equality with a host tensor.
::testing::AssertionResult exactly(const Tensor& got_device, const Tensor& want) {
  const Tensor got = host(got_device);
  const float* pg = got.data<float>();
  const float* pw = want.data<float>();
  for (int64_t i = 0; i < want.numel(); ++i)
    if (!(pg[i] == pw[i] || (std::isnan(pg[i]) && std::isnan(pw[i]))))
      return ::testing::AssertionFailure() << "first difference at [" << i << "]: " << pg[i] << " vs " << pw[i];
  return ::testing::AssertionSuccess();
}

float* dp(const Tensor& t) { return t.data_ptr<float>(); }  // for a CUDA kernel
float* hp(const Tensor& t) { return t.data<float>(); }      // host code: a CPU tensor

// ---- convolution ----------------------------------------------------------------------------

const std::vector<ConvCase> kConvCases =
    conv_cases({{"k2_rows_in_padding", conv(2, 3, 5, 5, 2, 2, 2, 1, 1, 3, 0, 0, 2, 1), true}});

class GpuConv : public GpuCaseTest<ConvCase> {};

TEST_P(GpuConv, MatchesReferenceAndRepeats) {
  TTQ_REQUIRE_CUDNN();
  const ConvCase& c = GetParam();
  const Conv2dShape& s = c.s;
  const auto [xs, ws, ys, bs] = c.shapes();
  const Tensor x = testing::random_tensor(xs, 11), w = testing::random_tensor(ws, 12);
  const Tensor b = testing::random_tensor(bs, 13), dy = testing::random_tensor(ys, 14);

  // Reference.
  Tensor y_ref = cpu_empty(ys), dx_ref = cpu_empty(xs), dw_ref = cpu_empty(ws), db_ref = cpu_empty(bs);
  ref::conv2d_forward(s, hp(x), hp(w), c.bias ? hp(b) : nullptr, hp(y_ref));
  ref::conv2d_backward_data(s, hp(dy), hp(w), hp(dx_ref));
  ref::conv2d_backward_weights(s, hp(x), hp(dy), hp(dw_ref), c.bias ? hp(db_ref) : nullptr);

  const Tensor xg = gpu(x), wg = gpu(w), bg = gpu(b), dyg = gpu(dy);
  Runs y(ys, DType::F32), dx(xs, DType::F32), dw(ws, DType::F32), db(bs, DType::F32);
  for (int run = 0; run < 2; ++run) {
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
  EXPECT_TRUE(y.repeats()) << "forward " << s.str();
  EXPECT_TRUE(dx.repeats()) << "backward data " << s.str();
  EXPECT_TRUE(dw.repeats()) << "backward weights " << s.str();
  if (c.bias) {
    EXPECT_TRUE(db.repeats()) << "bias gradient " << s.str();
  }
}

INSTANTIATE_TEST_SUITE_P(Shapes, GpuConv, ::testing::ValuesIn(kConvCases), CaseName{});

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

const std::vector<PoolCase> kPoolCases = pool_cases({});

class GpuPool : public GpuCaseTest<PoolCase> {};

TEST_P(GpuPool, MatchesReferenceAndRepeats) {
  TTQ_REQUIRE_CUDNN();
  const PoolCase& c = GetParam();
  const Pool2dShape& s = c.s;
  const auto [xs, ys] = c.shapes();
  Tensor x = testing::random_tensor(xs, 31);
  if (c.kind == PoolKind::Max) {
    // A few levels only: windows with several equal maxima check first-maximum routing.
    float* p = hp(x);
    for (int64_t i = 0; i < x.numel(); ++i) p[i] = std::round(p[i] * 2.0f) / 2.0f;
  }
  const Tensor dy = testing::random_tensor(ys, 32);
  Tensor y_ref = cpu_empty(ys), dx_ref = cpu_empty(xs);
  ref::pool2d_forward(c.kind, s, hp(x), hp(y_ref));
  ref::pool2d_backward(c.kind, s, hp(x), hp(dy), hp(dx_ref));

  const Tensor xg = gpu(x), dyg = gpu(dy);
  Runs y(ys, DType::F32), dx(xs, DType::F32);
  for (int run = 0; run < 2; ++run) {
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
  EXPECT_TRUE(y.repeats()) << "forward " << s.str();
  EXPECT_TRUE(dx.repeats()) << "backward " << s.str();
}

INSTANTIATE_TEST_SUITE_P(Shapes, GpuPool, ::testing::ValuesIn(kPoolCases), CaseName{});

// ---- batch norm -----------------------------------------------------------------------------

const std::vector<BnCase> kBnCases = bn_cases({});

class GpuBatchNorm : public GpuCaseTest<BnCase> {};

// x of N x C x S, uniform in [-2, 3). With few values per channel (bn1d_batch2: 2) two of them may
// lie close, and then 1/std and everything scaled by it carry cuDNN's f32 rounding of the variance
// amplified far beyond the tolerance of so few terms: such channels get their values spread at
// least 0.5 apart (position in the channel plus a tenth of the random value).
Tensor bn_input(const Shape& xs, uint64_t seed) {
  Tensor x = testing::random_tensor(xs, seed, -2.0f, 3.0f);
  const int64_t n = xs[0], c = xs[1], sp = xs[2], m = n * sp;
  if (m >= 8) return x;
  float* p = x.data<float>();
  for (int64_t i = 0; i < n; ++i)
    for (int64_t ch = 0; ch < c; ++ch)
      for (int64_t j = 0; j < sp; ++j) {
        float& v = p[(i * c + ch) * sp + j];
        v = static_cast<float>(i * sp + j) - 0.5f * static_cast<float>(m) + 0.1f * v;
      }
  return x;
}

TEST_P(GpuBatchNorm, TrainingForwardMatchesReferenceAndRepeats) {
  TTQ_REQUIRE_CUDNN();
  const BatchNormShape& s = GetParam().s;
  const float eps = 1e-5f, momentum = 0.1f;
  const Shape xs{s.n, s.c, s.s}, cs{s.c};
  // An offset and scale per tensor, so mean and variance are far from 0 and 1.
  Tensor x = bn_input(xs, 41);
  const Tensor gamma = testing::random_tensor(cs, 42, 0.5f, 1.5f), beta = testing::random_tensor(cs, 43);
  const Tensor rm0 = testing::random_tensor(cs, 44), rv0 = testing::random_tensor(cs, 45, 0.5f, 2.0f);

  Tensor y_ref = cpu_empty(xs), mean_ref = cpu_empty(cs), var_ref = cpu_empty(cs), is_ref = cpu_empty(cs);
  ref::batchnorm_forward_train(s, hp(x), hp(gamma), hp(beta), eps, hp(y_ref), hp(mean_ref), hp(var_ref), hp(is_ref));
  // Running statistics as the CPU path updates them (kernels/ops.cpp), unbiased variance.
  Tensor rm_ref = cpu_empty(cs), rv_ref = cpu_empty(cs);
  const double m = static_cast<double>(s.n * s.s);
  for (int64_t c = 0; c < s.c; ++c) {
    hp(rm_ref)[c] = (1.0f - momentum) * hp(rm0)[c] + momentum * hp(mean_ref)[c];
    hp(rv_ref)[c] = static_cast<float>((1.0 - momentum) * hp(rv0)[c] + momentum * hp(var_ref)[c] * m / (m - 1.0));
  }

  const Tensor xg = gpu(x), gg = gpu(gamma), bg = gpu(beta);
  Runs y(xs, DType::F32), mean(cs, DType::F32), var(cs, DType::F32), is(cs, DType::F32), rm(rm0), rv(rv0);
  for (int run = 0; run < 2; ++run) {
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
  for (const Runs* t : {&y, &mean, &var, &is, &rm, &rv}) EXPECT_TRUE(t->repeats());
}

TEST_P(GpuBatchNorm, InferenceMatchesReference) {
  TTQ_REQUIRE_CUDNN();
  const BatchNormShape& s = GetParam().s;
  const float eps = 1e-3f;
  const Shape xs{s.n, s.c, s.s}, cs{s.c};
  const Tensor x = testing::random_tensor(xs, 51, -2.0f, 3.0f);
  const Tensor gamma = testing::random_tensor(cs, 52, 0.5f, 1.5f), beta = testing::random_tensor(cs, 53);
  const Tensor rm = testing::random_tensor(cs, 54), rv = testing::random_tensor(cs, 55, 0.5f, 2.0f);
  Tensor y_ref = cpu_empty(xs);
  ref::batchnorm_forward_infer(s, hp(x), hp(gamma), hp(beta), hp(rm), hp(rv), eps, hp(y_ref));
  const Tensor xg = gpu(x), gg = gpu(gamma), bg = gpu(beta), rmg = gpu(rm), rvg = gpu(rv);
  Tensor y = gpu_garbage(xs);
  cuda::batchnorm_forward_infer(s, dp(xg), dp(gg), dp(bg), dp(rmg), dp(rvg), eps, dp(y));
  EXPECT_TRUE(matches(y, y_ref, 1));
}

TEST_P(GpuBatchNorm, BackwardMatchesReferenceAndRepeats) {
  TTQ_REQUIRE_CUDNN();
  const BatchNormShape& s = GetParam().s;
  const float eps = 1e-5f;
  const Shape xs{s.n, s.c, s.s}, cs{s.c};
  const Tensor x = bn_input(xs, 61), dy = testing::random_tensor(xs, 62);
  const Tensor gamma = testing::random_tensor(cs, 63, 0.5f, 1.5f), beta = testing::random_tensor(cs, 64);
  // Saved statistics from the reference forward pass (what the layer hands to the backward).
  Tensor y_ref = cpu_empty(xs), mean = cpu_empty(cs), var = cpu_empty(cs), inv_std = cpu_empty(cs);
  ref::batchnorm_forward_train(s, hp(x), hp(gamma), hp(beta), eps, hp(y_ref), hp(mean), hp(var), hp(inv_std));
  Tensor dx_ref = cpu_empty(xs), dg_ref = cpu_empty(cs), db_ref = cpu_empty(cs);
  ref::batchnorm_backward(s, hp(x), hp(dy), hp(gamma), hp(mean), hp(inv_std), hp(dx_ref), hp(dg_ref), hp(db_ref));

  const Tensor xg = gpu(x), dyg = gpu(dy), gg = gpu(gamma), mg = gpu(mean), isg = gpu(inv_std);
  Runs dx(xs, DType::F32), dg(cs, DType::F32), db(cs, DType::F32);
  for (int run = 0; run < 2; ++run) {
    cuda::batchnorm_backward(s, dp(xg), dp(dyg), dp(gg), dp(mg), dp(isg), eps, dp(dx[run]), dp(dg[run]), dp(db[run]));
  }
  const int64_t k = s.n * s.s;
  EXPECT_TRUE(matches(dx[0], dx_ref, k)) << "dx";
  EXPECT_TRUE(matches(dg[0], dg_ref, k)) << "dgamma";
  EXPECT_TRUE(matches(db[0], db_ref, k)) << "dbeta";
  for (const Runs* t : {&dx, &dg, &db}) EXPECT_TRUE(t->repeats());
}

INSTANTIATE_TEST_SUITE_P(Shapes, GpuBatchNorm, ::testing::ValuesIn(kBnCases), CaseName{});

// An empty batch (N = 0): nothing to normalise, and dgamma, dbeta are 0 as on the CPU (not left
// as they were), in f32 (cuDNN) and bf16 (own kernels).
TEST(GpuBatchNormEmpty, BackwardZeroesTheParameterGradients) {
  const BatchNormShape s{0, 3, 4};
  const Shape xs{0, 3, 4}, cs{3};
  const Tensor gamma = testing::random_tensor(cs, 91), mean = testing::random_tensor(cs, 92);
  const Tensor inv_std = testing::random_tensor(cs, 93, 0.5f, 2.0f);
  Tensor x = cpu_empty(xs), dy = cpu_empty(xs), dx = cpu_empty(xs);
  Tensor dg_ref = testing::random_tensor(cs, 94), db_ref = testing::random_tensor(cs, 95);
  ops::batchnorm_backward(s, x, dy, gamma, mean, inv_std, 1e-5f, dx, dg_ref, db_ref);
  for (int64_t c = 0; c < 3; ++c) {
    ASSERT_EQ(hp(dg_ref)[c], 0.0f) << "the CPU's dgamma";
    ASSERT_EQ(hp(db_ref)[c], 0.0f) << "the CPU's dbeta";
  }
  if (cuda_device_count() == 0) GTEST_SKIP() << cuda_device_summary();
  TTQ_REQUIRE_CUDNN();
  for (DType dt : {DType::F32, DType::BF16}) {
    SCOPED_TRACE(dtype_name(dt));
    const Tensor xg = Tensor::empty(xs, dt, Device::CUDA), dyg = Tensor::empty(xs, dt, Device::CUDA);
    Tensor dxg = Tensor::empty(xs, dt, Device::CUDA);
    Tensor dg = gpu_garbage(cs), db = gpu_garbage(cs);
    ops::batchnorm_backward(s, xg, dyg, gpu(gamma), gpu(mean), gpu(inv_std), 1e-5f, dxg, dg, db);
    EXPECT_TRUE(bitwise_equal(dg, dg_ref)) << "dgamma";
    EXPECT_TRUE(bitwise_equal(db, db_ref)) << "dbeta";
  }
}

// ---- linear ---------------------------------------------------------------------------------

const std::vector<LinearCase> kLinearCases = linear_cases({});

class GpuLinear : public GpuCaseTest<LinearCase> {};

TEST_P(GpuLinear, MatchesReferenceAndRepeats) {
  TTQ_REQUIRE_CUBLAS();
  const LinearCase& c = GetParam();
  const auto [xs, ws, ys, bs] = c.shapes();
  const Tensor x = testing::random_tensor(xs, 71), w = testing::random_tensor(ws, 72);
  const Tensor b = testing::random_tensor(bs, 73), dy = testing::random_tensor(ys, 74);
  Tensor y_ref = cpu_empty(ys), dx_ref = cpu_empty(xs), dw_ref = cpu_empty(ws), db_ref = cpu_empty(bs);
  ref::linear_forward(c.n, c.in, c.out, hp(x), hp(w), c.bias ? hp(b) : nullptr, hp(y_ref));
  ref::linear_backward(c.n, c.in, c.out, hp(x), hp(w), hp(dy), hp(dx_ref), hp(dw_ref), c.bias ? hp(db_ref) : nullptr);

  const Tensor xg = gpu(x), wg = gpu(w), bg = gpu(b), dyg = gpu(dy);
  Runs y(ys, DType::F32), dx(xs, DType::F32), dw(ws, DType::F32), db(bs, DType::F32);
  for (int run = 0; run < 2; ++run) {
    cuda::linear_forward(c.n, c.in, c.out, dp(xg), dp(wg), c.bias ? dp(bg) : nullptr, dp(y[run]));
    cuda::linear_backward(c.n, c.in, c.out, dp(xg), dp(wg), dp(dyg), c.want_dx ? dp(dx[run]) : nullptr, dp(dw[run]),
                          c.bias ? dp(db[run]) : nullptr);
  }
  EXPECT_TRUE(matches(y[0], y_ref, c.in)) << "forward";
  EXPECT_TRUE(matches(dw[0], dw_ref, c.n)) << "weight gradient";
  EXPECT_TRUE(y.repeats()) << "forward";
  EXPECT_TRUE(dw.repeats()) << "weight gradient";
  if (c.want_dx) {
    EXPECT_TRUE(matches(dx[0], dx_ref, c.out)) << "input gradient";
    EXPECT_TRUE(dx.repeats()) << "input gradient";
  } else {
    EXPECT_TRUE(exactly(dx[0], Tensor::full(xs, 7.25f))) << "dx == null must leave the buffer alone";
  }
  if (c.bias) {
    EXPECT_TRUE(matches(db[0], db_ref, c.n)) << "bias gradient";
    EXPECT_TRUE(db.repeats()) << "bias gradient";
  }
}

INSTANTIATE_TEST_SUITE_P(Shapes, GpuLinear, ::testing::ValuesIn(kLinearCases), CaseName{});

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
