#include "m3/runtime/replica_worker.h"

#include <initializer_list>
#include <string>

#include <spdlog/spdlog.h>

#include "m3/core/error.h"

namespace m3 {
namespace {

void fail_batch(Replica& replica, Scheduler& scheduler, Batch& batch, const std::exception& e) {
  spdlog::error("replica {}: batch of {} tokens failed: {}", replica.index(), batch.packed.tokens(), e.what());
  scheduler.fail(batch, e.what());
}

// The device is gone: its unfinished batches go back to the queue for the live replicas,
// and this replica stops taking work.
void leave_service(Replica& replica, Scheduler& scheduler, std::initializer_list<Batch*> unfinished,
                   const DeviceFault& fault) {
  const std::string why = fmt::format("{} failed: {}", replica.device_name(), fault.what());
  spdlog::error("replica {} ({}): device fault, taken out of service: {}", replica.index(), replica.device_name(),
                fault.what());
  for (Batch* batch : unfinished) {
    if (!batch->items.empty()) scheduler.requeue(*batch, why);
  }
  scheduler.replica_lost(why);
}

// One batch at a time: wait for work, run it, deliver it.
void serve_one_at_a_time(Replica& replica, Scheduler& scheduler) {
  Batch batch;
  std::vector<M3Output> outputs;
  while (scheduler.next_batch(batch)) {
    try {
      replica.run(batch.packed, batch.outputs, outputs);
      scheduler.complete(batch, std::move(outputs));
    } catch (const DeviceFault& e) {
      leave_service(replica, scheduler, {&batch}, e);
      return;
    } catch (const std::exception& e) {
      fail_batch(replica, scheduler, batch, e);
    }
    outputs.clear();
  }
}

// Two slots: while slot `current` computes, the next batch (if one is queued right now)
// is begun in the other; then `current` is ended and delivered. With nothing queued the
// loop never waits for new work while a begun batch is still to be delivered.
// A DeviceFault leaves it with the unfinished batches still in `slots`.
void serve_pipelined(Replica& replica, Scheduler& scheduler, Batch (&slots)[2]) {
  bool in_flight[2] = {false, false};
  std::vector<M3Output> outputs;
  auto begin = [&](int s) {
    try {
      replica.begin(slots[s].packed, slots[s].outputs, s);
      in_flight[s] = true;
    } catch (const DeviceFault&) {
      throw;
    } catch (const std::exception& e) {
      fail_batch(replica, scheduler, slots[s], e);
    }
  };
  int current = 0;
  for (;;) {
    if (!in_flight[current]) {
      if (!scheduler.next_batch(slots[current])) return;  // shut down and drained
      begin(current);
      continue;
    }
    const int other = 1 - current;
    if (scheduler.try_next_batch(slots[other])) begin(other);
    try {
      replica.end(slots[current].packed, slots[current].outputs, outputs, current);
      scheduler.complete(slots[current], std::move(outputs));
    } catch (const DeviceFault&) {
      throw;
    } catch (const std::exception& e) {
      fail_batch(replica, scheduler, slots[current], e);
    }
    outputs.clear();
    in_flight[current] = false;
    if (in_flight[other]) current = other;
  }
}

}  // namespace

void serve_batches(Replica& replica, Scheduler& scheduler, bool warm_up, std::promise<WarmupReport> warmed) {
  try {
    warmed.set_value(warm_up ? replica.warm_up() : WarmupReport{});
  } catch (...) {
    warmed.set_exception(std::current_exception());
    return;
  }
  replica.attach_thread();
  if (replica.pipelined()) {
    Batch slots[2];
    try {
      serve_pipelined(replica, scheduler, slots);
    } catch (const DeviceFault& e) {
      leave_service(replica, scheduler, {&slots[0], &slots[1]}, e);
    }
  } else {
    serve_one_at_a_time(replica, scheduler);
  }
}

}  // namespace m3
