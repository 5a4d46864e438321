#include "m3/core/progress_bar.h"

#include <unistd.h>

#include <cstdio>

#include <fmt/format.h>

namespace m3 {

ProgressBar::ProgressBar(size_t total, std::string unit, bool enabled)
    : total_(total),
      unit_(std::move(unit)),
      enabled_(enabled && isatty(STDERR_FILENO)),
      start_(std::chrono::steady_clock::now()),
      last_draw_(start_) {}

ProgressBar::~ProgressBar() { finish(); }

void ProgressBar::update(size_t done) {
  done_ = done;
  const auto now = std::chrono::steady_clock::now();
  if (now - last_draw_ >= std::chrono::milliseconds(100)) {
    last_draw_ = now;
    draw(false);
  }
}

void ProgressBar::finish() {
  if (finished_) return;
  finished_ = true;
  draw(true);
}

void ProgressBar::draw(bool final) {
  if (!enabled_) return;
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  if (total_ == 0) {  // unknown total (a stream): count and rate only
    const double rate = seconds > 0 ? static_cast<double>(done_) / seconds : 0.0;
    fmt::print(stderr, "\r{} {} {:.1f}/s {:.0f}s   ", done_, unit_, rate, seconds);
    if (final) fmt::print(stderr, "\n");
    std::fflush(stderr);
    return;
  }
  const double fraction = total_ ? static_cast<double>(done_) / static_cast<double>(total_) : 1.0;
  constexpr int kWidth = 30;
  const int filled = static_cast<int>(fraction * kWidth);
  const double rate = seconds > 0 ? static_cast<double>(done_) / seconds : 0.0;
  const double eta = rate > 0 ? static_cast<double>(total_ - done_) / rate : 0.0;
  fmt::print(stderr, "\r[{}{}] {}/{} {} {:.1f}/s {} {:.0f}s   ", std::string(filled, '#'),
             std::string(kWidth - filled, '.'), done_, total_, unit_, rate, final ? "in" : "eta",
             final ? seconds : eta);
  if (final) fmt::print(stderr, "\n");
  std::fflush(stderr);
}

}  // namespace m3
