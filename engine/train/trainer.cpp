#include "engine/train/trainer.h"

#include <sys/stat.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "engine/dist/data_parallel.h"
#include "engine/io/safetensors.h"
#include "engine/nn/quantizable.h"
#include "engine/train/checkpoint.h"
#include "engine/train/data_sets.h"
#include "engine/train/progress.h"
#include "engine/train/batch_feed.h"
#include "engine/train/step.h"
#include "engine/train/step_log.h"
#include "kernels/device.h"
#include "kernels/ops.h"
#include "models/model.h"

namespace ttq {

namespace fs = std::filesystem;

namespace {
json stage_json(const StageResult& s) {
  return {{"name", s.name},
          {"ternary", s.ternary},
          {"test_loss", s.test_loss},
          {"test_top1_error", s.test_top1_error},
          {"test_top5_error", s.test_top5_error},
          {"best_test_top1_error", s.best_test_top1_error},
          {"sparsity", s.sparsity}};
}
StageResult stage_from_json(const json& j) {
  return {j.at("name"), j.at("ternary"), j.at("test_loss"), j.at("test_top1_error"), j.at("test_top5_error"),
          j.value("best_test_top1_error", 1.0), j.at("sparsity")};
}
}  // namespace

json RunSummary::to_json() const {
  json st = json::array();
  for (const auto& s : stages) st.push_back(stage_json(s));
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

EvalResult evaluate(Module& net, const std::shared_ptr<const SampleSource>& test, int64_t batch, int workers,
                    Communicator* comm, ComputeFormat compute) {
  LoaderConfig lc;
  lc.batch_size = batch;
  lc.shuffle = false;
  lc.augment = false;
  lc.drop_last = false;
  lc.workers = workers;
  if (comm) {  // each rank evaluates its share of every global batch; the sums are added up below
    lc.rank = comm->rank();
    lc.world = comm->world();
  }
  Loader loader(test, lc);
  loader.start_epoch(0);
  CrossEntropyLoss loss;
  const bool was_training = net.training();
  net.eval();
  double loss_sum = 0.0;
  int64_t top1 = 0, top5 = 0, seen = 0;
  const Device device = net.device();
  // Batches arrive on the device ahead of time; each batch's loss, top-1 and top-5 counts stay
  // in device slots, read back in one go (on the GPU nothing waits on the host per batch).
  BatchFeed feed(loader, device, compute);
  const int64_t capacity = std::clamp<int64_t>(loader.batches_per_epoch(), 1, 4096);
  StepLog log(device, capacity);
  Tensor top5_slots = Tensor::zeros({capacity}, DType::I64, device);
  auto flush = [&] {
    const int64_t k = log.pending();
    if (k == 0) return;
    const Tensor t5 = top5_slots.slice(0, k).to(Device::CPU);
    const std::vector<LoggedStep> done = log.read();
    for (int64_t i = 0; i < k; ++i) {
      loss_sum += done[i].loss * done[i].batch;
      top1 += done[i].correct;
      top5 += t5.data<int64_t>()[i];
      seen += done[i].batch;
    }
  };
  DeviceBatch b;
  while (feed.next(b)) {
    if (b.size == 0) continue;  // the last global batch may leave a rank nothing
    Tensor logits = net.forward(b.images);
    Tensor loss_slot = log.loss_slot(), top1_slot = log.correct_slot();
    Tensor top5_slot = top5_slots.slice(log.pending(), log.pending() + 1);
    loss.forward_into(logits, b.labels, loss_slot);
    ops::count_topk_correct_into(logits, b.labels, 1, top1_slot);
    ops::count_topk_correct_into(logits, b.labels, 5, top5_slot);
    log.commit(b.size);
    if (log.full()) flush();
  }
  flush();
  net.train(was_training);
  // Checked after the sums, so every rank stops with the cause (a rank stopping alone would leave
  // the others an error about a closed connection).
  const bool finite_here = std::isfinite(loss_sum);
  if (comm && comm->world() > 1) {
    int64_t counts[3] = {top1, top5, seen};
    comm->all_reduce_sum(counts, 3, "the evaluation counts");
    comm->all_reduce_sum(&loss_sum, 1, "the evaluation loss");
    top1 = counts[0];
    top5 = counts[1];
    seen = counts[2];
  }
  TTQ_CHECK(std::isfinite(loss_sum), "evaluation: the loss is not finite" << (finite_here ? " on another rank" : "")
                                                                          << "; the model's outputs contain NaN or Inf, or a label is outside the classes");
  TTQ_CHECK(seen > 0, "evaluation: the test set gave no samples");
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
  // enabled = false (ranks other than 0) writes nothing. resumed_at >= 0: a resumed run, whose
  // checkpoint was taken at that global step; the records the interrupted run wrote after it (they
  // are written again) and a last line cut short are dropped, the others kept.
  MetricsLog(const std::string& path, int64_t resumed_at, bool enabled = true) : path_(path) {
    if (!enabled) return;
    if (resumed_at >= 0) {
      std::ifstream in(path);
      std::string line, kept;
      while (std::getline(in, line)) {
        json r;
        try {
          r = json::parse(line, json_depth_limit(path), false);
        } catch (const Error&) {
          continue;  // nested too deeply: not a record of this engine
        }
        if (r.is_object() && r.contains("step") && r["step"].is_number_integer() &&
            r["step"].get<int64_t>() <= resumed_at)
          kept += line + "\n";
      }
      write_file_atomic(path, kept);
    }
    out_.open(path, resumed_at >= 0 ? std::ios::app : std::ios::trunc);
    TTQ_CHECK(out_, "cannot write metrics file '" << path << "'");
  }
  void write(const json& j) {
    if (!out_.is_open()) return;
    out_ << j.dump() << "\n";
    out_.flush();
    TTQ_CHECK(out_, "cannot write metrics file '" << path_ << "' (disk full?)");
  }

 private:
  std::string path_;
  std::ofstream out_;
};

// The first place where two resolved configurations differ, as a JSON path ("" if nowhere),
// leaving out the keys that do not change what a run computes.
std::string first_difference(const json& a, const json& b, const std::string& path = "") {
  static const char* const kFree[] = {"/name", "/description", "/output_dir", "/data/root", "/data/workers",
                                      "/data/prefetch", "/log/every_steps", "/distributed/backend",
                                      "/distributed/timeout_s", "/distributed/bucket_mb",
                                      "/distributed/first_bucket_mb"};
  for (const char* f : kFree)
    if (path == f) return "";
  if (a.is_object() && b.is_object()) {
    for (const auto& [k, v] : a.items()) {
      if (!b.contains(k)) return path + "/" + k;
      const std::string d = first_difference(v, b.at(k), path + "/" + k);
      if (!d.empty()) return d;
    }
    for (const auto& [k, v] : b.items())
      if (!a.contains(k)) return path + "/" + k;
    return "";
  }
  if (a.is_array() && b.is_array() && a.size() == b.size()) {
    for (size_t i = 0; i < a.size(); ++i) {
      const std::string d = first_difference(a[i], b[i], path + "/" + std::to_string(i));
      if (!d.empty()) return d;
    }
    return "";
  }
  return a == b ? "" : (path.empty() ? std::string("/") : path);
}

// The GPU's convolutions, pooling and batch norm come from cuDNN, its Linear from cuBLAS: a CUDA
// build without them cannot train on the GPU.
#if defined(TTQ_HAVE_CUDNN) && defined(TTQ_HAVE_CUBLAS)
constexpr bool kGpuLayersBuilt = true;
#else
constexpr bool kGpuLayersBuilt = false;
#endif
}  // namespace

bool trains_on_gpu(const std::string& device) {
  return device != "cpu" && kGpuLayersBuilt && cuda_device_count() > 0;
}

Device select_device(const std::string& device, std::string* said) {
  const int gpus = cuda_device_count();
  if (device == "cuda") {
    TTQ_CHECK(gpus > 0, "device 'cuda' requested but there is no usable GPU (" << cuda_device_summary() << ")");
    TTQ_CHECK(kGpuLayersBuilt, "device 'cuda' requested but this build lacks cuDNN or cuBLAS, which the GPU layers "
                               "need (`ttq info` shows what it has; CUDNN_ROOT points CMake at cuDNN)");
    return Device::CUDA;
  }
  TTQ_CHECK(device == "auto" || device == "cpu", "device '" << device << "': expected cpu, cuda or auto");
  if (device == "cpu") return Device::CPU;
  if (said)
    *said = gpus == 0       ? "No usable GPU (" + cuda_device_summary() + "): training on the CPU"
            : kGpuLayersBuilt ? "Training on the GPU: " + cuda_device_summary()
                              : "This build lacks cuDNN or cuBLAS, which the GPU layers need: training on the CPU "
                                "(GPU: " + cuda_device_summary() + ")";
  return trains_on_gpu(device) ? Device::CUDA : Device::CPU;
}

namespace {

// Data parallel: the epoch's running sums of all ranks go to rank 0 (the one that checkpoints),
// the others restart from 0, so the end-of-epoch sum over ranks is unchanged and a resumed run
// (every rank loads rank 0's state, the others zero theirs) continues with the same numbers.
void fold_epoch_sums(DataParallel& dp, TrainingState& state) {
  if (!dp.active()) return;
  double loss_sum = state.epoch_loss_sum;
  int64_t counts[2] = {state.epoch_correct, state.epoch_seen};
  dp.sum(&loss_sum, 1, "the epoch's loss sum");
  dp.sum(counts, 2, "the epoch's counts");
  if (dp.root()) {
    state.epoch_loss_sum = loss_sum;
    state.epoch_correct = counts[0];
    state.epoch_seen = counts[1];
  } else {
    state.epoch_loss_sum = 0.0;
    state.epoch_correct = state.epoch_seen = 0;
  }
}

// A finished stage's results: into the summary, and stages.json rewritten (rank 0).
void record_stage(RunSummary& summary, const StageResult& result, const std::string& output_dir, bool root) {
  summary.stages.push_back(result);
  json all = json::array();
  for (const auto& s : summary.stages) all.push_back(stage_json(s));
  if (root) write_file_atomic(output_dir + "/stages.json", all.dump(2) + "\n");
}

// The position a checkpoint resumes at lies inside the configured run.
void check_resumable(const TrainingState& s, const ExperimentConfig& cfg, const std::string& path) {
  const auto stages = static_cast<int64_t>(cfg.stages.size());
  TTQ_CHECK(s.stage >= 0 && s.stage <= stages && s.epoch >= 0 && s.batch >= 0 && s.global_step >= 0 &&
                (s.stage == stages ? s.epoch == 0 && s.batch == 0 : s.epoch < cfg.stages[s.stage].epochs),
            "--resume: '" << path << "' resumes at stage " << s.stage << ", epoch " << s.epoch << ", batch " << s.batch
                          << ", which is not a point of this run (" << stages << " stage" << (stages == 1 ? "" : "s")
                          << "); the checkpoint is damaged");
}

// --overwrite: the files the earlier run in dir wrote (the stage checkpoints by the stage names of
// its config.json, read only when the folder holds a training checkpoint) and its default export;
// keep (the new run's init_from) and files of any other kind stay. last.safetensors goes last, so a
// failure leaves a run that still resumes. Returns the failure, or "".
std::string remove_run_files(const std::string& dir, const std::string& keep) {
  const std::string last = dir + "/last.safetensors";
  std::vector<std::string> names{"stages.json", "summary.json", "metrics.jsonl", "model.ttq.safetensors", "config.json"};
  if (safetensors_format(last) == "ttq-checkpoint") {
    try {
      std::ifstream in(dir + "/config.json");
      const json old = json::parse(in, json_depth_limit("'" + dir + "/config.json'"));
      for (const auto& st : old.at("stages")) {
        const std::string n = st.at("name").get<std::string>();
        if (usable_file_name(n)) names.push_back(n + ".safetensors");
      }
    } catch (const std::exception&) {
      // no readable config.json: its stage checkpoints are not known
    }
  }
  names.push_back("last.safetensors");
  for (const auto& n : names) {
    const std::string path = dir + "/" + n;
    std::error_code ec;
    if (!fs::is_regular_file(fs::symlink_status(path, ec))) continue;
    if (!keep.empty() && fs::equivalent(path, keep, ec)) continue;
    fs::remove(path, ec);
    if (ec) return "--overwrite: cannot remove '" + path + "': " + ec.message();
  }
  return "";
}

}  // namespace

int64_t first_folder_holding_a_run(const std::vector<std::string>& output_dirs, Communicator& comm) {
  int64_t first = 0;  // index + 1
  if (comm.is_root())
    for (size_t i = 0; i < output_dirs.size() && first == 0; ++i) {
      std::error_code ec;
      if (fs::exists(output_dirs[i] + "/last.safetensors", ec)) first = static_cast<int64_t>(i) + 1;
    }
  comm.all_reduce_sum(&first, 1, "whether the output folder holds a run");  // rank 0's answer
  return first - 1;
}

void refuse_folder_holding_a_run(const std::string& output_dir) {
  TTQ_FAIL("'" << output_dir << "' already holds a run (" << output_dir
               << "/last.safetensors): continue it with --resume, start it again with --overwrite, or choose "
                  "another output_dir");
}

RunSummary train_experiment(const ExperimentConfig& cfg_in, const TrainOptions& opt) {
  using clock = std::chrono::steady_clock;
  const auto t_start = clock::now();
  ExperimentConfig cfg = cfg_in;
  // Data parallel: one process per rank; only rank 0 prints and writes files.
  std::shared_ptr<Communicator> comm =
      opt.comm ? opt.comm : make_communicator(cfg.distributed, trains_on_gpu(cfg.device));
  comm->set_timeout(cfg.distributed.timeout_s);
  const bool root = comm->is_root();
  Progress progress(!opt.quiet && Progress::stdout_is_terminal(), root);
  std::string device_line;
  const Device device = select_device(cfg.device, &device_line);
  if (!device_line.empty()) progress.line(device_line);
  // A new run would replace an earlier run's checkpoints and metrics in the same folder.
  if (!opt.resume && !opt.overwrite && first_folder_holding_a_run({cfg.output_dir}, *comm) >= 0)
    refuse_folder_holding_a_run(cfg.output_dir);

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
  DataParallel dp(comm, cfg.distributed, device);

  const std::string last_path = cfg.output_dir + "/last.safetensors";
  // Rank 0 writes a checkpoint; the other ranks make the same refusal of a diverged model (their
  // replicas are rank 0's), so all ranks stop together instead of waiting for a rank 0 that stopped.
  bool have_last = opt.resume;  // whether last_path holds this run's checkpoint
  auto write_checkpoint = [&](const std::string& path, const Optimizer& optimizer, const TrainingState& s) {
    if (root)
      save_checkpoint(path, net, &optimizer, s, cfg.resolved, &data.info);
    else
      check_parameters_finite(net, path);
    if (path == last_path) have_last = true;
  };
  // The end of an error stopping the run: where it can be continued from.
  auto checkpoint_note = [&]() -> std::string {
    return have_last ? " (the last checkpoint, " + last_path + ", is unchanged)"
                     : " (no checkpoint of this run was written yet)";
  };
  const std::string config_path = cfg.output_dir + "/config.json";
  TrainingState state;
  std::unique_ptr<Checkpoint> resume_ck;
  if (opt.resume) {
    TTQ_CHECK(fs::exists(last_path), "--resume: no checkpoint '" << last_path << "' to resume from");
    resume_ck = std::make_unique<Checkpoint>(read_checkpoint(last_path));
    TTQ_CHECK(resume_ck->format == "ttq-checkpoint", "--resume: '" << last_path << "' is not a training checkpoint");
    // The checkpoint's configuration read as this version reads it: an option added since it was
    // written takes its default there too, so an older run still resumes. This relies on every
    // new option defaulting to the behaviour from before it existed (docs/ARCHITECTURE.md).
    json saved = parse_stored_experiment(resume_ck->config, last_path, "--resume").resolved;
    saved["model"] = resume_ck->config.value("model", json());  // resolved by the run that wrote it
    const std::string differs = first_difference(saved, cfg.resolved);
    if (!differs.empty()) {
      const json::json_pointer at(differs == "/" ? "" : differs);
      auto value = [&](const json& j) { return j.contains(at) ? j.at(at).dump() : std::string("(absent)"); };
      std::string key = differs.substr(1);
      std::replace(key.begin(), key.end(), '/', '.');
      TTQ_FAIL("--resume: '" << key << "' is " << value(cfg.resolved) << ", but '" << last_path
                             << "' was trained with " << value(saved)
                             << "; resume with the same settings (see " << config_path
                             << "; only paths, names, workers, logging and the distributed transport may change)");
    }
    check_resumable(resume_ck->state, cfg, last_path);
    TTQ_CHECK(resume_ck->state.world == dp.world(),
              "--resume: '" << last_path << "' was written by a run of " << resume_ck->state.world << " rank"
                            << (resume_ck->state.world == 1 ? "" : "s") << ", this run has " << dp.world()
                            << ": resume with the same number of ranks (the global batch and each rank's share of the "
                               "data depend on it)");
    load_model(net, *resume_ck);
    state = resume_ck->state;
    if (!root) {  // rank 0's checkpoint holds the epoch's running sums of all ranks
      state.epoch_loss_sum = 0.0;
      state.epoch_correct = state.epoch_seen = 0;
    }
    const int64_t n_stages = static_cast<int64_t>(cfg.stages.size());
    if (state.stage >= n_stages) {
      progress.line("Resuming " + cfg.name + ": already finished (" + std::to_string(n_stages) + " stage" +
                    (n_stages == 1 ? "" : "s") + ")");
    } else {
      const StageConfig& st = cfg.stages[static_cast<size_t>(state.stage)];
      progress.line("Resuming " + cfg.name + " in stage " + std::to_string(state.stage + 1) + "/" +
                    std::to_string(n_stages) + " (" + st.name + "), epoch " + std::to_string(state.epoch + 1) + "/" +
                    std::to_string(st.epochs) + ", after " + std::to_string(state.batch) + " of its steps");
    }
  }
  if (!opt.resume && !cfg.init_from.empty()) {
    // Read before anything is written to the run folder: a wrong init_from leaves it as it was.
    try {
      load_model(net, read_checkpoint(cfg.init_from));
    } catch (const Error& e) {
      TTQ_FAIL("init_from: " << e.what()
                             << (fs::path(cfg.init_from).is_relative() ? " (a relative init_from is read from the "
                                                                          "folder ttq runs in)"
                                                                        : ""));
    }
    progress.line("Initialised from " + cfg.init_from);
  }
  if (opt.overwrite) {
    // Starting again: the earlier run's files go, so none is taken for this run's. Every rank
    // learns whether rank 0 could remove them.
    const std::string failed = root ? remove_run_files(cfg.output_dir, cfg.init_from) : "";
    int64_t failures = failed.empty() ? 0 : 1;
    if (dp.active()) dp.sum(&failures, 1, "whether the earlier run's files were removed");
    TTQ_CHECK(failures == 0, (root ? failed : "--overwrite: rank 0 could not remove the earlier run's files in '" +
                                                  cfg.output_dir + "'"));
  }
  if (root) {
    fs::create_directories(cfg.output_dir);
    write_file_atomic(config_path, cfg.resolved.dump(2) + "\n");
  }
  net.to(device);
  state.world = dp.world();
  dp.attach(model.net);  // rank 0's weights everywhere, the gradient reducer
  MetricsLog metrics(cfg.output_dir + "/metrics.jsonl", opt.resume ? state.global_step : -1, root);
  progress.line("ttq train " + cfg.name + ": " + model.name + " on " + data.description + " -> " + cfg.output_dir +
                " (" + device_name(device) + ", " + cfg.precision +
                (cfg.memory_format == "contiguous" ? "" : ", " + cfg.memory_format) + ")");
  if (dp.active())
    progress.line("Data parallel: " + dp.describe() + "; global batch = per-rank batch x " +
                  std::to_string(dp.world()) + "; " + dp.reducer()->describe());

  RunSummary summary;
  summary.name = cfg.name;
  summary.output_dir = cfg.output_dir;
  if (opt.resume) {
    // The results of the stages the checkpoint has finished (a stages.json from a later point of
    // the interrupted run, or from an earlier run in this folder, may hold more).
    const std::string stages_path = cfg.output_dir + "/stages.json";
    std::ifstream in(stages_path);
    if (in) {
      try {
        json st = json::parse(in, json_depth_limit("'" + stages_path + "'"), false);
        if (st.is_array())
          for (const auto& s : st) {
            if (static_cast<int64_t>(summary.stages.size()) >= state.stage) break;
            summary.stages.push_back(stage_from_json(s));
          }
      } catch (const json::exception& e) {
        TTQ_FAIL("--resume: '" << stages_path << "' is damaged (" << e.what()
                               << "); it holds the results of the finished stages");
      }
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
                      threshold_mode_name(st.quantization.ternary.mode) +
                      (st.quantization.ternary.per_channel_scales ? ", per-channel scales" : "") + ")");
    }
    auto optimizer = make_optimizer(net.named_parameters(), st.optimizer);
    dp.begin_stage();  // the optimizer's set-up in its first step waits for that step's all-reduces
    // The TTQ work of all ternary layers together, once per step (fused on the GPU).
    TernaryPass ternary_pass(net, cfg.compute_dtype());
    const bool mid_stage = resume_ck && si == state.stage && (state.epoch > 0 || state.batch > 0);
    if (mid_stage) load_optimizer(*optimizer, *resume_ck);
    if (!mid_stage) state.best_error = 1.0;  // the best test error of this stage
    LoaderConfig lc;
    lc.batch_size = st.batch_size;
    lc.workers = cfg.data.workers;
    lc.prefetch = cfg.data.prefetch;
    lc.rank = dp.rank();  // this rank's share of every global batch of batch_size x world
    lc.world = dp.world();
    uint64_t key = cfg.seed * 1000003ULL + static_cast<uint64_t>(si);
    lc.seed = Rng::splitmix64(key);
    Loader loader(data.train, lc);
    const int64_t nb = loader.batches_per_epoch();
    CrossEntropyLoss loss(static_cast<float>(st.label_smoothing));
    StepLog step_log(device, std::clamp<int64_t>(cfg.log_every_steps, 1, 1000));
    StageResult result{st.name, st.quantize, 0.0, 1.0, 1.0, 1.0, 0.0};

    for (int64_t epoch = (si == state.stage ? state.epoch : 0); epoch < st.epochs; ++epoch) {
      const int64_t first = (si == state.stage && epoch == state.epoch) ? state.batch : 0;
      TTQ_CHECK(first < nb, "--resume: '" << last_path << "' resumes at batch " << first << " of an epoch of " << nb
                                          << " batches; the checkpoint is damaged");
      if (first == 0) {
        state.epoch_loss_sum = 0.0;
        state.epoch_correct = state.epoch_seen = 0;
      }
      loader.start_epoch(epoch, first);
      dp.set_context("stage '" + st.name + "', epoch " + std::to_string(epoch + 1), last_path);
      BatchFeed feed(loader, device, cfg.compute_format());
      const DataParallel::AbortOnUnwind abort_on_error(dp);  // destroyed first: before feed, optimizer, ...
      const auto t_epoch = clock::now();
      int64_t images = 0;
      // Steps whose loss and top-1 count are still on the device (read in groups: one
      // synchronisation per group on the GPU; every step on the CPU, where reading is free).
      struct Pending {
        int64_t b, global_step;
        double lr, images_per_s, eta;
      };
      std::vector<Pending> pending;
      auto drain = [&] {
        // nccl: the steps' all-reduces are waited for on the device; a dead peer surfaces here
        // (or at the next step's fence) as an error within the timeout, never as a hung read.
        dp.sync_device("reading the training log");
        const std::vector<LoggedStep> done = step_log.read();
        TTQ_CHECK(done.size() == pending.size(), "internal: " << done.size() << " logged steps for " << pending.size());
        // What is shown and logged per step is the mean over all ranks (one small all-reduce per
        // group of steps, at the same steps on every rank); a non-finite loss on any rank makes
        // every rank stop at the same step. The epoch sums stay per rank (folded at checkpoints).
        std::vector<double> global(done.size() * 2);
        for (size_t i = 0; i < done.size(); ++i) {
          global[2 * i] = done[i].loss * static_cast<double>(done[i].batch);
          global[2 * i + 1] = static_cast<double>(done[i].batch);
        }
        if (dp.active() && !global.empty()) dp.sum(global.data(), static_cast<int64_t>(global.size()), "the steps' losses");
        for (size_t i = 0; i < done.size(); ++i) {
          const Pending& p = pending[i];
          const LoggedStep& r = done[i];
          const double shown_loss = global[2 * i + 1] > 0 ? global[2 * i] / global[2 * i + 1] : r.loss;
          if (!std::isfinite(r.loss) || !std::isfinite(shown_loss))
            TTQ_FAIL("stage '" << st.name << "', epoch " << epoch + 1 << ", step " << p.b + 1 << ": loss: not finite ("
                               << (std::isfinite(r.loss) ? shown_loss : r.loss)
                               << (std::isfinite(r.loss) ? " on another rank" : "")
                               << "); logits contain NaN or Inf, or a label is outside the classes" << checkpoint_note());
          state.epoch_loss_sum += r.loss * r.batch;
          state.epoch_correct += r.correct;
          state.epoch_seen += r.batch;
          if (!opt.quiet)
            progress.step(st.name, epoch, st.epochs, p.b + 1, nb, shown_loss, p.lr, p.images_per_s, p.eta,
                          cfg.log_every_steps);
          if (p.global_step % cfg.log_every_steps == 0)
            metrics.write({{"type", "step"}, {"stage", st.name}, {"epoch", epoch + 1}, {"step", p.global_step},
                           {"loss", shown_loss}, {"lr", p.lr}, {"images_per_s", p.images_per_s}});
        }
        pending.clear();
      };
      DeviceBatch batch;
      for (int64_t b = first; feed.next(batch); ++b) {
        const double lr = lr_at(st.schedule, st.optimizer.lr, epoch + static_cast<double>(b) / nb);
        try {
          train_step(net, loss, *optimizer, batch, lr, ternary_pass.empty() ? nullptr : &ternary_pass, step_log);
        } catch (const Error& e) {
          TTQ_FAIL("stage '" << st.name << "', epoch " << epoch + 1 << ", step " << b + 1 << ": " << e.what()
                             << checkpoint_note());
        }
        ++state.global_step;
        ++steps_this_process;
        images += batch.size;
        const double secs = std::chrono::duration<double>(clock::now() - t_epoch).count();
        const double ips = secs > 0 ? images * dp.world() / secs : 0.0;  // all ranks
        const double eta = images > 0 ? secs / images * (nb - b - 1) * st.batch_size : -1.0;
        pending.push_back({b, state.global_step, lr, ips, eta});
        if (device == Device::CPU || step_log.full()) drain();
        const bool last_batch = b + 1 == nb;
        if (cfg.checkpoint_every_steps > 0 && state.global_step % cfg.checkpoint_every_steps == 0 && !last_batch) {
          drain();  // a non-finite loss stops the run before it reaches a checkpoint
          dp.average_buffers(net);   // every rank holds the model rank 0 saves
          fold_epoch_sums(dp, state);  // rank 0's checkpoint carries the epoch's sums of all ranks
          TrainingState s = state;
          s.stage = si;
          s.epoch = epoch;
          s.batch = b + 1;
          s.optimizer_steps = optimizer->steps();
          s.elapsed_seconds = elapsed_before + std::chrono::duration<double>(clock::now() - t_start).count();
          write_checkpoint(last_path, *optimizer, s);
        }
        if (opt.stop_after_steps > 0 && steps_this_process >= opt.stop_after_steps) {
          drain();
          summary.wall_seconds = std::chrono::duration<double>(clock::now() - t_start).count();
          return summary;  // simulated interruption: nothing written past the last checkpoint
        }
      }
      drain();
      // End of epoch: evaluate, log, checkpoint.
      const bool last_epoch = epoch + 1 == st.epochs;
      double train_loss_sum = state.epoch_loss_sum;  // over all ranks
      int64_t train_counts[2] = {state.epoch_correct, state.epoch_seen};
      dp.sum(&train_loss_sum, 1, "the epoch's training loss");
      dp.sum(train_counts, 2, "the epoch's training counts");
      json rec = {{"type", "epoch"}, {"stage", st.name}, {"epoch", epoch + 1}, {"step", state.global_step},
                  {"train_loss", train_loss_sum / std::max<int64_t>(train_counts[1], 1)},
                  {"train_top1_error", 1.0 - static_cast<double>(train_counts[0]) / std::max<int64_t>(train_counts[1], 1)},
                  {"lr", lr_at(st.schedule, st.optimizer.lr, epoch + 1.0)}};
      if ((epoch + 1) % cfg.eval_every_epochs == 0 || last_epoch) {
        dp.average_buffers(net);  // per-rank BatchNorm statistics: every rank evaluates the same model
        const EvalResult ev =
            dp.guarded([&] { return evaluate(net, data.test, cfg.eval_batch_size, cfg.data.workers, &dp.comm(),
                                              cfg.compute_format()); });
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
      // Unreadable training images replaced by readable ones so far (this process, this rank).
      if (const int64_t skipped = data.train->skipped_samples(); skipped > 0) {
        rec["train_images_replaced"] = skipped;
        progress.line(std::to_string(skipped) + " training samples so far were unreadable images replaced by the next "
                      "readable one (named on stderr)");
      }
      rec["layers"] = layer_stats(net, &result.sparsity);
      metrics.write(rec);
      if ((epoch + 1) % cfg.checkpoint_every_epochs == 0 || last_epoch) {
        dp.average_buffers(net);
        TrainingState s = state;
        s.stage = last_epoch ? si + 1 : si;
        s.epoch = last_epoch ? 0 : epoch + 1;
        s.batch = 0;
        s.optimizer_steps = optimizer->steps();
        s.elapsed_seconds = elapsed_before + std::chrono::duration<double>(clock::now() - t_start).count();
        if (last_epoch) {
          // The stage's own checkpoint and results first: last.safetensors, written last, is what
          // a resume trusts, so an interruption in between redoes this stage end, not skips it.
          // (epochs >= 1 and a resume starts before the last epoch, so every stage ends here.)
          write_checkpoint(cfg.output_dir + "/" + st.name + ".safetensors", *optimizer, s);
          result.best_test_top1_error = state.best_error;
          record_stage(summary, result, cfg.output_dir, root);
        }
        write_checkpoint(last_path, *optimizer, s);
      }
    }
    state.stage = si + 1;
    state.epoch = state.batch = 0;
  }

  const ModelSize size = model_size(net);
  summary.fp32_bytes = size.fp32_bytes;
  summary.deployed_bytes = size.deployed_bytes;
  summary.best_test_top1_error = summary.stages.empty() ? 1.0 : summary.stages.back().best_test_top1_error;
  summary.wall_seconds = elapsed_before + std::chrono::duration<double>(clock::now() - t_start).count();
  for (auto* l : quantizable_layers(net)) {
    if (!l->is_ternary()) {
      summary.layer_table.push_back({l->path(), "fp32", "", "", ""});
      continue;
    }
    const TernaryStats& s = l->quantizer()->stats();
    const bool mean = l->quantizer()->config().per_channel_scales;
    summary.per_channel_means |= mean;
    const char* scale = mean ? "%.4f*" : "%.4f";
    summary.layer_table.push_back({l->path(), fmt("%.4f", s.threshold), fmt(scale, s.wp), fmt(scale, s.wn),
                                   fmt("%.1f%%", 100 * s.sparsity())});
  }
  json sj = summary.to_json();
  sj["layers"] = layer_stats(net, nullptr);
  if (root) write_file_atomic(cfg.output_dir + "/summary.json", sj.dump(2) + "\n");
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
  if (s.per_channel_means) os << "* per-channel scales: the mean over the layer's output channels\n";
  os << "\n";
  std::snprintf(line, sizeof line, "%-12s %-8s %12s %12s %10s\n", "stage", "weights", "top-1 error", "top-5 error", "sparsity");
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

ExportReport export_checkpoint(const std::string& ck_path, const std::string& out) {
  const Checkpoint ck = read_checkpoint(ck_path);
  TTQ_CHECK(ck.format != "state-dict", "export: '" << ck_path
                                                   << "' is a plain state dict without an experiment config; start an "
                                                      "experiment from it with \"init_from\"");
  TTQ_CHECK(ck.format == "ttq-checkpoint", "export: '" << ck_path << "' is already an export");
  // An export written over a training checkpoint would lose the run's resumable state.
  std::error_code ec;
  if (fs::exists(out, ec)) {
    TTQ_CHECK(!fs::equivalent(out, ck_path, ec), "export: --out '" << out << "' is the checkpoint being exported");
    TTQ_CHECK(safetensors_format(out) != "ttq-checkpoint",
              "export: --out '" << out << "' is a training checkpoint; write the export elsewhere");
  }
  const ExperimentConfig cfg = parse_stored_experiment(ck.config, ck.file.path(), "export");
  // The model's input as stored with the checkpoint; older checkpoints take it from the data set.
  const TrainingSetInfo info = ck.data ? *ck.data : load_data_sets(cfg.data, cfg.seed).info;
  Model model = build_model(cfg.model, info.input, cfg.seed);
  load_model(*model.net, ck);
  return export_ternary(out, *model.net, ck.config, &info);
}

}  // namespace ttq
