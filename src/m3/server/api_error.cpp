#include "m3/server/api_error.h"

#include "m3/server/json_writer.h"

namespace m3::server {
namespace {

const char* default_code(int status) {
  switch (status) {
    case 400: return "bad_request";
    case 401: return "invalid_api_key";
    case 404: return "not_found";
    case 405: return "method_not_allowed";
    case 408: return "request_timeout";
    case 413: return "too_large";
    case 422: return "invalid_value";
    case 429: return "overloaded";
    case 431: return "header_too_large";
    case 503: return "unavailable";
    default: return status >= 500 ? "internal_error" : "bad_request";
  }
}

// OpenAI's `type`: what its Python client and most SDKs look at after the status.
const char* openai_type(int status) {
  if (status == 429) return "rate_limit_error";
  if (status >= 500) return "server_error";
  return "invalid_request_error";
}

// TEI's ErrorType names.
const char* tei_type(int status) {
  switch (status) {
    case 401: return "Unauthorized";
    case 424: return "Backend";  // TEI's "model is not a re-ranker model"
    case 429: return "Overloaded";
    case 503: return "Unhealthy";
    default: return status >= 500 ? "Backend" : "Validation";
  }
}

}  // namespace

HttpResponse error_response(ErrorFormat format, const ApiError& error) {
  HttpResponse response;
  response.status = error.status();
  std::string& out = response.body;
  const std::string message = error.message();
  if (format == ErrorFormat::kTei) {
    out += "{\"error\":";
    append_json_string(out, message);
    out += ",\"error_type\":";
    append_json_string(out, tei_type(error.status()));
    out += '}';
  } else {
    out += "{\"error\":{\"message\":";
    append_json_string(out, message);
    out += ",\"type\":";
    append_json_string(out, openai_type(error.status()));
    out += ",\"param\":";
    if (error.param().empty())
      out += "null";
    else
      append_json_string(out, error.param());
    out += ",\"code\":";
    append_json_string(out, error.code().empty() ? default_code(error.status()) : error.code());
    out += "}}";
  }
  if (error.status() == 401) response.headers.emplace_back("WWW-Authenticate", "Bearer");
  return response;
}

}  // namespace m3::server
