// The engine against golden outputs computed by the real FlagEmbedding (BGEM3FlagModel,
// fp32, CPU) on the fixture models: token ids, dense, lexical weights, ColBERT
// vectors and scores (tests/fixtures/make_fixtures.py wrote the goldens).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <map>

#include "m3/model/scoring.h"
#include "m3/runtime/embedder.h"
#include "test_support.h"

namespace m3 {
namespace {

constexpr double kTolerance = 1e-4;

struct Golden {
  simdjson::dom::parser parser;
  simdjson::dom::element root;
  explicit Golden(const std::string& model) {
    const auto path = test::fixtures() / "golden" / (model + ".json");
    root = parser.load(path.string());
  }
};

class FidelityTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    golden_ = std::make_unique<Golden>(GetParam());
    max_length_ = int64_t(golden_->root["max_length"]);
    EmbedderOptions options;
    options.max_seq_len = max_length_;
    options.max_batch_tokens = 4 * max_length_;
    embedder_ = Embedder::load(test::fixtures() / GetParam(), options);
  }

  std::vector<std::vector<int32_t>> tokenize_all(simdjson::dom::array texts, int64_t max_length) {
    std::vector<std::vector<int32_t>> out;
    for (auto t : texts) out.push_back(embedder_->tokenize(std::string_view(t), max_length));
    return out;
  }

  std::unique_ptr<Golden> golden_;
  std::unique_ptr<Embedder> embedder_;
  int64_t max_length_ = 0;
};

TEST_P(FidelityTest, TokenIdsMatchTheReference) {
  const auto ids = tokenize_all(golden_->root["texts"], max_length_);
  size_t i = 0;
  for (auto expected : golden_->root["input_ids"].get_array()) {
    std::vector<int32_t> want;
    for (auto id : expected.get_array()) want.push_back(static_cast<int32_t>(int64_t(id)));
    EXPECT_EQ(ids[i], want) << "text " << i;
    ++i;
  }
  EXPECT_EQ(i, ids.size());
}

TEST_P(FidelityTest, DenseSparseColbertMatchTheReference) {
  const auto sequences = tokenize_all(golden_->root["texts"], max_length_);
  const auto outputs = embedder_->encode(sequences, {true, true, true});
  const int64_t h = embedder_->config().hidden_size;
  auto dense = golden_->root["dense_vecs"].get_array();
  auto lexical = golden_->root["lexical_weights"].get_array();
  auto colbert = golden_->root["colbert_vecs"].get_array();
  ASSERT_EQ(dense.size(), outputs.size());
  for (size_t i = 0; i < outputs.size(); ++i) {
    const auto& out = outputs[i];
    const auto want_dense = test::floats(dense.at(i).get_array());
    ASSERT_EQ(out.dense.size(), want_dense.size());
    for (size_t k = 0; k < want_dense.size(); ++k) ASSERT_NEAR(out.dense[k], want_dense[k], kTolerance) << i;

    std::map<std::string, double> want_lexical;
    for (auto field : lexical.at(i).get_object()) want_lexical[std::string(field.key)] = double(field.value);
    std::map<std::string, double> got_lexical;
    for (const auto& [id, w] : out.lexical) got_lexical[std::to_string(id)] = w;
    ASSERT_EQ(got_lexical.size(), want_lexical.size()) << "text " << i;
    for (const auto& [id, w] : want_lexical) {
      ASSERT_TRUE(got_lexical.count(id)) << "text " << i << " lacks token " << id;
      ASSERT_NEAR(got_lexical[id], w, kTolerance) << "text " << i << " token " << id;
    }

    auto rows = colbert.at(i).get_array();
    ASSERT_EQ(out.colbert_rows, static_cast<int64_t>(rows.size())) << "text " << i;
    int64_t r = 0;
    for (auto row : rows) {
      const auto want = test::floats(row.get_array());
      ASSERT_EQ(static_cast<int64_t>(want.size()), h);
      for (int64_t k = 0; k < h; ++k) ASSERT_NEAR(out.colbert[r * h + k], want[k], kTolerance) << i << "," << r;
      ++r;
    }
  }
}

