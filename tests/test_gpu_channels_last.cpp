// memory_format "channels_last" on the GPU, through the tensor ops of kernels/ops.h: the NHWC
// permutation kernel against the CPU's (bitwise), and every op that takes activations with
// channels-last CUDA tensors against the same op on contiguous CPU tensors (the CPU's channels-last
// results are bitwise its contiguous ones, tests/test_channels_last.cpp). Convolutions with
// symmetric padding and no bias run cuDNN's NHWC path (weights permuted to K x R x S x C/g), batch
// norm and the synchronised batch-norm pieces run NHWC (cuDNN for f32, the chunked kernels over
// N*H*W rows of C for bf16); the other geometries and ops run on NCHW copies. Tolerances are those
// of the contiguous GPU tests: f32 sums in another order, 1e-4 * sqrt(terms); bf16 outputs within
// two bf16 ulps plus 1e-2 of the largest value. Each GPU result is computed twice and must repeat
// bitwise. The copies a convolution falls back to when cuDNN offers no algorithm (NCHW, f32) are
// checked the same way. Skips where no GPU (or no CUDA build) exists.
#include <gtest/gtest.h>

#ifdef TTQ_HAVE_CUDA

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "engine/core/tensor.h"
#include "kernels/cpu/ops.h"
#include "kernels/cuda/ops_cuda.h"
#include "kernels/device.h"
#include "kernels/ops.h"
#include "tests/gpu_test_util.h"
#include "tests/test_util.h"

