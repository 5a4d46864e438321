// The encode output buffer: ByteRing's FIFO regions (wrapping, full, empty) and
// OrderedResults' in-order delivery, backpressure and failure paths. Waiting is observed
// through the buffer's own counters, never through time.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <thread>

#include "m3/core/error.h"
#include "m3/memory/byte_ring.h"
#include "m3/runtime/ordered_results.h"

namespace m3 {
namespace {

TEST(ByteRing, HandsOutAlignedRegionsInOrderAndWraps) {
  ByteRing ring(1024);
  EXPECT_EQ(ring.acquire(100), 0u);    // [0, 128)
  EXPECT_EQ(ring.acquire(500), 128u);  // [128, 640)
  EXPECT_EQ(ring.acquire(300), 640u);  // [640, 960)
  EXPECT_EQ(ring.used(), 960u);
  EXPECT_FALSE(ring.acquire(128));     // 64 left at the end, nothing free at the start
  ring.release_oldest();               // frees [0, 128)
  EXPECT_EQ(ring.acquire(100), 0u);    // skips the 64-byte tail, wraps to 0
  EXPECT_EQ(ring.used(), 960u - 128 + 64 + 128);
  EXPECT_FALSE(ring.acquire(1));       // wrapped: [128, 640) is still live
  ring.release_oldest();               // [128, 640)
  ring.release_oldest();               // [640, 960)
  EXPECT_EQ(ring.used(), 64u + 128);   // the wrapped region and its skipped tail
  ring.release_oldest();
  EXPECT_EQ(ring.used(), 0u);
  EXPECT_EQ(ring.acquire(1024), 0u);   // empty again: the whole ring in one region
  EXPECT_FALSE(ring.fits_ever(1025));
}

TEST(ByteRing, NeverHandsOutOverlappingRegions) {
  ByteRing ring(4096);
  std::vector<std::pair<uint64_t, uint64_t>> live;  // [start, end), oldest first
  uint32_t state = 1;
  for (int step = 0; step < 20000; ++step) {
    state = state * 1103515245u + 12345u;
    const uint64_t size = 1 + (state >> 8) % 1500;
    if (auto at = ring.acquire(size)) {
      const uint64_t end = *at + ByteRing::align(size);
      ASSERT_LE(end, 4096u);
      for (const auto& [s, e] : live) ASSERT_TRUE(end <= s || *at >= e) << "overlap at step " << step;
      live.emplace_back(*at, end);
    } else {
      ASSERT_FALSE(live.empty()) << "an empty ring refused " << size << " bytes";
      ring.release_oldest();
      live.erase(live.begin());
    }
  }
}

M3Output output_with(float tag, int64_t rows, int64_t hidden) {
  M3Output o;
  o.dense.assign(static_cast<size_t>(hidden), tag);
  o.lexical = {{static_cast<int32_t>(tag), tag}};
  o.colbert.assign(static_cast<size_t>(rows * hidden), tag);
  o.colbert_rows = rows;
  o.tokens = rows + 1;
  return o;
}

const OutputRequest kAll{true, true, true};

TEST(OrderedResults, WritesInInputOrderWhateverTheCompletionOrder) {
  OrderedResults results(1 << 20);
  const uint64_t bytes = OrderedResults::bytes_for(8, 16, kAll);
  for (int i = 0; i < 5; ++i) EXPECT_EQ(results.reserve(bytes), static_cast<uint64_t>(i));
  for (int i : {3, 1, 4, 0, 2}) results.deliver(i, output_with(static_cast<float>(i), 7, 16));
  results.close();
  for (int i = 0; i < 5; ++i) {
    auto view = results.next();
    ASSERT_TRUE(view);
    EXPECT_EQ(view->dense[0], static_cast<float>(i));
    EXPECT_EQ(view->colbert_rows, 7);
    EXPECT_EQ(view->colbert[7 * 16 - 1], static_cast<float>(i));
    EXPECT_EQ(view->lexical_size, 1);
    results.pop();
  }
  EXPECT_FALSE(results.next());
}

TEST(OrderedResults, ReserveWaitsForTheWriterWhenFull) {
  const uint64_t bytes = OrderedResults::bytes_for(100, 64, kAll);
  OrderedResults results(3 * bytes);
  for (int i = 0; i < 3; ++i) results.reserve(bytes);
  EXPECT_EQ(results.peak_used(), 3 * bytes);
  uint64_t fourth = 0;
  std::thread producer([&] { fourth = results.reserve(bytes); });
  while (results.waiting_producers() == 0) std::this_thread::yield();  // blocked, as it must be
  results.deliver(0, output_with(0, 99, 64));
  ASSERT_TRUE(results.next());
  results.pop();  // frees the oldest room: the producer goes on
  producer.join();
  EXPECT_EQ(fourth, 3u);
  EXPECT_LE(results.peak_used(), 3 * bytes);
  for (int i = 1; i < 4; ++i) results.fail(i, "not needed");
}

TEST(OrderedResults, RefusesAResultLargerThanTheBuffer) {
  OrderedResults results(4096);
  EXPECT_THAT([&] { results.reserve(8192); },
              testing::ThrowsMessage<Error>(testing::HasSubstr("--output-memory")));
}

TEST(OrderedResults, AFailedResultStopsTheWriterWithItsError) {
  OrderedResults results(1 << 16);
  results.reserve(64);
  results.reserve(64);
  results.deliver(1, output_with(1, 0, 4));
  results.fail(0, "sequence 0 failed");
  EXPECT_THAT([&] { results.next(); }, testing::ThrowsMessage<Error>(testing::HasSubstr("sequence 0 failed")));
}

TEST(OrderedResults, AbortReleasesAWaitingProducer) {
  const uint64_t bytes = 4096;
  OrderedResults results(bytes);
  results.reserve(bytes);
  std::string error;
  std::thread producer([&] {
    try {
      results.reserve(bytes);
    } catch (const Error& e) {
      error = e.what();
    }
  });
  while (results.waiting_producers() == 0) std::this_thread::yield();
  results.abort("disk full");
  producer.join();
  EXPECT_EQ(error, "disk full");
  results.fail(0, "aborted");  // the destructor waits for every reserved result
}

TEST(OrderedResults, ReservesEnoughForAnyOutputOfTheSequence) {
  // A result is never larger than bytes_for of its sequence: dense, a pair per token, a row per token.
  for (int64_t tokens : {2, 3, 64, 1000}) {
    OrderedResults results(1 << 24);
    results.reserve(OrderedResults::bytes_for(tokens, 48, kAll));
    M3Output o = output_with(1, tokens, 48);
    o.lexical.assign(static_cast<size_t>(tokens), {5, 1.0f});
    results.deliver(0, o);
    ASSERT_TRUE(results.next()) << tokens;  // no "reserved" internal error
    results.pop();
  }
}

}  // namespace
}  // namespace m3
