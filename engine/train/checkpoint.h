// Checkpoints and the deployable export, both safetensors files with PyTorch-style names.
//
// Checkpoint ("format": "ttq-checkpoint"): every parameter and buffer of the model by name
// (latent weights, "<layer>.wp" / "<layer>.wn"), the optimizer state as "optim.<param>.<state>",
// and metadata: the resolved experiment config, the training position, the ternary layers with
// their quantizer settings.
//
// Export ("format": "ttq-export"): each ternary layer as "<layer>.weight_codes" (2-bit packed,
// engine/quant/packing.h) plus "<layer>.wp" / "<layer>.wn"; everything else as stored in fp32.
//
// Plain state dict (format "state-dict" here): a safetensors file without engine metadata (no
// "format", or PyTorch's "format": "pt"), e.g. torchvision's resnet18 weights converted by
// scripts/torchvision_to_safetensors.py. It can start training (init_from) in full precision:
// every parameter and BatchNorm buffer of the model must be present in F32 with its shape;
// "<bn>.num_batches_tracked" of the model's BatchNorm layers is ignored; any other tensor is an
// error naming it.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "engine/config/json_reader.h"
#include "engine/io/safetensors.h"
#include "engine/nn/module.h"
#include "engine/optim/optimizer.h"
#include "engine/train/data_sets.h"

namespace ttq {

// Where training stands; a checkpoint taken at the end of an epoch has batch == 0 and the next
// epoch in `epoch`.
struct TrainingState {
  int64_t stage = 0, epoch = 0, batch = 0;
  int64_t optimizer_steps = 0;
  int64_t global_step = 0;
  double best_error = 1.0;
  // Running sums of the current epoch's training loss / correct / seen (for resuming mid-epoch).
  double epoch_loss_sum = 0.0;
  int64_t epoch_correct = 0, epoch_seen = 0;
  double elapsed_seconds = 0.0;
  // Data-parallel ranks of the run (the global batch and each rank's shard depend on it; a run
  // resumes only with the same number). Checkpoints from before this field read as 1.
  int64_t world = 1;

  json to_json() const;
  static TrainingState from_json(const json& j);
};

// Writes the model, the optimizer state, the training state and the config to path (atomically:
// the previous file stays until the new one is complete). Refuses, naming the parameter, a model
// holding NaN or Inf (see check_parameters_finite).
// data (when given: the training set's input, normalisation and classes) is stored too, so export
// builds the model, and eval reads the test set, without the training set.
void save_checkpoint(const std::string& path, Module& net, const Optimizer* opt, const TrainingState& state,
                     const json& config, const TrainingSetInfo* data = nullptr);
// The error save_checkpoint(path, net, ...) would give for a diverged model, without writing.
// Data parallel: the ranks other than 0 call it where rank 0 saves, so all ranks stop together
// (their replicas are the same) rather than the others waiting for a rank 0 that stopped alone.
void check_parameters_finite(Module& net, const std::string& path);

struct Checkpoint {
  SafeTensorsFile file;
  std::string format;  // "ttq-checkpoint", "ttq-export" or "state-dict"
  json config;         // the resolved experiment config it was trained with (null for a state dict)
  TrainingState state;
  json ternary;        // {"layer path": {"mode": ..., "t": ..., ...}}
  std::optional<TrainingSetInfo> data;  // files written before it was stored lack it
};

// Reads and checks a checkpoint, an export or a plain state dict.
Checkpoint read_checkpoint(const std::string& path);

// Makes the checkpoint's ternary layers ternary in net (with their stored settings) and loads
// every parameter and buffer. A tensor missing, extra or of another shape is an error naming it
// and the file. For an export, ternary layers get their quantized weights w_t as plain weights.
// A state dict has no ternary layers; its BatchNorm num_batches_tracked counters are ignored.
void load_model(Module& net, const Checkpoint& ck);
void load_optimizer(Optimizer& opt, const Checkpoint& ck);

struct ExportReport {
  int64_t fp32_bytes = 0, file_bytes = 0;
  int64_t tensor_bytes = 0;  // the deployed tensors (model_size's deployed_bytes); the rest is the header
  int ternary_layers = 0, full_precision_layers = 0;
};
ExportReport export_ternary(const std::string& path, Module& net, const json& config,
                            const TrainingSetInfo* data = nullptr);

}  // namespace ttq
