// The ImageNet models: ResNet-18/34 with torchvision's state-dict names, shapes and init; the
// paper's AlexNet (shapes, parameter count, feature-map arithmetic); their default
// full-precision layers under TTQ; a few training steps that overfit a fixed batch in full
// precision and with TTQ; and loading a plain (torchvision-style) safetensors state dict.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>

#include "engine/io/safetensors.h"
#include "engine/nn/batchnorm.h"
#include "engine/nn/conv2d.h"
#include "engine/nn/loss.h"
#include "engine/nn/quantizable.h"
#include "engine/optim/optimizer.h"
#include "engine/quant/quantize_model.h"
#include "engine/train/checkpoint.h"
#include "models/model.h"
#include "tests/test_util.h"

using namespace ttq;
using ttq::testing::error_of;
using ttq::testing::random_tensor;
using ttq::testing::TempDir;

namespace {

struct NamedShape {
  std::string name;
  Shape shape;
};

// torchvision.models.resnet18() named_parameters(), in order, at 1000 classes.
const std::vector<NamedShape> kTorchvisionResNet18 = {
    {"conv1.weight", {64, 3, 7, 7}},
    {"bn1.weight", {64}},
    {"bn1.bias", {64}},
    {"layer1.0.conv1.weight", {64, 64, 3, 3}},
    {"layer1.0.bn1.weight", {64}},
    {"layer1.0.bn1.bias", {64}},
    {"layer1.0.conv2.weight", {64, 64, 3, 3}},
    {"layer1.0.bn2.weight", {64}},
    {"layer1.0.bn2.bias", {64}},
    {"layer1.1.conv1.weight", {64, 64, 3, 3}},
    {"layer1.1.bn1.weight", {64}},
    {"layer1.1.bn1.bias", {64}},
    {"layer1.1.conv2.weight", {64, 64, 3, 3}},
    {"layer1.1.bn2.weight", {64}},
    {"layer1.1.bn2.bias", {64}},
    {"layer2.0.conv1.weight", {128, 64, 3, 3}},
    {"layer2.0.bn1.weight", {128}},
    {"layer2.0.bn1.bias", {128}},
    {"layer2.0.conv2.weight", {128, 128, 3, 3}},
    {"layer2.0.bn2.weight", {128}},
    {"layer2.0.bn2.bias", {128}},
    {"layer2.0.downsample.0.weight", {128, 64, 1, 1}},
    {"layer2.0.downsample.1.weight", {128}},
    {"layer2.0.downsample.1.bias", {128}},
    {"layer2.1.conv1.weight", {128, 128, 3, 3}},
    {"layer2.1.bn1.weight", {128}},
    {"layer2.1.bn1.bias", {128}},
    {"layer2.1.conv2.weight", {128, 128, 3, 3}},
    {"layer2.1.bn2.weight", {128}},
    {"layer2.1.bn2.bias", {128}},
    {"layer3.0.conv1.weight", {256, 128, 3, 3}},
    {"layer3.0.bn1.weight", {256}},
    {"layer3.0.bn1.bias", {256}},
    {"layer3.0.conv2.weight", {256, 256, 3, 3}},
    {"layer3.0.bn2.weight", {256}},
    {"layer3.0.bn2.bias", {256}},
    {"layer3.0.downsample.0.weight", {256, 128, 1, 1}},
    {"layer3.0.downsample.1.weight", {256}},
    {"layer3.0.downsample.1.bias", {256}},
    {"layer3.1.conv1.weight", {256, 256, 3, 3}},
    {"layer3.1.bn1.weight", {256}},
    {"layer3.1.bn1.bias", {256}},
    {"layer3.1.conv2.weight", {256, 256, 3, 3}},
    {"layer3.1.bn2.weight", {256}},
    {"layer3.1.bn2.bias", {256}},
    {"layer4.0.conv1.weight", {512, 256, 3, 3}},
    {"layer4.0.bn1.weight", {512}},
    {"layer4.0.bn1.bias", {512}},
    {"layer4.0.conv2.weight", {512, 512, 3, 3}},
    {"layer4.0.bn2.weight", {512}},
    {"layer4.0.bn2.bias", {512}},
    {"layer4.0.downsample.0.weight", {512, 256, 1, 1}},
    {"layer4.0.downsample.1.weight", {512}},
    {"layer4.0.downsample.1.bias", {512}},
    {"layer4.1.conv1.weight", {512, 512, 3, 3}},
    {"layer4.1.bn1.weight", {512}},
    {"layer4.1.bn1.bias", {512}},
    {"layer4.1.conv2.weight", {512, 512, 3, 3}},
    {"layer4.1.bn2.weight", {512}},
    {"layer4.1.bn2.bias", {512}},
    {"fc.weight", {1000, 512}},
    {"fc.bias", {1000}},
};

// The paper's AlexNet at 224x224 and 1000 classes (conv weights are [out, in / groups, k, k]):
//   conv0  96 * 3 * 12 * 12       =     41,472
//   conv1  256 * 48 * 5 * 5       =    307,200   (groups 2)
//   conv2  384 * 256 * 3 * 3      =    884,736
//   conv3  384 * 192 * 3 * 3      =    663,552   (groups 2)
//   conv4  256 * 192 * 3 * 3      =    442,368   (groups 2)
//   fc0    4096 * 9216            = 37,748,736   (256 x 6 x 6 features)
//   fc1    4096 * 4096            = 16,777,216
//   fct    1000 * 4096 + 1000     =  4,097,000
//   BN weight + bias: 2 * (256 + 384 + 384 + 256 + 4096 + 4096) = 18,944
//   total                           60,981,224
const std::vector<NamedShape> kAlexNet224 = {
    {"conv0.weight", {96, 3, 12, 12}},
    {"conv1.weight", {256, 48, 5, 5}},
    {"bn1.weight", {256}},
    {"bn1.bias", {256}},
    {"conv2.weight", {384, 256, 3, 3}},
    {"bn2.weight", {384}},
    {"bn2.bias", {384}},
    {"conv3.weight", {384, 192, 3, 3}},
    {"bn3.weight", {384}},
    {"bn3.bias", {384}},
    {"conv4.weight", {256, 192, 3, 3}},
    {"bn4.weight", {256}},
    {"bn4.bias", {256}},
    {"fc0.weight", {4096, 9216}},
    {"bnfc0.weight", {4096}},
    {"bnfc0.bias", {4096}},
    {"fc1.weight", {4096, 4096}},
    {"bnfc1.weight", {4096}},
    {"bnfc1.bias", {4096}},
    {"fct.weight", {1000, 4096}},
    {"fct.bias", {1000}},
};

std::vector<NamedShape> param_shapes(Module& m) {
  std::vector<NamedShape> out;
  for (auto& np : m.named_parameters()) out.push_back({np.name, np.param->value.shape()});
  return out;
}

int64_t param_count(Module& m) {
  int64_t n = 0;
  for (auto& np : m.named_parameters()) n += np.param->value.numel();
  return n;
}

void expect_same_list(const std::vector<NamedShape>& got, const std::vector<NamedShape>& want) {
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < want.size(); ++i) {
    EXPECT_EQ(got[i].name, want[i].name) << "parameter " << i;
    EXPECT_EQ(got[i].shape, want[i].shape) << want[i].name;
  }
}

