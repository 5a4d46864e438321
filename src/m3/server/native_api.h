// The native routes, in FlagEmbedding's terms: POST /m3/encode (any of dense, sparse and
// ColBERT outputs in one pass, with FlagEmbedding's keys) and POST /m3/score
// (compute_score's five scores per query/passage pair). Pure parsing and encoding.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "m3/model/m3_output.h"
#include "m3/model/scoring.h"
#include "m3/server/api_limits.h"
#include "m3/server/input_list.h"

namespace m3::server {

struct NativeEncodeRequest {
  std::vector<Input> inputs;
  OutputRequest outputs;         // return_dense (default true), return_sparse, return_colbert_vecs
  std::optional<bool> truncate;  // absent: the server's --auto-truncate
  int64_t max_length = 0;        // 0: the server's max_seq_len (larger values are capped to it)
  bool return_tokens = false;    // input_ids, tokens and lexical weights keyed by token text
  std::string model;
};

struct NativeScoreRequest {
  std::vector<std::pair<std::string, std::string>> pairs;  // (query, passage)
  ScoreWeights weights;
  int64_t max_query_length = 512;  // as compute_score; capped to max_seq_len
  int64_t max_passage_length = 8192;
  std::string model;
};

// What /m3/encode reports per input besides the outputs.
struct EncodedInput {
  const std::vector<int32_t>* ids = nullptr;  // the sequence fed to the model
  bool truncated = false;
  std::vector<std::string> pieces;  // with return_tokens: token text of each id
};

NativeEncodeRequest parse_native_encode_request(std::string_view body, const ApiLimits& limits);
NativeScoreRequest parse_native_score_request(std::string_view body, const ApiLimits& limits);

// {"object": "list", "data": [{"index", "dense_vecs", "lexical_weights", "colbert_vecs", "truncated",
// ["input_ids", "tokens", "lexical_tokens"]}], "model", "usage"}.
std::string native_encode_response(const std::vector<M3Output>& outputs, const std::vector<EncodedInput>& inputs,
                                   const NativeEncodeRequest& request, int64_t hidden, std::string_view model,
                                   int64_t tokens);
// {"object": "list", "data": [{"index", "dense", "sparse", "colbert", "sparse+dense",
// "colbert+sparse+dense"}], "model", "usage"}.
std::string native_score_response(const std::vector<PairScores>& scores, std::string_view model, int64_t tokens);

}  // namespace m3::server
