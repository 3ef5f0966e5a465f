// Training throughput on synthetic data: images/s of full training steps (forward, loss, backward,
// TTQ, optimizer) for a model by name, on the GPU or the CPU, with the time split by phase. The
// data are generated once on the device, so the numbers measure the engine, not the input
// pipeline. Prints a per-phase table and one line in the format scripts/pytorch_peer.py prints:
//   THROUGHPUT impl=ttq-engine model=resnet18 precision=fp32 ttq=1 batch=256 images_per_s=... step_ms=...
//       memory_format=contiguous
//
//   build/ttq_throughput --model resnet18 --image-size 224 --batch 256 --ttq 1 --device cuda
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <exception>
#include <memory>
#include <string>
#include <vector>

#include "engine/cli/args.h"
#include "engine/core/rng.h"
#include "engine/nn/loss.h"
#include "engine/optim/optimizer.h"
#include "engine/quant/quantize_model.h"
#include "engine/quant/ternary_pass.h"
#include "engine/train/step_log.h"
#include "kernels/device.h"
#include "kernels/ops.h"
#include "models/model.h"

using namespace ttq;

namespace {

enum Mark { kStart, kZeroGrad, kTtqForward, kForward, kLoss, kBackward, kTtqBackward, kOptimizer, kMarks };
const char* kPhase[] = {"", "zero grad", "ttq forward", "forward", "loss", "backward", "ttq backward", "optimizer"};

int run(const cli::Args& a) {
  const std::string model_name = a.get("model");
  const int64_t size = a.get_int("image-size"), batch = a.get_int("batch"), classes = a.get_int("classes");
  const int steps = a.get_int("steps"), warmup = a.get_int("warmup");
  const bool ttq_on = a.get_int("ttq") != 0;
  TTQ_CHECK(a.get("precision") == "fp32" || a.get("precision") == "bf16",
            "--precision must be fp32 or bf16, got '" << a.get("precision") << "'");
  const DType compute = a.get("precision") == "bf16" ? DType::BF16 : DType::F32;
  TTQ_CHECK(a.get("memory-format") == "contiguous" || a.get("memory-format") == "channels_last",
            "--memory-format must be contiguous or channels_last, got '" << a.get("memory-format") << "'");
  const Layout layout = a.get("memory-format") == "channels_last" ? Layout::ChannelsLast : Layout::Contiguous;
  TTQ_CHECK(size > 0 && batch > 0 && classes > 1 && steps > 0 && warmup >= 0, "invalid sizes or step counts");
  Device device = Device::CPU;
  const std::string dev = a.get("device");
  if (dev == "cuda" || (dev == "auto" && cuda_device_count() > 0)) {
    TTQ_CHECK(cuda_device_count() > 0, "--device cuda: " << cuda_device_summary());
    device = Device::CUDA;
  } else {
    TTQ_CHECK(dev == "cpu" || dev == "auto", "--device must be cpu, cuda or auto, got '" << dev << "'");
  }
  const int64_t channels = a.get_int("channels");

  const InputSpec spec{channels, size, size, classes};
  Model m = build_model(json{{"name", model_name}}, spec, 1);
  if (ttq_on) {
    QuantizeOptions q;
    q.full_precision_layers = m.full_precision_layers;
    quantize_model(*m.net, q);
  }
  Module& net = *m.net;
  net.to(device);
  OptimizerConfig oc;
  oc.lr = 0.01;  // small: the weights stay sane over the timed steps
  oc.weight_decay = 1e-4;
  auto opt = make_optimizer(net.named_parameters(), oc);
  std::unique_ptr<TernaryPass> pass;
  if (ttq_on) pass = std::make_unique<TernaryPass>(net, compute);

  // One synthetic batch, on the device for the whole run.
  Tensor images = Tensor::empty({batch, channels, size, size});
  Tensor labels = Tensor::empty({batch}, DType::I32);
  Rng rng(7);
  for (int64_t i = 0; i < images.numel(); ++i) images.data<float>()[i] = static_cast<float>(rng.normal());
  for (int64_t i = 0; i < batch; ++i) labels.data<int32_t>()[i] = static_cast<int32_t>(rng.next_u64() % classes);
  images = ops::to_compute_format(images.to(device), {compute, layout});
  labels = labels.to(device);

  CrossEntropyLoss loss;
  StepLog log(device, steps + warmup);
  DeviceTimeline tl(device, kMarks * (steps + warmup));
  net.train(true);
  for (int s = 0; s < steps + warmup; ++s) {
    auto mark = [&](int i) { tl.mark(s * kMarks + i); };
    mark(kStart);
    opt->zero_grad();
    mark(kZeroGrad);
    if (pass) pass->forward();
    mark(kTtqForward);
    Tensor logits = net.forward(images);
    mark(kForward);
    Tensor ls = log.loss_slot(), cs = log.correct_slot();
    loss.forward_into(logits, labels, ls);
    ops::count_topk_correct_into(logits, labels, 1, cs);
    log.commit(batch);
    mark(kLoss);
    net.backward(loss.backward());
    mark(kBackward);
    if (pass) pass->backward();
    mark(kTtqBackward);
    opt->step(oc.lr);
    mark(kOptimizer);
  }
  std::vector<double> phase(kMarks, 0.0);
  double total = 0.0;
  for (int s = warmup; s < steps + warmup; ++s) {
    for (int i = 1; i < kMarks; ++i) phase[i] += tl.elapsed_ms(s * kMarks + i - 1, s * kMarks + i);
    total += tl.elapsed_ms(s * kMarks + kStart, s * kMarks + kOptimizer);
  }
  const auto logged = log.read();
  bool finite = true;
  for (const auto& l : logged) finite = finite && std::isfinite(l.loss);

  std::printf("%s %lldx%lldx%lld, batch %lld, %s, %s, %s, %s; %d timed steps after %d warm-up\n",
              model_name.c_str(), static_cast<long long>(channels), static_cast<long long>(size),
              static_cast<long long>(size), static_cast<long long>(batch), ttq_on ? "TTQ" : "full precision",
              a.get("precision").c_str(), a.get("memory-format").c_str(),
              device == Device::CUDA ? cuda_device_summary().c_str() : "CPU", steps, warmup);
  if (pass) std::printf("ternary layers: %zu (GPU launches: forward %d, backward %d)\n", pass->layers().size(),
                        pass->forward_launches(), pass->backward_launches());
  std::printf("%-14s %10s %7s\n", "phase", "ms/step", "share");
  for (int i = 1; i < kMarks; ++i)
    std::printf("%-14s %10.3f %6.1f%%\n", kPhase[i], phase[i] / steps, 100.0 * phase[i] / total);
  const double step_ms = total / steps;
  std::printf("%-14s %10.3f\n", "step", step_ms);
  std::printf("loss first %.4f, last %.4f\n", logged.front().loss, logged.back().loss);
  // The speed stands either way; a non-finite loss is said, and the exit status says it too.
  if (!finite) std::printf("WARNING: the loss became non-finite during the benchmark\n");
  std::printf(
      "THROUGHPUT impl=ttq-engine model=%s precision=%s ttq=%d batch=%lld images_per_s=%.1f step_ms=%.3f "
      "memory_format=%s\n",
      model_name.c_str(), a.get("precision").c_str(), ttq_on ? 1 : 0, static_cast<long long>(batch),
      1000.0 * batch / step_ms, step_ms, a.get("memory-format").c_str());
  return finite ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  std::setvbuf(stdout, nullptr, _IOLBF, 0);  // lines reach a log file as they come, also before a timeout
  cli::Args a("ttq_throughput", "training images/s on synthetic data, with a per-phase breakdown", "");
  std::string models;
  for (const auto& m : model_names()) models += (models.empty() ? "" : ", ") + m;
  a.option("model", "resnet20", "model name: " + models)
      .option("image-size", "32", "input height and width")
      .option("channels", "3", "input channels")
      .option("classes", "10", "number of classes")
      .option("batch", "128", "batch size")
      .option("ttq", "1", "1: ternary layers (the model's default full-precision layers stay fp32); 0: full precision")
      .option("precision", "fp32", "fp32, or bf16 (activations and the weights computed with in bf16, f32 master weights)")
      .option("memory-format", "contiguous", "contiguous (NCHW activations) or channels_last (NHWC)")
      .option("steps", "20", "timed steps")
      .option("warmup", "5", "untimed steps first")
      .option("device", "auto", "cuda, cpu or auto");
  try {
    a.parse(std::vector<std::string>(argv + 1, argv + argc));
    if (a.help_requested()) {
      std::printf("%s", a.help().c_str());
      return 0;
    }
    return run(a);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "ttq_throughput: error: %s\n", e.what());
    return 1;
  }
}