// Every BatchNorm weight "<bn>.weight" has "<bn>.running_mean" and "<bn>.running_var" buffers,
// in the same order, and there are no other buffers.
void expect_bn_buffers(Module& m) {
  std::vector<std::string> want;
  for (auto& [path, mod] : m.named_modules())
    if (dynamic_cast<BatchNorm*>(mod)) {
      want.push_back(path + ".running_mean");
      want.push_back(path + ".running_var");
    }
  std::vector<std::string> got;
  for (auto& nb : m.named_buffers()) got.push_back(nb.name);
  EXPECT_EQ(got, want);
}

double variance(const Tensor& t) {
  double s = 0.0, sq = 0.0;
  const float* p = t.data<float>();
  for (int64_t i = 0; i < t.numel(); ++i) {
    s += p[i];
    sq += static_cast<double>(p[i]) * p[i];
  }
  const double mean = s / t.numel();
  return sq / t.numel() - mean * mean;
}

Tensor& weight_of(Module& net, const std::string& layer) {
  auto* l = dynamic_cast<QuantizableLayer*>(net.find(layer));
  TTQ_CHECK(l, "no layer '" << layer << "'");
  return l->weight().value;
}

struct FitResult {
  double first = 0.0, last = 0.0;
};

// Repeated training steps on one fixed batch (training mode: batch statistics in BatchNorm).
FitResult fit_fixed_batch(Model& m, const Tensor& x, const std::vector<int32_t>& labels, const OptimizerConfig& oc,
                          int steps) {
  auto opt = make_optimizer(m.net->named_parameters(), oc);
  CrossEntropyLoss loss;
  m.net->train(true);
  FitResult r;
  for (int s = 0; s < steps; ++s) {
    opt->zero_grad();
    const double l = loss.forward(m.net->forward(x), labels);
    EXPECT_TRUE(std::isfinite(l)) << m.name << " step " << s;
    m.net->backward(loss.backward());
    opt->step(oc.lr);
    if (s == 0) r.first = l;
    r.last = l;
  }
  std::printf("%s: loss %.4f -> %.4f in %d steps\n", m.name.c_str(), r.first, r.last, steps);
  return r;
}

