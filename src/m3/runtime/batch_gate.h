// BatchGate: a TEST-ONLY pause point between the scheduler and the replicas. When a
// scheduler is built with one (SchedulerOptions::test_batch_gate, which `m3embed serve`
// enables only with --test-batch-gate and M3_ENABLE_TEST_CONTROLS=1), every batch, once
// formed (its requests in flight), waits here until a test releases it. Tests use it to
// hold work in flight without racing the machine's speed; never use it in production.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <mutex>

namespace m3 {

struct BatchGateState {
  uint64_t held = 0;      // batches waiting at the gate now
  uint64_t passed = 0;    // batches that went through
  uint64_t permits = 0;   // releases not yet used
  bool open = false;      // every batch passes (release_all, or the scheduler shut down)
};

class BatchGate {
 public:
  // Blocks the calling replica thread until a permit is available or the gate is open.
  void pass();
  // Lets `batches` more batches through (held ones first).
  void release(uint64_t batches);
  // Opens the gate for good (also what Scheduler::shutdown does, so nothing stays held).
  void open();
  BatchGateState state() const;

 private:
  mutable std::mutex mutex_;
  std::condition_variable cv_;
  BatchGateState state_;
};

}  // namespace m3
