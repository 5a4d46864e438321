// ApiError: a request the server refuses, with its HTTP status, and the JSON error body
// each API family expects: OpenAI (and the native /m3 routes)
// {"error": {"message", "type", "param", "code"}}, TEI {"error", "error_type"}.
#pragma once

#include <stdexcept>
#include <string>
#include <utility>

#include <fmt/format.h>

#include "m3/server/http_types.h"

namespace m3::server {

enum class ErrorFormat { kOpenAi, kTei };

class ApiError : public std::runtime_error {
 public:
  // `param`: the request field at fault ("input", "dimensions"), empty when none.
  // `code`: a short machine-readable reason ("invalid_api_key"); empty: derived from status.
  ApiError(int status, std::string message, std::string param = {}, std::string code = {})
      : std::runtime_error(message), status_(status), param_(std::move(param)), code_(std::move(code)) {}

  int status() const { return status_; }
  std::string message() const { return what(); }
  const std::string& param() const { return param_; }
  const std::string& code() const { return code_; }

 private:
  int status_;
  std::string param_;
  std::string code_;
};

// Throws ApiError(status) about request field `param`.
template <typename... Args>
[[noreturn]] void reject(int status, std::string param, fmt::format_string<Args...> format, Args&&... args) {
  throw ApiError(status, fmt::format(format, std::forward<Args>(args)...), std::move(param));
}

// The error response in the given API family's convention.
HttpResponse error_response(ErrorFormat format, const ApiError& error);

}  // namespace m3::server
