// Relevance scores between a query's and a passage's M3 outputs, as FlagEmbedding's
// compute_score (M3-SPEC.md "Scores"); ColBERT on trimmed vectors, not the padded quirk.
#pragma once

#include <array>

#include "m3/model/m3_output.h"

namespace m3 {

struct ScoreWeights {
  float dense = 1.f, sparse = 1.f, colbert = 1.f;
};

struct PairScores {
  float dense = 0.f;
  float sparse = 0.f;
  float colbert = 0.f;
  float sparse_dense = 0.f;          // (ws*s + wd*d) / (ws + wd)
  float colbert_sparse_dense = 0.f;  // (wc*c + ws*s + wd*d) / (wc + ws + wd)
};

float dense_score(const M3Output& q, const M3Output& p);
float lexical_matching_score(const M3Output& q, const M3Output& p);
float colbert_score(const M3Output& q, const M3Output& p, int64_t hidden);
// `q` and `p` need all three outputs.
PairScores compute_scores(const M3Output& q, const M3Output& p, int64_t hidden, const ScoreWeights& weights);

}  // namespace m3
