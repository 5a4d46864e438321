#include "m3/tokenizer/xlmr_tokenizer.h"

#include <array>
#include <cctype>
#include <fstream>
#include <sstream>

#include <sentencepiece_processor.h>

#include <simdjson.h>

#include "m3/core/error.h"
#include "m3/tokenizer/spm_model_proto.h"
#include "m3/tokenizer/token_offsets.h"

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

constexpr std::string_view kWordMarker = "\u2581";  // SentencePiece's "▁"

bool is_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'; }

size_t utf8_length(unsigned char lead) {
  if (lead >= 0xF0) return 4;
  if (lead >= 0xE0) return 3;
  if (lead >= 0xC0) return 2;
  return 1;
}

// Unicode White_Space (Rust's char::is_whitespace), for one UTF-8 character.
bool is_unicode_space(std::string_view ch) {
  if (ch.size() == 1) return is_space(ch[0]);
  // U+0085, U+00A0; U+1680; U+2000..U+200A, U+2028, U+2029, U+202F, U+205F; U+3000
  return ch == "\u0085" || ch == "\u00A0" || ch == "\u1680" || ch == "\u2028" || ch == "\u2029" ||
         ch == "\u202F" || ch == "\u205F" || ch == "\u3000" ||
         (ch.size() == 3 && static_cast<unsigned char>(ch[0]) == 0xE2 && static_cast<unsigned char>(ch[1]) == 0x80 &&
          static_cast<unsigned char>(ch[2]) >= 0x80 && static_cast<unsigned char>(ch[2]) <= 0x8A);
}

// Where the whitespace at the end of `text` starts (text.size() when there is none).
size_t trailing_space_start(std::string_view text) {
  size_t end = text.size();
  while (end > 0) {
    size_t lead = end - 1;
    while (lead > 0 && (static_cast<unsigned char>(text[lead]) & 0xC0) == 0x80) --lead;
    if (!is_unicode_space(text.substr(lead, end - lead))) break;
    end = lead;
  }
  return end;
}

