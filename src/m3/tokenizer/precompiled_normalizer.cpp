#include "m3/tokenizer/precompiled_normalizer.h"

#include <algorithm>
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

// One character of the result as tokenizers' NormalizedString::transform sees it: its
// length, and its change (0: it takes the place of the next original character; 1: it is
// inserted; -n: it takes the next character's place and removes n more after it).
struct Change {
  uint32_t bytes;
  int change;
};

// tokenizers' Precompiled `replace`: `replacement` takes the place of `old_count`
// characters. Extra characters are insertions; fewer characters remove the rest through
// the last change so far, and when there is none (a removal at the very start) the
// removal is lost, which shifts what follows by a character, as in tokenizers.
void push_replacement(std::vector<Change>& changes, std::string_view replacement, size_t old_count) {
  size_t count = 0;
  for (size_t at = 0; at < replacement.size(); ++count) {
    const size_t len = std::min(utf8_length(static_cast<unsigned char>(replacement[at])), replacement.size() - at);
    changes.push_back({static_cast<uint32_t>(len), 0});
    at += len;
  }
  const auto diff = static_cast<int>(count) - static_cast<int>(old_count);
  if (diff > 0) {
    for (size_t k = 0; k < static_cast<size_t>(diff); ++k) changes[changes.size() - 1 - k].change = 1;
  } else if (diff < 0 && !changes.empty()) {
    changes.back().change += diff;
  }
}

// Where each byte of the result came from: `changes` applied in order over the characters
// of `text`, as NormalizedString::transform aligns them.
std::vector<ByteRange> align(std::string_view text, const std::vector<Change>& changes) {
  std::vector<ByteRange> chars;
  for (size_t i = 0; i < text.size();) {
    const size_t len = std::min(utf8_length(static_cast<unsigned char>(text[i])), text.size() - i);
    chars.push_back({static_cast<uint32_t>(i), static_cast<uint32_t>(i + len)});
    i += len;
  }
  const auto end = static_cast<uint32_t>(text.size());
  std::vector<ByteRange> origin;
  size_t next = 0;  // the next original character
  for (const Change& c : changes) {
    ByteRange from{end, end};
    if (c.change > 0) {
      if (next > 0) from = chars[next - 1];  // an insertion: the previous character's place
    } else {
      if (next < chars.size()) from = chars[next];
      next += 1 + static_cast<size_t>(-c.change);
    }
    origin.insert(origin.end(), c.bytes, from);
  }
  return origin;
}

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

std::string PrecompiledNormalizer::normalize(std::string_view text, std::vector<ByteRange>* origin) const {
  std::vector<Change> changes;
  const auto keep = [&](std::string_view ch) {
    if (origin) changes.push_back({static_cast<uint32_t>(ch.size()), 0});
  };
  const auto replace = [&](std::string_view replacement, std::string_view old) {
    if (!origin) return;
    size_t old_count = 0;
    for (unsigned char c : old) old_count += (c & 0xC0) != 0x80;
    push_replacement(changes, replacement, old_count);
  };

  std::string out;
  out.reserve(text.size());
  if (units_.empty() || text.empty()) {
    out = text;
    for (size_t i = 0; origin && i < text.size();) {
      const size_t len = std::min(utf8_length(static_cast<unsigned char>(text[i])), text.size() - i);
      keep(text.substr(i, len));
      i += len;
    }
  } else {
    UErrorCode status = U_ZERO_ERROR;
    std::unique_ptr<UText, UTextCloser> utext(
        utext_openUTF8(nullptr, text.data(), static_cast<int64_t>(text.size()), &status));
    std::unique_ptr<UBreakIterator, BreakIteratorCloser> graphemes(
        ubrk_open(UBRK_CHARACTER, "", nullptr, 0, &status));
    if (U_SUCCESS(status)) ubrk_setUText(graphemes.get(), utext.get(), &status);
    if (U_FAILURE(status)) fail("grapheme segmentation failed: {}", u_errorName(status));

    int32_t begin = ubrk_first(graphemes.get());
    for (int32_t end = ubrk_next(graphemes.get()); end != UBRK_DONE; begin = end, end = ubrk_next(graphemes.get())) {
      const std::string_view grapheme = text.substr(begin, end - begin);
      if (grapheme.size() < 6) {
        if (const char* replacement = shortest_prefix_match(grapheme)) {
          out += replacement;
          replace(replacement, grapheme);
          continue;
        }
      }
      for (size_t i = 0; i < grapheme.size();) {
        const size_t len = std::min(utf8_length(static_cast<unsigned char>(grapheme[i])), grapheme.size() - i);
        const std::string_view ch = grapheme.substr(i, len);
        if (const char* replacement = shortest_prefix_match(ch)) {
          out += replacement;
          replace(replacement, ch);
        } else {
          out += ch;
          keep(ch);
        }
        i += len;
      }
    }
  }
  if (origin) *origin = align(text, changes);
  return out;
}

}  // namespace m3
