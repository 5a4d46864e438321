// Scheduler: the one place where requests from many producers (HTTP threads, the CLI)
// become packed batches for N replica threads (CPU or GPU, it does not know which).
// Why it exists: the queue is bounded in tokens, so host memory stays planned and overload
// is refused fast (QueueFull -> 429) instead of growing; batches fill a token budget with
// sequences of similar length, taken near the head of the queue so nothing waits long.
//
// Batch choice, per next_batch(): look at the window of the first `sort_window` queued
// sequences (FIFO order). The oldest one anchors the batch, and the window's sequences
// closest to it in length join it while they fit `max_batch_tokens`; the batch is then
// maximal (no other window sequence would fit). Fairness: a batch that takes a sequence
// queued after S but not S "overtakes" S. A sequence overtaken `max_overtakes` times is
// starving; starving sequences (always a prefix of the queue) go first, in FIFO order, and
// a batch never overtakes one, so no sequence is overtaken more than max_overtakes times.
// max_overtakes = 0 is strict FIFO.
#pragma once

#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "m3/core/error.h"
#include "m3/model/m3_output.h"
#include "m3/runtime/batch_gate.h"
#include "m3/model/packed_batch.h"
#include "m3/runtime/request.h"

namespace m3 {

// The queue cannot take the request now; retry later (HTTP 429).
class QueueFull : public Error {
 public:
  using Error::Error;
};

// shutdown() was called: no new work is accepted (HTTP 503).
class ShuttingDown : public Error {
 public:
  using Error::Error;
};

// Every replica has left service after a device fault (HTTP 503, as shutting down).
class NoReplicaLeft : public ShuttingDown {
 public:
  using ShuttingDown::ShuttingDown;
};

struct SchedulerOptions {
  int64_t max_batch_tokens = 16384;  // tokens per batch (>= max_seq_len)
  int64_t max_seq_len = 8192;        // tokens per sequence, specials included
  int64_t max_queue_tokens = 1 << 20;  // queued, not yet batched tokens (>= max_seq_len)
  size_t sort_window = 256;          // queued sequences considered for each batch
  int max_overtakes = 8;             // batches that may skip a sequence before it goes first
  // TEST ONLY: every formed batch waits at a BatchGate until released (batch_gate.h).
  bool test_batch_gate = false;
};

// One batch for a replica: the sequences packed end to end (positions for pad id 1) and,
// for each, the request and index it came from. Reuse one Batch per replica: next_batch
// clears and refills it, keeping its capacity.
struct Batch {
  struct Item {
    std::shared_ptr<Request> request;
    uint32_t index = 0;   // sequence index within the request
    uint64_t serial = 0;  // arrival order of the sequence in this scheduler: 0, 1, 2, ...
  };

  PackedBatch packed;
  std::vector<Item> items;  // items[i] is packed sequence i
  OutputRequest outputs{false, false, false};  // union of what the batch's requests want
  uint64_t number = 0;      // batches formed before this one

  void clear() {
    packed.clear();
    items.clear();
    outputs = {false, false, false};
  }

 private:
  friend class Scheduler;
  std::vector<std::vector<int32_t>> incoming_;  // ids moved out of requests, packed off-lock
  std::vector<std::shared_ptr<Request>> finished_;  // requests whose callbacks are due
};

struct SchedulerStats {
  size_t queued_requests = 0;    // requests with at least one sequence still queued
  size_t queued_sequences = 0;
  int64_t queued_tokens = 0;
  size_t in_flight_sequences = 0;  // in batches that replicas are running
  size_t waiting_submitters = 0;   // submit_wait callers blocked for room
  uint64_t batches_formed = 0;
  uint64_t tokens_batched = 0;
  uint64_t requests_submitted = 0;
  uint64_t requests_completed = 0;
  uint64_t requests_failed = 0;
  uint64_t requests_cancelled = 0;
  uint64_t requests_rejected = 0;  // QueueFull
  int replicas = 0;                // set_replicas: the replicas serving this queue at start
  int replicas_lost = 0;           // replica_lost: those taken out of service since
  uint64_t batches_requeued = 0;   // requeue: batches a lost replica gave back
};

class Scheduler {
 public:
  // Throws m3::Error for inconsistent options (e.g. max_seq_len > max_batch_tokens).
  explicit Scheduler(const SchedulerOptions& options);
  // Replicas must have stopped calling in. Requests still queued get error "shutting down".
  ~Scheduler();
  Scheduler(const Scheduler&) = delete;
  Scheduler& operator=(const Scheduler&) = delete;

  const SchedulerOptions& options() const { return options_; }

