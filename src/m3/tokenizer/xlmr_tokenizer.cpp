#include "m3/tokenizer/xlmr_tokenizer.h"

#include <array>
#include <cctype>

#include <sentencepiece_processor.h>

#include "m3/core/error.h"

namespace m3 {
namespace {

struct SpecialToken {
  std::string_view text;
  int32_t id;  // -1: <mask>, resolved from the vocabulary size
  bool lstrip;  // <mask> swallows the whitespace before it, as in XLM-R's tokenizer config
};
constexpr std::array<SpecialToken, 5> kSpecials = {{
    {"<s>", XlmrTokenizer::kCls, false},
    {"<pad>", XlmrTokenizer::kPad, false},
    {"</s>", XlmrTokenizer::kEos, false},
    {"<unk>", XlmrTokenizer::kUnk, false},
    {"<mask>", -1, true},
}};

bool is_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'; }

// transformers' XLM-R tokenizer splits words on every Unicode White_Space character
// (Rust's char::is_whitespace) before its Unigram model; SentencePiece alone only treats
// what its normalizer maps to ' ' as a separator, and would turn U+0085, U+1680, U+2028
// or U+2029 into <unk>. Those become plain spaces here, which gives the same split.
std::string unify_whitespace(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  for (size_t i = 0; i < text.size();) {
    const auto b = static_cast<unsigned char>(text[i]);
    size_t len = 1;
    if (b >= 0xF0) len = 4;
    else if (b >= 0xE0) len = 3;
    else if (b >= 0xC0) len = 2;
    len = std::min(len, text.size() - i);
    const std::string_view ch = text.substr(i, len);
    // U+0085; U+1680; U+2000..U+200A, U+2028, U+2029, U+202F, U+205F; U+3000 (U+00A0 maps to ' ' already)
    const bool unicode_space = ch == "\u0085" || ch == "\u1680" || ch == "\u2028" || ch == "\u2029" ||
                               ch == "\u202F" || ch == "\u205F" || ch == "\u3000" || ch == "\u00A0" ||
                               (len == 3 && b == 0xE2 && static_cast<unsigned char>(ch[1]) == 0x80 &&
                                static_cast<unsigned char>(ch[2]) >= 0x80 && static_cast<unsigned char>(ch[2]) <= 0x8A);
    if (unicode_space) {
      out += ' ';
    } else {
      out += ch;
    }
    i += len;
  }
  return out;
}

}  // namespace

XlmrTokenizer::XlmrTokenizer() : sp_(std::make_unique<sentencepiece::SentencePieceProcessor>()) {}
XlmrTokenizer::XlmrTokenizer(XlmrTokenizer&&) noexcept = default;
XlmrTokenizer& XlmrTokenizer::operator=(XlmrTokenizer&&) noexcept = default;
XlmrTokenizer::~XlmrTokenizer() = default;

XlmrTokenizer XlmrTokenizer::load(const std::filesystem::path& model_dir) {
  const auto file = model_dir / "sentencepiece.bpe.model";
  if (!std::filesystem::exists(file)) fail("{}: tokenizer model not found", file.string());
  XlmrTokenizer tokenizer;
  const auto status = tokenizer.sp_->Load(file.string());
  if (!status.ok()) fail("{}: cannot load SentencePiece model ({})", file.string(), status.ToString());
  return tokenizer;
}

int32_t XlmrTokenizer::vocab_size() const { return sp_->GetPieceSize() + kFairseqOffset + 1; }

std::string XlmrTokenizer::id_to_piece(int32_t id) const {
  switch (id) {
    case kCls: return "<s>";
    case kPad: return "<pad>";
    case kEos: return "</s>";
    case kUnk: return "<unk>";
    default: break;
  }
  if (id == mask_id()) return "<mask>";
  if (id < kFairseqOffset || id >= vocab_size()) fail("token id {} is outside the vocabulary", id);
  return sp_->IdToPiece(id - kFairseqOffset);
}

void XlmrTokenizer::append_pieces(std::string_view segment, std::vector<int32_t>& ids) const {
  std::vector<int> pieces;
  const auto status = sp_->Encode(unify_whitespace(segment), &pieces);
  if (!status.ok()) fail("tokenizer: {}", status.ToString());
  for (int p : pieces) ids.push_back(p == 0 ? kUnk : p + kFairseqOffset);
}

std::vector<int32_t> XlmrTokenizer::encode(std::string_view text, size_t max_length, bool* truncated) const {
  std::vector<int32_t> ids{kCls};
  // Special-token strings in the text are tokens of their own, as transformers does
  // (it splits the text on its added tokens before SentencePiece sees it).
  size_t start = 0, pos = 0;
  while (pos < text.size()) {
    const SpecialToken* hit = nullptr;
    if (text[pos] == '<') {
      for (const auto& special : kSpecials) {
        if (text.substr(pos, special.text.size()) == special.text) {
          hit = &special;
          break;
        }
      }
    }
    if (!hit) {
      ++pos;
      continue;
    }
    size_t end = pos;
    if (hit->lstrip) {
      while (end > start && is_space(text[end - 1])) --end;
    }
    append_pieces(text.substr(start, end - start), ids);
    ids.push_back(hit->id >= 0 ? hit->id : mask_id());
    pos += hit->text.size();
    start = pos;
  }
  append_pieces(text.substr(start), ids);

  bool cut = false;
  if (max_length > 0) {
    if (max_length < 2) fail("max_length must be at least 2 (for <s> and </s>), got {}", max_length);
    if (ids.size() + 1 > max_length) {
      ids.resize(max_length - 1);
      cut = true;
    }
  }
  ids.push_back(kEos);
  if (truncated) *truncated = cut;
  return ids;
}

}  // namespace m3
