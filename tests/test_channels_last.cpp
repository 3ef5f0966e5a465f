// memory_format "channels_last" on the CPU: the Tensor layout rules, the NCHW <-> NHWC permutation,
// the layout rules of the ops, layers that follow their input's layout, whole models trained in
// channels-last against contiguous (bitwise, in f32 and bf16), the batch feed and the experiment
// key. The CPU runs a channels-last op as the contiguous op on permuted copies, so its results are
// bitwise the contiguous ones: the reference the GPU's NHWC kernels are tested against
// (tests/test_gpu_channels_last.cpp).
#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <vector>

#include "engine/data/loader.h"
#include "engine/data/synthetic.h"
#include "engine/nn/activation.h"
#include "engine/nn/batchnorm.h"
#include "engine/nn/conv2d.h"
#include "engine/nn/linear.h"
#include "engine/nn/loss.h"
#include "engine/nn/pooling.h"
#include "engine/nn/residual.h"
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
using ttq::testing::random_tensor;

namespace {

// The values in [N, C, H, W] order (whatever the layout), as f32.
std::vector<float> logical(const Tensor& t) {
  const Tensor c = ops::cast_to(ops::to_layout(t.to(Device::CPU), Layout::Contiguous), DType::F32);
  return std::vector<float>(c.data<float>(), c.data<float>() + c.numel());
}

Tensor cl(const Tensor& t) { return ops::to_layout(t, Layout::ChannelsLast); }

bool contains(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

}  // namespace

TEST(ChannelsLast, TensorLayoutRules) {
  const Tensor t = Tensor::empty({2, 3, 4, 5}, DType::F32, Device::CPU, Layout::ChannelsLast);
  EXPECT_TRUE(t.channels_last());
  EXPECT_EQ(t.str(), "f32[2, 3, 4, 5] cpu channels_last");
  EXPECT_EQ(Tensor::empty_like(t).layout(), Layout::ChannelsLast);
  EXPECT_EQ(t.clone().layout(), Layout::ChannelsLast);
  EXPECT_EQ(t.slice(0, 1).layout(), Layout::ChannelsLast);  // images are outermost in both layouts
  EXPECT_EQ(t.view({2, 3, 4, 5}).layout(), Layout::ChannelsLast);
  EXPECT_TRUE(contains(error_of([&] { t.view({2, 60}); }), "convert it to contiguous first"));
  EXPECT_TRUE(contains(error_of([&] { Tensor::empty({6, 20}, DType::F32, Device::CPU, Layout::ChannelsLast); }),
                       "must be 4-D"));
  Tensor c = Tensor::empty({2, 3, 4, 5});
  EXPECT_TRUE(contains(error_of([&] { c.copy_from(t); }), "copy_from"));
}

TEST(ChannelsLast, PermutationPutsChannelsInnermost) {
  const int64_t N = 2, C = 3, H = 4, W = 5;
  const Tensor x = random_tensor({N, C, H, W}, 1);
  for (DType dt : {DType::F32, DType::BF16}) {
    SCOPED_TRACE(dtype_name(dt));
    const Tensor xc = ops::cast_to(x, dt);
    const Tensor y = cl(xc);
    ASSERT_EQ(y.layout(), Layout::ChannelsLast);
    ASSERT_EQ(y.shape(), xc.shape());
    const auto* src = static_cast<const uint8_t*>(xc.raw());
    const auto* dst = static_cast<const uint8_t*>(y.raw());
    const size_t es = dtype_size(dt);
    for (int64_t n = 0; n < N; ++n)
      for (int64_t c = 0; c < C; ++c)
        for (int64_t h = 0; h < H; ++h)
          for (int64_t w = 0; w < W; ++w) {
            const int64_t i = ((n * C + c) * H + h) * W + w, j = ((n * H + h) * W + w) * C + c;
            ASSERT_EQ(std::memcmp(src + i * es, dst + j * es, es), 0) << n << "," << c << "," << h << "," << w;
          }
    const Tensor back = ops::to_layout(y, Layout::Contiguous);
    EXPECT_EQ(std::memcmp(back.raw(), xc.raw(), xc.nbytes()), 0);
    EXPECT_EQ(ops::to_layout(y, Layout::ChannelsLast).raw(), y.raw());  // already there: itself
  }
  Tensor wrong = Tensor::empty({2, 3, 5, 4}, DType::F32, Device::CPU, Layout::ChannelsLast);
  EXPECT_TRUE(contains(error_of([&] { ops::to_layout(x, wrong); }), "shape and dtype must agree"));
}

TEST(ChannelsLast, OpsRefuseMixedLayouts) {
  const Tensor a = random_tensor({2, 3, 4, 4}, 1), b = cl(random_tensor({2, 3, 4, 4}, 2));
  Tensor out = Tensor::empty_like(a);
  EXPECT_TRUE(contains(error_of([&] { ops::add(a, b, out); }), "add: mixes contiguous"));
  Tensor y = Tensor::empty_like(a);
  EXPECT_TRUE(contains(error_of([&] { ops::relu_forward(b, y); }), "relu_forward: mixes"));
  Conv2dShape s;
  s.n = 2, s.c_in = 3, s.h = s.w = 4, s.c_out = 2;
  const Tensor w = cl(random_tensor({2, 3, 1, 1}, 3));
  Tensor yc = Tensor::empty({2, 2, 4, 4});
  EXPECT_TRUE(contains(error_of([&] { ops::conv2d_forward(s, a, w, nullptr, yc); }), "weight must be contiguous"));
}

namespace {

// A layer fed the same input and output gradient in both layouts: the outputs, input gradients
// and parameter gradients must be bitwise equal (the CPU runs channels-last on permuted copies),
// and the channels-last layer's output and input gradient must be channels-last.
void expect_layer_same_in_both_layouts(const std::function<std::shared_ptr<Module>()>& make, const Shape& in,
                                       uint64_t seed, DType dt) {
  std::shared_ptr<Module> a = make(), b = make();
  const Tensor x = ops::cast_to(random_tensor(in, seed), dt);
  a->zero_grad();
  b->zero_grad();
  const Tensor ya = a->forward(x);
  const Tensor yb = b->forward(cl(x));
  EXPECT_EQ(yb.layout(), ya.ndim() == 4 ? Layout::ChannelsLast : Layout::Contiguous);
  ASSERT_EQ(logical(yb), logical(ya));
  const Tensor dy = ops::cast_to(random_tensor(ya.shape(), seed + 1), dt);
  const Tensor dxa = a->backward(dy);
  const Tensor dxb = b->backward(dy.ndim() == 4 ? cl(dy) : dy);
  EXPECT_EQ(dxb.layout(), Layout::ChannelsLast);
  EXPECT_EQ(logical(dxb), logical(dxa));
  auto pa = a->named_parameters(), pb = b->named_parameters();
  ASSERT_EQ(pa.size(), pb.size());
  for (size_t i = 0; i < pa.size(); ++i) {
    EXPECT_EQ(pb[i].param->grad.layout(), Layout::Contiguous) << pa[i].name;
    EXPECT_EQ(logical(pb[i].param->grad), logical(pa[i].param->grad)) << pa[i].name;
  }
}

void all_layers_same_in_both_layouts(DType dt) {
  {
    SCOPED_TRACE("conv with bias, groups and TensorFlow 'same' (asymmetric) padding");
    expect_layer_same_in_both_layouts(
        [] {
          Conv2dOptions o;
          o.in_channels = 4;
          o.out_channels = 6;
          o.kernel_h = o.kernel_w = 4;
          o.stride = 2;
          o.groups = 2;
          o.same_padding = true;
          o.bias = true;
          return std::make_shared<Conv2d>(o);
        },
        {3, 4, 9, 9}, 1, dt);
  }
  {
    SCOPED_TRACE("ternary conv");
    expect_layer_same_in_both_layouts(
        [] {
          auto c = std::make_shared<Conv2d>(3, 8, 3, 1, 1);
          TernaryConfig tc;
          c->enable_ternary(tc);
          return c;
        },
        {2, 3, 7, 7}, 2, dt);
  }
  {
    SCOPED_TRACE("batch norm");
    expect_layer_same_in_both_layouts([] { return make_batchnorm2d(5); }, {4, 5, 6, 6}, 3, dt);
  }
  for (PoolKind k : {PoolKind::Max, PoolKind::Avg}) {
    SCOPED_TRACE(k == PoolKind::Max ? "max pool" : "avg pool");
    Pool2dOptions po;
    po.kernel = 3;
    po.stride = 2;
    po.same_padding = true;
    expect_layer_same_in_both_layouts([&] { return std::make_shared<Pool2d>(k, po); }, {2, 3, 8, 8}, 4, dt);
  }
  {
    SCOPED_TRACE("global avgpool");
    expect_layer_same_in_both_layouts([] { return std::make_shared<GlobalAvgPool2d>(); }, {3, 4, 5, 5}, 5, dt);
  }
  {
    SCOPED_TRACE("flatten + linear");
    expect_layer_same_in_both_layouts(
        [] {
          auto s = std::make_shared<Sequential>();
          s->add("flatten", std::make_shared<Flatten>());
          s->add("fc", std::make_shared<Linear>(3 * 4 * 5, 7, true));
          return s;
        },
        {2, 3, 4, 5}, 6, dt);
  }
  {
    SCOPED_TRACE("residual block with option-A shortcut and ReLU");
    expect_layer_same_in_both_layouts(
        [] {
          auto r = std::make_shared<Residual>(true);
          r->add("conv", std::make_shared<Conv2d>(4, 8, 3, 2, 1));
          r->add("bn", make_batchnorm2d(8));
          r->add("relu", std::make_shared<ReLU>());
          r->set_shortcut("shortcut", std::make_shared<ShortcutA>(4, 8, 2));
          return r;
        },
        {2, 4, 8, 8}, 7, dt);
  }
}

}  // namespace

TEST(ChannelsLast, LayersGiveTheContiguousResultF32) { all_layers_same_in_both_layouts(DType::F32); }
TEST(ChannelsLast, LayersGiveTheContiguousResultBf16) { all_layers_same_in_both_layouts(DType::BF16); }

TEST(ChannelsLast, BatchNormInferenceAndSyncPieces) {
  const BatchNormShape s{3, 4, 10};
  const Tensor x = random_tensor({3, 4, 2, 5}, 8), dy = random_tensor({3, 4, 2, 5}, 9);
  const Tensor gamma = random_tensor({4}, 10, 0.5f, 1.5f), beta = random_tensor({4}, 11), rm = random_tensor({4}, 12),
               rv = random_tensor({4}, 13, 0.5f, 2.0f);
  Tensor ya = Tensor::empty_like(x), yb = Tensor::empty_like(cl(x));
  ops::batchnorm_forward_infer(s, x, gamma, beta, rm, rv, 1e-5f, ya);
  ops::batchnorm_forward_infer(s, cl(x), gamma, beta, rm, rv, 1e-5f, yb);
  EXPECT_EQ(logical(yb), logical(ya));
  // The synchronised batch norm pieces: sums, normalisation, backward sums and dx.
  Tensor sa = Tensor::empty({4}, DType::F64), sb = Tensor::empty({4}, DType::F64);
  ops::bn_channel_sums(s, x, nullptr, sa);
  ops::bn_channel_sums(s, cl(x), nullptr, sb);
  EXPECT_EQ(std::memcmp(sa.raw(), sb.raw(), sa.nbytes()), 0);
  Tensor mean64 = Tensor::empty({4}, DType::F64), is64 = Tensor::empty({4}, DType::F64);
  for (int c = 0; c < 4; ++c) {
    mean64.data<double>()[c] = sa.data<double>()[c] / 30.0;
    is64.data<double>()[c] = 0.9 + 0.05 * c;
  }
  ops::bn_normalize(s, x, mean64, is64, gamma, beta, ya);
  ops::bn_normalize(s, cl(x), mean64, is64, gamma, beta, yb);
  EXPECT_EQ(logical(yb), logical(ya));
  const Tensor mean = random_tensor({4}, 14), inv_std = random_tensor({4}, 15, 0.5f, 1.5f);
  Tensor ba = Tensor::empty({8}, DType::F64), bb = Tensor::empty({8}, DType::F64);
  ops::bn_backward_sums(s, x, dy, mean, inv_std, ba);
  ops::bn_backward_sums(s, cl(x), cl(dy), mean, inv_std, bb);
  EXPECT_EQ(std::memcmp(ba.raw(), bb.raw(), ba.nbytes()), 0);
  Tensor dxa = Tensor::empty_like(x), dxb = Tensor::empty_like(cl(x));
  ops::bn_backward_dx(s, x, dy, mean, inv_std, gamma, ba, 30.0, dxa);
  ops::bn_backward_dx(s, cl(x), cl(dy), mean, inv_std, gamma, ba, 30.0, dxb);
  EXPECT_EQ(logical(dxb), logical(dxa));
}

namespace {

const InputSpec kSpec{3, 8, 8, 4};

// Passes its input on, recording the layout and dtype of the last input and output gradient that
// went through: put in front of a model, it shows what the model was really fed.
class Probe : public Module {
 public:
  Probe() : Module("Probe") {}
  Layout in_layout = Layout::Contiguous, grad_layout = Layout::Contiguous;
  DType in_dtype = DType::F32;