// Copies of every parameter and buffer, to restart from the same initial weights.
std::vector<Tensor> snapshot(Module& m) {
  std::vector<Tensor> out;
  for (auto& np : m.named_parameters()) out.push_back(np.param->value.clone());
  for (auto& nb : m.named_buffers()) out.push_back(nb.tensor->clone());
  return out;
}

void restore(Module& m, const std::vector<Tensor>& saved) {
  size_t i = 0;
  for (auto& np : m.named_parameters()) np.param->value.copy_from(saved.at(i++));
  for (auto& nb : m.named_buffers()) nb.tensor->copy_from(saved.at(i++));
  ASSERT_EQ(i, saved.size());
}

std::vector<int32_t> labels_mod(int n, int classes) {
  std::vector<int32_t> l(static_cast<size_t>(n));
  for (int i = 0; i < n; ++i) l[static_cast<size_t>(i)] = i % classes;
  return l;
}

}  // namespace

// ---- ResNet-18 / 34 ------------------------------------------------------------------------
// Building a model draws all its weights, the bulk of these tests' time: each test builds few.

TEST(ImageNetResNet, ResNet18MatchesTorchvision) {
  Model m = build_model(json{{"name", "resnet18"}}, InputSpec{3, 224, 224, 1000}, 3);
  EXPECT_EQ(m.name, "resnet18");
  expect_same_list(param_shapes(*m.net), kTorchvisionResNet18);
  EXPECT_EQ(param_count(*m.net), 11689512);  // torchvision's resnet18: 11,689,512
  expect_bn_buffers(*m.net);
  EXPECT_EQ(m.net->named_buffers().size(), 40u);  // 20 BatchNorms
  EXPECT_EQ(m.full_precision_layers, (std::vector<std::string>{"conv1", "fc"}));
  auto* bn = dynamic_cast<BatchNorm*>(m.net->find("layer3.0.downsample.1"));
  ASSERT_NE(bn, nullptr);
  EXPECT_FLOAT_EQ(bn->eps(), 1e-5f);
  EXPECT_FLOAT_EQ(bn->momentum(), 0.1f);

  // torchvision's init. Convs: kaiming_normal_(mode="fan_out", nonlinearity="relu"), i.e.
  // var = 2 / (k * k * C_out).
  const double v3 = variance(weight_of(*m.net, "layer4.1.conv2")), w3 = 2.0 / (9 * 512);
  EXPECT_NEAR(v3, w3, 0.02 * w3);
  const double v7 = variance(weight_of(*m.net, "conv1")), w7 = 2.0 / (49 * 64);
  EXPECT_NEAR(v7, w7, 0.05 * w7);
  const double v1 = variance(weight_of(*m.net, "layer4.0.downsample.0")), w1 = 2.0 / 512;
  EXPECT_NEAR(v1, w1, 0.02 * w1);
  // fc: Linear's default U(-1/sqrt(512), 1/sqrt(512)) for weight and bias.
  auto* fc = dynamic_cast<QuantizableLayer*>(m.net->find("fc"));
  ASSERT_NE(fc, nullptr);
  const float bound = 1.0f / std::sqrt(512.0f);
  for (const Tensor* t : {&fc->weight().value, &fc->bias().value})
    for (int64_t i = 0; i < t->numel(); ++i) ASSERT_LE(std::fabs(t->data<float>()[i]), bound);
  EXPECT_NEAR(variance(fc->weight().value), bound * bound / 3.0, 0.03 * bound * bound / 3.0);
  // BatchNorm: weight 1, bias 0, running statistics 0 and 1.
  auto* bn2 = dynamic_cast<BatchNorm*>(m.net->find("layer2.1.bn2"));
  ASSERT_NE(bn2, nullptr);
  for (int64_t i = 0; i < 128; ++i) {
    EXPECT_EQ(bn2->weight().value.data<float>()[i], 1.0f);
    EXPECT_EQ(bn2->bias().value.data<float>()[i], 0.0f);
    EXPECT_EQ(bn2->running_mean().data<float>()[i], 0.0f);
    EXPECT_EQ(bn2->running_var().data<float>()[i], 1.0f);
  }

  // Output shapes: 224x224 (7x7 before the pool), and any other size (32x32: 1x1 at layer4;
  // non-square).
  EXPECT_EQ(m.net->forward(random_tensor({2, 3, 224, 224}, 1)).shape(), Shape({2, 1000}));
  EXPECT_EQ(m.net->forward(random_tensor({2, 3, 32, 32}, 2)).shape(), Shape({2, 1000}));
  EXPECT_EQ(m.net->forward(random_tensor({1, 3, 40, 24}, 3)).shape(), Shape({1, 1000}));

  // TTQ: everything but conv1 and fc becomes ternary, the projections included.
  QuantizeOptions q;
  q.full_precision_layers = m.full_precision_layers;
  const std::vector<std::string> ternary = quantize_model(*m.net, q);
  std::vector<std::string> want;
  for (const auto& ns : kTorchvisionResNet18) {
    const std::string layer = ns.name.substr(0, ns.name.rfind('.'));
    if (ns.shape.size() == 4 && layer != "conv1") want.push_back(layer);
  }
  EXPECT_EQ(want.size(), 19u);  // 16 block convs + 3 projections
  EXPECT_EQ(ternary, want);
  for (auto* l : quantizable_layers(*m.net))
    EXPECT_EQ(l->is_ternary(), l->path() != "conv1" && l->path() != "fc") << l->path();
  bool has_scales = false;
  for (auto& np : m.net->named_parameters()) has_scales |= np.name == "layer2.0.downsample.0.wp";
  EXPECT_TRUE(has_scales);
}

