// A request as the Scheduler tracks it: tokenized sequences in, one M3Output per sequence
// out, and a callback that runs exactly once. Producers only see RequestResult and the
// RequestHandle (to cancel); the rest is the scheduler's bookkeeping, kept here so that
// Batch can point at the request each packed sequence belongs to.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "m3/model/m3_output.h"

namespace m3 {

struct RequestResult {
  std::vector<M3Output> outputs;  // in the request's order; empty when error is set
  std::string error;              // empty on success; "cancelled" after RequestHandle::cancel
  // For metrics (0 when it never ran): submit -> its first sequence taken into a batch, and
  // from then -> its last output.
  double queue_seconds = 0;
  double inference_seconds = 0;
};

// Runs once per request, on a replica thread (or on the thread that cancels, fails or
// destroys). It must not throw and should return quickly: the replica waits for it.
using RequestCallback = std::function<void(RequestResult&&)>;

// Scheduler bookkeeping. Every field after `callback` is guarded by the scheduler's mutex.
struct Request {
  uint64_t id = 0;
  OutputRequest wanted;
  RequestCallback callback;
  // Moved out (and so freed) as each sequence is packed into a batch.
  std::vector<std::vector<int32_t>> sequences;
  std::vector<M3Output> outputs;
  size_t queued = 0;          // sequences waiting in the queue
  int64_t queued_tokens = 0;  // their tokens
  size_t in_flight = 0;       // sequences in a batch that a replica is running
  bool finished = false;      // the callback has run or is about to: nothing more comes
  bool faulted = false;       // one of its sequences was in a batch a device fault stopped
  std::chrono::steady_clock::time_point submitted{};  // enqueue time
  std::chrono::steady_clock::time_point started{};    // its first sequence batched ({}: not yet)
};

class Scheduler;

// Lets a handle outlive its scheduler: the scheduler clears `scheduler` when destroyed.
struct SchedulerLink {
  std::mutex mutex;
  Scheduler* scheduler = nullptr;
};

class RequestHandle {
 public:
  uint64_t id() const { return request_->id; }

  // Withdraws the request: its queued sequences leave the queue at once (freeing their
  // queue tokens), outputs of sequences already running are discarded when they finish,
  // and the callback runs now, on this thread, with error "cancelled". Returns false (and
  // does nothing) when the request had already finished, failed or been cancelled, so
  // either way no callback comes after cancel() returns.
  bool cancel();

 private:
  friend class Scheduler;
  RequestHandle(std::shared_ptr<Request> request, std::shared_ptr<SchedulerLink> link)
      : request_(std::move(request)), link_(std::move(link)) {}

  std::shared_ptr<Request> request_;
  std::shared_ptr<SchedulerLink> link_;
};

}  // namespace m3
