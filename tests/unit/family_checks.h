// The reranker (tiny-reranker) and mean-pooling (tiny-e5) fixtures against the goldens of
// the reference libraries (tests/fixtures/xlmr_families.py): FlagEmbedding's FlagReranker,
// sentence-transformers' CrossEncoder and SentenceTransformer. Shared by the CPU tests and
// the CUDA ones (emulated here, native on a GPU), each with its own tolerance.
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "m3/runtime/embedder.h"
#include "test_support.h"

namespace m3::test {

inline std::vector<int32_t> ids_of(simdjson::dom::element list) {
  std::vector<int32_t> ids;
  for (auto id : list.get_array()) ids.push_back(static_cast<int32_t>(int64_t(id)));
  return ids;
}

struct FamilyTolerance {
  double score = 1e-4;   // logits, as the reference computes them in float32
  double vector = 1e-5;  // unit vectors
  double pooled = 1e-4;  // the mean-pooled rows before normalization
};

// FlagReranker's id-level pairs (the rule its transformers 4 path runs, which m3embed
// follows; see tests/fixtures/README.md) and their logits, at max_length 128 and 32; the
// sigmoid and CrossEncoder's scores where the libraries fed the same ids.
inline void check_reranker(Embedder& reranker, const FamilyTolerance& tol) {
  simdjson::dom::parser parser;
  const auto root = parser.load((fixtures() / "golden" / "tiny-reranker.json").string()).value();
  auto pairs = root["pairs"].get_array();
  for (const char* run : {"flag_reranker", "flag_reranker_short"}) {
    const auto golden = root[run];
    const auto max_length = int64_t(golden["max_length"]);
    const auto query_max = int64_t(golden["query_max_length"]);
    std::vector<std::vector<int32_t>> sequences;
    for (auto pair : pairs) {
      auto both = pair.get_array();
      sequences.push_back(
          reranker.tokenize_pair(std::string_view(both.at(0)), std::string_view(both.at(1)), max_length, query_max));
    }
    const auto outputs = reranker.encode(sequences, OutputRequest{.dense = false, .scores = true});
    auto want_ids = golden["input_ids_ids_level"].get_array();
    auto want_scores = golden["scores_ids_level"].get_array();
    auto differs = golden["ids_level_differs"].get_array();
    auto normalized = golden["scores_normalized"].get_array();
    ASSERT_EQ(outputs.size(), want_ids.size());
    for (size_t i = 0; i < outputs.size(); ++i) {
      EXPECT_EQ(sequences[i], ids_of(want_ids.at(i))) << run << " pair " << i;
      ASSERT_EQ(outputs[i].scores.size(), 1u);
      const double logit = outputs[i].scores[0], want = double(want_scores.at(i));
      EXPECT_NEAR(logit, want, tol.score * std::max(1.0, std::abs(want))) << run << " pair " << i;
      if (!bool(differs.at(i))) {
        EXPECT_NEAR(1.0 / (1.0 + std::exp(-logit)), double(normalized.at(i)), tol.score) << run << " pair " << i;
      }
    }
  }
  // CrossEncoder truncates longest-first, so it agrees wherever nothing was cut.
  const auto cross = root["cross_encoder"];
  auto cross_ids = cross["input_ids"].get_array();
  auto logits = cross["logits"].get_array();
  size_t same = 0, i = 0;
  for (auto pair : pairs) {
    auto both = pair.get_array();
    bool cut = false;
    const auto ids = reranker.tokenize_pair(std::string_view(both.at(0)), std::string_view(both.at(1)),
                                            int64_t(cross["max_length"]), 0, &cut);
    if (!cut && ids == ids_of(cross_ids.at(i))) {
      const auto out = reranker.encode({ids}, OutputRequest{.dense = false, .scores = true});
      const double want = double(logits.at(i));
      EXPECT_NEAR(out[0].scores[0], want, tol.score * std::max(1.0, std::abs(want))) << "CrossEncoder pair " << i;
      ++same;
    }
    ++i;
  }
  EXPECT_GE(same, 8u);  // most pairs fit uncut
}

// SentenceTransformer's mean-pooled, normalized embeddings, truncated at its max_seq_length;
// dense * norm gives the mean-pooled rows back.
inline void check_mean_pooling(Embedder& embedder, const FamilyTolerance& tol) {
  simdjson::dom::parser parser;
  const auto root = parser.load((fixtures() / "golden" / "tiny-e5.json").string()).value();
  EXPECT_EQ(embedder.max_seq_len(), int64_t(root["max_seq_length"]));
  EXPECT_EQ(embedder.pooling().pooling, Pooling::kMean);
  EXPECT_TRUE(embedder.pooling().normalize);
  std::vector<std::vector<int32_t>> sequences;
  for (auto text : root["texts"].get_array()) sequences.push_back(embedder.tokenize(std::string_view(text), 0));
  const auto outputs = embedder.encode(sequences, OutputRequest{});
  auto ids = root["input_ids"].get_array();
  auto embeddings = root["embeddings"].get_array();
  auto pooled = root["mean_pooled"].get_array();
  ASSERT_EQ(outputs.size(), ids.size());
  for (size_t i = 0; i < outputs.size(); ++i) {
    EXPECT_EQ(sequences[i], ids_of(ids.at(i))) << "text " << i;
    const auto want = floats(embeddings.at(i).get_array());
    const auto want_pooled = floats(pooled.at(i).get_array());
    ASSERT_EQ(outputs[i].dense.size(), want.size());
    for (size_t k = 0; k < want.size(); ++k) {
      ASSERT_NEAR(outputs[i].dense[k], want[k], tol.vector) << "text " << i << " [" << k << "]";
      const double raw = double(outputs[i].dense[k]) * outputs[i].dense_norm;
      ASSERT_NEAR(raw, want_pooled[k], tol.pooled * std::max(1.0, double(std::abs(want_pooled[k])))) << "text " << i;
    }
  }
}

}  // namespace m3::test
