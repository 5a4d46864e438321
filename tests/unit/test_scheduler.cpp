// Scheduler: requests split into token-budget batches and reassembled in order, a queue
// bounded in tokens, length-sorted windows without starvation, cancellation, shutdown and
// many threads. Replicas are fakes: an output's `tokens` is the sequence length and its
// dense vector the sequence's first token id, which each test makes unique.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <functional>
#include <future>
#include <map>
#include <mutex>
#include <random>
#include <set>
#include <thread>

#include "m3/runtime/scheduler.h"

namespace m3 {
namespace {

using Sequences = std::vector<std::vector<int32_t>>;

// A sequence whose first token is `tag`; no token is 1 (the pad id).
std::vector<int32_t> make_seq(int32_t tag, int32_t length) {
  std::vector<int32_t> ids(static_cast<size_t>(length));
  if (length > 0) ids[0] = tag;
  for (int32_t j = 1; j < length; ++j) ids[j] = 5 + (tag * 7 + j) % 50000;
  return ids;
}

SchedulerOptions make_options(int64_t max_batch_tokens, int64_t max_seq_len, int64_t max_queue_tokens,
                              size_t sort_window = 256, int max_overtakes = 8) {
  SchedulerOptions options;
  options.max_batch_tokens = max_batch_tokens;
  options.max_seq_len = max_seq_len;
  options.max_queue_tokens = max_queue_tokens;
  options.sort_window = sort_window;
  options.max_overtakes = max_overtakes;
  return options;
}

// What a replica would compute, reduced to what identifies the sequence.
std::vector<M3Output> compute(const Batch& batch) {
  const PackedBatch& packed = batch.packed;
  std::vector<M3Output> outputs(batch.items.size());
  for (int32_t s = 0; s < packed.sequences(); ++s) {
    const int32_t first = packed.token_ids[packed.seq_begin(s)];
    outputs[s].tokens = packed.seq_len(s);
    if (batch.outputs.dense) outputs[s].dense = {static_cast<float>(first)};
    if (batch.outputs.sparse) outputs[s].lexical = {{first, 1.0f}};
    if (batch.outputs.token_weights) outputs[s].token_weights.assign(packed.seq_len(s), 0.5f);
  }
  return outputs;
}

// Layout and content of a packed batch: offsets, positions for pad id 1, the ids themselves.
void check_packed(const Batch& batch, int64_t max_batch_tokens) {
  const PackedBatch& packed = batch.packed;
  EXPECT_LE(packed.tokens(), max_batch_tokens);
  ASSERT_EQ(static_cast<size_t>(packed.sequences()), batch.items.size());
  ASSERT_GT(packed.sequences(), 0);
  EXPECT_EQ(packed.cu_seqlens.front(), 0);
  EXPECT_EQ(packed.cu_seqlens.back(), packed.tokens());
  EXPECT_EQ(packed.positions.size(), packed.token_ids.size());
  int32_t longest = 0;
  for (int32_t s = 0; s < packed.sequences(); ++s) {
    const int32_t begin = packed.seq_begin(s), length = packed.seq_len(s);
    ASSERT_GE(length, 2);
    longest = std::max(longest, length);
    const auto expected = make_seq(packed.token_ids[begin], length);
    for (int32_t j = 0; j < length; ++j) {
      ASSERT_EQ(packed.token_ids[begin + j], expected[j]) << "sequence " << s << " token " << j;
      ASSERT_EQ(packed.positions[begin + j], 2 + j) << "sequence " << s << " token " << j;
    }
  }
  EXPECT_EQ(packed.max_seq_len, longest);
}

// Fake replica threads: next_batch, check, "compute", complete, until shut down.
class Replicas {
 public:
  using Observer = std::function<void(const Batch&)>;
  Replicas(Scheduler& scheduler, int count, std::chrono::microseconds work = {}, Observer observe = {})
      : scheduler_(scheduler) {
    for (int r = 0; r < count; ++r)
      threads_.emplace_back([&scheduler, work, observe] {
        Batch batch;
        while (scheduler.next_batch(batch)) {
          check_packed(batch, scheduler.options().max_batch_tokens);
          if (observe) observe(batch);
          if (work.count() > 0) std::this_thread::sleep_for(work);
          scheduler.complete(batch, compute(batch));
        }
      });
  }
  ~Replicas() {  // also when a test stops early
    scheduler_.shutdown();
    join();
  }
  void join() {
    for (auto& thread : threads_)
      if (thread.joinable()) thread.join();
  }

