// Scores on hand-made outputs, worked out by hand.
#include <gtest/gtest.h>

#include "m3/model/scoring.h"

namespace m3 {
namespace {

M3Output make(std::vector<float> dense, std::vector<std::pair<int32_t, float>> lexical, std::vector<float> colbert,
              int64_t rows) {
  M3Output o;
  o.dense = std::move(dense);
  o.lexical = std::move(lexical);
  o.colbert = std::move(colbert);
  o.colbert_rows = rows;
  return o;
}

TEST(Scoring, DenseIsDotProduct) {
  const auto q = make({0.6f, 0.8f}, {}, {}, 0);
  const auto p = make({1.f, 0.f}, {}, {}, 0);
  EXPECT_FLOAT_EQ(dense_score(q, p), 0.6f);
}

TEST(Scoring, LexicalSumsSharedIdsOnly) {
  const auto q = make({}, {{10, 0.5f}, {20, 0.25f}, {30, 1.f}}, {}, 0);
  const auto p = make({}, {{20, 2.f}, {10, 4.f}, {40, 9.f}}, {}, 0);
  EXPECT_FLOAT_EQ(lexical_matching_score(q, p), 0.5f * 4.f + 0.25f * 2.f);
  EXPECT_FLOAT_EQ(lexical_matching_score(q, make({}, {}, {}, 0)), 0.f);
}

TEST(Scoring, ColbertAveragesMaxOverQueryVectors) {
  // Query rows (1,0) and (0,1); passage rows (0.6,0.8) and (-1,0).
  const auto q = make({}, {}, {1, 0, 0, 1}, 2);
  const auto p = make({}, {}, {0.6f, 0.8f, -1, 0}, 2);
  EXPECT_FLOAT_EQ(colbert_score(q, p, 2), (0.6f + 0.8f) / 2);
  // All similarities negative: the max is negative (no padding row at 0 wins).
  const auto neg = make({}, {}, {-1, 0}, 1);
  EXPECT_FLOAT_EQ(colbert_score(make({}, {}, {1, 0}, 1), neg, 2), -1.f);
}

TEST(Scoring, CombinationsUseWeights) {
  const auto q = make({1.f, 0.f}, {{5, 1.f}}, {1, 0}, 1);
  const auto p = make({0.5f, 0.5f}, {{5, 0.2f}}, {0, 1}, 1);
  const auto s = compute_scores(q, p, 2, {0.4f, 0.2f, 0.4f});
  EXPECT_FLOAT_EQ(s.dense, 0.5f);
  EXPECT_FLOAT_EQ(s.sparse, 0.2f);
  EXPECT_FLOAT_EQ(s.colbert, 0.f);
  EXPECT_FLOAT_EQ(s.sparse_dense, (0.2f * 0.2f + 0.4f * 0.5f) / 0.6f);
  EXPECT_FLOAT_EQ(s.colbert_sparse_dense, (0.4f * 0.f + 0.2f * 0.2f + 0.4f * 0.5f) / 1.0f);
}

}  // namespace
}  // namespace m3
