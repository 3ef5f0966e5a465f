// precision "bf16" on the CPU: the bf16 type's rounding, the cast op, the dtype rules of the ops,
// layers that follow their input's dtype, the bf16 TTQ path (codes, w_t, the fused pass against the
// per-layer path), gradients and a training trajectory against f32, the batch feed, and the
// experiment key. The CPU runs bf16 ops as f32 ops on widened inputs with rounded outputs: the
// reference the GPU's bf16 kernels are tested against (tests/test_gpu_bf16.cpp).
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <limits>
#include <memory>

#include "engine/core/bf16.h"
#include "engine/data/loader.h"
#include "engine/data/synthetic.h"
#include "engine/nn/activation.h"
#include "engine/nn/batchnorm.h"
#include "engine/nn/conv2d.h"
#include "engine/nn/linear.h"
#include "engine/nn/loss.h"
#include "engine/nn/pooling.h"
#include "engine/nn/residual.h"
#include "engine/nn/quantizable.h"
#include "engine/quant/quantize_model.h"
#include "engine/quant/ternary_pass.h"
#include "engine/train/batch_feed.h"
#include "engine/train/experiment.h"
#include "engine/train/step.h"
#include "kernels/ops.h"
#include "models/model.h"
#include "tests/test_util.h"

using namespace ttq;
using ttq::testing::error_of;