TEST(ImageNetResNet, ResNet34HasTheSameLayoutWith3463Blocks) {
  Model m = build_model(json{{"name", "resnet34"}}, InputSpec{3, 224, 224, 1000}, 1);
  EXPECT_EQ(param_count(*m.net), 21797672);  // torchvision's resnet34: 21,797,672
  std::map<std::string, Shape> shapes;
  for (auto& ns : param_shapes(*m.net)) shapes[ns.name] = ns.shape;
  EXPECT_EQ(shapes.at("layer1.2.conv2.weight"), Shape({64, 64, 3, 3}));
  EXPECT_EQ(shapes.at("layer2.3.conv1.weight"), Shape({128, 128, 3, 3}));
  EXPECT_EQ(shapes.at("layer3.5.bn2.weight"), Shape({256}));
  EXPECT_EQ(shapes.at("layer4.2.conv2.weight"), Shape({512, 512, 3, 3}));
  EXPECT_EQ(shapes.at("layer4.0.downsample.0.weight"), Shape({512, 256, 1, 1}));
  EXPECT_EQ(shapes.count("layer4.3.conv1.weight"), 0u);
  EXPECT_EQ(shapes.count("layer2.1.downsample.0.weight"), 0u);
  EXPECT_EQ(quantizable_layers(*m.net).size(), 34u + 3u);  // 33 convs + fc, and 3 projections
  EXPECT_EQ(m.full_precision_layers, (std::vector<std::string>{"conv1", "fc"}));
  EXPECT_EQ(m.net->forward(random_tensor({1, 3, 64, 64}, 1)).shape(), Shape({1, 1000}));
}

// ---- AlexNet -------------------------------------------------------------------------------

