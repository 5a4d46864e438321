#include "m3/tokenizer/token_offsets.h"

namespace m3 {
namespace {

// The piece's bytes without the spaces SentencePiece counts in it: [first, last], or
// first > last when it has none (a bare marker).
struct Content {
  size_t first = 1;
  size_t last = 0;
  bool empty() const { return first > last; }
};

Content content_of(std::string_view normalized, const SpmPiece& piece) {
  Content c;
  for (size_t i = piece.begin; i < piece.end && i < normalized.size(); ++i) {
    if (normalized[i] == ' ') continue;
    if (c.empty()) c.first = i;
    c.last = i;
  }
  return c;
}

}  // namespace

void append_token_offsets(std::string_view normalized, const std::vector<ByteRange>& origin,
                          const std::vector<SpmPiece>& pieces, MarkerOrigin marker, uint32_t base,
                          std::vector<ByteRange>& offsets) {
  std::vector<Content> contents;
  contents.reserve(pieces.size());
  for (const SpmPiece& piece : pieces) contents.push_back(content_of(normalized, piece));
  const auto shifted = [base](ByteRange r) { return ByteRange{r.begin + base, r.end + base}; };

  for (size_t k = 0; k < pieces.size(); ++k) {
    const Content& content = contents[k];
    // The first byte of the word a marker belongs to: this piece's, or (a bare marker) the
    // next piece's; normalized.size() for a trailing space.
    size_t word = normalized.size();
    if (!content.empty()) {
      word = content.first;
    } else {
      for (size_t next = k + 1; next < pieces.size(); ++next) {
        if (!contents[next].empty()) {
          word = contents[next].first;
          break;
        }
      }
    }
    ByteRange from{};
    if (pieces[k].word_start) {
      size_t at = word;
      // The space before the word (tokenizers' Replace(" {2,}", " ") keeps the last of a
      // run); none: the marker prepended to the text, which takes the first character.
      if (marker == MarkerOrigin::kSpace && at > 0 && normalized[at - 1] == ' ') --at;
      if (at < origin.size()) from = origin[at];
    } else if (!content.empty()) {
      from = origin[content.first];
    }
    ByteRange range = from;
    if (!content.empty()) range.end = origin[content.last].end;
    offsets.push_back(shifted(range));
  }
}

}  // namespace m3