// transformers' XLM-R tokenizer splits words on every Unicode White_Space character
// (Rust's char::is_whitespace) after normalizing; SentencePiece only splits on ' '.
// Every such character becomes a plain space here, which gives the same words; `origin`
// (per byte, where it came from in the text) follows.
std::string unify_whitespace(std::string_view text, std::vector<ByteRange>* origin) {
  std::string out;
  out.reserve(text.size());
  std::vector<ByteRange> moved;
  for (size_t i = 0; i < text.size();) {
    const size_t len = std::min(utf8_length(static_cast<unsigned char>(text[i])), text.size() - i);
    const std::string_view ch = text.substr(i, len);
    if (is_unicode_space(ch)) {
      out += ' ';
      if (origin) moved.push_back((*origin)[i]);
    } else {
      out += ch;
      if (origin) moved.insert(moved.end(), origin->begin() + i, origin->begin() + i + len);
    }
    i += len;
  }
  if (origin) *origin = std::move(moved);
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
  // The vocabulary as transformers' XLM-R converter writes it into tokenizer.json (and
  // as tokenizers matches it): the fairseq specials with score 0 in place of
  // SentencePiece's first three pieces, every other piece at its fairseq id, <mask> last.
  const int pieces = tokenizer.sp_->GetPieceSize();
  if (pieces < 3) fail("{}: a SentencePiece model of {} pieces is not an XLM-R vocabulary", file.string(), pieces);
  std::vector<std::pair<std::string_view, double>> vocab = {{"<s>", 0.0}, {"<pad>", 0.0}, {"</s>", 0.0}, {"<unk>", 0.0}};
  vocab.reserve(static_cast<size_t>(pieces) + 2);
  for (int p = 3; p < pieces; ++p) vocab.emplace_back(tokenizer.sp_->IdToPiece(p), tokenizer.sp_->GetScore(p));
  vocab.emplace_back("<mask>", 0.0);
  tokenizer.unigram_ = std::make_unique<UnigramViterbi>(
      vocab, kUnk, SpmWhitespace{parts.add_dummy_prefix, parts.remove_extra_whitespaces, parts.escape_whitespaces});
  // transformers 5 ignores tokenizer.json's pipeline and added-token flags; 4 runs them.
  const auto json_file = model_dir / "tokenizer.json";
  simdjson::dom::parser parser;
  simdjson::dom::element json;
  const bool has_json = std::filesystem::exists(json_file);
  if (has_json && parser.load(json_file.string()).get(json) != simdjson::SUCCESS) {
    fail("{}: not valid JSON", json_file.string());
  }
  tokenizer.split_ = split != WordSplit::kAuto ? split : has_json ? detect_word_split(json) : WordSplit::kMetaspace;
  tokenizer.mask_span_lstrip_ = !has_json || mask_lstrip(json);
  tokenizer.mask_lstrip_ = tokenizer.split_ == WordSplit::kWhitespaceSplit || tokenizer.mask_span_lstrip_;
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

void XlmrTokenizer::append_pieces(std::string_view segment, uint32_t base, std::vector<int32_t>& ids,
                                  std::vector<ByteRange>* offsets) const {
  std::vector<ByteRange> origin;
  std::vector<ByteRange>* aligned = offsets ? &origin : nullptr;
  std::string normalized = normalizer_->normalize(segment, aligned);
  if (split_ == WordSplit::kWhitespaceSplit) normalized = unify_whitespace(normalized, aligned);
  std::vector<SpmPiece> pieces;
  unigram_->encode(normalized, ids, offsets ? &pieces : nullptr);
  // Metaspace keeps a trailing space (SentencePiece drops it) as a word of its own, "▁".
  if (split_ == WordSplit::kMetaspace && !normalized.empty() && normalized.back() == ' ') {
    ids.push_back(space_piece_id_ >= 0 ? space_piece_id_ : kUnk);
    const auto end = static_cast<uint32_t>(normalized.size());
    pieces.push_back({end, end, true});
  }
  if (offsets) {
    const auto marker = split_ == WordSplit::kMetaspace ? MarkerOrigin::kSpace : MarkerOrigin::kFirstCharacter;
    append_token_offsets(normalized, origin, pieces, marker, base, *offsets);
  }
}

std::string XlmrTokenizer::decode(const std::vector<int32_t>& ids, bool skip_special_tokens) const {
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

std::vector<int32_t> XlmrTokenizer::encode(std::string_view text, size_t max_length, bool* truncated, bool keep_end,
                                           std::vector<ByteRange>* offsets) const {
  std::vector<int32_t> ids{kCls};
  if (offsets) *offsets = {ByteRange{}};
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
    // <mask> (lstrip) takes the whitespace before it, any Unicode space, as tokenizers does.
    const size_t end = hit->id < 0 && mask_lstrip_ ? start + trailing_space_start(text.substr(start, pos - start)) : pos;
    append_pieces(text.substr(start, end - start), static_cast<uint32_t>(start), ids, offsets);
    ids.push_back(hit->id >= 0 ? hit->id : mask_id());
    const size_t span = hit->id < 0 && mask_span_lstrip_ ? end : pos;
    if (offsets) offsets->push_back({static_cast<uint32_t>(span), static_cast<uint32_t>(pos + hit->text.size())});
    pos += hit->text.size();
    start = pos;
  }
  append_pieces(text.substr(start), static_cast<uint32_t>(start), ids, offsets);

  bool cut = false;
  if (max_length > 0) {
    if (max_length < 2) fail("max_length must be at least 2 (for <s> and </s>), got {}", max_length);
    if (ids.size() + 1 > max_length) {
      const size_t drop = ids.size() + 1 - max_length;
      if (keep_end) {
        ids.erase(ids.begin() + 1, ids.begin() + 1 + static_cast<ptrdiff_t>(drop));
        if (offsets) offsets->erase(offsets->begin() + 1, offsets->begin() + 1 + static_cast<ptrdiff_t>(drop));
      } else {
        ids.resize(max_length - 1);
        if (offsets) offsets->resize(max_length - 1);
      }
      cut = true;
    }
  }
  ids.push_back(kEos);
  if (offsets) offsets->push_back({});
  if (truncated) *truncated = cut;
  return ids;
}

std::vector<int32_t> XlmrTokenizer::encode_pair(std::string_view query, std::string_view passage,
                                                size_t query_max_pieces, size_t max_length, bool* truncated) const {
  constexpr size_t kSpecials = 4;  // <s> </s></s> </s>
  // Each text's pieces without its <s> and </s> (encode cuts to max - 2 pieces).
  bool query_cut = false, passage_cut = false;
  std::vector<int32_t> q = encode(query, query_max_pieces + 2, &query_cut);
  std::vector<int32_t> p = encode(passage, max_length + 2, &passage_cut);
  const size_t q_pieces = q.size() - 2, p_pieces = p.size() - 2;
  if (q_pieces + kSpecials > max_length) {
    fail("the query has {} tokens, which leaves no room for the passage within {} tokens: shorten the query or "
         "lower its limit", q_pieces, max_length);
  }
  const size_t keep = std::min(p_pieces, max_length - kSpecials - q_pieces);
  passage_cut = passage_cut || keep < p_pieces;
  std::vector<int32_t> ids(q.begin(), q.end() - 1);  // <s> query
  ids.push_back(kEos);
  ids.push_back(kEos);
  ids.insert(ids.end(), p.begin() + 1, p.begin() + 1 + static_cast<ptrdiff_t>(keep));
  ids.push_back(kEos);
  if (truncated) *truncated = query_cut || passage_cut;
  return ids;
}

}  // namespace m3
