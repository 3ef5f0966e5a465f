// A short training run on the GPU follows the CPU run step by step, and repeats exactly.
#include <gtest/gtest.h>

#include "engine/data/synthetic.h"
#include "engine/quant/quantize_model.h"
#include "engine/quant/ternary_pass.h"
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

namespace {
std::vector<double> pass_losses(Device device, bool with_pass, math::ThresholdMode mode, int steps,
                                std::vector<float>* params) {
  const InputSpec spec{1, 12, 12, 4};
  SyntheticDataset data(spec, 4096, 1.0f, 13);
  Model m = build_model(json{{"name", "cifar_resnet"}, {"depth", 8}}, spec, 13);
  QuantizeOptions q;
  q.full_precision_layers = m.full_precision_layers;
  q.ternary.mode = mode;
  q.ternary.r = 0.4;
  quantize_model(*m.net, q);
  m.net->to(device);
  OptimizerConfig oc;
  oc.lr = 0.05;
  oc.weight_decay = 1e-4;
  auto opt = make_optimizer(m.net->named_parameters(), oc);
  CrossEntropyLoss loss;
  std::unique_ptr<TernaryPass> pass;
  if (with_pass) pass = std::make_unique<TernaryPass>(*m.net);
  std::vector<double> out;
  for (int s = 0; s < steps; ++s)
    out.push_back(train_step(*m.net, loss, *opt, data.batch(s * 16, 16), oc.lr, pass.get()).loss);
  if (params) {
    params->clear();
    for (auto& np : m.net->named_parameters()) {
      const Tensor v = np.param->value.to(Device::CPU);
      params->insert(params->end(), v.data<float>(), v.data<float>() + v.numel());
    }
  }
  return out;
}
}  // namespace

// The fused all-layer TTQ pass on the GPU follows the CPU, matches the GPU's per-layer kernels
// within rounding, and repeats exactly.
TEST(GpuTraining, FusedTernaryPassFollowsTheCpu) {
  if (cuda_device_count() == 0) GTEST_SKIP() << cuda_device_summary();
  for (auto mode : {math::ThresholdMode::Max, math::ThresholdMode::Sparsity, math::ThresholdMode::Twn}) {
    SCOPED_TRACE(threshold_mode_name(mode));
    std::vector<float> p_gpu, p_gpu2;
    const auto cpu = pass_losses(Device::CPU, true, mode, 15, nullptr);
    const auto gpu = pass_losses(Device::CUDA, true, mode, 15, &p_gpu);
    const auto gpu2 = pass_losses(Device::CUDA, true, mode, 15, &p_gpu2);
    const auto gpu_layer = pass_losses(Device::CUDA, false, mode, 15, nullptr);
    EXPECT_EQ(gpu, gpu2) << "two fused GPU runs differ";
    EXPECT_EQ(p_gpu, p_gpu2) << "two fused GPU runs end with different weights";
    for (int s = 0; s < 15; ++s) {
      EXPECT_NEAR(gpu[s], cpu[s], (s < 5 ? 1e-4 : 2e-2) * (1 + cpu[s])) << "step " << s;
      EXPECT_NEAR(gpu[s], gpu_layer[s], (s < 5 ? 1e-5 : 1e-2) * (1 + cpu[s])) << "step " << s;
    }
  }
}
