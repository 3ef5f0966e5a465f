// A short training run on the GPU follows the CPU run step by step, and repeats exactly.
#include <gtest/gtest.h>

#include "engine/data/synthetic.h"
#include "engine/quant/quantize_model.h"
#include "engine/train/step.h"
#include "kernels/device.h"
#include "models/model.h"

using namespace ttq;

namespace {

std::vector<double> losses(Device device, const json& model_cfg, bool ternary, int steps) {
  const InputSpec spec{1, 12, 12, 4};
  SyntheticDataset data(spec, 4096, 1.0f, 11);
  Model m = build_model(model_cfg, spec, 11);
  if (ternary) {
    QuantizeOptions q;
    q.full_precision_layers = m.full_precision_layers;
    quantize_model(*m.net, q);
  }
  m.net->to(device);
  OptimizerConfig oc;
  oc.lr = 0.05;
  oc.weight_decay = 1e-4;
  auto opt = make_optimizer(m.net->named_parameters(), oc);
  CrossEntropyLoss loss;
  std::vector<double> out;
  for (int s = 0; s < steps; ++s) out.push_back(train_step(*m.net, loss, *opt, data.batch(s * 16, 16), oc.lr).loss);
  return out;
}

}  // namespace

TEST(GpuTraining, FollowsTheCpuAndRepeatsExactly) {
  if (cuda_device_count() == 0) GTEST_SKIP() << cuda_device_summary();
  const json models[] = {{{"name", "small_convnet"}}, {{"name", "cifar_resnet"}, {"depth", 8}}};
  for (const json& model : models) {
    for (bool ternary : {false, true}) {
      SCOPED_TRACE(model.dump() + (ternary ? " ttq" : " fp32"));
      const auto cpu = losses(Device::CPU, model, ternary, 20);
      const auto gpu = losses(Device::CUDA, model, ternary, 20);
      const auto gpu2 = losses(Device::CUDA, model, ternary, 20);
      EXPECT_EQ(gpu, gpu2) << "two GPU runs differ";
      // Float rounding differs between the backends and grows with the steps: tight at first.
      for (int s = 0; s < 20; ++s) EXPECT_NEAR(gpu[s], cpu[s], (s < 5 ? 1e-4 : 2e-2) * (1 + cpu[s])) << "step " << s;
    }
  }
}
