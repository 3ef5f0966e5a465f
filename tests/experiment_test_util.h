// A small two-stage experiment (full precision, then TTQ) on synthetic data, and a checkpoint's
// tensors as bytes: shared by the experiment tests on the CPU and on the GPU.
#pragma once

#include <map>
#include <string>

#include "engine/config/json_reader.h"
#include "engine/io/safetensors.h"

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

inline std::map<std::string, std::string> checkpoint_bytes(const std::string& path) {
  auto f = SafeTensorsFile::read(path);
  std::map<std::string, std::string> out;
  for (const auto& n : f.names()) {
    Tensor t = f.tensor(n);
    out[n] = std::string(static_cast<const char*>(t.raw()), t.nbytes());
  }
  return out;
}

}  // namespace ttq::testing
