// Reranker and classifier routes: request parsing and response encoding for TEI's /rerank
// and /predict and the Cohere/Jina-style /v1/rerank (what LangChain, LlamaIndex and Dify
// rerankers call, and what vLLM and Infinity serve). Pure functions; scores come in as the
// model's logits, one row per input.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "m3/server/api_limits.h"

namespace m3::server {

// TEI /rerank: {"query", "texts", "truncate", "truncation_direction", "raw_scores",
// "return_text"}; /v1/rerank: {"model", "query", "documents": [string | {"text"}], "top_n",
// "return_documents"}.
struct RerankRequest {
  std::string query;
  std::vector<std::string> texts;
  std::optional<bool> truncate;  // absent: the server's --auto-truncate
  bool raw_scores = false;       // TEI: the logits instead of their sigmoid
  bool return_text = false;      // echo each text (TEI "return_text", Cohere "return_documents")
  int64_t top_n = 0;             // 0: every text
  std::string model;
};
RerankRequest parse_tei_rerank_request(std::string_view body, const ApiLimits& limits);
RerankRequest parse_cohere_rerank_request(std::string_view body, const ApiLimits& limits);

// [{"index", "score", "text"?}] sorted by score, highest first (TEI's Rank list): the
// sigmoid of each logit, or the logit with raw_scores.
std::string tei_rerank_response(const std::vector<float>& logits, const RerankRequest& request);

struct RerankResponseInfo {
  std::string id, model;
  int64_t tokens = 0;
};
// {"id", "model", "results": [{"index", "relevance_score", "document": {"text"}?}], "usage":
// {"total_tokens"}, "meta": {...}}: the top_n texts by sigmoid(logit), highest first, with
// the fields Cohere's, Jina's and vLLM's clients read.
std::string cohere_rerank_response(const std::vector<float>& logits, const RerankRequest& request,
                                   const RerankResponseInfo& info);

// TEI /predict: {"inputs": text | [text, text] | [text | [text, text], ...], "raw_scores",
// "truncate", "truncation_direction"}. A two-string array is one pair, as TEI reads it.
struct PredictInput {
  std::string text;
  std::optional<std::string> pair;
};
struct PredictRequest {
  std::vector<PredictInput> inputs;
  bool batch = false;  // answer a list per input
  std::optional<bool> truncate;
  bool raw_scores = false;
};
PredictRequest parse_tei_predict_request(std::string_view body, const ApiLimits& limits);

// [{"score", "label"}] per input, highest first: the softmax of the logits (the sigmoid of
// each with one label or a multi-label model), or the logits with raw_scores; a list of
// those for a batch.
std::string tei_predict_response(const std::vector<std::vector<float>>& logits, const std::vector<std::string>& labels,
                                 const PredictRequest& request, bool multi_label);

}  // namespace m3::server
