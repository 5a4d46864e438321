// Just enough of SentencePiece's ModelProto wire format to take the normalizer out of a
// `sentencepiece.bpe.model`: its precompiled charsmap and whitespace settings, and the
// model bytes with an identity normalizer in its place (so the tokenizer can normalize as
// `tokenizers` does).
#pragma once

#include <string>
#include <string_view>

namespace m3 {

struct SplitSpmModel {
  std::string precompiled_charsmap;   // normalizer_spec.precompiled_charsmap (may be empty)
  std::string identity_model;         // the same ModelProto with normalizer_spec -> "identity"
  // normalizer_spec's whitespace handling (sentencepiece_model.proto's defaults: true).
  bool add_dummy_prefix = true;
  bool remove_extra_whitespaces = true;
  bool escape_whitespaces = true;
};

// Throws m3::Error naming `source` when the bytes are not a well-formed ModelProto.
SplitSpmModel split_spm_model(std::string_view serialized, const std::string& source);

}  // namespace m3
