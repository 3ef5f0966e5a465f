// `ttq train`, `ttq eval`, `ttq export`.
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#include "engine/cli/args.h"
#include "engine/dist/communicator.h"
#include "engine/io/safetensors.h"
#include "engine/nn/quantizable.h"
#include "engine/quant/quantize_model.h"
#include "engine/train/checkpoint.h"
#include "engine/train/data_sets.h"
#include "engine/train/trainer.h"
#include "kernels/device.h"
#include "models/model.h"

namespace ttq::cli {

namespace fs = std::filesystem;

namespace {

bool show_help(const Args& a) {
  if (!a.help_requested()) return false;
  std::fputs(a.help().c_str(), stdout);
  return true;
}

// Positional arguments come first; the rest are options.
std::vector<std::string> split_positional(const std::vector<std::string>& argv, size_t count, const char* command,
                                          std::vector<std::string>& positional) {
  size_t i = 0;
  for (; i < argv.size() && positional.size() < count; ++i) {
    if (argv[i].rfind("-", 0) == 0) break;
    positional.push_back(argv[i]);
  }
  (void)command;
  return std::vector<std::string>(argv.begin() + static_cast<long>(i), argv.end());
}

std::string sweep_table(const std::vector<RunSummary>& runs, const std::vector<std::string>& names) {
  std::string out = "| run | " ;
  const size_t stages = runs.empty() ? 0 : runs[0].stages.size();
  for (size_t s = 0; s < stages; ++s) out += runs[0].stages[s].name + " top-1 error | ";
  out += "sparsity | best top-1 error |\n|---|";
  for (size_t s = 0; s < stages + 2; ++s) out += "---|";
  out += "\n";
  char buf[64];
  for (size_t r = 0; r < runs.size(); ++r) {
    out += "| " + names[r] + " | ";
    for (const auto& st : runs[r].stages) {
      std::snprintf(buf, sizeof buf, "%.2f%% | ", 100 * st.test_top1_error);
      out += buf;
    }
    std::snprintf(buf, sizeof buf, "%.1f%% | %.2f%% |\n", runs[r].stages.empty() ? 0.0 : 100 * runs[r].stages.back().sparsity,
                  100 * runs[r].best_test_top1_error);
    out += buf;
  }
  return out;
}

}  // namespace

int run_train(const std::vector<std::string>& argv) {
  Args a("train CONFIG.json", "Trains the experiment a JSON file describes (see configs/ and the README).\n"
                              "Data parallel: `mpirun -np N ttq train ...` (one process per GPU), or N processes with\n"
                              "RANK, WORLD_SIZE, LOCAL_RANK and TTQ_RENDEZVOUS=/shared/file; batch_size is per process.");
  a.option("set", "", "override a config value: --set key.path=value (repeatable; values are JSON or plain words)")
      .flag("resume", "continue from <output_dir>/last.safetensors")
      .flag("overwrite", "start again in an output_dir that holds a run (the earlier run's checkpoints, metrics, "
                         "summaries and default export there are removed first)")
      .flag("quiet", "no per-step progress output");
  std::vector<std::string> pos;
  std::vector<std::string> rest = split_positional(argv, 1, "train", pos);
  // --set may repeat: collect them before the generic parser sees the rest.
  std::vector<std::string> sets, others;
  for (size_t i = 0; i < rest.size(); ++i) {
    if (rest[i] == "--set" && i + 1 < rest.size()) {
      sets.push_back(rest[++i]);
    } else if (rest[i].rfind("--set=", 0) == 0) {
      sets.push_back(rest[i].substr(6));
    } else {
      others.push_back(rest[i]);
    }
  }
  a.parse(others);
  if (show_help(a)) return 0;
  TTQ_CHECK(pos.size() == 1, "train: expects one CONFIG.json (see ttq train --help)");
  json j = read_json_file(pos[0]);
  TrainOptions opt;
  opt.resume = a.is_set("resume");
  opt.overwrite = a.is_set("overwrite");
  TTQ_CHECK(!(opt.resume && opt.overwrite), "--resume and --overwrite exclude each other");
  opt.quiet = a.is_set("quiet");
  // Every run of a sweep is read before the first starts; errors name the config file.
  std::vector<std::pair<std::string, json>> runs;
  std::vector<ExperimentConfig> configs;
  try {
    for (const auto& s : sets) j = apply_override(j, s);
    runs = expand_sweep(j);
    for (const auto& run : runs) configs.push_back(parse_experiment(run.second));
  } catch (const Error& e) {
    const std::string what = e.what();
    const std::string tag = "config: ";
    // The message keeps the place it was raised at.
    throw Error("config '" + pos[0] + "'" +
                (runs.size() > 1 && configs.size() < runs.size() ? " (sweep run " + runs[configs.size()].first + ")"
                                                                  : std::string()) +
                ": " + (what.rfind(tag, 0) == 0 ? what.substr(tag.size()) : what));
  }
  // One communicator for all runs of a sweep (data parallel: mpirun / env launch; else one process).
  opt.comm = make_communicator(configs[0].distributed, trains_on_gpu(configs[0].device));
  const bool root = opt.comm->is_root();
  if (!opt.resume && !opt.overwrite) {  // no run of a sweep starts when one of them would be refused
    std::vector<std::string> dirs;
    for (const auto& c : configs) dirs.push_back(c.output_dir);
    if (const int64_t i = first_folder_holding_a_run(dirs, *opt.comm); i >= 0)
      refuse_folder_holding_a_run(configs[static_cast<size_t>(i)].output_dir);
  }
  std::vector<RunSummary> results;
  std::vector<std::string> names;
  for (size_t i = 0; i < runs.size(); ++i) {
    const std::string& name = runs[i].first;
    const ExperimentConfig& cfg = configs[i];
    TrainOptions run_opt = opt;
    if (opt.resume && runs.size() > 1 && first_folder_holding_a_run({cfg.output_dir}, *opt.comm) < 0) {
      // A sweep resumed after an interruption: the runs it had not reached yet start afresh.
      run_opt.resume = false;
      if (root) std::printf("%s: no checkpoint yet, starting it\n", name.c_str());
    }
    RunSummary s = train_experiment(cfg, run_opt);
    if (root) {
      std::printf("\n%s", format_summary_table(s).c_str());
      std::printf("results in %s\n", cfg.output_dir.c_str());
    }
    results.push_back(s);
    names.push_back(name);
  }
  if (runs.size() > 1 && root) {
    const std::string dir = j.value("output_dir", "runs/" + j.value("name", std::string("experiment")));
    const std::string table = sweep_table(results, names);
    json all = json::array();
    for (size_t i = 0; i < results.size(); ++i) all.push_back({{"run", names[i]}, {"summary", results[i].to_json()}});
    write_file_atomic(dir + "/sweep.md", table);
    write_file_atomic(dir + "/sweep.json", all.dump(2) + "\n");
    std::printf("\nsweep (%zu runs, %s/sweep.md):\n%s", results.size(), dir.c_str(), table.c_str());
  }
  return 0;
}

namespace {

// A run folder means its last checkpoint.
std::string resolve_checkpoint(const std::string& arg) {
  if (fs::is_directory(arg)) {
    const std::string p = arg + "/last.safetensors";
    TTQ_CHECK(fs::exists(p), "'" << arg << "' is a folder without last.safetensors");
    return p;
  }
  return arg;
}

}  // namespace

int run_eval(const std::vector<std::string>& argv) {
  Args a("eval RUN_DIR|CHECKPOINT|EXPORT", "Evaluates a checkpoint or an exported ternary model on its test set.");
  a.option("data-root", "", "override the data folder stored with the model")
      .option("batch", "", "evaluation batch size (default: the run's eval.batch_size)")
      .option("device", "", "cpu, cuda or auto (default: the device the run was configured with)");
  std::vector<std::string> pos;
  a.parse(split_positional(argv, 1, "eval", pos));
  if (show_help(a)) return 0;
  TTQ_CHECK(pos.size() == 1, "eval: expects one RUN_DIR, checkpoint or export (see ttq eval --help)");
  const Checkpoint ck = read_checkpoint(resolve_checkpoint(pos[0]));
  TTQ_CHECK(ck.format != "state-dict", "eval: '" << ck.file.path()
                                                 << "' is a plain state dict without an experiment config; start an "
                                                    "experiment from it with \"init_from\"");
  json cfg_json = ck.config;
  if (!a.get("data-root").empty()) cfg_json["data"]["root"] = a.get("data-root");
  const ExperimentConfig cfg = parse_stored_experiment(cfg_json, ck.file.path(), "eval");
  // The test set alone when the checkpoint holds what the training set gave (older ones: both).
  DataSets data = ck.data ? load_test_set(cfg.data, cfg.seed, *ck.data) : load_data_sets(cfg.data, cfg.seed);
  Model model = build_model(cfg.model, data.spec, cfg.seed);
  load_model(*model.net, ck);
  // The run's own device by default, so the result is the one its training reported.
  const std::string device_arg = a.get("device").empty() ? cfg.device : a.get("device");
  if (device_arg == "cuda" && a.get("device").empty() && cuda_device_count() == 0)
    TTQ_FAIL("eval: the run was configured with device 'cuda' but there is no usable GPU here ("
             << cuda_device_summary() << "); evaluate on the CPU with --device cpu");
  const Device device = select_device(device_arg);
  model.net->to(device);
  // In the run's precision and memory format too.
  // And with the run's evaluation batch: on the GPU the convolution algorithms depend on it.
  const int64_t batch = a.get("batch").empty() ? cfg.eval_batch_size : a.get_int("batch");
  const EvalResult ev = evaluate(*model.net, data.test, batch, cfg.data.workers, nullptr, cfg.compute_format());
  std::printf("%s (%s, %s, %s%s): %s\n", ck.file.path().c_str(), ck.format.c_str(), device_name(device),
              cfg.precision.c_str(),
              cfg.memory_format == "contiguous" ? "" : (", " + cfg.memory_format).c_str(),
              data.description.c_str());
  std::printf("test loss %.4f  top-1 error %.2f%% (%lld/%lld wrong)  top-5 error %.2f%%\n", ev.loss,
              100.0 * ev.top1_error, static_cast<long long>(std::llround(ev.top1_error * ev.samples)),
              static_cast<long long>(ev.samples), 100.0 * ev.top5_error);
  return 0;
}

int run_export(const std::vector<std::string>& argv) {
  Args a("export RUN_DIR|CHECKPOINT", "Writes the deployable ternary model: 2-bit packed codes and Wp/Wn per ternary "
                                      "layer, the full-precision layers as they are.");
  a.option("out", "", "output file (default: <run dir>/model.ttq.safetensors)");
  std::vector<std::string> pos;
  a.parse(split_positional(argv, 1, "export", pos));
  if (show_help(a)) return 0;
  TTQ_CHECK(pos.size() == 1, "export: expects one RUN_DIR or checkpoint (see ttq export --help)");
  const std::string ck_path = resolve_checkpoint(pos[0]);
  std::string out = a.get("out");
  if (out.empty()) out = fs::path(ck_path).replace_filename("model.ttq.safetensors").string();
  const ExportReport r = export_checkpoint(ck_path, out);
  std::printf("wrote %s: %d ternary layers, %d full-precision layers%s\n", out.c_str(), r.ternary_layers,
              r.full_precision_layers, r.ternary_layers == 0 ? " (the checkpoint has no ternary layer yet)" : "");
  const double ratio = r.file_bytes && r.fp32_bytes ? static_cast<double>(r.fp32_bytes) / r.file_bytes : 1.0;
  std::printf("size: %.1f KiB as fp32, %.1f KiB exported (%.1fx %s; %.1f KiB of tensors, the rest the header with "
              "the config)\n",
              r.fp32_bytes / 1024.0, r.file_bytes / 1024.0, ratio >= 1.0 ? ratio : 1.0 / ratio,
              ratio >= 1.0 ? "smaller" : "larger", r.tensor_bytes / 1024.0);
  return 0;
}

}  // namespace ttq::cli
