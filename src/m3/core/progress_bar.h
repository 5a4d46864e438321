// A one-line progress bar on stderr for long jobs, drawn only when stderr is a
// terminal (logs stay clean when it is redirected); redrawn at most 10 times a second.
#pragma once

#include <chrono>
#include <cstddef>
#include <string>

namespace m3 {

class ProgressBar {
 public:
  // total 0: unknown (a stream); the bar then shows the count and the rate.
  ProgressBar(size_t total, std::string unit, bool enabled = true);
  ~ProgressBar();
  void update(size_t done);
  void finish();

 private:
  void draw(bool final);

  size_t total_;
  size_t done_ = 0;
  std::string unit_;
  bool enabled_;
  bool finished_ = false;
  std::chrono::steady_clock::time_point start_, last_draw_;
};

}  // namespace m3
