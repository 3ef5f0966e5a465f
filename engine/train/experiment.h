// An experiment: one JSON file describing data, model, training stages (full precision, then
// TTQ, ...), evaluation, checkpoints and output. Parsing is strict (unknown keys, wrong types and
// impossible values are errors naming their JSON path) and records the fully resolved config.
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "engine/config/json_reader.h"
#include "engine/dist/communicator.h"
#include "engine/data/transforms.h"
#include "engine/optim/optimizer.h"
#include "engine/optim/schedule.h"
#include "engine/quant/quantize_model.h"

namespace ttq {

struct DataConfig {
  std::string dataset = "fashion_mnist";  // fashion_mnist | mnist | cifar10 | cifar100 | imagenet | synthetic
  std::string root;                       // folder of the files (default per data set)
  std::string normalize = "channel";      // channel | pixel_mean | none (imagenet: channel = ImageNet statistics)
  Augment augment;                        // training augmentation (not imagenet)
  int64_t train_subset = 0;               // use only the first N training samples (0: all; imagenet:
  int64_t test_subset = 0;                // N evenly spaced ones, so every class appears)
  int workers = 2, prefetch = 4;
  // synthetic only
  int64_t synthetic_train = 4096, synthetic_test = 1024, synthetic_size = 16, synthetic_classes = 10;
  double synthetic_noise = 1.0;
  // imagenet only (root/train/<class>/*.JPEG, root/val/<class>/*.JPEG or root/val + val_list;
  // engine/data/image_folder.h)
  int image_size = 224;                   // square network input
  int resize = 256;                       // evaluation: short side before the centre crop
  std::string train_augment = "random_resized_crop";  // random_resized_crop | alexnet
  std::string val_list;                   // list file labelling a flat root/val folder ("" : class folders)
  std::string on_corrupt = "skip";        // skip (replace by the next readable image) | error
  bool scaled_decode = true;              // decode JPEGs at a reduced DCT scale when the crop allows
};

struct StageConfig {
  std::string name;
  int epochs = 1;
  int64_t batch_size = 128;
  OptimizerConfig optimizer;
  ScheduleConfig schedule;
  bool quantize = false;        // a "quantization" object makes the stage TTQ
  QuantizeOptions quantization;
  bool fp_layers_from_model = false;  // full_precision_layers not given: use the model's default
  double label_smoothing = 0.0;
};

struct ExperimentConfig {
  std::string name = "experiment";
  std::string output_dir;
  uint64_t seed = 0;
  std::string device = "cpu";  // cpu | cuda | auto
  // fp32 | bf16: the dtype of activations, of the weights the layers compute with and of their
  // gradients (master weights, TTQ math, BatchNorm statistics and the loss stay f32).
  std::string precision = "fp32";
  // contiguous | channels_last: the memory layout of image activations (NCHW or NHWC storage;
  // shapes stay [N, C, H, W], weights stay OIHW). channels_last is what cuDNN's tensor-core
  // convolutions take without transposing; on the CPU it runs the contiguous kernels on permuted
  // copies (same results, slower).
  std::string memory_format = "contiguous";
  DType compute_dtype() const { return precision == "bf16" ? DType::BF16 : DType::F32; }
  ComputeFormat compute_format() const {
    return {compute_dtype(), memory_format == "channels_last" ? Layout::ChannelsLast : Layout::Contiguous};
  }
  DataConfig data;
  json model;                  // given to build_model
  std::vector<StageConfig> stages;
  int eval_every_epochs = 1;
  int64_t eval_batch_size = 500;
  int checkpoint_every_epochs = 1;
  int64_t checkpoint_every_steps = 0;  // 0: only at epoch ends
  int log_every_steps = 50;
  std::string init_from;       // checkpoint whose weights start the first stage
  std::string description;     // free text: what the run reproduces, the expected result
  DistConfig distributed;      // data-parallel training (stages' batch_size is per rank)
  json resolved;               // the complete configuration, defaults filled in
};

// Parses an experiment (without a "sweep" key: expand sweeps first).
ExperimentConfig parse_experiment(const json& j);
// Parses the configuration a checkpoint stored (as this version reads it: options added since take
// their defaults); an error says that `who` ("--resume", "eval") read it from `checkpoint_path`.
ExperimentConfig parse_stored_experiment(const json& j, const std::string& checkpoint_path, const std::string& who);

// Applies "--set key.path=value" overrides: value is parsed as JSON when it can be, else taken
// as a string. List elements are addressed by index ("stages.1.epochs=3").
json apply_override(json j, const std::string& assignment);

// Whether a name (a stage's, a sweep run's) can name a file or folder in a run folder: not empty,
// "." or "..", and holding no '/' or NUL.
bool usable_file_name(const std::string& name);

// One configuration per point of the sweep grid ({"sweep": {"key.path": [values...], ...}}), each
// with a run name like "t=0.05" and output_dir/<run name>; a config without a sweep gives itself.
std::vector<std::pair<std::string, json>> expand_sweep(const json& j);

// Reads a JSON file, naming it on failure.
json read_json_file(const std::string& path);

}  // namespace ttq
