#include "engine/train/trainer.h"

#include <sys/stat.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "engine/io/safetensors.h"
#include "engine/nn/quantizable.h"
#include "engine/train/checkpoint.h"
#include "engine/train/data_sets.h"
#include "engine/train/progress.h"
#include "engine/train/step.h"
#include "kernels/device.h"
#include "models/model.h"

namespace ttq {

namespace fs = std::filesystem;

json RunSummary::to_json() const {
  json st = json::array();
  for (const auto& s : stages)
    st.push_back({{"name", s.name}, {"ternary", s.ternary}, {"test_loss", s.test_loss},
                  {"test_top1_error", s.test_top1_error}, {"test_top5_error", s.test_top5_error},
                  {"sparsity", s.sparsity}});
  json j = {{"name", name}, {"stages", st}, {"best_test_top1_error", best_test_top1_error},
            {"model_size", {{"fp32_bytes", fp32_bytes}, {"deployed_bytes", deployed_bytes}}},
            {"wall_seconds", wall_seconds}};
  if (!stages.empty()) {
    j["final"] = {{"test_top1_error", stages.back().test_top1_error},
                  {"test_top5_error", stages.back().test_top5_error},
                  {"test_loss", stages.back().test_loss}, {"sparsity", stages.back().sparsity}};
  }
  return j;
}

namespace {

}  // namespace

EvalResult evaluate(Module& net, const std::shared_ptr<const SampleSource>& test, int64_t batch, int workers) {
  LoaderConfig lc;
  lc.batch_size = batch;
  lc.shuffle = false;
  lc.augment = false;
  lc.drop_last = false;
  lc.workers = workers;
  Loader loader(test, lc);
  loader.start_epoch(0);
  CrossEntropyLoss loss;
  const bool was_training = net.training();
  net.eval();
  double loss_sum = 0.0;
  int64_t top1 = 0, top5 = 0, seen = 0;
  Batch b;
  const Device device = net.device();
  while (loader.next(b)) {
    Tensor logits = net.forward(b.images.to(device));
    const int64_t n = static_cast<int64_t>(b.labels.size());
    loss_sum += loss.forward(logits, b.labels) * n;
    top1 += count_topk_correct(logits, b.labels, 1);
    top5 += count_topk_correct(logits, b.labels, 5);
    seen += n;
  }
  net.train(was_training);
  return {loss_sum / seen, 1.0 - static_cast<double>(top1) / seen, 1.0 - static_cast<double>(top5) / seen, seen};
}

namespace {

json layer_stats(Module& net, double* overall_sparsity) {
  json layers = json::object();
  int64_t zeros = 0, total = 0;
  for (auto* l : quantizable_layers(net)) {
    if (!l->is_ternary()) continue;
    const TernaryStats& s = l->quantizer()->stats();
    layers[l->path()] = {{"D", s.threshold}, {"wp", s.wp}, {"wn", s.wn}, {"sparsity", s.sparsity()}};
    zeros += s.zeros;
    total += s.positive + s.negative + s.zeros;
  }
  if (overall_sparsity) *overall_sparsity = total ? static_cast<double>(zeros) / total : 0.0;
  return layers;
}

std::string fmt(const char* f, double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, f, v);
  return buf;
}

class MetricsLog {
 public:
  MetricsLog(const std::string& path, bool append) : out_(path, append ? std::ios::app : std::ios::trunc) {
    TTQ_CHECK(out_, "cannot write metrics file '" << path << "'");
  }
  void write(const json& j) {
    out_ << j.dump() << "\n";
    out_.flush();
  }

 private:
  std::ofstream out_;
};

// The device the config asks for: "cuda" needs a usable GPU; "auto" takes one when present.
Device select_device(const std::string& device, Progress& progress) {
  const int gpus = cuda_device_count();
  if (device == "cuda") {
    TTQ_CHECK(gpus > 0, "config: device 'cuda' requested but there is no usable GPU (" << cuda_device_summary() << ")");
    return Device::CUDA;
  }
  if (device == "auto") {
    progress.line(gpus > 0 ? "Training on the GPU: " + cuda_device_summary()
                           : "No usable GPU (" + cuda_device_summary() + "): training on the CPU");
    return gpus > 0 ? Device::CUDA : Device::CPU;
  }
  return Device::CPU;
}

}  // namespace

