#include "m3/tokenizer/xlmr_tokenizer.h"

#include <array>
#include <cctype>
#include <fstream>
#include <sstream>

#include <sentencepiece_processor.h>

#include <simdjson.h>

#include "m3/core/error.h"
#include "m3/tokenizer/spm_model_proto.h"

namespace m3 {
namespace {

struct SpecialToken {
  std::string_view text;
  int32_t id;  // -1: <mask>, resolved from the vocabulary size (and maybe lstrip)
};
constexpr std::array<SpecialToken, 5> kSpecials = {{
    {"<s>", XlmrTokenizer::kCls},
    {"<pad>", XlmrTokenizer::kPad},
    {"</s>", XlmrTokenizer::kEos},
    {"<unk>", XlmrTokenizer::kUnk},
    {"<mask>", -1},
}};

bool is_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'; }

// transformers' XLM-R tokenizer splits words on every Unicode White_Space character
// (Rust's char::is_whitespace) after normalizing; SentencePiece only splits on ' '.
// Every such character becomes a plain space here, which gives the same words.
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
    const bool unicode_space = (len == 1 && is_space(ch[0])) || ch == "\u0085" || ch == "\u1680" || ch == "\u2028" || ch == "\u2029" ||
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

// WhitespaceSplit when tokenizer.json's pre-tokenizer uses it (files transformers 5
// writes); Metaspace otherwise, as transformers 4 runs the official file and as its
// converter builds the pipeline when there is no tokenizer.json.
WordSplit detect_word_split(simdjson::dom::element root) {
  simdjson::dom::element pre;
  if (root["pre_tokenizer"].get(pre) != simdjson::SUCCESS) return WordSplit::kMetaspace;
  std::string_view type;
  if (pre["type"].get_string().get(type) == simdjson::SUCCESS && type == "WhitespaceSplit") {
    return WordSplit::kWhitespaceSplit;
  }
  simdjson::dom::array steps;
  if (pre["pretokenizers"].get_array().get(steps) == simdjson::SUCCESS) {
    for (auto step : steps) {
      if (step["type"].get_string().get(type) == simdjson::SUCCESS && type == "WhitespaceSplit") {
        return WordSplit::kWhitespaceSplit;
      }
    }
  }
  return WordSplit::kMetaspace;
}

// The "lstrip" flag of <mask> among tokenizer.json's added tokens (true when absent, as
// in XLM-R's tokenizer class).
bool mask_lstrip(simdjson::dom::element root) {
  simdjson::dom::array added;
  if (root["added_tokens"].get_array().get(added) != simdjson::SUCCESS) return true;
  for (auto token : added) {
    std::string_view content;
    bool lstrip;
    if (token["content"].get_string().get(content) == simdjson::SUCCESS && content == "<mask>" &&
        token["lstrip"].get_bool().get(lstrip) == simdjson::SUCCESS) {
      return lstrip;
    }
  }
  return true;
}

XlmrTokenizer XlmrTokenizer::load(const std::filesystem::path& model_dir, WordSplit split) {
  const auto file = model_dir / "sentencepiece.bpe.model";
  if (!std::filesystem::exists(file)) fail("{}: tokenizer model not found", file.string());
  std::ifstream in(file, std::ios::binary);
  std::stringstream bytes;
  bytes << in.rdbuf();
  if (!in) fail("{}: cannot read", file.string());
  auto parts = split_spm_model(bytes.str(), file.string());
  XlmrTokenizer tokenizer;
  const auto status = tokenizer.sp_->LoadFromSerializedProto(parts.identity_model);
  if (!status.ok()) fail("{}: cannot load SentencePiece model ({})", file.string(), status.ToString());
  tokenizer.normalizer_ = std::make_unique<PrecompiledNormalizer>(std::move(parts.precompiled_charsmap), file.string());
  // transformers 5 ignores tokenizer.json's pipeline and added-token flags; 4 runs them.
  const auto json_file = model_dir / "tokenizer.json";
  simdjson::dom::parser parser;
  simdjson::dom::element json;
  const bool has_json = std::filesystem::exists(json_file);
  if (has_json && parser.load(json_file.string()).get(json) != simdjson::SUCCESS) {
    fail("{}: not valid JSON", json_file.string());
  }
  tokenizer.split_ = split != WordSplit::kAuto ? split : has_json ? detect_word_split(json) : WordSplit::kMetaspace;
  tokenizer.mask_lstrip_ = tokenizer.split_ == WordSplit::kWhitespaceSplit || !has_json || mask_lstrip(json);
  const int space = tokenizer.sp_->PieceToId("\u2581");
  tokenizer.space_piece_id_ = tokenizer.sp_->IsUnknown(space) ? -1 : space + kFairseqOffset;
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
  std::string normalized = normalizer_->normalize(segment);
  if (split_ == WordSplit::kWhitespaceSplit) normalized = unify_whitespace(normalized);
  std::vector<int> pieces;
  const auto status = sp_->Encode(normalized, &pieces);
  if (!status.ok()) fail("tokenizer: {}", status.ToString());
  for (int p : pieces) ids.push_back(p == 0 ? kUnk : p + kFairseqOffset);
  // Metaspace keeps a trailing space (SentencePiece drops it) as a word of its own, "▁".
  if (split_ == WordSplit::kMetaspace && !normalized.empty() && normalized.back() == ' ') {
    ids.push_back(space_piece_id_ >= 0 ? space_piece_id_ : kUnk);
  }
}

std::string XlmrTokenizer::decode(const std::vector<int32_t>& ids, bool skip_special_tokens) const {
  static constexpr std::string_view kWordMarker = "\u2581";
  std::string text;
  for (int32_t id : ids) {
    const bool special = (id >= kCls && id <= kUnk) || id == mask_id();
    if (special && skip_special_tokens) continue;
    const std::string piece = id_to_piece(id);
    for (size_t at = 0; at < piece.size();) {
      if (piece.compare(at, kWordMarker.size(), kWordMarker) == 0) {
        text += ' ';
        at += kWordMarker.size();
      } else {
        text += piece[at++];
      }
    }
  }
  if (!text.empty() && text.front() == ' ') text.erase(0, 1);
  return text;
}

std::vector<int32_t> XlmrTokenizer::encode(std::string_view text, size_t max_length, bool* truncated,
                                           bool keep_end) const {
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
    if (hit->id < 0 && mask_lstrip_) {
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
      if (keep_end) {
        ids.erase(ids.begin() + 1, ids.begin() + 1 + static_cast<ptrdiff_t>(ids.size() + 1 - max_length));
      } else {
        ids.resize(max_length - 1);
      }
      cut = true;
    }
  }
  ids.push_back(kEos);
  if (truncated) *truncated = cut;
  return ids;
}

}  // namespace m3
