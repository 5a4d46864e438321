#include "m3/tokenizer/precompiled_normalizer.h"

#include <cstring>
#include <memory>

#include <unicode/ubrk.h>
#include <unicode/utext.h>

#include "m3/core/error.h"

namespace m3 {
namespace {

// darts-clone unit layout.
bool has_leaf(uint32_t unit) { return (unit >> 8) & 1; }
uint32_t value_of(uint32_t unit) { return unit & ((1u << 31) - 1); }
uint32_t label_of(uint32_t unit) { return unit & ((1u << 31) | 0xff); }
uint32_t offset_of(uint32_t unit) { return (unit >> 10) << ((unit & (1u << 9)) >> 6); }

size_t utf8_length(unsigned char lead) {
  if (lead >= 0xF0) return 4;
  if (lead >= 0xE0) return 3;
  if (lead >= 0xC0) return 2;
  return 1;
}

struct BreakIteratorCloser {
  void operator()(UBreakIterator* b) const { ubrk_close(b); }
};
struct UTextCloser {
  void operator()(UText* t) const { utext_close(t); }
};

}  // namespace

PrecompiledNormalizer::PrecompiledNormalizer(std::string charsmap, const std::string& source) {
  if (charsmap.empty()) return;
  if (charsmap.size() < 4) fail("{}: precompiled charsmap is truncated", source);
  uint32_t trie_size;
  std::memcpy(&trie_size, charsmap.data(), 4);
  if (trie_size % 4 != 0 || trie_size > charsmap.size() - 4) fail("{}: precompiled charsmap is malformed", source);
  units_.resize(trie_size / 4);
  std::memcpy(units_.data(), charsmap.data() + 4, trie_size);
  normalized_ = charsmap.substr(4 + trie_size);
  normalized_ += '\0';  // every lookup below stops at a NUL inside the blob
  if (units_.empty()) fail("{}: precompiled charsmap has an empty trie", source);
}

const char* PrecompiledNormalizer::shortest_prefix_match(std::string_view chunk) const {
  size_t node = 0;
  uint32_t unit = units_[0];
  node ^= offset_of(unit);
  for (unsigned char c : chunk) {
    if (c == 0) return nullptr;  // keys never hold NUL; tokenizers stops there too
    node ^= c;
    if (node >= units_.size()) return nullptr;
    unit = units_[node];
    if (label_of(unit) != c) return nullptr;
    node ^= offset_of(unit);
    if (node >= units_.size()) return nullptr;
    if (has_leaf(unit)) {
      const uint32_t at = value_of(units_[node]);
      return at < normalized_.size() ? normalized_.data() + at : nullptr;
    }
  }
  return nullptr;
}

std::string PrecompiledNormalizer::normalize(std::string_view text) const {
  if (units_.empty() || text.empty()) return std::string(text);
  UErrorCode status = U_ZERO_ERROR;
  std::unique_ptr<UText, UTextCloser> utext(
      utext_openUTF8(nullptr, text.data(), static_cast<int64_t>(text.size()), &status));
  std::unique_ptr<UBreakIterator, BreakIteratorCloser> graphemes(
      ubrk_open(UBRK_CHARACTER, "", nullptr, 0, &status));
  if (U_SUCCESS(status)) ubrk_setUText(graphemes.get(), utext.get(), &status);
  if (U_FAILURE(status)) fail("grapheme segmentation failed: {}", u_errorName(status));

  std::string out;
  out.reserve(text.size());
  int32_t begin = ubrk_first(graphemes.get());
  for (int32_t end = ubrk_next(graphemes.get()); end != UBRK_DONE; begin = end, end = ubrk_next(graphemes.get())) {
    const std::string_view grapheme = text.substr(begin, end - begin);
    if (grapheme.size() < 6) {
      if (const char* replacement = shortest_prefix_match(grapheme)) {
        out += replacement;
        continue;
      }
    }
    for (size_t i = 0; i < grapheme.size();) {
      const size_t len = std::min(utf8_length(static_cast<unsigned char>(grapheme[i])), grapheme.size() - i);
      const std::string_view ch = grapheme.substr(i, len);
      const char* replacement = shortest_prefix_match(ch);
      if (replacement) {
        out += replacement;
      } else {
        out += ch;
      }
      i += len;
    }
  }
  return out;
}

}  // namespace m3
