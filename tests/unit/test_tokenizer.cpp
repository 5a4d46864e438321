// XlmrTokenizer against transformers' XLM-R tokenizer on a multilingual corpus
// (tests/fixtures/golden/tokenize.json: CJK, Arabic, Hindi, Thai, emoji, combining
// marks, full-width and NFKC-sensitive text, whitespace runs, the empty string).
#include <gtest/gtest.h>

#include "m3/core/error.h"
#include "m3/tokenizer/xlmr_tokenizer.h"
#include "test_support.h"

namespace m3 {
namespace {

std::vector<int32_t> ids_of(simdjson::dom::element list) {
  std::vector<int32_t> ids;
  for (auto id : list.get_array()) ids.push_back(static_cast<int32_t>(int64_t(id)));
  return ids;
}

// Every case must equal the fast tokenizer, which is what FlagEmbedding uses (the
// corpus records where SentencePiece alone, the "slow" path, differs from it).
TEST(XlmrTokenizer, MatchesTransformersOnMultilingualCorpus) {
  simdjson::dom::parser parser;
  const auto root = parser.load((test::fixtures() / "golden" / "tokenize.json").string()).value();
  const auto tokenizer = XlmrTokenizer::load(test::fixtures() / std::string(std::string_view(root["model_dir"])));
  size_t cases = 0, slow_differs = 0;
  for (auto c : root["cases"].get_array()) {
    const std::string_view text = c["text"];
    const auto fast = ids_of(c["fast"]);
    EXPECT_EQ(tokenizer.encode(text), fast) << "text: \"" << text << "\"";
    slow_differs += fast != ids_of(c["slow"]);
    ++cases;
  }
  EXPECT_GE(cases, 50u);
  EXPECT_GE(slow_differs, 3u);  // the corpus does reach the edge cases
}

// The same corpus through the pipeline transformers 4 runs from the official BGE-M3
// tokenizer.json (Metaspace, trailing spaces kept as "▁").
TEST(XlmrTokenizer, MatchesTransformers4PipelineOnMultilingualCorpus) {
  simdjson::dom::parser parser;
  const auto root = parser.load((test::fixtures() / "golden" / "tokenize.json").string()).value();
  const auto dir = test::fixtures() / std::string(std::string_view(root["model_dir"]));
  const auto tokenizer = XlmrTokenizer::load(dir, WordSplit::kMetaspace);
  EXPECT_EQ(XlmrTokenizer::load(dir).word_split(), WordSplit::kWhitespaceSplit);  // its tokenizer.json says so
  size_t cases = 0, differs_from_v5 = 0;
  for (auto c : root["cases"].get_array()) {
    const std::string_view text = c["text"];
    const auto v4 = ids_of(c["hf_v4_json"]);
    EXPECT_EQ(tokenizer.encode(text), v4) << "text: \"" << text << "\"";
    differs_from_v5 += v4 != ids_of(c["fast"]);
    ++cases;
  }
  EXPECT_GE(differs_from_v5, 5u);
}

TEST(XlmrTokenizer, SpecialsAndTruncation) {
  const auto tokenizer = XlmrTokenizer::load(test::fixtures() / "tiny-st");
  EXPECT_EQ(tokenizer.encode(""), (std::vector<int32_t>{0, 2}));
  const auto full = tokenizer.encode("hello world, this is a longer sentence");
  ASSERT_GT(full.size(), 6u);
  bool truncated = false;
  const auto cut = tokenizer.encode("hello world, this is a longer sentence", 5, &truncated);
  EXPECT_TRUE(truncated);
  EXPECT_EQ(cut, (std::vector<int32_t>{full[0], full[1], full[2], full[3], 2}));
  // Left truncation keeps <s>, the last pieces and </s> (transformers' truncation_side="left").
  const size_t n = full.size();
  const auto left = tokenizer.encode("hello world, this is a longer sentence", 5, &truncated, true);
  EXPECT_TRUE(truncated);
  EXPECT_EQ(left, (std::vector<int32_t>{0, full[n - 4], full[n - 3], full[n - 2], 2}));
  tokenizer.encode("hello", 0, &truncated);
  EXPECT_FALSE(truncated);
  EXPECT_EQ(tokenizer.encode("anything", 2), (std::vector<int32_t>{0, 2}));
  EXPECT_THROW(tokenizer.encode("anything", 1), Error);
  EXPECT_EQ(tokenizer.id_to_piece(0), "<s>");
  EXPECT_EQ(tokenizer.id_to_piece(tokenizer.mask_id()), "<mask>");
}

// Offsets are the reference's (tokenizers', in bytes): the pieces' words without the
// spaces WhitespaceSplit drops, a folded character mapped to what it came from; asking for
// them changes no id. (tests/python/test_tokenizer_live.py checks thousands of random
// strings against tokenizers live, in both pipelines.)
TEST(XlmrTokenizer, OffsetsAreTokenizersByteOffsets) {
  const auto tokenizer = XlmrTokenizer::load(test::fixtures() / "tiny-st");
  const auto spans = [&](std::string_view text) {
    std::vector<ByteRange> offsets;
    const auto ids = tokenizer.encode(text, 0, nullptr, false, &offsets);
    EXPECT_EQ(ids, tokenizer.encode(text));
    EXPECT_EQ(ids.size(), offsets.size());
    std::vector<std::pair<uint32_t, uint32_t>> out;
    for (const ByteRange& r : offsets) out.emplace_back(r.begin, r.end);
    return out;
  };
  using Spans = std::vector<std::pair<uint32_t, uint32_t>>;
  // <s> ▁he llo ▁w or ld </s>
  EXPECT_EQ(spans("hello world"), (Spans{{0, 0}, {0, 2}, {2, 5}, {6, 7}, {7, 9}, {9, 11}, {0, 0}}));
  // Full-width letters fold to ASCII, each token keeps its 3-byte characters; "ﬁ" -> "fi".
  EXPECT_EQ(spans("\uff48\uff45\uff4c\uff4c\uff4f \ufb01"),
            (Spans{{0, 0}, {0, 6}, {6, 15}, {16, 19}, {0, 0}}));
  // A literal special token is its own bytes.
  EXPECT_EQ(spans("a <s>").at(2), (std::pair<uint32_t, uint32_t>{2, 5}));
  // Truncation cuts the offsets with the ids.
  std::vector<ByteRange> offsets;
  const auto left = tokenizer.encode("hello world", 4, nullptr, true, &offsets);
  ASSERT_EQ(offsets.size(), 4u);
  EXPECT_EQ(offsets[1].begin, 7u);
  EXPECT_EQ(offsets[2].end, 11u);
}

TEST(XlmrTokenizer, OffsetsKeepIdsOnTheCorpusInBothPipelines) {
  simdjson::dom::parser parser;
  const auto root = parser.load((test::fixtures() / "golden" / "tokenize.json").string()).value();
  const auto dir = test::fixtures() / std::string(std::string_view(root["model_dir"]));
  for (const WordSplit split : {WordSplit::kWhitespaceSplit, WordSplit::kMetaspace}) {
    const auto tokenizer = XlmrTokenizer::load(dir, split);
    for (auto c : root["cases"].get_array()) {
      const std::string_view text = c["text"];
      std::vector<ByteRange> offsets;
      EXPECT_EQ(tokenizer.encode(text, 0, nullptr, false, &offsets), tokenizer.encode(text)) << text;
      for (const ByteRange& r : offsets) EXPECT_TRUE(r.begin <= r.end && r.end <= text.size()) << text;
    }
  }
}

TEST(XlmrTokenizer, MissingModelFileIsAClearError) {
  test::TempDir dir;
  try {
    XlmrTokenizer::load(dir.path());
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("sentencepiece.bpe.model"), std::string::npos);
  }
}

}  // namespace
}  // namespace m3
