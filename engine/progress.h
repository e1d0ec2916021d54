// A progress bar with ETA on stderr for long work (perplexity, compression, training).
// Redraws at most ~10 times a second on a terminal; when stderr is not a terminal it prints a
// plain line every 10%.
#pragma once
#include <chrono>
#include <cstdint>
#include <string>

namespace minfer {

class Progress {
 public:
  Progress(std::string label, int64_t total, bool enabled = true);
  ~Progress();
  void update(int64_t done, const std::string& note = "");
  void finish();

 private:
  std::string label_;
  int64_t total_;
  bool enabled_, tty_, finished_ = false;
  int last_decile_ = -1;
  std::chrono::steady_clock::time_point start_, last_draw_;
};

}  // namespace minfer
