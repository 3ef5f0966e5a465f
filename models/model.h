// Models built by name from JSON. Each builder makes a Module tree whose parameter names follow
// PyTorch's state-dict style ("layer1.0.conv1.weight") and says which layers stay full precision
// under TTQ by default.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "engine/config/json_reader.h"
#include "engine/nn/module.h"

namespace ttq {

// What the data set feeds the model.
struct InputSpec {
  int64_t channels = 3, height = 32, width = 32;
  int64_t classes = 10;
};

struct Model {
  std::string name;
  std::shared_ptr<Module> net;
  // Layers that stay full precision when the model is quantized (unless the config overrides).
  std::vector<std::string> full_precision_layers;
};

// cfg: {"name": "resnet20" | "resnet32" | "resnet44" | "resnet56" | "cifar_resnet" | "small_convnet", ...}
// Unknown names and keys are errors naming the JSON path. Weights are initialised from seed.
Model build_model(JsonReader& cfg, const InputSpec& in, uint64_t seed);
Model build_model(const json& cfg, const InputSpec& in, uint64_t seed, const std::string& path = "model");
std::vector<std::string> model_names();

// The builders behind the names.
struct CifarResNetOptions {
  int depth = 20;          // 6n + 2
  char shortcut = 'A';     // 'A': avg pool + zero channels; 'B': 1x1 conv + BN projection
  int base_width = 16;     // channels of the first stage (then x2, x4)
  float bn_eps = 1e-5f, bn_momentum = 0.1f;
};
Model make_cifar_resnet(const CifarResNetOptions& o, const InputSpec& in, uint64_t seed);

struct SmallConvNetOptions {
  int width = 8;
};
Model make_small_convnet(const SmallConvNetOptions& o, const InputSpec& in, uint64_t seed);

}  // namespace ttq
