// The CIFAR ResNet family (depth 6n + 2: 20, 32, 44, 56) as the TTQ authors trained it
// (tensorpack tw-cifar10-resnet.py): conv 3x3/16 + BN + ReLU stem; three stages of n
// pre-activation blocks (16/32/64 channels; BN-ReLU, conv, BN-ReLU, conv; the first block skips
// its leading BN-ReLU because the stem already applied it); shortcut option A where the size
// changes; final BN + ReLU, global average pool, linear. Convs have no bias and are initialised
// N(0, 2 / (9 * C_out)).
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

std::shared_ptr<Conv2d> conv3x3(int64_t in, int64_t out, int64_t stride, Rng& rng) {
  auto c = std::make_shared<Conv2d>(in, out, 3, stride, 1);
  init_kaiming_normal_fan_out(c->weight().value, rng);
  return c;
}

std::shared_ptr<Residual> preact_block(int64_t in, int64_t out, int64_t stride, bool first,
                                       const CifarResNetOptions& o, Rng& rng) {
  auto b = std::make_shared<Residual>();
  if (!first) {
    b->add("bn1", make_batchnorm2d(in, o.bn_eps, o.bn_momentum));
    b->add("relu1", std::make_shared<ReLU>());
  }
  b->add("conv1", conv3x3(in, out, stride, rng));
  b->add("bn2", make_batchnorm2d(out, o.bn_eps, o.bn_momentum));
  b->add("relu2", std::make_shared<ReLU>());
  b->add("conv2", conv3x3(out, out, 1, rng));
  if (stride != 1 || in != out) {
    if (o.shortcut == 'A') {
      b->set_shortcut("shortcut", std::make_shared<ShortcutA>(in, out, stride));
    } else {
      auto ds = std::make_shared<Sequential>();
      auto proj = std::make_shared<Conv2d>(in, out, 1, stride, 0);
      init_kaiming_normal_fan_out(proj->weight().value, rng);
      ds->add("0", proj);
      ds->add("1", make_batchnorm2d(out, o.bn_eps, o.bn_momentum));
      b->set_shortcut("downsample", ds);
    }
  }
  return b;
}

}  // namespace

Model make_cifar_resnet(const CifarResNetOptions& o, const InputSpec& in, uint64_t seed) {
  TTQ_CHECK(o.depth >= 8 && (o.depth - 2) % 6 == 0,
            "cifar_resnet: depth must be 6n + 2 with n >= 1 (20, 32, 44, 56, ...), got " << o.depth);
  TTQ_CHECK(o.shortcut == 'A' || o.shortcut == 'B', "cifar_resnet: shortcut must be A or B");
  TTQ_CHECK(o.base_width > 0, "cifar_resnet: base_width must be positive");
  TTQ_CHECK(in.channels > 0 && in.height >= 4 && in.width >= 4 && in.classes > 1,
            "cifar_resnet: input " << in.channels << "x" << in.height << "x" << in.width << " with " << in.classes
                                   << " classes is too small");
  const int n = (o.depth - 2) / 6;
  Rng rng(seed);
  auto net = std::make_shared<Sequential>();
  const int64_t w = o.base_width;
  net->add("conv1", conv3x3(in.channels, w, 1, rng));
  net->add("bn1", make_batchnorm2d(w, o.bn_eps, o.bn_momentum));
  net->add("relu", std::make_shared<ReLU>());
  int64_t ch = w;
  for (int stage = 0; stage < 3; ++stage) {
    auto layer = std::make_shared<Sequential>();
    const int64_t out = w << stage;
    for (int i = 0; i < n; ++i) {
      const int64_t stride = (stage > 0 && i == 0) ? 2 : 1;
      layer->add(std::to_string(i), preact_block(ch, out, stride, stage == 0 && i == 0, o, rng));
      ch = out;
    }
    net->add("layer" + std::to_string(stage + 1), layer);
  }
  net->add("bn_final", make_batchnorm2d(ch, o.bn_eps, o.bn_momentum));
  net->add("relu_final", std::make_shared<ReLU>());
  net->add("avgpool", std::make_shared<GlobalAvgPool2d>());
  auto fc = std::make_shared<Linear>(ch, in.classes, true);
  init_default_fan_in(fc->weight().value, ch, rng);
  init_default_fan_in(fc->bias().value, ch, rng);
  net->add("fc", fc);
  return {"resnet" + std::to_string(o.depth), net, {"conv1"}};
}

}  // namespace ttq
