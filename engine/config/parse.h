// Reading the engine's option structs from JSON (strict: unknown keys and wrong types are errors
// naming their JSON path).
#pragma once

#include "engine/config/json_reader.h"
#include "engine/optim/optimizer.h"
#include "engine/optim/schedule.h"
#include "engine/quant/quantize_model.h"

namespace ttq {

// {"mode": "max"|"sparsity"|"twn", "t": 0.05, "r": 0.3, "normalize_init": true,
//  "full_precision_layers": [...], "init_scales_from_weights": false, "clamp_scales": false,
//  "per_channel_scales": false}
// Absent full_precision_layers takes model_default; absent normalize_init is false for twn.
QuantizeOptions parse_quantize_options(JsonReader& r, const std::vector<std::string>& model_default);

// {"type": "sgd"|"adam", "lr", "weight_decay", "momentum", "nesterov", "beta1", "beta2", "eps",
//  "groups": {"weight"|"bias"|"norm"|"scale": {"lr_mult": 1.0, "weight_decay": true}}}
OptimizerConfig parse_optimizer(JsonReader& r);

// {"type": "constant"|"multistep"|"cosine", "milestones", "gamma", "values", "final_lr",
//  "total_epochs", "warmup_epochs", "warmup_start_factor"}
ScheduleConfig parse_schedule(JsonReader& r);

}  // namespace ttq