// vLLM's token_classify: relu(sparse_linear(h)) at every position. Their maximum per token
// id (specials and zeros left out, in order of first occurrence) is the lexical output.
TEST_P(FidelityTest, PerPositionSparseWeightsGiveTheLexicalWeights) {
  const auto sequences = tokenize_all(golden_->root["texts"], max_length_);
  const auto both = embedder_->encode(sequences, {false, true, false, true});
  const auto alone = embedder_->encode(sequences, {false, false, false, true});
  for (size_t i = 0; i < sequences.size(); ++i) {
    const std::vector<float>& weights = both[i].token_weights;
    ASSERT_EQ(weights.size(), sequences[i].size()) << "text " << i;
    EXPECT_EQ(alone[i].token_weights, weights) << "text " << i;
    EXPECT_TRUE(alone[i].lexical.empty() && alone[i].dense.empty() && alone[i].colbert.empty());
    std::vector<std::pair<int32_t, float>> lexical;
    for (size_t k = 0; k < weights.size(); ++k) {
      const int32_t id = sequences[i][k];
      if (id <= XlmrTokenizer::kUnk || !(weights[k] > 0.f)) continue;  // <s>, <pad>, </s>, <unk>
      auto at = std::find_if(lexical.begin(), lexical.end(), [&](const auto& e) { return e.first == id; });
      if (at == lexical.end())
        lexical.emplace_back(id, weights[k]);
      else
        at->second = std::max(at->second, weights[k]);
    }
    EXPECT_EQ(lexical, both[i].lexical) << "text " << i;
  }
}

TEST_P(FidelityTest, ScoresMatchTheReference) {
  auto scores = golden_->root["scores"];
  const int64_t query_length = int64_t(scores["max_query_length"]);
  const int64_t passage_length = int64_t(scores["max_passage_length"]);
  std::vector<std::vector<int32_t>> queries, passages;
  for (auto pair : scores["pairs"].get_array()) {
    queries.push_back(embedder_->tokenize(std::string_view(pair.at(0)), query_length));
    passages.push_back(embedder_->tokenize(std::string_view(pair.at(1)), passage_length));
  }
  const auto q = embedder_->encode(queries, {true, true, true});
  const auto p = embedder_->encode(passages, {true, true, true});
  const int64_t h = embedder_->config().hidden_size;

  for (const char* variant : {"weighted", "default"}) {
    const auto w = test::floats(scores[variant == std::string("weighted") ? "weights" : "default_weights"]);
    const ScoreWeights weights{w[0], w[1], w[2]};
    auto reference = scores[std::string("compute_score_") + variant];
    auto trimmed = scores[std::string("trimmed_combined_") + variant];
    const auto dense = test::floats(reference["dense"]);
    const auto sparse = test::floats(reference["sparse"]);
    const auto colbert = test::floats(scores["colbert_score_trimmed"]);
    const auto sparse_dense = test::floats(trimmed["sparse+dense"]);
    const auto all = test::floats(trimmed["colbert+sparse+dense"]);
    ASSERT_EQ(dense.size(), q.size());
    for (size_t i = 0; i < q.size(); ++i) {
      const auto s = compute_scores(q[i], p[i], h, weights);
      EXPECT_NEAR(s.dense, dense[i], kTolerance) << variant << " pair " << i;
      EXPECT_NEAR(s.sparse, sparse[i], kTolerance) << variant << " pair " << i;
      EXPECT_NEAR(s.colbert, colbert[i], kTolerance) << variant << " pair " << i;
      EXPECT_NEAR(s.sparse_dense, sparse_dense[i], kTolerance) << variant << " pair " << i;
      EXPECT_NEAR(s.colbert_sparse_dense, all[i], kTolerance) << variant << " pair " << i;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Fixtures, FidelityTest, ::testing::Values("tiny-st", "tiny-bin", "tiny-h64"));

}  // namespace
}  // namespace m3
