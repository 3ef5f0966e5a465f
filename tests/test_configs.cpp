// Every shipped experiment file parses (after sweep expansion) and builds its model.
#include <gtest/gtest.h>

#include <filesystem>

#include "engine/train/experiment.h"
#include "models/model.h"

using namespace ttq;

TEST(ShippedConfigs, AllParseAndBuildTheirModels) {
  const std::filesystem::path dir = std::filesystem::path(TTQ_SOURCE_DIR) / "configs";
  int files = 0;
  for (const auto& entry : std::filesystem::directory_iterator(dir)) {
    if (entry.path().extension() != ".json") continue;
    ++files;
    SCOPED_TRACE(entry.path().string());
    const json j = read_json_file(entry.path().string());
    for (const auto& [name, cfg_json] : expand_sweep(j)) {
      ExperimentConfig cfg;
      ASSERT_NO_THROW(cfg = parse_experiment(cfg_json)) << name;
      const InputSpec in = cfg.data.dataset == "cifar10"    ? InputSpec{3, 32, 32, 10}
                           : cfg.data.dataset == "imagenet" ? InputSpec{3, 224, 224, 1000}
                                                            : InputSpec{1, 28, 28, 10};
      EXPECT_NO_THROW(build_model(cfg.model, in, 0)) << name;
    }
  }
  EXPECT_GE(files, 8);
}

namespace {
ExperimentConfig shipped(const std::string& file) {
  return parse_experiment(read_json_file((std::filesystem::path(TTQ_SOURCE_DIR) / "configs" / file).string()));
}
}  // namespace

// The recipes of TTQ-SPEC's table, as the shipped configs state them.
TEST(ShippedConfigs, RecipesFollowTheSpec) {
  for (const char* f : {"cifar10_resnet20.json", "cifar10_resnet32.json", "cifar10_resnet44.json",
                        "cifar10_resnet56.json"}) {
    SCOPED_TRACE(f);
    const ExperimentConfig c = shipped(f);
    ASSERT_EQ(c.stages.size(), 2u);
    const StageConfig& t = c.stages[1];
    EXPECT_TRUE(t.quantize);
    EXPECT_EQ(t.batch_size, 256);  // 128 x 2 GPUs
    EXPECT_EQ(t.optimizer.type, "sgd");
    EXPECT_DOUBLE_EQ(t.optimizer.lr, 0.1);
    EXPECT_DOUBLE_EQ(t.optimizer.momentum, 0.9);
    EXPECT_DOUBLE_EQ(t.optimizer.weight_decay, 2e-4);
    EXPECT_TRUE(t.optimizer.groups[static_cast<int>(ParamKind::Scale)].weight_decay);  // Wp/Wn decayed
    EXPECT_EQ(t.schedule.milestones, (std::vector<double>{82, 123, 150}));
    EXPECT_DOUBLE_EQ(t.schedule.gamma, 0.1);
    EXPECT_FLOAT_EQ(t.quantization.ternary.t, 0.05f);
    EXPECT_EQ(t.quantization.full_precision_layers, (std::vector<std::string>{"conv1"}));
    EXPECT_EQ(c.data.normalize, "pixel_mean");
    EXPECT_EQ(c.data.augment.pad, 4);
    EXPECT_TRUE(c.data.augment.hflip);
  }
  for (const char* f : {"imagenet_alexnet_ttq.json", "imagenet_alexnet_ttq_8gpu.json", "imagenet_alexnet_twn.json"}) {
    SCOPED_TRACE(f);
    const ExperimentConfig c = shipped(f);
    ASSERT_EQ(c.stages.size(), 1u);
    const StageConfig& t = c.stages[0];
    EXPECT_TRUE(c.init_from.empty());                    // from scratch
    EXPECT_FALSE(t.quantization.normalize_init);         // so nothing trained to normalise
    EXPECT_EQ(t.batch_size * (std::string(f).find("8gpu") != std::string::npos ? 8 : 1), 128);
    EXPECT_EQ(t.optimizer.type, "adam");
    EXPECT_DOUBLE_EQ(t.optimizer.lr, 1e-4);
    EXPECT_DOUBLE_EQ(t.optimizer.eps, 1e-5);
    EXPECT_DOUBLE_EQ(t.optimizer.weight_decay, 5e-6);
    EXPECT_EQ(t.optimizer.weight_decay_layers, (std::vector<std::string>{"fc0", "fc1", "fct"}));
    EXPECT_EQ(t.schedule.milestones, (std::vector<double>{56, 64}));
  }
}
