#include "engine/optim/schedule.h"

#include <cmath>

#include "engine/core/error.h"

namespace ttq {

void ScheduleConfig::validate() const {
  TTQ_CHECK(type == "constant" || type == "multistep" || type == "cosine",
            "unknown schedule type '" << type << "' (expected constant, multistep or cosine)");
  for (size_t i = 0; i < milestones.size(); ++i) {
    TTQ_CHECK(milestones[i] >= 0.0, "schedule milestones must be >= 0, got " << milestones[i]);
    TTQ_CHECK(i == 0 || milestones[i] > milestones[i - 1], "schedule milestones must increase");
  }
  TTQ_CHECK(values.empty() || values.size() == milestones.size() + 1,
            "schedule values needs milestones + 1 = " << milestones.size() + 1 << " entries, got " << values.size());
  TTQ_CHECK(type != "cosine" || total_epochs > 0.0, "cosine schedule needs total_epochs > 0");
  TTQ_CHECK(gamma > 0.0, "schedule gamma must be positive, got " << gamma);
  TTQ_CHECK(warmup_epochs >= 0.0, "warmup_epochs must be >= 0");
  TTQ_CHECK(warmup_start_factor >= 0.0 && warmup_start_factor <= 1.0, "warmup_start_factor must be in [0, 1]");
}

double lr_at(const ScheduleConfig& s, double base_lr, double epoch) {
  double lr = base_lr;
  if (s.type == "multistep") {
    size_t passed = 0;
    while (passed < s.milestones.size() && epoch >= s.milestones[passed]) ++passed;
    lr = s.values.empty() ? base_lr * std::pow(s.gamma, static_cast<double>(passed)) : s.values[passed];
  } else if (s.type == "cosine") {
    const double p = std::min(std::max(epoch / s.total_epochs, 0.0), 1.0);
    lr = s.final_lr + 0.5 * (base_lr - s.final_lr) * (1.0 + std::cos(3.141592653589793 * p));
  }
  if (s.warmup_epochs > 0.0 && epoch < s.warmup_epochs) {
    const double f = s.warmup_start_factor + (1.0 - s.warmup_start_factor) * (epoch / s.warmup_epochs);
    lr *= f;
  }
  return lr;
}

}  // namespace ttq
