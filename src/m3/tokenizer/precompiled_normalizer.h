// PrecompiledNormalizer: SentencePiece's precompiled charsmap (NFKC plus the nmt rules)
// applied the way Hugging Face `tokenizers` applies it, which is what transformers'
// XLM-R tokenizer and so FlagEmbedding feed the model. It differs from SentencePiece's
// own normalizer: it works grapheme by grapheme, and a grapheme shorter than 6 bytes
// with a charsmap entry for one of its prefixes is replaced whole by the shortest such
// entry (so "e" + U+0302 + U+0323 becomes "ê", the dot below dropped); longer graphemes
// are normalized one character at a time.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace m3 {

// Bytes [begin, end) of the text a normalized byte came from.
struct ByteRange {
  uint32_t begin = 0;
  uint32_t end = 0;
};

class PrecompiledNormalizer {
 public:
  // `charsmap`: normalizer_spec.precompiled_charsmap; empty means identity.
  PrecompiledNormalizer(std::string charsmap, const std::string& source);

  // With `origin`, also where each byte of the result came from, exactly as `tokenizers`
  // aligns it (its quirks included: a grapheme folded into one character maps to its
  // first character only, and a character removed at the very start shifts the
  // alignment of what follows), so token offsets equal the reference's.
  std::string normalize(std::string_view text, std::vector<ByteRange>* origin = nullptr) const;

 private:
  // The replacement of the shortest key that is a prefix of `chunk`, or nullptr.
  const char* shortest_prefix_match(std::string_view chunk) const;

  std::vector<uint32_t> units_;  // darts-clone double-array trie
  std::string normalized_;       // NUL-separated replacement strings
};

}  // namespace m3
