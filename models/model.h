// Models built by name from JSON. Each builder makes a Module tree whose parameter names follow
// PyTorch's state-dict style ("layer1.0.conv1.weight") and says which layers stay full precision
// under TTQ by default. The models:
//   resnet20/32/44/56, cifar_resnet  the TTQ authors' CIFAR ResNets (models/cifar_resnet.cpp)
//   small_convnet                     a small ConvNet for tests and demos (models/small_convnet.cpp)
//   alexnet                           the paper's ImageNet AlexNet with BatchNorm (models/alexnet.cpp)
//   resnet18, resnet34                torchvision's ImageNet ResNets, same state-dict names
//                                     (models/resnet_imagenet.cpp)
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

// cfg: {"name": "resnet20" | "resnet32" | "resnet44" | "resnet56" | "cifar_resnet" | "small_convnet" |
//        "alexnet" | "resnet18" | "resnet34", ...}
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

// BatchNorm momentum uses PyTorch's convention (running = (1 - m) * running + m * batch): the TF
// code's decay 0.9 is 0.1 here.
struct AlexNetOptions {
  float bn_eps = 1e-4f, bn_momentum = 0.1f;
};
Model make_alexnet(const AlexNetOptions& o, const InputSpec& in, uint64_t seed);

struct ImageNetResNetOptions {
  int depth = 18;  // 18 or 34
  float bn_eps = 1e-5f, bn_momentum = 0.1f;
};
Model make_imagenet_resnet(const ImageNetResNetOptions& o, const InputSpec& in, uint64_t seed);

}  // namespace ttq
