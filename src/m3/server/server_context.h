// What every connection and route shares: the options, the model once loaded, the server's
// state, the admission limiter and the metrics.
#pragma once

#include <atomic>
#include <cstddef>
#include <string>
#include <utility>
#include <vector>

#include "m3/runtime/embedder.h"
#include "m3/server/api_limits.h"
#include "m3/server/in_flight.h"
#include "m3/server/metrics.h"
#include "m3/server/request_limiter.h"
#include "m3/server/response_budget.h"
#include "m3/server/server_options.h"

namespace m3::server {

enum class ServerState {
  kLoading,  // listening, model not ready: /health and model routes answer 503
  kReady,
  kDraining,  // SIGTERM: in-flight requests finish, new ones get 503
};

// A model the server serves: the name requests route by (their "model" field), its engine,
// and the request limits its shape sets.
struct ServedModel {
  std::string name;
  Embedder* engine = nullptr;
  ApiLimits limits;
};

struct ServerContext {
  explicit ServerContext(ServerOptions server_options, std::string model)
      : options(std::move(server_options)), model_name(std::move(model)), limiter(options.max_concurrent_requests) {}

  const ServerOptions options;
  const std::string model_name;  // the first model's (TEI's single-model fields of /info and /metrics)
  RequestLimiter limiter;
  ResponseBudget responses;  // its capacity is the plan's result buffer, set with the model
  InFlightRequests in_flight;
  Metrics metrics;
  std::atomic<ServerState> state{ServerState::kLoading};
  std::atomic<size_t> connections{0};

  // Set once, before state becomes kReady; read only after seeing kReady (or kDraining).
  std::vector<ServedModel> models;
  std::atomic<Embedder*> embedder{nullptr};  // the first model's engine

  void set_ready(const std::vector<std::pair<std::string, Embedder*>>& engines) {
    uint64_t responses_capacity = 0;
    for (const auto& [name, engine] : engines) {
      ServedModel& m = models.emplace_back();
      m.name = name;
      m.engine = engine;
      m.limits.max_client_batch_size = options.max_client_batch_size;
      m.limits.vocab_size = engine->config().vocab_size;  // rows of the embedding table
      m.limits.hidden_size = engine->config().hidden_size;
      responses_capacity += engine->plan().result_buffer_bytes;
    }
    responses.set_capacity(responses_capacity);
    embedder.store(engines.front().second);
    ServerState expected = ServerState::kLoading;
    state.compare_exchange_strong(expected, ServerState::kReady);  // not if already draining
  }
};

}  // namespace m3::server
