// A route's answer: either a response now, or an InferenceJob: sequences for the scheduler
// plus the function that turns their outputs into the response. Routes run synchronously
// on an I/O thread (parse, validate, tokenize); the session runs the job asynchronously.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <vector>

#include "m3/memory/memory_plan.h"
#include "m3/model/m3_output.h"
#include "m3/runtime/embedder.h"
#include "m3/server/http_types.h"
#include "m3/server/server_context.h"

namespace m3::server {

struct InferenceJob {
  std::vector<std::vector<int32_t>> sequences;
  OutputRequest outputs;
  int64_t tokens = 0;
  // Upper bound of the memory its response holds: the outputs, then their JSON
  // (--max-response-bytes, and reserved from --output-memory until it is written).
  uint64_t response_bytes = 0;
  // Runs on an I/O thread with the outputs in sequence order; may throw ApiError.
  std::function<HttpResponse(std::vector<M3Output>&&)> respond;
};

struct RouteResult {
  HttpResponse response;
  std::optional<InferenceJob> job;
};

// Handlers of the routes that need the model; they throw ApiError to refuse.
RouteResult openai_embeddings(ServerContext& context, ServedModel& model, const HttpRequest& request);
RouteResult tei_embed(ServerContext& context, ServedModel& model, const HttpRequest& request);
RouteResult tei_embed_sparse(ServerContext& context, ServedModel& model, const HttpRequest& request);
RouteResult tei_embed_all(ServerContext& context, ServedModel& model, const HttpRequest& request);
RouteResult tei_tokenize(ServerContext& context, ServedModel& model, const HttpRequest& request);
RouteResult tei_similarity(ServerContext& context, ServedModel& model, const HttpRequest& request);
RouteResult tei_decode(ServerContext& context, ServedModel& model, const HttpRequest& request);
RouteResult native_encode(ServerContext& context, ServedModel& model, const HttpRequest& request);
RouteResult tei_rerank(ServerContext& context, ServedModel& model, const HttpRequest& request);
RouteResult tei_predict(ServerContext& context, ServedModel& model, const HttpRequest& request);
RouteResult cohere_rerank(ServerContext& context, ServedModel& model, const HttpRequest& request);
RouteResult native_score(ServerContext& context, ServedModel& model, const HttpRequest& request);
RouteResult vllm_pooling(ServerContext& context, ServedModel& model, const HttpRequest& request);

// TEST ONLY (serve --test-batch-gate): GET/POST /test/batch-gate.
HttpResponse test_batch_gate(ServerContext& context, const HttpRequest& request);

// Handlers that answer in any state.
HttpResponse health_response(const ServerContext& context);
HttpResponse info_response(const ServerContext& context);  // 503 while loading
HttpResponse metrics_response(const ServerContext& context);
HttpResponse models_response(const ServerContext& context);

// 424 when the model is of the other kind (a classifier asked to embed, an embedder asked
// for scores: TEI's "model is not a re-ranker model"); 422 naming the missing head file
// when the model cannot produce `outputs`.
void check_outputs(const Embedder& embedder, const OutputRequest& outputs);
// Bytes a response of `floats` numbers holds: the floats, then their JSON (memory_plan.h).
constexpr uint64_t json_bytes_for_floats(uint64_t floats) { return response_bytes_for_floats(floats); }
// Per token of sparse output: an (id, weight) pair, then about 40 bytes of JSON.
inline constexpr uint64_t kSparseBytesPerToken = 48;

}  // namespace m3::server
