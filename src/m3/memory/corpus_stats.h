// Corpus statistics for capacity planning: pure functions over the token lengths of a
// corpus (after truncation). They answer what `m3embed plan --corpus` reports: how long
// the texts are, how much padding FlagEmbedding's fixed-size batches would compute, and
// how many forward passes m3embed's token-budget packing needs instead.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

namespace m3 {

// Nearest-rank percentiles: the smallest length L such that at least p% of the texts
// have length <= L (index ceil(p * n / 100) - 1 of the sorted lengths). 0 for no texts.
struct LengthPercentiles {
  int64_t p50 = 0, p90 = 0, p95 = 0, p99 = 0, p999 = 0;  // p999 is p99.9
};

// Power-of-two bucket: lengths in [min_len, max_len]: 1-2, 3-4, 5-8, ..., 4097-8192.
// (A length of 0 counts in the first bucket.)
struct LengthBucket {
  int64_t min_len = 0, max_len = 0;
  int64_t texts = 0;   // how many texts fall in the bucket
  int64_t tokens = 0;  // the sum of their lengths
};

struct LengthStats {
  int64_t count = 0;         // texts
  int64_t total_tokens = 0;  // sum of lengths
  int64_t min = 0, max = 0;  // 0 for no texts
  double mean = 0;
  LengthPercentiles percentiles;
  std::vector<LengthBucket> histogram;  // every bucket up to 4097-8192, more if a length is longer
};

// What fixed-size batches padded to their longest text cost.
struct PaddedBatching {
  int64_t batch_size = 0;
  int64_t batches = 0;
  int64_t real_tokens = 0;           // sum of lengths
  int64_t padded_tokens = 0;         // sum over batches of (texts in batch) x (longest in batch)
  int64_t largest_batch_tokens = 0;  // the most padded tokens in one batch
  // (padded - real) / padded; 0 for no tokens.
  double waste_fraction() const;
};

// m3embed's packing: longest first, texts added to the current pass while its tokens stay
// within max_batch_tokens (greedy, in order, as Embedder::encode does), no padding.
struct TokenBudgetPacking {
  int64_t max_batch_tokens = 0;
  int64_t passes = 0;
  int64_t tokens = 0;  // sum of lengths: every token computed is real
  // tokens / (passes x max_batch_tokens); 0 for no passes.
  double fill_fraction() const;
};

struct CorpusStats {
  LengthStats lengths;
  PaddedBatching reference_sorted;    // FlagEmbedding: sorted longest first, then batched
  PaddedBatching reference_unsorted;  // the same batch size in input order, for comparison
  TokenBudgetPacking m3embed;
};

// Buckets of the histogram: 0 for lengths <= 2, then k for 2^k < length <= 2^(k+1).
int64_t length_bucket_index(int64_t length);

// Throws m3::Error on a negative length.
LengthStats length_stats(std::span<const int64_t> lengths);

// Batches of `batch_size` texts (the last may be smaller), each padded to its longest.
// `sort_longest_first` batches the lengths sorted in decreasing order, as FlagEmbedding's
// encode does; otherwise in the order given. Throws m3::Error when batch_size < 1.
PaddedBatching padded_batching(std::span<const int64_t> lengths, int64_t batch_size, bool sort_longest_first);

// Throws m3::Error when max_batch_tokens < 1 or a length exceeds it.
TokenBudgetPacking token_budget_packing(std::span<const int64_t> lengths, int64_t max_batch_tokens);

CorpusStats corpus_stats(std::span<const int64_t> lengths, int64_t reference_batch_size, int64_t max_batch_tokens);

}  // namespace m3
