// POST /pooling: vLLM's Pooling API over BGE-M3's outputs (vllm_api.h says what each task returns).
#include <ctime>
#include <random>

#include <fmt/format.h>

#include "m3/server/api_error.h"
#include "m3/server/route.h"
#include "m3/server/tokenize_inputs.h"
#include "m3/server/vllm_api.h"

namespace m3::server {
namespace {

// vLLM's random_uuid(): 32 hex digits.
std::string random_id() {
  thread_local std::mt19937_64 engine{std::random_device{}()};
  return fmt::format("{:016x}{:016x}", engine(), engine());
}

}  // namespace

RouteResult vllm_pooling(ServerContext& context, ServedModel& model, const HttpRequest& http) {
  Embedder& embedder = *model.engine;
  auto request = std::make_shared<VllmPoolingRequest>(parse_vllm_pooling_request(http.body, model.limits));
  const OutputRequest outputs = pooling_outputs(request->task);
  check_outputs(embedder, outputs);
  LengthRule rule;
  rule.max_length = embedder.max_seq_len();
  rule.truncate = context.options.auto_truncate;
  rule.truncate_left = request->truncate_left;
  rule.hint = "send \"truncate_prompt_tokens\" or start the server with --auto-truncate";
  if (const auto keep = request->truncate_prompt_tokens) {
    if (*keep > embedder.max_seq_len()) {
      reject(422, "truncate_prompt_tokens", "`truncate_prompt_tokens` {} is larger than the server's max_seq_len {}",
             *keep, embedder.max_seq_len());
    }
    rule.truncate = true;
    if (*keep > 0) rule.max_length = *keep;
  }
  TokenizedInputs tokenized = tokenize_inputs(embedder.tokenizer(), request->inputs, rule, "input");
  request->inputs.clear();  // the texts are not needed any more

  InferenceJob job;
  job.outputs = outputs;
  job.tokens = tokenized.tokens;
  const auto hidden = static_cast<uint64_t>(embedder.config().hidden_size);
  const auto tokens = static_cast<uint64_t>(job.tokens);
  const uint64_t sequences = tokenized.sequences.size();
  PoolingResponseInfo info;
  info.id = "pooling-" + (request->request_id.empty() ? random_id() : request->request_id);
  info.created = static_cast<int64_t>(std::time(nullptr));
  info.model = request->model.empty() ? model.name : request->model;
  info.prompt_tokens = job.tokens;
  info.hidden = embedder.config().hidden_size;
  const uint64_t floats = outputs.dense ? sequences * hidden : outputs.colbert ? tokens * hidden : tokens;
  // The outputs and their JSON, plus each item's {"index", "object", "data"} and the envelope.
  job.response_bytes =
      json_bytes_for_floats(floats) + sequences * 64 + 512 + 2 * (info.id.size() + info.model.size());
  job.sequences = std::move(tokenized.sequences);
  job.respond = [request, info = std::move(info)](std::vector<M3Output>&& results) {
    HttpResponse response;
    response.body = vllm_pooling_response(results, *request, info);
    return response;
  };
  return {{}, std::move(job)};
}

}  // namespace m3::server
