// /m3/encode and /m3/score: FlagEmbedding's encode(...) and compute_score(...) over HTTP.
#include <algorithm>

#include "m3/core/error.h"
#include "m3/model/scoring.h"
#include "m3/server/api_error.h"
#include "m3/server/native_api.h"
#include "m3/server/route.h"
#include "m3/server/tokenize_inputs.h"

namespace m3::server {

void check_outputs(const Embedder& embedder, const OutputRequest& outputs) {
  if (embedder.is_classifier() && !outputs.scores) {
    throw ApiError(424,
                   fmt::format("model is not an embedding model: {} is a classifier (a reranker); use /rerank, "
                               "/v1/rerank or /predict",
                               embedder.model_dir().filename().string()),
                   "", "wrong_model_type");
  }
  if (!embedder.is_classifier() && outputs.scores) {
    throw ApiError(424,
                   fmt::format("model is not a re-ranker model: {} is an embedder; use /embed, /v1/embeddings or "
                               "/m3/encode",
                               embedder.model_dir().filename().string()),
                   "", "wrong_model_type");
  }
  try {
    embedder.check(outputs);
  } catch (const m3::Error& e) {
    throw ApiError(422, e.what(), "", "output_unavailable");
  }
}

RouteResult native_encode(ServerContext& context, ServedModel& model, const HttpRequest& http) {
  Embedder& embedder = *model.engine;
  auto request = std::make_shared<NativeEncodeRequest>(parse_native_encode_request(http.body, model.limits));
  check_outputs(embedder, request->outputs);
  LengthRule rule;
  rule.max_length =
      request->max_length ? std::min(request->max_length, embedder.max_seq_len()) : embedder.max_seq_len();
  rule.truncate = request->truncate.value_or(context.options.auto_truncate);
  rule.limit_name = request->max_length ? "max_length" : "max_seq_len";
  auto tokenized =
      std::make_shared<TokenizedInputs>(tokenize_inputs(embedder.tokenizer(), request->inputs, rule, "input"));
  request->inputs.clear();

  InferenceJob job;
  job.outputs = request->outputs;
  job.tokens = tokenized->tokens;
  const auto hidden = static_cast<uint64_t>(embedder.config().hidden_size);
  const auto tokens = static_cast<uint64_t>(job.tokens);
  job.response_bytes = json_bytes_for_floats((request->outputs.colbert ? tokens * hidden : 0) +
                                             (request->outputs.dense ? tokenized->sequences.size() * hidden : 0)) +
                       (request->outputs.sparse ? tokens * kSparseBytesPerToken : 0) +
                       (request->return_tokens ? tokens * 40 : 0);
  if (request->return_tokens)
    job.sequences = tokenized->sequences;  // kept for input_ids and tokens
  else
    job.sequences = std::move(tokenized->sequences);
  const std::string name = request->model.empty() ? model.name : request->model;
  job.respond = [request, tokenized, name, &embedder](std::vector<M3Output>&& outputs) {
    std::vector<EncodedInput> inputs(outputs.size());
    for (size_t i = 0; i < outputs.size(); ++i) {
      inputs[i].truncated = tokenized->truncated[i];
      if (!request->return_tokens) continue;
      inputs[i].ids = &tokenized->sequences[i];
      for (int32_t id : tokenized->sequences[i]) inputs[i].pieces.push_back(embedder.tokenizer().id_to_piece(id));
    }
    HttpResponse response;
    response.body =
        native_encode_response(outputs, inputs, *request, embedder.config().hidden_size, name, tokenized->tokens);
    return response;
  };
  return {{}, std::move(job)};
}

RouteResult native_score(ServerContext& context, ServedModel& model, const HttpRequest& http) {
  Embedder& embedder = *model.engine;
  const NativeScoreRequest request = parse_native_score_request(http.body, model.limits);
  const OutputRequest outputs{true, true, true};
  check_outputs(embedder, outputs);
  // compute_score truncates queries and passages to their lengths, always.
  std::vector<Input> queries(request.pairs.size()), passages(request.pairs.size());
  for (size_t i = 0; i < request.pairs.size(); ++i) {
    queries[i].text = request.pairs[i].first;
    passages[i].text = request.pairs[i].second;
  }
  LengthRule rule;
  rule.truncate = true;
  rule.max_length = std::min(request.max_query_length, embedder.max_seq_len());
  TokenizedInputs tokenized = tokenize_inputs(embedder.tokenizer(), queries, rule, "pairs");
  rule.max_length = std::min(request.max_passage_length, embedder.max_seq_len());
  TokenizedInputs passage_ids = tokenize_inputs(embedder.tokenizer(), passages, rule, "pairs");
  for (auto& ids : passage_ids.sequences) tokenized.sequences.push_back(std::move(ids));
  tokenized.tokens += passage_ids.tokens;

  InferenceJob job;
  job.outputs = outputs;
  job.tokens = tokenized.tokens;
  // The scores are small, but each pair's outputs (ColBERT vectors too) are held until scored.
  job.response_bytes = static_cast<uint64_t>(job.tokens) * static_cast<uint64_t>(embedder.config().hidden_size + 2) *
                           sizeof(float) +
                       request.pairs.size() * 200;
  job.sequences = std::move(tokenized.sequences);
  const std::string name = request.model.empty() ? model.name : request.model;
  job.respond = [weights = request.weights, name, tokens = job.tokens,
                 hidden = embedder.config().hidden_size](std::vector<M3Output>&& results) {
    const size_t n = results.size() / 2;
    std::vector<PairScores> scores(n);
    for (size_t i = 0; i < n; ++i) scores[i] = compute_scores(results[i], results[n + i], hidden, weights);
    HttpResponse response;
    response.body = native_score_response(scores, name, tokens);
    return response;
  };
  return {{}, std::move(job)};
}

}  // namespace m3::server
