// Progress on the console: a live bar with rate and ETA when stdout is a terminal, plain periodic
// lines otherwise (logs, CI).
#pragma once

#include <cstdint>
#include <string>

namespace ttq {

class Progress {
 public:
  // enabled = false prints nothing (the ranks other than 0 of a data-parallel run).
  explicit Progress(bool terminal, bool enabled = true);
  static bool stdout_is_terminal();

  // Called every step; prints (bar) or, every `every` steps, a line.
  void step(const std::string& stage, int64_t epoch, int64_t epochs, int64_t batch, int64_t batches, double loss,
            double lr, double images_per_s, double eta_seconds, int every);
  // A complete line (ends any bar in progress).
  void line(const std::string& text);

 private:
  bool terminal_;
  bool enabled_ = true;
  bool bar_open_ = false;
};

std::string format_duration(double seconds);

}  // namespace ttq
