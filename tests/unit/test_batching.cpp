// Packing: a batch that mixes every length from 2 tokens (<s></s>) to the model's
// maximum gives the same outputs as encoding each text alone, whatever the token budget.
#include <gtest/gtest.h>

#include <random>

#include "m3/core/error.h"
#include "m3/runtime/embedder.h"
#include "test_support.h"

namespace m3 {
namespace {

void expect_same(const M3Output& a, const M3Output& b, int64_t index) {
  ASSERT_EQ(a.dense.size(), b.dense.size());
  for (size_t k = 0; k < a.dense.size(); ++k) ASSERT_NEAR(a.dense[k], b.dense[k], 1e-5) << "sequence " << index;
  ASSERT_EQ(a.lexical.size(), b.lexical.size()) << "sequence " << index;
  for (size_t k = 0; k < a.lexical.size(); ++k) {
    ASSERT_EQ(a.lexical[k].first, b.lexical[k].first) << "sequence " << index;
    ASSERT_NEAR(a.lexical[k].second, b.lexical[k].second, 1e-5) << "sequence " << index;
  }
  ASSERT_EQ(a.colbert_rows, b.colbert_rows);
  for (size_t k = 0; k < a.colbert.size(); ++k) ASSERT_NEAR(a.colbert[k], b.colbert[k], 1e-5) << "sequence " << index;
}

class BatchingTest : public ::testing::TestWithParam<std::string> {};

TEST_P(BatchingTest, MixedLengthBatchEqualsEachTextAlone) {
  const auto dir = test::fixtures() / GetParam();
  auto probe = Embedder::load(dir, {});
  const int64_t max_len = probe->max_seq_len();

  // Random token ids (excluding specials) for every length 2..max_len, shuffled.
  std::mt19937 rng(7);
  std::uniform_int_distribution<int32_t> token(4, probe->tokenizer().vocab_size() - 2);
  std::vector<std::vector<int32_t>> sequences;
  for (int64_t len = 2; len <= max_len; ++len) {
    std::vector<int32_t> ids{XlmrTokenizer::kCls};
    for (int64_t i = 0; i < len - 2; ++i) ids.push_back(token(rng));
    ids.push_back(XlmrTokenizer::kEos);
    sequences.push_back(std::move(ids));
  }
  std::shuffle(sequences.begin(), sequences.end(), rng);
  const OutputRequest all{true, true, true};

  // One budget holding everything at once, and one that forces many batches.
  int64_t total = 0;
  for (const auto& s : sequences) total += static_cast<int64_t>(s.size());
  for (int64_t budget : {total, max_len + 7}) {
    EmbedderOptions options;
    options.max_batch_tokens = budget;
    auto embedder = Embedder::load(dir, options);
    const auto together = embedder->encode(sequences, all);
    ASSERT_EQ(together.size(), sequences.size());
    for (size_t i = 0; i < sequences.size(); ++i) {
      const auto alone = embedder->encode({sequences[i]}, all);
      ASSERT_EQ(together[i].tokens, static_cast<int64_t>(sequences[i].size()));
      expect_same(together[i], alone[0], static_cast<int64_t>(i));
    }
  }
}

TEST_P(BatchingTest, RejectsSequencesOverTheLimit) {
  EmbedderOptions options;
  options.max_seq_len = 16;
  auto embedder = Embedder::load(test::fixtures() / GetParam(), options);
  std::vector<int32_t> too_long(17, 5);
  EXPECT_THROW(embedder->encode({too_long}, {}), Error);
  EXPECT_THROW(embedder->encode({{}}, {}), Error);
}

INSTANTIATE_TEST_SUITE_P(Fixtures, BatchingTest, ::testing::Values("tiny-st", "tiny-bin"));

}  // namespace
}  // namespace m3
