// A replica whose device fails for good (a sticky CUDA error, thrown as DeviceFault)
// leaves service: its unfinished batches go back to the queue and the live replicas
// finish them, nothing is lost or answered twice; with no replica left, queued and new
// requests fail at once (503 at the server); a request that faults two devices fails
// rather than take down a third. Fake replicas stand in for devices; the faulty one runs
// alone first (its thread ends when it leaves service), so no timing decides who runs what.
#include <gtest/gtest.h>

#include <future>
#include <mutex>
#include <thread>

#include "m3/core/error.h"
#include "m3/runtime/replica_worker.h"

namespace m3 {
namespace {

constexpr int32_t kPoison = 666;  // a batch holding this id faults every device

// dense = {token id 1 of each sequence}. `faulty` replicas throw DeviceFault when a batch ends.
class FakeDevice final : public Replica {
 public:
  FakeDevice(bool faulty, bool pipelined) : faulty_(faulty), pipelined_(pipelined) {}

  int index() const override { return faulty_ ? 0 : 1; }
  std::string device_name() const override { return faulty_ ? "fake:0" : "fake:1"; }
  std::string backend_name() const override { return "fake"; }
  void attach_thread() override {}
  void check(const OutputRequest&) const override {}
  WarmupReport warm_up() override { return {}; }
  bool pipelined() const override { return pipelined_; }

  void run(const PackedBatch& batch, const OutputRequest&, std::vector<M3Output>& outputs) override {
    compute(batch, outputs);
  }
  void end(const PackedBatch& batch, const OutputRequest&, std::vector<M3Output>& outputs, int) override {
    compute(batch, outputs);
  }

  int batches_begun() const { return begun_; }

 private:
  void compute(const PackedBatch& batch, std::vector<M3Output>& outputs) {
    ++begun_;
    const bool poisoned = std::find(batch.token_ids.begin(), batch.token_ids.end(), kPoison) != batch.token_ids.end();
    if (faulty_ || poisoned) throw DeviceFault("CUDA: the batch failed: an illegal memory access (cudaErrorIllegalAddress)");
    for (int32_t s = 0; s < batch.sequences(); ++s) {
      M3Output out;
      out.dense = {static_cast<float>(batch.token_ids[batch.seq_begin(s) + 1])};
      outputs.push_back(out);
    }
  }

