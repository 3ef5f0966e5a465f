// TTQ: forward edge cases, threshold modes, and the gradients of TTQ-SPEC.md — dL/dWp and
// dL/dWn (with its minus sign) against finite differences, and the scaled latent gradient
// against the formula applied to a finite-difference dL/dw_t.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <tuple>
#if defined(_OPENMP)
#include <omp.h>
#endif

#include "engine/nn/conv2d.h"
#include "engine/nn/linear.h"
#include "engine/quant/quantize_model.h"
#include "kernels/cpu/ttq_cpu.h"
#include "models/model.h"
#include "tests/test_util.h"

using namespace ttq;
using ttq::testing::random_tensor;

namespace {

struct Ternarized {
  float d;
  std::vector<int8_t> codes;
  std::vector<float> w_t;
};

Ternarized ternarize(const std::vector<float>& w, math::ThresholdMode mode, float t, double r, float wp = 1.0f,
                     float wn = 1.0f) {
  Ternarized out;
  out.d = cpu::ttq_threshold(mode, w.data(), static_cast<int64_t>(w.size()), t, r).threshold;
  out.codes.resize(w.size());
  out.w_t.resize(w.size());
  cpu::ttq_ternarize(w.data(), static_cast<int64_t>(w.size()), out.d, wp, wn, out.w_t.data(), out.codes.data());
  return out;
}

}  // namespace

TEST(TtqForward, WeightsExactlyAtThresholdAreZero) {
  // max |w| = 1, t = 0.05: D = 0.05f exactly; +-D fall in the zero band, just outside do not.
  const std::vector<float> w{1.0f, 0.05f, -0.05f, 0.0499f, 0.0501f, -0.0501f, -1.0f, 0.0f};
  const auto q = ternarize(w, math::ThresholdMode::Max, 0.05f, 0.0f, 2.0f, 3.0f);
  EXPECT_EQ(q.d, 0.05f);
  EXPECT_EQ(q.codes, (std::vector<int8_t>{1, 0, 0, 0, 1, -1, -1, 0}));
  EXPECT_EQ(q.w_t, (std::vector<float>{2.0f, 0.0f, 0.0f, 0.0f, 2.0f, -3.0f, -3.0f, 0.0f}));
}

TEST(TtqForward, AllEqualWeights) {
  const auto pos = ternarize(std::vector<float>(10, 0.3f), math::ThresholdMode::Max, 0.05f, 0.0f);
  EXPECT_FLOAT_EQ(pos.d, 0.015f);
  for (auto c : pos.codes) EXPECT_EQ(c, 1);
  const auto neg = ternarize(std::vector<float>(10, -0.3f), math::ThresholdMode::Max, 0.05f, 0.0f);
  for (auto c : neg.codes) EXPECT_EQ(c, -1);
  // TWN: D = 0.7 * 0.3, every weight above it, scale = 0.3
  const auto th = cpu::ttq_threshold(math::ThresholdMode::Twn, std::vector<float>(10, 0.3f).data(), 10, 0, 0);
  EXPECT_FLOAT_EQ(th.threshold, 0.21f);
  EXPECT_FLOAT_EQ(th.twn_scale, 0.3f);
}

TEST(TtqForward, AllZeroTensor) {
  for (auto mode : {math::ThresholdMode::Max, math::ThresholdMode::Sparsity, math::ThresholdMode::Twn}) {
    const auto q = ternarize(std::vector<float>(16, 0.0f), mode, 0.05f, 0.5f);
    EXPECT_EQ(q.d, 0.0f) << threshold_mode_name(mode);
    for (size_t i = 0; i < q.codes.size(); ++i) {
      EXPECT_EQ(q.codes[i], 0);
      EXPECT_EQ(q.w_t[i], 0.0f);
    }
  }
  // A whole zero layer goes through quantize_model (normalize_init must not divide by zero).
  Linear l(4, 4, false);
  QuantizeOptions opt;
  quantize_model(l, opt);
  for (int64_t i = 0; i < l.weight().value.numel(); ++i) EXPECT_EQ(l.weight().value.data<float>()[i], 0.0f);
  EXPECT_EQ(l.quantizer()->stats().zeros, 16);
}

TEST(TtqForward, ZeroThresholdFactor) {
  const std::vector<float> w{0.5f, -1e-6f, 1e-6f, 0.0f, -2.0f};
  const auto q = ternarize(w, math::ThresholdMode::Max, 0.0f, 0.0f);
  EXPECT_EQ(q.d, 0.0f);
  EXPECT_EQ(q.codes, (std::vector<int8_t>{1, -1, 1, 0, -1}));
}

