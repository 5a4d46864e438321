// Router: method + path -> handler, with what every route shares in front of it: 404/405,
// the API key (401), readiness (503 while loading or shutting down), admission
// (--max-concurrent-requests, 429) and the request's size limits (413). Never throws.
#pragma once

#include <optional>
#include <string_view>

#include "m3/server/api_error.h"
#include "m3/server/http_types.h"
#include "m3/server/request_limiter.h"
#include "m3/server/route.h"
#include "m3/server/server_context.h"

namespace m3::server {

struct RouteDecision {
  std::string_view label;                     // the matched route for metrics ("unmatched" when none)
  ErrorFormat format = ErrorFormat::kOpenAi;  // how errors of this route look
  RouteResult result;
  RequestLimiter::Permit permit;  // held until the response is written (routes that infer)
  Embedder* engine = nullptr;     // the model its job runs on
  ResponseBudget::Reservation response_memory;  // likewise: the response's bytes (--output-memory)
};

class Router {
 public:
  explicit Router(ServerContext& context) : context_(context) {}
  RouteDecision route(const HttpRequest& request) const;

 private:
  ServerContext& context_;
};

// True when `authorization` is "Bearer <key>" (compared in constant time).
bool authorized(std::string_view authorization, std::string_view key);

}  // namespace m3::server