  // Queues a request (each sequence 2..max_seq_len tokens) and returns at once. Throws
  // m3::Error for bad input or a request larger than max_queue_tokens (nothing queued),
  // ShuttingDown after shutdown(), QueueFull when it does not fit now (or submit_wait
  // callers are already waiting for room). `on_done` runs exactly once unless it throws.
  std::shared_ptr<RequestHandle> submit(std::vector<std::vector<int32_t>> sequences, const OutputRequest& outputs,
                                        RequestCallback on_done);
  // As submit, but waits for room instead of throwing QueueFull. Waiters are served in
  // arrival order, so a large request is not starved by smaller ones.
  std::shared_ptr<RequestHandle> submit_wait(std::vector<std::vector<int32_t>> sequences,
                                             const OutputRequest& outputs, RequestCallback on_done);
  // submit_wait, then waits for the outputs (in order). Throws m3::Error on failure.
  std::vector<M3Output> run(std::vector<std::vector<int32_t>> sequences, const OutputRequest& outputs);

  // Replica side. Blocks until there is work; false once shut down and the queue is empty.
  // Complete or fail each batch before asking for the next (a dropped one is failed).
  bool next_batch(Batch& batch);
  // As next_batch, but returns false at once when nothing is queued. A replica that
  // pipelines (stages the next batch while the current one computes) asks this way, so
  // it never waits for new work with a finished batch still to deliver.
  bool try_next_batch(Batch& batch);
  // outputs[i] belongs to batch.items[i]. Runs the callbacks of requests now complete,
  // then clears the batch.
  void complete(Batch& batch, std::vector<M3Output>&& outputs);
  // Every request in the batch fails with `error` (once each; their queued sequences
  // are dropped), then clears the batch.
  void fail(Batch& batch, std::string error);

  // Device faults. set_replicas(n) says how many replicas serve the queue (once, at start).
  // A replica whose device failed gives its unfinished batch back with requeue(): its
  // sequences go to the head of the queue, ahead of everything, for the live replicas, and
  // each then runs in a batch of its own; a request in a faulted batch for the second time
  // (so alone) fails instead: an input that breaks every device it meets takes down at
  // most two, and the requests that shared its first batch still finish. Then the replica calls replica_lost(why)
  // and stops asking for work. When none is left, queued requests fail with `why` and
  // submit throws NoReplicaLeft.
  void set_replicas(int count);
  void requeue(Batch& batch, const std::string& why);
  void replica_lost(const std::string& why);

  // Called on the replica thread for every batch formed, outside the lock, with its tokens
  // and sequences (the server's batch-size histogram). Set it once, before traffic.
  using BatchObserver = std::function<void(int64_t tokens, size_t sequences)>;
  void set_batch_observer(BatchObserver observer);

  // Stops accepting work; queued work still drains through next_batch (a test gate opens).
  void shutdown();
  SchedulerStats stats() const;
  // The test gate, when options().test_batch_gate; else nullptr.
  BatchGate* test_gate() { return gate_.get(); }

 private:
  friend class RequestHandle;
  struct Entry {
    std::shared_ptr<Request> request;
    uint32_t index;
    int32_t tokens;
    uint64_t serial;
    int overtakes;
  };

  std::shared_ptr<RequestHandle> enqueue(std::vector<std::vector<int32_t>>&& sequences, const OutputRequest& outputs,
                                         RequestCallback&& on_done, bool wait);
  bool take_batch(Batch& batch, bool wait);
  void form_batch(Batch& batch);  // mutex held, queue not empty
  // Marks the request finished and drops its queued sequences; mutex held.
  void finish_locked(Request& request);
  // Called by RequestHandle::cancel; returns the request when this call cancelled it.
  std::shared_ptr<Request> withdraw(const std::shared_ptr<Request>& request);

  const SchedulerOptions options_;
  std::shared_ptr<SchedulerLink> link_;

  mutable std::mutex mutex_;
  std::condition_variable work_cv_;   // replicas: queue not empty, or shutdown
  std::condition_variable space_cv_;  // submit_wait: room freed, or shutdown
  std::deque<Entry> queue_;           // FIFO of sequences not yet batched
  bool shutting_down_ = false;
  std::string no_replica_;  // why no replica is left; empty while one is
  uint64_t next_request_id_ = 0;
  uint64_t next_serial_ = 0;
  uint64_t next_ticket_ = 0;     // submit_wait arrival order
  uint64_t serving_ticket_ = 0;  // the waiter allowed to enqueue next
  SchedulerStats stats_;
  std::shared_ptr<const BatchObserver> batch_observer_;
  std::unique_ptr<BatchGate> gate_;  // test only
  // form_batch scratch, reused: window indices sorted by length, taken flags.
  std::vector<uint32_t> order_;
  std::vector<char> taken_;
};

}  // namespace m3
