#include "m3/runtime/batch_gate.h"

namespace m3 {

void BatchGate::pass() {
  std::unique_lock lock(mutex_);
  ++state_.held;
  cv_.wait(lock, [&] { return state_.open || state_.permits > 0; });
  if (!state_.open) --state_.permits;
  --state_.held;
  ++state_.passed;
}

void BatchGate::release(uint64_t batches) {
  {
    std::lock_guard lock(mutex_);
    state_.permits += batches;
  }
  cv_.notify_all();
}

void BatchGate::open() {
  {
    std::lock_guard lock(mutex_);
    state_.open = true;
  }
  cv_.notify_all();
}

BatchGateState BatchGate::state() const {
  std::lock_guard lock(mutex_);
  return state_;
}

}  // namespace m3
