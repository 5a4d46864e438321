// Everything `m3embed serve` can be told, with the defaults documented in docs/API.md.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace m3::server {

struct ServerOptions {
  std::string host = "127.0.0.1";
  uint16_t port = 8080;           // 0: any free port (the log says which)
  std::string api_key;            // empty: no authentication
  std::string served_model_name;  // echoed as "model"; empty: the --model argument
  size_t max_concurrent_requests = 512;
  size_t max_client_batch_size = 256;
  bool auto_truncate = false;
  size_t http_threads = 2;
  size_t max_connections = 1024;
  size_t payload_limit = 2000000;  // request body bytes
  size_t max_header_bytes = 16384;
  uint64_t max_response_bytes = 512ull << 20;  // estimated JSON size of one response
  double read_timeout_s = 30;                  // per request header, and again per body (keep-alive idle too)
  double write_timeout_s = 30;
  double shutdown_timeout_s = 30;  // in-flight requests get this long after SIGTERM
  // TEST ONLY (--test-batch-gate, refused unless M3_ENABLE_TEST_CONTROLS=1): batches wait at
  // the scheduler's BatchGate until POST /test/batch-gate releases them.
  bool test_batch_gate = false;
};

}  // namespace m3::server
