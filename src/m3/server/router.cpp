#include "m3/server/router.h"

#include <array>

#include <spdlog/spdlog.h>

#include "m3/core/error.h"

namespace m3::server {
namespace {

using ModelHandler = RouteResult (*)(ServerContext&, Embedder&, const HttpRequest&);
using StatusHandler = HttpResponse (*)(const ServerContext&);

struct Route {
  std::string_view path;
  std::string_view method;
  ErrorFormat format;
  ModelHandler model_handler;    // needs the model, admission-controlled
  StatusHandler status_handler;  // answers in any state
  bool needs_key;
};

constexpr auto kOpenAi = ErrorFormat::kOpenAi;
constexpr auto kTei = ErrorFormat::kTei;

const std::array<Route, 12> kRoutes = {{
    {"/v1/embeddings", "POST", kOpenAi, openai_embeddings, nullptr, true},
    {"/v1/models", "GET", kOpenAi, nullptr, models_response, true},
    {"/embed", "POST", kTei, tei_embed, nullptr, true},
    {"/embed_sparse", "POST", kTei, tei_embed_sparse, nullptr, true},
    {"/embed_all", "POST", kTei, tei_embed_all, nullptr, true},
    {"/tokenize", "POST", kTei, tei_tokenize, nullptr, true},
    {"/m3/encode", "POST", kOpenAi, native_encode, nullptr, true},
    {"/m3/score", "POST", kOpenAi, native_score, nullptr, true},
    {"/health", "GET", kTei, nullptr, health_response, false},
    {"/info", "GET", kTei, nullptr, info_response, true},
    {"/metrics", "GET", kTei, nullptr, metrics_response, true},
    {"/v1/health", "GET", kOpenAi, nullptr, health_response, false},
}};

RouteResult refuse(ErrorFormat format, const ApiError& error) { return {error_response(format, error), std::nullopt}; }

// Checks the job against the queue bound and the response size limit.
void check_job(const InferenceJob& job, const Embedder& embedder, const ServerOptions& options) {
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
    const ErrorFormat format = request.path.starts_with("/v1/") || request.path.starts_with("/m3/") ? kOpenAi : kTei;
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
    decision.result = route->model_handler(context_, *embedder, request);
    if (decision.result.job) check_job(*decision.result.job, *embedder, options);
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