TEST(TtqForward, MaxModeThreshold) {
  std::vector<float> w(1000);
  ttq::testing::fill_random(w.data(), 1000, 7, -0.4f, 0.3f);
  w[123] = -0.9f;
  const auto q = ternarize(w, math::ThresholdMode::Max, 0.05f, 0.0f);
  EXPECT_FLOAT_EQ(q.d, 0.05f * 0.9f);
  for (size_t i = 0; i < w.size(); ++i)
    EXPECT_EQ(q.codes[i], w[i] > q.d ? 1 : (w[i] < -q.d ? -1 : 0));
}

TEST(TtqForward, SparsityModeHitsRequestedFraction) {
  std::vector<float> w(1000);
  ttq::testing::fill_random(w.data(), 1000, 8);  // distinct with probability 1
  const std::pair<double, int64_t> cases[] = {{0.0, 0},   {0.1, 100}, {0.29, 290}, {0.3, 300},
                                               {0.45, 450}, {0.5, 500}, {0.9, 900},  {0.999, 999}};
  for (const auto& [r, want] : cases) {
    const auto q = ternarize(w, math::ThresholdMode::Sparsity, 0.0f, r);
    EXPECT_EQ(std::count(q.codes.begin(), q.codes.end(), int8_t(0)), want) << "r = " << r;
  }
}

// The CPU's radix select (tensors of 2048 and more) gives the k-th smallest |w| exactly, for any
// thread count, also when the top digit's bin holds most of the tensor (all zeros, constant,
// one exponent), where every thread finds candidates in every chunk.
TEST(TtqForward, SparsityThresholdIsTheKthSmallestMagnitude) {
  const int64_t n = (int64_t{1} << 18) + 77;
  std::vector<float> w(static_cast<size_t>(n));
  for (int variant = 0; variant < 4; ++variant) {
    ttq::testing::fill_random(w.data(), n, 40 + variant);
    if (variant == 1) std::fill(w.begin(), w.end(), 0.0f);
    if (variant == 2)
      for (size_t i = 0; i < w.size(); ++i) w[i] = i % 3 ? 0.25f : -0.25f;
    if (variant == 3)  // one exponent: [1, 2), a few far smaller values
      for (size_t i = 0; i < w.size(); ++i) w[i] = i % 1000 ? 1.0f + std::fabs(w[i]) * 0.5f : 1e-3f * w[i];
    std::vector<float> mags(w.size());
    for (size_t i = 0; i < w.size(); ++i) mags[i] = std::fabs(w[i]);
    for (double r : {0.001, 0.3, 0.5, 0.999}) {
      const int64_t k = math::sparsity_rank(r, n);
      ASSERT_GE(k, 0);
      std::vector<float> sorted = mags;
      std::nth_element(sorted.begin(), sorted.begin() + k, sorted.end());
      const float want = sorted[static_cast<size_t>(k)];
      for (int threads : {1, 2, 3}) {
#if defined(_OPENMP)
        const int before = omp_get_max_threads();
        omp_set_num_threads(threads);
#endif
        const float got = cpu::ttq_threshold(math::ThresholdMode::Sparsity, w.data(), n, 0.0f, r).threshold;
#if defined(_OPENMP)
        omp_set_num_threads(before);
#endif
        EXPECT_EQ(got, want) << "variant " << variant << ", r = " << r << ", " << threads << " threads";
      }
    }
  }
}

TEST(TtqForward, TwnThresholdAndScale) {
  const std::vector<float> w{1.0f, -0.5f, 0.1f, -0.1f, 0.8f, 0.0f};
  // mean |w| = 2.5 / 6; D = 0.7 * that = 0.29167; above: 1.0, 0.5, 0.8 -> scale 2.3 / 3
  const auto th = cpu::ttq_threshold(math::ThresholdMode::Twn, w.data(), 6, 0, 0);
  EXPECT_NEAR(th.threshold, 0.7 * 2.5 / 6, 1e-6);
  EXPECT_NEAR(th.twn_scale, 2.3 / 3, 1e-6);
  Linear l(3, 2, false);
  std::copy(w.begin(), w.end(), l.weight().value.data<float>());
  TernaryConfig cfg;
  cfg.mode = math::ThresholdMode::Twn;
  l.enable_ternary(cfg);
  EXPECT_EQ(l.named_parameters().size(), 1u) << "TWN has no trainable scales";
  EXPECT_NEAR(l.quantizer()->stats().wp, 2.3 / 3, 1e-6);
  EXPECT_NEAR(l.quantizer()->stats().wn, 2.3 / 3, 1e-6);
  const Tensor& wt = l.quantizer()->quantized();
  EXPECT_NEAR(wt.data<float>()[1], -2.3 / 3, 1e-6);
  EXPECT_EQ(wt.data<float>()[2], 0.0f);
}

