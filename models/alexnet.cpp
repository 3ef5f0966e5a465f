// AlexNet as the TTQ paper trained it on ImageNet: the DoReFa-Net variant with BatchNorm of the
// authors' tw-imagenet-alexnet.py (split=2 convs are groups=2 here):
//
//   conv0 96 12x12 /4 valid, ReLU                      (no BatchNorm after conv0)
//   conv1 256 5x5 same groups 2, bn1, pool1 max 3/2 same, ReLU
//   conv2 384 3x3 same,          bn2, pool2 max 3/2 same, ReLU
//   conv3 384 3x3 same groups 2, bn3, ReLU
//   conv4 256 3x3 same groups 2, bn4, pool4 max 3/2 valid, ReLU
//   flatten, fc0 4096, bnfc0, ReLU, fc1 4096, bnfc1, ReLU, fct <classes> with bias
//
// No other layer has a bias and there is no dropout. "same" is TensorFlow's padding (output =
// ceil(input / stride), the odd pixel of padding after). Feature maps at a 224x224 input:
// conv0 54x54 ((224 - 12) / 4 + 1), conv1 54, pool1 27, conv2 27, pool2 14, conv3/conv4 14,
// pool4 6 ((14 - 3) / 2 + 1): fc0 sees 256 * 6 * 6 = 9216 features. Any input of at least 44x44
// works (pool4 needs 3x3); fc0's input size is computed from the input size (64x64 gives 1x1).
//
// State-dict names are the TF code's layer names without a prefix: "conv0.weight",
// "bn1.weight" / ".bias" / ".running_mean" / ".running_var", "fc0.weight", "bnfc0.*",
// "fct.weight", "fct.bias". conv0 and fct stay full precision under TTQ by default.
//
// Initialisation follows the TF code (tensorpack's default variance_scaling_initializer: factor 2
// over the fan-in), as an untruncated normal: every conv and FC weight ~ N(0, 2 / fan_in) with
// fan_in = (C_in / groups) * kh * kw for convs and in_features for FCs, i.e. PyTorch's
// kaiming_normal_(mode="fan_in", nonlinearity="relu"); fct's bias 0; BatchNorm weight 1, bias 0.
#include <cmath>

#include "engine/nn/activation.h"
#include "engine/nn/batchnorm.h"
#include "engine/nn/conv2d.h"
#include "engine/nn/init.h"
#include "engine/nn/linear.h"
#include "engine/nn/pooling.h"
#include "models/model.h"

namespace ttq {

namespace {

void init_he_fan_in(Tensor& w, int64_t fan_in, Rng& rng) {
  init_normal(w, std::sqrt(2.0 / static_cast<double>(fan_in)), rng);
}

std::shared_ptr<Conv2d> conv(int64_t in, int64_t out, int64_t kernel, int64_t stride, bool same, int64_t groups,
                             Rng& rng) {
  Conv2dOptions o;
  o.in_channels = in;
  o.out_channels = out;
  o.kernel_h = o.kernel_w = kernel;
  o.stride = stride;
  o.same_padding = same;
  o.groups = groups;
  o.bias = false;
  auto c = std::make_shared<Conv2d>(o);
  init_he_fan_in(c->weight().value, (in / groups) * kernel * kernel, rng);
  return c;
}

std::shared_ptr<Pool2d> maxpool_3_2(bool same) {
  Pool2dOptions p;
  p.kernel = 3;
  p.stride = 2;
  p.same_padding = same;
  return make_maxpool2d(p);
}

}  // namespace

Model make_alexnet(const AlexNetOptions& o, const InputSpec& in, uint64_t seed) {
  TTQ_CHECK(o.bn_eps > 0.0f, "alexnet: bn_eps must be positive, got " << o.bn_eps);
  TTQ_CHECK(o.bn_momentum >= 0.0f && o.bn_momentum <= 1.0f,
            "alexnet: bn_momentum must be in [0, 1] (PyTorch's convention: 0.1 is TensorFlow's decay 0.9), got "
                << o.bn_momentum);
  TTQ_CHECK(in.channels > 0 && in.classes > 1, "alexnet: input with " << in.channels << " channels and " << in.classes
                                                                       << " classes is not usable");
  TTQ_CHECK(in.height >= 44 && in.width >= 44,
            "alexnet: input " << in.channels << "x" << in.height << "x" << in.width
                              << " is too small; the valid 12x12/4 conv0 and the valid 3/2 pool4 need at least 44x44");
  Rng rng(seed);
  auto net = std::make_shared<Sequential>();
  Shape s{1, in.channels, in.height, in.width};  // tracks the feature-map shape for fc0's size
  auto conv_out = [&](const std::shared_ptr<Conv2d>& c) {
    const Conv2dShape g = c->shape_for(s);
    s = {1, g.c_out, g.out_h(), g.out_w()};
  };
  auto pool_out = [&](const std::shared_ptr<Pool2d>& p) {
    const Pool2dShape g = p->shape_for(s);
    s = {1, g.c, g.out_h(), g.out_w()};
  };
  auto bn2d = [&](int64_t c) { return make_batchnorm2d(c, o.bn_eps, o.bn_momentum); };

  conv_out(net->add("conv0", conv(in.channels, 96, 12, 4, false, 1, rng)));
  net->add("relu0", std::make_shared<ReLU>());

  conv_out(net->add("conv1", conv(96, 256, 5, 1, true, 2, rng)));
  net->add("bn1", bn2d(256));
  pool_out(net->add("pool1", maxpool_3_2(true)));
  net->add("relu1", std::make_shared<ReLU>());

  conv_out(net->add("conv2", conv(256, 384, 3, 1, true, 1, rng)));
  net->add("bn2", bn2d(384));
  pool_out(net->add("pool2", maxpool_3_2(true)));
  net->add("relu2", std::make_shared<ReLU>());

  conv_out(net->add("conv3", conv(384, 384, 3, 1, true, 2, rng)));
  net->add("bn3", bn2d(384));
  net->add("relu3", std::make_shared<ReLU>());

  conv_out(net->add("conv4", conv(384, 256, 3, 1, true, 2, rng)));
  net->add("bn4", bn2d(256));
  pool_out(net->add("pool4", maxpool_3_2(false)));
  net->add("relu4", std::make_shared<ReLU>());

  net->add("flatten", std::make_shared<Flatten>());
  const int64_t features = s[1] * s[2] * s[3];
  auto fc0 = net->add("fc0", std::make_shared<Linear>(features, 4096, false));
  init_he_fan_in(fc0->weight().value, features, rng);
  net->add("bnfc0", make_batchnorm1d(4096, o.bn_eps, o.bn_momentum));
  net->add("relu5", std::make_shared<ReLU>());

  auto fc1 = net->add("fc1", std::make_shared<Linear>(4096, 4096, false));
  init_he_fan_in(fc1->weight().value, 4096, rng);
  net->add("bnfc1", make_batchnorm1d(4096, o.bn_eps, o.bn_momentum));
  net->add("relu6", std::make_shared<ReLU>());

  auto fct = net->add("fct", std::make_shared<Linear>(4096, in.classes, true));
  init_he_fan_in(fct->weight().value, 4096, rng);
  fct->bias().value.fill(0.0f);
  return {"alexnet", net, {"conv0", "fct"}};
}

}  // namespace ttq
