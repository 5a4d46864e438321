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

// A grapheme holding several combining marks where a prefix composes (e.g. "e" +
// U+0302 + U+0323): the `tokenizers` library's Precompiled normalizer replaces the
// whole grapheme by the prefix's composition and drops the other marks, while
// SentencePiece keeps them (as <unk> when unknown). We follow SentencePiece there
// (docs/tokenization.md); for every other text we must equal the fast tokenizer.
bool stacked_combining_marks(std::string_view text) {
  return text.find("\u0302\u0323") != std::string_view::npos;
}

TEST(XlmrTokenizer, MatchesTransformersOnMultilingualCorpus) {
  simdjson::dom::parser parser;
  const auto root = parser.load((test::fixtures() / "golden" / "tokenize.json").string()).value();
  const auto tokenizer = XlmrTokenizer::load(test::fixtures() / std::string(std::string_view(root["model_dir"])));
  size_t cases = 0, exact = 0;
  for (auto c : root["cases"].get_array()) {
    const std::string_view text = c["text"];
    const auto got = tokenizer.encode(text);
    const auto fast = ids_of(c["fast"]);
    const auto slow = ids_of(c["slow"]);
    ++cases;
    if (got == fast) {
      ++exact;
      continue;
    }
    EXPECT_TRUE(stacked_combining_marks(text) && got == slow) << "text: \"" << text << "\"";
  }
  EXPECT_GE(cases, 50u);
  EXPECT_GE(exact, cases - 1);
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
  tokenizer.encode("hello", 0, &truncated);
  EXPECT_FALSE(truncated);
  EXPECT_EQ(tokenizer.encode("anything", 2), (std::vector<int32_t>{0, 2}));
  EXPECT_THROW(tokenizer.encode("anything", 1), Error);
  EXPECT_EQ(tokenizer.id_to_piece(0), "<s>");
  EXPECT_EQ(tokenizer.id_to_piece(tokenizer.mask_id()), "<mask>");
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
