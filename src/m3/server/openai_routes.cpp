// POST /v1/embeddings: OpenAI inputs -> tokenized sequences -> dense vectors.
#include "m3/server/openai_api.h"
#include "m3/server/route.h"
#include "m3/server/tokenize_inputs.h"

namespace m3::server {

RouteResult openai_embeddings(ServerContext& context, Embedder& embedder, const HttpRequest& http) {
  auto request = std::make_shared<OpenAiEmbeddingRequest>(parse_openai_embedding_request(http.body, context.limits));
  check_outputs(embedder, {true, false, false});
  LengthRule rule;
  rule.max_length = embedder.max_seq_len();
  rule.truncate = context.options.auto_truncate;
  rule.hint = "start the server with --auto-truncate to cut long inputs";
  TokenizedInputs tokenized = tokenize_inputs(embedder.tokenizer(), request->inputs, rule, "input");
  request->inputs.clear();  // the texts are not needed any more

  InferenceJob job;
  job.outputs = {true, false, false};
  job.tokens = tokenized.tokens;
  const int64_t dims = request->dimensions ? request->dimensions : embedder.config().hidden_size;
  // The outputs hold every dimension; the JSON only `dims` of them.
  job.response_bytes = tokenized.sequences.size() * (static_cast<uint64_t>(embedder.config().hidden_size) * 4 +
                                                     static_cast<uint64_t>(dims) * kJsonBytesPerFloat);
  job.sequences = std::move(tokenized.sequences);
  const std::string model = request->model.empty() ? context.model_name : request->model;
  job.respond = [request, model, tokens = job.tokens](std::vector<M3Output>&& outputs) {
    HttpResponse response;
    response.body = openai_embedding_response(outputs, *request, model, tokens);
    return response;
  };
  return {{}, std::move(job)};
}

HttpResponse models_response(const ServerContext& context) {
  HttpResponse response;
  response.body = openai_models_response(context.model_name);
  return response;
}

}  // namespace m3::server
