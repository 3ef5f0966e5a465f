// A short training run on the GPU follows the CPU run step by step, and repeats exactly.
#include <gtest/gtest.h>

#include <memory>

#include "engine/data/synthetic.h"
#include "engine/quant/quantize_model.h"
#include "engine/quant/ternary_pass.h"
#include "engine/train/step.h"
#include "kernels/device.h"
#include "models/model.h"

using namespace ttq;

namespace {

struct TrainRun {
  Device device = Device::CPU;
  json model = {{"name", "small_convnet"}};
  bool ternary = false;
  math::ThresholdMode mode = math::ThresholdMode::Max;
  bool with_pass = false;  // all ternary layers' TTQ work through a TernaryPass (fused on the GPU)
  int steps = 20;
  DType compute = DType::F32;  // precision: f32 or bf16
  Layout layout = Layout::Contiguous;  // memory_format
  bool quantize_on_device = false;  // move the model first, then quantize it (as the trainer does)
  bool per_channel = false;  // one Wp/Wn per output channel
};

// Per-step losses of a short SGD run; the final parameters go to *params when given.
std::vector<double> losses(const TrainRun& run, std::vector<float>* params = nullptr) {
  const InputSpec spec{1, 12, 12, 4};
  SyntheticDataset data(spec, 4096, 1.0f, 11);
  Model m = build_model(run.model, spec, 11);
  if (run.quantize_on_device) m.net->to(run.device);
  if (run.ternary) {
    QuantizeOptions q;
    q.full_precision_layers = m.full_precision_layers;
    q.ternary.mode = run.mode;
    q.ternary.r = 0.4;
    q.ternary.per_channel_scales = run.per_channel;
    quantize_model(*m.net, q);
  }
  m.net->to(run.device);
  OptimizerConfig oc;
  oc.lr = 0.05;
  oc.weight_decay = 1e-4;
  auto opt = make_optimizer(m.net->named_parameters(), oc);
  CrossEntropyLoss loss;
  std::unique_ptr<TernaryPass> pass;
  if (run.with_pass) pass = std::make_unique<TernaryPass>(*m.net, run.compute);
  std::vector<double> out;
  for (int s = 0; s < run.steps; ++s)
    out.push_back(
        train_step(*m.net, loss, *opt, data.batch(s * 16, 16), oc.lr, pass.get(), {run.compute, run.layout}).loss);
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

TEST(GpuTraining, FollowsTheCpuAndRepeatsExactly) {
  if (cuda_device_count() == 0) GTEST_SKIP() << cuda_device_summary();
  const json models[] = {{{"name", "small_convnet"}}, {{"name", "cifar_resnet"}, {"depth", 8}}};
  for (const json& model : models) {
    for (bool ternary : {false, true}) {
      SCOPED_TRACE(model.dump() + (ternary ? " ttq" : " fp32"));
      const TrainRun cpu_run{Device::CPU, model, ternary};
      TrainRun gpu_run = cpu_run;
      gpu_run.device = Device::CUDA;
      const auto cpu = losses(cpu_run);
      const auto gpu = losses(gpu_run);
      const auto gpu2 = losses(gpu_run);
      EXPECT_EQ(gpu, gpu2) << "two GPU runs differ";
      // Float rounding differs between the backends and grows with the steps: tight at first.
      for (int s = 0; s < 20; ++s) EXPECT_NEAR(gpu[s], cpu[s], (s < 5 ? 1e-4 : 2e-2) * (1 + cpu[s])) << "step " << s;
    }
  }
}


// The trainer quantizes a model already on the GPU (a TTQ stage after a full-precision one): the
// same run, bitwise, as quantizing it on the CPU before moving it.
TEST(GpuTraining, QuantizingAModelOnTheGpuEqualsQuantizingItFirst) {
  if (cuda_device_count() == 0) GTEST_SKIP() << cuda_device_summary();
  for (auto mode : {math::ThresholdMode::Max, math::ThresholdMode::Sparsity}) {
    SCOPED_TRACE(threshold_mode_name(mode));
    TrainRun first{Device::CUDA, {{"name", "cifar_resnet"}, {"depth", 8}}, true, mode, true, 5};
    TrainRun on_device = first;
    on_device.quantize_on_device = true;
    std::vector<float> p_first, p_on_device;
    EXPECT_EQ(losses(on_device, &p_on_device), losses(first, &p_first));
    EXPECT_EQ(p_on_device, p_first);
  }
}

// The fused all-layer TTQ pass on the GPU follows the CPU, matches the GPU's per-layer kernels
// within rounding, and repeats exactly.
TEST(GpuTraining, FusedTernaryPassFollowsTheCpu) {
  if (cuda_device_count() == 0) GTEST_SKIP() << cuda_device_summary();
  for (auto mode : {math::ThresholdMode::Max, math::ThresholdMode::Sparsity, math::ThresholdMode::Twn}) {
    for (bool per_channel : {false, true}) {
      if (per_channel && mode == math::ThresholdMode::Twn) continue;  // Twn has one fixed scale
      SCOPED_TRACE(std::string(threshold_mode_name(mode)) + (per_channel ? " per-channel" : ""));
      std::vector<float> p_gpu, p_gpu2;
      TrainRun cpu_run{Device::CPU, {{"name", "cifar_resnet"}, {"depth", 8}}, true, mode, true, 15};
      cpu_run.per_channel = per_channel;
      TrainRun gpu_run = cpu_run, gpu_layer_run = cpu_run;
      gpu_run.device = gpu_layer_run.device = Device::CUDA;
      gpu_layer_run.with_pass = false;
      const auto cpu = losses(cpu_run);
      const auto gpu = losses(gpu_run, &p_gpu);
      const auto gpu2 = losses(gpu_run, &p_gpu2);
      const auto gpu_layer = losses(gpu_layer_run);
      EXPECT_EQ(gpu, gpu2) << "two fused GPU runs differ";
      EXPECT_EQ(p_gpu, p_gpu2) << "two fused GPU runs end with different weights";
      for (int s = 0; s < 15; ++s) {
        EXPECT_NEAR(gpu[s], cpu[s], (s < 5 ? 1e-4 : 2e-2) * (1 + cpu[s])) << "step " << s;
        EXPECT_NEAR(gpu[s], gpu_layer[s], (s < 5 ? 1e-5 : 1e-2) * (1 + cpu[s])) << "step " << s;
      }
    }
  }
}

// precision bf16: the GPU's bf16 kernels (cuDNN bf16 convolutions, cuBLAS bf16 GEMMs, the
// project's bf16 batch norm / pooling / elementwise kernels, bf16 w_t from the fused TTQ pass)
// follow the CPU's bf16 emulation, and repeat exactly. bf16 rounds every activation, so the
// tolerance is wider than fp32's (that bf16 training learns as fp32 does is tested on the CPU,
// tests/test_bf16.cpp).
TEST(GpuTraining, Bf16FollowsTheCpuEmulationAndRepeatsExactly) {
  if (cuda_device_count() == 0) GTEST_SKIP() << cuda_device_summary();
  const json models[] = {{{"name", "small_convnet"}}, {{"name", "cifar_resnet"}, {"depth", 8}}};
  for (const json& model : models) {
    for (bool ternary : {false, true}) {
      SCOPED_TRACE(model.dump() + (ternary ? " ttq bf16" : " fp bf16"));
      TrainRun cpu_run{Device::CPU, model, ternary, math::ThresholdMode::Max, ternary, 20};
      cpu_run.compute = DType::BF16;
      TrainRun gpu_run = cpu_run;
      gpu_run.device = Device::CUDA;
      const auto cpu = losses(cpu_run);
      const auto gpu = losses(gpu_run);
      const auto gpu2 = losses(gpu_run);
      EXPECT_EQ(gpu, gpu2) << "two GPU bf16 runs differ";
      EXPECT_NEAR(gpu[0], cpu[0], 1e-2 * (1 + cpu[0])) << "before any update";
      for (int s = 1; s < 5; ++s) EXPECT_NEAR(gpu[s], cpu[s], 5e-2 * (1 + cpu[s])) << "step " << s;
    }
  }
}

// memory_format channels_last: NHWC convolutions (cuDNN) and batch norm, the other ops on NCHW
// copies. The CPU runs channels-last bitwise like contiguous (tests/test_channels_last.cpp), so the
// GPU's channels-last run is held to the CPU run with the contiguous GPU run's tolerances, and
// repeats exactly.
TEST(GpuTraining, ChannelsLastFollowsTheCpuAndRepeatsExactly) {
  if (cuda_device_count() == 0) GTEST_SKIP() << cuda_device_summary();
  const json models[] = {{{"name", "small_convnet"}}, {{"name", "cifar_resnet"}, {"depth", 8}}};
  for (const json& model : models) {
    for (DType dt : {DType::F32, DType::BF16}) {
      SCOPED_TRACE(model.dump() + " ttq " + dtype_name(dt) + " channels_last");
      TrainRun cpu_run{Device::CPU, model, true, math::ThresholdMode::Max, true, 20};
      cpu_run.compute = dt;
      TrainRun gpu_run = cpu_run;
      gpu_run.device = Device::CUDA;
      gpu_run.layout = Layout::ChannelsLast;
      const auto cpu = losses(cpu_run);
      const auto gpu = losses(gpu_run);
      const auto gpu2 = losses(gpu_run);
      EXPECT_EQ(gpu, gpu2) << "two GPU channels-last runs differ";
      if (dt == DType::F32) {
        for (int s = 0; s < 20; ++s) EXPECT_NEAR(gpu[s], cpu[s], (s < 5 ? 1e-4 : 2e-2) * (1 + cpu[s])) << "step " << s;
      } else {
        EXPECT_NEAR(gpu[0], cpu[0], 1e-2 * (1 + cpu[0])) << "before any update";
        for (int s = 1; s < 5; ++s) EXPECT_NEAR(gpu[s], cpu[s], 5e-2 * (1 + cpu[s])) << "step " << s;
      }
    }
  }
}
