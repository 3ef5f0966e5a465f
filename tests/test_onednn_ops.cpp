// The oneDNN CPU kernels against the reference kernels on seeded random geometries.
#include <gtest/gtest.h>

#ifdef TTQ_HAVE_ONEDNN

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "engine/core/error.h"
#include "kernels/cpu/ops.h"
#include "kernels/cpu/ops_ref.h"
#include "kernels/onednn/ops_onednn.h"
#include "tests/test_util.h"

namespace ttq {
namespace {

using testing::all_close;
using testing::fill_random;

constexpr int kCases = 20;
constexpr double kTol = 1e-4;

std::vector<float> random_vec(int64_t n, uint64_t seed, float lo = -1.0f, float hi = 1.0f) {
  std::vector<float> v(static_cast<size_t>(n));
  fill_random(v.data(), n, seed, lo, hi);
  return v;
}

// Output buffers start as NaN so that any value a kernel fails to write is a mismatch.
std::vector<float> nan_vec(int64_t n) {
  return std::vector<float>(static_cast<size_t>(n), std::numeric_limits<float>::quiet_NaN());
}

// Float accumulation error grows with the number of summed terms; scale atol accordingly.
double sum_tol(int64_t terms) { return kTol * std::max(1.0, std::sqrt(static_cast<double>(terms))); }

int64_t pick(std::mt19937_64& gen, int64_t lo, int64_t hi) {
  return std::uniform_int_distribution<int64_t>(lo, hi)(gen);
}

// Every 5th case is a 1x1 input (1x1 kernel or 3x3 with padding 1); the others draw groups
// 1/2/4, kernels 1..5, strides 1..3 and independent padding on each side (up to the kernel size).
Conv2dShape random_conv(std::mt19937_64& gen, int i) {
  Conv2dShape s;
  s.n = pick(gen, 1, 4);
  s.groups = std::array<int64_t, 3>{1, 2, 4}[pick(gen, 0, 2)];
  s.c_in = s.groups * pick(gen, 1, 3);
  s.c_out = s.groups * pick(gen, 1, 3);
  s.stride_h = pick(gen, 1, 3);
  s.stride_w = pick(gen, 1, 3);
  if (i % 5 == 0) {
    s.h = s.w = 1;
    s.kh = s.kw = pick(gen, 0, 1) ? 3 : 1;
    s.pad_t = s.pad_l = s.pad_b = s.pad_r = s.kh / 2;
  } else {
    s.kh = pick(gen, 1, 5);
    s.kw = pick(gen, 1, 5);
    s.pad_t = pick(gen, 0, s.kh);
    s.pad_b = pick(gen, 0, s.kh);
    s.pad_l = pick(gen, 0, s.kw);
    s.pad_r = pick(gen, 0, s.kw);
    s.h = std::max(pick(gen, 1, 12), s.kh - s.pad_t - s.pad_b);
    s.w = std::max(pick(gen, 1, 12), s.kw - s.pad_l - s.pad_r);
  }
  s.validate("random_conv");
  return s;
}

// Kernels 1..5, strides 1..3, padding 0..kernel-1 per side; every 5th case a 1x1 input.
Pool2dShape random_pool(std::mt19937_64& gen, int i, bool count_include_pad) {
  Pool2dShape s;
  s.n = pick(gen, 1, 4);
  s.c = pick(gen, 1, 5);
  s.stride_h = pick(gen, 1, 3);
  s.stride_w = pick(gen, 1, 3);
  s.count_include_pad = count_include_pad;
  if (i % 5 == 0) {
    s.h = s.w = 1;
    s.kh = s.kw = pick(gen, 0, 1) ? 3 : 1;
    s.pad_t = s.pad_l = s.pad_b = s.pad_r = s.kh / 2;
  } else {
    s.kh = pick(gen, 1, 5);
    s.kw = pick(gen, 1, 5);
    s.pad_t = pick(gen, 0, s.kh - 1);
    s.pad_b = pick(gen, 0, s.kh - 1);
    s.pad_l = pick(gen, 0, s.kw - 1);
    s.pad_r = pick(gen, 0, s.kw - 1);
    s.h = std::max(pick(gen, 1, 10), s.kh - s.pad_t - s.pad_b);
    s.w = std::max(pick(gen, 1, 10), s.kw - s.pad_l - s.pad_r);
  }
  s.validate("random_pool");
  return s;
}

// Each geometry runs twice with fresh data: the second call reuses the cached primitive.
constexpr int kRepeats = 2;

TEST(OnednnOps, Conv2dForward) {
  std::mt19937_64 gen(101);
  for (int i = 0; i < kCases; ++i) {
    const Conv2dShape s = random_conv(gen, i);
    const bool with_bias = i % 2 == 0;
    SCOPED_TRACE(s.str() + (with_bias ? " with bias" : " no bias"));
    for (int r = 0; r < kRepeats; ++r) {
      const uint64_t seed = 1000 * i + 10 * r;
      const auto x = random_vec(s.in_numel(), seed);
      const auto w = random_vec(s.weight_numel(), seed + 1);
      const auto b = random_vec(s.c_out, seed + 2);
      const float* bias = with_bias ? b.data() : nullptr;
      auto expect = nan_vec(s.out_numel()), got = nan_vec(s.out_numel());
      ref::conv2d_forward(s, x.data(), w.data(), bias, expect.data());
      onednn::conv2d_forward(s, x.data(), w.data(), bias, got.data());
      EXPECT_TRUE(all_close(got.data(), expect.data(), s.out_numel(),
                            sum_tol(s.c_in_per_group() * s.kh * s.kw), kTol));
    }
  }
}

TEST(OnednnOps, Conv2dBackwardData) {
  std::mt19937_64 gen(202);
  for (int i = 0; i < kCases; ++i) {
    const Conv2dShape s = random_conv(gen, i);
    SCOPED_TRACE(s.str());
    for (int r = 0; r < kRepeats; ++r) {
      const uint64_t seed = 2000 * i + 10 * r;
      const auto dy = random_vec(s.out_numel(), seed);
      const auto w = random_vec(s.weight_numel(), seed + 1);
      auto expect = nan_vec(s.in_numel()), got = nan_vec(s.in_numel());
      ref::conv2d_backward_data(s, dy.data(), w.data(), expect.data());
      onednn::conv2d_backward_data(s, dy.data(), w.data(), got.data());
      EXPECT_TRUE(all_close(got.data(), expect.data(), s.in_numel(),
                            sum_tol(s.c_out_per_group() * s.kh * s.kw), kTol));
    }
  }
}

// Realistic channel counts, where oneDNN picks its blocked-layout direct kernels (with reorders
// around them) instead of GEMM: all three passes against the reference.
TEST(OnednnOps, BlockedLayoutConvolutions) {
  const Conv2dShape shapes[] = {
      {2, 16, 12, 12, 16, 3, 3, 1, 1, 1, 1, 1, 1, 1},   // ResNet-20 stage 1
      {2, 16, 12, 12, 32, 3, 3, 2, 2, 1, 1, 1, 1, 1},   // stride-2 transition
      {2, 64, 6, 6, 64, 3, 3, 1, 1, 1, 1, 1, 1, 1},     // ResNet-20 stage 3
      {2, 32, 8, 8, 64, 1, 1, 2, 2, 0, 0, 0, 0, 1},     // 1x1 projection
      {1, 32, 10, 10, 32, 3, 3, 1, 1, 1, 1, 1, 1, 2},   // grouped
      {1, 3, 30, 30, 16, 7, 7, 2, 2, 3, 3, 3, 3, 1}};   // 7x7 stem
  uint64_t seed = 4000;
  for (const Conv2dShape& s : shapes) {
    SCOPED_TRACE(s.str());
    const auto x = random_vec(s.in_numel(), ++seed);
    const auto w = random_vec(s.weight_numel(), ++seed);
    const auto dy = random_vec(s.out_numel(), ++seed);
    auto y_ref = nan_vec(s.out_numel()), y = nan_vec(s.out_numel());
    ref::conv2d_forward(s, x.data(), w.data(), nullptr, y_ref.data());
    onednn::conv2d_forward(s, x.data(), w.data(), nullptr, y.data());
    EXPECT_TRUE(all_close(y.data(), y_ref.data(), s.out_numel(), sum_tol(s.c_in_per_group() * s.kh * s.kw), kTol));
    auto dx_ref = nan_vec(s.in_numel()), dx = nan_vec(s.in_numel());
    ref::conv2d_backward_data(s, dy.data(), w.data(), dx_ref.data());
    onednn::conv2d_backward_data(s, dy.data(), w.data(), dx.data());
    EXPECT_TRUE(all_close(dx.data(), dx_ref.data(), s.in_numel(), sum_tol(s.c_out_per_group() * s.kh * s.kw), kTol));
    auto dw_ref = nan_vec(s.weight_numel()), dw = nan_vec(s.weight_numel());
    auto db_ref = nan_vec(s.c_out), db = nan_vec(s.c_out);
    ref::conv2d_backward_weights(s, x.data(), dy.data(), dw_ref.data(), db_ref.data());
    onednn::conv2d_backward_weights(s, x.data(), dy.data(), dw.data(), db.data());
    EXPECT_TRUE(all_close(dw.data(), dw_ref.data(), s.weight_numel(), sum_tol(s.n * s.out_h() * s.out_w()), kTol));
    EXPECT_TRUE(all_close(db.data(), db_ref.data(), s.c_out, sum_tol(s.n * s.out_h() * s.out_w()), kTol));
  }
}

TEST(OnednnOps, Conv2dBackwardWeights) {
  std::mt19937_64 gen(303);
  for (int i = 0; i < kCases; ++i) {
    const Conv2dShape s = random_conv(gen, i);
    const bool with_bias = i % 2 == 1;
    SCOPED_TRACE(s.str() + (with_bias ? " with dbias" : " no dbias"));
    for (int r = 0; r < kRepeats; ++r) {
      const uint64_t seed = 3000 * i + 10 * r;
      const auto x = random_vec(s.in_numel(), seed);
      const auto dy = random_vec(s.out_numel(), seed + 1);
      auto dw_ref = nan_vec(s.weight_numel()), dw = nan_vec(s.weight_numel());
      auto db_ref = nan_vec(s.c_out), db = nan_vec(s.c_out);
      ref::conv2d_backward_weights(s, x.data(), dy.data(), dw_ref.data(),
                                   with_bias ? db_ref.data() : nullptr);
      onednn::conv2d_backward_weights(s, x.data(), dy.data(), dw.data(),
                                      with_bias ? db.data() : nullptr);
      const double atol = sum_tol(s.n * s.out_h() * s.out_w());
      EXPECT_TRUE(all_close(dw.data(), dw_ref.data(), s.weight_numel(), atol, kTol));
      if (with_bias) {
        EXPECT_TRUE(all_close(db.data(), db_ref.data(), s.c_out, atol, kTol));
      } else {
        EXPECT_TRUE(std::all_of(db.begin(), db.end(), [](float v) { return std::isnan(v); }))
            << "dbias written although null was passed";
      }
    }
  }
}

// Forward and backward of one pooling kind over random geometries. tied_inputs draws small
// integers so that max windows hold equal values and the gradient routing rule matters.
void check_pool(PoolKind kind, bool count_include_pad, uint64_t seed0, bool tied_inputs) {
  std::mt19937_64 gen(seed0);
  for (int i = 0; i < kCases; ++i) {
    const Pool2dShape s = random_pool(gen, i, count_include_pad);
    SCOPED_TRACE(s.str() + (count_include_pad ? " include pad" : " exclude pad"));
    for (int r = 0; r < kRepeats; ++r) {
      const uint64_t seed = seed0 * 1000 + 100 * i + 10 * r;
      auto x = random_vec(s.in_numel(), seed);
      if (tied_inputs) {
        for (float& v : x) v = std::floor(v * 2.0f);  // values in {-2, -1, 0, 1}
      }
      const auto dy = random_vec(s.out_numel(), seed + 1);
      auto y_ref = nan_vec(s.out_numel()), y = nan_vec(s.out_numel());
      ref::pool2d_forward(kind, s, x.data(), y_ref.data());
      onednn::pool2d_forward(kind, s, x.data(), y.data());
      EXPECT_TRUE(all_close(y.data(), y_ref.data(), s.out_numel(), kTol, kTol));

      auto dx_ref = nan_vec(s.in_numel()), dx = nan_vec(s.in_numel());
      ref::pool2d_backward(kind, s, x.data(), dy.data(), dx_ref.data());
      onednn::pool2d_backward(kind, s, x.data(), dy.data(), dx.data());
      EXPECT_TRUE(all_close(dx.data(), dx_ref.data(), s.in_numel(), sum_tol(s.kh * s.kw), kTol));
    }
  }
}

TEST(OnednnOps, MaxPool) { check_pool(PoolKind::Max, true, 11, false); }

// Max pooling of one 1 x 1 x 2 x 4 input (2 x 2 windows, stride 2, the given padding on every
// side) forward and backward through the CPU dispatch with oneDNN selected; dy[i] = i + 1.
struct PoolRun {
  Pool2dShape s;
  std::vector<float> y, dx;
};
PoolRun onednn_max_pool(const std::vector<float>& x, int64_t pad) {
  PoolRun r;
  r.s.n = 1, r.s.c = 1, r.s.h = 2, r.s.w = 4, r.s.kh = 2, r.s.kw = 2, r.s.stride_h = 2, r.s.stride_w = 2;
  r.s.pad_t = r.s.pad_l = r.s.pad_b = r.s.pad_r = pad;
  r.y.resize(static_cast<size_t>(r.s.out_numel()));
  r.dx.resize(x.size());
  std::vector<float> dy(r.y.size());
  for (size_t i = 0; i < dy.size(); ++i) dy[i] = static_cast<float>(i + 1);
  const cpu::Kernels before = cpu::kernels();
  cpu::set_kernels(cpu::Kernels::OneDNN);
  cpu::pool2d_forward(PoolKind::Max, r.s, x.data(), r.y.data());
  cpu::pool2d_backward(PoolKind::Max, r.s, x.data(), dy.data(), r.dx.data());
  cpu::set_kernels(before);
  return r;
}

// oneDNN's max pooling skips NaN; the CPU dispatch sends an input holding NaN to the reference,
// whose windows with a NaN give NaN and route the gradient to the window's last NaN (PyTorch's
// rule), forward and backward alike. ReLU passes NaN and its gradient.
TEST(OnednnOps, NanPassesThroughMaxPoolAndRelu) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const PoolRun p = onednn_max_pool({nan, 1, 5, 6,     //
                                     3, nan, 7, 2}, 0);  // window 0: {nan, 1, 3, nan}; window 1: {5, 6, 7, 2}
  EXPECT_TRUE(std::isnan(p.y[0]));
  EXPECT_EQ(p.y[1], 7.0f);
  EXPECT_EQ(p.dx, (std::vector<float>{0, 0, 0, 0, 0, 1, 2, 0}));  // the last NaN, the first maximum
  std::vector<float> r = {nan, -1.0f, 2.0f}, ry(3), rdx(3);
  ref::relu_forward(3, r.data(), ry.data());
  EXPECT_TRUE(std::isnan(ry[0]));
  EXPECT_EQ(ry[1], 0.0f);
  EXPECT_EQ(ry[2], 2.0f);
  const std::vector<float> rdy = {4.0f, 5.0f, 6.0f};
  ref::relu_backward(3, ry.data(), rdy.data(), rdx.data());
  EXPECT_EQ(rdx, (std::vector<float>{4.0f, 0.0f, 6.0f}));
}

// A window whose inputs are all -inf pools to -inf (oneDNN alone would give -FLT_MAX), and its
// gradient goes to the window's first element, as in the reference.
TEST(OnednnOps, MaxPoolOfMinusInfinityIsMinusInfinity) {
  const float inf = std::numeric_limits<float>::infinity();
  const std::vector<float> x = {-inf, -inf, 5, 6,  //
                                -inf, -inf, 7, 2};
  const PoolRun p = onednn_max_pool(x, 1);
  std::vector<float> want(p.y.size()), want_dx(x.size()), dy(p.y.size());
  for (size_t i = 0; i < dy.size(); ++i) dy[i] = static_cast<float>(i + 1);
  ref::pool2d_forward(PoolKind::Max, p.s, x.data(), want.data());
  ref::pool2d_backward(PoolKind::Max, p.s, x.data(), dy.data(), want_dx.data());
  EXPECT_EQ(p.y[0], -inf);  // the padded corner window holds only x[0]
  EXPECT_EQ(p.y, want);
  EXPECT_EQ(p.dx, want_dx);
}

TEST(OnednnOps, MaxPoolTiesGoToFirstMaximum) { check_pool(PoolKind::Max, true, 12, true); }
TEST(OnednnOps, AvgPoolCountIncludePad) { check_pool(PoolKind::Avg, true, 13, false); }
TEST(OnednnOps, AvgPoolExcludePad) { check_pool(PoolKind::Avg, false, 14, false); }

BatchNormShape random_bn(std::mt19937_64& gen, bool two_d) {
  BatchNormShape s;
  s.n = pick(gen, 1, 4);
  s.c = pick(gen, 1, 8);
  s.s = two_d ? pick(gen, 2, 64) : 1;
  return s;
}

std::string bn_str(const BatchNormShape& s) {
  return std::to_string(s.n) + "x" + std::to_string(s.c) + "x" + std::to_string(s.s);
}

void check_bn_train(bool two_d, uint64_t seed0) {
  std::mt19937_64 gen(seed0);
  for (int i = 0; i < kCases; ++i) {
    const BatchNormShape s = random_bn(gen, two_d);
    const float eps = i % 2 ? 1e-5f : 1e-3f;
    SCOPED_TRACE(bn_str(s));
    const uint64_t seed = seed0 * 1000 + 10 * i;
    const auto x = random_vec(s.numel(), seed, -2.0f, 3.0f);
    const auto gamma = random_vec(s.c, seed + 1, 0.5f, 1.5f);
    const auto beta = random_vec(s.c, seed + 2);
    auto y_ref = nan_vec(s.numel()), y = nan_vec(s.numel());
    auto mean_ref = nan_vec(s.c), mean = nan_vec(s.c), var_ref = nan_vec(s.c), var = nan_vec(s.c);
    auto is_ref = nan_vec(s.c), is = nan_vec(s.c);
    ref::batchnorm_forward_train(s, x.data(), gamma.data(), beta.data(), eps, y_ref.data(),
                                 mean_ref.data(), var_ref.data(), is_ref.data());
    onednn::batchnorm_forward_train(s, x.data(), gamma.data(), beta.data(), eps, y.data(),
                                    mean.data(), var.data(), is.data());
    EXPECT_TRUE(all_close(y.data(), y_ref.data(), s.numel(), kTol, kTol));
    EXPECT_TRUE(all_close(mean.data(), mean_ref.data(), s.c, kTol, kTol));
    EXPECT_TRUE(all_close(var.data(), var_ref.data(), s.c, kTol, kTol));
    EXPECT_TRUE(all_close(is.data(), is_ref.data(), s.c, kTol, kTol));
  }
}

TEST(OnednnOps, BatchNormTrain2d) { check_bn_train(true, 21); }
TEST(OnednnOps, BatchNormTrain1d) { check_bn_train(false, 22); }

TEST(OnednnOps, BatchNormInfer) {
  std::mt19937_64 gen(23);
  for (int i = 0; i < kCases; ++i) {
    const BatchNormShape s = random_bn(gen, i % 2 == 0);
    const float eps = 1e-5f;
    SCOPED_TRACE(bn_str(s));
    const uint64_t seed = 23000 + 10 * i;
    const auto x = random_vec(s.numel(), seed, -2.0f, 3.0f);
    const auto gamma = random_vec(s.c, seed + 1, 0.5f, 1.5f);
    const auto beta = random_vec(s.c, seed + 2);
    const auto rmean = random_vec(s.c, seed + 3);
    const auto rvar = random_vec(s.c, seed + 4, 0.1f, 2.0f);
    auto y_ref = nan_vec(s.numel()), y = nan_vec(s.numel());
    ref::batchnorm_forward_infer(s, x.data(), gamma.data(), beta.data(), rmean.data(),
                                 rvar.data(), eps, y_ref.data());
    onednn::batchnorm_forward_infer(s, x.data(), gamma.data(), beta.data(), rmean.data(),
                                    rvar.data(), eps, y.data());
    EXPECT_TRUE(all_close(y.data(), y_ref.data(), s.numel(), kTol, kTol));
  }
}

TEST(OnednnOps, BatchNormBackward) {
  std::mt19937_64 gen(24);
  for (int i = 0; i < kCases; ++i) {
    const BatchNormShape s = random_bn(gen, i % 2 == 0);
    const float eps = i % 3 ? 1e-5f : 1e-3f;
    SCOPED_TRACE(bn_str(s));
    const uint64_t seed = 24000 + 10 * i;
    const auto x = random_vec(s.numel(), seed, -2.0f, 3.0f);
    const auto gamma = random_vec(s.c, seed + 1, 0.5f, 1.5f);
    const auto beta = random_vec(s.c, seed + 2);
    const auto dy = random_vec(s.numel(), seed + 3);
    auto y = nan_vec(s.numel()), mean = nan_vec(s.c), var = nan_vec(s.c), is = nan_vec(s.c);
    ref::batchnorm_forward_train(s, x.data(), gamma.data(), beta.data(), eps, y.data(),
                                 mean.data(), var.data(), is.data());
    auto dx_ref = nan_vec(s.numel()), dx = nan_vec(s.numel());
    auto dg_ref = nan_vec(s.c), dg = nan_vec(s.c), db_ref = nan_vec(s.c), db = nan_vec(s.c);
    ref::batchnorm_backward(s, x.data(), dy.data(), gamma.data(), mean.data(), is.data(),
                            dx_ref.data(), dg_ref.data(), db_ref.data());
    onednn::batchnorm_backward(s, x.data(), dy.data(), gamma.data(), mean.data(), is.data(),
                               dx.data(), dg.data(), db.data());
    const double atol = sum_tol(s.n * s.s);
    EXPECT_TRUE(all_close(dx.data(), dx_ref.data(), s.numel(), atol, kTol));
    EXPECT_TRUE(all_close(dg.data(), dg_ref.data(), s.c, atol, kTol));
    EXPECT_TRUE(all_close(db.data(), db_ref.data(), s.c, atol, kTol));
  }
}

struct LinearGeom {
  int64_t n, in, out;
  std::string str() const {
    return "linear " + std::to_string(n) + "x" + std::to_string(in) + "->" + std::to_string(out);
  }
};

LinearGeom random_linear(std::mt19937_64& gen) {
  return {pick(gen, 1, 8), pick(gen, 1, 64), pick(gen, 1, 32)};
}

TEST(OnednnOps, LinearForward) {
  std::mt19937_64 gen(31);
  for (int i = 0; i < kCases; ++i) {
    const LinearGeom g = random_linear(gen);
    const bool with_bias = i % 2 == 0;
    SCOPED_TRACE(g.str() + (with_bias ? " with bias" : " no bias"));
    for (int r = 0; r < kRepeats; ++r) {
      const uint64_t seed = 31000 + 100 * i + 10 * r;
      const auto x = random_vec(g.n * g.in, seed);
      const auto w = random_vec(g.out * g.in, seed + 1);
      const auto b = random_vec(g.out, seed + 2);
      const float* bias = with_bias ? b.data() : nullptr;
      auto y_ref = nan_vec(g.n * g.out), y = nan_vec(g.n * g.out);
      ref::linear_forward(g.n, g.in, g.out, x.data(), w.data(), bias, y_ref.data());
      onednn::linear_forward(g.n, g.in, g.out, x.data(), w.data(), bias, y.data());
      EXPECT_TRUE(all_close(y.data(), y_ref.data(), g.n * g.out, sum_tol(g.in), kTol));
    }
  }
}

TEST(OnednnOps, LinearBackward) {
  std::mt19937_64 gen(32);
  for (int i = 0; i < kCases; ++i) {
    const LinearGeom g = random_linear(gen);
    const bool with_dx = i % 4 != 3, with_bias = i % 2 == 0;
    SCOPED_TRACE(g.str() + (with_dx ? " with dx" : " no dx") +
                 (with_bias ? " with dbias" : " no dbias"));
    for (int r = 0; r < kRepeats; ++r) {
      const uint64_t seed = 32000 + 100 * i + 10 * r;
      const auto x = random_vec(g.n * g.in, seed);
      const auto w = random_vec(g.out * g.in, seed + 1);
      const auto dy = random_vec(g.n * g.out, seed + 2);
      auto dx_ref = nan_vec(g.n * g.in), dx = nan_vec(g.n * g.in);
      auto dw_ref = nan_vec(g.out * g.in), dw = nan_vec(g.out * g.in);
      auto db_ref = nan_vec(g.out), db = nan_vec(g.out);
      ref::linear_backward(g.n, g.in, g.out, x.data(), w.data(), dy.data(),
                           with_dx ? dx_ref.data() : nullptr, dw_ref.data(),
                           with_bias ? db_ref.data() : nullptr);
      onednn::linear_backward(g.n, g.in, g.out, x.data(), w.data(), dy.data(),
                              with_dx ? dx.data() : nullptr, dw.data(),
                              with_bias ? db.data() : nullptr);
      if (with_dx) {
        EXPECT_TRUE(all_close(dx.data(), dx_ref.data(), g.n * g.in, sum_tol(g.out), kTol));
      }
      EXPECT_TRUE(all_close(dw.data(), dw_ref.data(), g.out * g.in, sum_tol(g.n), kTol));
      if (with_bias) {
        EXPECT_TRUE(all_close(db.data(), db_ref.data(), g.out, sum_tol(g.n), kTol));
      }
    }
  }
}

// Two threads sharing one cached primitive each get their own correct result.
TEST(OnednnOps, ConcurrentCallsShareCachedPrimitive) {
  Conv2dShape s;
  s.n = 2, s.c_in = 4, s.h = 9, s.w = 7, s.c_out = 6, s.kh = s.kw = 3;
  s.pad_t = s.pad_l = s.pad_b = s.pad_r = 1;
  const auto w = random_vec(s.weight_numel(), 41);
  std::vector<std::vector<float>> xs, expect, got;
  for (uint64_t t = 0; t < 2; ++t) {
    xs.push_back(random_vec(s.in_numel(), 42 + t));
    expect.push_back(nan_vec(s.out_numel()));
    got.push_back(nan_vec(s.out_numel()));
    ref::conv2d_forward(s, xs[t].data(), w.data(), nullptr, expect[t].data());
  }
  std::vector<std::thread> threads;
  for (size_t t = 0; t < 2; ++t) {
    threads.emplace_back([&, t] {
      for (int k = 0; k < 20; ++k)
        onednn::conv2d_forward(s, xs[t].data(), w.data(), nullptr, got[t].data());
    });
  }
  for (auto& th : threads) th.join();
  for (size_t t = 0; t < 2; ++t)
    EXPECT_TRUE(all_close(got[t].data(), expect[t].data(), s.out_numel(), sum_tol(36), kTol));
}

TEST(OnednnOps, ImpossibleGeometryThrowsTtqError) {
  Conv2dShape s;
  s.c_in = 3, s.c_out = 4, s.groups = 2;  // groups must divide both channel counts
  std::vector<float> buf(64);
  EXPECT_THROW(onednn::conv2d_forward(s, buf.data(), buf.data(), nullptr, buf.data()), Error);
  Pool2dShape p;
  p.h = p.w = 4, p.kh = p.kw = 2, p.pad_t = 2;  // padding as large as the window
  EXPECT_THROW(onednn::pool2d_forward(PoolKind::Max, p, buf.data(), buf.data()), Error);
}

}  // namespace
}  // namespace ttq

#else  // !TTQ_HAVE_ONEDNN

TEST(OnednnOps, Skipped) { GTEST_SKIP() << "built without oneDNN"; }

#endif  // TTQ_HAVE_ONEDNN
