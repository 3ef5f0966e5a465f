// Runs an experiment: its stages in order (full precision, then TTQ from those weights, ...),
// evaluation, metrics, checkpoints and the summary, in the experiment's output folder:
//   config.json       the resolved configuration
//   metrics.jsonl     one JSON object per line: "step" records every log.every_steps steps,
//                     "epoch" records with train/test loss, top-1/top-5 error, per-layer D/Wp/Wn/sparsity
//   last.safetensors  the latest checkpoint (atomic), <stage>.safetensors at each stage's end
//   stages.json       each finished stage's final and best test error and sparsity
//   summary.json      final and best test error (of the last stage), sparsity, model sizes, wall time
// Data parallel (engine/dist/): every rank trains on its share of each global batch (batch_size
// per rank x ranks); only rank 0 prints and writes these files. Epoch records and evaluation are
// over all ranks; a step record's loss is rank 0's, its images/s counts all ranks.
#pragma once

#include <string>
#include <vector>

#include "engine/data/loader.h"
#include "engine/dist/communicator.h"
#include "engine/nn/module.h"
#include "engine/train/checkpoint.h"
#include "engine/train/experiment.h"

namespace ttq {

struct StageResult {
  std::string name;
  bool ternary = false;
  double test_loss = 0.0, test_top1_error = 1.0, test_top5_error = 1.0;  // the last evaluation's
  double best_test_top1_error = 1.0;  // the best of the stage's evaluations
  double sparsity = 0.0;              // zeros over all ternary weights
};

struct RunSummary {
  std::string name, output_dir;
  std::vector<StageResult> stages;
  double best_test_top1_error = 1.0;  // the last stage's best evaluation
  int64_t fp32_bytes = 0, deployed_bytes = 0;
  double wall_seconds = 0.0;
  std::vector<std::vector<std::string>> layer_table;  // layer, D, Wp, Wn, sparsity (last stage)
  bool per_channel_means = false;  // some rows' Wp, Wn are means over output channels (marked *)
  json to_json() const;
};

struct TrainOptions {
  bool resume = false;     // continue from output_dir/last.safetensors
  bool overwrite = false;  // start afresh in an output_dir that holds a run (else an error)
  bool quiet = false;    // no per-step console output
  // Stop (as if killed) after this many optimizer steps in this process; 0: run to the end.
  // Used to test that a resumed run ends exactly where an uninterrupted one does.
  int64_t stop_after_steps = 0;
  // Data parallel: the communicator of this process (shared by the runs of a sweep); null makes
  // one from the experiment's "distributed" settings and the launch environment.
  std::shared_ptr<Communicator> comm;
};

// The device a "device" setting names: "cuda" needs a usable GPU (an error otherwise), "auto" takes
// one when present, "cpu" is the CPU. For "auto", *said (when given) gets the line that says which.
// A build without cuDNN or cuBLAS trains on the CPU ("cuda" is then an error).
Device select_device(const std::string& device, std::string* said = nullptr);
// Whether select_device(device) gives the GPU, without its errors (for choosing the communicator's
// backend before the device is settled).
bool trains_on_gpu(const std::string& device);

struct EvalResult {
  double loss = 0.0, top1_error = 1.0, top5_error = 1.0;
  int64_t samples = 0;
};
// Evaluation-mode pass over a whole test source (the model's mode is restored afterwards). With a
// communicator of several ranks each rank evaluates its share of every global batch of
// batch x world samples (none dropped) and the results are summed over the ranks: every test
// sample counts once. compute: the dtype the model computes in (its input is converted to it).
EvalResult evaluate(Module& net, const std::shared_ptr<const SampleSource>& test, int64_t batch, int workers,
                    Communicator* comm = nullptr, ComputeFormat compute = {});

// Trains; throws ttq::Error on bad input, a non-finite loss (naming stage, epoch and step) or
// I/O failure. The last complete checkpoint is never overwritten by a partial one.
RunSummary train_experiment(const ExperimentConfig& cfg, const TrainOptions& opt);

// The first of output_dirs that holds a run (its last.safetensors), as rank 0 sees it: every rank
// of comm gets rank 0's answer (only rank 0 writes run folders, which need not be shared). -1 when
// none. A collective: every rank calls it at the same point.
int64_t first_folder_holding_a_run(const std::vector<std::string>& output_dirs, Communicator& comm);
// The refusal of a new run (neither resume nor overwrite) in a folder that holds one.
[[noreturn]] void refuse_folder_holding_a_run(const std::string& output_dir);

// ttq export: the deployable model of the training checkpoint ck_path, written to out (never over
// a training checkpoint). The model is built from the input stored with the checkpoint, so the
// data set is not needed (checkpoints from before that was stored read it).
ExportReport export_checkpoint(const std::string& ck_path, const std::string& out);

// Formats a run's final table (stages, per-layer ternary state, model size).
std::string format_summary_table(const RunSummary& s);

}  // namespace ttq
