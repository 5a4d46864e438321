// `m3embed serve`: loads the model while already listening (503 until warm), then serves
// until SIGTERM/SIGINT, finishing what is in flight. Every option also reads M3_<NAME>.
#include "m3/cli/serve_command.h"

#include <cstdlib>
#include <filesystem>
#include <string_view>
#include <memory>

#include <spdlog/spdlog.h>

#include "m3/cli/model_options.h"
#include "m3/cli/model_set.h"
#include "m3/core/error.h"
#include "m3/memory/memory_plan.h"
#include "m3/model/model_config.h"
#include "m3/server/http_server.h"

namespace m3::cli {
namespace {

struct ServeOptions {
  ModelOptions model;
  server::ServerOptions server;
  int64_t max_seq_len = 0;
  int64_t max_queue_tokens = 0;
  std::string payload_limit = "2000000";
  std::string max_response_bytes = "512MiB";
};

// As load_embedder, plus the queue bound; --max-seq-len 0 is each model's own limit.
std::vector<std::unique_ptr<Embedder>> load_engines(const ServeOptions& o, const std::vector<ModelSpec>& specs) {
  return load_model_set(specs, o.model, [&o](EmbedderOptions& options, const ModelConfig& config) {
    options.max_queue_tokens = o.max_queue_tokens;
    options.test_batch_gate = o.server.test_batch_gate;
    if (o.max_seq_len > config.max_tokens()) {
      spdlog::warn("--max-seq-len {} is more than this model's {} positions allow; using {}", o.max_seq_len,
                   config.max_position_embeddings, config.max_tokens());
    }
    if (o.max_seq_len > 0) options.max_seq_len = std::min(o.max_seq_len, config.max_tokens());
  });
}

// --test-batch-gate stops every batch until a test releases it: never in normal use.
void check_test_controls(const server::ServerOptions& s) {
  if (!s.test_batch_gate) return;
  const char* enabled = std::getenv("M3_ENABLE_TEST_CONTROLS");
  if (enabled == nullptr || std::string_view(enabled) != "1") {
    fail("--test-batch-gate is a test-only control (it holds every batch until POST /test/batch-gate releases "
         "it); it needs M3_ENABLE_TEST_CONTROLS=1 in the environment and is never for normal use");
  }
  spdlog::warn("TEST MODE: --test-batch-gate holds every batch until POST /test/batch-gate releases it");
}

void run_serve(ServeOptions o) {
  check_test_controls(o.server);
  o.server.payload_limit = parse_bytes(o.payload_limit);
  o.server.max_response_bytes = parse_bytes(o.max_response_bytes);
  std::vector<ModelSpec> specs;
  for (const std::string& text : o.model.models.empty() ? std::vector<std::string>{o.model.model} : o.model.models) {
    specs.push_back(parse_model_spec(text));
  }
  if (!o.server.served_model_name.empty()) specs.front().name = o.server.served_model_name;
  server::ServerContext context(o.server, specs.front().name);
  server::HttpServer http(context);
  http.start();
  std::vector<std::unique_ptr<Embedder>> engines;  // destroyed before `http`: their callbacks post to its threads
  try {
    engines = load_engines(o, specs);
  } catch (...) {
    http.shutdown();
    http.wait();
    throw;
  }
  std::vector<std::pair<std::string, Embedder*>> served;
  for (size_t i = 0; i < specs.size(); ++i) served.emplace_back(specs[i].name, engines[i].get());
  http.models_ready(served);
  http.wait();
  spdlog::info("stopped");
}

}  // namespace

void add_serve_command(CLI::App& app) {
  auto o = std::make_shared<ServeOptions>();
  auto& s = o->server;
  auto* cmd = app.add_subcommand("serve",
                                 "Serve embeddings and reranking over HTTP: OpenAI /v1/embeddings, TEI-compatible "
                                 "routes, Cohere-style /v1/rerank and native /m3/encode, /m3/score");
  cmd->footer(
      "Routes: POST /v1/embeddings, /embed, /embed_sparse, /embed_all, /similarity, /tokenize, /decode, /pooling, "
      "/m3/encode, /m3/score (embedders); /rerank, /v1/rerank, /predict (rerankers); GET /health, /info, /metrics, "
      "/v1/models. Several models: --model bge=BAAI/bge-m3 --model rerank=BAAI/bge-reranker-v2-m3 serves both in "
      "one process, one --threads and one --memory-limit between them. Every option can also be set as "
      "M3_<OPTION> (e.g. M3_API_KEY, M3_PORT). SIGTERM/SIGINT finish in-flight requests and exit 0. See "
      "docs/API.md.");
  add_model_options(*cmd, o->model, true);
  cmd->add_option("--host", s.host, "Address to listen on (0.0.0.0 or :: for every interface)")
      ->envname("M3_HOST")
      ->capture_default_str();
  cmd->add_option("-p,--port", s.port, "TCP port (0: any free port; the log says which)")
      ->envname("M3_PORT")
      ->capture_default_str();
  cmd->add_option("--api-key", s.api_key,
                  "Require `Authorization: Bearer <key>` on every route but /health (prefer M3_API_KEY: "
                  "command lines are visible to other users)")
      ->envname("M3_API_KEY");
  cmd->add_option("--served-model-name", s.served_model_name,
                  "The (first) model's name in responses and /info (default: --model)")
      ->envname("M3_SERVED_MODEL_NAME");
  cmd->add_option("--max-seq-len", o->max_seq_len,
                  "Longest input in tokens, <s> and </s> included (0: the model's limit, 8192 for BGE-M3); longer "
                  "inputs get 413 unless truncated")
      ->envname("M3_MAX_SEQ_LEN")
      ->check(CLI::Range(int64_t{0}, int64_t{1} << 20))
      ->capture_default_str();
  cmd->add_flag("--auto-truncate", s.auto_truncate,
                "Cut inputs longer than --max-seq-len instead of answering 413 (TEI's `truncate` overrides it per "
                "request)")
      ->envname("M3_AUTO_TRUNCATE");
  cmd->add_option("--max-queue-tokens", o->max_queue_tokens,
                  "Tokens the scheduler queue holds before answering 429 (0: 16 x --max-batch-tokens)")
      ->envname("M3_MAX_QUEUE_TOKENS")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  cmd->add_option("--max-concurrent-requests", s.max_concurrent_requests,
                  "Requests served at once; more get 429 at once")
      ->envname("M3_MAX_CONCURRENT_REQUESTS")
      ->check(CLI::Range(size_t{1}, size_t{1} << 20))
      ->capture_default_str();
  cmd->add_option("--max-client-batch-size", s.max_client_batch_size, "Inputs (or score pairs) per request; more: 413")
      ->envname("M3_MAX_CLIENT_BATCH_SIZE")
      ->check(CLI::Range(size_t{1}, size_t{1} << 20))
      ->capture_default_str();
  cmd->add_option("--payload-limit", o->payload_limit, "Largest request body (bytes, or 2MB, 10MiB, ...); more: 413")
      ->envname("M3_PAYLOAD_LIMIT")
      ->capture_default_str();
  cmd->add_option("--max-header-bytes", s.max_header_bytes, "Largest request header; more: 431 and close")
      ->envname("M3_MAX_HEADER_BYTES")
      ->check(CLI::Range(size_t{1024}, size_t{1} << 20))
      ->capture_default_str();
  cmd->add_option("--max-response-bytes", o->max_response_bytes,
                  "Refuse (413) requests whose JSON answer would exceed this (ColBERT vectors are large)")
      ->envname("M3_MAX_RESPONSE_BYTES")
      ->capture_default_str();
  cmd->add_option("--max-connections", s.max_connections, "Open connections; more are closed at once")
      ->envname("M3_MAX_CONNECTIONS")
      ->check(CLI::Range(size_t{1}, size_t{1} << 20))
      ->capture_default_str();
  cmd->add_option("--http-threads", s.http_threads,
                  "Threads for HTTP I/O, parsing and tokenization (inference runs on the replicas' threads)")
      ->envname("M3_HTTP_THREADS")
      ->check(CLI::Range(size_t{1}, size_t{256}))
      ->capture_default_str();
  cmd->add_option("--read-timeout", s.read_timeout_s,
                  "Seconds to receive a request's header, and again its body (also the keep-alive idle time)")
      ->envname("M3_READ_TIMEOUT")
      ->check(CLI::Range(0.01, 3600.0))
      ->capture_default_str();
  cmd->add_option("--write-timeout", s.write_timeout_s, "Seconds to send a response")
      ->envname("M3_WRITE_TIMEOUT")
      ->check(CLI::Range(0.01, 3600.0))
      ->capture_default_str();
  cmd->add_option("--shutdown-timeout", s.shutdown_timeout_s,
                  "Seconds in-flight requests get after SIGTERM/SIGINT before the server stops anyway")
      ->envname("M3_SHUTDOWN_TIMEOUT")
      ->check(CLI::Range(0.0, 3600.0))
      ->capture_default_str();
  cmd->add_flag("--test-batch-gate", s.test_batch_gate,
                "TEST ONLY, refused unless M3_ENABLE_TEST_CONTROLS=1: every batch waits until POST "
                "/test/batch-gate {\"release\": N} or {\"open\": true} lets it run (GET shows what is held); "
                "the test suite uses it to hold work in flight without timing races")
      ->group("Test-only controls");
  cmd->callback([o] { run_serve(*o); });
}

}  // namespace m3::cli
