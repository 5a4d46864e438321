// Hugging Face text-embeddings-inference (TEI) compatible routes: request parsing and
// response encoding for /embed, /embed_sparse, /embed_all and /tokenize. Pure functions.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "m3/model/m3_output.h"
#include "m3/server/api_limits.h"
#include "m3/server/input_list.h"
#include "m3/tokenizer/precompiled_normalizer.h"

namespace m3::server {

// /embed, /embed_sparse and /embed_all share this shape (normalize and dimensions are
// /embed's; the others ignore them). normalize=false returns the raw CLS state.
struct TeiEmbedRequest {
  std::vector<Input> inputs;
  std::optional<bool> truncate;  // absent: the server's --auto-truncate
  bool truncate_left = false;    // truncation_direction "left" / "Left"
  bool normalize = true;
  int64_t dimensions = 0;  // 0: all
};

// /similarity: {"inputs": {"source_sentence", "sentences"}, "parameters": {...}}; inputs[0]
// is the source sentence, the rest the sentences (huggingface_hub's sentence_similarity).
TeiEmbedRequest parse_tei_similarity_request(std::string_view body, const ApiLimits& limits);
// [cosine(source, sentence_i)] over the dense vectors.
std::string tei_similarity_response(const std::vector<M3Output>& outputs);

// /decode: {"ids": [ids] or [[ids], ...], "skip_special_tokens": true}.
struct TeiDecodeRequest {
  std::vector<std::vector<int32_t>> ids;
  bool skip_special_tokens = true;
};
TeiDecodeRequest parse_tei_decode_request(std::string_view body, const ApiLimits& limits);

struct TeiTokenizeRequest {
  std::vector<Input> inputs;
  bool add_special_tokens = true;
};

struct TeiToken {
  int32_t id = 0;
  std::string text;  // the input's bytes at `offsets`, or a special token's own text
  bool special = false;
  std::optional<ByteRange> offsets;  // TEI's start/stop (null for special tokens)
};

TeiEmbedRequest parse_tei_embed_request(std::string_view body, const ApiLimits& limits);
TeiTokenizeRequest parse_tei_tokenize_request(std::string_view body, const ApiLimits& limits);

// [[f32]]: the dense vectors (first `dimensions` re-normalized), or with !normalize the raw
// CLS states (first `dimensions` as they are), as TEI's /embed.
std::string tei_embed_response(const std::vector<M3Output>& outputs, int64_t dimensions, bool normalize = true);
std::string tei_sparse_response(const std::vector<M3Output>& outputs);                     // [[{"index", "value"}]]
std::string tei_all_response(const std::vector<M3Output>& outputs, int64_t hidden);        // [[[f32]]]: ColBERT rows
// [[{"id", "text", "special", "start", "stop"}]]; offsets are null (see docs/API.md).
std::string tei_tokenize_response(const std::vector<std::vector<TeiToken>>& tokens);

}  // namespace m3::server