TEST(TtqForward, StatsAreExposedPerLayer) {
  Conv2d c(2, 3, 3, 1, 1);
  ttq::testing::fill_random(c.weight().value.data<float>(), c.weight().value.numel(), 9);
  TernaryConfig cfg;
  cfg.mode = math::ThresholdMode::Sparsity;
  cfg.r = 0.5f;
  c.enable_ternary(cfg);
  const auto& st = c.quantizer()->stats();
  EXPECT_EQ(st.positive + st.negative + st.zeros, 54);
  EXPECT_EQ(st.zeros, 27);
  EXPECT_DOUBLE_EQ(st.sparsity(), 0.5);
  EXPECT_EQ(st.wp, 1.0f);
  EXPECT_EQ(st.wn, 1.0f);
  EXPECT_GT(st.threshold, 0.0f);
}

// dL/dWp and dL/dWn by finite differences on the scales (w_t is linear in them and the codes
// do not move), for a conv and a linear layer, in Max and Sparsity modes.
TEST(TtqGradient, ScaleGradientsMatchFiniteDifferences) {
  for (auto mode : {math::ThresholdMode::Max, math::ThresholdMode::Sparsity}) {
    Conv2d c(3, 4, 3, 2, 1, 1, true);
    ttq::testing::fill_random(c.weight().value.data<float>(), c.weight().value.numel(), 10);
    TernaryConfig cfg;
    cfg.mode = mode;
    cfg.t = 0.3f;
    cfg.r = 0.4f;
    c.enable_ternary(cfg);
    c.wp().value.data<float>()[0] = 0.7f;
    c.wn().value.data<float>()[0] = 1.3f;
    ttq::testing::check_module_gradients(c, random_tensor({2, 3, 6, 6}, 11), 12, 1e-2f, 2e-3, 2e-2, 40, {"weight"});

    Linear l(6, 5, false);
    ttq::testing::fill_random(l.weight().value.data<float>(), 30, 13);
    l.enable_ternary(cfg);
    l.wn().value.data<float>()[0] = 0.4f;
    ttq::testing::check_module_gradients(l, random_tensor({4, 6}, 14), 15, 1e-2f, 2e-3, 2e-2, 40, {"weight"});
  }
}

// Per-output-channel scales: every channel's Wp and Wn against finite differences (the checker
// samples every scale element), a conv and a linear layer, Max and Sparsity modes.
TEST(TtqGradient, PerChannelScaleGradientsMatchFiniteDifferences) {
  for (auto mode : {math::ThresholdMode::Max, math::ThresholdMode::Sparsity}) {
    TernaryConfig cfg;
    cfg.mode = mode;
    cfg.t = 0.3f;
    cfg.r = 0.4f;
    cfg.per_channel_scales = true;
    Conv2d c(3, 4, 3, 2, 1, 1, true);
    ttq::testing::fill_random(c.weight().value.data<float>(), c.weight().value.numel(), 40);
    c.enable_ternary(cfg);
    ASSERT_EQ(c.wp().value.shape(), Shape{4});
    for (int k = 0; k < 4; ++k) {
      c.wp().value.data<float>()[k] = 0.5f + 0.2f * k;
      c.wn().value.data<float>()[k] = 1.4f - 0.3f * k;
    }
    ttq::testing::check_module_gradients(c, random_tensor({2, 3, 6, 6}, 41), 42, 1e-2f, 2e-3, 2e-2, 80, {"weight"});

    Linear l(6, 5, false);
    ttq::testing::fill_random(l.weight().value.data<float>(), 30, 43);
    l.enable_ternary(cfg);
    ASSERT_EQ(l.wn().value.shape(), Shape{5});
    for (int k = 0; k < 5; ++k) {
      l.wp().value.data<float>()[k] = 1.2f - 0.2f * k;
      l.wn().value.data<float>()[k] = 0.3f + 0.25f * k;
    }
    ttq::testing::check_module_gradients(l, random_tensor({4, 6}, 44), 45, 1e-2f, 2e-3, 2e-2, 80, {"weight"});
  }
}

