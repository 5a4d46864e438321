// serve_batches, the loop each replica thread runs, with a fake replica in place of a
// device: one batch at a time, and pipelined (the CUDA replica's mode: the next batch is
// begun while the current one is still to be ended). Outputs must reach the right
// requests, failures must stay with their batch, and at most two batches are in flight.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <thread>

#include "m3/core/error.h"
#include "m3/runtime/replica_worker.h"

namespace m3 {
namespace {

constexpr int32_t kFailsAtBegin = 666;
constexpr int32_t kFailsAtEnd = 777;

// dense = {token id 1 of each sequence}; batches holding a poisoned id throw.
class FakeReplica final : public Replica {
 public:
  explicit FakeReplica(bool pipelined) : pipelined_(pipelined) {}

  int index() const override { return 0; }
  std::string device_name() const override { return "fake"; }
  std::string backend_name() const override { return "fake"; }
  void attach_thread() override {}
  void check(const OutputRequest&) const override {}
  WarmupReport warm_up() override { return {}; }
  bool pipelined() const override { return pipelined_; }

  void run(const PackedBatch& batch, const OutputRequest& request, std::vector<M3Output>& outputs) override {
    begin(batch, request, 0);
    end(batch, request, outputs, 0);
  }

  void begin(const PackedBatch& batch, const OutputRequest&, int slot) override {
    std::lock_guard lock(mutex_);
    if (slot_busy_[slot]) violations_ += "slot reused while in flight; ";
    if (contains(batch, kFailsAtBegin)) throw Error("poisoned at begin");
    slot_busy_[slot] = true;
    ++in_flight_;
    most_in_flight_ = std::max(most_in_flight_, in_flight_);
    order_.push_back(slot);
    results_[slot].clear();
    for (int32_t s = 0; s < batch.sequences(); ++s) {
      M3Output out;
      out.dense = {static_cast<float>(batch.token_ids[batch.seq_begin(s) + 1])};
      results_[slot].push_back(out);
    }
  }

  void end(const PackedBatch& batch, const OutputRequest&, std::vector<M3Output>& outputs, int slot) override {
    std::lock_guard lock(mutex_);
    if (!slot_busy_[slot]) violations_ += "ended a slot never begun; ";
    if (order_.empty() || order_.front() != slot) violations_ += "ended out of order; ";
    if (!order_.empty()) order_.erase(order_.begin());
    slot_busy_[slot] = false;
    --in_flight_;
    if (contains(batch, kFailsAtEnd)) throw Error("poisoned at end");
    outputs = results_[slot];
  }

  int most_in_flight() const { return most_in_flight_; }
  std::string violations() const { return violations_; }

 private:
  static bool contains(const PackedBatch& batch, int32_t id) {
    return std::find(batch.token_ids.begin(), batch.token_ids.end(), id) != batch.token_ids.end();
  }

  bool pipelined_;
  std::mutex mutex_;
  bool slot_busy_[2] = {false, false};
  int in_flight_ = 0, most_in_flight_ = 0;
  std::vector<int> order_;
  std::vector<M3Output> results_[2];
  std::string violations_;
};

void run_traffic(bool pipelined) {
  SchedulerOptions options;
  options.max_batch_tokens = 16;  // two requests per batch: many batches
  options.max_seq_len = 16;
  Scheduler scheduler(options);
  FakeReplica replica(pipelined);

  // Every request is queued before the replica starts, so there is always a next batch to
  // begin early, however fast the replica thread runs.
  constexpr int kRequests = 600;
  std::mutex mutex;
  std::condition_variable all_done;
  int ok = 0, failed = 0, wrong = 0, finished = 0;
  for (int r = 0; r < kRequests; ++r) {
    const int32_t marker = 1000 + r;
    // Every 25th request is poisoned: at begin or at end.
    const int32_t second = r % 25 == 5 ? kFailsAtBegin : r % 25 == 17 ? kFailsAtEnd : marker;
    std::vector<std::vector<int32_t>> sequences = {{0, second, 2}, {0, marker, 9, 2}};
    scheduler.submit_wait(std::move(sequences), {true, false, false}, [&, marker, second](RequestResult&& result) {
      std::lock_guard lock(mutex);
      if (!result.error.empty()) {
        ++failed;
      } else {
        ++ok;
        const auto& out = result.outputs;
        if (out.size() != 2 || out[1].dense.at(0) != static_cast<float>(marker) ||
            out[0].dense.at(0) != static_cast<float>(second)) {
          ++wrong;
        }
      }
      if (++finished == kRequests) all_done.notify_all();
    });
  }
  std::promise<WarmupReport> warmed;
  auto warm = warmed.get_future();
  std::thread worker(serve_batches, std::ref(replica), std::ref(scheduler), true, std::move(warmed));
  warm.get();
  {
    std::unique_lock lock(mutex);
    all_done.wait(lock, [&] { return finished == kRequests; });
  }
  scheduler.shutdown();
  worker.join();

  EXPECT_EQ(wrong, 0) << "outputs reached the wrong request";
  EXPECT_EQ(ok + failed, kRequests);
  // The 48 poisoned requests fail; a clean request fails only when it shared a batch with
  // one, and a 16-token batch holds at most 5 sequences (3 tokens or more each).
  EXPECT_GE(failed, 48);
  EXPECT_LE(failed, 48 * 5);
  EXPECT_EQ(replica.violations(), "");
  EXPECT_EQ(replica.most_in_flight(), pipelined ? 2 : 1);
}

TEST(ReplicaWorker, OneBatchAtATime) { run_traffic(false); }

TEST(ReplicaWorker, PipelinedKeepsTwoBatchesInFlightInOrder) { run_traffic(true); }

}  // namespace
}  // namespace m3
