// Finite-difference gradient checks for every layer, on the reference kernels and (when built)
// on oneDNN.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>

#include "engine/core/rng.h"

#include "engine/nn/activation.h"
#include "engine/nn/batchnorm.h"
#include "engine/nn/conv2d.h"
#include "engine/nn/linear.h"
#include "engine/nn/loss.h"
#include "engine/nn/pooling.h"
#include "engine/nn/residual.h"
#include "kernels/cpu/ops.h"
#include "kernels/cpu/ops_ref.h"
#include "kernels/ops.h"
#include "tests/test_util.h"

using namespace ttq;
using ttq::testing::check_module_gradients;
using ttq::testing::random_tensor;

namespace {

class LayerGrad : public ::testing::TestWithParam<cpu::Kernels> {
 protected:
  void SetUp() override {
    if (GetParam() == cpu::Kernels::OneDNN && !cpu::onednn_built()) GTEST_SKIP() << "built without oneDNN";
    saved_ = cpu::kernels();
    cpu::set_kernels(GetParam());
  }
  void TearDown() override { cpu::set_kernels(saved_); }
  cpu::Kernels saved_ = cpu::Kernels::Reference;
};

void randomize(Parameter& p, uint64_t seed, float lo = -1.0f, float hi = 1.0f) {
  ttq::testing::fill_random(p.value.data<float>(), p.value.numel(), seed, lo, hi);
}

// Values spaced at least `gap` apart, shuffled: no ties or near-ties for max pooling.
Tensor distinct_tensor(const Shape& shape, uint64_t seed, float gap = 0.05f) {
  Tensor t = Tensor::empty(shape);
  const int64_t n = t.numel();
  std::vector<int64_t> idx(n);
  for (int64_t i = 0; i < n; ++i) idx[i] = i;
  Rng rng(seed);
  for (int64_t i = n - 1; i > 0; --i) std::swap(idx[i], idx[rng.below(i + 1)]);
  for (int64_t i = 0; i < n; ++i) t.data<float>()[i] = (idx[i] - n / 2) * gap;
  return t;
}

}  // namespace

TEST_P(LayerGrad, Conv2dPlain) {
  Conv2d c(3, 4, 3, 1, 1, 1, true);
  randomize(c.weight(), 1);
  randomize(c.bias(), 2);
  check_module_gradients(c, random_tensor({2, 3, 5, 6}, 3), 4);
}

TEST_P(LayerGrad, Conv2dStrideGroupsAsymmetric) {
  Conv2dOptions o{4, 6, 3, 2, 2, 1, false, 2, false};
  Conv2d c(o);
  randomize(c.weight(), 5);
  check_module_gradients(c, random_tensor({2, 4, 7, 6}, 6), 7);
}

TEST_P(LayerGrad, Conv2dSamePaddingStride2) {
  Conv2dOptions o{2, 3, 4, 4, 2, 0, true, 1, true};  // even kernel: asymmetric "same" padding
  Conv2d c(o);
  randomize(c.weight(), 8);
  randomize(c.bias(), 9);
  check_module_gradients(c, random_tensor({1, 2, 7, 8}, 10), 11);
}

TEST_P(LayerGrad, Linear) {
  Linear l(7, 5, true);
  randomize(l.weight(), 12);
  randomize(l.bias(), 13);
  check_module_gradients(l, random_tensor({3, 7}, 14), 15);
}

TEST_P(LayerGrad, LinearNoBias) {
  Linear l(4, 3, false);
  randomize(l.weight(), 16);
  check_module_gradients(l, random_tensor({5, 4}, 17), 18);
}

TEST_P(LayerGrad, BatchNorm2dTraining) {
  auto bn = make_batchnorm2d(3);
  randomize(bn->weight(), 19, 0.5f, 1.5f);
  randomize(bn->bias(), 20);
  check_module_gradients(*bn, random_tensor({4, 3, 3, 2}, 21), 22, 1e-2f, 3e-3, 3e-2);
}

