// A small two-stage experiment (full precision, then TTQ) on synthetic data, and a checkpoint's
// tensors as bytes: shared by the experiment tests on the CPU and on the GPU.
#pragma once

#include <fstream>
#include <map>
#include <vector>
#include <string>

#include <gtest/gtest.h>

#include "engine/config/json_reader.h"
#include "engine/io/safetensors.h"
#include "engine/train/checkpoint.h"
#include "engine/train/trainer.h"

namespace ttq::testing {

inline json two_stage_config(const std::string& out) {
  json j = json::parse(R"({
    "name": "quick", "seed": 3,
    "data": {"dataset": "synthetic", "synthetic": {"train": 2048, "test": 256, "size": 8, "classes": 4}, "workers": 2},
    "model": {"name": "small_convnet"},
    "stages": [
      {"name": "fp", "epochs": 2, "batch_size": 32, "optimizer": {"lr": 0.05},
       "schedule": {"type": "cosine", "total_epochs": 2}},
      {"name": "ttq", "epochs": 2, "batch_size": 32, "optimizer": {"lr": 0.02, "weight_decay": 1e-4},
       "quantization": {"t": 0.05}}
    ],
    "log": {"every_steps": 5}
  })");
  j["output_dir"] = out;
  return j;
}

inline TrainOptions quiet() {
  TrainOptions o;
  o.quiet = true;
  return o;
}

// A new run in a folder that holds one (--overwrite).
inline TrainOptions overwriting() {
  TrainOptions o = quiet();
  o.overwrite = true;
  return o;
}

inline std::map<std::string, std::string> checkpoint_bytes(const std::string& path) {
  auto f = SafeTensorsFile::read(path);
  std::map<std::string, std::string> out;
  for (const auto& n : f.names()) {
    Tensor t = f.tensor(n);
    out[n] = std::string(static_cast<const char*>(t.raw()), t.nbytes());
  }
  return out;
}

inline std::vector<std::string> metrics_records(const std::string& dir);

// Resume exactness: the config j (two_stage_config: 64 steps per epoch, 2 epochs per stage)
// trained once into full_dir uninterrupted, then into cut_dir interrupted twice and each time
// resumed: mid-epoch in the first stage (step 12, last checkpoint at step 7), then mid-epoch in the
// TTQ stage (step 7 + 131 = 138, last checkpoint at step 133: the resume loads a ternary model),
// then to the end. The two last checkpoints must be equal byte for byte. Returns the summary.
inline RunSummary expect_resume_ends_where_the_uninterrupted_run_ends(json j, const std::string& full_dir,
                                                                       const std::string& cut_dir) {
  j["checkpoint"] = {{"every_steps", 7}};
  j["output_dir"] = full_dir;
  train_experiment(parse_experiment(j), quiet());
  j["output_dir"] = cut_dir;
  TrainOptions stop = quiet();
  stop.stop_after_steps = 12;
  train_experiment(parse_experiment(j), stop);
  TrainOptions resume = quiet();
  resume.resume = true;
  resume.stop_after_steps = 131;
  train_experiment(parse_experiment(j), resume);
  const TrainingState cut_at = read_checkpoint(cut_dir + "/last.safetensors").state;
  EXPECT_EQ(cut_at.stage, 1) << "the second interruption should fall in the TTQ stage";
  EXPECT_GT(cut_at.batch, 0) << "the second interruption should fall mid-epoch";
  resume.stop_after_steps = 0;
  const RunSummary s = train_experiment(parse_experiment(j), resume);
  const auto a = checkpoint_bytes(full_dir + "/last.safetensors"), b = checkpoint_bytes(cut_dir + "/last.safetensors");
  EXPECT_EQ(a.size(), b.size());
  for (const auto& [name, bytes] : a) EXPECT_TRUE(b.count(name) && b.at(name) == bytes) << name << " differs after resume";
  // The records too: those written past the last checkpoint before an interruption are not
  // repeated, none is missing, and each holds what the uninterrupted run wrote (but the timing).
  EXPECT_EQ(metrics_records(cut_dir), metrics_records(full_dir));
  return s;
}

// metrics.jsonl's records without their timing (images/s), one JSON text per record.
inline std::vector<std::string> metrics_records(const std::string& dir) {
  std::ifstream in(dir + "/metrics.jsonl");
  std::vector<std::string> out;
  std::string line;
  while (std::getline(in, line)) {
    json r = json::parse(line);
    r.erase("images_per_s");
    out.push_back(r.dump());
  }
  return out;
}

}  // namespace ttq::testing
