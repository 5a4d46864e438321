// POST /v1/embeddings: OpenAI inputs -> tokenized sequences -> dense vectors.
#include "m3/server/openai_api.h"
#include "m3/server/route.h"
#include "m3/server/tokenize_inputs.h"

namespace m3::server {

RouteResult openai_embeddings(ServerContext& context, ServedModel& model, const HttpRequest& http) {
  Embedder& embedder = *model.engine;
  auto request = std::make_shared<OpenAiEmbeddingRequest>(parse_openai_embedding_request(http.body, model.limits));
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
  const std::string name = request->model.empty() ? model.name : request->model;
  job.respond = [request, name, tokens = job.tokens](std::vector<M3Output>&& outputs) {
    HttpResponse response;
    response.body = openai_embedding_response(outputs, *request, name, tokens);
    return response;
  };
  return {{}, std::move(job)};
}

HttpResponse models_response(const ServerContext& context) {
  HttpResponse response;
  // Every served model once loaded (the first's name while loading).
  std::vector<std::string> names;
  if (context.state.load() != ServerState::kLoading) {
    for (const ServedModel& m : context.models) names.push_back(m.name);
  }
  if (names.empty()) names.push_back(context.model_name);
  response.body = openai_models_response(names);
  return response;
}

}  // namespace m3::server