TEST_P(LayerGrad, BatchNorm1dTraining) {
  auto bn = make_batchnorm1d(5);
  randomize(bn->weight(), 23, 0.5f, 1.5f);
  randomize(bn->bias(), 24);
  check_module_gradients(*bn, random_tensor({6, 5}, 25), 26, 1e-2f, 3e-3, 3e-2);
}

// As PyTorch: training on one value per channel is an error that names the input; evaluation
// (running statistics) takes a batch of one.
TEST_P(LayerGrad, BatchNormTrainingRefusesOneValuePerChannel) {
  auto bn1 = make_batchnorm1d(5);
  auto bn2 = make_batchnorm2d(3);
  for (auto* bn : {bn1.get(), bn2.get()}) {
    const Tensor x = bn == bn1.get() ? random_tensor({1, 5}, 27) : random_tensor({1, 3, 1, 1}, 28);
    try {
      bn->forward(x);
      ADD_FAILURE() << "a batch of one trained";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("more than one value per channel"), std::string::npos) << e.what();
    }
    bn->eval();
    const Tensor y = bn->forward(x);
    EXPECT_TRUE(std::isfinite(y.data<float>()[0]));
  }
  // The op itself refuses too (the GPU's and the CPU's running variance would differ).
  const BatchNormShape one{1, 3, 1};
  Tensor x = random_tensor({1, 3}, 30), gamma = Tensor::full({3}, 1.0f), beta = Tensor::zeros({3});
  Tensor rm = Tensor::zeros({3}), rv = Tensor::full({3}, 1.0f), y = Tensor::empty({1, 3}), mean = Tensor::empty({3}),
         var = Tensor::empty({3}), inv_std = Tensor::empty({3});
  EXPECT_THROW(ops::batchnorm_forward_train(one, x, gamma, beta, 1e-5f, 0.1f, rm, rv, y, mean, var, inv_std), Error);
  // Two values per channel train.
  bn2->train();
  EXPECT_NO_THROW(bn2->forward(random_tensor({1, 3, 2, 1}, 29)));
}

TEST_P(LayerGrad, ReLU) {
  ReLU r;
  Tensor x = random_tensor({2, 3, 4, 4}, 27);
  for (int64_t i = 0; i < x.numel(); ++i) {  // keep inputs away from the kink
    float& v = x.data<float>()[i];
    if (std::fabs(v) < 0.05f) v = v < 0 ? -0.05f : 0.05f;
  }
  check_module_gradients(r, x, 28);
}

TEST_P(LayerGrad, MaxPool) {
  auto p = make_maxpool2d({3, 2, 1, false, true});
  check_module_gradients(*p, distinct_tensor({2, 2, 7, 7}, 29), 30, 1e-2f, 1e-3, 1e-2, 80);
}

TEST_P(LayerGrad, MaxPoolSame) {
  auto p = make_maxpool2d({3, 2, 0, true, true});
  check_module_gradients(*p, distinct_tensor({1, 3, 6, 8}, 31), 32, 1e-2f, 1e-3, 1e-2, 80);
}

TEST_P(LayerGrad, AvgPoolIncludePad) {
  auto p = make_avgpool2d({3, 2, 1, false, true});
  check_module_gradients(*p, random_tensor({2, 2, 5, 6}, 33), 34);
}

TEST_P(LayerGrad, AvgPoolExcludePad) {
  auto p = make_avgpool2d({3, 2, 1, false, false});
  check_module_gradients(*p, random_tensor({2, 2, 5, 6}, 35), 36);
}

TEST_P(LayerGrad, GlobalAvgPoolAndFlatten) {
  GlobalAvgPool2d g;
  check_module_gradients(g, random_tensor({3, 4, 3, 5}, 37), 38);
  Flatten f;
  check_module_gradients(f, random_tensor({2, 3, 2, 2}, 39), 40);
}

TEST_P(LayerGrad, ShortcutA) {
  ShortcutA s(3, 8, 2);
  check_module_gradients(s, random_tensor({2, 3, 5, 6}, 41), 42);  // odd height: clipped window
}

