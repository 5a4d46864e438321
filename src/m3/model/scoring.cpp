#include "m3/model/scoring.h"

#include <limits>
#include <unordered_map>

namespace m3 {
namespace {

float dot(const float* a, const float* b, int64_t n) {
  float sum = 0.f;
  for (int64_t i = 0; i < n; ++i) sum += a[i] * b[i];
  return sum;
}

}  // namespace

float dense_score(const M3Output& q, const M3Output& p) {
  return dot(q.dense.data(), p.dense.data(), static_cast<int64_t>(q.dense.size()));
}

float lexical_matching_score(const M3Output& q, const M3Output& p) {
  std::unordered_map<int32_t, float> passage(p.lexical.begin(), p.lexical.end());
  float score = 0.f;
  for (const auto& [id, w] : q.lexical) {
    if (auto it = passage.find(id); it != passage.end()) score += w * it->second;
  }
  return score;
}

float colbert_score(const M3Output& q, const M3Output& p, int64_t hidden) {
  if (q.colbert_rows == 0 || p.colbert_rows == 0) return 0.f;
  float total = 0.f;
  for (int64_t i = 0; i < q.colbert_rows; ++i) {
    float best = -std::numeric_limits<float>::infinity();
    for (int64_t j = 0; j < p.colbert_rows; ++j) {
      best = std::max(best, dot(q.colbert.data() + i * hidden, p.colbert.data() + j * hidden, hidden));
    }
    total += best;
  }
  return total / static_cast<float>(q.colbert_rows);
}

PairScores compute_scores(const M3Output& q, const M3Output& p, int64_t hidden, const ScoreWeights& w) {
  PairScores s;
  s.dense = dense_score(q, p);
  s.sparse = lexical_matching_score(q, p);
  s.colbert = colbert_score(q, p, hidden);
  s.sparse_dense = (w.sparse * s.sparse + w.dense * s.dense) / (w.sparse + w.dense);
  s.colbert_sparse_dense =
      (w.colbert * s.colbert + w.sparse * s.sparse + w.dense * s.dense) / (w.colbert + w.sparse + w.dense);
  return s;
}

}  // namespace m3