// Row c of the weights takes Wp[c] and Wn[c]; D is still one threshold over the whole layer, and
// the latent gradient is scaled by the row's own scales.
TEST(TtqForward, PerChannelScalesApplyToTheirOutputChannel) {
  Linear l(3, 2, false);
  const std::vector<float> w{0.9f, -0.5f, 0.02f, -1.0f, 0.3f, 0.04f};  // max 1.0, D = 0.1
  std::copy(w.begin(), w.end(), l.weight().value.data<float>());
  TernaryConfig cfg;
  cfg.t = 0.1f;
  cfg.per_channel_scales = true;
  l.enable_ternary(cfg);
  float* wp = l.wp().value.data<float>();
  float* wn = l.wn().value.data<float>();
  wp[0] = 2.0f, wp[1] = 3.0f, wn[0] = 0.5f, wn[1] = 0.25f;
  Tensor x = Tensor::from_vector({1, 3}, {1.0f, 10.0f, 100.0f});
  Tensor y = l.forward(x);
  EXPECT_FLOAT_EQ(l.quantizer()->stats().threshold, 0.1f);
  const std::vector<float> expect_wt{2.0f, -0.5f, 0.0f, -0.25f, 3.0f, 0.0f};
  for (int i = 0; i < 6; ++i) EXPECT_FLOAT_EQ(l.quantizer()->quantized().data<float>()[i], expect_wt[i]) << i;
  EXPECT_FLOAT_EQ(y.data<float>()[0], 2.0f - 5.0f);
  EXPECT_FLOAT_EQ(y.data<float>()[1], -0.25f + 30.0f);
  EXPECT_FLOAT_EQ(l.quantizer()->stats().wp, 2.5f);  // the mean over the channels
  // L = y0 + y1: g[o, i] = x[i]
  l.zero_grad();
  l.backward(Tensor::from_vector({1, 2}, {1.0f, 1.0f}));
  EXPECT_FLOAT_EQ(l.wp().grad.data<float>()[0], 1.0f);
  EXPECT_FLOAT_EQ(l.wp().grad.data<float>()[1], 10.0f);
  EXPECT_FLOAT_EQ(l.wn().grad.data<float>()[0], -10.0f);
  EXPECT_FLOAT_EQ(l.wn().grad.data<float>()[1], -1.0f);
  const std::vector<float> expect_latent{2.0f, 0.5f * 10, 100.0f, 0.25f, 3.0f * 10, 100.0f};
  for (int i = 0; i < 6; ++i) EXPECT_FLOAT_EQ(l.weight().grad.data<float>()[i], expect_latent[i]) << i;
}

// The sign of dL/dWn: w_t = -Wn on I_n, so dL/dWn = -sum_{I_n} g. The seed paper prints +sum.
TEST(TtqGradient, WnGradientHasMinusSign) {
  Linear l(8, 3, false);
  ttq::testing::fill_random(l.weight().value.data<float>(), 24, 16);
  TernaryConfig cfg;
  cfg.t = 0.2f;
  l.enable_ternary(cfg);
  Tensor x = random_tensor({5, 8}, 17);
  Tensor y = l.forward(x);
  Tensor r = random_tensor(y.shape(), 18);
  l.zero_grad();
  l.backward(r);
  // g = dL/dw_t for L = sum(y * r): g[o, i] = sum_b r[b, o] * x[b, i]
  double sum_neg = 0.0, sum_pos = 0.0;
  const int8_t* codes = l.quantizer()->codes().data<int8_t>();
  for (int o = 0; o < 3; ++o) {
    for (int i = 0; i < 8; ++i) {
      double g = 0.0;
      for (int b = 0; b < 5; ++b) g += r.data<float>()[b * 3 + o] * x.data<float>()[b * 8 + i];
      if (codes[o * 8 + i] < 0) sum_neg += g;
      if (codes[o * 8 + i] > 0) sum_pos += g;
    }
  }
  ASSERT_GT(std::fabs(sum_neg), 0.1) << "test needs a non-trivial negative set";
  EXPECT_NEAR(l.wn().grad.data<float>()[0], -sum_neg, 1e-4);
  EXPECT_NEAR(l.wp().grad.data<float>()[0], sum_pos, 1e-4);
  // The finite difference agrees with -sum and not with the printed +sum.
  const double num = ttq::testing::numeric_grad(l.wn().value.data<float>(), 0, 1e-2f, [&] {
    Tensor out = l.forward(x);
    return ttq::testing::dot(out.data<float>(), r.data<float>(), out.numel());
  });
  EXPECT_NEAR(num, -sum_neg, 1e-3);
  EXPECT_GT(std::fabs(num - sum_neg), 0.1);
}

