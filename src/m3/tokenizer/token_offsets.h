// Token offsets as Hugging Face tokenizers computes them for XLM-R, from SentencePiece's
// pieces over the normalized text: what TEI's /tokenize reports (start/stop) and what
// clients such as Dify cut long texts at.
#pragma once

#include <cstdint>
#include <string_view>
#include <vector>

#include "m3/tokenizer/precompiled_normalizer.h"

namespace m3 {

// A piece as SentencePiece reports it: bytes [begin, end) of the string it tokenized (the
// word marker's space included), and whether it starts with the marker "▁".
struct SpmPiece {
  uint32_t begin = 0;
  uint32_t end = 0;
  bool word_start = false;
};

// How the word marker "▁" is aligned. tokenizers' Metaspace turns a space into the marker,
// so it is that space (the last of a run); with WhitespaceSplit the spaces are gone and
// the marker is prepended to each word, taking the word's first character.
enum class MarkerOrigin { kSpace, kFirstCharacter };

// Appends, per piece, the bytes of the original text it stands for: its first character's
// (the marker's, if it has one) start to its last character's end, through `origin` (per
// byte of `normalized`, where it came from in the text) plus `base`. A bare marker at the
// end of `pieces` with begin == normalized.size() is a trailing space kept as a token.
void append_token_offsets(std::string_view normalized, const std::vector<ByteRange>& origin,
                          const std::vector<SpmPiece>& pieces, MarkerOrigin marker, uint32_t base,
                          std::vector<ByteRange>& offsets);

}  // namespace m3