TEST_P(LayerGrad, ResidualOptionA) {
  Residual r;
  auto c1 = r.add("conv1", std::make_shared<Conv2d>(2, 4, 3, 2, 1));
  r.add("bn1", make_batchnorm2d(4));
  auto c2 = r.add("conv2", std::make_shared<Conv2d>(4, 4, 3, 1, 1));
  r.set_shortcut("shortcut", std::make_shared<ShortcutA>(2, 4, 2));
  randomize(c1->weight(), 43);
  randomize(c2->weight(), 44);
  check_module_gradients(r, random_tensor({3, 2, 6, 6}, 45), 46, 1e-2f, 3e-3, 3e-2);
}

TEST_P(LayerGrad, ResidualOptionBWithReluAfterAdd) {
  Residual r(true);
  auto c1 = r.add("conv1", std::make_shared<Conv2d>(2, 3, 3, 2, 1));
  auto ds = std::make_shared<Sequential>();
  auto proj = ds->add("0", std::make_shared<Conv2d>(2, 3, 1, 2, 0));
  ds->add("1", make_batchnorm2d(3));
  r.set_shortcut("downsample", ds);
  randomize(c1->weight(), 47);
  randomize(proj->weight(), 48);
  check_module_gradients(r, random_tensor({4, 2, 4, 4}, 49), 50, 1e-3f, 3e-3, 3e-2);
  // PyTorch-style names
  auto names = r.named_parameters();
  ASSERT_EQ(names.size(), 4u);
  EXPECT_EQ(names[1].name, "downsample.0.weight");
  EXPECT_EQ(names[2].name, "downsample.1.weight");
}

INSTANTIATE_TEST_SUITE_P(Kernels, LayerGrad, ::testing::Values(cpu::Kernels::Reference, cpu::Kernels::OneDNN),
                         [](const auto& info) { return std::string(cpu::kernels_name(info.param)); });

// The ReLU loops over tensors large enough to be split over threads and vectorised: every element
// as the definition says (x if x > 0 or NaN, else +0; the gradient where that holds), infinities,
// signed zeros and NaN included, in place too.
TEST(ReluKernels, LargeTensorsFollowTheDefinition) {
  const int64_t n = (int64_t{1} << 18) + 5;
  const float specials[] = {std::numeric_limits<float>::quiet_NaN(), -0.0f, 0.0f,
                            std::numeric_limits<float>::infinity(), -std::numeric_limits<float>::infinity(),
                            std::numeric_limits<float>::denorm_min(), -std::numeric_limits<float>::denorm_min()};
  std::vector<float> x(n), dy(n), y(n), dx(n);
  ttq::testing::fill_random(x.data(), n, 71, -1.0f, 1.0f);
  ttq::testing::fill_random(dy.data(), n, 72, -1.0f, 1.0f);
  for (int64_t i = 0; i < n; i += 97) x[i] = specials[(i / 97) % 7];
  ref::relu_forward(n, x.data(), y.data());
  ref::relu_backward(n, y.data(), dy.data(), dx.data());
  for (int64_t i = 0; i < n; ++i) {
    const bool pass = x[i] > 0.0f || std::isnan(x[i]);
    if (pass) {
      ASSERT_TRUE(std::memcmp(&y[i], &x[i], sizeof(float)) == 0) << i;
      ASSERT_EQ(dx[i], dy[i]) << i;
    } else {
      ASSERT_TRUE(y[i] == 0.0f && !std::signbit(y[i])) << i << ": " << y[i];
      ASSERT_TRUE(dx[i] == 0.0f && !std::signbit(dx[i])) << i;
    }
  }
  std::vector<float> in_place = x;
  ref::relu_forward(n, in_place.data(), in_place.data());
  EXPECT_EQ(std::memcmp(in_place.data(), y.data(), sizeof(float) * n), 0);
  std::vector<float> grad_in_place = dy;
  ref::relu_backward(n, y.data(), grad_in_place.data(), grad_in_place.data());
  EXPECT_EQ(std::memcmp(grad_in_place.data(), dx.data(), sizeof(float) * n), 0);
}