// dL/dW~ = Wp * g on I_p, g on the zero band, Wn * g on I_n, with g = dL/dw_t taken by finite
// differences on an unquantized layer that holds w_t as its weights.
TEST(TtqGradient, LatentGradientIsScaledStraightThrough) {
  Conv2d q(2, 3, 3, 1, 1);
  ttq::testing::fill_random(q.weight().value.data<float>(), q.weight().value.numel(), 19);
  TernaryConfig cfg;
  cfg.t = 0.25f;
  q.enable_ternary(cfg);
  q.wp().value.data<float>()[0] = 0.6f;
  q.wn().value.data<float>()[0] = 1.7f;
  Tensor x = random_tensor({2, 2, 5, 5}, 20);
  Tensor y = q.forward(x);
  Tensor r = random_tensor(y.shape(), 21);
  q.zero_grad();
  q.backward(r);

  Conv2d plain(2, 3, 3, 1, 1);
  plain.weight().value.copy_from(q.quantizer()->quantized());
  const int8_t* codes = q.quantizer()->codes().data<int8_t>();
  int seen[3] = {0, 0, 0};
  for (int64_t i = 0; i < plain.weight().value.numel(); ++i) {
    const double g = ttq::testing::numeric_grad(plain.weight().value.data<float>(), i, 1e-2f, [&] {
      Tensor out = plain.forward(x);
      return ttq::testing::dot(out.data<float>(), r.data<float>(), out.numel());
    });
    const double scale = codes[i] > 0 ? 0.6 : (codes[i] < 0 ? 1.7 : 1.0);
    ++seen[codes[i] + 1];
    EXPECT_NEAR(q.weight().grad.data<float>()[i], scale * g, 2e-3 + 1e-2 * std::fabs(scale * g)) << "weight " << i;
  }
  EXPECT_GT(seen[0], 0);
  EXPECT_GT(seen[1], 0);
  EXPECT_GT(seen[2], 0);
}

TEST(TtqGradient, TwnLatentGradientIsPlainStraightThrough) {
  std::vector<float> w(12);
  ttq::testing::fill_random(w.data(), 12, 22);
  std::vector<int8_t> codes(12);
  std::vector<float> wt(12), g(12), latent(12, 0.5f);
  ttq::testing::fill_random(g.data(), 12, 23);
  cpu::ttq_ternarize(w.data(), 12, 0.3f, 2.0f, 2.0f, wt.data(), codes.data());
  cpu::ttq_backward(codes.data(), g.data(), 12, 2.0f, 2.0f, false, latent.data());
  for (int i = 0; i < 12; ++i) EXPECT_FLOAT_EQ(latent[i], 0.5f + g[i]);  // accumulates
}

TEST(TtqGradient, GradientsAccumulateAcrossBackwardPasses) {
  Linear l(4, 2, false);
  ttq::testing::fill_random(l.weight().value.data<float>(), 8, 24);
  l.enable_ternary(TernaryConfig{});
  Tensor x = random_tensor({3, 4}, 25);
  Tensor r = random_tensor({3, 2}, 26);
  l.zero_grad();
  l.forward(x);
  l.backward(r);
  const float once = l.wp().grad.data<float>()[0];
  l.forward(x);
  l.backward(r);
  EXPECT_FLOAT_EQ(l.wp().grad.data<float>()[0], 2 * once);
}

TEST(TtqOptions, InitScalesFromWeights) {
  Linear l(4, 1, false);
  const std::vector<float> w{0.8f, 0.4f, -0.2f, 0.01f};
  std::copy(w.begin(), w.end(), l.weight().value.data<float>());
  TernaryConfig cfg;
  cfg.t = 0.1f;  // D = 0.08
  cfg.init_scales_from_weights = true;
  l.enable_ternary(cfg);
  EXPECT_FLOAT_EQ(l.wp().value.data<float>()[0], 0.6f);
  EXPECT_FLOAT_EQ(l.wn().value.data<float>()[0], 0.2f);
}