TEST(AlexNet, At224MatchesThePaperModel) {
  Model m = build_model(json{{"name", "alexnet"}}, InputSpec{3, 224, 224, 1000}, 5);
  EXPECT_EQ(m.name, "alexnet");
  expect_same_list(param_shapes(*m.net), kAlexNet224);
  EXPECT_EQ(param_count(*m.net), 60981224);
  expect_bn_buffers(*m.net);
  EXPECT_EQ(m.full_precision_layers, (std::vector<std::string>{"conv0", "fct"}));
  auto* bn = dynamic_cast<BatchNorm*>(m.net->find("bnfc1"));
  ASSERT_NE(bn, nullptr);
  EXPECT_FLOAT_EQ(bn->eps(), 1e-4f);
  EXPECT_FLOAT_EQ(bn->momentum(), 0.1f);  // TensorFlow's decay 0.9
  // Only fct has a bias; conv1/3/4 are grouped with TF "same" padding; conv0 is valid.
  for (auto* l : quantizable_layers(*m.net)) EXPECT_EQ(l->has_bias(), l->path() == "fct") << l->path();
  for (const char* name : {"conv1", "conv3", "conv4"}) {
    auto* c = dynamic_cast<Conv2d*>(m.net->find(name));
    ASSERT_NE(c, nullptr);
    EXPECT_EQ(c->options().groups, 2) << name;
    EXPECT_TRUE(c->options().same_padding) << name;
  }
  EXPECT_FALSE(dynamic_cast<Conv2d*>(m.net->find("conv0"))->options().same_padding);

  // Init: N(0, 2 / fan_in) for every conv and FC weight; fct's bias 0.
  const std::pair<const char*, double> init[] = {
      {"conv0", 2.0 / (3 * 144)}, {"conv1", 2.0 / (48 * 25)}, {"conv2", 2.0 / (256 * 9)},
      {"conv3", 2.0 / (192 * 9)}, {"fc0", 2.0 / 9216},        {"fct", 2.0 / 4096}};
  for (const auto& [layer, want] : init) EXPECT_NEAR(variance(weight_of(*m.net, layer)), want, 0.05 * want) << layer;
  auto* fct = dynamic_cast<QuantizableLayer*>(m.net->find("fct"));
  for (int64_t i = 0; i < 1000; ++i) ASSERT_EQ(fct->bias().value.data<float>()[i], 0.0f);

  // Feature maps, layer by layer: conv0 54x54, pool1 27x27, pool2 14x14, conv4 14x14, pool4 6x6.
  m.net->eval();
  std::map<std::string, Shape> seen;
  Tensor h = random_tensor({2, 3, 224, 224}, 1);
  for (auto& [name, layer] : m.net->children()) {
    h = layer->forward(h);
    seen[name] = h.shape();
  }
  EXPECT_EQ(seen.at("conv0"), Shape({2, 96, 54, 54}));
  EXPECT_EQ(seen.at("conv1"), Shape({2, 256, 54, 54}));
  EXPECT_EQ(seen.at("pool1"), Shape({2, 256, 27, 27}));
  EXPECT_EQ(seen.at("conv2"), Shape({2, 384, 27, 27}));
  EXPECT_EQ(seen.at("pool2"), Shape({2, 384, 14, 14}));
  EXPECT_EQ(seen.at("conv4"), Shape({2, 256, 14, 14}));
  EXPECT_EQ(seen.at("pool4"), Shape({2, 256, 6, 6}));
  EXPECT_EQ(seen.at("flatten"), Shape({2, 9216}));
  EXPECT_EQ(h.shape(), Shape({2, 1000}));
  for (int64_t i = 0; i < h.numel(); ++i) ASSERT_TRUE(std::isfinite(h.data<float>()[i]));
}

TEST(AlexNet, SmallInputsAndQuantization) {
  // 64x64: conv0 14, pool1 7, pool2 4, pool4 1: fc0 sees 256 features.
  Model s = build_model(json{{"name", "alexnet"}}, InputSpec{3, 64, 64, 10}, 1);
  EXPECT_EQ(s.net->forward(random_tensor({2, 3, 64, 64}, 2)).shape(), Shape({2, 10}));
  EXPECT_EQ(weight_of(*s.net, "fc0").shape(), Shape({4096, 256}));
  EXPECT_EQ(param_count(*s.net), 20225034);  // 60,981,224 - 4096 * (9216 - 256) - 990 * 4097
  QuantizeOptions q;
  q.full_precision_layers = s.full_precision_layers;
  EXPECT_EQ(quantize_model(*s.net, q), (std::vector<std::string>{"conv1", "conv2", "conv3", "conv4", "fc0", "fc1"}));
  EXPECT_FALSE(dynamic_cast<QuantizableLayer*>(s.net->find("conv0"))->is_ternary());
  EXPECT_FALSE(dynamic_cast<QuantizableLayer*>(s.net->find("fct"))->is_ternary());
  EXPECT_EQ(s.net->forward(random_tensor({2, 3, 64, 64}, 2)).shape(), Shape({2, 10}));

  // The smallest height (44: conv0 9, pool1 5, pool2 3, pool4 1) with a width of 108
  // (conv0 25, pool1 13, pool2 7, pool4 3): pool4 is 1x3.
  Model r = build_model(json{{"name", "alexnet"}}, InputSpec{1, 44, 108, 4}, 1);
  EXPECT_EQ(weight_of(*r.net, "fc0").shape(), Shape({4096, 3 * 256}));
  EXPECT_EQ(r.net->forward(random_tensor({2, 1, 44, 108}, 3)).shape(), Shape({2, 4}));
  const std::string e = error_of([] { build_model(json{{"name", "alexnet"}}, InputSpec{3, 43, 64, 10}, 1); });
  EXPECT_NE(e.find("at least 44x44"), std::string::npos) << e;
}