namespace {

uint16_t bits_of(float f) { return to_bf16(f).bits; }

float from_bits(uint32_t u) {
  float f = 0.0f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

std::vector<float> values(const Tensor& t) {
  const Tensor f = ops::cast_to(t.to(Device::CPU), DType::F32);
  return std::vector<float>(f.data<float>(), f.data<float>() + f.numel());
}

// ||a - b|| / ||b||
double rel_l2(const std::vector<float>& a, const std::vector<float>& b) {
  double num = 0.0, den = 0.0;
  for (size_t i = 0; i < a.size(); ++i) {
    num += (double(a[i]) - b[i]) * (double(a[i]) - b[i]);
    den += double(b[i]) * b[i];
  }
  return den > 0.0 ? std::sqrt(num / den) : std::sqrt(num);
}

const InputSpec kSpec{1, 10, 10, 4};

Model make_ternary(math::ThresholdMode mode = math::ThresholdMode::Max) {
  Model m = build_model(json{{"name", "cifar_resnet"}, {"depth", 8}}, kSpec, 3);
  QuantizeOptions q;
  q.full_precision_layers = m.full_precision_layers;
  q.ternary.mode = mode;
  q.ternary.r = 0.4;
  quantize_model(*m.net, q);
  return m;
}

// A 3x3 convolution, stride 1, padding 1: n x c_in x hw x hw -> n x c_out x hw x hw.
Conv2dShape conv3x3(int64_t n, int64_t c_in, int64_t hw, int64_t c_out) {
  Conv2dShape s;
  s.n = n;
  s.c_in = c_in;
  s.h = s.w = hw;
  s.c_out = c_out;
  s.kh = s.kw = 3;
  set_padding(s, false, 1);
  return s;
}

}  // namespace

TEST(Bf16, RoundsToNearestEvenLikeTheGpu) {
  EXPECT_EQ(bits_of(1.0f), 0x3F80);
  EXPECT_EQ(bits_of(-2.0f), 0xC000);
  // 1 + 2^-8 lies halfway between 1 (even mantissa) and 1 + 2^-7: ties go to the even one.
  EXPECT_EQ(bits_of(from_bits(0x3F808000u)), 0x3F80);
  // 1 + 3 * 2^-8 lies halfway between 1 + 2^-7 (odd) and 1 + 2^-6 (even).
  EXPECT_EQ(bits_of(from_bits(0x3F818000u)), 0x3F82);
  // Just above and below the halfway point.
  EXPECT_EQ(bits_of(from_bits(0x3F808001u)), 0x3F81);
  EXPECT_EQ(bits_of(from_bits(0x3F807FFFu)), 0x3F80);
  // Infinities stay; the largest float rounds up to infinity; NaN stays a (quiet) NaN.
  EXPECT_EQ(bits_of(std::numeric_limits<float>::infinity()), 0x7F80);
  EXPECT_EQ(bits_of(-std::numeric_limits<float>::infinity()), 0xFF80);
  EXPECT_EQ(bits_of(std::numeric_limits<float>::max()), 0x7F80);
  EXPECT_TRUE(std::isnan(round_bf16(std::numeric_limits<float>::quiet_NaN())));
  EXPECT_TRUE(std::isnan(to_float(to_bf16(from_bits(0x7F800001u)))));  // a signalling NaN whose top bits are 0
  // Subnormals round like any other value; bf16 -> f32 is exact.
  EXPECT_EQ(bits_of(from_bits(0x00018000u)), 0x0002);
  EXPECT_EQ(to_float(bf16{0x3FC0}), 1.5f);
  EXPECT_EQ(round_bf16(3.14159265f), 3.140625f);
}

TEST(Bf16, CastRoundsAndWidens) {
  const Tensor x = ttq::testing::random_tensor({3, 257}, 5, -100.0f, 100.0f);
  Tensor b = Tensor::empty(x.shape(), DType::BF16);
  ops::cast(x, b);
  for (int64_t i = 0; i < x.numel(); ++i)
    ASSERT_EQ(b.data<bf16>()[i].bits, to_bf16(x.data<float>()[i]).bits) << i;
  const Tensor back = ops::cast_to(b, DType::F32);
  for (int64_t i = 0; i < x.numel(); ++i) ASSERT_EQ(back.data<float>()[i], round_bf16(x.data<float>()[i])) << i;
  // Same dtype: a copy (cast_to returns the tensor itself).
  Tensor same = Tensor::empty(x.shape());
  ops::cast(x, same);
  EXPECT_EQ(values(same), values(x));
  EXPECT_EQ(ops::cast_to(x, DType::F32).raw(), x.raw());
  Tensor ints = Tensor::empty(x.shape(), DType::I32);
  EXPECT_NE(error_of([&] { ops::cast(x, ints); }).find("f32 <-> bf16 only"), std::string::npos);
  Tensor small = Tensor::empty({3}, DType::BF16);
  EXPECT_NE(error_of([&] { ops::cast(x, small); }).find("destination"), std::string::npos);
}

TEST(Bf16, OpsRefuseMixedActivationDtypes) {
  const Conv2dShape s = conv3x3(1, 2, 4, 3);
  Tensor x = Tensor::zeros({1, 2, 4, 4}, DType::BF16), w = Tensor::zeros({3, 2, 3, 3});
  Tensor y = Tensor::empty({1, 3, 4, 4}, DType::BF16);
  const std::string e = error_of([&] { ops::conv2d_forward(s, x, w, nullptr, y); });
  EXPECT_NE(e.find("conv2d_forward: mixes bf16"), std::string::npos) << e;
  // Biases stay f32 under bf16.
  Tensor wb = Tensor::zeros({3, 2, 3, 3}, DType::BF16), bias = Tensor::zeros({3}, DType::BF16);
  EXPECT_NE(error_of([&] { ops::conv2d_forward(s, x, wb, &bias, y); }).find("expects an f32 tensor"),
            std::string::npos);
  Tensor xi = Tensor::zeros({1, 2, 4, 4}, DType::I32), yi = Tensor::zeros({1, 2, 4, 4}, DType::I32);
  EXPECT_NE(error_of([&] { ops::relu_forward(xi, yi); }).find("expects f32 or bf16"), std::string::npos);
}

TEST(Bf16, EmulatedOpsRoundTheF32Result) {
  // relu and add on bf16 inputs are exact on the rounded values; a convolution is the f32
  // convolution of the rounded inputs, rounded once.
  const Tensor xf = ttq::testing::random_tensor({2, 3, 5, 5}, 1), wf = ttq::testing::random_tensor({4, 3, 3, 3}, 2);
  const Tensor bias = ttq::testing::random_tensor({4}, 3);
  const Tensor xb = ops::cast_to(xf, DType::BF16), wb = ops::cast_to(wf, DType::BF16);
  const Conv2dShape s = conv3x3(2, 3, 5, 4);
  Tensor yb = Tensor::empty({2, 4, 5, 5}, DType::BF16), yf = Tensor::empty({2, 4, 5, 5});
  ops::conv2d_forward(s, xb, wb, &bias, yb);
  ops::conv2d_forward(s, ops::cast_to(xb, DType::F32), ops::cast_to(wb, DType::F32), &bias, yf);
  for (int64_t i = 0; i < yf.numel(); ++i) ASSERT_EQ(yb.data<bf16>()[i].bits, to_bf16(yf.data<float>()[i]).bits);
  Tensor r = Tensor::empty(xb.shape(), DType::BF16);
  ops::relu_forward(xb, r);
  const auto xv = values(xb), rv = values(r);
  for (size_t i = 0; i < xv.size(); ++i) ASSERT_EQ(rv[i], std::max(xv[i], 0.0f));
  // f32 gradient += bf16 gradient.
  Tensor g = Tensor::full({4}, 1.0f);
  const Tensor gb = ops::cast_to(Tensor::from_vector({4}, {0.5f, -1.0f, 3.0f, 1e-3f}), DType::BF16);
  ops::add_accumulate(g, gb);
  EXPECT_EQ(values(g), (std::vector<float>{1.5f, 0.0f, 4.0f, 1.0f + round_bf16(1e-3f)}));
}

TEST(Bf16, LossTakesBf16LogitsAndGivesABf16Gradient) {
  const Tensor lf = ttq::testing::random_tensor({6, 5}, 4, -3.0f, 3.0f);
  const Tensor lb = ops::cast_to(lf, DType::BF16);
  const std::vector<int32_t> labels = {0, 4, 2, 2, 1, 3};
  CrossEntropyLoss a(0.1f), b(0.1f);
  const double la = a.forward(lb, labels), lr = b.forward(ops::cast_to(lb, DType::F32), labels);
  EXPECT_EQ(la, lr);  // the loss is f32 on the widened logits
  const Tensor da = a.backward(), db = b.backward();
  EXPECT_EQ(da.dtype(), DType::BF16);
  EXPECT_EQ(db.dtype(), DType::F32);
  for (int64_t i = 0; i < da.numel(); ++i) ASSERT_EQ(da.data<bf16>()[i].bits, to_bf16(db.data<float>()[i]).bits);
  EXPECT_EQ(count_topk_correct(lb, labels, 2), count_topk_correct(ops::cast_to(lb, DType::F32), labels, 2));
}

TEST(Bf16, TernaryWeightsInBf16HaveTheF32Codes) {
  for (auto mode : {math::ThresholdMode::Max, math::ThresholdMode::Sparsity, math::ThresholdMode::Twn}) {
    SCOPED_TRACE(threshold_mode_name(mode));
    const Tensor latent = ttq::testing::random_tensor({16, 8, 3, 3}, 11);
    const Tensor wp = Tensor::from_vector({1}, {0.7310f}), wn = Tensor::from_vector({1}, {1.2345f});
    Tensor d1 = Tensor::zeros({1}), s1 = Tensor::zeros({1}), d2 = Tensor::zeros({1}), s2 = Tensor::zeros({1});
    Tensor w32 = Tensor::empty(latent.shape()), w16 = Tensor::empty(latent.shape(), DType::BF16);
    Tensor c32 = Tensor::empty(latent.shape(), DType::I8), c16 = Tensor::empty(latent.shape(), DType::I8);
    ops::ttq_forward(mode, 0.05f, 0.3, latent, wp, wn, d1, s1, w32, c32);
    ops::ttq_forward(mode, 0.05f, 0.3, latent, wp, wn, d2, s2, w16, c16);
    EXPECT_EQ(values(d1), values(d2));
    EXPECT_EQ(values(s1), values(s2));
    EXPECT_EQ(std::memcmp(c32.raw(), c16.raw(), c32.nbytes()), 0);
    for (int64_t i = 0; i < latent.numel(); ++i)
      ASSERT_EQ(w16.data<bf16>()[i].bits, to_bf16(w32.data<float>()[i]).bits) << i;
  }
}

namespace {

// One layer at a time (well conditioned, unlike a whole network at initialisation, where BatchNorm
// backward cancels and amplifies any rounding, the input's included): the bf16 layer against the
// same layer in f32 on the same (bf16-representable) input and output gradient.
void expect_layer_follows_f32(const std::function<std::shared_ptr<Module>()>& make, const Shape& in, uint64_t seed) {
  std::shared_ptr<Module> a = make(), b = make();
  const Tensor x = ops::cast_to(ops::cast_to(ttq::testing::random_tensor(in, seed), DType::BF16), DType::F32);
  a->zero_grad();
  b->zero_grad();
  const Tensor ya = a->forward(x);
  const Tensor yb = b->forward(ops::cast_to(x, DType::BF16));
  ASSERT_EQ(yb.dtype(), DType::BF16);
  ASSERT_EQ(yb.shape(), ya.shape());
  EXPECT_LT(rel_l2(values(yb), values(ya)), 6e-3);
  const Tensor dy = ops::cast_to(ops::cast_to(ttq::testing::random_tensor(ya.shape(), seed + 1), DType::BF16), DType::F32);
  const Tensor dxa = a->backward(dy);
  const Tensor dxb = b->backward(ops::cast_to(dy, DType::BF16));
  ASSERT_EQ(dxb.dtype(), DType::BF16);
  EXPECT_LT(rel_l2(values(dxb), values(dxa)), 1e-2);
  auto pa = a->named_parameters(), pb = b->named_parameters();
  ASSERT_EQ(pa.size(), pb.size());
  for (size_t i = 0; i < pa.size(); ++i) {
    SCOPED_TRACE(pa[i].name);
    EXPECT_EQ(pb[i].param->value.dtype(), DType::F32);  // master weights and gradients stay f32
    EXPECT_EQ(pb[i].param->grad.dtype(), DType::F32);
    EXPECT_LT(rel_l2(values(pb[i].param->grad), values(pa[i].param->grad)), 1e-2);
  }
}

}  // namespace

TEST(Bf16, LayersFollowF32) {
  {
    SCOPED_TRACE("conv");
    expect_layer_follows_f32([] { return std::make_shared<Conv2d>(3, 8, 3, 1, 1, 1, true); }, {4, 3, 9, 9}, 1);
  }
  {
    SCOPED_TRACE("ternary conv");
    expect_layer_follows_f32(
        [] {
          auto c = std::make_shared<Conv2d>(4, 8, 3, 2, 1);
          TernaryConfig tc;
          c->enable_ternary(tc);
          return c;
        },
        {4, 4, 9, 9}, 2);
  }
  {
    SCOPED_TRACE("linear");
    expect_layer_follows_f32([] { return std::make_shared<Linear>(40, 7, true); }, {6, 40}, 3);
  }
  {
    SCOPED_TRACE("batch norm");
    expect_layer_follows_f32([] { return make_batchnorm2d(5); }, {8, 5, 6, 6}, 4);
  }
  for (PoolKind k : {PoolKind::Max, PoolKind::Avg}) {
    SCOPED_TRACE(k == PoolKind::Max ? "max pool" : "avg pool");
    Pool2dOptions po;
    po.kernel = 3;
    po.stride = 2;
    po.padding = 1;
    expect_layer_follows_f32([&] { return std::make_shared<Pool2d>(k, po); }, {2, 3, 9, 9}, 5);
  }
  {
    SCOPED_TRACE("global avgpool");
    expect_layer_follows_f32([] { return std::make_shared<GlobalAvgPool2d>(); }, {3, 4, 5, 5}, 6);
  }
  {
    SCOPED_TRACE("residual block with option-A shortcut");
    expect_layer_follows_f32(
        [] {
          auto r = std::make_shared<Residual>(true);
          r->add("conv", std::make_shared<Conv2d>(4, 8, 3, 2, 1));
          r->add("relu", std::make_shared<ReLU>());
          r->set_shortcut("shortcut", std::make_shared<ShortcutA>(4, 8, 2));
          return r;
        },
        {2, 4, 8, 8}, 7);
  }
}

TEST(Bf16, ModelComputesInBf16) {
  Model a = make_ternary(), b = make_ternary();
  SyntheticDataset data(kSpec, 64, 1.0f, 9);
  const Batch batch = data.batch(0, 16);
  const Tensor ya = a.net->forward(batch.images);
  const Tensor yb = b.net->forward(ops::cast_to(batch.images, DType::BF16));
  ASSERT_EQ(yb.dtype(), DType::BF16);
  EXPECT_LT(rel_l2(values(yb), values(ya)), 0.03);
  CrossEntropyLoss lb;
  lb.forward(yb, batch.labels);
  b.net->zero_grad();
  const Tensor dx = b.net->backward(lb.backward());
  EXPECT_EQ(dx.dtype(), DType::BF16);
  for (auto& np : b.net->named_parameters()) {
    EXPECT_EQ(np.param->grad.dtype(), DType::F32) << np.name;
    double sq = 0.0;
    for (float v : values(np.param->grad)) sq += double(v) * v;
    EXPECT_GT(sq, 0.0) << np.name << ": no gradient arrived";
  }
}

TEST(Bf16, TernaryPassTrainsExactlyLikeThePerLayerPath) {
  for (auto mode : {math::ThresholdMode::Max, math::ThresholdMode::Sparsity, math::ThresholdMode::Twn}) {
    SCOPED_TRACE(threshold_mode_name(mode));
    Model a = make_ternary(mode), b = make_ternary(mode);
    SyntheticDataset data(kSpec, 4096, 1.0f, 9);
    OptimizerConfig oc;
    oc.lr = 0.05;
    oc.weight_decay = 1e-4;
    auto oa = make_optimizer(a.net->named_parameters(), oc), ob = make_optimizer(b.net->named_parameters(), oc);
    CrossEntropyLoss loss;
    TernaryPass pass(*b.net, DType::BF16);
    for (int s = 0; s < 6; ++s) {
      const Batch batch = data.batch(s * 16, 16);
      const double l1 = train_step(*a.net, loss, *oa, batch, oc.lr, nullptr, ComputeFormat(DType::BF16)).loss;
      const double l2 = train_step(*b.net, loss, *ob, batch, oc.lr, &pass, ComputeFormat(DType::BF16)).loss;
      ASSERT_EQ(l1, l2) << "step " << s;
    }
    auto pa = a.net->named_parameters(), pb = b.net->named_parameters();
    for (size_t i = 0; i < pa.size(); ++i) EXPECT_EQ(values(pa[i].param->value), values(pb[i].param->value)) << pa[i].name;
    for (QuantizableLayer* l : quantizable_layers(*b.net))
      if (l->is_ternary()) {
        EXPECT_EQ(l->quantizer()->quantized().dtype(), DType::BF16) << l->path();
      }
  }
}

TEST(Bf16, TrainingFollowsTheF32Trajectory) {
  Model a = make_ternary(), b = make_ternary();
  SyntheticDataset data(kSpec, 4096, 1.0f, 9);
  OptimizerConfig oc;
  oc.lr = 0.05;
  auto oa = make_optimizer(a.net->named_parameters(), oc), ob = make_optimizer(b.net->named_parameters(), oc);
  CrossEntropyLoss loss;
  TernaryPass pa(*a.net), pb(*b.net, DType::BF16);
  double first_a = 0.0, last_a = 0.0, last_b = 0.0;
  // 50 steps at lr 0.05, then 40 at 0.005 so that BatchNorm's running statistics settle (this tiny
  // problem's evaluation-mode accuracy swings widely while the weights still move fast, in f32 too).
  for (int s = 0; s < 90; ++s) {
    const Batch batch = data.batch(s * 32, 32);
    const double lr = s < 50 ? 0.05 : 0.005;
    const double l1 = train_step(*a.net, loss, *oa, batch, lr, &pa).loss;
    const double l2 = train_step(*b.net, loss, *ob, batch, lr, &pb, ComputeFormat(DType::BF16)).loss;
    if (s == 0) {
      EXPECT_NEAR(l2, l1, 0.01 * l1) << "before any update";
      first_a = l1;
    }
    if (s >= 80) {
      last_a += l1 / 10;
      last_b += l2 / 10;
    }
  }
  // Both learn the problem to the same degree (the losses themselves end near zero, where their
  // ratio means little).
  EXPECT_LT(last_a, 0.05 * first_a);
  EXPECT_LT(last_b, 0.05 * first_a);
  // Held-out accuracy: bf16 training evaluated in bf16, against f32 training evaluated in f32,
  // and the bf16-trained weights evaluated both ways.
  const Batch test = data.batch(3000, 400);
  CrossEntropyLoss e;
  const StepResult rf = eval_step(*a.net, e, test);
  const StepResult rb = eval_step(*b.net, e, test, ComputeFormat(DType::BF16));
  const StepResult rbf = eval_step(*b.net, e, test);
  EXPECT_GT(rf.correct, 360);
  EXPECT_NEAR(static_cast<double>(rb.correct), static_cast<double>(rf.correct), 12.0);
  EXPECT_NEAR(static_cast<double>(rb.correct), static_cast<double>(rbf.correct), 4.0);
  EXPECT_NEAR(rb.loss, rbf.loss, 0.05 * rbf.loss + 0.01);
  std::printf("train loss: f32 first %.4f last %.4f, bf16 last %.4f; test correct of 400: f32 %lld, bf16 %lld "
              "(bf16 weights in f32: %lld)\n",
              first_a, last_a, last_b, static_cast<long long>(rf.correct), static_cast<long long>(rb.correct),
              static_cast<long long>(rbf.correct));
}

TEST(Bf16, BatchFeedConvertsTheImages) {
  auto src = std::make_shared<SyntheticDataset>(kSpec, 100, 1.0f, 4);
  LoaderConfig lc;
  lc.batch_size = 32;
  lc.workers = 0;
  Loader plain(src, lc), conv(src, lc);
  plain.start_epoch(0);
  conv.start_epoch(0);
  BatchFeed f32(plain, Device::CPU), f16(conv, Device::CPU, ComputeFormat(DType::BF16));
  DeviceBatch a, b;
  int batches = 0;
  while (f32.next(a)) {
    ASSERT_TRUE(f16.next(b));
    ASSERT_EQ(b.images.dtype(), DType::BF16);
    const auto av = values(a.images), bv = values(b.images);
    ASSERT_EQ(av.size(), bv.size());
    for (size_t i = 0; i < av.size(); ++i) ASSERT_EQ(bv[i], round_bf16(av[i]));
    ++batches;
  }
  EXPECT_FALSE(f16.next(b));
  EXPECT_EQ(batches, 3);
  EXPECT_NE(error_of([&] { BatchFeed bad(plain, Device::CPU, ComputeFormat(DType::I32)); }).find("f32 or bf16"),
            std::string::npos);
}

TEST(Bf16, ExperimentKey) {
  json j = json::parse(R"({"name": "p", "model": {"name": "small_convnet"}, "stages": [{"name": "fp"}],
                           "data": {"dataset": "synthetic"}})");
  EXPECT_EQ(parse_experiment(j).compute_dtype(), DType::F32);
  EXPECT_EQ(parse_experiment(j).resolved.at("precision"), "fp32");
  j["precision"] = "bf16";
  EXPECT_EQ(parse_experiment(j).compute_dtype(), DType::BF16);
  j["precision"] = "fp16";
  EXPECT_NE(error_of([&] { parse_experiment(j); }).find("'precision' must be fp32 or bf16"), std::string::npos);
}