  bool faulty_, pipelined_;
  int begun_ = 0;
};

struct Tally {
  std::mutex mutex;
  int ok = 0, wrong = 0, finished = 0;
  std::vector<std::string> errors;
};

SchedulerOptions small_batches() {
  SchedulerOptions options;
  options.max_batch_tokens = 16;  // a few requests per batch: many batches
  options.max_seq_len = 16;
  return options;
}

// Queues `count` requests whose dense output must be their marker (1000 + r).
void submit(Scheduler& scheduler, int count, Tally& tally, int poisoned = -1) {
  for (int r = 0; r < count; ++r) {
    const int32_t marker = r == poisoned ? kPoison : 1000 + r;
    scheduler.submit({{0, marker, 2}}, {true, false, false}, [&tally, marker](RequestResult&& result) {
      std::lock_guard lock(tally.mutex);
      ++tally.finished;
      if (!result.error.empty()) {
        tally.errors.push_back(result.error);
      } else if (result.outputs.size() == 1 && result.outputs[0].dense.at(0) == static_cast<float>(marker)) {
        ++tally.ok;
      } else {
        ++tally.wrong;
      }
    });
  }
}

// Runs the replica's loop on a thread until it leaves service or the queue shuts down.
std::thread start(Replica& replica, Scheduler& scheduler) {
  std::promise<WarmupReport> warmed;
  auto warm = warmed.get_future();
  std::thread worker(serve_batches, std::ref(replica), std::ref(scheduler), false, std::move(warmed));
  warm.get();
  return worker;
}

void faulty_replica_hands_its_work_to_the_live_one(bool pipelined) {
  Scheduler scheduler(small_batches());
  scheduler.set_replicas(2);
  Tally tally;
  constexpr int kRequests = 200;
  submit(scheduler, kRequests, tally);

  FakeDevice faulty(true, pipelined), healthy(false, pipelined);
  start(faulty, scheduler).join();  // it takes a batch (two when pipelined), faults and leaves
  EXPECT_EQ(scheduler.stats().replicas_lost, 1);
  EXPECT_EQ(scheduler.stats().batches_requeued, pipelined ? 2u : 1u);
  EXPECT_EQ(scheduler.stats().queued_sequences, static_cast<size_t>(kRequests)) << "nothing may be lost";
  std::thread worker = start(healthy, scheduler);
  scheduler.shutdown();  // drains the queue first
  worker.join();

  EXPECT_EQ(tally.finished, kRequests);
  EXPECT_EQ(tally.ok, kRequests) << (tally.errors.empty() ? "" : tally.errors.front());
  EXPECT_EQ(tally.wrong, 0);
  EXPECT_EQ(scheduler.stats().requests_failed, 0u);
}

TEST(DeviceFault, TheLiveReplicaFinishesTheFaultyOnesBatch) { faulty_replica_hands_its_work_to_the_live_one(false); }

TEST(DeviceFault, BothPipelinedBatchesGoBackToTheQueue) { faulty_replica_hands_its_work_to_the_live_one(true); }

TEST(DeviceFault, WithNoReplicaLeftRequestsFailAtOnce) {
  Scheduler scheduler(small_batches());
  scheduler.set_replicas(1);
  Tally tally;
  submit(scheduler, 50, tally);
  FakeDevice faulty(true, false);
  start(faulty, scheduler).join();

  EXPECT_EQ(tally.finished, 50) << "queued requests must not wait for a replica that will never come";
  EXPECT_EQ(tally.ok, 0);
  ASSERT_FALSE(tally.errors.empty());
  EXPECT_NE(tally.errors.front().find("no replica left: fake:0 failed"), std::string::npos) << tally.errors.front();
  EXPECT_NE(tally.errors.front().find("cudaErrorIllegalAddress"), std::string::npos) << tally.errors.front();
  EXPECT_THROW(scheduler.submit({{0, 5, 2}}, {true, false, false}, [](RequestResult&&) {}), NoReplicaLeft);
  EXPECT_THROW(scheduler.submit_wait({{0, 5, 2}}, {true, false, false}, [](RequestResult&&) {}), NoReplicaLeft);
  const SchedulerStats stats = scheduler.stats();
  EXPECT_EQ(stats.replicas_lost, 1);
  EXPECT_EQ(stats.queued_sequences, 0u);
  EXPECT_EQ(stats.in_flight_sequences, 0u);
}

// A batch that faults whatever runs it takes down two devices, then fails; the third
// replica serves everything else.
TEST(DeviceFault, ARequestThatFaultsTwoDevicesFailsAndSparesTheThird) {
  Scheduler scheduler(small_batches());
  scheduler.set_replicas(3);
  Tally tally;
  constexpr int kRequests = 40;
  submit(scheduler, kRequests, tally, /*poisoned=*/0);  // the oldest: in the first batch
  FakeDevice first(false, false), second(false, false), third(false, false);
  // Each healthy-but-unlucky device meets the poisoned batch first (it heads the queue).
  start(first, scheduler).join();
  start(second, scheduler).join();
  EXPECT_EQ(scheduler.stats().replicas_lost, 2);
  std::thread worker = start(third, scheduler);
  scheduler.shutdown();
  worker.join();

  EXPECT_EQ(tally.finished, kRequests);
  ASSERT_EQ(tally.errors.size(), 1u) << "only the poisoned request fails";
  EXPECT_NE(tally.errors.front().find("a device failed twice"), std::string::npos) << tally.errors.front();
  EXPECT_EQ(tally.ok, kRequests - 1);
  EXPECT_EQ(tally.wrong, 0);
  EXPECT_EQ(third.batches_begun() > 0, true);
}

}  // namespace
}  // namespace m3