// ---- configuration -------------------------------------------------------------------------

TEST(ImageNetModelConfig, NamesOptionsAndErrors) {
  const auto names = model_names();
  for (const char* n : {"alexnet", "resnet18", "resnet34"})
    EXPECT_NE(std::find(names.begin(), names.end(), n), names.end()) << n;
  const InputSpec in{3, 44, 44, 10};
  Model a = build_model(json{{"name", "alexnet"}, {"bn_eps", 1e-3}, {"bn_momentum", 0.01}}, in, 1);
  auto* bn = dynamic_cast<BatchNorm*>(a.net->find("bn3"));
  ASSERT_NE(bn, nullptr);
  EXPECT_FLOAT_EQ(bn->eps(), 1e-3f);
  EXPECT_FLOAT_EQ(bn->momentum(), 0.01f);
  // Checked before anything is built.
  const std::string bad = error_of([&] { build_model(json{{"name", "alexnet"}, {"bn_momentum", 1.5}}, in, 1); });
  EXPECT_NE(bad.find("bn_momentum must be in [0, 1]"), std::string::npos) << bad;
  const std::string eps = error_of([&] { build_model(json{{"name", "resnet18"}, {"bn_eps", 0}}, in, 1); });
  EXPECT_NE(eps.find("resnet18: bn_eps must be positive"), std::string::npos) << eps;
  EXPECT_NE(error_of([&] { build_model(json{{"name", "resnet19"}}, in, 1); }).find("did you mean 'resnet18'"),
            std::string::npos);
  // Unknown keys are refused (after the build).
  const std::string typo = error_of([&] { build_model(json{{"name", "resnet18"}, {"bn_esp", 1e-4}}, in, 1); });
  EXPECT_NE(typo.find("unknown key 'model.bn_esp' (did you mean 'model.bn_eps'?)"), std::string::npos) << typo;
}

// ---- training ------------------------------------------------------------------------------
// Training steps on one fixed synthetic batch (8 images, 10 classes) must drive the loss from
// about ln(10) = 2.3 towards 0, in full precision and with TTQ from the same initial weights.

TEST(ImageNetTraining, AlexNetOverfitsAFixedBatchInFullPrecisionAndTtq) {
  const InputSpec in{3, 48, 48, 10};
  const Tensor x = random_tensor({8, 3, 48, 48}, 11);
  const auto labels = labels_mod(8, 10);
  OptimizerConfig oc;  // the paper's AlexNet optimizer, with a larger step
  oc.type = "adam";
  oc.lr = 1e-3;
  oc.eps = 1e-5;
  Model m = build_model(json{{"name", "alexnet"}}, in, 4);
  const std::vector<Tensor> init = snapshot(*m.net);
  const FitResult f = fit_fixed_batch(m, x, labels, oc, 6);
  EXPECT_GT(f.first, 1.5);
  EXPECT_LT(f.last, 0.2 * f.first);

  restore(*m.net, init);
  QuantizeOptions q;
  q.full_precision_layers = m.full_precision_layers;
  quantize_model(*m.net, q);
  const FitResult t = fit_fixed_batch(m, x, labels, oc, 6);
  EXPECT_GT(t.first, 1.5);
  EXPECT_LT(t.last, 0.2 * t.first);
  auto* fc0 = dynamic_cast<QuantizableLayer*>(m.net->find("fc0"));
  EXPECT_NE(fc0->quantizer()->stats().wp, 1.0f) << "the scales train";
}

