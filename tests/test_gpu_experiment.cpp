// Experiments end to end on the GPU, through the trainer as `ttq train` runs them: a full-precision
// stage and then a TTQ stage (the model is quantized while on the GPU), checkpoints, evaluation and
// export; resuming an interrupted GPU run ends bit for bit where the uninterrupted run ends; and
// each precision / memory format learns like the CPU run of the same config. Skips where no GPU
// (or no CUDA build) exists.
#include <gtest/gtest.h>

#ifdef TTQ_HAVE_CUDA

#include <filesystem>
#include <string>

#include "engine/nn/quantizable.h"
#include "engine/quant/quantize_model.h"
#include "engine/train/checkpoint.h"
#include "engine/train/data_sets.h"
#include "engine/train/trainer.h"
#include "kernels/device.h"
#include "models/model.h"
#include "tests/experiment_test_util.h"
#include "tests/test_util.h"

using namespace ttq;
using ttq::testing::checkpoint_bytes;
using ttq::testing::quiet;
using ttq::testing::TempDir;
using ttq::testing::two_stage_config;
namespace fs = std::filesystem;

namespace {


json on(const std::string& out, const std::string& device, const std::string& precision = "fp32",
        const std::string& memory_format = "contiguous") {
  json j = two_stage_config(out);
  j["device"] = device;
  j["precision"] = precision;
  j["memory_format"] = memory_format;
  return j;
}

}  // namespace

TEST(GpuExperiment, TwoStagesTrainEvaluateAndExportLikeTheCpu) {
  if (cuda_device_count() == 0) GTEST_SKIP() << cuda_device_summary();
  struct Format {
    const char* precision;
    const char* memory_format;
  };
  for (const Format f : {Format{"fp32", "contiguous"}, Format{"bf16", "contiguous"}, Format{"bf16", "channels_last"}}) {
    SCOPED_TRACE(std::string(f.precision) + " " + f.memory_format);
    TempDir gpu_dir, cpu_dir;
    const RunSummary g = train_experiment(parse_experiment(on(gpu_dir.path(), "cuda", f.precision, f.memory_format)),
                                          quiet());
    const RunSummary c = train_experiment(parse_experiment(on(cpu_dir.path(), "cpu", f.precision, f.memory_format)),
                                          quiet());
    ASSERT_EQ(g.stages.size(), 2u);
    for (size_t s = 0; s < 2; ++s) {
      EXPECT_LT(g.stages[s].test_top1_error, 0.12) << g.stages[s].name;
      // Rounding differs between the backends and grows over 256 steps: the same accuracy within a
      // few test samples of 256.
      EXPECT_NEAR(g.stages[s].test_top1_error, c.stages[s].test_top1_error, 0.04) << g.stages[s].name;
    }
    EXPECT_GT(g.stages[1].sparsity, 0.0);
    for (const char* file : {"last.safetensors", "fp.safetensors", "ttq.safetensors", "metrics.jsonl"})
      EXPECT_TRUE(fs::exists(gpu_dir.file(file))) << file;

    // The GPU run's checkpoint, evaluated on the GPU in the run's format and evaluation batch (the
    // same convolution algorithms): the number it reported.
    const Checkpoint ck = read_checkpoint(gpu_dir.file("last.safetensors"));
    const ExperimentConfig rcfg = parse_experiment(ck.config);
    DataSets data = load_data_sets(rcfg.data, rcfg.seed);
    Model m = build_model(rcfg.model, data.spec, 0);
    load_model(*m.net, ck);
    m.net->to(Device::CUDA);
    const EvalResult e = evaluate(*m.net, data.test, rcfg.eval_batch_size, 0, nullptr, rcfg.compute_format());
    EXPECT_DOUBLE_EQ(e.top1_error, g.stages[1].test_top1_error);
    // Exported from the GPU and from the CPU: the same codes, scales and tensors, byte for byte.
    const ExportReport rep = export_ternary(gpu_dir.file("gpu.ttq.safetensors"), *m.net, ck.config);
    EXPECT_EQ(rep.ternary_layers, 2);
    m.net->to(Device::CPU);
    export_ternary(gpu_dir.file("cpu.ttq.safetensors"), *m.net, ck.config);
    EXPECT_TRUE(checkpoint_bytes(gpu_dir.file("gpu.ttq.safetensors")) ==
                checkpoint_bytes(gpu_dir.file("cpu.ttq.safetensors")));
  }
}

TEST(GpuExperiment, ResumeEndsBitForBitWhereTheUninterruptedRunEnds) {
  if (cuda_device_count() == 0) GTEST_SKIP() << cuda_device_summary();
  for (const char* precision : {"fp32", "bf16"}) {
    SCOPED_TRACE(precision);
    TempDir full, cut;
    ttq::testing::expect_resume_ends_where_the_uninterrupted_run_ends(on("", "cuda", precision), full.path(),
                                                                       cut.path());
  }
}

#else
TEST(GpuExperiment, NotBuilt) { GTEST_SKIP() << "built without the CUDA backend"; }
#endif  // TTQ_HAVE_CUDA
