// The HTTP request and response as the routes see them: plain data, no Boost.Beast, so
// routing, parsing and encoding are testable (and fuzzable) without a socket.
#pragma once

#include <string>
#include <utility>
#include <vector>

namespace m3::server {

struct HttpRequest {
  std::string method;  // "GET", "POST", ...
  std::string path;    // the target without its query string
  std::string body;
  std::string authorization;  // the Authorization header; empty when absent
};

struct HttpResponse {
  int status = 200;
  std::string content_type = "application/json";
  std::string body;
  std::vector<std::pair<std::string, std::string>> headers;  // extra headers (Allow, WWW-Authenticate, ...)
};

}  // namespace m3::server
