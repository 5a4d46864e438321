// XlmrTokenizer: XLM-RoBERTa tokenization on libsentencepiece, with the fairseq id
// mapping and special tokens of transformers' XLMRobertaTokenizer (M3-SPEC.md).
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "m3/tokenizer/precompiled_normalizer.h"
#include "m3/tokenizer/unigram_viterbi.h"

namespace sentencepiece {
class SentencePieceProcessor;
}

namespace m3 {

// How words are split after normalization. transformers 4 runs the snapshot's
// tokenizer.json, whose XLM-R pipeline (Replace " {2,}" + Metaspace) keeps a trailing
// space as a "▁" token; transformers 5 rebuilds the pipeline (WhitespaceSplit +
// Metaspace), which splits on every Unicode space and drops them all.
enum class WordSplit {
  kAuto,             // from tokenizer.json: WhitespaceSplit if it names one, else Metaspace
  kMetaspace,        // transformers 4 / the official BGE-M3 tokenizer.json
  kWhitespaceSplit,  // transformers 5
};

class XlmrTokenizer {
 public:
  static constexpr int32_t kCls = 0;   // <s>
  static constexpr int32_t kPad = 1;   // <pad>
  static constexpr int32_t kEos = 2;   // </s>
  static constexpr int32_t kUnk = 3;   // <unk>
  static constexpr int32_t kFairseqOffset = 1;

  // Loads `<dir>/sentencepiece.bpe.model`; throws m3::Error naming the file.
  static XlmrTokenizer load(const std::filesystem::path& model_dir, WordSplit split = WordSplit::kAuto);
  XlmrTokenizer(XlmrTokenizer&&) noexcept;
  XlmrTokenizer& operator=(XlmrTokenizer&&) noexcept;
  ~XlmrTokenizer();

  // `<s> pieces </s>`. With max_length > 0 the pieces are cut so the total including
  // both specials is at most max_length, keeping the first pieces (or the last, with
  // keep_end: a left truncation, as transformers' truncation_side="left"); `truncated`
  // (if given) says whether that cut. `text` must be valid UTF-8 (checked by the caller's
  // input layer). `offsets` (if given) gets, per id, the bytes of `text` it stands for, as
  // Hugging Face tokenizers' offsets (in bytes, as TEI's /tokenize reports them); the <s>
  // and </s> added around the text get {0, 0}, special-token strings in the text their own
  // bytes.
  std::vector<int32_t> encode(std::string_view text, size_t max_length = 0, bool* truncated = nullptr,
                              bool keep_end = false, std::vector<ByteRange>* offsets = nullptr) const;

  // A cross-encoder's input for a query and a passage, `<s> query </s></s> passage </s>`
  // (XLM-R's pair template), cut as FlagEmbedding's FlagReranker cuts it: the query to
  // `query_max_pieces` pieces, the passage to `max_length` pieces, then the passage's end
  // (only the second text) so the whole is at most `max_length`. `truncated` says whether
  // either was cut. Fails when the query alone leaves the passage no room.
  std::vector<int32_t> encode_pair(std::string_view query, std::string_view passage, size_t query_max_pieces,
                                   size_t max_length, bool* truncated = nullptr) const;

  // The token string of an id ("<s>", "▁hello", ...).
  std::string id_to_piece(int32_t id) const;
  // Text of ids: pieces joined, SentencePiece's word marker as a space, no leading space;
  // specials (<s>, </s>, <pad>, <unk>, <mask>) dropped or kept as their text. Ids must be
  // in [0, vocab_size()).
  std::string decode(const std::vector<int32_t>& ids, bool skip_special_tokens) const;
  int32_t mask_id() const { return vocab_size() - 1; }
  // SentencePiece pieces + fairseq offset + <mask>, as XLMRobertaTokenizer.vocab_size.
  int32_t vocab_size() const;
  WordSplit word_split() const { return split_; }

 private:
  XlmrTokenizer();
  // The ids of a text segment without special tokens; with `offsets`, also where each
  // lies in the text (the segment starts at byte `base`).
  void append_pieces(std::string_view segment, uint32_t base, std::vector<int32_t>& ids,
                     std::vector<ByteRange>* offsets) const;

  // libsentencepiece loads the model (pieces, scores) with an identity normalizer;
  // normalization and segmentation are done here, the way transformers' (tokenizers')
  // XLM-R pipeline does them.
  std::unique_ptr<sentencepiece::SentencePieceProcessor> sp_;
  std::unique_ptr<PrecompiledNormalizer> normalizer_;
  std::unique_ptr<UnigramViterbi> unigram_;  // over fairseq ids
  WordSplit split_ = WordSplit::kMetaspace;
  int32_t space_piece_id_ = -1;  // fairseq id of the bare "▁" piece (-1: none)
  bool mask_lstrip_ = true;      // "<mask>" swallows the whitespace before it
  bool mask_span_lstrip_ = true;  // and its offsets include it (tokenizer.json's flag)
};

}  // namespace m3
