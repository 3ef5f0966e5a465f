// Models built by name: architecture (parameter counts and names), output shapes, config errors.
#include <gtest/gtest.h>

#include "engine/config/parse.h"
#include "engine/nn/quantizable.h"
#include "engine/quant/quantize_model.h"
#include "models/model.h"
#include "tests/test_util.h"

using namespace ttq;
using ttq::testing::error_of;

namespace {

int64_t conv_weight_count(Module& m) {
  int64_t n = 0;
  for (auto* l : quantizable_layers(m))
    if (l->type() == "Conv2d") n += l->weight().value.numel();
  return n;
}

}  // namespace

TEST(CifarResNet, DepthsHaveThePaperLayerCounts) {
  // 3x3 conv weights of the 6n+2 family with 16/32/64 channels and option A shortcuts
  // (ResNet-20: 267,696, the usual 0.27M).
  const std::pair<const char*, int> cases[] = {{"resnet20", 3}, {"resnet32", 5}, {"resnet44", 7}, {"resnet56", 9}};
  for (const auto& [name, n] : cases) {
    Model m = build_model(json{{"name", name}}, InputSpec{3, 32, 32, 10}, 1);
    const int64_t expected = 3 * 16 * 9 + 2 * n * 16 * 16 * 9 + 16 * 32 * 9 + (2 * n - 1) * 32 * 32 * 9 +
                             32 * 64 * 9 + (2 * n - 1) * 64 * 64 * 9;
    EXPECT_EQ(conv_weight_count(*m.net), expected) << name;
    EXPECT_EQ(static_cast<int>(quantizable_layers(*m.net).size()), 6 * n + 2) << name;  // convs + fc
  }
}

TEST(CifarResNet, ResNet20ParameterNamesAndShapes) {
  Model m = build_model(json{{"name", "resnet20"}}, InputSpec{3, 32, 32, 10}, 1);
  auto params = m.net->named_parameters();
  EXPECT_EQ(params.front().name, "conv1.weight");
  EXPECT_EQ(params.back().name, "fc.bias");
  std::map<std::string, Shape> shapes;
  for (auto& np : params) shapes[np.name] = np.param->value.shape();
  EXPECT_EQ(shapes.at("layer1.0.conv1.weight"), Shape({16, 16, 3, 3}));
  EXPECT_EQ(shapes.at("layer2.0.bn1.weight"), Shape({16}));  // pre-activation of the block input
  EXPECT_EQ(shapes.at("layer2.0.conv1.weight"), Shape({32, 16, 3, 3}));
  EXPECT_EQ(shapes.at("layer3.2.conv2.weight"), Shape({64, 64, 3, 3}));
  EXPECT_EQ(shapes.at("fc.weight"), Shape({10, 64}));
  EXPECT_EQ(shapes.count("layer1.0.bn1.weight"), 0u) << "the first block reuses the stem's BN-ReLU";
  bool has_running = false;
  for (auto& nb : m.net->named_buffers()) has_running |= nb.name == "layer3.2.bn2.running_var";
  EXPECT_TRUE(has_running);
  EXPECT_EQ(m.full_precision_layers, std::vector<std::string>{"conv1"});
}

TEST(CifarResNet, ConvInitIsHeNormalOverFanOut) {
  Model m = build_model(json{{"name", "resnet56"}}, InputSpec{3, 32, 32, 10}, 3);
  auto* l = dynamic_cast<QuantizableLayer*>(m.net->find("layer3.4.conv2"));
  ASSERT_NE(l, nullptr);
  const Tensor& w = l->weight().value;
  double sq = 0.0;
  for (int64_t i = 0; i < w.numel(); ++i) sq += w.data<float>()[i] * w.data<float>()[i];
  const double var = sq / w.numel(), want = 2.0 / (9 * 64);
  EXPECT_NEAR(var, want, 0.05 * want);
}

TEST(CifarResNet, ForwardShapesForCifarAndFashionMnist) {
  for (auto shortcut : {"A", "B"}) {
    Model c = build_model(json{{"name", "resnet20"}, {"shortcut", shortcut}}, InputSpec{3, 32, 32, 10}, 1);
    EXPECT_EQ(c.net->forward(ttq::testing::random_tensor({2, 3, 32, 32}, 1)).shape(), Shape({2, 10}));
    Model f = build_model(json{{"name", "resnet20"}, {"shortcut", shortcut}}, InputSpec{1, 28, 28, 10}, 1);
    EXPECT_EQ(f.net->forward(ttq::testing::random_tensor({2, 1, 28, 28}, 2)).shape(), Shape({2, 10}));
  }
  Model b = build_model(json{{"name", "cifar_resnet"}, {"depth", 8}, {"shortcut", "B"}}, InputSpec{3, 16, 16, 4}, 1);
  bool has_projection = false;
  for (auto& np : b.net->named_parameters()) has_projection |= np.name == "layer2.0.downsample.0.weight";
  EXPECT_TRUE(has_projection);
}

TEST(CifarResNet, SameSeedSameWeights) {
  Model a = build_model(json{{"name", "resnet20"}}, InputSpec{3, 32, 32, 10}, 7);
  Model b = build_model(json{{"name", "resnet20"}}, InputSpec{3, 32, 32, 10}, 7);
  Model c = build_model(json{{"name", "resnet20"}}, InputSpec{3, 32, 32, 10}, 8);
  auto pa = a.net->named_parameters(), pb = b.net->named_parameters(), pc = c.net->named_parameters();
  EXPECT_TRUE(ttq::testing::all_close(pa[0].param->value, pb[0].param->value, 0, 0));
  EXPECT_FALSE(ttq::testing::all_close(pa[0].param->value, pc[0].param->value, 0, 0));
}

