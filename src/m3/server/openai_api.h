// OpenAI's embeddings API: POST /v1/embeddings request parsing and response encoding,
// and GET /v1/models. Pure functions: no model, no socket.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "m3/model/m3_output.h"
#include "m3/server/api_limits.h"
#include "m3/server/input_list.h"

namespace m3::server {

struct OpenAiEmbeddingRequest {
  std::vector<Input> inputs;
  bool base64 = false;     // encoding_format "base64": little-endian float32 bytes
  int64_t dimensions = 0;  // 0: all of them
  std::string model;       // as sent; empty when absent
};

// Throws ApiError (400 malformed JSON, 422 invalid values, 413 too many inputs).
OpenAiEmbeddingRequest parse_openai_embedding_request(std::string_view body, const ApiLimits& limits);

// {"object": "list", "data": [{"object": "embedding", "index", "embedding"}], "model", "usage"}.
std::string openai_embedding_response(const std::vector<M3Output>& outputs, const OpenAiEmbeddingRequest& request,
                                      std::string_view model, int64_t prompt_tokens);

std::string openai_models_response(const std::vector<std::string>& models);

}  // namespace m3::server
