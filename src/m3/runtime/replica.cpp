#include "m3/runtime/replica.h"

#include <algorithm>

namespace m3 {

std::vector<PackedBatch> warmup_batches(int64_t max_seq_len, int64_t max_batch_tokens, int32_t pad_token_id) {
  auto sequence = [](int64_t len) {
    std::vector<int32_t> ids(static_cast<size_t>(len), 5);  // any id inside the vocabulary
    ids.front() = 0;
    ids.back() = 2;
    return ids;
  };
  std::vector<PackedBatch> batches(2);
  batches[0].add(sequence(max_seq_len), pad_token_id);
  PackedBatch& many = batches[1];
  const int64_t short_len = std::min<int64_t>(max_seq_len, 64);
  while (many.tokens() + short_len <= max_batch_tokens) many.add(sequence(short_len), pad_token_id);
  if (many.tokens() < max_batch_tokens && max_batch_tokens - many.tokens() >= 2) {
    many.add(sequence(max_batch_tokens - many.tokens()), pad_token_id);
  }
  return batches;
}

}  // namespace m3
