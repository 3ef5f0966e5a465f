// The ImageNet ResNets with basic blocks, exactly torchvision's resnet18 / resnet34 ("ResNet-18B"
// of the TTQ paper: shortcut option B, a 1x1 projection only where the shape changes):
//
//   conv1 7x7/2 pad 3, bn1, relu, maxpool 3/2 pad 1
//   layer1..layer4: BasicBlocks with 64/128/256/512 channels (18: 2,2,2,2; 34: 3,4,6,3 blocks);
//     block: conv1 3x3 (stride 2 in the first block of layer2..4), bn1, relu, conv2 3x3, bn2,
//     + shortcut, relu; shortcut "downsample" = {0: conv 1x1 stride 2, 1: BN} where the shape
//     changes, the identity elsewhere
//   avgpool (global), fc <classes> with bias
//
// Convs have no bias. State-dict names and shapes are torchvision's ("conv1.weight",
// "bn1.running_mean", "layer1.0.conv1.weight", "layer2.0.downsample.0.weight",
// "layer2.0.downsample.1.running_var", "fc.weight", "fc.bias"), so its weights load directly
// (scripts/torchvision_to_safetensors.py). Initialisation is torchvision's: convs
// kaiming_normal_(mode="fan_out", nonlinearity="relu"), BatchNorm weight 1 and bias 0, fc
// PyTorch's Linear default U(-1/sqrt(512), 1/sqrt(512)) for weight and bias. Any input size
// works (224x224 gives 7x7 before the pool). conv1 and fc stay full precision under TTQ by default.
#include "engine/nn/activation.h"
#include "engine/nn/batchnorm.h"
#include "engine/nn/conv2d.h"
#include "engine/nn/init.h"
#include "engine/nn/linear.h"
#include "engine/nn/pooling.h"
#include "engine/nn/residual.h"
#include "models/model.h"

namespace ttq {

namespace {

std::shared_ptr<Conv2d> conv(int64_t in, int64_t out, int64_t kernel, int64_t stride, int64_t padding, Rng& rng) {
  auto c = std::make_shared<Conv2d>(in, out, kernel, stride, padding);
  init_kaiming_normal_fan_out(c->weight().value, rng);
  return c;
}

// torchvision's BasicBlock: the ReLU after the addition is the Residual's own.
std::shared_ptr<Residual> basic_block(int64_t in, int64_t out, int64_t stride, const ImageNetResNetOptions& o,
                                      Rng& rng) {
  auto b = std::make_shared<Residual>(/*relu_after_add=*/true);
  b->add("conv1", conv(in, out, 3, stride, 1, rng));
  b->add("bn1", make_batchnorm2d(out, o.bn_eps, o.bn_momentum));
  b->add("relu", std::make_shared<ReLU>());
  b->add("conv2", conv(out, out, 3, 1, 1, rng));
  b->add("bn2", make_batchnorm2d(out, o.bn_eps, o.bn_momentum));
  if (stride != 1 || in != out) {
    auto ds = std::make_shared<Sequential>();
    ds->add("0", conv(in, out, 1, stride, 0, rng));
    ds->add("1", make_batchnorm2d(out, o.bn_eps, o.bn_momentum));
    b->set_shortcut("downsample", ds);
  }
  return b;
}

}  // namespace

Model make_imagenet_resnet(const ImageNetResNetOptions& o, const InputSpec& in, uint64_t seed) {
  std::vector<int> blocks;
  if (o.depth == 18) {
    blocks = {2, 2, 2, 2};
  } else if (o.depth == 34) {
    blocks = {3, 4, 6, 3};
  } else {
    TTQ_FAIL("imagenet resnet: depth must be 18 or 34 (basic blocks), got " << o.depth);
  }
  TTQ_CHECK(o.bn_eps > 0.0f, "resnet" << o.depth << ": bn_eps must be positive, got " << o.bn_eps);
  TTQ_CHECK(o.bn_momentum >= 0.0f && o.bn_momentum <= 1.0f,
            "resnet" << o.depth << ": bn_momentum must be in [0, 1], got " << o.bn_momentum);
  TTQ_CHECK(in.channels > 0 && in.height >= 1 && in.width >= 1 && in.classes > 1,
            "resnet" << o.depth << ": input " << in.channels << "x" << in.height << "x" << in.width << " with "
                     << in.classes << " classes is not usable");
  Rng rng(seed);
  auto net = std::make_shared<Sequential>();
  net->add("conv1", conv(in.channels, 64, 7, 2, 3, rng));
  net->add("bn1", make_batchnorm2d(64, o.bn_eps, o.bn_momentum));
  net->add("relu", std::make_shared<ReLU>());
  net->add("maxpool", make_maxpool2d({3, 2, 1, false, true}));
  int64_t ch = 64;
  for (int stage = 0; stage < 4; ++stage) {
    auto layer = std::make_shared<Sequential>();
    const int64_t out = int64_t(64) << stage;
    for (int i = 0; i < blocks[static_cast<size_t>(stage)]; ++i) {
      const int64_t stride = (stage > 0 && i == 0) ? 2 : 1;
      layer->add(std::to_string(i), basic_block(ch, out, stride, o, rng));
      ch = out;
    }
    net->add("layer" + std::to_string(stage + 1), layer);
  }
  net->add("avgpool", std::make_shared<GlobalAvgPool2d>());
  auto fc = net->add("fc", std::make_shared<Linear>(ch, in.classes, true));
  init_default_fan_in(fc->weight().value, ch, rng);
  init_default_fan_in(fc->bias().value, ch, rng);
  return {"resnet" + std::to_string(o.depth), net, {"conv1", "fc"}};
}

}  // namespace ttq