 protected:
  void check_input(const Tensor&) const override {}
  Tensor forward_impl(const Tensor& x) override {
    in_layout = x.layout();
    in_dtype = x.dtype();
    return x;
  }
  Tensor backward_impl(const Tensor& dy) override {
    grad_layout = dy.layout();
    return dy;
  }
};

struct ProbedModel {
  std::shared_ptr<Sequential> net = std::make_shared<Sequential>();
  std::shared_ptr<Probe> probe = std::make_shared<Probe>();
};

ProbedModel make_ternary(const char* name, int depth = 0) {
  json spec{{"name", name}};
  if (depth) spec["depth"] = depth;
  Model m = build_model(spec, kSpec, 3);
  QuantizeOptions q;
  q.full_precision_layers = m.full_precision_layers;
  quantize_model(*m.net, q);
  ProbedModel out;
  out.net->add("probe", out.probe);
  out.net->add("model", m.net);
  return out;
}

// Steps of the same model from the same batches, contiguous vs channels-last: every parameter
// bitwise equal after them, the losses equal at every step.
void expect_training_same_in_both_layouts(const char* name, int depth, DType dt) {
  ProbedModel a = make_ternary(name, depth), b = make_ternary(name, depth);
  SyntheticDataset data(kSpec, 512, 1.0f, 9);
  OptimizerConfig oc;
  oc.lr = 0.05;
  oc.weight_decay = 1e-4;
  auto oa = make_optimizer(a.net->named_parameters(), oc), ob = make_optimizer(b.net->named_parameters(), oc);
  CrossEntropyLoss loss;
  TernaryPass pa(*a.net, dt), pb(*b.net, dt);
  for (int s = 0; s < 4; ++s) {
    const Batch batch = data.batch(s * 8, 8);
    const double l1 = train_step(*a.net, loss, *oa, batch, oc.lr, &pa, {dt, Layout::Contiguous}).loss;
    const double l2 = train_step(*b.net, loss, *ob, batch, oc.lr, &pb, {dt, Layout::ChannelsLast}).loss;
    ASSERT_EQ(l1, l2) << "step " << s;
    // What the models were fed, forward and backward.
    ASSERT_EQ(b.probe->in_layout, Layout::ChannelsLast);
    ASSERT_EQ(b.probe->grad_layout, Layout::ChannelsLast);
    ASSERT_EQ(b.probe->in_dtype, dt);
    ASSERT_EQ(a.probe->in_layout, Layout::Contiguous);
  }
  auto qa = a.net->named_parameters(), qb = b.net->named_parameters();
  for (size_t i = 0; i < qa.size(); ++i)
    EXPECT_EQ(logical(qa[i].param->value), logical(qb[i].param->value)) << qa[i].name;
  const Batch test = data.batch(400, 64);
  const StepResult ea = eval_step(*a.net, loss, test, {dt, Layout::Contiguous});
  const StepResult eb = eval_step(*b.net, loss, test, {dt, Layout::ChannelsLast});
  EXPECT_EQ(ea.loss, eb.loss);
  EXPECT_EQ(ea.correct, eb.correct);
}

}  // namespace

TEST(ChannelsLast, TrainingMatchesContiguousBitwise) {
  for (DType dt : {DType::F32, DType::BF16}) {
    SCOPED_TRACE(dtype_name(dt));
    {
      SCOPED_TRACE("cifar_resnet depth 8 (option-A shortcuts)");
      expect_training_same_in_both_layouts("cifar_resnet", 8, dt);
    }
    {
      SCOPED_TRACE("small_convnet (flatten into linear layers)");
      expect_training_same_in_both_layouts("small_convnet", 0, dt);
    }
  }
}

TEST(ChannelsLast, BatchFeedPermutesTheImages) {
  auto src = std::make_shared<SyntheticDataset>(kSpec, 48, 1.0f, 4);
  LoaderConfig lc;
  lc.batch_size = 16;
  lc.workers = 0;
  Loader plain(src, lc), other(src, lc), third(src, lc);
  plain.start_epoch(0);
  other.start_epoch(0);
  third.start_epoch(0);
  BatchFeed fa(plain, Device::CPU), fb(other, Device::CPU, {DType::BF16, Layout::ChannelsLast}),
      fc(third, Device::CPU, {DType::F32, Layout::ChannelsLast});
  DeviceBatch a, b, c;
  int batches = 0;
  while (fa.next(a)) {
    ASSERT_TRUE(fb.next(b));
    ASSERT_TRUE(fc.next(c));
    ASSERT_EQ(b.images.dtype(), DType::BF16);
    ASSERT_EQ(b.images.layout(), Layout::ChannelsLast);
    ASSERT_EQ(c.images.dtype(), DType::F32);
    ASSERT_EQ(c.images.layout(), Layout::ChannelsLast);
    const auto av = logical(a.images), bv = logical(b.images);
    ASSERT_EQ(av.size(), bv.size());
    for (size_t i = 0; i < av.size(); ++i) ASSERT_EQ(bv[i], round_bf16(av[i]));
    ASSERT_EQ(logical(c.images), av);
    ++batches;
  }
  EXPECT_FALSE(fb.next(b));
  EXPECT_FALSE(fc.next(c));
  EXPECT_EQ(batches, 3);
}

TEST(ChannelsLast, ExperimentKey) {
  json j = json::parse(R"({"name": "p", "model": {"name": "small_convnet"}, "stages": [{"name": "fp"}],
                           "data": {"dataset": "synthetic"}})");
  EXPECT_EQ(parse_experiment(j).compute_format().layout, Layout::Contiguous);
  EXPECT_EQ(parse_experiment(j).resolved.at("memory_format"), "contiguous");
  j["memory_format"] = "channels_last";
  j["precision"] = "bf16";
  const ComputeFormat f = parse_experiment(j).compute_format();
  EXPECT_EQ(f.layout, Layout::ChannelsLast);
  EXPECT_EQ(f.dtype, DType::BF16);
  j["memory_format"] = "nhwc";
  EXPECT_TRUE(contains(error_of([&] { parse_experiment(j); }), "'memory_format' must be contiguous or channels_last"));
}
