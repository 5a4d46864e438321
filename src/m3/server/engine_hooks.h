// Optional engine instrumentation the metrics use when the engine offers it:
// RequestResult::queue_seconds / inference_seconds (per request) and
// Scheduler::set_batch_observer (per batch). Detected at compile time so the server builds
// against an engine with or without them; without them /metrics has no queue/inference
// latency samples and batch sizes are sampled from Scheduler::stats() instead
// (see BatchSampler in metrics.h).
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <optional>
#include <utility>

namespace m3::server {

struct RequestTiming {
  double queue_seconds = 0;
  double inference_seconds = 0;
};

template <typename Result>
std::optional<RequestTiming> request_timing(const Result& result) {
  if constexpr (requires {
                  result.queue_seconds;
                  result.inference_seconds;
                }) {
    return RequestTiming{static_cast<double>(result.queue_seconds), static_cast<double>(result.inference_seconds)};
  } else {
    return std::nullopt;
  }
}

// Installs `observer(tokens, sequences)` for every batch formed; false when the engine
// cannot report batches.
template <typename SchedulerT>
bool observe_batches(SchedulerT& scheduler, std::function<void(int64_t, size_t)> observer) {
  if constexpr (requires { scheduler.set_batch_observer(std::move(observer)); }) {
    scheduler.set_batch_observer(std::move(observer));
    return true;
  } else {
    return false;
  }
}

}  // namespace m3::server
