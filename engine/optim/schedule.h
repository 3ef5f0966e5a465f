// Learning-rate schedules as a function of the (fractional) epoch:
//   constant; multistep (x gamma at each milestone, or explicit per-phase values); cosine to a
//   final value over total_epochs; each with an optional linear warm-up from
//   warmup_start_factor * lr to the schedule's value over warmup_epochs.
#pragma once

#include <string>
#include <vector>

namespace ttq {

struct ScheduleConfig {
  std::string type = "constant";  // constant | multistep | cosine
  std::vector<double> milestones;  // multistep: epochs, increasing
  double gamma = 0.1;              // multistep: factor per milestone
  std::vector<double> values;      // multistep, optional: lr for each phase (milestones + 1 values)
  double final_lr = 0.0;           // cosine: lr reached at total_epochs
  double total_epochs = 0.0;       // cosine: length of the decay
  double warmup_epochs = 0.0;
  double warmup_start_factor = 0.0;

  void validate() const;
};

// Learning rate at fractional epoch `epoch` (step / steps_per_epoch) for base learning rate lr.
double lr_at(const ScheduleConfig& s, double base_lr, double epoch);

}  // namespace ttq
