// What BGE-M3 returns for one text, and which of the three outputs are wanted; and what a
// sequence classifier (a reranker) returns for one pair: its logits.
#pragma once

#include <cstdint>
#include <utility>
#include <vector>

namespace m3 {

struct OutputRequest {
  bool dense = true;
  bool sparse = false;
  bool colbert = false;
  // relu(sparse_linear(h)) at every position, before the per-id maximum (vLLM's
  // token_classify); needs the sparse head, like `sparse`.
  bool token_weights = false;
  bool scores = false;  // a classifier's logits (the model must be one)
};

struct M3Output {
  std::vector<float> dense;  // [hidden], L2-normalized CLS state; empty when not requested
  float dense_norm = 0.f;    // the CLS state's L2 norm: dense * dense_norm is the raw CLS state
  // token id -> max relu weight over its positions, in order of first occurrence (as the
  // reference's dict); specials and non-positive weights dropped.
  std::vector<std::pair<int32_t, float>> lexical;
  std::vector<float> colbert;  // [colbert_rows, hidden], each row L2-normalized
  int64_t colbert_rows = 0;
  // [tokens]: the per-position sparse weights, <s> and </s> included; only with
  // OutputRequest::token_weights.
  std::vector<float> token_weights;
  std::vector<float> scores;  // [labels]: a classifier's logits, before any sigmoid
  int64_t tokens = 0;  // sequence length fed to the model, specials included
  bool truncated = false;
};

// An M3Output's data wherever it is stored (a vector, the encode output buffer).
struct ResultView {
  const float* dense = nullptr;
  int64_t dense_size = 0;
  const std::pair<int32_t, float>* lexical = nullptr;
  int64_t lexical_size = 0;
  const float* colbert = nullptr;  // [colbert_rows, hidden]
  int64_t colbert_rows = 0;
  int64_t tokens = 0;
};

inline ResultView view_of(const M3Output& o) {
  return {o.dense.data(), static_cast<int64_t>(o.dense.size()), o.lexical.data(),
          static_cast<int64_t>(o.lexical.size()), o.colbert.data(), o.colbert_rows, o.tokens};
}

}  // namespace m3