// The option-A shortcut over a tensor large enough to be split over threads: each output the mean
// of its (clipped) stride window, the padded channels zero, each input's gradient its window's
// output gradient over the window's size.
TEST(ShortcutAKernels, LargeTensorsFollowTheDefinition) {
  const int64_t n = 6, c_in = 16, h = 33, w = 30, c_out = 32, pad = 8, stride = 2;
  const int64_t oh = 17, ow = 15;
  std::vector<float> x(n * c_in * h * w), dy(n * c_out * oh * ow), y(dy.size(), 7.0f), dx(x.size(), 7.0f);
  ttq::testing::fill_random(x.data(), static_cast<int64_t>(x.size()), 81, -1.0f, 1.0f);
  ttq::testing::fill_random(dy.data(), static_cast<int64_t>(dy.size()), 82, -1.0f, 1.0f);
  ref::shortcut_a_forward(n, c_in, h, w, c_out, pad, stride, x.data(), y.data());
  ref::shortcut_a_backward(n, c_in, h, w, c_out, pad, stride, dy.data(), dx.data());
  for (int64_t b = 0; b < n; ++b)
    for (int64_t co = 0; co < c_out; ++co)
      for (int64_t oy = 0; oy < oh; ++oy)
        for (int64_t ox = 0; ox < ow; ++ox) {
          const float got = y[((b * c_out + co) * oh + oy) * ow + ox];
          const int64_t c = co - pad;
          if (c < 0 || c >= c_in) {
            ASSERT_EQ(got, 0.0f) << b << " " << co;
            continue;
          }
          double sum = 0.0;
          int cnt = 0;
          for (int64_t iy = stride * oy; iy < std::min(h, stride * oy + stride); ++iy)
            for (int64_t ix = stride * ox; ix < std::min(w, stride * ox + stride); ++ix, ++cnt)
              sum += x[((b * c_in + c) * h + iy) * w + ix];
          ASSERT_EQ(got, static_cast<float>(sum / cnt)) << b << " " << co << " " << oy << " " << ox;
        }
  for (int64_t b = 0; b < n; ++b)
    for (int64_t c = 0; c < c_in; ++c)
      for (int64_t iy = 0; iy < h; ++iy)
        for (int64_t ix = 0; ix < w; ++ix) {
          const int64_t oy = iy / stride, ox = ix / stride;
          const int64_t cnt = (std::min(h, oy * stride + stride) - oy * stride) * (std::min(w, ox * stride + stride) - ox * stride);
          const float want = dy[((b * c_out + c + pad) * oh + oy) * ow + ox] / static_cast<float>(cnt);
          ASSERT_EQ(dx[((b * c_in + c) * h + iy) * w + ix], want) << b << " " << c << " " << iy << " " << ix;
        }
}

TEST(LossGrad, SoftmaxCrossEntropyWithSmoothing) {
  for (float smoothing : {0.0f, 0.1f}) {
    CrossEntropyLoss loss(smoothing);
    Tensor logits = random_tensor({4, 5}, 51, -3.0f, 3.0f);
    const std::vector<int32_t> labels{0, 4, 2, 2};
    loss.forward(logits, labels);
    Tensor d = loss.backward();
    for (int64_t i = 0; i < logits.numel(); ++i) {
      const double num = ttq::testing::numeric_grad(logits.data<float>(), i, 1e-2f, [&] {
        CrossEntropyLoss l(smoothing);
        return l.forward(logits, labels);
      });
      EXPECT_NEAR(d.data<float>()[i], num, 1e-3 + 1e-2 * std::fabs(num)) << "smoothing " << smoothing << " index " << i;
    }
  }
}

