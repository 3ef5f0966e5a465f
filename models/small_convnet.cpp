// A small ConvNet for fast tests and demos: conv-BN-ReLU, max pool, conv-BN-ReLU, global average
// pool, linear. The first conv stays full precision under TTQ by default.
#include "engine/nn/activation.h"
#include "engine/nn/batchnorm.h"
#include "engine/nn/conv2d.h"
#include "engine/nn/init.h"
#include "engine/nn/linear.h"
#include "engine/nn/pooling.h"
#include "models/model.h"

namespace ttq {

Model make_small_convnet(const SmallConvNetOptions& o, const InputSpec& in, uint64_t seed) {
  TTQ_CHECK(o.width > 0, "small_convnet: width must be positive, got " << o.width);
  TTQ_CHECK(in.channels > 0 && in.height >= 2 && in.width >= 2 && in.classes > 1,
            "small_convnet: input " << in.channels << "x" << in.height << "x" << in.width << " with " << in.classes
                                    << " classes is too small");
  Rng rng(seed);
  auto net = std::make_shared<Sequential>();
  const int64_t w = o.width;
  auto conv1 = net->add("conv1", std::make_shared<Conv2d>(in.channels, w, 3, 1, 1));
  init_kaiming_normal_fan_out(conv1->weight().value, rng);
  net->add("bn1", make_batchnorm2d(w));
  net->add("relu1", std::make_shared<ReLU>());
  net->add("pool", make_maxpool2d({2, 2, 0, false, true}));
  auto conv2 = net->add("conv2", std::make_shared<Conv2d>(w, 2 * w, 3, 1, 1));
  init_kaiming_normal_fan_out(conv2->weight().value, rng);
  net->add("bn2", make_batchnorm2d(2 * w));
  net->add("relu2", std::make_shared<ReLU>());
  net->add("avgpool", std::make_shared<GlobalAvgPool2d>());
  auto fc = net->add("fc", std::make_shared<Linear>(2 * w, in.classes, true));
  init_default_fan_in(fc->weight().value, 2 * w, rng);
  init_default_fan_in(fc->bias().value, 2 * w, rng);
  return {"small_convnet", net, {"conv1"}};
}

}  // namespace ttq
