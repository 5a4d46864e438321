#include "m3/server/router.h"

#include <array>

#include <simdjson.h>
#include <spdlog/spdlog.h>

#include "m3/core/error.h"

namespace m3::server {
namespace {

using ModelHandler = RouteResult (*)(ServerContext&, ServedModel&, const HttpRequest&);
using StatusHandler = HttpResponse (*)(const ServerContext&);

// Which kind of model a route is for: a request without a known "model" goes to the first
// served model of that kind.
enum class Kind { kEmbedder, kClassifier, kAny };

struct Route {
  std::string_view path;
  std::string_view method;
  ErrorFormat format;
  ModelHandler model_handler;    // needs the model, admission-controlled
  StatusHandler status_handler;  // answers in any state
  bool needs_key;
  Kind kind = Kind::kEmbedder;
};

constexpr auto kOpenAi = ErrorFormat::kOpenAi;
constexpr auto kTei = ErrorFormat::kTei;

// Aliases as TEI has them: POST / is /embed (huggingface_hub's InferenceClient(model=URL)
// posts there), /embeddings is OpenAI's route without /v1 (the openai SDK with base_url at
// the server root), and SageMaker's GET /ping and POST /invocations. /pooling is vLLM's.
const std::array<Route, 22> kRoutes = {{
    {"/v1/embeddings", "POST", kOpenAi, openai_embeddings, nullptr, true},
    {"/embeddings", "POST", kOpenAi, openai_embeddings, nullptr, true},
    {"/", "POST", kTei, tei_embed, nullptr, true},
    {"/invocations", "POST", kTei, tei_embed, nullptr, true},
    {"/ping", "GET", kTei, nullptr, health_response, false},
    {"/v1/models", "GET", kOpenAi, nullptr, models_response, true},
    {"/embed", "POST", kTei, tei_embed, nullptr, true},
    {"/embed_sparse", "POST", kTei, tei_embed_sparse, nullptr, true},
    {"/embed_all", "POST", kTei, tei_embed_all, nullptr, true},
    {"/tokenize", "POST", kTei, tei_tokenize, nullptr, true, Kind::kAny},
    {"/similarity", "POST", kTei, tei_similarity, nullptr, true},
    {"/decode", "POST", kTei, tei_decode, nullptr, true, Kind::kAny},
    {"/m3/encode", "POST", kOpenAi, native_encode, nullptr, true},
    {"/rerank", "POST", kTei, tei_rerank, nullptr, true, Kind::kClassifier},
    {"/predict", "POST", kTei, tei_predict, nullptr, true, Kind::kClassifier},
    {"/v1/rerank", "POST", kOpenAi, cohere_rerank, nullptr, true, Kind::kClassifier},
    {"/m3/score", "POST", kOpenAi, native_score, nullptr, true},
    {"/pooling", "POST", kOpenAi, vllm_pooling, nullptr, true},
    {"/health", "GET", kTei, nullptr, health_response, false},
    {"/info", "GET", kTei, nullptr, info_response, true},
    {"/metrics", "GET", kTei, nullptr, metrics_response, true},
    {"/v1/health", "GET", kOpenAi, nullptr, health_response, false},
}};

RouteResult refuse(ErrorFormat format, const ApiError& error) { return {error_response(format, error), std::nullopt}; }

// The body's top-level "model" string, if it has one (the handler parses the body again
// and reports what is wrong with it).
std::string requested_model(std::string_view body) {
  simdjson::dom::parser parser;
  simdjson::dom::element root;
  std::string_view name;
  if (body.empty() || parser.parse(body.data(), body.size()).get(root) != simdjson::SUCCESS) return "";
  if (!root.is_object() || root["model"].get_string().get(name) != simdjson::SUCCESS) return "";
  return std::string(name);
}

// The served model a request goes to: the one its "model" names; else the first of the
// route's kind. A name no model has is accepted (clients send fixed names such as
// "text-embedding-3-small") where only one model of that kind is served, and refused (404,
// naming the served ones) where several are.
ServedModel& choose_model(ServerContext& context, Kind kind, std::string_view body) {
  const std::string name = requested_model(body);
  std::vector<ServedModel*> of_kind;
  for (ServedModel& m : context.models) {
    if (!name.empty() && m.name == name) return m;
    const bool classifier = m.engine->is_classifier();
    if (kind == Kind::kAny || (kind == Kind::kClassifier) == classifier) of_kind.push_back(&m);
  }
  if (!name.empty() && of_kind.size() > 1) {
    std::string served;
    for (const ServedModel* m : of_kind) served += (served.empty() ? "\"" : ", \"") + m->name + "\"";
    throw ApiError(404, fmt::format("model \"{}\" is not served here; send one of {}", name, served), "model",
                   "model_not_found");
  }
  // None of that kind: the first model, whose handler then says it is the wrong kind (424).
  return of_kind.empty() ? context.models.front() : *of_kind.front();
}

// Checks the job against the queue bound and the response size limits, and reserves its
// response's bytes (before any compute: a response that cannot fit is refused now).
ResponseBudget::Reservation admit_job(const InferenceJob& job, const Embedder& embedder, ServerContext& context) {
  const ServerOptions& options = context.options;
  const int64_t queue = embedder.plan().queue_tokens;
  if (job.tokens > queue) {
    throw ApiError(413,
                   fmt::format("the request has {} tokens, more than the server's queue holds ({} tokens): send "
                               "fewer or shorter inputs",
                               job.tokens, queue),
                   "", "request_too_large");
  }
  if (job.response_bytes > options.max_response_bytes) {
    throw ApiError(413,
                   fmt::format("the response would be about {} bytes, more than --max-response-bytes {}: send "
                               "fewer inputs",
                               job.response_bytes, options.max_response_bytes),
                   "", "response_too_large");
  }
  const uint64_t capacity = context.responses.capacity();
  if (job.response_bytes > capacity) {
    throw ApiError(413,
                   fmt::format("the response would need about {} of memory, more than the server holds for "
                               "responses in flight ({}, --output-memory): send fewer or shorter inputs, or "
                               "start the server with a larger --output-memory",
                               format_bytes(job.response_bytes), format_bytes(capacity)),
                   "", "response_too_large");
  }
  auto reservation = context.responses.try_reserve(job.response_bytes);
  if (!reservation) {
    throw ApiError(429,
                   fmt::format("responses in flight hold {} of the server's {} (--output-memory) and this one "
                               "needs about {}: retry later",
                               format_bytes(context.responses.used()), format_bytes(capacity),
                               format_bytes(job.response_bytes)),
                   "", "too_many_requests");
  }
  return std::move(*reservation);
}

}  // namespace

bool authorized(std::string_view authorization, std::string_view key) {
  constexpr std::string_view kScheme = "Bearer ";
  if (authorization.size() < kScheme.size()) return false;
  for (size_t i = 0; i < kScheme.size(); ++i) {
    if (std::tolower(static_cast<unsigned char>(authorization[i])) !=
        std::tolower(static_cast<unsigned char>(kScheme[i])))
      return false;
  }
  const std::string_view given = authorization.substr(kScheme.size());
  unsigned char diff = given.size() == key.size() ? 0 : 1;
  for (size_t i = 0; i < given.size(); ++i) diff |= static_cast<unsigned char>(given[i] ^ key[i % key.size()]);
  return diff == 0;
}

RouteDecision Router::route(const HttpRequest& request) const {
  RouteDecision decision;
  if (context_.options.test_batch_gate && request.path == "/test/batch-gate") {
    decision.label = "/test/batch-gate";
    decision.format = kTei;
    try {
      decision.result.response = test_batch_gate(context_, request);
    } catch (const ApiError& e) {
      decision.result = refuse(kTei, e);
    }
    return decision;
  }
  const Route* route = nullptr;
  bool path_known = false;
  for (const Route& r : kRoutes) {
    if (r.path != request.path) continue;
    path_known = true;
    if (r.method == request.method) route = &r;
  }
  const ServerOptions& options = context_.options;
  if (!route) {
    decision.label = "unmatched";
    for (const Route& r : kRoutes) {
      if (r.path == request.path) decision.label = r.path;  // a static string for the metrics
    }
    const bool openai =
        request.path.starts_with("/v1/") || request.path.starts_with("/m3/") || request.path == "/pooling";
    const ErrorFormat format = openai ? kOpenAi : kTei;
    decision.format = format;
    if (!options.api_key.empty() && !authorized(request.authorization, options.api_key)) {
      decision.result = refuse(format, ApiError(401, "missing or wrong API key (Authorization: Bearer <key>)"));
    } else if (path_known) {
      std::string allowed;
      for (const Route& r : kRoutes) {
        if (r.path == request.path) allowed += (allowed.empty() ? "" : ", ") + std::string(r.method);
      }
      decision.result = refuse(
          format, ApiError(405, fmt::format("{} is not allowed on {}; use {}", request.method, request.path, allowed)));
      decision.result.response.headers.emplace_back("Allow", allowed);
    } else {
      decision.result = refuse(format, ApiError(404, fmt::format("no route {} {}", request.method, request.path)));
    }
    return decision;
  }

  decision.label = route->path;
  decision.format = route->format;
  if (route->needs_key && !options.api_key.empty() && !authorized(request.authorization, options.api_key)) {
    decision.result = refuse(route->format, ApiError(401, "missing or wrong API key (Authorization: Bearer <key>)"));
    return decision;
  }
  if (route->status_handler) {
    decision.result.response = route->status_handler(context_);
    return decision;
  }

  const ServerState state = context_.state.load();
  Embedder* embedder = context_.embedder.load();
  if (state != ServerState::kReady || !embedder) {
    const char* why = state == ServerState::kDraining ? "the server is shutting down" : "the model is still loading";
    decision.result =
        refuse(route->format, ApiError(503, why, "", state == ServerState::kDraining ? "shutting_down" : "loading"));
    return decision;
  }
  auto permit = context_.limiter.try_acquire();
  if (!permit) {
    decision.result =
        refuse(route->format, ApiError(429,
                                       fmt::format("too many concurrent requests (--max-concurrent-requests {}); "
                                                   "retry later",
                                                   context_.limiter.limit()),
                                       "", "too_many_requests"));
    return decision;
  }
  try {
    ServedModel& model = choose_model(context_, route->kind, request.body);
    decision.result = route->model_handler(context_, model, request);
    if (decision.result.job) decision.response_memory = admit_job(*decision.result.job, *model.engine, context_);
    decision.engine = model.engine;
    decision.permit = std::move(*permit);
  } catch (const ApiError& e) {
    decision.result = refuse(route->format, e);
  } catch (const m3::Error& e) {
    decision.result = refuse(route->format, ApiError(422, e.what()));
  } catch (const std::bad_alloc&) {
    decision.result = refuse(route->format, ApiError(503, "out of memory while preparing the request"));
  } catch (const std::exception& e) {
    spdlog::error("{} {}: {}", request.method, request.path, e.what());
    decision.result = refuse(route->format, ApiError(500, "internal error"));
  }
  return decision;
}

}  // namespace m3::server