TEST(LossValue, MatchesHandComputedCrossEntropy) {
  CrossEntropyLoss loss;
  Tensor logits = Tensor::from_vector({1, 3}, {1.0f, 2.0f, 3.0f});
  const double expected = -std::log(std::exp(1.0) / (std::exp(1.0) + std::exp(2.0) + std::exp(3.0)));
  EXPECT_NEAR(loss.forward(logits, {0}), expected, 1e-6);
  CrossEntropyLoss smooth(0.3f);
  // target = 0.7 on class 2 + 0.1 everywhere: loss = -sum target * log p
  double lse = std::log(std::exp(1.0) + std::exp(2.0) + std::exp(3.0)), want = 0.0;
  for (int k = 0; k < 3; ++k) want -= (0.1 + (k == 2 ? 0.7 : 0.0)) * ((k + 1.0) - lse);
  EXPECT_NEAR(smooth.forward(logits, {2}), want, 1e-6);
}

TEST(LossValue, TopKCounting) {
  Tensor logits = Tensor::from_vector({3, 4}, {0.1f, 0.9f, 0.5f, 0.2f,   //
                                               0.3f, 0.2f, 0.1f, 0.4f,   //
                                               0.0f, 0.0f, 0.0f, 1.0f});
  const std::vector<int32_t> labels{2, 1, 3};
  EXPECT_EQ(count_topk_correct(logits, labels, 1), 1);  // only row 2
  EXPECT_EQ(count_topk_correct(logits, labels, 2), 2);  // row 0 (0.5 is 2nd) and row 2
  EXPECT_EQ(count_topk_correct(logits, labels, 3), 3);
  EXPECT_THROW(count_topk_correct(logits, {0, 1, 4}, 1), Error);
  // NaN ranks above every number (PyTorch's topk), NaNs among themselves by index.
  const float nan = std::numeric_limits<float>::quiet_NaN();
  Tensor with_nan = Tensor::from_vector({2, 3}, {0.1f, nan, 5.0f,  //
                                                 nan, 0.0f, nan});
  EXPECT_EQ(count_topk_correct(with_nan, {2, 1}, 1), 0);  // row 0: the NaN class 1 comes first
  EXPECT_EQ(count_topk_correct(with_nan, {1, 0}, 1), 2);  // row 1: NaN class 0 comes before NaN class 2
  EXPECT_EQ(count_topk_correct(with_nan, {0, 2}, 2), 1);  // row 0: 0.1 is third; row 1: NaN class 2 second
}

// The tensor ops on the CPU refuse a label that indexes no class, or a label count that is not
// the row count, naming the op, rather than reading outside the logits.
TEST(LossValue, OpsRefuseLabelsOutsideTheClasses) {
  const Tensor logits = random_tensor({3, 4}, 61, -1.0f, 1.0f);
  Tensor probs = Tensor::empty({3, 4}), d = Tensor::empty({3, 4});
  const Tensor good = Tensor::from_int32({0, 3, 1});
  EXPECT_NO_THROW(ops::softmax_xent_forward(logits, good, 0.0f, probs));
  EXPECT_NO_THROW(ops::softmax_xent_backward(probs, good, 0.0f, d));
  for (const std::vector<int32_t>& bad : {std::vector<int32_t>{0, 4, 1}, std::vector<int32_t>{0, -1, 1}}) {
    const Tensor labels = Tensor::from_int32(bad);
    const std::string fwd = ttq::testing::error_of([&] { ops::softmax_xent_forward(logits, labels, 0.0f, probs); });
    EXPECT_NE(fwd.find("softmax_xent_forward: label " + std::to_string(bad[1]) + " of row 1 is outside [0, 4)"),
              std::string::npos)
        << fwd;
    const std::string bwd = ttq::testing::error_of([&] { ops::softmax_xent_backward(probs, labels, 0.0f, d); });
    EXPECT_NE(bwd.find("softmax_xent_backward: label"), std::string::npos) << bwd;
    const std::string top = ttq::testing::error_of([&] { ops::count_topk_correct(logits, labels, 1); });
    EXPECT_NE(top.find("count_topk_correct: label"), std::string::npos) << top;
  }
  const std::string short_labels =
      ttq::testing::error_of([&] { ops::softmax_xent_backward(probs, Tensor::from_int32({0, 1}), 0.0f, d); });
  EXPECT_NE(short_labels.find("softmax_xent_backward"), std::string::npos) << short_labels;
}
