#include "engine/train/progress.h"

#include <unistd.h>

#include <cstdio>

namespace ttq {

Progress::Progress(bool terminal, bool enabled) : terminal_(terminal), enabled_(enabled) {}

bool Progress::stdout_is_terminal() { return ::isatty(STDOUT_FILENO) == 1; }

std::string format_duration(double seconds) {
  if (!(seconds >= 0.0) || seconds > 1e8) return "--:--";
  const long s = static_cast<long>(seconds + 0.5);
  char buf[32];
  if (s >= 3600)
    std::snprintf(buf, sizeof buf, "%ld:%02ld:%02ld", s / 3600, (s / 60) % 60, s % 60);
  else
    std::snprintf(buf, sizeof buf, "%02ld:%02ld", s / 60, s % 60);
  return buf;
}

void Progress::step(const std::string& stage, int64_t epoch, int64_t epochs, int64_t batch, int64_t batches,
                    double loss, double lr, double images_per_s, double eta_seconds, int every) {
  if (!enabled_) return;
  if (terminal_) {
    constexpr int kWidth = 24;
    const int filled = static_cast<int>(kWidth * batch / (batches ? batches : 1));
    std::string bar(static_cast<size_t>(filled), '#');
    bar.resize(kWidth, '.');
    std::printf("\r%s %lld/%lld [%s] %lld/%lld loss %.4f lr %.3g %.0f img/s ETA %s   ", stage.c_str(),
                static_cast<long long>(epoch + 1), static_cast<long long>(epochs), bar.c_str(),
                static_cast<long long>(batch), static_cast<long long>(batches), loss, lr, images_per_s,
                format_duration(eta_seconds).c_str());
    std::fflush(stdout);
    bar_open_ = true;
  } else if (batch % every == 0 || batch == batches) {
    std::printf("%s epoch %lld/%lld step %lld/%lld loss %.4f lr %.3g %.0f img/s\n", stage.c_str(),
                static_cast<long long>(epoch + 1), static_cast<long long>(epochs), static_cast<long long>(batch),
                static_cast<long long>(batches), loss, lr, images_per_s);
    std::fflush(stdout);
  }
}

void Progress::line(const std::string& text) {
  if (!enabled_) return;
  if (bar_open_) std::printf("\n");
  bar_open_ = false;
  std::printf("%s\n", text.c_str());
  std::fflush(stdout);
}

}  // namespace ttq