TEST(TtqOptions, InitPerChannelScalesFromTheirRows) {
  Linear l(4, 2, false);
  const std::vector<float> w{0.8f, 0.4f, -0.2f, 0.01f, 0.3f, 0.05f, 0.07f, 0.02f};
  std::copy(w.begin(), w.end(), l.weight().value.data<float>());
  TernaryConfig cfg;
  cfg.t = 0.1f;  // D = 0.08 over the whole layer
  cfg.init_scales_from_weights = true;
  cfg.per_channel_scales = true;
  l.enable_ternary(cfg);
  EXPECT_FLOAT_EQ(l.wp().value.data<float>()[0], 0.6f);
  EXPECT_FLOAT_EQ(l.wn().value.data<float>()[0], 0.2f);
  EXPECT_FLOAT_EQ(l.wp().value.data<float>()[1], 0.3f);
  EXPECT_FLOAT_EQ(l.wn().value.data<float>()[1], 1.0f);  // no negative weight in row 1: stays 1.0
}

TEST(TtqOptions, ClampScalesKeepsThemNonNegative) {
  Linear l(4, 1, false);
  ttq::testing::fill_random(l.weight().value.data<float>(), 4, 27);
  TernaryConfig cfg;
  cfg.clamp_scales = true;
  l.enable_ternary(cfg);
  l.wp().value.data<float>()[0] = -0.5f;
  l.forward(random_tensor({2, 4}, 28));
  EXPECT_EQ(l.wp().value.data<float>()[0], 0.0f);
  EXPECT_EQ(l.quantizer()->stats().wp, 0.0f);
}

TEST(TtqOptions, InvalidConfigIsRefused) {
  TernaryConfig bad;
  bad.t = -0.1f;
  EXPECT_THROW(TernaryQuantizer(bad, "x"), Error);
  bad.t = 0.05f;
  bad.r = 1.0f;
  EXPECT_THROW(TernaryQuantizer(bad, "x"), Error);
  EXPECT_THROW(parse_threshold_mode("maximum"), Error);
  TernaryConfig twn_per_channel;
  twn_per_channel.mode = math::ThresholdMode::Twn;
  twn_per_channel.per_channel_scales = true;
  EXPECT_NE(ttq::testing::error_of([&] { TernaryQuantizer(twn_per_channel, "x"); }).find("per-channel"),
            std::string::npos);
}

TEST(QuantizeModel, FullPrecisionLayersByNameAndNormalizeInit) {
  Model m = build_model(json{{"name", "resnet20"}}, InputSpec{3, 32, 32, 10}, 1);
  Tensor x = random_tensor({2, 3, 32, 32}, 29);
  QuantizeOptions opt;
  opt.full_precision_layers = {"conv1"};
  // The quantized forward does not depend on normalize_init (D is relative to max|w|).
  Model m2 = build_model(json{{"name", "resnet20"}}, InputSpec{3, 32, 32, 10}, 1);
  QuantizeOptions opt2 = opt;
  opt2.normalize_init = false;
  const auto done = quantize_model(*m.net, opt);
  quantize_model(*m2.net, opt2);
  EXPECT_EQ(done.size(), 18u + 1u);  // 18 block convs + fc; conv1 stays full precision
  EXPECT_EQ(std::count(done.begin(), done.end(), std::string("conv1")), 0);
  EXPECT_EQ(done.back(), "fc");
  m.net->eval();
  m2.net->eval();
  Tensor y1 = m.net->forward(x), y2 = m2.net->forward(x);
  EXPECT_TRUE(ttq::testing::all_close(y1, y2, 1e-5, 1e-5));
  for (auto* l : quantizable_layers(*m.net)) {
    const Tensor& w = l->weight().value;
    float mx = 0.0f;
    for (int64_t i = 0; i < w.numel(); ++i) mx = std::max(mx, std::fabs(w.data<float>()[i]));
    if (l->is_ternary())
      EXPECT_FLOAT_EQ(mx, 1.0f) << l->path();
    else
      EXPECT_LT(mx, 1.0f) << l->path() << " stays as initialised";
  }
  bool found = false;
  for (auto& np : m.net->named_parameters()) found |= np.name == "layer2.0.conv1.wn";
  EXPECT_TRUE(found);
}