RunSummary train_experiment(const ExperimentConfig& cfg_in, const TrainOptions& opt) {
  using clock = std::chrono::steady_clock;
  const auto t_start = clock::now();
  ExperimentConfig cfg = cfg_in;
  Progress progress(!opt.quiet && Progress::stdout_is_terminal());
  const Device device = select_device(cfg.device, progress);

  DataSets data = load_data_sets(cfg.data, cfg.seed);
  json resolved_model;
  JsonReader model_reader(cfg.model, "model", &resolved_model);
  Model model = build_model(model_reader, data.spec, cfg.seed);
  cfg.resolved["model"] = resolved_model;  // with the model's defaults filled in
  for (size_t i = 0; i < cfg.stages.size(); ++i)
    if (cfg.stages[i].quantize && cfg.stages[i].fp_layers_from_model) {
      cfg.stages[i].quantization.full_precision_layers = model.full_precision_layers;
      cfg.resolved["stages"][i]["quantization"]["full_precision_layers"] = model.full_precision_layers;
    }
  Module& net = *model.net;

  fs::create_directories(cfg.output_dir);
  const std::string last_path = cfg.output_dir + "/last.safetensors";
  const std::string config_path = cfg.output_dir + "/config.json";
  TrainingState state;
  std::unique_ptr<Checkpoint> resume_ck;
  if (opt.resume) {
    TTQ_CHECK(fs::exists(last_path), "--resume: no checkpoint '" << last_path << "' to resume from");
    resume_ck = std::make_unique<Checkpoint>(read_checkpoint(last_path));
    TTQ_CHECK(resume_ck->format == "ttq-checkpoint", "--resume: '" << last_path << "' is not a training checkpoint");
    TTQ_CHECK(resume_ck->config == cfg.resolved,
              "--resume: the configuration differs from the one '" << last_path << "' was trained with; resume with "
                                                                     "the same config (see " << config_path << ")");
    load_model(net, *resume_ck);
    state = resume_ck->state;
    progress.line("Resuming " + cfg.name + " at stage " + std::to_string(state.stage) + ", epoch " +
                  std::to_string(state.epoch) + ", batch " + std::to_string(state.batch));
  } else {
    write_file_atomic(config_path, cfg.resolved.dump(2) + "\n");
    if (!cfg.init_from.empty()) {
      const Checkpoint init = read_checkpoint(cfg.init_from);
      load_model(net, init);
      progress.line("Initialised from " + cfg.init_from);
    }
  }
  net.to(device);
  MetricsLog metrics(cfg.output_dir + "/metrics.jsonl", opt.resume);
  progress.line("ttq train " + cfg.name + ": " + model.name + " on " + data.description + " -> " + cfg.output_dir);

  RunSummary summary;
  summary.name = cfg.name;
  summary.output_dir = cfg.output_dir;
  if (opt.resume) {
    // Earlier stages' results from the interrupted run.
    std::ifstream in(cfg.output_dir + "/stages.json");
    if (in) {
      json st = json::parse(in, nullptr, false);
      if (st.is_array())
        for (const auto& s : st)
          summary.stages.push_back({s.at("name"), s.at("ternary"), s.at("test_loss"), s.at("test_top1_error"),
                                    s.at("test_top5_error"), s.at("sparsity")});
    }
  }
  const double elapsed_before = state.elapsed_seconds;
  int64_t steps_this_process = 0;

  for (int64_t si = state.stage; si < static_cast<int64_t>(cfg.stages.size()); ++si) {
    const StageConfig& st = cfg.stages[si];
    if (st.quantize) {
      const auto done = quantize_model(net, st.quantization);
      if (!done.empty())
        progress.line("Stage " + st.name + ": " + std::to_string(done.size()) + " layers ternary (" +
                      threshold_mode_name(st.quantization.ternary.mode) + ")");
    }
    auto optimizer = make_optimizer(net.named_parameters(), st.optimizer);
    // The TTQ work of all ternary layers together, once per step (fused on the GPU).
    TernaryPass ternary_pass(net);
    const bool mid_stage = resume_ck && si == state.stage && (state.epoch > 0 || state.batch > 0);
    if (mid_stage) load_optimizer(*optimizer, *resume_ck);
    LoaderConfig lc;
    lc.batch_size = st.batch_size;
    lc.workers = cfg.data.workers;
    lc.prefetch = cfg.data.prefetch;
    uint64_t key = cfg.seed * 1000003ULL + static_cast<uint64_t>(si);
    lc.seed = Rng::splitmix64(key);
    Loader loader(data.train, lc);
    const int64_t nb = loader.batches_per_epoch();
    CrossEntropyLoss loss(static_cast<float>(st.label_smoothing));
    StageResult result{st.name, st.quantize, 0.0, 1.0, 1.0, 0.0};

    for (int64_t epoch = (si == state.stage ? state.epoch : 0); epoch < st.epochs; ++epoch) {
      const int64_t first = (si == state.stage && epoch == state.epoch) ? state.batch : 0;
      if (first == 0) {
        state.epoch_loss_sum = 0.0;
        state.epoch_correct = state.epoch_seen = 0;
      }
      loader.start_epoch(epoch, first);
      const auto t_epoch = clock::now();
      int64_t images = 0;
      Batch batch;
      for (int64_t b = first; loader.next(batch); ++b) {
        const double lr = lr_at(st.schedule, st.optimizer.lr, epoch + static_cast<double>(b) / nb);
        StepResult r;
        try {
          r = train_step(net, loss, *optimizer, batch, lr, ternary_pass.empty() ? nullptr : &ternary_pass);
        } catch (const Error& e) {
          TTQ_FAIL("stage '" << st.name << "', epoch " << epoch + 1 << ", step " << b + 1 << ": " << e.what()
                             << " (the last checkpoint, " << last_path << ", is unchanged)");
        }
        const int64_t n = static_cast<int64_t>(batch.labels.size());
        state.epoch_loss_sum += r.loss * n;
        state.epoch_correct += r.correct;
        state.epoch_seen += n;
        ++state.global_step;
        ++steps_this_process;
        images += n;
        const double secs = std::chrono::duration<double>(clock::now() - t_epoch).count();
        const double ips = secs > 0 ? images / secs : 0.0;
        const double eta = images > 0 ? secs / images * (nb - b - 1) * st.batch_size : -1.0;
        if (!opt.quiet) progress.step(st.name, epoch, st.epochs, b + 1, nb, r.loss, lr, ips, eta, cfg.log_every_steps);
        if (state.global_step % cfg.log_every_steps == 0)
          metrics.write({{"type", "step"}, {"stage", st.name}, {"epoch", epoch + 1}, {"step", state.global_step},
                         {"loss", r.loss}, {"lr", lr}, {"images_per_s", ips}});
        const bool last_batch = b + 1 == nb;
        if (cfg.checkpoint_every_steps > 0 && state.global_step % cfg.checkpoint_every_steps == 0 && !last_batch) {
          TrainingState s = state;
          s.stage = si;
          s.epoch = epoch;
          s.batch = b + 1;
          s.optimizer_steps = optimizer->steps();
          s.elapsed_seconds = elapsed_before + std::chrono::duration<double>(clock::now() - t_start).count();
          save_checkpoint(last_path, net, optimizer.get(), s, cfg.resolved);
        }
        if (opt.stop_after_steps > 0 && steps_this_process >= opt.stop_after_steps) {
          summary.wall_seconds = std::chrono::duration<double>(clock::now() - t_start).count();
          return summary;  // simulated interruption: nothing written past the last checkpoint
        }
      }
      // End of epoch: evaluate, log, checkpoint.
      const bool last_epoch = epoch + 1 == st.epochs;
      json rec = {{"type", "epoch"}, {"stage", st.name}, {"epoch", epoch + 1}, {"step", state.global_step},
                  {"train_loss", state.epoch_loss_sum / std::max<int64_t>(state.epoch_seen, 1)},
                  {"train_top1_error", 1.0 - static_cast<double>(state.epoch_correct) / std::max<int64_t>(state.epoch_seen, 1)},
                  {"lr", lr_at(st.schedule, st.optimizer.lr, epoch + 1.0)}};
      if ((epoch + 1) % cfg.eval_every_epochs == 0 || last_epoch) {
        const EvalResult ev = evaluate(net, data.test, cfg.eval_batch_size, cfg.data.workers);
        rec["test_loss"] = ev.loss;
        rec["test_top1_error"] = ev.top1_error;
        rec["test_top5_error"] = ev.top5_error;
        state.best_error = std::min(state.best_error, ev.top1_error);
        result.test_loss = ev.loss;
        result.test_top1_error = ev.top1_error;
        result.test_top5_error = ev.top5_error;
        progress.line(st.name + " epoch " + std::to_string(epoch + 1) + "/" + std::to_string(st.epochs) +
                      ": train loss " + fmt("%.4f", rec["train_loss"]) + ", test loss " + fmt("%.4f", ev.loss) +
                      ", test error " + fmt("%.2f%%", 100 * ev.top1_error) + " (top-5 " +
                      fmt("%.2f%%", 100 * ev.top5_error) + ")");
      }
      rec["layers"] = layer_stats(net, &result.sparsity);
      metrics.write(rec);
      if ((epoch + 1) % cfg.checkpoint_every_epochs == 0 || last_epoch) {
        TrainingState s = state;
        s.stage = last_epoch ? si + 1 : si;
        s.epoch = last_epoch ? 0 : epoch + 1;
        s.batch = 0;
        s.optimizer_steps = optimizer->steps();
        s.elapsed_seconds = elapsed_before + std::chrono::duration<double>(clock::now() - t_start).count();
        save_checkpoint(last_path, net, optimizer.get(), s, cfg.resolved);
        if (last_epoch) save_checkpoint(cfg.output_dir + "/" + st.name + ".safetensors", net, optimizer.get(), s, cfg.resolved);
      }
    }
    summary.stages.push_back(result);
    json stages_json = json::array();
    for (const auto& s : summary.stages)
      stages_json.push_back({{"name", s.name}, {"ternary", s.ternary}, {"test_loss", s.test_loss},
                             {"test_top1_error", s.test_top1_error}, {"test_top5_error", s.test_top5_error},
                             {"sparsity", s.sparsity}});
    write_file_atomic(cfg.output_dir + "/stages.json", stages_json.dump(2) + "\n");
    state.stage = si + 1;
    state.epoch = state.batch = 0;
  }

  const ModelSize size = model_size(net);
  summary.fp32_bytes = size.fp32_bytes;
  summary.deployed_bytes = size.deployed_bytes;
  summary.best_test_top1_error = state.best_error;
  summary.wall_seconds = elapsed_before + std::chrono::duration<double>(clock::now() - t_start).count();
  for (auto* l : quantizable_layers(net)) {
    if (!l->is_ternary()) {
      summary.layer_table.push_back({l->path(), "fp32", "", "", ""});
      continue;
    }
    const TernaryStats& s = l->quantizer()->stats();
    summary.layer_table.push_back({l->path(), fmt("%.4f", s.threshold), fmt("%.4f", s.wp), fmt("%.4f", s.wn),
                                   fmt("%.1f%%", 100 * s.sparsity())});
  }
  json sj = summary.to_json();
  sj["layers"] = layer_stats(net, nullptr);
  write_file_atomic(cfg.output_dir + "/summary.json", sj.dump(2) + "\n");
  return summary;
}

