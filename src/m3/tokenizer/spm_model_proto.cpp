#include "m3/tokenizer/spm_model_proto.h"

#include <cstdint>

#include "m3/core/error.h"

namespace m3 {
namespace {

// Protobuf field numbers (sentencepiece_model.proto).
constexpr uint32_t kModelNormalizerSpec = 3;
constexpr uint32_t kNormalizerName = 1;
constexpr uint32_t kNormalizerCharsmap = 2;
constexpr uint32_t kNormalizerAddDummyPrefix = 3;
constexpr uint32_t kNormalizerRemoveExtraWhitespaces = 4;
constexpr uint32_t kNormalizerEscapeWhitespaces = 5;

class WireReader {
 public:
  WireReader(std::string_view bytes, const std::string& source) : bytes_(bytes), source_(source) {}
  bool done() const { return pos_ >= bytes_.size(); }
  size_t pos() const { return pos_; }

  uint64_t varint() {
    uint64_t value = 0;
    for (int shift = 0; shift < 64; shift += 7) {
      if (pos_ >= bytes_.size()) fail("{}: truncated SentencePiece model", source_);
      const auto b = static_cast<uint8_t>(bytes_[pos_++]);
      value |= uint64_t(b & 0x7f) << shift;
      if (!(b & 0x80)) return value;
    }
    fail("{}: malformed SentencePiece model (varint)", source_);
  }

  // Skips the value of a field of `wire_type`; returns the payload of length-delimited ones.
  std::string_view value(uint32_t wire_type) {
    switch (wire_type) {
      case 0: varint(); return {};
      case 1: return take(8);
      case 5: return take(4);
      case 2: return take(varint());
      default: fail("{}: malformed SentencePiece model (wire type {})", source_, wire_type);
    }
  }

 private:
  std::string_view take(uint64_t n) {
    if (n > bytes_.size() - pos_) fail("{}: truncated SentencePiece model", source_);
    const auto out = bytes_.substr(pos_, n);
    pos_ += n;
    return out;
  }

  std::string_view bytes_;
  const std::string& source_;
  size_t pos_ = 0;
};

void put_varint(std::string& out, uint64_t v) {
  while (v >= 0x80) {
    out += static_cast<char>((v & 0x7f) | 0x80);
    v >>= 7;
  }
  out += static_cast<char>(v);
}

void put_bytes_field(std::string& out, uint32_t field, std::string_view payload) {
  put_varint(out, (uint64_t(field) << 3) | 2);
  put_varint(out, payload.size());
  out += payload;
}

}  // namespace

SplitSpmModel split_spm_model(std::string_view serialized, const std::string& source) {
  SplitSpmModel result;
  WireReader model(serialized, source);
  while (!model.done()) {
    const size_t field_start = model.pos();
    const uint64_t key = model.varint();
    const auto field = static_cast<uint32_t>(key >> 3);
    const std::string_view payload = model.value(static_cast<uint32_t>(key & 7));
    if (field != kModelNormalizerSpec) {
      result.identity_model += serialized.substr(field_start, model.pos() - field_start);
      continue;
    }
    // Keep every normalizer setting (dummy prefix, whitespace handling) but the rule.
    std::string spec;
    put_bytes_field(spec, kNormalizerName, "identity");
    WireReader normalizer(payload, source);
    while (!normalizer.done()) {
      const size_t start = normalizer.pos();
      const uint64_t nkey = normalizer.varint();
      const auto nfield = static_cast<uint32_t>(nkey >> 3);
      if ((nkey & 7) == 0 && nfield >= kNormalizerAddDummyPrefix && nfield <= kNormalizerEscapeWhitespaces) {
        const bool on = normalizer.varint() != 0;
        if (nfield == kNormalizerAddDummyPrefix) result.add_dummy_prefix = on;
        if (nfield == kNormalizerRemoveExtraWhitespaces) result.remove_extra_whitespaces = on;
        if (nfield == kNormalizerEscapeWhitespaces) result.escape_whitespaces = on;
        spec += payload.substr(start, normalizer.pos() - start);
        continue;
      }
      const std::string_view value = normalizer.value(static_cast<uint32_t>(nkey & 7));
      if (nfield == kNormalizerCharsmap) {
        result.precompiled_charsmap = std::string(value);
      } else if (nfield != kNormalizerName) {
        spec += payload.substr(start, normalizer.pos() - start);
      }
    }
    put_bytes_field(result.identity_model, kModelNormalizerSpec, spec);
  }
  return result;
}

}  // namespace m3