TEST(QuantizeModel, UnknownFullPrecisionLayerNamesTheClosest) {
  Model m = build_model(json{{"name", "small_convnet"}}, InputSpec{1, 8, 8, 3}, 1);
  QuantizeOptions opt;
  opt.full_precision_layers = {"conv_1"};
  try {
    quantize_model(*m.net, opt);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("'conv_1'"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("did you mean 'conv1'"), std::string::npos) << e.what();
  }
}

TEST(QuantizeModel, ModelSizeCountsTwoBitsPerTernaryWeight) {
  Linear l(100, 10, true);
  const ModelSize before = model_size(l);
  EXPECT_EQ(before.fp32_bytes, (1000 + 10) * 4);
  EXPECT_EQ(before.deployed_bytes, before.fp32_bytes);
  l.enable_ternary(TernaryConfig{});
  const ModelSize after = model_size(l);
  EXPECT_EQ(after.fp32_bytes, (1000 + 10) * 4);
  EXPECT_EQ(after.deployed_bytes, 250 + 8 + 10 * 4);
  Linear pc(100, 10, true);
  TernaryConfig per_channel;
  per_channel.per_channel_scales = true;
  pc.enable_ternary(per_channel);
  EXPECT_EQ(model_size(pc).deployed_bytes, 250 + 10 * 8 + 10 * 4);  // Wp and Wn per output row
}

// The CPU passes split large tensors into fixed chunks whose partial results are combined in chunk
// order, so every output is bitwise the same whether one thread or several run the chunks.
// The per-channel loops give, row by row, exactly what the per-tensor loops give on that row with
// its scales, for rows of several kChunk pieces and tensors big enough to run on several threads,
// and the same for any thread count.
TEST(TtqCpu, PerChannelRowsMatchThePerTensorLoops) {
  const int64_t channels = 3, per = 40000 + 5, n = channels * per;
  std::vector<float> w(n), g(n), wp{0.6f, 1.1f, 0.9f}, wn{0.55f, 0.8f, 1.3f};
  ttq::testing::fill_random(w.data(), n, 50);
  ttq::testing::fill_random(g.data(), n, 51, -1e-3f, 1e-3f);
  const float d = cpu::ttq_threshold(math::ThresholdMode::Max, w.data(), n, 0.2f, 0.0).threshold;
  auto run = [&](int threads) {
#if defined(_OPENMP)
    omp_set_num_threads(threads);
#else
    (void)threads;
#endif
    std::vector<float> w_t(n), latent(n, 0.25f);
    std::vector<int8_t> codes(n);
    const auto counts = cpu::ttq_ternarize_channels(w.data(), n, channels, d, wp.data(), wn.data(), w_t.data(), codes.data());
    const auto sums = cpu::ttq_backward_channels(codes.data(), g.data(), n, channels, wp.data(), wn.data(), latent.data());
    const auto means = cpu::ttq_set_means_channels(w.data(), n, channels, d);
    return std::make_tuple(w_t, codes, latent, counts.positive, counts.negative, sums, means);
  };
#if defined(_OPENMP)
  const int before = omp_get_max_threads();
#endif
  const auto one = run(1);
  const auto two = run(2);
#if defined(_OPENMP)
  omp_set_num_threads(before);
#endif
  const auto& [w_t, codes, latent, pos, neg, sums, means] = one;
  EXPECT_EQ(w_t, std::get<0>(two));
  EXPECT_EQ(codes, std::get<1>(two));
  EXPECT_EQ(latent, std::get<2>(two));
  EXPECT_EQ(pos, std::get<3>(two));
  EXPECT_EQ(neg, std::get<4>(two));
  ASSERT_EQ(sums.size(), 3u);
  ASSERT_EQ(std::get<5>(two).size(), 3u);
  ASSERT_EQ(std::get<6>(two).size(), 3u);
  int64_t want_pos = 0, want_neg = 0;
  for (int64_t c = 0; c < channels; ++c) {
    const int64_t at = c * per;
    std::vector<float> rw_t(per), rlatent(per, 0.25f);
    std::vector<int8_t> rcodes(per);
    const auto rc = cpu::ttq_ternarize(w.data() + at, per, d, wp[c], wn[c], rw_t.data(), rcodes.data());
    want_pos += rc.positive;
    want_neg += rc.negative;
    const auto rs = cpu::ttq_backward(rcodes.data(), g.data() + at, per, wp[c], wn[c], true, rlatent.data());
    const auto rm = cpu::ttq_set_means(w.data() + at, per, d);
    EXPECT_TRUE(std::equal(rw_t.begin(), rw_t.end(), w_t.begin() + at)) << "row " << c;
    EXPECT_TRUE(std::equal(rcodes.begin(), rcodes.end(), codes.begin() + at)) << "row " << c;
    EXPECT_TRUE(std::equal(rlatent.begin(), rlatent.end(), latent.begin() + at)) << "row " << c;
    EXPECT_EQ(sums[c].wp, rs.wp) << "row " << c;
    EXPECT_EQ(sums[c].wn, rs.wn) << "row " << c;
    EXPECT_EQ(std::get<5>(two)[c].wp, rs.wp) << "row " << c;
    EXPECT_EQ(std::get<5>(two)[c].wn, rs.wn) << "row " << c;
    EXPECT_EQ(std::get<6>(two)[c].positive, rm.positive) << "row " << c;
    EXPECT_EQ(std::get<6>(two)[c].negative, rm.negative) << "row " << c;
    EXPECT_EQ(means[c].positive, rm.positive) << "row " << c;
    EXPECT_EQ(means[c].negative, rm.negative) << "row " << c;
    EXPECT_NE(sums[c].wp, 0.0);
  }
  EXPECT_EQ(pos, want_pos);
  EXPECT_EQ(neg, want_neg);
  EXPECT_GT(pos, 0);
  EXPECT_GT(neg, 0);
  EXPECT_THROW(cpu::ttq_backward_channels(codes.data(), g.data(), n, 11, wp.data(), wn.data(), std::vector<float>(n).data()),
               Error);  // 11 rows do not divide n
}