TEST(ModelConfig, ErrorsNameThePathAndSuggest) {
  const InputSpec in{3, 32, 32, 10};
  EXPECT_NE(error_of([&] { build_model(json{{"name", "resnet21"}}, in, 1); }).find("did you mean 'resnet20'"),
            std::string::npos);
  const std::string depth = error_of([&] { build_model(json{{"name", "cifar_resnet"}, {"depth", 21}}, in, 1); });
  EXPECT_NE(depth.find("6n + 2"), std::string::npos) << depth;
  const std::string typo = error_of([&] { build_model(json{{"name", "resnet20"}, {"shortcutt", "A"}}, in, 1); });
  EXPECT_NE(typo.find("unknown key 'model.shortcutt' (did you mean 'model.shortcut'?)"), std::string::npos) << typo;
  // Two neighbouring letters swapped count as one edit.
  const std::string swapped = error_of([&] { build_model(json{{"name", "small_convnet"}, {"widht", 8}}, in, 1); });
  EXPECT_NE(swapped.find("unknown key 'model.widht' (did you mean 'model.width'?)"), std::string::npos) << swapped;
  const std::string type = error_of([&] { build_model(json{{"name", "small_convnet"}, {"width", "8"}}, in, 1); });
  EXPECT_NE(type.find("'model.width' must be an integer"), std::string::npos) << type;
  const std::string missing = error_of([&] { build_model(json{{"depth", 20}}, in, 1); });
  EXPECT_NE(missing.find("missing required key 'model.name'"), std::string::npos) << missing;
}

TEST(QuantizeConfig, ParsesAndRefuses) {
  json j = {{"mode", "sparsity"}, {"r", 0.3}, {"full_precision_layers", {"conv1", "fc"}}, {"clamp_scales", true}};
  JsonReader r(j, "quantization");
  QuantizeOptions q = parse_quantize_options(r, {"conv1"});
  EXPECT_EQ(q.ternary.mode, math::ThresholdMode::Sparsity);
  EXPECT_DOUBLE_EQ(q.ternary.r, 0.3);
  EXPECT_TRUE(q.ternary.clamp_scales);
  EXPECT_TRUE(q.normalize_init);
  EXPECT_EQ(q.full_precision_layers, (std::vector<std::string>{"conv1", "fc"}));

  // The TWN baseline ternarizes the weights as they are unless told otherwise.
  json twn = {{"mode", "twn"}};
  JsonReader rt(twn, "quantization");
  EXPECT_FALSE(parse_quantize_options(rt, {}).normalize_init);
  json twn_normalized = {{"mode", "twn"}, {"normalize_init", true}};
  JsonReader rtn(twn_normalized, "quantization");
  EXPECT_TRUE(parse_quantize_options(rtn, {}).normalize_init);

  json bad_mode = {{"mode", "ternary"}};
  JsonReader r2(bad_mode, "quantization");
  EXPECT_NE(error_of([&] { parse_quantize_options(r2, {}); }).find("'quantization.mode'"), std::string::npos);
  json bad_t = {{"t", 1.5}};
  JsonReader r3(bad_t, "quantization");
  EXPECT_NE(error_of([&] { parse_quantize_options(r3, {}); }).find("'quantization.t' must be in [0, 1)"),
            std::string::npos);
  EXPECT_FALSE(q.ternary.per_channel_scales);
  json per_channel = {{"per_channel_scales", true}};
  JsonReader r4(per_channel, "quantization");
  EXPECT_TRUE(parse_quantize_options(r4, {}).ternary.per_channel_scales);
  json twn_per_channel = {{"mode", "twn"}, {"per_channel_scales", true}};
  JsonReader r5(twn_per_channel, "quantization");
  const std::string e = error_of([&] { parse_quantize_options(r5, {}); });
  EXPECT_NE(e.find("'quantization.per_channel_scales' needs trained scales"), std::string::npos) << e;
}

TEST(OptimizerConfig, ParsesGroupsAndRefusesUnknownKeys) {
  json j = {{"type", "sgd"}, {"lr", 0.1}, {"weight_decay", 2e-4}, {"groups", {{"scale", {{"weight_decay", false}}}}}};
  JsonReader r(j, "optimizer");
  OptimizerConfig c = parse_optimizer(r);
  EXPECT_FALSE(c.group(ParamKind::Scale).weight_decay);
  EXPECT_TRUE(c.group(ParamKind::Weight).weight_decay);
  json typo = {{"groups", {{"scales", {{"lr_mult", 2.0}}}}}};
  JsonReader r2(typo, "optimizer");
  const std::string e = error_of([&] { parse_optimizer(r2); });
  EXPECT_NE(e.find("unknown key 'optimizer.groups.scales' (did you mean 'optimizer.groups.scale'?)"), std::string::npos) << e;
  json bad = {{"momentum", 1.5}};
  JsonReader r3(bad, "optimizer");
  EXPECT_NE(error_of([&] { parse_optimizer(r3); }).find("'optimizer'"), std::string::npos);
}

TEST(ScheduleConfig, Parses) {
  json j = {{"type", "multistep"}, {"milestones", {82, 123, 150}}, {"gamma", 0.1}};
  JsonReader r(j, "schedule");
  ScheduleConfig s = parse_schedule(r);
  EXPECT_EQ(s.milestones.size(), 3u);
  json bad = {{"type", "multistep"}, {"milestones", {"a"}}};
  JsonReader r2(bad, "schedule");
  EXPECT_NE(error_of([&] { parse_schedule(r2); }).find("'schedule.milestones' must be a list of numbers"),
            std::string::npos);
}
