// UnigramViterbi: the unigram segmentation of Hugging Face `tokenizers`
// (models/unigram/model.rs, Unigram::encode_optimized, its default path), on the string
// SentencePiece's normalizer makes of a normalized text, word by word as the Metaspace
// pre-tokenizer splits it. SentencePiece's own Viterbi (libsentencepiece 0.1.97) sums
// path scores in float and over the whole text, so equal and nearly equal paths (such as
// '5'+'55' against '55'+'5') come out differently from `tokenizers`, which sums in double,
// from 0 at each word.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "m3/tokenizer/token_offsets.h"

namespace m3 {

// SentencePiece's whitespace handling (normalizer_spec): a "▁" before the text, spaces
// trimmed and runs of them collapsed, spaces written as "▁". Only U+0020 is a space here.
struct SpmWhitespace {
  bool add_dummy_prefix = true;
  bool remove_extra_whitespaces = true;
  bool escape_whitespaces = true;
};

class UnigramViterbi {
 public:
  // `vocab[i]`: the piece with id i and its score (a log probability). Every piece can
  // be matched, as in `tokenizers` (whose vocabulary holds no piece types); a repeated
  // piece means its last id. An unknown character is `unk_id` with the lowest score - 10.
  // The pieces are copied into the trie: `vocab` need only live through the constructor.
  UnigramViterbi(const std::vector<std::pair<std::string_view, double>>& vocab, int32_t unk_id,
                 SpmWhitespace whitespace);

  // Appends the ids of `normalized` (valid UTF-8). With `pieces`, also each id's bytes
  // of `normalized` as SentencePiece reports them: from the first character's position
  // (a "▁" standing for a space: that space; the dummy prefix: where the text starts) to
  // the next character's, and whether the piece starts with "▁".
  void encode(std::string_view normalized, std::vector<int32_t>& ids, std::vector<SpmPiece>* pieces) const;

  // The id of `piece`, or -1 when it is not in the vocabulary.
  int32_t find(std::string_view piece) const;

 private:
  // The child of trie node `node` along byte `label`, or 0 (the root is no one's child).
  uint32_t child(uint32_t node, uint8_t label) const;
  // Segments one word (bytes [begin, end) of `text`), appending ids and pieces.
  void encode_word(std::string_view text, size_t begin, size_t end, const std::vector<uint32_t>* origin,
                   std::vector<int32_t>& ids, std::vector<SpmPiece>* pieces) const;

  // A byte trie over the pieces, breadth first: node n's children are the nodes
  // first_[n] + 1 .. first_[n + 1] (edge e leads to node e + 1), labelled labels_[e] in
  // increasing order; piece_[n] is the id of the piece spelled by the path to n, or -1.
  std::vector<uint32_t> first_;
  std::vector<uint8_t> labels_;
  std::vector<int32_t> piece_;
  std::array<uint32_t, 256> root_{};  // the root's children, by label
  std::vector<double> scores_;        // by id
  int32_t unk_id_ = 0;
  double unk_score_ = 0;
  SpmWhitespace whitespace_;
};

}  // namespace m3
