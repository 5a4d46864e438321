// POST /rerank and /predict (TEI) and /v1/rerank (Cohere/Jina style): query/passage pairs
// through a classifier model, scored by its logits (rerank_api.h says what each returns).
#include <atomic>

#include <fmt/format.h>

#include "m3/server/api_error.h"
#include "m3/server/rerank_api.h"
#include "m3/server/route.h"

namespace m3::server {
namespace {

constexpr OutputRequest kScores{.dense = false, .scores = true};

// /rerank and /v1/rerank need a reranker: a classifier with one label, as TEI has it.
void check_reranker(const Embedder& embedder) {
  check_outputs(embedder, kScores);
  if (embedder.config().num_labels != 1) {
    throw ApiError(424,
                   fmt::format("model is not a re-ranker model: it has {} labels (a reranker has one); use /predict",
                               embedder.config().num_labels),
                   "", "wrong_model_type");
  }
}

// The model's input for `text` alone or paired with `pair`: the FlagReranker cut (the
// query to 3/4 of the limit, then the passage's end) when truncating; otherwise a pair or
// text over the limit is refused with 413, never cut silently.
std::vector<int32_t> pair_input(const Embedder& embedder, std::string_view text, const std::string* pair,
                                bool truncate, const std::string& param) {
  const int64_t limit = embedder.max_seq_len();
  if (!pair) {
    bool cut = false;
    auto ids = embedder.tokenize(text, truncate ? limit : 0, &cut);
    if (static_cast<int64_t>(ids.size()) > limit) {
      throw ApiError(413,
                     fmt::format("{} has {} tokens, more than max_seq_len {}: send \"truncate\": true or start the "
                                 "server with --auto-truncate",
                                 param, ids.size(), limit),
                     param, "input_too_long");
    }
    return ids;
  }
  if (!truncate) {
    const auto full = static_cast<int64_t>(embedder.tokenizer().encode(text).size() +
                                           embedder.tokenizer().encode(*pair).size());  // + 4 specials - 4
    if (full > limit) {
      throw ApiError(413,
                     fmt::format("{} and the query have {} tokens together, more than max_seq_len {}: send "
                                 "\"truncate\": true or start the server with --auto-truncate",
                                 param, full, limit),
                     param, "input_too_long");
    }
  }
  try {
    return embedder.tokenize_pair(text, *pair, 0, 0);
  } catch (const m3::Error& e) {
    throw ApiError(413, e.what(), param, "input_too_long");
  }
}

InferenceJob score_job(std::vector<std::vector<int32_t>> sequences, uint64_t echoed_bytes) {
  InferenceJob job;
  job.outputs = kScores;
  for (const auto& ids : sequences) job.tokens += static_cast<int64_t>(ids.size());
  // Per input: a score and its JSON (a few labels at most), plus any text echoed back.
  job.response_bytes = sequences.size() * 256 + echoed_bytes * 2 + 512;
  job.sequences = std::move(sequences);
  return job;
}

std::vector<float> first_logits(const std::vector<M3Output>& outputs) {
  std::vector<float> logits;
  for (const auto& o : outputs) logits.push_back(o.scores.at(0));
  return logits;
}

std::atomic<uint64_t> rerank_count{0};

RouteResult rerank_job(ServerContext& context, ServedModel& model, std::shared_ptr<RerankRequest> request,
                       bool cohere) {
  const Embedder& embedder = *model.engine;
  check_reranker(embedder);
  const bool truncate = request->truncate.value_or(context.options.auto_truncate);
  std::vector<std::vector<int32_t>> sequences;
  uint64_t echoed = 0;
  const char* key = cohere ? "documents" : "texts";
  for (size_t i = 0; i < request->texts.size(); ++i) {
    sequences.push_back(pair_input(embedder, request->query, &request->texts[i], truncate, fmt::format("{}[{}]", key, i)));
    if (request->return_text) echoed += request->texts[i].size();
  }
  InferenceJob job = score_job(std::move(sequences), echoed);
  RerankResponseInfo info;
  info.id = fmt::format("rerank-{}", ++rerank_count);
  info.model = request->model.empty() ? model.name : request->model;
  info.tokens = job.tokens;
  job.respond = [request, cohere, info = std::move(info)](std::vector<M3Output>&& outputs) {
    HttpResponse response;
    const std::vector<float> logits = first_logits(outputs);
    response.body = cohere ? cohere_rerank_response(logits, *request, info) : tei_rerank_response(logits, *request);
    return response;
  };
  return {{}, std::move(job)};
}

}  // namespace

RouteResult tei_rerank(ServerContext& context, ServedModel& model, const HttpRequest& http) {
  return rerank_job(context, model, std::make_shared<RerankRequest>(parse_tei_rerank_request(http.body, model.limits)),
                    false);
}

RouteResult cohere_rerank(ServerContext& context, ServedModel& model, const HttpRequest& http) {
  return rerank_job(context, model,
                    std::make_shared<RerankRequest>(parse_cohere_rerank_request(http.body, model.limits)), true);
}

RouteResult tei_predict(ServerContext& context, ServedModel& model, const HttpRequest& http) {
  Embedder& embedder = *model.engine;
  auto request = std::make_shared<PredictRequest>(parse_tei_predict_request(http.body, model.limits));
  check_outputs(embedder, kScores);
  const bool truncate = request->truncate.value_or(context.options.auto_truncate);
  std::vector<std::vector<int32_t>> sequences;
  for (size_t i = 0; i < request->inputs.size(); ++i) {
    const PredictInput& input = request->inputs[i];
    const std::string param = request->batch ? fmt::format("inputs[{}]", i) : "inputs";
    sequences.push_back(pair_input(embedder, input.text, input.pair ? &*input.pair : nullptr, truncate, param));
  }
  InferenceJob job = score_job(std::move(sequences), 0);
  job.response_bytes += request->inputs.size() * embedder.config().labels.size() * 64;
  job.respond = [request, labels = embedder.config().labels,
                 multi = embedder.config().multi_label](std::vector<M3Output>&& outputs) {
    std::vector<std::vector<float>> logits;
    for (auto& o : outputs) logits.push_back(std::move(o.scores));
    HttpResponse response;
    response.body = tei_predict_response(logits, labels, *request, multi);
    return response;
  };
  return {{}, std::move(job)};
}

}  // namespace m3::server