TEST(TtqCpu, ResultsIndependentOfThreadCount) {
#if !defined(_OPENMP)
  GTEST_SKIP() << "built without OpenMP";
#else
  struct Outputs {
    std::vector<float> thresholds, w_t, latent;
    std::vector<int8_t> codes;
    std::vector<int64_t> counts;
    std::vector<double> sums;
  };
  auto bits_equal = [](const auto& a, const auto& b) {
    return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(a[0])) == 0;
  };
  for (const int64_t n : {int64_t{1} << 20, (int64_t{1} << 20) + 13}) {
    std::vector<float> w(n), g(n);
    ttq::testing::fill_random(w.data(), n, 30);
    ttq::testing::fill_random(g.data(), n, 31, -1e-3f, 1e-3f);
    auto run = [&](int threads) {
      omp_set_num_threads(threads);
      Outputs o;
      for (auto mode : {math::ThresholdMode::Max, math::ThresholdMode::Sparsity, math::ThresholdMode::Twn}) {
        const auto th = cpu::ttq_threshold(mode, w.data(), n, 0.05f, 0.5);
        o.thresholds.push_back(th.threshold);
        o.thresholds.push_back(th.twn_scale);
      }
      const float d = o.thresholds[2];  // sparsity: half of the weights in the zero band
      o.w_t.resize(n);
      o.codes.resize(n);
      const auto c = cpu::ttq_ternarize(w.data(), n, d, 0.6f, 0.55f, o.w_t.data(), o.codes.data());
      o.counts = {c.positive, c.negative};
      o.latent.assign(n, 0.25f);
      for (bool scale_latent : {true, false}) {
        const auto s = cpu::ttq_backward(o.codes.data(), g.data(), n, 0.6f, 0.55f, scale_latent, o.latent.data());
        o.sums.push_back(s.wp);
        o.sums.push_back(s.wn);
      }
      const auto means = cpu::ttq_set_means(w.data(), n, d);
      o.thresholds.push_back(means.positive);
      o.thresholds.push_back(means.negative);
      return o;
    };
    const int before = omp_get_max_threads();
    const Outputs one = run(1), two = run(2);
    omp_set_num_threads(before);
    EXPECT_TRUE(bits_equal(one.thresholds, two.thresholds)) << "n = " << n;
    EXPECT_TRUE(bits_equal(one.w_t, two.w_t)) << "n = " << n;
    EXPECT_TRUE(bits_equal(one.codes, two.codes)) << "n = " << n;
    EXPECT_TRUE(bits_equal(one.latent, two.latent)) << "n = " << n;
    EXPECT_TRUE(bits_equal(one.sums, two.sums)) << "n = " << n;
    EXPECT_EQ(one.counts, two.counts) << "n = " << n;
    EXPECT_EQ(one.counts[0] + one.counts[1], n - n / 2) << "r = 0.5 puts floor(n / 2) weights in the zero band";
  }
#endif
}
