#include "engine/progress.h"

#include <unistd.h>

#include <algorithm>
#include <cstdio>

namespace minfer {

Progress::Progress(std::string label, int64_t total, bool enabled)
    : label_(std::move(label)),
      total_(std::max<int64_t>(total, 1)),
      enabled_(enabled),
      tty_(isatty(2)),
      start_(std::chrono::steady_clock::now()),
      last_draw_(start_) {}

Progress::~Progress() {
  if (!finished_ && enabled_ && tty_) std::fputc('\n', stderr);
}

namespace {
std::string fmt_secs(double s) {
  char b[32];
  if (s < 60)
    std::snprintf(b, sizeof b, "%.0fs", s);
  else
    std::snprintf(b, sizeof b, "%dm%02ds", int(s) / 60, int(s) % 60);
  return b;
}
}  // namespace

void Progress::update(int64_t done, const std::string& note) {
  if (!enabled_) return;
  auto now = std::chrono::steady_clock::now();
  const double el = std::chrono::duration<double>(now - start_).count();
  const double frac = std::clamp(double(done) / double(total_), 0.0, 1.0);
  const double eta = frac > 0 ? el * (1 - frac) / frac : 0;
  if (tty_) {
    if (done < total_ && std::chrono::duration<double>(now - last_draw_).count() < 0.1) return;
    last_draw_ = now;
    const int width = 30, fill = int(frac * width);
    std::fprintf(stderr, "\r%s [%s%s] %3.0f%% %lld/%lld %s ETA %s %s\033[K", label_.c_str(),
                 std::string(size_t(fill), '#').c_str(),
                 std::string(size_t(width - fill), '.').c_str(), frac * 100, (long long)done,
                 (long long)total_, fmt_secs(el).c_str(), fmt_secs(eta).c_str(), note.c_str());
  } else {
    const int decile = int(frac * 10);
    if (decile == last_decile_) return;
    last_decile_ = decile;
    std::fprintf(stderr, "%s: %3.0f%% %lld/%lld elapsed %s ETA %s %s\n", label_.c_str(), frac * 100,
                 (long long)done, (long long)total_, fmt_secs(el).c_str(), fmt_secs(eta).c_str(),
                 note.c_str());
  }
  std::fflush(stderr);
}

void Progress::finish() {
  if (!enabled_ || finished_) return;
  update(total_);
  finished_ = true;
  if (tty_) std::fputc('\n', stderr);
}

}  // namespace minfer
