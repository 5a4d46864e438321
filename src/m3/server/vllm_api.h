// vLLM's Pooling API (POST /pooling) as vLLM serves BGE-M3 (`--hf-overrides
// '{"architectures": ["BgeM3EmbeddingModel"]}'`): request parsing and response encoding,
// pure functions (no model, no socket). What vLLM returns per task (docs/API.md, /pooling):
//  - embed: the dense vector (L2-normalized CLS state; use_activation false: the raw state);
//  - token_classify: relu(sparse_linear(h)) per position, <s> and </s> dropped (BOSEOSFilter
//    with both ids), a flat list of floats (the [n, 1] rows squeezed);
//  - token_embed: colbert_linear(h) per position, L2-normalized, <s> dropped and </s> kept
//    (BOSEOSFilter with the bos id only), a list of rows.
// Sources: vllm/model_executor/models/roberta.py (BgeM3EmbeddingModel._build_pooler),
// vllm/model_executor/layers/pooler/special.py (BOSEOSFilter), .../pooler/tokwise/heads.py,
// vllm/entrypoints/pooling/pooling/{protocol,serving}.py, vllm/entrypoints/pooling/base/protocol.py.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "m3/model/m3_output.h"
#include "m3/server/api_limits.h"
#include "m3/server/input_list.h"

namespace m3::server {

enum class PoolingTask { kEmbed, kTokenClassify, kTokenEmbed };

struct VllmPoolingRequest {
  std::vector<Input> inputs;
  PoolingTask task = PoolingTask::kEmbed;  // absent: "embed" (vLLM's default task for BgeM3EmbeddingModel)
  bool base64 = false;                     // encoding_format "base64": float32 bytes, `endianness` order
  bool big_endian = false;                 // endianness "big" (default "native", little here)
  bool activation = true;                  // use_activation (older vLLM: normalize / activation)
  // truncate_prompt_tokens: nullopt none, -1 the server's max_seq_len, else at least 2 tokens.
  std::optional<int64_t> truncate_prompt_tokens;
  bool truncate_left = false;  // truncation_side "left": keep <s>, the last pieces and </s>
  std::string model;           // as sent; empty when absent
  std::string request_id;      // as sent; empty when absent (the response's id is "pooling-" + it)
};

// Throws ApiError (400 malformed JSON, 422 invalid or unsupported values, 413 too many inputs).
VllmPoolingRequest parse_vllm_pooling_request(std::string_view body, const ApiLimits& limits);

// What the engine computes for a task.
OutputRequest pooling_outputs(PoolingTask task);

struct PoolingResponseInfo {
  std::string id;        // "pooling-..."
  int64_t created = 0;   // Unix seconds
  std::string model;
  int64_t prompt_tokens = 0;
  int64_t hidden = 0;    // ColBERT row width
};

// {"id", "object": "list", "created", "model", "data": [{"index", "object": "pooling",
// "data"}], "usage": {"prompt_tokens", "total_tokens", "completion_tokens": 0,
// "prompt_tokens_details": null}}, in vLLM's field order. Each output must hold what
// pooling_outputs(request.task) asked for, from a sequence framed by <s> ... </s>.
std::string vllm_pooling_response(const std::vector<M3Output>& outputs, const VllmPoolingRequest& request,
                                  const PoolingResponseInfo& info);

}  // namespace m3::server
