// PackedBatch: several tokenized sequences laid end to end with no padding; row t of
// every activation matrix belongs to the sequence whose [cu_seqlens[s], cu_seqlens[s+1])
// range holds t.
#pragma once

#include <cstdint>
#include <vector>

namespace m3 {

struct PackedBatch {
  std::vector<int32_t> token_ids;
  std::vector<int32_t> positions;   // RoBERTa position ids (see add)
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
  // Positions as transformers computes them: cumsum(ids != pad) for real tokens, and
  // pad_token_id itself for a <pad> (which a text can contain, typed literally).
  void add(const std::vector<int32_t>& ids, int32_t pad_token_id) {
    int32_t real = 0;
    for (int32_t id : ids) {
      token_ids.push_back(id);
      positions.push_back(id == pad_token_id ? pad_token_id : pad_token_id + (++real));
    }
    cu_seqlens.push_back(static_cast<int32_t>(token_ids.size()));
    if (static_cast<int32_t>(ids.size()) > max_seq_len) max_seq_len = static_cast<int32_t>(ids.size());
  }
};

}  // namespace m3
