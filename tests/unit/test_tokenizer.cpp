// XlmrTokenizer against transformers' XLM-R tokenizer on a multilingual corpus
// (tests/fixtures/golden/tokenize.json: CJK, Arabic, Hindi, Thai, emoji, combining
// marks, full-width and NFKC-sensitive text, whitespace runs, the empty string).
#include <gtest/gtest.h>

#include "m3/core/error.h"
#include "m3/tokenizer/unigram_viterbi.h"
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

// Paths of equal (or, summed in float, nearly equal) score: '5'+'55' against '55'+'5'.
// tokenizers sums in double from 0 at each word and keeps the path whose last piece
// starts first; SentencePiece's own Viterbi (float, over the whole text) gave '55','5'
// after some words ('на для') and not others. Special-token strings that only appear
// after normalization (full-width '＜s＞') are pieces of the vocabulary with score 0, as
// in tokenizers. Ids from tokenizers 0.23.3 (transformers 5.24.0), in both pipelines.
TEST(XlmrTokenizer, EqualScorePathsAsTokenizers) {
  const auto dir = test::fixtures() / "tiny-st";
  const auto v5 = XlmrTokenizer::load(dir);
  const auto v4 = XlmrTokenizer::load(dir, WordSplit::kMetaspace);
  using Ids = std::vector<int32_t>;
  const Ids phone = {0, 142, 4, 686, 41, 70, 497, 82, 8, 111, 99, 126, 90, 670, 2};  // ... ▁+ 1 - 5 55
  const std::vector<std::pair<std::string_view, Ids>> both = {
      {"на для phrase +1-555", phone},
      {"phrase +1-555", {0, 70, 497, 82, 8, 111, 99, 126, 90, 670, 2}},
      {"Call +1-555-0123 or email", {0, 190, 191, 111, 99, 126, 90, 670, 431, 133, 122, 4, 67, 4, 925, 25, 2}},
      {"555-0123 +1-555-0123", {0, 4, 90, 670, 431, 133, 122, 111, 99, 126, 90, 670, 431, 133, 122, 2}},
      {"\u0661555", {0, 4, 3, 90, 670, 2}},  // an unknown character first
      {",на555", {0, 4, 7, 29, 79, 90, 670, 2}},
      {"5555555", {0, 4, 90, 670, 670, 670, 2}},
      {"\uff1cs\uff1e", {0, 4, 0, 2}},                            // ＜s＞ -> "<s>", a piece
      {"a\uff1cunk\uff1eb", {0, 15, 3, 194, 2}},                  // "<unk>" matched
      {"\uff1cunk\uff1e\uff1cunk\uff1e", {0, 4, 3, 2}},           // and fused with the next
      {"x\uff1cmask\uff1e", {0, 685, 1201, 2}},
      {"\uff1cpad\uff1e \uff1c/s\uff1e", {0, 4, 1, 4, 2, 2}},
  };
  for (const auto& [text, ids] : both) {
    EXPECT_EQ(v5.encode(text), ids) << text;
    EXPECT_EQ(v4.encode(text), ids) << text;
    std::vector<ByteRange> offsets;
    EXPECT_EQ(v5.encode(text, 0, nullptr, false, &offsets), ids) << text;
  }
  EXPECT_EQ(v5.encode("9 55500 "), (Ids{0, 4, 64, 4, 90, 670, 184, 184, 2}));
  EXPECT_EQ(v4.encode("9 55500 "), (Ids{0, 4, 64, 4, 90, 670, 184, 184, 4, 2}));
}

// The segmentation on its own, against tokenizers' Unigram (Metaspace pre-tokenizer) on a
// vocabulary made of ties: ids from tokenizers 0.23.3.
TEST(UnigramViterbi, MatchesTokenizersUnigram) {
  const std::vector<std::pair<std::string_view, double>> vocab = {
      {"<unk>", 0.0}, {"\u2581", -1.0},  {"a", -1.0},     {"b", -1.0},       {"ab", -2.0},
      {"bc", -1.5},   {"c", -2.0},       {"\u2581a", -1.0}, {"\u00e9", -3.0},  {"\u00e9a", -3.0},
      {"日本", -4.0}, {"日", -5.0},      {"本語", -4.0},   {"語", -5.0},       {"x", -0.1},
      {"y", -0.2},    {"xy", -0.30000000000000004},        {"z", -0.5},       {"ab", -3.5},  // "ab" again: id 18
  };
  const UnigramViterbi unigram(vocab, 0, SpmWhitespace{});
  const auto ids = [&](std::string_view text) {
    std::vector<int32_t> out;
    unigram.encode(text, out, nullptr);
    return out;
  };
  using Ids = std::vector<int32_t>;
  EXPECT_EQ(ids("ab"), (Ids{7, 3}));
  EXPECT_EQ(ids("abc"), (Ids{7, 5}));
  EXPECT_EQ(ids("b abc"), (Ids{1, 3, 7, 5}));
  EXPECT_EQ(ids("cab"), (Ids{1, 6, 2, 3}));             // a repeated piece is its last id and score
  EXPECT_EQ(ids("qq"), (Ids{1, 0}));                   // unknown characters fused
  EXPECT_EQ(ids("aqqb"), (Ids{7, 0, 3}));
  EXPECT_EQ(ids("q<unk>"), (Ids{1, 0}));               // "<unk>" is a piece, fused with the unknown
  EXPECT_EQ(ids("\u00e9a\u00e9"), (Ids{1, 9, 8}));
  EXPECT_EQ(ids("日本語"), (Ids{1, 11, 12}));          // a tie: the last piece starting first wins
  EXPECT_EQ(ids("xy"), (Ids{1, 16}));                  // x + y == xy in double: the first found stays
  EXPECT_EQ(ids("xyz"), (Ids{1, 16, 17}));
  EXPECT_EQ(ids("a \u2581b"), (Ids{7, 1, 1, 3}));      // a literal "▁" starts a word
  EXPECT_EQ(ids("\U0001f980a"), (Ids{1, 0, 2}));
  EXPECT_EQ(ids(""), Ids{});
  EXPECT_EQ(ids("   "), Ids{});
  EXPECT_EQ(unigram.find("ab"), 18);
  EXPECT_EQ(unigram.find("abc"), -1);
  // Pieces' bytes of the text, as SentencePiece reports them (a marker: its space).
  std::vector<int32_t> out;
  std::vector<SpmPiece> pieces;
  unigram.encode("  b  abc ", out, &pieces);
  EXPECT_EQ(out, (Ids{1, 3, 7, 5}));
  ASSERT_EQ(pieces.size(), 4u);
  const auto range = [&](size_t k) { return std::tuple{pieces[k].begin, pieces[k].end, pieces[k].word_start}; };
  EXPECT_EQ(range(0), std::tuple(2u, 2u, true));
  EXPECT_EQ(range(1), std::tuple(2u, 3u, false));
  EXPECT_EQ(range(2), std::tuple(3u, 6u, true));
  EXPECT_EQ(range(3), std::tuple(6u, 8u, false));
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
