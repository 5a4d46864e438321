#include "m3/memory/corpus_stats.h"

#include <algorithm>
#include <bit>
#include <functional>

#include "m3/core/error.h"

namespace m3 {
namespace {

constexpr int64_t kHistogramUpTo = 8192;  // buckets always reach 4097-8192

// Index ceil(permille * n / 1000) - 1 of the sorted lengths, in integers (no rounding).
int64_t nearest_rank(const std::vector<int64_t>& sorted, int64_t permille) {
  const auto n = static_cast<int64_t>(sorted.size());
  const int64_t rank = std::max<int64_t>(1, (permille * n + 999) / 1000);
  return sorted[static_cast<size_t>(rank - 1)];
}

}  // namespace

double PaddedBatching::waste_fraction() const {
  return padded_tokens > 0 ? static_cast<double>(padded_tokens - real_tokens) / static_cast<double>(padded_tokens)
                           : 0.0;
}

double TokenBudgetPacking::fill_fraction() const {
  return passes > 0 ? static_cast<double>(tokens) / (static_cast<double>(passes) * static_cast<double>(max_batch_tokens))
                    : 0.0;
}

int64_t length_bucket_index(int64_t length) {
  if (length <= 2) return 0;
  return static_cast<int64_t>(std::bit_width(static_cast<uint64_t>(length - 1))) - 1;
}

LengthStats length_stats(std::span<const int64_t> lengths) {
  LengthStats s;
  std::vector<int64_t> sorted(lengths.begin(), lengths.end());
  std::sort(sorted.begin(), sorted.end());
  if (!sorted.empty() && sorted.front() < 0) fail("a token length cannot be negative ({})", sorted.front());

  s.count = static_cast<int64_t>(sorted.size());
  for (int64_t len : sorted) s.total_tokens += len;
  const int64_t longest = sorted.empty() ? 0 : sorted.back();
  const int64_t buckets = length_bucket_index(std::max(longest, kHistogramUpTo)) + 1;
  for (int64_t k = 0; k < buckets; ++k) {
    s.histogram.push_back({k == 0 ? 1 : (int64_t{1} << k) + 1, int64_t{1} << (k + 1), 0, 0});
  }
  for (int64_t len : sorted) {
    auto& bucket = s.histogram[static_cast<size_t>(length_bucket_index(len))];
    ++bucket.texts;
    bucket.tokens += len;
  }
  if (sorted.empty()) return s;

  s.min = sorted.front();
  s.max = longest;
  s.mean = static_cast<double>(s.total_tokens) / static_cast<double>(s.count);
  s.percentiles = {nearest_rank(sorted, 500), nearest_rank(sorted, 900), nearest_rank(sorted, 950),
                   nearest_rank(sorted, 990), nearest_rank(sorted, 999)};
  return s;
}

PaddedBatching padded_batching(std::span<const int64_t> lengths, int64_t batch_size, bool sort_longest_first) {
  if (batch_size < 1) fail("batch size must be at least 1, got {}", batch_size);
  std::vector<int64_t> order(lengths.begin(), lengths.end());
  if (sort_longest_first) std::stable_sort(order.begin(), order.end(), std::greater<>());

  PaddedBatching b;
  b.batch_size = batch_size;
  for (size_t first = 0; first < order.size(); first += static_cast<size_t>(batch_size)) {
    const size_t last = std::min(order.size(), first + static_cast<size_t>(batch_size));
    int64_t longest = 0;
    for (size_t i = first; i < last; ++i) {
      longest = std::max(longest, order[i]);
      b.real_tokens += order[i];
    }
    const int64_t padded = static_cast<int64_t>(last - first) * longest;
    b.padded_tokens += padded;
    b.largest_batch_tokens = std::max(b.largest_batch_tokens, padded);
    ++b.batches;
  }
  return b;
}

TokenBudgetPacking token_budget_packing(std::span<const int64_t> lengths, int64_t max_batch_tokens) {
  if (max_batch_tokens < 1) fail("max batch tokens must be at least 1, got {}", max_batch_tokens);
  std::vector<int64_t> order(lengths.begin(), lengths.end());
  std::stable_sort(order.begin(), order.end(), std::greater<>());

  TokenBudgetPacking p;
  p.max_batch_tokens = max_batch_tokens;
  if (!order.empty() && order.front() > max_batch_tokens) {
    fail("a text of {} tokens does not fit a pass of {} tokens", order.front(), max_batch_tokens);
  }
  int64_t in_pass = 0;
  for (size_t i = 0; i < order.size(); ++i) {
    // A new pass starts with the first text and whenever the next one would overflow.
    if (i == 0 || in_pass + order[i] > max_batch_tokens) {
      ++p.passes;
      in_pass = 0;
    }
    in_pass += order[i];
    p.tokens += order[i];
  }
  return p;
}

CorpusStats corpus_stats(std::span<const int64_t> lengths, int64_t reference_batch_size, int64_t max_batch_tokens) {
  CorpusStats c;
  c.lengths = length_stats(lengths);
  c.reference_sorted = padded_batching(lengths, reference_batch_size, true);
  c.reference_unsorted = padded_batching(lengths, reference_batch_size, false);
  c.m3embed = token_budget_packing(lengths, max_batch_tokens);
  return c;
}

}  // namespace m3
