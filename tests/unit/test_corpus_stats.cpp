// corpus_stats: length statistics, padding of fixed-size batches and token-budget passes,
// checked against examples worked out by hand.
#include <gtest/gtest.h>

#include <algorithm>
#include <numeric>
#include <vector>

#include "m3/core/error.h"
#include "m3/memory/corpus_stats.h"

namespace m3 {
namespace {

// Sorted: 1 2 3 3 5 7 9 12; sum 42.
const std::vector<int64_t> kLengths = {5, 1, 9, 3, 3, 12, 2, 7};

TEST(CorpusStats, CountsMinMaxMeanOfAHandExample) {
  const auto s = length_stats(kLengths);
  EXPECT_EQ(s.count, 8);
  EXPECT_EQ(s.total_tokens, 42);
  EXPECT_EQ(s.min, 1);
  EXPECT_EQ(s.max, 12);
  EXPECT_DOUBLE_EQ(s.mean, 5.25);
  // Nearest rank: p50 is the 4th of 8 (ceil(4.0)), p90 the 8th (ceil(7.2)).
  EXPECT_EQ(s.percentiles.p50, 3);
  EXPECT_EQ(s.percentiles.p90, 12);
  EXPECT_EQ(s.percentiles.p99, 12);
  EXPECT_EQ(s.percentiles.p999, 12);
}

TEST(CorpusStats, PercentilesAreNearestRank) {
  std::vector<int64_t> thousand(1000);
  std::iota(thousand.begin(), thousand.end(), 1);  // 1..1000
  std::reverse(thousand.begin(), thousand.end());  // order must not matter
  const auto p = length_stats(thousand).percentiles;
  EXPECT_EQ(p.p50, 500);
  EXPECT_EQ(p.p90, 900);
  EXPECT_EQ(p.p95, 950);
  EXPECT_EQ(p.p99, 990);
  EXPECT_EQ(p.p999, 999);

  const std::vector<int64_t> ten = {10, 9, 8, 7, 6, 5, 4, 3, 2, 1};
  const auto q = length_stats(ten).percentiles;
  EXPECT_EQ(q.p50, 5);   // rank 5
  EXPECT_EQ(q.p90, 9);   // rank 9
  EXPECT_EQ(q.p95, 10);  // rank ceil(9.5) = 10
  EXPECT_EQ(q.p999, 10);

  const std::vector<int64_t> one = {7};
  const auto r = length_stats(one).percentiles;
  EXPECT_EQ(r.p50, 7);
  EXPECT_EQ(r.p999, 7);
}

TEST(CorpusStats, BucketsArePowersOfTwo) {
  EXPECT_EQ(length_bucket_index(0), 0);
  EXPECT_EQ(length_bucket_index(1), 0);
  EXPECT_EQ(length_bucket_index(2), 0);
  EXPECT_EQ(length_bucket_index(3), 1);
  EXPECT_EQ(length_bucket_index(4), 1);
  EXPECT_EQ(length_bucket_index(5), 2);
  EXPECT_EQ(length_bucket_index(8), 2);
  EXPECT_EQ(length_bucket_index(9), 3);
  EXPECT_EQ(length_bucket_index(4096), 11);
  EXPECT_EQ(length_bucket_index(4097), 12);
  EXPECT_EQ(length_bucket_index(8192), 12);
  EXPECT_EQ(length_bucket_index(8193), 13);
}

TEST(CorpusStats, HistogramCountsTextsAndTokensPerBucket) {
  const auto h = length_stats(kLengths).histogram;
  ASSERT_EQ(h.size(), 13u);  // 1-2 .. 4097-8192
  EXPECT_EQ(h[0].min_len, 1);
  EXPECT_EQ(h[0].max_len, 2);
  EXPECT_EQ(h[1].min_len, 3);
  EXPECT_EQ(h[1].max_len, 4);
  EXPECT_EQ(h[2].min_len, 5);
  EXPECT_EQ(h[2].max_len, 8);
  EXPECT_EQ(h[12].min_len, 4097);
  EXPECT_EQ(h[12].max_len, 8192);
  // {1, 2} {3, 3} {5, 7} {9, 12}
  EXPECT_EQ(h[0].texts, 2);
  EXPECT_EQ(h[0].tokens, 3);
  EXPECT_EQ(h[1].texts, 2);
  EXPECT_EQ(h[1].tokens, 6);
  EXPECT_EQ(h[2].texts, 2);
  EXPECT_EQ(h[2].tokens, 12);
  EXPECT_EQ(h[3].texts, 2);
  EXPECT_EQ(h[3].tokens, 21);
  for (size_t k = 4; k < h.size(); ++k) EXPECT_EQ(h[k].texts, 0) << k;

  // A length past 8192 adds buckets up to its own.
  const std::vector<int64_t> long_one = {8193, 3};
  const auto g = length_stats(long_one).histogram;
  ASSERT_EQ(g.size(), 14u);
  EXPECT_EQ(g[13].min_len, 8193);
  EXPECT_EQ(g[13].max_len, 16384);
  EXPECT_EQ(g[13].texts, 1);
  EXPECT_EQ(g[13].tokens, 8193);
}

TEST(CorpusStats, SortedBatchesArePaddedToTheirLongest) {
  // Longest first, batches of 3: {12 9 7} {5 3 3} {2 1} -> 3*12 + 3*5 + 2*2 = 55.
  const auto b = padded_batching(kLengths, 3, true);
  EXPECT_EQ(b.batch_size, 3);
  EXPECT_EQ(b.batches, 3);
  EXPECT_EQ(b.real_tokens, 42);
  EXPECT_EQ(b.padded_tokens, 55);
  EXPECT_EQ(b.largest_batch_tokens, 36);
  EXPECT_DOUBLE_EQ(b.waste_fraction(), 13.0 / 55.0);
}

TEST(CorpusStats, UnsortedBatchesWasteMore) {
  // Input order, batches of 3: {5 1 9} {3 3 12} {2 7} -> 27 + 36 + 14 = 77.
  const auto b = padded_batching(kLengths, 3, false);
  EXPECT_EQ(b.batches, 3);
  EXPECT_EQ(b.real_tokens, 42);
  EXPECT_EQ(b.padded_tokens, 77);
  EXPECT_EQ(b.largest_batch_tokens, 36);
  EXPECT_DOUBLE_EQ(b.waste_fraction(), 35.0 / 77.0);

  // One batch holding everything pads all 8 to 12, in either order.
  EXPECT_EQ(padded_batching(kLengths, 256, false).padded_tokens, 96);
  EXPECT_EQ(padded_batching(kLengths, 256, true).padded_tokens, 96);
  EXPECT_EQ(padded_batching(kLengths, 256, true).batches, 1);
  // Batches of one are never padded.
  EXPECT_EQ(padded_batching(kLengths, 1, false).padded_tokens, 42);
  EXPECT_EQ(padded_batching(kLengths, 1, false).batches, 8);
  EXPECT_DOUBLE_EQ(padded_batching(kLengths, 1, false).waste_fraction(), 0.0);
}

TEST(CorpusStats, TokenBudgetPackingIsGreedyLongestFirst) {
  // Budget 16, longest first: {12} {9 7} {5 3 3 2 1}.
  const auto p = token_budget_packing(kLengths, 16);
  EXPECT_EQ(p.passes, 3);
  EXPECT_EQ(p.tokens, 42);
  EXPECT_EQ(p.max_batch_tokens, 16);
  EXPECT_DOUBLE_EQ(p.fill_fraction(), 42.0 / 48.0);
  // Budget 12: {12} {9} {7 5} {3 3 2 1}.
  EXPECT_EQ(token_budget_packing(kLengths, 12).passes, 4);
  EXPECT_EQ(token_budget_packing(kLengths, 42).passes, 1);
  // In order, not first-fit: {6} {5 5} {4} although {6 4} {5 5} would fit in two.
  const std::vector<int64_t> lengths = {4, 5, 6, 5};
  EXPECT_EQ(token_budget_packing(lengths, 10).passes, 3);
  // A text longer than the budget cannot be packed.
  EXPECT_THROW(token_budget_packing(kLengths, 11), Error);
}

TEST(CorpusStats, CorpusStatsCombinesTheParts) {
  const auto c = corpus_stats(kLengths, 3, 16);
  EXPECT_EQ(c.lengths.total_tokens, 42);
  EXPECT_EQ(c.reference_sorted.padded_tokens, 55);
  EXPECT_EQ(c.reference_unsorted.padded_tokens, 77);
  EXPECT_EQ(c.m3embed.passes, 3);
}

TEST(CorpusStats, EmptyCorpusIsAllZeros) {
  const std::vector<int64_t> none;
  const auto c = corpus_stats(none, 256, 16384);
  EXPECT_EQ(c.lengths.count, 0);
  EXPECT_EQ(c.lengths.max, 0);
  EXPECT_EQ(c.lengths.percentiles.p50, 0);
  EXPECT_DOUBLE_EQ(c.lengths.mean, 0.0);
  EXPECT_EQ(c.lengths.histogram.size(), 13u);
  EXPECT_EQ(c.reference_sorted.batches, 0);
  EXPECT_DOUBLE_EQ(c.reference_sorted.waste_fraction(), 0.0);
  EXPECT_EQ(c.m3embed.passes, 0);
  EXPECT_DOUBLE_EQ(c.m3embed.fill_fraction(), 0.0);
}

TEST(CorpusStats, RejectsBadInputs) {
  const std::vector<int64_t> negative = {3, -1};
  EXPECT_THROW(length_stats(negative), Error);
  EXPECT_THROW(padded_batching(kLengths, 0, true), Error);
  EXPECT_THROW(token_budget_packing(kLengths, 0), Error);
}

}  // namespace
}  // namespace m3