TEST(ImageNetTraining, ResNet18OverfitsAFixedBatchInFullPrecisionAndTtq) {
  const InputSpec in{3, 32, 32, 10};
  const Tensor x = random_tensor({8, 3, 32, 32}, 12);
  const auto labels = labels_mod(8, 10);
  OptimizerConfig oc;
  oc.type = "sgd";
  oc.lr = 0.01;  // TTQ from scratch diverges at 0.05: dL/dWp sums over up to 2.4M weights
  oc.momentum = 0.9;
  Model m = build_model(json{{"name", "resnet18"}}, in, 6);
  const std::vector<Tensor> init = snapshot(*m.net);
  const FitResult f = fit_fixed_batch(m, x, labels, oc, 12);
  EXPECT_GT(f.first, 1.5);
  EXPECT_LT(f.last, 0.2 * f.first);

  restore(*m.net, init);
  QuantizeOptions q;
  q.full_precision_layers = m.full_precision_layers;
  quantize_model(*m.net, q);
  const FitResult t = fit_fixed_batch(m, x, labels, oc, 12);
  EXPECT_GT(t.first, 1.5);
  EXPECT_LT(t.last, 0.2 * t.first);
}

// ---- plain state dicts (torchvision weights) -----------------------------------------------

namespace {

// Writes the model's parameters and buffers as safetensors.torch.save_file would write
// torchvision's state dict: no engine metadata (or PyTorch's {"format": "pt"}), and optionally
// BatchNorm's int64 num_batches_tracked scalars.
void write_state_dict(const std::string& path, Module& net, bool pt_metadata, bool counters,
                      const std::string& skip = "", const std::map<std::string, Tensor>& replace = {},
                      const std::map<std::string, Tensor>& extra = {}) {
  SafeTensorsWriter w;
  auto put = [&](const std::string& name, const Tensor& t) {
    if (name == skip) return;
    auto r = replace.find(name);
    w.add(name, r != replace.end() ? r->second : t);
  };
  for (auto& np : net.named_parameters()) put(np.name, np.param->value);
  for (auto& nb : net.named_buffers()) put(nb.name, *nb.tensor);
  if (counters)
    for (auto& [p, m] : net.named_modules())
      if (dynamic_cast<BatchNorm*>(m)) {
        Tensor n = Tensor::zeros({}, DType::I64);
        n.data<int64_t>()[0] = 1234;
        w.add(p + ".num_batches_tracked", n);
      }
  for (const auto& [name, t] : extra) w.add(name, t);
  if (pt_metadata) w.add_metadata("format", "pt");
  w.write(path);
}

}  // namespace

TEST(StateDict, TorchvisionStyleFileLoadsIntoAFreshModel) {
  TempDir d;
  const InputSpec in{3, 32, 32, 10};
  Model src = build_model(json{{"name", "resnet18"}}, in, 1);
  // Non-default running statistics so that loading them is visible.
  uint64_t seed = 100;
  for (auto& nb : src.net->named_buffers()) nb.tensor->copy_from(random_tensor(nb.tensor->shape(), seed++, 0.5f, 1.5f));
  write_state_dict(d.file("tv.safetensors"), *src.net, true, true);
  write_state_dict(d.file("plain.safetensors"), *src.net, false, false);

  Model dst = build_model(json{{"name", "resnet18"}}, in, 2);
  for (const char* file : {"tv.safetensors", "plain.safetensors"}) {
    for (auto& np : dst.net->named_parameters()) np.param->value.fill(0.5f);
    for (auto& nb : dst.net->named_buffers()) nb.tensor->fill(0.5f);
    const Checkpoint ck = read_checkpoint(d.file(file));
    EXPECT_EQ(ck.format, "state-dict");
    EXPECT_TRUE(ck.config.is_null());
    load_model(*dst.net, ck);
    auto ps = src.net->named_parameters(), pd = dst.net->named_parameters();
    ASSERT_EQ(ps.size(), pd.size());
    for (size_t i = 0; i < ps.size(); ++i)
      EXPECT_TRUE(ttq::testing::all_close(pd[i].param->value, ps[i].param->value, 0, 0)) << file << " " << ps[i].name;
    auto bs = src.net->named_buffers(), bd = dst.net->named_buffers();
    ASSERT_EQ(bs.size(), bd.size());
    for (size_t i = 0; i < bs.size(); ++i)
      EXPECT_TRUE(ttq::testing::all_close(*bd[i].tensor, *bs[i].tensor, 0, 0)) << file << " " << bs[i].name;
  }
  // Same weights, same outputs; then TTQ starts from them as from any full-precision model.
  src.net->eval();
  dst.net->eval();
  const Tensor x = random_tensor({2, 3, 32, 32}, 7);
  EXPECT_TRUE(ttq::testing::all_close(dst.net->forward(x), src.net->forward(x), 0, 0));
  QuantizeOptions q;
  q.full_precision_layers = dst.full_precision_layers;
  EXPECT_EQ(quantize_model(*dst.net, q).size(), 19u);
}

