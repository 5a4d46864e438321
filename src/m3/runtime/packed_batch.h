// PackedBatch: several tokenized sequences laid end to end with no padding; row t of
// every activation matrix belongs to the sequence whose [cu_seqlens[s], cu_seqlens[s+1])
// range holds t.
#pragma once

#include <cstdint>
#include <vector>

namespace m3 {

struct PackedBatch {
  std::vector<int32_t> token_ids;
  std::vector<int32_t> positions;   // RoBERTa position ids: pad_token_id + 1 + index in sequence
  std::vector<int32_t> cu_seqlens{0};
  int32_t max_seq_len = 0;

  int64_t tokens() const { return static_cast<int64_t>(token_ids.size()); }
  int32_t sequences() const { return static_cast<int32_t>(cu_seqlens.size()) - 1; }
  int32_t seq_begin(int32_t s) const { return cu_seqlens[s]; }
  int32_t seq_len(int32_t s) const { return cu_seqlens[s + 1] - cu_seqlens[s]; }

  void clear() {
    token_ids.clear();
    positions.clear();
    cu_seqlens.assign(1, 0);
    max_seq_len = 0;
  }
  void add(const std::vector<int32_t>& ids, int32_t pad_token_id) {
    for (size_t i = 0; i < ids.size(); ++i) {
      token_ids.push_back(ids[i]);
      positions.push_back(pad_token_id + 1 + static_cast<int32_t>(i));
    }
    cu_seqlens.push_back(static_cast<int32_t>(token_ids.size()));
    if (static_cast<int32_t>(ids.size()) > max_seq_len) max_seq_len = static_cast<int32_t>(ids.size());
  }
};

}  // namespace m3
