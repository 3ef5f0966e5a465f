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