std::string format_summary_table(const RunSummary& s) {
  std::ostringstream os;
  char line[256];
  std::snprintf(line, sizeof line, "%-28s %10s %10s %10s %9s\n", "layer", "D", "Wp", "Wn", "sparsity");
  os << line;
  for (const auto& r : s.layer_table) {
    std::snprintf(line, sizeof line, "%-28s %10s %10s %10s %9s\n", r[0].c_str(), r[1].c_str(), r[2].c_str(),
                  r[3].c_str(), r[4].c_str());
    os << line;
  }
  os << "\n";
  std::snprintf(line, sizeof line, "%-12s %-8s %12s %12s %10s\n", "stage", "weights", "test top-1", "test top-5", "sparsity");
  os << line;
  for (const auto& st : s.stages) {
    std::snprintf(line, sizeof line, "%-12s %-8s %11.2f%% %11.2f%% %9.1f%%\n", st.name.c_str(),
                  st.ternary ? "ternary" : "fp32", 100 * st.test_top1_error, 100 * st.test_top5_error,
                  100 * st.sparsity);
    os << line;
  }
  std::snprintf(line, sizeof line, "\nmodel size: %.1f KiB fp32, %.1f KiB deployed (ternary layers 2-bit packed)\n",
                s.fp32_bytes / 1024.0, s.deployed_bytes / 1024.0);
  os << line;
  std::snprintf(line, sizeof line, "wall time: %s\n", format_duration(s.wall_seconds).c_str());
  os << line;
  return os.str();
}

}  // namespace ttq
