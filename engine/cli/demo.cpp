// `ttq demo`: a short CPU run on a fixed synthetic problem: full-precision training, then TTQ
// from those weights, then a table of test errors, per-layer ternary state and model sizes.
#include <chrono>
#include <cstdio>
#include <string>
#include <vector>

#include "engine/cli/args.h"
#include "engine/data/synthetic.h"
#include "engine/nn/quantizable.h"
#include "engine/optim/schedule.h"
#include "engine/quant/quantize_model.h"
#include "engine/train/step.h"
#include "kernels/cpu/ops.h"
#include "models/model.h"

namespace ttq::cli {

namespace {

double test_error(Module& net, const SyntheticDataset& data, int64_t begin, int64_t count, int64_t batch) {
  CrossEntropyLoss loss;
  int64_t correct = 0;
  for (int64_t i = 0; i < count; i += batch) {
    const int64_t n = std::min(batch, count - i);
    correct += eval_step(net, loss, data.batch(begin + i, n)).correct;
  }
  return 100.0 * (1.0 - static_cast<double>(correct) / static_cast<double>(count));
}

void train_phase(const char* name, Module& net, const SyntheticDataset& data, int steps, int64_t batch,
                 OptimizerConfig oc, int64_t& cursor) {
  auto opt = make_optimizer(net.named_parameters(), oc);
  CrossEntropyLoss loss;
  ScheduleConfig sc;
  sc.type = "cosine";
  sc.total_epochs = steps;  // one "epoch" per step here
  const auto t0 = std::chrono::steady_clock::now();
  double running = 0.0;
  for (int s = 0; s < steps; ++s) {
    const StepResult r = train_step(net, loss, *opt, data.batch(cursor, batch), lr_at(sc, oc.lr, s));
    cursor += batch;
    running = s == 0 ? r.loss : 0.95 * running + 0.05 * r.loss;
    if ((s + 1) % 50 == 0 || s + 1 == steps) {
      const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      std::printf("  %-4s step %4d/%d  loss %.4f  %.0f images/s\n", name, s + 1, steps, running,
                  (s + 1) * static_cast<double>(batch) / secs);
      std::fflush(stdout);
    }
  }
}

}  // namespace

int run_demo(const std::vector<std::string>& argv) {
  Args a("demo", "Trains a model on a fixed synthetic problem on the CPU: full precision, then TTQ from it.");
  a.option("model", "small_convnet", "model name (small_convnet, resnet20, resnet32, resnet44, resnet56)")
      .option("steps", "300", "optimisation steps per phase")
      .option("batch", "64", "batch size")
      .option("size", "16", "input height and width")
      .option("classes", "10", "number of classes")
      .option("noise", "2.0", "noise standard deviation around the class prototypes")
      .option("lr", "0.05", "SGD learning rate (cosine decay over each phase)")
      .option("t", "0.05", "TTQ threshold factor")
      .option("seed", "1", "random seed");
  a.parse(argv);
  if (a.help_requested()) {
    std::fputs(a.help().c_str(), stdout);
    return 0;
  }

  InputSpec in{1, a.get_int("size"), a.get_int("size"), a.get_int("classes")};
  const uint64_t seed = static_cast<uint64_t>(a.get_int("seed"));
  SyntheticDataset data(in, int64_t(1) << 40, static_cast<float>(a.get_double("noise")), seed);
  const int64_t batch = a.get_int("batch"), test_begin = int64_t(1) << 39, test_count = 2048;
  const int steps = a.get_int("steps");
  TTQ_CHECK(steps > 0 && batch > 1, "demo: --steps must be > 0 and --batch > 1");
  Model m = build_model(json{{"name", a.get("model")}}, in, seed);

  std::printf("ttq demo: %s on synthetic %lldx%lld, %lld classes, CPU kernels: %s\n", m.name.c_str(),
              static_cast<long long>(in.height), static_cast<long long>(in.width), static_cast<long long>(in.classes),
              cpu::kernels_name(cpu::kernels()));
  OptimizerConfig oc;
  oc.lr = a.get_double("lr");
  oc.weight_decay = 1e-4;
  int64_t cursor = 0;
  train_phase("fp32", *m.net, data, steps, batch, oc, cursor);
  const double fp_err = test_error(*m.net, data, test_begin, test_count, 256);
  const ModelSize fp_size = model_size(*m.net);

  QuantizeOptions q;
  q.ternary.t = static_cast<float>(a.get_double("t"));
  q.full_precision_layers = m.full_precision_layers;
  quantize_model(*m.net, q);
  const double init_err = test_error(*m.net, data, test_begin, test_count, 256);
  train_phase("ttq", *m.net, data, steps, batch, oc, cursor);
  const double ttq_err = test_error(*m.net, data, test_begin, test_count, 256);
  const ModelSize ttq_size = model_size(*m.net);

  std::printf("\n%-28s %10s %10s %10s %9s\n", "layer", "D", "Wp", "Wn", "sparsity");
  for (auto* l : quantizable_layers(*m.net)) {
    if (!l->is_ternary()) {
      std::printf("%-28s %10s %10s %10s %9s\n", l->path().c_str(), "fp32", "", "", "");
      continue;
    }
    const auto& st = l->quantizer()->stats();
    std::printf("%-28s %10.4f %10.4f %10.4f %8.1f%%\n", l->path().c_str(), st.threshold, st.wp, st.wn,
                100.0 * st.sparsity());
  }
  std::printf("\n%-36s %8s\n", "result", "value");
  std::printf("%-36s %7.2f%%\n", "test error, full precision", fp_err);
  std::printf("%-36s %7.2f%%\n", "test error, TTQ at quantization", init_err);
  std::printf("%-36s %7.2f%%\n", "test error, TTQ after training", ttq_err);
  std::printf("%-36s %8.1f KiB\n", "model size, fp32", fp_size.fp32_bytes / 1024.0);
  std::printf("%-36s %8.1f KiB\n", "model size, ternary (2-bit packed)", ttq_size.deployed_bytes / 1024.0);
  return 0;
}

}  // namespace ttq::cli