 private:
  Scheduler& scheduler_;
  std::vector<std::thread> threads_;
};

// Collects callback results, counting calls per request.
struct Results {
  std::mutex mutex;
  std::map<int, std::vector<RequestResult>> by_key;
  RequestCallback callback(int key) {
    return [this, key](RequestResult&& result) {
      std::lock_guard lock(mutex);
      by_key[key].push_back(std::move(result));
    };
  }
  size_t calls(int key) {
    std::lock_guard lock(mutex);
    return by_key.count(key) ? by_key[key].size() : 0;
  }
  RequestResult& only(int key) {
    std::lock_guard lock(mutex);
    EXPECT_EQ(by_key[key].size(), 1u) << "request " << key;
    return by_key[key].front();
  }
};

void drain(Scheduler& scheduler) {
  while (scheduler.stats().queued_sequences > 0) {
    Batch batch;
    ASSERT_TRUE(scheduler.next_batch(batch));
    scheduler.complete(batch, compute(batch));
  }
}

void wait_for(const std::function<bool()>& condition) {  // polls; never asserts on time
  while (!condition()) std::this_thread::sleep_for(std::chrono::milliseconds(1));
}

class SchedulerOrderTest : public ::testing::TestWithParam<int> {};

TEST_P(SchedulerOrderTest, RequestSplitOverManyBatchesComesBackInOrder) {
  Scheduler scheduler(make_options(256, 64, 1 << 16, 32, 4));
  Replicas replicas(scheduler, GetParam(), std::chrono::microseconds(20));
  std::mt19937 rng(11);
  std::uniform_int_distribution<int32_t> length(2, 64);
  Sequences sequences;
  std::vector<int32_t> lengths;
  for (int32_t i = 0; i < 500; ++i) {
    lengths.push_back(length(rng));
    sequences.push_back(make_seq(100 + i, lengths.back()));
  }
  const auto outputs = scheduler.run(sequences, {});
  ASSERT_EQ(outputs.size(), 500u);
  for (int32_t i = 0; i < 500; ++i) {
    EXPECT_EQ(outputs[i].tokens, lengths[i]) << i;
    ASSERT_EQ(outputs[i].dense.size(), 1u);
    EXPECT_EQ(outputs[i].dense[0], static_cast<float>(100 + i)) << i;
  }
  EXPECT_GT(scheduler.stats().batches_formed, 20u);
  scheduler.shutdown();
  replicas.join();
  const auto stats = scheduler.stats();
  EXPECT_EQ(stats.queued_tokens, 0);
  EXPECT_EQ(stats.queued_requests, 0u);
  EXPECT_EQ(stats.in_flight_sequences, 0u);
  EXPECT_EQ(stats.requests_completed, 1u);
}

INSTANTIATE_TEST_SUITE_P(Replicas, SchedulerOrderTest, ::testing::Values(1, 3));

TEST(Scheduler, BatchesAreWithinBudgetFromTheWindowAndFull) {
  const size_t window = 16;
  const int64_t budget = 200;
  Results results;
  Scheduler scheduler(make_options(budget, 100, 1 << 20, window, 1000));  // no starvation rule here
  std::mt19937 rng(3);
  std::uniform_int_distribution<int32_t> length(2, 100);
  std::map<uint64_t, int32_t> queued;  // serial -> length; serials follow submission order
  uint64_t serial = 0;
  for (int r = 0; r < 30; ++r) {
    Sequences sequences;
    for (int i = 0; i < 10; ++i) {
      sequences.push_back(make_seq(1000 + r * 10 + i, length(rng)));
      queued[serial++] = static_cast<int32_t>(sequences.back().size());
    }
    scheduler.submit(sequences, {}, results.callback(r));
  }

  Batch batch;
  const int32_t* storage = nullptr;
  uint64_t batches = 0;
  while (!queued.empty()) {
    ASSERT_TRUE(scheduler.next_batch(batch));
    EXPECT_EQ(batch.number, batches++);
    check_packed(batch, budget);
    if (storage == nullptr) storage = batch.packed.token_ids.data();
    EXPECT_EQ(batch.packed.token_ids.data(), storage) << "the batch's buffers are reused, not reallocated";
    std::set<uint64_t> in_window;
    for (auto it = queued.begin(); it != queued.end() && in_window.size() < window; ++it) in_window.insert(it->first);
    for (size_t i = 0; i < batch.items.size(); ++i) {
      const uint64_t s = batch.items[i].serial;
      ASSERT_TRUE(in_window.count(s)) << "serial " << s << " is not among the first " << window << " queued";
      EXPECT_EQ(batch.packed.seq_len(static_cast<int32_t>(i)), queued[s]);
      in_window.erase(s);
      queued.erase(s);
    }
    for (uint64_t s : in_window)  // maximal: nothing left in the window would have fit
      EXPECT_GT(queued[s], budget - batch.packed.tokens()) << "serial " << s;
    scheduler.complete(batch, compute(batch));
  }
  for (int r = 0; r < 30; ++r) {
    const auto& result = results.only(r);
    ASSERT_TRUE(result.error.empty());
    ASSERT_EQ(result.outputs.size(), 10u);
    for (int i = 0; i < 10; ++i) EXPECT_EQ(result.outputs[i].dense.at(0), static_cast<float>(1000 + r * 10 + i));
  }
  EXPECT_EQ(scheduler.stats().batches_formed, batches);
  EXPECT_EQ(scheduler.stats().queued_tokens, 0);
}

TEST(Scheduler, SimilarLengthsGoTogether) {
  Results results;
  Scheduler scheduler(make_options(200, 100, 1 << 20));
  for (int i = 0; i < 40; ++i) {  // long, short, long, short, ...
    scheduler.submit({make_seq(100 + 2 * i, 100)}, {}, results.callback(2 * i));
    scheduler.submit({make_seq(101 + 2 * i, 10)}, {}, results.callback(2 * i + 1));
  }
  Batch batch;
  int batches = 0;
  while (scheduler.stats().queued_sequences > 0) {
    ASSERT_TRUE(scheduler.next_batch(batch));
    ++batches;
    for (int32_t s = 1; s < batch.packed.sequences(); ++s) EXPECT_EQ(batch.packed.seq_len(s), batch.packed.seq_len(0));
    EXPECT_EQ(batch.packed.tokens(), 200);
    scheduler.complete(batch, compute(batch));
  }
  EXPECT_EQ(batches, 20 + 2);  // pairs of longs, twenties of shorts
  for (int key = 0; key < 80; ++key) EXPECT_EQ(results.calls(key), 1u);
}

// Sequences older than LONG anchor batches that also take newer short ones, so each such
// batch overtakes LONG. Returns how many batches overtook it before the one that took it.
int overtakes_of_long(int max_overtakes, std::vector<std::vector<uint64_t>>* batches_out = nullptr) {
  Results results;
  Scheduler scheduler(make_options(100, 100, 1 << 20, 256, max_overtakes));
  for (int i = 0; i < 12; ++i) scheduler.submit({make_seq(100 + i, 45)}, {}, results.callback(i));
  scheduler.submit({make_seq(99, 60)}, {}, results.callback(-1));
  const uint64_t long_serial = 12;
  int overtakes = 0, tag = 1000;
  Batch batch;
  while (results.calls(-1) == 0) {
    for (int k = 0; k < 2; ++k) scheduler.submit({make_seq(tag++, 10)}, {}, results.callback(tag));
    EXPECT_TRUE(scheduler.next_batch(batch));
    bool has_long = false, has_newer = false;
    std::vector<uint64_t> serials;
    for (const auto& item : batch.items) {
      has_long |= item.serial == long_serial;
      has_newer |= item.serial > long_serial;
      serials.push_back(item.serial);
    }
    if (batches_out) batches_out->push_back(serials);
    if (has_newer && !has_long) ++overtakes;
    scheduler.complete(batch, compute(batch));
  }
  EXPECT_TRUE(results.only(-1).error.empty());
  EXPECT_EQ(results.only(-1).outputs.at(0).tokens, 60);
  return overtakes;
}

TEST(Scheduler, NoSequenceIsOvertakenMoreThanMaxOvertakes) {
  EXPECT_EQ(overtakes_of_long(1000), 6);  // without the rule: every A-pair batch takes a newer short
  std::vector<std::vector<uint64_t>> batches;
  EXPECT_EQ(overtakes_of_long(3, &batches), 3);
  // After three overtakes LONG and the A's ahead of it are starving: they go FIFO, no
  // newer sequence joins until LONG is in, and LONG goes first in its batch.
  ASSERT_EQ(batches.size(), 7u);
  EXPECT_EQ(batches[3], (std::vector<uint64_t>{6, 7}));
  EXPECT_EQ(batches[4], (std::vector<uint64_t>{8, 9}));
  EXPECT_EQ(batches[5], (std::vector<uint64_t>{10, 11}));
  EXPECT_EQ(batches[6].front(), 12u);
  // max_overtakes 0 is strict FIFO.
  batches.clear();
  EXPECT_EQ(overtakes_of_long(0, &batches), 0);
  uint64_t next = 0;
  for (const auto& serials : batches)
    for (uint64_t s : serials) EXPECT_EQ(s, next++);
}

TEST(Scheduler, LongSequenceIsNotStarvedByAStreamOfShortRequests) {
  const int max_overtakes = 1;
  Scheduler scheduler(make_options(100, 100, 200, 256, max_overtakes));
  std::mutex mutex;
  std::vector<std::vector<Batch::Item>> formed;  // by batch number
  Replicas replicas(scheduler, 1, std::chrono::microseconds(50), [&](const Batch& batch) {
    std::lock_guard lock(mutex);
    if (formed.size() <= batch.number) formed.resize(batch.number + 1);
    formed[batch.number] = batch.items;
  });
  std::atomic<bool> stop{false};
  std::thread producer([&] {
    for (int32_t tag = 1000; !stop; ++tag) scheduler.submit_wait({make_seq(tag, 10)}, {}, [](RequestResult&&) {});
  });
  wait_for([&] { return scheduler.stats().batches_formed >= 20; });
  std::promise<RequestResult> done;
  auto handle = scheduler.submit_wait({make_seq(99, 60)}, {}, [&](RequestResult&& r) { done.set_value(std::move(r)); });
  const RequestResult result = done.get_future().get();
  stop = true;
  producer.join();
  scheduler.shutdown();
  replicas.join();
  ASSERT_TRUE(result.error.empty());
  EXPECT_EQ(result.outputs.at(0).tokens, 60);

  // Count the batches that took a sequence queued after LONG but not LONG.
  std::lock_guard lock(mutex);
  int64_t long_batch = -1;
  uint64_t long_serial = 0;
  for (size_t b = 0; b < formed.size() && long_batch < 0; ++b)
    for (const auto& item : formed[b])
      if (item.request->id == handle->id()) long_batch = static_cast<int64_t>(b), long_serial = item.serial;
  ASSERT_GE(long_batch, 0);
  int overtakes = 0;
  int64_t first_overtaking = long_batch;
  for (int64_t b = 0; b < long_batch; ++b)
    for (const auto& item : formed[b])
      if (item.serial > long_serial) {
        ++overtakes;
        first_overtaking = std::min(first_overtaking, b);
        break;
      }
  EXPECT_LE(overtakes, max_overtakes);
  EXPECT_LE(long_batch - first_overtaking + 1, max_overtakes + 1);
  EXPECT_EQ(scheduler.stats().queued_tokens, 0);
}

TEST(Scheduler, QueueIsBoundedInTokens) {
  Results results;
  Scheduler scheduler(make_options(100, 50, 100));
  scheduler.submit({make_seq(100, 30), make_seq(101, 30)}, {}, results.callback(0));
  EXPECT_THROW(scheduler.submit({make_seq(102, 50)}, {}, results.callback(1)), QueueFull);
  EXPECT_EQ(scheduler.stats().queued_tokens, 60);
  EXPECT_EQ(scheduler.stats().requests_rejected, 1u);
  try {  // larger than the whole queue: an input error, not "try later"
    scheduler.submit({make_seq(103, 50), make_seq(104, 50), make_seq(105, 2)}, {}, results.callback(2));
    ADD_FAILURE() << "no exception";
  } catch (const Error& e) {
    EXPECT_EQ(dynamic_cast<const QueueFull*>(&e), nullptr);
    EXPECT_NE(std::string(e.what()).find("102 tokens"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("max_queue_tokens 100"), std::string::npos) << e.what();
  }

  Batch batch;
  ASSERT_TRUE(scheduler.next_batch(batch));  // takes both 30s: room again
  EXPECT_EQ(scheduler.stats().queued_tokens, 0);
  scheduler.submit({make_seq(106, 50)}, {}, results.callback(3));
  scheduler.submit({make_seq(107, 40)}, {}, results.callback(4));
  EXPECT_THROW(scheduler.submit({make_seq(108, 20)}, {}, results.callback(5)), QueueFull);
  scheduler.complete(batch, compute(batch));

  // submit_wait blocks for room; waiters are served in order, and submit does not jump them.
  std::shared_ptr<RequestHandle> big, small;
  std::thread first(
      [&] { big = scheduler.submit_wait({make_seq(109, 30), make_seq(110, 30)}, {}, results.callback(6)); });
  wait_for([&] { return scheduler.stats().waiting_submitters == 1; });
  std::thread second([&] { small = scheduler.submit_wait({make_seq(111, 10)}, {}, results.callback(7)); });
  wait_for([&] { return scheduler.stats().waiting_submitters == 2; });
  EXPECT_THROW(scheduler.submit({make_seq(112, 2)}, {}, results.callback(8)), QueueFull);  // it would fit
  EXPECT_EQ(scheduler.stats().queued_tokens, 90);
  drain(scheduler);  // frees room; both waiters get in, then drain again
  first.join();
  second.join();
  EXPECT_LT(big->id(), small->id());
  drain(scheduler);

  for (int key : {0, 3, 4, 6, 7}) EXPECT_TRUE(results.only(key).error.empty()) << key;
  for (int key : {1, 2, 5, 8}) EXPECT_EQ(results.calls(key), 0u) << key;
  EXPECT_EQ(results.only(6).outputs.at(1).dense.at(0), 110.0f);
  const auto stats = scheduler.stats();
  EXPECT_EQ(stats.queued_tokens, 0);
  EXPECT_EQ(stats.queued_requests, 0u);
  EXPECT_EQ(stats.waiting_submitters, 0u);
}

TEST(Scheduler, CancelFreesQueuedTokensAndCallsBackOnce) {
  Results results;
  Scheduler scheduler(make_options(60, 50, 1000));
  auto a = scheduler.submit({make_seq(100, 20), make_seq(101, 20), make_seq(102, 20)}, {}, results.callback(0));
  EXPECT_EQ(scheduler.stats().queued_tokens, 60);
  EXPECT_TRUE(a->cancel());
  EXPECT_EQ(results.only(0).error, "cancelled");
  EXPECT_TRUE(results.only(0).outputs.empty());
  EXPECT_FALSE(a->cancel());
  EXPECT_EQ(results.calls(0), 1u);
  auto stats = scheduler.stats();
  EXPECT_EQ(stats.queued_tokens, 0);
  EXPECT_EQ(stats.queued_requests, 0u);
  EXPECT_EQ(stats.requests_cancelled, 1u);

  // In flight: B[0] runs with C while B[1] waits; cancelling B drops B[1] at once and
  // discards B[0]'s output when its batch completes.
  auto b = scheduler.submit({make_seq(200, 50), make_seq(201, 50)}, {}, results.callback(1));
  auto c = scheduler.submit({make_seq(300, 5)}, {}, results.callback(2));
  Batch batch;
  ASSERT_TRUE(scheduler.next_batch(batch));
  ASSERT_EQ(batch.items.size(), 2u);
  EXPECT_EQ(scheduler.stats().queued_tokens, 50);
  EXPECT_TRUE(b->cancel());
  EXPECT_EQ(results.only(1).error, "cancelled");
  EXPECT_EQ(scheduler.stats().queued_tokens, 0);
  EXPECT_EQ(scheduler.stats().in_flight_sequences, 2u);
  scheduler.complete(batch, compute(batch));
  EXPECT_EQ(results.calls(1), 1u);
  EXPECT_EQ(results.only(2).outputs.at(0).dense.at(0), 300.0f);
  EXPECT_FALSE(c->cancel());  // already answered
  EXPECT_EQ(results.calls(2), 1u);
  stats = scheduler.stats();
  EXPECT_EQ(stats.in_flight_sequences, 0u);
  EXPECT_EQ(stats.requests_completed, 1u);
  EXPECT_EQ(stats.requests_cancelled, 2u);
}

TEST(Scheduler, HandleOutlivesScheduler) {
  Results results;
  std::shared_ptr<RequestHandle> handle;
  {
    Scheduler scheduler(make_options(100, 50, 1000));
    handle = scheduler.submit({make_seq(100, 10)}, {}, results.callback(0));
  }  // no replica ran: the queued request is answered at destruction
  EXPECT_EQ(results.only(0).error, "shutting down");
  EXPECT_FALSE(handle->cancel());
  EXPECT_EQ(results.calls(0), 1u);
}

TEST(Scheduler, RejectsSequencesOutsideTheLimits) {
  Results results;
  Scheduler scheduler(make_options(100, 50, 1000));
  auto message = [&](Sequences sequences) -> std::string {
    try {
      scheduler.submit(std::move(sequences), {}, results.callback(0));
    } catch (const Error& e) {
      return e.what();
    }
    return "no exception";
  };
  const std::string too_long = message({make_seq(100, 10), make_seq(101, 51)});
  EXPECT_NE(too_long.find("sequence 1 has 51 tokens"), std::string::npos) << too_long;
  EXPECT_NE(too_long.find("max_seq_len 50"), std::string::npos) << too_long;
  const std::string empty = message({make_seq(100, 10), {}});
  EXPECT_NE(empty.find("sequence 1 has 0 tokens"), std::string::npos) << empty;
  EXPECT_NE(empty.find("at least 2"), std::string::npos) << empty;
  const std::string one = message({make_seq(100, 1)});
  EXPECT_NE(one.find("sequence 0 has 1 tokens"), std::string::npos) << one;
  EXPECT_NE(message({}).find("no sequences"), std::string::npos);
  const auto stats = scheduler.stats();
  EXPECT_EQ(stats.queued_tokens, 0);
  EXPECT_EQ(stats.requests_submitted, 0u);
  EXPECT_EQ(results.calls(0), 0u);

  EXPECT_THROW(Scheduler(make_options(40, 50, 1000)), Error);  // a longest sequence never fits a batch
  EXPECT_THROW(Scheduler(make_options(100, 50, 40)), Error);   // ... nor the queue
}

TEST(Scheduler, ShutdownDrainsQueuedWorkThenStops) {
  Results results;
  Scheduler scheduler(make_options(64, 32, 1000));
  for (int r = 0; r < 5; ++r)
    scheduler.submit({make_seq(100 + 3 * r, 20), make_seq(101 + 3 * r, 25), make_seq(102 + 3 * r, 30)}, {},
                     results.callback(r));
  scheduler.shutdown();
  EXPECT_THROW(scheduler.submit({make_seq(99, 5)}, {}, results.callback(9)), ShuttingDown);
  EXPECT_THROW(scheduler.submit_wait({make_seq(99, 5)}, {}, results.callback(9)), Error);
  {
    Replicas replicas(scheduler, 2);
    replicas.join();  // they return once the queue is empty
  }
  for (int r = 0; r < 5; ++r) {
    const auto& result = results.only(r);
    ASSERT_TRUE(result.error.empty());
    ASSERT_EQ(result.outputs.size(), 3u);
    for (int i = 0; i < 3; ++i) EXPECT_EQ(result.outputs[i].dense.at(0), static_cast<float>(100 + 3 * r + i));
  }
  EXPECT_EQ(results.calls(9), 0u);
  Batch batch;
  EXPECT_FALSE(scheduler.next_batch(batch));
  EXPECT_EQ(scheduler.stats().queued_tokens, 0);
}

TEST(Scheduler, ShutdownWakesBlockedSubmitters) {
  Scheduler scheduler(make_options(64, 32, 32));
  scheduler.submit({make_seq(100, 32)}, {}, [](RequestResult&&) {});
  std::atomic<bool> threw{false};
  std::thread waiter([&] {
    try {
      scheduler.submit_wait({make_seq(101, 10)}, {}, [](RequestResult&&) {});
    } catch (const ShuttingDown&) {
      threw = true;
    }
  });
  wait_for([&] { return scheduler.stats().waiting_submitters == 1; });
  scheduler.shutdown();
  waiter.join();
  EXPECT_TRUE(threw);
  drain(scheduler);
}

TEST(Scheduler, FailedBatchFailsEachRequestOnce) {
  Results results;
  Scheduler scheduler(make_options(60, 50, 1000));
  scheduler.submit({make_seq(100, 25), make_seq(101, 25), make_seq(102, 25)}, {}, results.callback(0));
  scheduler.submit({make_seq(200, 5)}, {}, results.callback(1));
  scheduler.submit({make_seq(300, 50)}, {}, results.callback(2));
  Batch batch;
  ASSERT_TRUE(scheduler.next_batch(batch));  // A0, A1 and B
  ASSERT_EQ(batch.items.size(), 3u);
  scheduler.fail(batch, "device lost");
  EXPECT_EQ(results.only(0).error, "device lost");
  EXPECT_EQ(results.only(1).error, "device lost");
  EXPECT_EQ(scheduler.stats().queued_tokens, 50);  // A2 dropped with its request; C stays
  drain(scheduler);
  EXPECT_TRUE(results.only(2).error.empty());
  EXPECT_EQ(results.calls(0), 1u);
  EXPECT_EQ(scheduler.stats().requests_failed, 2u);

  // A replica that returns the wrong number of outputs fails its batch instead of guessing.
  scheduler.submit({make_seq(400, 5)}, {}, results.callback(3));
  ASSERT_TRUE(scheduler.next_batch(batch));
  scheduler.complete(batch, {});
  EXPECT_NE(results.only(3).error.find("internal error"), std::string::npos);
  // ... and one that asks for the next batch without finishing this one.
  scheduler.submit({make_seq(500, 5)}, {}, results.callback(4));
  ASSERT_TRUE(scheduler.next_batch(batch));
  scheduler.submit({make_seq(600, 5)}, {}, results.callback(5));
  ASSERT_TRUE(scheduler.next_batch(batch));
  EXPECT_NE(results.only(4).error.find("dropped its batch"), std::string::npos);
  scheduler.complete(batch, compute(batch));
  EXPECT_TRUE(results.only(5).error.empty());
  EXPECT_EQ(scheduler.stats().in_flight_sequences, 0u);
}

TEST(Scheduler, BatchComputesTheUnionAndEachRequestGetsWhatItAsked) {
  Results results;
  Scheduler scheduler(make_options(100, 50, 1000));
  scheduler.submit({make_seq(100, 10)}, OutputRequest{true, false, false}, results.callback(0));
  scheduler.submit({make_seq(200, 10)}, OutputRequest{false, true, false}, results.callback(1));
  scheduler.submit({make_seq(300, 10)}, OutputRequest{false, false, false, true}, results.callback(2));
  Batch batch;
  ASSERT_TRUE(scheduler.next_batch(batch));
  EXPECT_TRUE(batch.outputs.dense);
  EXPECT_TRUE(batch.outputs.sparse);
  EXPECT_FALSE(batch.outputs.colbert);
  EXPECT_TRUE(batch.outputs.token_weights);
  scheduler.complete(batch, compute(batch));
  EXPECT_EQ(results.only(0).outputs.at(0).dense.size(), 1u);
  EXPECT_TRUE(results.only(0).outputs.at(0).lexical.empty());
  EXPECT_TRUE(results.only(0).outputs.at(0).token_weights.empty());
  EXPECT_TRUE(results.only(1).outputs.at(0).dense.empty());
  EXPECT_EQ(results.only(1).outputs.at(0).lexical.size(), 1u);
  EXPECT_TRUE(results.only(1).outputs.at(0).token_weights.empty());
  EXPECT_TRUE(results.only(2).outputs.at(0).dense.empty() && results.only(2).outputs.at(0).lexical.empty());
  EXPECT_EQ(results.only(2).outputs.at(0).token_weights.size(), 10u);
}

TEST(Scheduler, ManyConcurrentProducersEachAnsweredOnce) {
  constexpr int kProducers = 200;
  Scheduler scheduler(make_options(256, 64, 2000, 64, 4));  // small queue: producers wait for room
  Replicas replicas(scheduler, 3, std::chrono::microseconds(50));
  std::vector<std::atomic<int>> calls(kProducers);
  std::vector<RequestResult> answers(kProducers);
  std::atomic<int> answered{0}, run_ok{0};
  std::vector<std::thread> producers;
  auto sequences_of = [](int p) {
    Sequences sequences;
    for (int i = 0; i < 1 + p % 5; ++i) sequences.push_back(make_seq(100 + 10 * p + i, 2 + (p * 13 + i * 7) % 63));
    return sequences;
  };
  for (int p = 0; p < kProducers; ++p)
    producers.emplace_back([&, p] {
      if (p % 2 == 0) {
        const auto outputs = scheduler.run(sequences_of(p), {});
        bool ok = outputs.size() == static_cast<size_t>(1 + p % 5);
        for (size_t i = 0; ok && i < outputs.size(); ++i)
          ok = outputs[i].dense.at(0) == static_cast<float>(100 + 10 * p + static_cast<int>(i)) &&
               outputs[i].tokens == 2 + (p * 13 + static_cast<int>(i) * 7) % 63;
        if (ok) ++run_ok;
      } else {
        scheduler.submit_wait(sequences_of(p), {}, [&, p](RequestResult&& result) {
          answers[p] = std::move(result);
          ++calls[p];
          ++answered;
        });
      }
    });
  for (auto& thread : producers) thread.join();
  wait_for([&] { return answered == kProducers / 2; });
  scheduler.shutdown();
  replicas.join();
  EXPECT_EQ(run_ok.load(), kProducers / 2);
  for (int p = 1; p < kProducers; p += 2) {
    EXPECT_EQ(calls[p].load(), 1) << p;
    ASSERT_TRUE(answers[p].error.empty()) << p;
    const auto expected = sequences_of(p);
    ASSERT_EQ(answers[p].outputs.size(), expected.size()) << p;
    for (size_t i = 0; i < expected.size(); ++i) {
      EXPECT_EQ(answers[p].outputs[i].dense.at(0), static_cast<float>(expected[i][0])) << p;
      EXPECT_EQ(answers[p].outputs[i].tokens, static_cast<int64_t>(expected[i].size())) << p;
    }
  }
  const auto stats = scheduler.stats();
  EXPECT_EQ(stats.requests_completed, static_cast<uint64_t>(kProducers));
  EXPECT_EQ(stats.queued_tokens, 0);
  EXPECT_EQ(stats.in_flight_sequences, 0u);
}

// The test-only gate holds each formed batch (its sequences in flight) until released,
// and shutdown opens it, so nothing stays held when the engine stops.
TEST(Scheduler, TestGateHoldsFormedBatchesUntilReleased) {
  auto options = make_options(64, 32, 1024);
  options.test_batch_gate = true;
  Scheduler scheduler(options);
  ASSERT_NE(scheduler.test_gate(), nullptr);
  Results results;
  scheduler.submit({make_seq(10, 32), make_seq(11, 32)}, {true, false, false}, results.callback(0));
  scheduler.submit({make_seq(12, 32)}, {true, false, false}, results.callback(1));
  Replicas replicas(scheduler, 1);
  BatchGate& gate = *scheduler.test_gate();
  wait_for([&] { return gate.state().held == 1; });
  EXPECT_EQ(scheduler.stats().in_flight_sequences, 2u);  // held in flight, not queued
  EXPECT_EQ(results.calls(0), 0u);
  gate.release(1);
  wait_for([&] { return results.calls(0) == 1 && gate.state().held == 1; });  // the next batch waits
  EXPECT_EQ(results.calls(1), 0u);
  EXPECT_EQ(gate.state().passed, 1u);
  scheduler.shutdown();  // opens the gate: the held batch runs, then the replica stops
  replicas.join();
  EXPECT_TRUE(results.only(1).error.empty());
  EXPECT_TRUE(gate.state().open);
}

TEST(Scheduler, NoGateUnlessAsked) {
  Scheduler scheduler(make_options(64, 32, 1024));
  EXPECT_EQ(scheduler.test_gate(), nullptr);
}

}  // namespace
}  // namespace m3
