// OrderedResults: the reorder buffer between the scheduler, which finishes sequences in
// any order, and a writer that must emit them in input order. It is bounded in bytes:
// each result is copied into a planned block (MemoryPlan::result_buffer_bytes) the moment
// it is computed and leaves it once written, and a producer reserves the room for a result
// before submitting its sequence, blocking while the block is full. So a slow writer or a
// huge text holds the producer back instead of growing memory.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <mutex>
#include <optional>
#include <string>
#include <utility>

#include "m3/memory/arena.h"
#include "m3/memory/byte_ring.h"
#include "m3/model/m3_output.h"

namespace m3 {

class OrderedResults {
 public:
  explicit OrderedResults(uint64_t capacity_bytes);
  ~OrderedResults();  // waits for results still due (their callbacks point here)
  OrderedResults(const OrderedResults&) = delete;
  OrderedResults& operator=(const OrderedResults&) = delete;

  // The most bytes one result of a `tokens`-long sequence can take.
  static uint64_t bytes_for(int64_t tokens, int64_t hidden, const OutputRequest& request);

  // Producer, in input order: blocks until `bytes` fit, then returns the result's number
  // (0, 1, 2, ...). Throws m3::Error when `bytes` can never fit or after abort().
  uint64_t reserve(uint64_t bytes);
  // Any thread, exactly once per reserved number.
  void deliver(uint64_t number, const M3Output& output);
  void fail(uint64_t number, std::string error);
  // Producer: nothing more will be reserved.
  void close();
  // Stops everything: reserve() and next() throw `error` from now on.
  void abort(std::string error);

  // Writer: waits for the next result in order (its view is valid until pop()); nullopt once closed and everything was
  // popped. Throws m3::Error with the error of a failed result. pop() frees its room.
  std::optional<ResultView> next();
  void pop();
  // True when next() would not wait (the writer flushes what it has before waiting).
  bool next_ready() const;

  uint64_t capacity() const { return ring_.capacity(); }
  uint64_t peak_used() const;
  size_t waiting_producers() const;  // reserve() calls blocked for room now

 private:
  struct Slot {
    uint64_t offset = 0, bytes = 0;
    bool ready = false;
    std::string error;
    ResultView view;
  };
  Slot& slot_locked(uint64_t number);

  Arena storage_;
  mutable std::mutex mutex_;
  std::condition_variable room_cv_, ready_cv_, idle_cv_;
  ByteRing ring_;
  std::deque<Slot> slots_;  // slots_[0] is result number first_
  uint64_t first_ = 0;      // the oldest result not yet popped
  uint64_t pending_ = 0;    // reserved, not yet delivered or failed
  uint64_t peak_ = 0;
  size_t waiting_ = 0;
  bool closed_ = false;
  std::string abort_error_;
};

}  // namespace m3