namespace ttq {
namespace {

using namespace gpu_test;

const DType kDtypes[] = {DType::F32, DType::BF16};

// Uniform in [lo, hi) in dtype dt (rounded for bf16), contiguous, on the CPU.
Tensor random_in(const Shape& s, uint64_t seed, DType dt, float lo = -1.0f, float hi = 1.0f) {
  return ops::cast_to(testing::random_tensor(s, seed, lo, hi), dt);
}

// A channels-last device copy of a contiguous CPU tensor.
Tensor gpu_cl(const Tensor& t) { return ops::to_layout(gpu(t), Layout::ChannelsLast); }

// A channels-last device output filled with garbage (gpu_test::gpu_garbage, permuted).
Tensor gpu_cl_garbage(const Shape& s, DType dt) { return ops::to_layout(gpu_garbage(s, dt), Layout::ChannelsLast); }

// The contiguous f32 CPU values of t (any device, layout and dtype).
Tensor logical_f32(const Tensor& t) {
  return ops::cast_to(ops::to_layout(host(t), Layout::Contiguous), DType::F32);
}

// got (GPU, any layout) against want (CPU contiguous): f32 within tol(terms) absolute and
// relative; bf16 within 1e-2 * max|want| + 2^-6 * |want|.
::testing::AssertionResult close(const Tensor& got, const Tensor& want, int64_t terms) {
  const Tensor g = logical_f32(got), w = logical_f32(want);
  if (want.dtype() == DType::F32) return testing::all_close(g, w, tol(terms), tol(terms));
  double max_abs = 0.0;
  for (int64_t i = 0; i < w.numel(); ++i) max_abs = std::max(max_abs, std::fabs(double(w.data<float>()[i])));
  return testing::all_close(g, w, 1e-2 * max_abs, 1.0 / 64.0);
}

// ---- permutation ----------------------------------------------------------------------------

TEST(GpuChannelsLast, PermutationMatchesTheCpuBitwise) {
  if (cuda_device_count() == 0) GTEST_SKIP() << cuda_device_summary();
  const Shape shapes[] = {{1, 1, 1, 1}, {2, 3, 5, 7}, {3, 64, 1, 1}, {2, 3, 33, 31}, {4, 70, 9, 9}, {1, 5, 112, 112}};
  uint64_t seed = 1;
  for (const Shape& s : shapes) {
    for (DType dt : kDtypes) {
      SCOPED_TRACE(shape_str(s) + " " + dtype_name(dt));
      const Tensor x = random_in(s, ++seed, dt);
      const Tensor want = ops::to_layout(x, Layout::ChannelsLast);
      const Tensor got = ops::to_layout(gpu(x), Layout::ChannelsLast);
      EXPECT_EQ(got.layout(), Layout::ChannelsLast);
      EXPECT_TRUE(bitwise_equal(got, want));
      EXPECT_TRUE(bitwise_equal(ops::to_layout(got, Layout::Contiguous), x)) << "round trip";
    }
  }
}

// ---- convolution ----------------------------------------------------------------------------

const std::vector<ConvCase> kConvCases = conv_cases({
    {"k3_s1_pad1_resnet_block", conv(8, 64, 16, 16, 64, 3, 3, 1, 1, 1, 1, 1, 1, 1), false},
    {"k3_s2_pad1_downsample", conv(4, 32, 16, 16, 64, 3, 3, 2, 2, 1, 1, 1, 1, 1), false},
    {"k1_s2_projection", conv(4, 32, 16, 16, 64, 1, 1, 2, 2, 0, 0, 0, 0, 1), false},
    {"k3_s1_pad1_groups2", conv(2, 16, 9, 9, 32, 3, 3, 1, 1, 1, 1, 1, 1, 2), false},
});

class GpuChannelsLastConv : public GpuCaseTest<ConvCase> {
  const ReferenceKernels reference_;
};

TEST_P(GpuChannelsLastConv, MatchesTheContiguousCpuAndRepeats) {
  TTQ_REQUIRE_CUDNN();
  const ConvCase& c = GetParam();
  const Conv2dShape& s = c.s;
  const auto [xs, ws, ys, bs] = c.shapes();
  for (DType dt : kDtypes) {
    SCOPED_TRACE(dtype_name(dt));
    const Tensor x = random_in(xs, 11, dt), w = random_in(ws, 12, dt), dy = random_in(ys, 14, dt);
    const Tensor b = testing::random_tensor(bs, 13);
    const Tensor* bias = c.bias ? &b : nullptr;
    Tensor y_ref = Tensor::empty(ys, dt), dx_ref = Tensor::empty(xs, dt), dw_ref = Tensor::empty(ws, dt),
           db_ref = Tensor::empty(bs);
    ops::conv2d_forward(s, x, w, bias, y_ref);
    ops::conv2d_backward_data(s, dy, w, dx_ref);
    ops::conv2d_backward_weights(s, x, dy, dw_ref, c.bias ? &db_ref : nullptr);

    const Tensor xg = gpu_cl(x), wg = gpu(w), bg = gpu(b), dyg = gpu_cl(dy);
    const Tensor* bias_g = c.bias ? &bg : nullptr;
    Tensor y[2] = {gpu_cl_garbage(ys, dt), gpu_cl_garbage(ys, dt)};
    Tensor dx[2] = {gpu_cl_garbage(xs, dt), gpu_cl_garbage(xs, dt)};
    Runs dw(ws, dt), db(bs, DType::F32);
    for (int run = 0; run < 2; ++run) {
      ops::conv2d_forward(s, xg, wg, bias_g, y[run]);
      ops::conv2d_backward_data(s, dyg, wg, dx[run]);
      ops::conv2d_backward_weights(s, xg, dyg, dw[run], c.bias ? &db[run] : nullptr);
    }
    const int64_t k_fwd = s.c_in_per_group() * s.kh * s.kw, k_data = s.c_out_per_group() * s.kh * s.kw;
    const int64_t k_weights = s.n * s.out_h() * s.out_w();
    EXPECT_TRUE(close(y[0], y_ref, k_fwd)) << "forward " << s.str();
    EXPECT_TRUE(close(dx[0], dx_ref, k_data)) << "backward data " << s.str();
    EXPECT_TRUE(close(dw[0], dw_ref, k_weights)) << "backward weights " << s.str();
    if (c.bias) {
      EXPECT_TRUE(close(db[0], db_ref, k_weights)) << "bias gradient " << s.str();
      EXPECT_TRUE(db.repeats());
    }
    EXPECT_TRUE(bitwise_equal(y[1], y[0])) << "forward repeat";
    EXPECT_TRUE(bitwise_equal(dx[1], dx[0])) << "backward data repeat";
    EXPECT_TRUE(dw.repeats()) << "backward weights repeat";
  }
}

// When cuDNN offers no working algorithm, a channels-last convolution runs on NCHW copies and a
// bf16 one on f32 copies (kernels/cuda/ops_cudnn.cpp). refuse_conv_algorithms_for_testing forces
// both (f32 NCHW is not refused: it is where the copies end); contiguous with a bias (the bf16
// f32-copies path adds it), and channels-last without (ops.cpp sends biased channels-last
// convolutions to NCHW copies itself). The fallback counter proves the copies ran.
TEST_P(GpuChannelsLastConv, FallbackCopiesMatchTheContiguousCpu) {
  TTQ_REQUIRE_CUDNN();
  struct Refuse {
    Refuse() { cuda::refuse_conv_algorithms_for_testing(true); }
    ~Refuse() { cuda::refuse_conv_algorithms_for_testing(false); }
  } refuse;
  const Conv2dShape& s = GetParam().s;
  const auto [xs, ws, ys, bs] = GetParam().shapes();
  for (DType dt : kDtypes) {
    for (bool channels_last : {false, true}) {
      SCOPED_TRACE(std::string(dtype_name(dt)) + (channels_last ? " channels_last" : " contiguous"));
      const Tensor x = random_in(xs, 21, dt), w = random_in(ws, 22, dt), dy = random_in(ys, 24, dt);
      const Tensor b = testing::random_tensor(bs, 23);
      const bool bias = !channels_last;
      Tensor y_ref = Tensor::empty(ys, dt), dx_ref = Tensor::empty(xs, dt), dw_ref = Tensor::empty(ws, dt),
             db_ref = Tensor::empty(bs);
      ops::conv2d_forward(s, x, w, bias ? &b : nullptr, y_ref);
      ops::conv2d_backward_data(s, dy, w, dx_ref);
      ops::conv2d_backward_weights(s, x, dy, dw_ref, bias ? &db_ref : nullptr);

      auto act = [&](const Tensor& t) { return channels_last ? gpu_cl(t) : gpu(t); };
      auto out = [&](const Shape& sh) { return channels_last ? gpu_cl_garbage(sh, dt) : gpu_garbage(sh, dt); };
      const Tensor xg = act(x), wg = gpu(w), bg = gpu(b), dyg = act(dy);
      Tensor y = out(ys), dx = out(xs), dw = gpu_garbage(ws, dt), db = gpu_garbage(bs, DType::F32);
      const int64_t fallbacks = cuda::conv_fallbacks_for_testing();
      ops::conv2d_forward(s, xg, wg, bias ? &bg : nullptr, y);
      ops::conv2d_backward_data(s, dyg, wg, dx);
      ops::conv2d_backward_weights(s, xg, dyg, dw, bias ? &db : nullptr);
      // Every direction fell back, once per step down (channels-last bf16: to NCHW, then to f32).
      const int64_t steps = (channels_last ? 1 : 0) + (dt == DType::BF16 ? 1 : 0);
      EXPECT_EQ(cuda::conv_fallbacks_for_testing() - fallbacks, 3 * steps);
      const int64_t k_weights = s.n * s.out_h() * s.out_w();
      EXPECT_TRUE(close(y, y_ref, s.c_in_per_group() * s.kh * s.kw)) << "forward " << s.str();
      EXPECT_TRUE(close(dx, dx_ref, s.c_out_per_group() * s.kh * s.kw)) << "backward data " << s.str();
      EXPECT_TRUE(close(dw, dw_ref, k_weights)) << "backward weights " << s.str();
      if (bias) {
        EXPECT_TRUE(close(db, db_ref, k_weights)) << "bias gradient " << s.str();
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Shapes, GpuChannelsLastConv, ::testing::ValuesIn(kConvCases), CaseName{});

// ---- batch norm -----------------------------------------------------------------------------

const std::vector<BnCase> kBnCases = bn_cases({
    // n * s > 16384: several chunks per channel (and, channels-last, many row chunks)
    {"bn2d_chunked", {32, 8, 24 * 24}},
    {"bn2d_chunked_odd", {33, 5, 23 * 23}},
});

class GpuChannelsLastBatchNorm : public GpuCaseTest<BnCase> {
  const ReferenceKernels reference_;
};

TEST_P(GpuChannelsLastBatchNorm, MatchesTheContiguousCpuAndRepeats) {
  const BatchNormShape& s = GetParam().s;
  if (s.s == 1) GTEST_SKIP() << "1-d batch norm: [N, C] tensors have no channels-last layout";
  const Shape xs{s.n, s.c, s.s, 1};
  for (DType dt : kDtypes) {
    SCOPED_TRACE(dtype_name(dt));
    if (dt == DType::F32) TTQ_REQUIRE_CUDNN();
    const Tensor x = random_in(xs, 21, dt, -2.0f, 3.0f), dy = random_in(xs, 22, dt);
    const Tensor gamma = testing::random_tensor({s.c}, 23, 0.5f, 1.5f), beta = testing::random_tensor({s.c}, 24);
    Tensor rm = Tensor::zeros({s.c}), rv = Tensor::full({s.c}, 1.0f);
    Tensor y_ref = Tensor::empty(xs, dt), mean_ref = Tensor::empty({s.c}), var_ref = Tensor::empty({s.c}),
           is_ref = Tensor::empty({s.c});
    ops::batchnorm_forward_train(s, x, gamma, beta, 1e-5f, 0.1f, rm, rv, y_ref, mean_ref, var_ref, is_ref);
    Tensor dx_ref = Tensor::empty(xs, dt), dg_ref = Tensor::empty({s.c}), db_ref = Tensor::empty({s.c});
    ops::batchnorm_backward(s, x, dy, gamma, mean_ref, is_ref, 1e-5f, dx_ref, dg_ref, db_ref);
    Tensor yi_ref = Tensor::empty(xs, dt);
    ops::batchnorm_forward_infer(s, x, gamma, beta, rm, rv, 1e-5f, yi_ref);

    const Tensor xg = gpu_cl(x), dyg = gpu_cl(dy), gg = gpu(gamma), bg = gpu(beta);
    const int64_t m = s.n * s.s;
    Tensor ys[2], dxs[2], yis[2];  // each run's outputs, which must repeat bitwise
    for (int run = 0; run < 2; ++run) {
      Tensor rmg = gpu(Tensor::zeros({s.c})), rvg = gpu(Tensor::full({s.c}, 1.0f));
      Tensor y = gpu_cl_garbage(xs, dt), mean = gpu_garbage({s.c}, DType::F32), var = gpu_garbage({s.c}, DType::F32),
             is = gpu_garbage({s.c}, DType::F32);
      ops::batchnorm_forward_train(s, xg, gg, bg, 1e-5f, 0.1f, rmg, rvg, y, mean, var, is);
      EXPECT_TRUE(close(y, y_ref, m)) << "forward";
      EXPECT_TRUE(testing::all_close(host(mean), mean_ref, tol(m), tol(m))) << "mean";
      EXPECT_TRUE(testing::all_close(host(var), var_ref, tol(m), tol(m))) << "variance";
      EXPECT_TRUE(testing::all_close(host(rvg), rv, tol(m), tol(m))) << "running variance";
      Tensor dx = gpu_cl_garbage(xs, dt), dg = gpu_garbage({s.c}, DType::F32), db = gpu_garbage({s.c}, DType::F32);
      ops::batchnorm_backward(s, xg, dyg, gg, mean, is, 1e-5f, dx, dg, db);
      EXPECT_TRUE(close(dx, dx_ref, m)) << "backward";
      EXPECT_TRUE(testing::all_close(host(dg), dg_ref, tol(m), tol(m))) << "gamma gradient";
      EXPECT_TRUE(testing::all_close(host(db), db_ref, tol(m), tol(m))) << "beta gradient";
      Tensor yi = gpu_cl_garbage(xs, dt);
      ops::batchnorm_forward_infer(s, xg, gg, bg, rmg, rvg, 1e-5f, yi);
      EXPECT_TRUE(close(yi, yi_ref, m)) << "inference";
      ys[run] = y;
      dxs[run] = dx;
      yis[run] = yi;
    }
    EXPECT_TRUE(bitwise_equal(ys[1], ys[0])) << "forward repeat";
    EXPECT_TRUE(bitwise_equal(dxs[1], dxs[0])) << "backward repeat";
    EXPECT_TRUE(bitwise_equal(yis[1], yis[0])) << "inference repeat";
  }
}

// The synchronised batch-norm pieces: per-channel sums in double over N*H*W rows of C.
TEST_P(GpuChannelsLastBatchNorm, SyncPiecesMatchTheContiguousCpu) {
  const BatchNormShape& s = GetParam().s;
  if (s.s == 1) GTEST_SKIP() << "1-d batch norm: [N, C] tensors have no channels-last layout";
  const Shape xs{s.n, s.c, s.s, 1};
  for (DType dt : kDtypes) {
    SCOPED_TRACE(dtype_name(dt));
    const Tensor x = random_in(xs, 31, dt, -2.0f, 3.0f), dy = random_in(xs, 32, dt);
    const Tensor mean = testing::random_tensor({s.c}, 33), inv_std = testing::random_tensor({s.c}, 34, 0.5f, 1.5f);
    const Tensor gamma = testing::random_tensor({s.c}, 35, 0.5f, 1.5f), beta = testing::random_tensor({s.c}, 36);
    Tensor sums_ref = Tensor::empty({s.c}, DType::F64), bsums_ref = Tensor::empty({2 * s.c}, DType::F64);
    ops::bn_channel_sums(s, x, nullptr, sums_ref);
    ops::bn_backward_sums(s, x, dy, mean, inv_std, bsums_ref);
    Tensor dx_ref = Tensor::empty(xs, dt);
    const double count = static_cast<double>(s.n * s.s);
    ops::bn_backward_dx(s, x, dy, mean, inv_std, gamma, bsums_ref, count, dx_ref);

    const Tensor xg = gpu_cl(x), dyg = gpu_cl(dy), mg = gpu(mean), ig = gpu(inv_std), gg = gpu(gamma);
    Runs sums(Tensor::zeros({s.c}, DType::F64)), bsums(Tensor::zeros({2 * s.c}, DType::F64));
    for (int run = 0; run < 2; ++run) {
      ops::bn_channel_sums(s, xg, nullptr, sums[run]);
      ops::bn_backward_sums(s, xg, dyg, mg, ig, bsums[run]);
    }
    const Tensor a = host(sums[0]), b = host(bsums[0]);
    for (int64_t c = 0; c < s.c; ++c)
      EXPECT_NEAR(a.data<double>()[c], sums_ref.data<double>()[c], 1e-9 * count) << "sum, channel " << c;
    for (int64_t c = 0; c < 2 * s.c; ++c)
      EXPECT_NEAR(b.data<double>()[c], bsums_ref.data<double>()[c], 1e-9 * count) << "backward sum " << c;
    EXPECT_TRUE(sums.repeats());
    EXPECT_TRUE(bsums.repeats());
    Tensor dx = gpu_cl_garbage(xs, dt);
    ops::bn_backward_dx(s, xg, dyg, mg, ig, gg, gpu(bsums_ref), count, dx);
    EXPECT_TRUE(close(dx, dx_ref, 1)) << "dx";
  }
}

INSTANTIATE_TEST_SUITE_P(Shapes, GpuChannelsLastBatchNorm, ::testing::ValuesIn(kBnCases), CaseName{});

// ---- the ops on NCHW copies -----------------------------------------------------------------

TEST(GpuChannelsLast, PoolingShortcutAndGlobalPoolMatchTheContiguousCpu) {
  if (cuda_device_count() == 0) GTEST_SKIP() << cuda_device_summary();
  TTQ_REQUIRE_CUDNN();
  const ReferenceKernels reference;
  for (DType dt : kDtypes) {
    SCOPED_TRACE(dtype_name(dt));
    for (const PoolCase& c : pool_cases({})) {
      SCOPED_TRACE(c.name);
      const auto [xs, ys] = c.shapes();
      const Tensor x = random_in(xs, 41, dt), dy = random_in(ys, 42, dt);
      Tensor y_ref = Tensor::empty(ys, dt), dx_ref = Tensor::empty(xs, dt);
      ops::pool2d_forward(c.kind, c.s, x, y_ref);
      ops::pool2d_backward(c.kind, c.s, x, dy, dx_ref);
      Tensor y = gpu_cl_garbage(ys, dt), dx = gpu_cl_garbage(xs, dt);
      ops::pool2d_forward(c.kind, c.s, gpu_cl(x), y);
      ops::pool2d_backward(c.kind, c.s, gpu_cl(x), gpu_cl(dy), dx);
      EXPECT_TRUE(close(y, y_ref, c.s.kh * c.s.kw));
      EXPECT_TRUE(close(dx, dx_ref, c.s.kh * c.s.kw));
    }
    {
      SCOPED_TRACE("option-A shortcut");
      const Tensor x = random_in({2, 4, 7, 7}, 43, dt), dy = random_in({2, 8, 4, 4}, 44, dt);
      Tensor y_ref = Tensor::empty({2, 8, 4, 4}, dt), dx_ref = Tensor::empty({2, 4, 7, 7}, dt);
      ops::shortcut_a_forward(2, x, y_ref);
      ops::shortcut_a_backward(2, dy, dx_ref);
      Tensor y = gpu_cl_garbage({2, 8, 4, 4}, dt), dx = gpu_cl_garbage({2, 4, 7, 7}, dt);
      ops::shortcut_a_forward(2, gpu_cl(x), y);
      ops::shortcut_a_backward(2, gpu_cl(dy), dx);
      EXPECT_TRUE(bitwise_equal(ops::to_layout(y, Layout::Contiguous), y_ref));
      EXPECT_TRUE(bitwise_equal(ops::to_layout(dx, Layout::Contiguous), dx_ref));
    }
    {
      SCOPED_TRACE("global average pool");
      const Tensor x = random_in({3, 16, 7, 7}, 45, dt), dy = random_in({3, 16}, 46, dt);
      Tensor y_ref = Tensor::empty({3, 16}, dt), dx_ref = Tensor::empty({3, 16, 7, 7}, dt);
      ops::global_avgpool_forward(x, y_ref);
      ops::global_avgpool_backward(dy, dx_ref);
      Tensor y = gpu_garbage({3, 16}, dt), dx = gpu_cl_garbage({3, 16, 7, 7}, dt);
      ops::global_avgpool_forward(gpu_cl(x), y);
      ops::global_avgpool_backward(gpu(dy), dx);
      EXPECT_TRUE(close(y, y_ref, 49));
      EXPECT_TRUE(bitwise_equal(ops::to_layout(dx, Layout::Contiguous), dx_ref));
    }
  }
}

}  // namespace
}  // namespace ttq

#else  // !TTQ_HAVE_CUDA

TEST(GpuChannelsLast, NotBuilt) { GTEST_SKIP() << "built without the CUDA backend"; }

#endif