TEST(StateDict, MissingWrongShapeAndExtraTensorsAreErrorsNamingThem) {
  TempDir d;
  const InputSpec in{3, 32, 32, 10};
  Model src = build_model(json{{"name", "resnet18"}}, in, 1);
  Model small = build_model(json{{"name", "small_convnet"}}, in, 1);
  // A failed load leaves a model partly loaded; loading its own file into it is harmless.
  auto load_into = [&](const std::string& model, const std::string& file) {
    load_model(model == "resnet18" ? *src.net : *small.net, read_checkpoint(file));
  };

  write_state_dict(d.file("missing.safetensors"), *src.net, true, true, "layer3.1.bn2.running_var");
  std::string e = error_of([&] { load_into("resnet18", d.file("missing.safetensors")); });
  EXPECT_NE(e.find("missing.safetensors' (a plain state dict) does not fit this model: it has no tensor "
                   "'layer3.1.bn2.running_var'"),
            std::string::npos)
      << e;
  // torchvision's 1000-class fc into a 10-class model.
  write_state_dict(d.file("classes.safetensors"), *src.net, true, true, "",
                   {{"fc.weight", Tensor::zeros({1000, 512})}, {"fc.bias", Tensor::zeros({1000})}});
  e = error_of([&] { load_into("resnet18", d.file("classes.safetensors")); });
  EXPECT_NE(e.find("tensor 'fc.weight' is f32[1000, 512] in the file but f32[10, 512] here"), std::string::npos) << e;

  // The same checks for any model (a small one keeps the files small).
  write_state_dict(d.file("small.safetensors"), *small.net, false, false);
  e = error_of([&] { load_into("resnet18", d.file("small.safetensors")); });
  EXPECT_NE(e.find("tensor 'conv1.weight' is f32[8, 3, 3, 3] in the file but f32[64, 3, 7, 7] here"),
            std::string::npos)
      << e;
  EXPECT_EQ(error_of([&] { load_into("small_convnet", d.file("small.safetensors")); }), "<no error>");
  // Another dtype (an unconverted integer or half-precision file) is refused.
  write_state_dict(d.file("dtype.safetensors"), *small.net, true, true, "",
                   {{"fc.bias", Tensor::zeros({10}, DType::I32)}});
  e = error_of([&] { load_into("small_convnet", d.file("dtype.safetensors")); });
  EXPECT_NE(e.find("tensor 'fc.bias' is i32[10] in the file but f32[10] here"), std::string::npos) << e;
  // Extra tensors: only the BatchNorm counters are ignored.
  write_state_dict(d.file("extra.safetensors"), *small.net, true, true, "", {},
                   {{"fc2.weight", Tensor::zeros({4, 4})}});
  e = error_of([&] { load_into("small_convnet", d.file("extra.safetensors")); });
  EXPECT_NE(e.find("does not fit this model: this model has no 'fc2.weight'"), std::string::npos) << e;
  write_state_dict(d.file("counter.safetensors"), *small.net, true, true, "", {},
                   {{"conv1.num_batches_tracked", Tensor::zeros({}, DType::I64)}});
  e = error_of([&] { load_into("small_convnet", d.file("counter.safetensors")); });
  EXPECT_NE(e.find("this model has no 'conv1.num_batches_tracked'"), std::string::npos) << e;
  // A ternary model needs its scales, which a plain state dict does not have.
  Model tq = build_model(json{{"name", "small_convnet"}}, in, 2);
  QuantizeOptions q;
  q.full_precision_layers = tq.full_precision_layers;
  quantize_model(*tq.net, q);
  e = error_of([&] { load_model(*tq.net, read_checkpoint(d.file("small.safetensors"))); });
  EXPECT_NE(e.find("it has no tensor 'conv2.wp'"), std::string::npos) << e;

  // Other formats are still refused by name.
  SafeTensorsWriter w;
  w.add("x", Tensor::zeros({1}));
  w.add_metadata("format", "tf");
  w.write(d.file("tf.safetensors"));
  e = error_of([&] { read_checkpoint(d.file("tf.safetensors")); });
  EXPECT_NE(e.find("has format 'tf'"), std::string::npos) << e;
}
