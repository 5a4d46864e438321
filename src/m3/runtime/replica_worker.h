// The loop each replica's thread runs: warm-up, then batches from the scheduler until it
// shuts down. A pipelined replica (CUDA) gets the next batch staged and queued while the
// current one computes, so the host's copying in and out overlaps the device's work.
#pragma once

#include <future>

#include "m3/runtime/replica.h"
#include "m3/runtime/scheduler.h"

namespace m3 {

// Runs on the replica's own thread. `warmed` gets the warm-up report (or its exception,
// after which the loop does not start).
void serve_batches(Replica& replica, Scheduler& scheduler, bool warm_up, std::promise<WarmupReport> warmed);

}  // namespace m3
